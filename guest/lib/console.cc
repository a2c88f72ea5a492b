#include "guest/lib/console.h"

#include <stdarg.h>
#include <stdint.h>

#include "guest/lib/fmt.h"
#include "guest/lib/mem.h"
#include "guest/lib/mmio.h"

namespace ftvm::guest {
namespace {

constexpr size_t kBufSize = 4096;

struct Console {
  char buf[kBufSize];
  size_t len;
  ftvm_iovec iov;  // the device reads it during the exit
};
Console g_con;

bool has_newline(const char* s, size_t n) { return memchr(s, '\n', n) != nullptr; }

}  // namespace

void con_flush() {
  if (g_con.len == 0) return;
  g_con.iov.gpa = reinterpret_cast<uintptr_t>(g_con.buf);
  g_con.iov.len = g_con.len;
  compiler_barrier();
  mmio_write64(FTVM_SLOT_CONSOLE, FTVM_CONSOLE_WRITE_IOV, reinterpret_cast<uintptr_t>(&g_con.iov));
  compiler_barrier();
  g_con.len = 0;
}

void con_write(const char* s, size_t n) {
  bool newline = has_newline(s, n);
  while (n > 0) {
    if (g_con.len == kBufSize) con_flush();
    size_t room = kBufSize - g_con.len;
    size_t k = n < room ? n : room;
    memcpy(g_con.buf + g_con.len, s, k);
    g_con.len += k;
    s += k;
    n -= k;
  }
  if (newline) con_flush();
}

void con_printf(const char* fmt, ...) {
  // Format straight into the buffer when it fits; otherwise flush and retry, and
  // truncate what is longer than the whole buffer.
  for (int attempt = 0; attempt < 2; ++attempt) {
    size_t room = kBufSize - g_con.len;
    va_list ap;
    va_start(ap, fmt);
    size_t n = fmt_vsnprintf(g_con.buf + g_con.len, room, fmt, ap);
    va_end(ap);
    if (n < room || attempt == 1 || g_con.len == 0) {
      size_t stored = n < room ? n : room - 1;
      bool newline = has_newline(g_con.buf + g_con.len, stored);
      g_con.len += stored;
      if (newline || g_con.len + 1 >= kBufSize) con_flush();
      return;
    }
    con_flush();
  }
}

}  // namespace ftvm::guest

extern "C" const char* ftvm_con_pending(size_t* len) {
  *len = ftvm::guest::g_con.len;
  return ftvm::guest::g_con.buf;
}
