// Buffered console output for ring 3.
//
// Text collects in a RAM buffer and leaves in one FTVM_CONSOLE_WRITE_IOV exit per
// con_printf/con_write call that ends a line (or when the buffer fills): never an
// exit per character.
#ifndef FTVM_GUEST_LIB_CONSOLE_H_
#define FTVM_GUEST_LIB_CONSOLE_H_

#include <stddef.h>

namespace ftvm::guest {

void con_write(const char* s, size_t n);
void con_printf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Writes out whatever is buffered (one exit if non-empty).
void con_flush();

}  // namespace ftvm::guest

extern "C" {
// The unflushed part of the buffer, so the kernel's exception report can emit it
// through the port before its own message.
const char* ftvm_con_pending(size_t* len);
}

#endif  // FTVM_GUEST_LIB_CONSOLE_H_
