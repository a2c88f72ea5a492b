// app=timers period_us=P ticks=T: compute while a one-shot timer fires every P us;
// re-armed from ring 3 whenever the tick counter advances. The checksum depends on
// where the ticks landed, so it is the same on a replica only if interrupts were
// replayed at the same positions.
#include "guest/apps/app.h"
#include "guest/apps/compute_core.h"
#include "guest/lib/console.h"
#include "guest/lib/dev.h"

namespace ftvm::guest {
namespace {
// Work between counter checks: ~2 us natively, so a tick is noticed promptly.
constexpr uint64_t kChunkIters = 1000;
}  // namespace

int app_timers(const Args& args) {
  bool ok1, ok2;
  uint64_t period_us = args.get_u64("period_us", 1000, &ok1);
  uint64_t ticks = args.get_u64("ticks", 100, &ok2);
  if (!ok1 || !ok2 || period_us == 0) {
    con_printf("timers: bad period_us= or ticks=\n");
    return kExitBadSetup;
  }
  if (!slot_present(FTVM_SLOT_TIMER)) {
    con_printf("timers: no timer device\n");
    return kExitBadSetup;
  }
  ftvm_compute_state st;
  ftvm_compute_init(&st);
  // Mix the chunk count at each tick into the checksum: it records where each
  // interrupt was observed.
  uint64_t mix = 0;
  uint64_t chunks = 0;
  uint64_t seen = irq_count(FTVM_IRQ_TIMER);
  uint64_t got = 0;
  if (ticks > 0) timer_arm_ns(period_us * 1000);
  while (got < ticks) {
    ftvm_compute_run(&st, kChunkIters);
    ++chunks;
    uint64_t now = irq_count(FTVM_IRQ_TIMER);
    if (now != seen) {
      got += now - seen;
      seen = now;
      mix = (mix ^ chunks) * 0x100000001b3ull;  // FNV-style fold
      if (got < ticks) timer_arm_ns(period_us * 1000);
    }
  }
  uint64_t fired = timer_fired();
  uint64_t sum = ftvm_compute_digest(&st) ^ mix;
  con_printf("timers: ticks=%lu fired=%lu chunks=%lu checksum=0x%016lx\n", got, fired, chunks, sum);
  return kExitOk;
}

}  // namespace ftvm::guest
