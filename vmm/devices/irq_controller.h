// A tiny interrupt controller: 32 lines, pending/mask/ack, delivered as vectors
// FTVM_IRQ_VECTOR_BASE + line by the vCPU backend (no in-kernel irqchip). It also
// implements the guest's idle: a read of WAIT blocks the vCPU until a line is
// pending, and the interrupt is injected right after that exit.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

#include "vmm/devices/device.h"
#include "vmm/devices/device_io.h"

namespace ftvm::vmm {

class InterruptController final : public Device, public InterruptSink {
 public:
  // `wait_for_host_event` blocks until the host has something for the guest (and
  // services devices); it returns false when the VM is stopping.
  InterruptController(std::function<bool()> wait_for_host_event, DeviceIo& io)
      : wait_(std::move(wait_for_host_event)), io_(io) {}

  std::string_view name() const override { return "irq"; }
  uint64_t mmio_read(uint64_t offset, unsigned size) override;
  void mmio_write(uint64_t offset, unsigned size, uint64_t value) override;
  bool save(snapshot::Device& out) const override;
  void restore(const snapshot::Device& in) override;

  void raise(unsigned line) override;
  bool has_deliverable() const { return (pending_ & ~mask_) != 0; }
  std::optional<uint8_t> next_vector() const;
  void delivered(uint8_t vector);
  // Blocks (servicing host events) until a line is deliverable; false if stopping.
  bool wait_until_deliverable();

  uint64_t delivered_count() const { return delivered_; }
  uint32_t pending() const { return pending_; }
  uint32_t mask() const { return mask_; }
  void reset() override {
    pending_ = 0;
    mask_ = 0;
    delivered_ = 0;
  }

 private:
  std::function<bool()> wait_;
  DeviceIo& io_;
  uint32_t pending_ = 0;
  uint32_t mask_ = 0;
  uint64_t delivered_ = 0;
};

}  // namespace ftvm::vmm
