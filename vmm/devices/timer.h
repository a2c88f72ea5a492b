// One-shot timer raising FTVM_IRQ_TIMER. Backed by a timerfd that the machine's event
// thread watches; expiry is turned into an interrupt on the vCPU thread in poll().
#pragma once

#include "common/unique_fd.h"
#include "vmm/devices/device.h"

namespace ftvm::vmm {

class Timer final : public Device {
 public:
  explicit Timer(InterruptSink& irq);
  std::string_view name() const override { return "timer"; }
  uint64_t mmio_read(uint64_t offset, unsigned size) override;
  void mmio_write(uint64_t offset, unsigned size, uint64_t value) override;
  std::vector<int> host_fds() const override { return {fd_.get()}; }
  void host_ready() override { expired_ = true; }
  void poll() override;

  uint64_t fired() const { return fired_; }

 private:
  InterruptSink& irq_;
  UniqueFd fd_;
  uint64_t fired_ = 0;
  bool armed_ = false;
  bool expired_ = false;  // the timerfd fired since the last poll()
};

}  // namespace ftvm::vmm
