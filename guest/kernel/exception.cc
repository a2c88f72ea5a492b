// Fatal CPU exceptions: report on the console through the port (ring 0 may use
// port I/O; the MMIO console may be what failed) and power off with 0xa0 + vector.
#include <stddef.h>
#include <stdint.h>

#include "guest/kernel/kernel.h"
#include "guest/kernel/port.h"
#include "guest/lib/console.h"
#include "guest/lib/fmt.h"

namespace {

// Layout pushed by exc_common in isr.S (lowest address first).
struct ExceptionFrame {
  uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
  uint64_t vector, error;
  uint64_t rip, cs, rflags, rsp, ss;  // pushed by the CPU
};

const char* const kNames[32] = {
    "divide error",      "debug",          "NMI",
    "breakpoint",        "overflow",       "bound range",
    "invalid opcode",    "device not available", "double fault",
    "coprocessor overrun", "invalid TSS",  "segment not present",
    "stack fault",       "general protection", "page fault",
    "reserved",          "x87 FP error",   "alignment check",
    "machine check",     "SIMD FP error",  "virtualization",
    "control protection", "reserved",      "reserved",
    "reserved",          "reserved",       "reserved",
    "reserved",          "hypervisor injection", "VMM communication",
    "security",          "reserved",
};

}  // namespace

extern "C" [[noreturn]] KTEXT void exception_report(const ExceptionFrame* f) {
  // Text ring 3 buffered but did not flush yet came before the fault.
  size_t pending_len;
  const char* pending = ftvm_con_pending(&pending_len);
  if (pending_len > 0) {
    port_puts(pending, pending_len);
    if (pending[pending_len - 1] != '\n') port_puts("\n", 1);
  }
  unsigned vec = static_cast<unsigned>(f->vector & 31);
  char line[256];
  size_t n = ftvm::guest::fmt_snprintf(
      line, sizeof line, "guest exception #%u (%s) at rip=0x%lx err=0x%lx cs=0x%lx rsp=0x%lx rflags=0x%lx",
      vec, kNames[vec], f->rip, f->error, f->cs, f->rsp, f->rflags);
  if (n > sizeof line - 1) n = sizeof line - 1;
  port_puts(line, n);
  if (vec == 14) {
    uint64_t cr2;
    asm volatile("mov %%cr2, %0" : "=r"(cr2));
    n = ftvm::guest::fmt_snprintf(line, sizeof line, " cr2=0x%lx", cr2);
    port_puts(line, n < sizeof line ? n : sizeof line - 1);
  }
  port_puts("\n", 1);
  port_power_off(FTVM_GUEST_EXIT_EXCEPTION + vec);
}
