// The simple fixed devices (clock, timer, rng, interrupt controller, power), as
// called from ring 3. Each call is one MMIO exit unless noted.
#ifndef FTVM_GUEST_LIB_DEV_H_
#define FTVM_GUEST_LIB_DEV_H_

#include <stddef.h>
#include <stdint.h>

#include "guest/kernel/kernel.h"
#include "guest/lib/mmio.h"

namespace ftvm::guest {

inline const ftvm_bootinfo& bootinfo() { return *ftvm_boot; }
// No exit: boot info is in RAM.
inline bool slot_present(unsigned slot) { return (ftvm_boot->present_slots >> slot) & 1u; }

inline uint64_t clock_mono_ns() { return mmio_read64(FTVM_SLOT_CLOCK, FTVM_CLOCK_MONO_NS); }
inline uint64_t clock_wall_ns() { return mmio_read64(FTVM_SLOT_CLOCK, FTVM_CLOCK_WALL_NS); }

// One-shot: raises FTVM_IRQ_TIMER once after ns; re-arming replaces; 0 cancels.
inline void timer_arm_ns(uint64_t ns) { mmio_write64(FTVM_SLOT_TIMER, FTVM_TIMER_ARM_NS, ns); }
inline uint64_t timer_fired() { return mmio_read64(FTVM_SLOT_TIMER, FTVM_TIMER_FIRED); }

inline uint64_t rng_u64() { return mmio_read64(FTVM_SLOT_RNG, FTVM_RNG_DATA); }
// Fills buf (any size; one exit per FTVM_RNG_MAX_FILL bytes).
void rng_fill(void* buf, size_t len);

// Interrupts delivered on a line so far: a RAM read, no exit.
inline uint64_t irq_count(unsigned line) { return ftvm_irq_count[line]; }
// Idle: blocks in the VMM until an unmasked line is pending; the interrupt is
// injected right after this exit. Returns the pending mask.
inline uint32_t irq_wait() { return mmio_read32(FTVM_SLOT_IRQ, FTVM_IRQ_WAIT); }
inline uint32_t irq_pending() { return mmio_read32(FTVM_SLOT_IRQ, FTVM_IRQ_PENDING); }
inline void irq_ack(uint32_t lines) { mmio_write32(FTVM_SLOT_IRQ, FTVM_IRQ_ACK, lines); }
inline void irq_set_mask(uint32_t lines) { mmio_write32(FTVM_SLOT_IRQ, FTVM_IRQ_MASK, lines); }
inline uint32_t irq_get_mask() { return mmio_read32(FTVM_SLOT_IRQ, FTVM_IRQ_MASK); }
inline uint64_t irq_delivered() { return mmio_read64(FTVM_SLOT_IRQ, FTVM_IRQ_DELIVERED); }

// All interrupts delivered so far (any line): a RAM read, no exit.
inline uint64_t irq_total() { return ftvm_irq_total; }
// The idle primitive. Usage: snapshot = irq_total(); check for work (ring
// indexes, counters); if none, irq_wait_since(snapshot). It blocks in
// FTVM_IRQ_WAIT only if no interrupt was delivered since the snapshot, so a
// wakeup that lands between the check and the wait is not lost. (A VMM kick can
// inject an interrupt at any instruction boundary; see wait.cc for how the
// remaining window is kept closed.) Returns once an interrupt was delivered
// since the snapshot, or spuriously; callers re-check their work.
void irq_wait_since(uint64_t snapshot);

// Flushes the console and powers the VM off with `code`. Never returns.
[[noreturn]] void power_off(uint32_t code);

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_LIB_DEV_H_
