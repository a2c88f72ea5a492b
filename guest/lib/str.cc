#include "guest/lib/str.h"

namespace ftvm::guest {

bool parse_u64(Str s, uint64_t* out) {
  if (s.empty()) return false;
  uint64_t base = 10;
  if (s.n > 2 && s.p[0] == '0' && (s.p[1] == 'x' || s.p[1] == 'X')) {
    base = 16;
    s = s.sub(2);
  }
  uint64_t v = 0;
  for (size_t i = 0; i < s.n; ++i) {
    char c = s.p[i];
    uint64_t d;
    if (c >= '0' && c <= '9') {
      d = static_cast<uint64_t>(c - '0');
    } else if (base == 16 && c >= 'a' && c <= 'f') {
      d = static_cast<uint64_t>(c - 'a' + 10);
    } else if (base == 16 && c >= 'A' && c <= 'F') {
      d = static_cast<uint64_t>(c - 'A' + 10);
    } else {
      return false;
    }
    if (v > (UINT64_MAX - d) / base) return false;
    v = v * base + d;
  }
  *out = v;
  return true;
}

bool parse_ipv4(Str s, uint32_t* out) {
  uint32_t addr = 0;
  for (int part = 0; part < 4; ++part) {
    size_t dot = s.find('.');
    if ((part < 3) != (dot < s.n)) return false;
    Str num = s.sub(0, dot);
    uint64_t v;
    if (num.n == 0 || num.n > 3 || !parse_u64(num, &v) || v > 255) return false;
    addr = (addr << 8) | static_cast<uint32_t>(v);
    s = s.sub(dot + 1);
  }
  *out = addr;
  return true;
}

bool parse_ipv4_cidr(Str s, uint32_t* addr, uint32_t* mask) {
  size_t slash = s.find('/');
  uint64_t len = 24;
  if (slash < s.n) {
    if (!parse_u64(s.sub(slash + 1), &len) || len > 32) return false;
  }
  if (!parse_ipv4(s.sub(0, slash), addr)) return false;
  *mask = len == 0 ? 0 : ~0u << (32 - len);
  return true;
}

bool next_token(Str s, char sep, Str* token, Str* rest) {
  size_t i = 0;
  while (i < s.n && s.p[i] == sep) ++i;
  if (i == s.n) return false;
  size_t j = i;
  while (j < s.n && s.p[j] != sep) ++j;
  *token = s.sub(i, j - i);
  *rest = s.sub(j);
  return true;
}

}  // namespace ftvm::guest
