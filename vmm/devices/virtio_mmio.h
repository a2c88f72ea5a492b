// virtio-mmio version 2 transport (virtio 1.2, section 4.2.2) around a small backend.
//
// The transport owns registers, feature negotiation, the status state machine and
// the virtqueues; a VirtioBackend (blk, net) only says what it is and moves data.
// QUEUE_NOTIFY is handled synchronously inside the MMIO exit that carried it, so the
// completions it produces land at a deterministic guest position (record/replay).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vmm/abi/ftvm_abi.h"
#include "vmm/devices/device.h"
#include "vmm/devices/virtqueue.h"
#include "vmm/guest_memory.h"

namespace ftvm::vmm {

namespace snapshot {
class Virtio;  // vmm/snapshot.proto
}

inline constexpr uint32_t kVirtioInterruptUsedRing = 1;  // INTERRUPT_STATUS bit 0
inline constexpr uint32_t kVirtioInterruptConfig = 2;    // INTERRUPT_STATUS bit 1

// What a device type provides. All calls are on the vCPU thread. Queue arguments
// are the transport's queues, indexed by queue number; a backend reports a malformed
// request with Virtqueue::fail() and the transport sets NEEDS_RESET.
class VirtioBackend {
 public:
  virtual ~VirtioBackend() = default;
  virtual uint32_t device_id() const = 0;
  virtual uint64_t device_features() const = 0;  // bit n = feature n
  virtual std::span<const uint8_t> config() const = 0;  // device config space (read-only)
  virtual unsigned num_queues() const = 0;
  virtual uint16_t queue_max(unsigned /*queue*/) const { return FTVM_VIRTQ_MAX_SIZE; }
  // The driver notified `queue` (ready, device live): process it now, completely.
  virtual void process(unsigned queue, std::span<Virtqueue> queues) = 0;
  // Called after every exit and on host-fd readiness: must be cheap when idle.
  virtual void poll(std::span<Virtqueue> /*queues*/) {}
  virtual std::vector<int> host_fds() const { return {}; }
  virtual void host_ready() {}
  virtual bool wants_host_events(std::span<const Virtqueue> /*queues*/) const { return false; }
  // Device reset (status written 0): drop any per-driver state.
  virtual void reset() {}
  // Guest-visible backend state (counters the guest can infer, output hashes);
  // none by default.
  virtual void save(snapshot::Virtio& /*out*/) const {}
  virtual void restore(const snapshot::Virtio& /*in*/) {}
};

class VirtioMmioDevice : public Device {
 public:
  // Throws ftvm::Error when the backend is unusable (no queues, bad queue sizes).
  VirtioMmioDevice(std::string name, GuestMemory& mem, InterruptSink& irq, unsigned irq_line,
                   std::unique_ptr<VirtioBackend> backend);

  std::string_view name() const override { return name_; }
  uint64_t mmio_read(uint64_t offset, unsigned size) override;
  void mmio_write(uint64_t offset, unsigned size, uint64_t value) override;
  std::vector<int> host_fds() const override { return backend_->host_fds(); }
  void host_ready() override { backend_->host_ready(); }
  bool wants_host_events() const override;
  void poll() override;
  bool save(snapshot::Device& out) const override;
  void restore(const snapshot::Device& in) override;
  // After the machine changed queues behind the transport's back (a replayed frame
  // delivered into the RX ring): turn broken queues into NEEDS_RESET and raise the
  // interrupt the driver asked for.
  void notify_backend_progress() { after_backend(); }

  // Inspection (tests, device state save).
  VirtioBackend& backend() { return *backend_; }
  uint32_t status() const { return status_; }
  uint32_t interrupt_status() const { return interrupt_status_; }
  uint64_t driver_features() const { return driver_features_; }
  bool needs_reset() const { return (status_ & VIRTIO_STATUS_NEEDS_RESET) != 0; }
  const Virtqueue& queue(unsigned i) const { return queues_.at(i); }
  // The queues, for a replayer feeding the backend logged input; call
  // notify_backend_progress() afterwards. Empty unless the device is live.
  std::span<Virtqueue> live_queues() { return operational() ? std::span<Virtqueue>(queues_) : std::span<Virtqueue>(); }

 private:
  uint32_t read_register(uint64_t offset);
  void write_register(uint64_t offset, uint32_t value);
  void write_status(uint32_t value);
  // Status written 0, and a guest reset (Device::reset).
  void reset() override;
  Virtqueue* selected_queue();
  // Device is live: DRIVER_OK, and neither NEEDS_RESET nor FAILED.
  bool operational() const;
  // After anything that may have pushed used entries or broken a queue: turn broken
  // queues into NEEDS_RESET + config interrupt, and raise the line when a queue's
  // driver asked for an interrupt.
  void after_backend();
  void set_needs_reset(std::string_view reason, int queue);
  void raise(uint32_t why);

  std::string name_;
  InterruptSink* irq_;
  unsigned irq_line_;
  std::unique_ptr<VirtioBackend> backend_;
  std::vector<Virtqueue> queues_;
  uint64_t device_features_;
  uint64_t driver_features_ = 0;
  bool unknown_high_features_ = false;  // driver wrote a feature bit >= 64
  uint32_t device_features_sel_ = 0;
  uint32_t driver_features_sel_ = 0;
  uint32_t queue_sel_ = 0;
  uint32_t status_ = 0;
  uint32_t interrupt_status_ = 0;
  uint32_t config_generation_ = 0;  // backends' config is fixed for the device's life
};

}  // namespace ftvm::vmm
