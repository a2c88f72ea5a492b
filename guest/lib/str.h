// A non-owning string slice and number parsing: what the cmdline parser and the
// mail protocol need, without the hosted standard library.
#ifndef FTVM_GUEST_LIB_STR_H_
#define FTVM_GUEST_LIB_STR_H_

#include <stddef.h>
#include <stdint.h>

#include "guest/lib/mem.h"

namespace ftvm::guest {

struct Str {
  const char* p = nullptr;
  size_t n = 0;

  constexpr Str() = default;
  constexpr Str(const char* ptr, size_t len) : p(ptr), n(len) {}
  // From a NUL-terminated literal or buffer.
  static Str of(const char* s) { return Str(s, strlen(s)); }

  bool empty() const { return n == 0; }
  bool eq(Str o) const { return n == o.n && (n == 0 || memcmp(p, o.p, n) == 0); }
  bool eq(const char* s) const { return eq(of(s)); }
  bool starts_with(Str o) const { return n >= o.n && memcmp(p, o.p, o.n) == 0; }
  Str sub(size_t from, size_t len = SIZE_MAX) const {
    if (from > n) from = n;
    if (len > n - from) len = n - from;
    return Str(p + from, len);
  }
  // Index of the first c, or n when absent.
  size_t find(char c) const {
    for (size_t i = 0; i < n; ++i) {
      if (p[i] == c) return i;
    }
    return n;
  }
};

// Parses the whole of s as an unsigned decimal (or 0x-prefixed hex) number.
// Fails on empty input, stray characters or overflow.
bool parse_u64(Str s, uint64_t* out);

// Parses dotted-quad "a.b.c.d" into a host-order address.
bool parse_ipv4(Str s, uint32_t* out);
// Parses "a.b.c.d/len" (len 0..32; "/len" optional, default 24) into address and mask.
bool parse_ipv4_cidr(Str s, uint32_t* addr, uint32_t* mask);

// Splits off the next token separated by `sep` (runs of sep are skipped).
// Returns false when no token is left. *rest gets what follows the token.
bool next_token(Str s, char sep, Str* token, Str* rest);

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_LIB_STR_H_
