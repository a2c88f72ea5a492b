#include "guest/lib/health.h"

#include "guest/lib/console.h"

namespace ftvm::guest {

void Heartbeat::start(uint64_t period_ms) {
  if (period_ms == 0 || !slot_present(FTVM_SLOT_HEALTH) || !slot_present(FTVM_SLOT_TIMER)) return;
  period_ns_ = period_ms * 1000000;
  seen_ = irq_count(FTVM_IRQ_TIMER);
  health_beat(++beats_);  // the first beat: from here on the guest is watched
  timer_arm_ns(period_ns_);
}

void Heartbeat::poll() {
  if (period_ns_ == 0) return;
  const uint64_t now = irq_count(FTVM_IRQ_TIMER);
  if (now == seen_) return;
  ticks_ += now - seen_;
  seen_ = now;
  health_beat(++beats_);
  timer_arm_ns(period_ns_);
}

void hang_forever(const char* who) {
  con_printf("%s: hanging now (no more heartbeats)\n", who);
  con_flush();
  for (;;) asm volatile("pause" ::: "memory");
}

}  // namespace ftvm::guest

namespace ftvm::guest {

void hang_kernel_forever(const char* who) {
  con_printf("%s: hanging the kernel now (ring 0, interrupts off; no more heartbeats)\n", who);
  con_flush();
  // int3 is the one software interrupt ring 3 can raise under PVM; the magic in RAX
  // turns the kernel's #BP stub into the hang (isr.S).
  asm volatile("int3" : : "a"(uint64_t{FTVM_GUEST_HANG_KERNEL_MAGIC}) : "memory");
  for (;;) asm volatile("pause" ::: "memory");  // not reached
}

}  // namespace ftvm::guest
