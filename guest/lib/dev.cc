#include "guest/lib/dev.h"

#include "guest/lib/console.h"

namespace ftvm::guest {

void rng_fill(void* buf, size_t len) {
  auto* p = static_cast<uint8_t*>(buf);
  while (len > 0) {
    size_t n = len < FTVM_RNG_MAX_FILL ? len : FTVM_RNG_MAX_FILL;
    static ftvm_iovec iov;  // the device reads it during the exit
    iov.gpa = reinterpret_cast<uintptr_t>(p);
    iov.len = n;
    compiler_barrier();
    mmio_write64(FTVM_SLOT_RNG, FTVM_RNG_FILL_IOV, reinterpret_cast<uintptr_t>(&iov));
    compiler_barrier();
    p += n;
    len -= n;
  }
}

void irq_wait_since(uint64_t snapshot) {
  // The VMM compares `snapshot` with the interrupts it has injected and blocks only
  // if none came since the caller last looked for work: an interrupt landing
  // between that look and this exit cannot be lost.
  compiler_barrier();
  mmio_write64(FTVM_SLOT_IRQ, FTVM_IRQ_WAIT_IF, snapshot);
  compiler_barrier();
  // A line still pending is injected before the next exit (KVM: right after this
  // one; software CPU: at the next block start, an iteration or two): wait for its
  // stub so the caller sees the counters move. Bounded short: the VMM also ends a
  // wait with nothing pending (to reach a boundary for a migration round or a
  // snapshot), and a guest spinning here then would take a core from that work.
  for (unsigned i = 0; i < 4096 && irq_total() == snapshot; ++i) {
    asm volatile("pause" ::: "memory");
  }
}

void power_off(uint32_t code) {
  con_flush();
  mmio_write32(FTVM_SLOT_POWER, FTVM_POWER_OFF, code);
  // Only reached if the power device is missing or ignored us: say so, then trap
  // so the kernel's exception path powers off through the port.
  con_printf("power_off(%u) returned\n", code);
  __builtin_trap();
}

}  // namespace ftvm::guest
