// Clock: monotonic time since VM start and wall time, read from the Clock interface
// (the only way time enters the guest, so it can be logged and replayed).
#pragma once

#include "common/clock.h"
#include "vmm/devices/device_io.h"
#include "vmm/devices/device.h"

namespace ftvm::vmm {

class ClockDevice final : public Device {
 public:
  ClockDevice(Clock& clock, DeviceIo& io) : clock_(clock), io_(io), start_ns_(clock.monotonic_ns()) {}
  std::string_view name() const override { return "clock"; }
  // A replica going live: its guest last read `monotonic_ns` (from the log); from
  // now on the host clock drives it, continuing from there, never going back.
  void continue_from(uint64_t monotonic_ns) { start_ns_ = clock_.monotonic_ns() - monotonic_ns; }
  // What the guest's monotonic clock reads now on a live or recording VM.
  uint64_t now_ns() const { return clock_.monotonic_ns() - start_ns_; }
  uint64_t mmio_read(uint64_t offset, unsigned size) override;
  void mmio_write(uint64_t, unsigned, uint64_t) override {}

 private:
  Clock& clock_;
  DeviceIo& io_;
  uint64_t start_ns_;
};

}  // namespace ftvm::vmm
