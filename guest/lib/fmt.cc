#include "guest/lib/fmt.h"

#include <stdint.h>

namespace ftvm::guest {
namespace {

// Output cursor that counts every byte but stores only what fits (leaving room
// for the NUL).
struct Out {
  char* buf;
  size_t cap;  // bytes storable before the NUL
  size_t len = 0;
  void put(char c) {
    if (len < cap) buf[len] = c;
    ++len;
  }
  void pad(char c, size_t n) {
    for (size_t i = 0; i < n; ++i) put(c);
  }
};

struct Spec {
  bool left = false;
  bool zero = false;
  size_t width = 0;
  size_t precision = SIZE_MAX;
};

void put_str(Out& o, const Spec& s, const char* str) {
  if (str == nullptr) str = "(null)";
  size_t n = 0;
  while (n < s.precision && str[n] != '\0') ++n;
  size_t padn = s.width > n ? s.width - n : 0;
  if (!s.left) o.pad(' ', padn);
  for (size_t i = 0; i < n; ++i) o.put(str[i]);
  if (s.left) o.pad(' ', padn);
}

void put_num(Out& o, const Spec& s, uint64_t v, unsigned base, bool upper, bool neg,
             const char* prefix) {
  char digits[24];
  size_t n = 0;
  const char* set = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  do {
    digits[n++] = set[v % base];
    v /= base;
  } while (v != 0);
  size_t plen = 0;
  while (prefix[plen] != '\0') ++plen;
  size_t total = n + plen + (neg ? 1 : 0);
  size_t padn = s.width > total ? s.width - total : 0;
  if (!s.left && !s.zero) o.pad(' ', padn);
  if (neg) o.put('-');
  for (size_t i = 0; i < plen; ++i) o.put(prefix[i]);
  if (!s.left && s.zero) o.pad('0', padn);
  while (n > 0) o.put(digits[--n]);
  if (s.left) o.pad(' ', padn);
}

}  // namespace

size_t fmt_vsnprintf(char* buf, size_t size, const char* fmt, va_list ap) {
  Out o{buf, size > 0 ? size - 1 : 0};
  for (const char* f = fmt; *f != '\0'; ++f) {
    if (*f != '%') {
      o.put(*f);
      continue;
    }
    ++f;
    Spec s;
    for (;; ++f) {
      if (*f == '-') {
        s.left = true;
      } else if (*f == '0') {
        s.zero = true;
      } else {
        break;
      }
    }
    if (*f == '*') {
      int w = va_arg(ap, int);
      if (w < 0) {
        s.left = true;
        w = -w;
      }
      s.width = static_cast<size_t>(w);
      ++f;
    } else {
      while (*f >= '0' && *f <= '9') s.width = s.width * 10 + static_cast<size_t>(*f++ - '0');
    }
    if (*f == '.') {
      ++f;
      if (*f == '*') {
        int p = va_arg(ap, int);
        s.precision = p < 0 ? SIZE_MAX : static_cast<size_t>(p);
        ++f;
      } else {
        s.precision = 0;
        while (*f >= '0' && *f <= '9') s.precision = s.precision * 10 + static_cast<size_t>(*f++ - '0');
      }
    }
    int longs = 0;
    bool size_t_arg = false;
    while (*f == 'l') {
      ++longs;
      ++f;
    }
    if (*f == 'z') {
      size_t_arg = true;
      ++f;
    }
    auto get_unsigned = [&]() -> uint64_t {
      if (size_t_arg) return va_arg(ap, size_t);
      if (longs == 1) return va_arg(ap, unsigned long);
      if (longs >= 2) return va_arg(ap, unsigned long long);
      return va_arg(ap, unsigned int);
    };
    switch (*f) {
      case 'd':
      case 'i': {
        int64_t v;
        if (size_t_arg) {
          v = static_cast<int64_t>(va_arg(ap, size_t));
        } else if (longs == 1) {
          v = va_arg(ap, long);
        } else if (longs >= 2) {
          v = va_arg(ap, long long);
        } else {
          v = va_arg(ap, int);
        }
        // Negate in unsigned arithmetic so INT64_MIN works.
        uint64_t mag = v < 0 ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
        put_num(o, s, mag, 10, false, v < 0, "");
        break;
      }
      case 'u':
        put_num(o, s, get_unsigned(), 10, false, false, "");
        break;
      case 'x':
      case 'X':
        put_num(o, s, get_unsigned(), 16, *f == 'X', false, "");
        break;
      case 'p':
        put_num(o, s, reinterpret_cast<uintptr_t>(va_arg(ap, void*)), 16, false, false, "0x");
        break;
      case 'c': {
        char c = static_cast<char>(va_arg(ap, int));
        size_t padn = s.width > 1 ? s.width - 1 : 0;
        if (!s.left) o.pad(' ', padn);
        o.put(c);
        if (s.left) o.pad(' ', padn);
        break;
      }
      case 's':
        put_str(o, s, va_arg(ap, const char*));
        break;
      case '%':
        o.put('%');
        break;
      case '\0':  // lone '%' at the end: stop, do not read past the NUL
        --f;
        break;
      default:  // unknown conversion: print it literally
        o.put('%');
        o.put(*f);
        break;
    }
  }
  if (size > 0) buf[o.len < o.cap ? o.len : o.cap] = '\0';
  return o.len;
}

size_t fmt_snprintf(char* buf, size_t size, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  size_t n = fmt_vsnprintf(buf, size, fmt, ap);
  va_end(ap);
  return n;
}

}  // namespace ftvm::guest
