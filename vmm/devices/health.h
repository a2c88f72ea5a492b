// Guest health: the in-guest heartbeat (FTVM_SLOT_HEALTH). The guest kit writes
// HEARTBEAT every so often from its long-running apps; a health monitor
// (vmm/health_monitor.h) on another thread reads when the last beat came and acts
// when none has come for the grace period.
//
// Beats are no input: the guest reads nothing back, so nothing here is logged or
// replayed, and the device has no guest-visible state (no save/restore). When a
// beat came is the host's monotonic time, only for the monitor.
#pragma once

#include <atomic>
#include <cstdint>

#include "common/clock.h"
#include "vmm/devices/device.h"

namespace ftvm::vmm {

class HealthDevice final : public Device {
 public:
  explicit HealthDevice(Clock& clock) : clock_(clock) {}
  std::string_view name() const override { return "health"; }
  uint64_t mmio_read(uint64_t, unsigned) override { return 0; }
  void mmio_write(uint64_t offset, unsigned size, uint64_t value) override;
  // Power-on: no beat seen (a rebooted guest is not watched until it beats again).
  void reset() override;

  // Any thread. Beats since power-on (0: the guest has not beaten, it is not
  // watched), the host monotonic time of the last one, the value it wrote.
  uint64_t beats() const { return beats_.load(std::memory_order_acquire); }
  uint64_t last_beat_ns() const { return last_beat_ns_.load(std::memory_order_acquire); }
  uint64_t last_value() const { return last_value_.load(std::memory_order_relaxed); }

 private:
  Clock& clock_;
  std::atomic<uint64_t> beats_{0};
  std::atomic<uint64_t> last_beat_ns_{0};
  std::atomic<uint64_t> last_value_{0};
};

}  // namespace ftvm::vmm
