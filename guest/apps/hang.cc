// app=hang beat_ms=B hang_after_ms=H mode=app|kernel: heartbeats every B ms while
// idle, then, after H ms, hangs without an exit or a beat, for the VMM's health
// monitor to notice (ftvm --health-grace-ms): mode=app (the default) spins at ring
// 3 (a hung app; interrupts still come and go), mode=kernel spins in the kernel at
// ring 0 with interrupts off (a hung kernel). It needs no disk or NIC, so a
// protected pair can run it anywhere.
#include "guest/apps/app.h"
#include "guest/lib/console.h"
#include "guest/lib/dev.h"
#include "guest/lib/health.h"

namespace ftvm::guest {

int app_hang(const Args& args) {
  bool ok1 = true, ok2 = true;
  const uint64_t beat_ms = args.get_u64("beat_ms", 200, &ok1);
  const uint64_t hang_after_ms = args.get_u64("hang_after_ms", 1000, &ok2);
  if (!ok1 || !ok2 || beat_ms == 0) {
    con_printf("hang: bad beat_ms= or hang_after_ms= (want numbers, beat_ms > 0)\n");
    return kExitBadSetup;
  }
  const Str mode = args.get_str("mode", Str::of("app"));
  const bool kernel = mode.eq("kernel");
  if (!kernel && !mode.eq("app")) {
    con_printf("hang: bad mode=%.*s (want app or kernel)\n", static_cast<int>(mode.n), mode.p);
    return kExitBadSetup;
  }
  if (!slot_present(FTVM_SLOT_HEALTH) || !slot_present(FTVM_SLOT_TIMER)) {
    con_printf("hang: no health or timer device\n");
    return kExitBadSetup;
  }
  con_printf("hang: beating every %lu ms, hanging the %s after %lu ms\n", beat_ms, kernel ? "kernel" : "app",
             hang_after_ms);
  Heartbeat heartbeat;
  heartbeat.start(beat_ms);
  for (;;) {
    const uint64_t snapshot = irq_total();
    heartbeat.poll();
    if (heartbeat.ticks() * beat_ms >= hang_after_ms) {
      if (kernel) hang_kernel_forever("hang");
      hang_forever("hang");
    }
    irq_wait_since(snapshot);
  }
}

}  // namespace ftvm::guest
