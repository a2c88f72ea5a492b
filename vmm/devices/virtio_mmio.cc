#include "vmm/devices/virtio_mmio.h"

#include <bit>
#include <string>
#include <utility>

#include "common/error.h"
#include "common/log.h"
#include "vmm/snapshot.pb.h"

namespace ftvm::vmm {

namespace {

constexpr uint64_t Bit(unsigned n) { return uint64_t(1) << n; }

}  // namespace

VirtioMmioDevice::VirtioMmioDevice(std::string name, GuestMemory& mem, InterruptSink& irq,
                                   unsigned irq_line, std::unique_ptr<VirtioBackend> backend)
    : name_(std::move(name)), irq_(&irq), irq_line_(irq_line), backend_(std::move(backend)) {
  if (!backend_) throw Error(name_ + ": no virtio backend");
  if (irq_line_ >= FTVM_IRQ_LINES)
    throw Error(name_ + ": interrupt line " + std::to_string(irq_line_) + " out of range");
  const unsigned n = backend_->num_queues();
  if (n == 0) throw Error(name_ + ": virtio backend has no queues");
  device_features_ = backend_->device_features();
  if (!(device_features_ & Bit(VIRTIO_F_VERSION_1)))
    throw Error(name_ + ": virtio backend does not offer VIRTIO_F_VERSION_1");
  queues_.reserve(n);
  for (unsigned i = 0; i < n; ++i) {
    const uint16_t max = backend_->queue_max(i);
    if (max == 0 || max > 32768 || !std::has_single_bit(max))
      throw Error(name_ + ": queue " + std::to_string(i) + " maximum size " + std::to_string(max) +
                  " is not a power of two in 1..32768");
    queues_.emplace_back(mem, max);
  }
}

bool VirtioMmioDevice::operational() const {
  return (status_ & VIRTIO_STATUS_DRIVER_OK) &&
         !(status_ & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED));
}

Virtqueue* VirtioMmioDevice::selected_queue() {
  return queue_sel_ < queues_.size() ? &queues_[queue_sel_] : nullptr;
}

void VirtioMmioDevice::reset() {
  for (Virtqueue& q : queues_) q.reset();
  driver_features_ = 0;
  unknown_high_features_ = false;
  device_features_sel_ = driver_features_sel_ = queue_sel_ = 0;
  status_ = 0;
  interrupt_status_ = 0;
  backend_->reset();
}

void VirtioMmioDevice::raise(uint32_t why) {
  interrupt_status_ |= why;
  irq_->raise(irq_line_);
}

void VirtioMmioDevice::set_needs_reset(std::string_view reason, int queue) {
  if (needs_reset()) return;
  status_ |= VIRTIO_STATUS_NEEDS_RESET;
  log::warn("virtio device needs reset", {{"device", name_}, {"queue", queue}, {"reason", reason}});
  // The spec asks for a configuration change notification so the driver looks at
  // the status and sees NEEDS_RESET.
  if (status_ & VIRTIO_STATUS_DRIVER_OK) raise(kVirtioInterruptConfig);
}

void VirtioMmioDevice::after_backend() {
  bool interrupt = false;
  for (size_t i = 0; i < queues_.size(); ++i) {
    Virtqueue& q = queues_[i];
    if (q.broken()) {
      set_needs_reset(q.error(), int(i));
      return;  // the device has stopped; the driver must reset it
    }
    if (q.needs_interrupt()) interrupt = true;
  }
  if (interrupt) raise(kVirtioInterruptUsedRing);
}

bool VirtioMmioDevice::save(snapshot::Device& out) const {
  snapshot::Virtio* s = out.mutable_virtio();
  s->set_status(status_);
  s->set_driver_features(driver_features_);
  s->set_unknown_high_features(unknown_high_features_);
  s->set_device_features_sel(device_features_sel_);
  s->set_driver_features_sel(driver_features_sel_);
  s->set_queue_sel(queue_sel_);
  s->set_interrupt_status(interrupt_status_);
  for (const Virtqueue& q : queues_) q.save(*s->add_queues());
  backend_->save(*s);
  return true;
}

void VirtioMmioDevice::restore(const snapshot::Device& in) {
  if (!in.has_virtio() || in.virtio().queues_size() != int(queues_.size()))
    throw Error("snapshot for device '" + name_ + "' does not hold this virtio device's state");
  const snapshot::Virtio& s = in.virtio();
  status_ = s.status();
  driver_features_ = s.driver_features();
  unknown_high_features_ = s.unknown_high_features();
  device_features_sel_ = s.device_features_sel();
  driver_features_sel_ = s.driver_features_sel();
  queue_sel_ = s.queue_sel();
  interrupt_status_ = s.interrupt_status();
  for (size_t i = 0; i < queues_.size(); ++i) queues_[i].restore(s.queues(int(i)));
  backend_->restore(s);
}

bool VirtioMmioDevice::wants_host_events() const {
  return operational() && backend_->wants_host_events(queues_);
}

void VirtioMmioDevice::poll() {
  if (!operational()) return;
  backend_->poll(queues_);
  after_backend();
}

uint64_t VirtioMmioDevice::mmio_read(uint64_t offset, unsigned size) {
  if (offset >= VIRTIO_MMIO_CONFIG) {
    // Config space: any size, assembled little-endian from the backend's bytes;
    // bytes past the end read as 0.
    const std::span<const uint8_t> cfg = backend_->config();
    const uint64_t base = offset - VIRTIO_MMIO_CONFIG;
    uint64_t v = 0;
    for (unsigned b = 0; b < size && b < 8; ++b)
      if (base + b < cfg.size()) v |= uint64_t(cfg[base + b]) << (8 * b);
    return v;
  }
  if (size != 4 || offset % 4 != 0) {
    log::debug("virtio-mmio register read with bad size",
               {{"device", name_}, {"offset", offset}, {"size", size}});
    return 0;
  }
  return read_register(offset);
}

void VirtioMmioDevice::mmio_write(uint64_t offset, unsigned size, uint64_t value) {
  if (offset >= VIRTIO_MMIO_CONFIG) {
    // Our backends' config spaces have no driver-writable fields.
    log::debug("virtio-mmio config write ignored", {{"device", name_}, {"offset", offset}, {"size", size}});
    return;
  }
  if (size != 4 || offset % 4 != 0) {
    log::debug("virtio-mmio register write with bad size",
               {{"device", name_}, {"offset", offset}, {"size", size}});
    return;
  }
  write_register(offset, uint32_t(value));
}

uint32_t VirtioMmioDevice::read_register(uint64_t offset) {
  switch (offset) {
    case VIRTIO_MMIO_MAGIC_VALUE: return VIRTIO_MMIO_MAGIC;
    case VIRTIO_MMIO_VERSION: return 2;
    case VIRTIO_MMIO_DEVICE_ID: return backend_->device_id();
    case VIRTIO_MMIO_VENDOR_ID: return FTVM_VIRTIO_VENDOR;
    case VIRTIO_MMIO_DEVICE_FEATURES:
      if (device_features_sel_ > 1) return 0;
      return uint32_t(device_features_ >> (32 * device_features_sel_));
    case VIRTIO_MMIO_QUEUE_NUM_MAX: {
      const Virtqueue* q = selected_queue();
      return q != nullptr ? q->max_size() : 0;  // 0 = queue not available
    }
    case VIRTIO_MMIO_QUEUE_READY: {
      const Virtqueue* q = selected_queue();
      return q != nullptr && q->ready() ? 1 : 0;
    }
    case VIRTIO_MMIO_INTERRUPT_STATUS: return interrupt_status_;
    case VIRTIO_MMIO_STATUS: return status_;
    case VIRTIO_MMIO_CONFIG_GENERATION: return config_generation_;
    default:
      // Write-only and undefined registers read as 0.
      return 0;
  }
}

void VirtioMmioDevice::write_register(uint64_t offset, uint32_t value) {
  // Queue configuration is only accepted while the selected queue is not ready.
  auto configurable_queue = [&]() -> Virtqueue* {
    Virtqueue* q = selected_queue();
    if (q == nullptr || q->ready()) {
      log::debug("virtio-mmio queue write ignored",
                 {{"device", name_}, {"offset", offset}, {"queue", queue_sel_},
                  {"why", q == nullptr ? "no such queue" : "queue is ready"}});
      return nullptr;
    }
    return q;
  };
  auto set_low = [](uint64_t old, uint32_t v) { return (old & ~uint64_t(0xffffffff)) | v; };
  auto set_high = [](uint64_t old, uint32_t v) { return (old & 0xffffffff) | (uint64_t(v) << 32); };

  switch (offset) {
    case VIRTIO_MMIO_DEVICE_FEATURES_SEL: device_features_sel_ = value; return;
    case VIRTIO_MMIO_DRIVER_FEATURES_SEL: driver_features_sel_ = value; return;
    case VIRTIO_MMIO_DRIVER_FEATURES:
      if (status_ & VIRTIO_STATUS_FEATURES_OK) {
        log::debug("virtio-mmio feature write after FEATURES_OK ignored", {{"device", name_}});
        return;
      }
      if (driver_features_sel_ == 0)
        driver_features_ = set_low(driver_features_, value);
      else if (driver_features_sel_ == 1)
        driver_features_ = set_high(driver_features_, value);
      else if (value != 0)
        // Feature words above 1 hold nothing we offer: FEATURES_OK will be refused.
        unknown_high_features_ = true;
      return;
    case VIRTIO_MMIO_QUEUE_SEL: queue_sel_ = value; return;
    case VIRTIO_MMIO_QUEUE_NUM:
      if (Virtqueue* q = configurable_queue()) q->set_size(uint16_t(value > 0xffff ? 0 : value));
      return;
    case VIRTIO_MMIO_QUEUE_DESC_LOW:
      if (Virtqueue* q = configurable_queue()) q->set_desc_gpa(set_low(q->desc_gpa(), value));
      return;
    case VIRTIO_MMIO_QUEUE_DESC_HIGH:
      if (Virtqueue* q = configurable_queue()) q->set_desc_gpa(set_high(q->desc_gpa(), value));
      return;
    case VIRTIO_MMIO_QUEUE_DRIVER_LOW:
      if (Virtqueue* q = configurable_queue()) q->set_driver_gpa(set_low(q->driver_gpa(), value));
      return;
    case VIRTIO_MMIO_QUEUE_DRIVER_HIGH:
      if (Virtqueue* q = configurable_queue()) q->set_driver_gpa(set_high(q->driver_gpa(), value));
      return;
    case VIRTIO_MMIO_QUEUE_DEVICE_LOW:
      if (Virtqueue* q = configurable_queue()) q->set_device_gpa(set_low(q->device_gpa(), value));
      return;
    case VIRTIO_MMIO_QUEUE_DEVICE_HIGH:
      if (Virtqueue* q = configurable_queue()) q->set_device_gpa(set_high(q->device_gpa(), value));
      return;
    case VIRTIO_MMIO_QUEUE_READY: {
      Virtqueue* q = selected_queue();
      if (q == nullptr) {
        log::debug("virtio-mmio QUEUE_READY for missing queue", {{"device", name_}, {"queue", queue_sel_}});
        return;
      }
      if (value == 0) {
        // The driver takes the queue down; its configuration starts over.
        q->reset();
        return;
      }
      if (q->ready()) return;
      if (!(status_ & VIRTIO_STATUS_FEATURES_OK)) {
        set_needs_reset("QUEUE_READY before FEATURES_OK", int(queue_sel_));
        return;
      }
      q->set_event_idx((driver_features_ & Bit(VIRTIO_F_RING_EVENT_IDX)) != 0);
      if (!q->activate()) set_needs_reset(q->error(), int(queue_sel_));
      return;
    }
    case VIRTIO_MMIO_QUEUE_NOTIFY: {
      if (value >= queues_.size()) {
        log::debug("virtio-mmio notify for missing queue", {{"device", name_}, {"queue", value}});
        return;
      }
      if (!operational() || !queues_[value].ready()) {
        log::debug("virtio-mmio notify ignored",
                   {{"device", name_}, {"queue", value}, {"status", status_}});
        return;
      }
      backend_->process(value, queues_);
      after_backend();
      return;
    }
    case VIRTIO_MMIO_INTERRUPT_ACK: interrupt_status_ &= ~value; return;
    case VIRTIO_MMIO_STATUS: write_status(value); return;
    default:
      log::debug("virtio-mmio write to undefined or read-only register ignored",
                 {{"device", name_}, {"offset", offset}});
      return;
  }
}

void VirtioMmioDevice::write_status(uint32_t value) {
  if (value == 0) {
    reset();
    return;
  }
  // NEEDS_RESET belongs to the device: the driver can neither set nor clear it.
  uint32_t next = (value & ~VIRTIO_STATUS_NEEDS_RESET) | (status_ & VIRTIO_STATUS_NEEDS_RESET);
  if ((next & VIRTIO_STATUS_FEATURES_OK) && !(status_ & VIRTIO_STATUS_FEATURES_OK)) {
    // Accept only a subset of what we offered, including VERSION_1 (we are a
    // modern-only device). Refusing = leaving FEATURES_OK clear; the driver re-reads.
    const uint64_t unknown = driver_features_ & ~device_features_;
    if (unknown != 0 || unknown_high_features_ || !(driver_features_ & Bit(VIRTIO_F_VERSION_1))) {
      log::warn("virtio driver features refused",
                {{"device", name_}, {"driver_features", driver_features_}, {"unknown", unknown},
                 {"version_1", (driver_features_ & Bit(VIRTIO_F_VERSION_1)) != 0}});
      next &= ~VIRTIO_STATUS_FEATURES_OK;
    }
  }
  const bool going_live = (next & VIRTIO_STATUS_DRIVER_OK) && !(status_ & VIRTIO_STATUS_DRIVER_OK);
  status_ = next;
  if (going_live && !(status_ & VIRTIO_STATUS_FEATURES_OK))
    set_needs_reset("DRIVER_OK without FEATURES_OK", -1);
}

}  // namespace ftvm::vmm
