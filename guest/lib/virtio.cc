#include "guest/lib/virtio.h"

#include "guest/lib/arena.h"
#include "guest/lib/dev.h"
#include "guest/lib/mmio.h"

namespace ftvm::guest {

// ---- VirtioDevice --------------------------------------------------------------

uint32_t VirtioDevice::read32(uint32_t reg) const { return mmio_read32(slot_, reg); }
void VirtioDevice::write32(uint32_t reg, uint32_t v) const { mmio_write32(slot_, reg, v); }
uint32_t VirtioDevice::read_config32(uint32_t offset) const {
  return read32(VIRTIO_MMIO_CONFIG + offset);
}
uint8_t VirtioDevice::read_config8(uint32_t offset) const {
  return mmio_read8(slot_, VIRTIO_MMIO_CONFIG + offset);
}
void VirtioDevice::notify(uint16_t queue) { write32(VIRTIO_MMIO_QUEUE_NOTIFY, queue); }

bool VirtioDevice::probe(unsigned slot, uint32_t device_id) {
  slot_ = slot;
  if (!slot_present(slot)) {
    error_ = "slot not present in boot info";
    return false;
  }
  if (read32(VIRTIO_MMIO_MAGIC_VALUE) != VIRTIO_MMIO_MAGIC) {
    error_ = "bad virtio magic";
    return false;
  }
  if (read32(VIRTIO_MMIO_VERSION) != 2) {
    error_ = "not virtio-mmio version 2";
    return false;
  }
  if (read32(VIRTIO_MMIO_DEVICE_ID) != device_id) {
    error_ = "unexpected device id";
    return false;
  }
  return true;
}

void VirtioDevice::fail() {
  status_ |= VIRTIO_STATUS_FAILED;
  write32(VIRTIO_MMIO_STATUS, status_);
}

bool VirtioDevice::begin_init(uint64_t wanted) {
  write32(VIRTIO_MMIO_STATUS, 0);  // reset
  status_ = VIRTIO_STATUS_ACKNOWLEDGE;
  write32(VIRTIO_MMIO_STATUS, status_);
  status_ |= VIRTIO_STATUS_DRIVER;
  write32(VIRTIO_MMIO_STATUS, status_);

  write32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
  uint64_t offered = read32(VIRTIO_MMIO_DEVICE_FEATURES);
  write32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
  offered |= static_cast<uint64_t>(read32(VIRTIO_MMIO_DEVICE_FEATURES)) << 32;
  if (!((offered >> VIRTIO_F_VERSION_1) & 1u)) {
    error_ = "device does not offer VIRTIO_F_VERSION_1";
    fail();
    return false;
  }
  features_ = offered & (wanted | (1ull << VIRTIO_F_VERSION_1));
  write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
  write32(VIRTIO_MMIO_DRIVER_FEATURES, static_cast<uint32_t>(features_));
  write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
  write32(VIRTIO_MMIO_DRIVER_FEATURES, static_cast<uint32_t>(features_ >> 32));

  status_ |= VIRTIO_STATUS_FEATURES_OK;
  write32(VIRTIO_MMIO_STATUS, status_);
  if (!(read32(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
    error_ = "device rejected our features";
    fail();
    return false;
  }
  return true;
}

bool VirtioDevice::setup_queue(unsigned index, unsigned max_size, VirtQueue* q, Arena& arena) {
  write32(VIRTIO_MMIO_QUEUE_SEL, index);
  if (read32(VIRTIO_MMIO_QUEUE_READY) != 0) {
    error_ = "queue already live after reset";
    return false;
  }
  uint32_t dev_max = read32(VIRTIO_MMIO_QUEUE_NUM_MAX);
  if (dev_max == 0) {
    error_ = "queue not available";
    return false;
  }
  unsigned num = max_size;
  if (num > FTVM_VIRTQ_MAX_SIZE) num = FTVM_VIRTQ_MAX_SIZE;
  if (num > dev_max) num = dev_max;
  // Split rings need a power-of-two size.
  while (num & (num - 1)) num &= num - 1;

  // Descriptor table 16-byte aligned, driver area 2, device area 4: page-align all.
  auto* desc = static_cast<virtq_desc*>(arena.alloc(sizeof(virtq_desc) * num, 4096));
  auto* avail = static_cast<uint16_t*>(arena.alloc(2 * (3 + num), 4096));
  auto* used = static_cast<uint16_t*>(arena.alloc(6 + 8 * num, 4096));
  if (desc == nullptr || avail == nullptr || used == nullptr) {
    error_ = "out of memory for virtqueue";
    return false;
  }
  q->dev_ = this;
  q->index_ = static_cast<uint16_t>(index);
  q->num_ = static_cast<uint16_t>(num);
  q->desc_ = desc;
  q->avail_ = avail;
  q->used_ = used;
  for (unsigned i = 0; i < num; ++i) desc[i].next = static_cast<uint16_t>((i + 1) % num);
  q->free_head_ = 0;
  q->num_free_ = static_cast<uint16_t>(num);
  q->disable_irq();

  auto addr = [](const void* p) { return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)); };
  write32(VIRTIO_MMIO_QUEUE_NUM, num);
  write32(VIRTIO_MMIO_QUEUE_DESC_LOW, static_cast<uint32_t>(addr(desc)));
  write32(VIRTIO_MMIO_QUEUE_DESC_HIGH, static_cast<uint32_t>(addr(desc) >> 32));
  write32(VIRTIO_MMIO_QUEUE_DRIVER_LOW, static_cast<uint32_t>(addr(avail)));
  write32(VIRTIO_MMIO_QUEUE_DRIVER_HIGH, static_cast<uint32_t>(addr(avail) >> 32));
  write32(VIRTIO_MMIO_QUEUE_DEVICE_LOW, static_cast<uint32_t>(addr(used)));
  write32(VIRTIO_MMIO_QUEUE_DEVICE_HIGH, static_cast<uint32_t>(addr(used) >> 32));
  write32(VIRTIO_MMIO_QUEUE_READY, 1);
  return true;
}

void VirtioDevice::driver_ok() {
  status_ |= VIRTIO_STATUS_DRIVER_OK;
  write32(VIRTIO_MMIO_STATUS, status_);
}

// ---- VirtQueue -----------------------------------------------------------------

bool VirtQueue::add(const VqBuf* bufs, unsigned n, void* token) {
  if (n == 0 || n > num_free_) return false;
  uint16_t head = free_head_;
  uint16_t d = head;
  for (unsigned i = 0; i < n; ++i) {
    virtq_desc& desc = desc_[d];
    desc.addr = reinterpret_cast<uintptr_t>(bufs[i].addr);
    desc.len = bufs[i].len;
    desc.flags = static_cast<uint16_t>((bufs[i].device_writes ? VIRTQ_DESC_F_WRITE : 0) |
                                       (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
    if (i + 1 < n) d = desc.next;
  }
  free_head_ = desc_[d].next;
  num_free_ = static_cast<uint16_t>(num_free_ - n);
  tokens_[head] = token;
  avail_[2 + (avail_shadow_ % num_)] = head;
  ++avail_shadow_;
  compiler_barrier();  // ring entry and descriptors before the index
  *avail_idx() = avail_shadow_;
  return true;
}

void VirtQueue::raw_publish(uint16_t head, uint16_t advance) {
  avail_[2 + (avail_shadow_ % num_)] = head;
  avail_shadow_ = static_cast<uint16_t>(avail_shadow_ + advance);
  compiler_barrier();
  *avail_idx() = avail_shadow_;
}

bool VirtQueue::kick() {
  // Our idx store must be visible before we read the device's avail_event.
  full_barrier();
  uint16_t old_idx = kicked_idx_;
  uint16_t new_idx = avail_shadow_;
  if (old_idx == new_idx) return false;
  kicked_idx_ = new_idx;
  bool need;
  if (dev_->has_feature(VIRTIO_F_RING_EVENT_IDX)) {
    need = vring_need_event(*avail_event(), new_idx, old_idx);
  } else {
    need = (used_[0] & 1u) == 0;  // VIRTQ_USED_F_NO_NOTIFY
  }
  if (need) dev_->notify(index_);
  return need;
}

void VirtQueue::force_kick() {
  full_barrier();
  kicked_idx_ = avail_shadow_;
  dev_->notify(index_);
}

bool VirtQueue::has_used() const {
  compiler_barrier();
  return *used_idx() != last_used_;
}

void* VirtQueue::pop_used(uint32_t* written) {
  if (!has_used()) return nullptr;
  compiler_barrier();  // idx before the element (x86 keeps load order)
  const volatile uint32_t* elem = reinterpret_cast<const volatile uint32_t*>(&used_[2]) +
                                  2 * (last_used_ % num_);
  uint32_t id = elem[0];
  uint32_t len = elem[1];
  ++last_used_;
  // Keep used_event relative to what we consumed (see enable/disable_irq).
  *used_event() = static_cast<uint16_t>(irq_enabled_ ? last_used_ : last_used_ - 1);
  if (id >= num_) return nullptr;  // a broken device: ignore the entry
  void* token = tokens_[id];
  tokens_[id] = nullptr;
  // Return the chain to the free list.
  uint16_t d = static_cast<uint16_t>(id);
  uint16_t count = 1;
  while ((desc_[d].flags & VIRTQ_DESC_F_NEXT) && count < num_) {
    d = desc_[d].next;
    ++count;
  }
  desc_[d].next = free_head_;
  free_head_ = static_cast<uint16_t>(id);
  num_free_ = static_cast<uint16_t>(num_free_ + count);
  if (written != nullptr) *written = len;
  return token;
}

bool VirtQueue::enable_irq() {
  irq_enabled_ = true;
  *used_event() = last_used_;  // interrupt when the next entry is used
  full_barrier();
  return !has_used();
}

void VirtQueue::disable_irq() {
  irq_enabled_ = false;
  // An index behind everything we consumed never falls in a device's
  // [old, new) window (until 2^16 entries pass unconsumed).
  *used_event() = static_cast<uint16_t>(last_used_ - 1);
}

void VirtQueue::wait_used() { wait_used_since(irq_total()); }  // before looking at the ring

void VirtQueue::wait_used_since(uint64_t snapshot) {
  if (enable_irq()) irq_wait_since(snapshot);
  disable_irq();
}

}  // namespace ftvm::guest
