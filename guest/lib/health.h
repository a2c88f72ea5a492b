// The app-level heartbeat (FTVM_SLOT_HEALTH): "I am alive" for the VMM's health
// monitor (ftvm --health-grace-ms). A guest that never beats is never judged.
#ifndef FTVM_GUEST_LIB_HEALTH_H_
#define FTVM_GUEST_LIB_HEALTH_H_

#include <stdint.h>

#include "guest/lib/dev.h"
#include "guest/lib/mmio.h"

namespace ftvm::guest {

// One beat (one exit); `value` is the app's own (a counter, a status word).
inline void health_beat(uint64_t value) { mmio_write64(FTVM_SLOT_HEALTH, FTVM_HEALTH_HEARTBEAT, value); }

// A paced heartbeat for an app's main loop. It owns the one-shot timer
// (FTVM_IRQ_TIMER) as its pacemaker, so an app idle in an interrupt wait is woken
// once a period to beat: an idle app is alive, only a stuck one falls silent.
// Every MMIO access is an exit, so a period is long (hundreds of ms): a beat costs
// the timer's interrupt, the beat and the re-arm.
class Heartbeat {
 public:
  // period_ms 0, or no health device: off (poll() does nothing).
  void start(uint64_t period_ms);
  // Call often from the main loop (before taking the snapshot for an idle wait):
  // a RAM read, plus a beat and a re-arm once the period has passed.
  void poll();
  // Periods passed since start() (whole timer ticks), for apps that act after a time.
  uint64_t ticks() const { return ticks_; }
  uint64_t period_ms() const { return period_ns_ / 1000000; }
  bool on() const { return period_ns_ != 0; }

 private:
  uint64_t period_ns_ = 0;
  uint64_t seen_ = 0;  // irq_count(FTVM_IRQ_TIMER) at the last look
  uint64_t ticks_ = 0;
  uint64_t beats_ = 0;
};

// A hung app, on purpose (for testing the health monitor): prints why, then spins
// at ring 3 forever without a single exit or beat. Interrupts still arrive (and
// return here), as they would to a real app stuck in a loop.
[[noreturn]] void hang_forever(const char* who);
// A hung kernel, on purpose: prints why, then traps into the kernel, which spins at
// ring 0 with interrupts off forever (no exit, no beat, no interrupt taken).
[[noreturn]] void hang_kernel_forever(const char* who);

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_LIB_HEALTH_H_
