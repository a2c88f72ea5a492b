// app=exits n=N: times N MMIO exits from ring 3 (reads of the interrupt
// controller's PENDING register, which has no side effect) with the clock device.
// The benchmark divides mmio_ns by n for the cost of one exit round trip.
#include "guest/apps/app.h"
#include "guest/lib/console.h"
#include "guest/lib/dev.h"

namespace ftvm::guest {

int app_exits(const Args& args) {
  bool ok;
  uint64_t n = args.get_u64("n", 10000, &ok);
  if (!ok || n == 0) {
    con_printf("exits: bad n=\n");
    return kExitBadSetup;
  }
  uint64_t t0 = clock_mono_ns();
  uint32_t sink = 0;
  for (uint64_t i = 0; i < n; ++i) sink |= irq_pending();
  uint64_t t1 = clock_mono_ns();
  con_printf("exits: n=%lu mmio_ns=%lu pending=%u\n", n, t1 - t0, sink);
  return kExitOk;
}

}  // namespace ftvm::guest
