#include "vmm/devices/health.h"

#include "vmm/abi/ftvm_abi.h"

namespace ftvm::vmm {

void HealthDevice::mmio_write(uint64_t offset, unsigned, uint64_t value) {
  if (offset != FTVM_HEALTH_HEARTBEAT) return;
  last_value_.store(value, std::memory_order_relaxed);
  // The time before the count: a monitor that sees the count sees a fresh time.
  last_beat_ns_.store(clock_.monotonic_ns(), std::memory_order_release);
  beats_.fetch_add(1, std::memory_order_acq_rel);
}

void HealthDevice::reset() {
  beats_.store(0, std::memory_order_release);
  last_beat_ns_.store(0, std::memory_order_release);
  last_value_.store(0, std::memory_order_relaxed);
}

}  // namespace ftvm::vmm
