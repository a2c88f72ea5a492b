// One-shot timer raising FTVM_IRQ_TIMER. Backed by a timerfd that the machine's event
// thread watches; expiry is turned into an interrupt on the vCPU thread in poll().
// When replaying, the timerfd is never armed: expiries come from the log (expire()).
#pragma once

#include "common/unique_fd.h"
#include "vmm/devices/device.h"
#include "vmm/devices/device_io.h"

namespace ftvm::vmm {

class Timer final : public Device {
 public:
  Timer(InterruptSink& irq, DeviceIo& io);
  std::string_view name() const override { return "timer"; }
  uint64_t mmio_read(uint64_t offset, unsigned size) override;
  void mmio_write(uint64_t offset, unsigned size, uint64_t value) override;
  std::vector<int> host_fds() const override { return {fd_.get()}; }
  bool wants_host_events() const override { return !io_.replaying(); }
  void host_ready() override { expired_ = true; }
  void poll() override;
  bool save(snapshot::Device& out) const override;
  void restore(const snapshot::Device& in) override;

  // The replay entry: a logged expiry. False when the timer is not armed (the
  // replica diverged from the recording).
  bool expire();
  // A replica going live: an armed timer starts counting on the host, for the whole
  // interval the guest asked for (when it was armed on the primary is not known;
  // late is safe for a one-shot timer, early is not).
  void go_live();
  // Disarmed, no expiries counted (the host timerfd disarmed too).
  void reset() override;
  bool armed() const { return armed_; }
  uint64_t fired() const { return fired_; }

 private:
  InterruptSink& irq_;
  DeviceIo& io_;
  UniqueFd fd_;
  uint64_t fired_ = 0;
  uint64_t interval_ns_ = 0;  // the last ARM_NS value
  bool armed_ = false;
  bool expired_ = false;  // the timerfd fired since the last poll()
};

}  // namespace ftvm::vmm
