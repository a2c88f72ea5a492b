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

void irq_wait_line(unsigned line, uint64_t* seen) {
  if (irq_count(line) == *seen) {
    uint32_t pending = irq_wait();
    // Our line is pending and unmasked, and ring 3 runs with IF=1, so the VMM
    // delivers it: right after this exit on KVM, at the next translation-block
    // boundary on the software CPU. Wait for the stub to count it, so callers see
    // a consistent counter (bounded, in case a VMM never delivers).
    if (pending & (1u << line)) {
      for (unsigned i = 0; i < (1u << 20) && irq_count(line) == *seen; ++i) {
        asm volatile("pause" ::: "memory");
      }
    }
  }
  *seen = irq_count(line);
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
