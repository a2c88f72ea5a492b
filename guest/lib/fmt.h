// A small snprintf: %d %i %u %x %X %c %s %p %%, length modifiers l/ll/z, flags '-'
// and '0', field width (number or *) and precision for %s (.N or .*).
// Always NUL-terminates when size > 0; returns the length the full output would have.
#ifndef FTVM_GUEST_LIB_FMT_H_
#define FTVM_GUEST_LIB_FMT_H_

#include <stdarg.h>
#include <stddef.h>

namespace ftvm::guest {

size_t fmt_vsnprintf(char* buf, size_t size, const char* fmt, va_list ap);
size_t fmt_snprintf(char* buf, size_t size, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_LIB_FMT_H_
