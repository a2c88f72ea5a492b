// Raw MMIO accessors for device slots (see vmm/abi/ftvm_abi.h).
//
// Every access is one VM exit (~76 us from ring 3 under PVM), so callers batch work
// per access. Accesses are plain volatile loads/stores of the register's width; the
// identity map makes the slot's physical address usable as a pointer.
#ifndef FTVM_GUEST_LIB_MMIO_H_
#define FTVM_GUEST_LIB_MMIO_H_

#include <stdint.h>

#include "vmm/abi/ftvm_abi.h"

namespace ftvm::guest {

inline uintptr_t mmio_addr(unsigned slot, uint32_t reg) {
  return static_cast<uintptr_t>(FTVM_MMIO_SLOT(slot) + reg);
}
inline uint32_t mmio_read32(unsigned slot, uint32_t reg) {
  return *reinterpret_cast<volatile uint32_t*>(mmio_addr(slot, reg));
}
inline uint64_t mmio_read64(unsigned slot, uint32_t reg) {
  return *reinterpret_cast<volatile uint64_t*>(mmio_addr(slot, reg));
}
inline void mmio_write32(unsigned slot, uint32_t reg, uint32_t v) {
  *reinterpret_cast<volatile uint32_t*>(mmio_addr(slot, reg)) = v;
}
inline void mmio_write64(unsigned slot, uint32_t reg, uint64_t v) {
  *reinterpret_cast<volatile uint64_t*>(mmio_addr(slot, reg)) = v;
}
inline uint8_t mmio_read8(unsigned slot, uint32_t reg) {
  return *reinterpret_cast<volatile uint8_t*>(mmio_addr(slot, reg));
}

// Compiler barrier: orders our memory accesses against the device's view at the
// next exit (x86 is TSO, so stores are not reordered with stores).
inline void compiler_barrier() { asm volatile("" ::: "memory"); }
// Full fence: a store followed by a load of device-written memory (virtio event
// index checks) needs store->load ordering when the device runs on another thread.
inline void full_barrier() { asm volatile("mfence" ::: "memory"); }

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_LIB_MMIO_H_
