// Memory and string primitives.
//
// Hosted builds (the unit tests, guest_host_dep) use the C library; the guest image
// gets its own definitions from mem.cc. gcc emits calls to memcpy/memset/memmove/
// memcmp even in freestanding code, so these exact names must exist.
#ifndef FTVM_GUEST_LIB_MEM_H_
#define FTVM_GUEST_LIB_MEM_H_

#include <stddef.h>
#include <stdint.h>

#if __STDC_HOSTED__
#include <string.h>
#else
extern "C" {
void* memcpy(void* dst, const void* src, size_t n);
void* memmove(void* dst, const void* src, size_t n);
void* memset(void* dst, int c, size_t n);
int memcmp(const void* a, const void* b, size_t n);
void* memchr(const void* s, int c, size_t n);
size_t strlen(const char* s);
}
#endif

namespace ftvm::guest {

// Length of s, but at most max (for fixed-size fields that may lack a NUL).
inline size_t str_nlen(const char* s, size_t max) {
  size_t n = 0;
  while (n < max && s[n] != '\0') ++n;
  return n;
}

inline bool mem_eq(const void* a, const void* b, size_t n) { return memcmp(a, b, n) == 0; }

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_LIB_MEM_H_
