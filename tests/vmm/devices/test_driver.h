// Guest-side helpers for device tests: a hand-written split-ring driver that lays
// rings out in GuestMemory exactly as a guest would, a virtio-mmio init sequence,
// and an InterruptSink that records what was raised.
#pragma once

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

#include <gtest/gtest.h>

#include "vmm/abi/ftvm_abi.h"
#include "vmm/devices/device.h"
#include "vmm/devices/virtqueue.h"
#include "vmm/guest_memory.h"

namespace ftvm::vmm::testing {

class RecordingSink : public InterruptSink {
 public:
  void raise(unsigned line) override { raised.push_back(line); }
  std::vector<unsigned> raised;
};

// One split ring in guest RAM, driven from the "guest" side.
class TestRing {
 public:
  struct Buf {
    uint64_t gpa;
    uint32_t len;
    bool writable;
  };

  // Descriptor table at `base`, driver area right after it, device area after that
  // (4-byte aligned). Zeroes all three.
  TestRing(GuestMemory& mem, uint16_t size, uint64_t base) : mem_(mem), size_(size) {
    desc = base;
    avail = desc + 16ull * size;
    used = (avail + 6 + 2ull * size + 3) & ~3ull;
    std::memset(mem.ptr(base, used + 6 + 8ull * size - base), 0, used + 6 + 8ull * size - base);
  }

  uint16_t size() const { return size_; }

  // Writes descriptor `i` raw (for malformed rings).
  void write_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    virtq_desc d{addr, len, flags, next};
    ASSERT_TRUE(mem_.write_obj(desc + 16ull * i, d));
  }
  // Puts `head` in the next avail slot; publishes the index when `publish`.
  void put_head(uint16_t head, bool publish = true) {
    u16(avail + 4 + 2ull * (avail_idx_ % size_)) = head;
    ++avail_idx_;
    if (publish) this->publish();
  }
  void publish() { u16(avail + 2) = avail_idx_; }

  // Adds a chain made of `bufs` (descriptors allocated round-robin); returns its head.
  uint16_t add(std::initializer_list<Buf> bufs, bool publish = true) {
    return add(std::vector<Buf>(bufs), publish);
  }
  uint16_t add(const std::vector<Buf>& bufs, bool publish = true) {
    const uint16_t head = next_desc_;
    for (size_t k = 0; k < bufs.size(); ++k) {
      const uint16_t i = next_desc_;
      next_desc_ = uint16_t((next_desc_ + 1) % size_);
      const bool last = k + 1 == bufs.size();
      write_desc(i, bufs[k].gpa, bufs[k].len,
                 uint16_t((bufs[k].writable ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT)),
                 last ? 0 : next_desc_);
    }
    put_head(head, publish);
    return head;
  }

  // Starts both indices at `idx` (as if that many chains had gone round already).
  void start_at(uint16_t idx) {
    avail_idx_ = idx;
    publish();
    u16(used + 2) = idx;
    seen_used_ = idx;
  }

  uint16_t avail_idx() const { return avail_idx_; }
  uint16_t used_idx() { return u16(used + 2); }
  uint16_t used_flags() { return u16(used); }
  uint16_t avail_event() { return u16(used + 4 + 8ull * size_); }
  void set_used_event(uint16_t v) { u16(avail + 4 + 2ull * size_) = v; }
  void set_avail_flags(uint16_t v) { u16(avail) = v; }
  virtq_used_elem used_elem(uint16_t idx) {
    virtq_used_elem e{};
    mem_.read_obj(used + 4 + 8ull * (idx % size_), e);
    return e;
  }
  // Used entries the device produced since the last call.
  std::vector<virtq_used_elem> take_used() {
    std::vector<virtq_used_elem> out;
    const uint16_t end = used_idx();
    for (; seen_used_ != end; ++seen_used_) out.push_back(used_elem(seen_used_));
    return out;
  }
  // Would a driver that moved avail idx from `old_idx` to `new_idx` kick now?
  bool driver_would_kick(uint16_t old_idx, uint16_t new_idx, bool event_idx) {
    if (event_idx) return vring_need_event(avail_event(), new_idx, old_idx);
    return !(used_flags() & kVirtqUsedFNoNotify);
  }

  uint64_t desc = 0, avail = 0, used = 0;

 private:
  uint16_t& u16(uint64_t gpa) { return *reinterpret_cast<uint16_t*>(mem_.ptr(gpa, 2)); }

  GuestMemory& mem_;
  uint16_t size_;
  uint16_t avail_idx_ = 0;
  uint16_t next_desc_ = 0;
  uint16_t seen_used_ = 0;
};

// Points `q` at `ring` and activates it, as the transport would.
inline bool ActivateOn(Virtqueue& q, const TestRing& ring, bool event_idx) {
  q.set_size(ring.size());
  q.set_desc_gpa(ring.desc);
  q.set_driver_gpa(ring.avail);
  q.set_device_gpa(ring.used);
  q.set_event_idx(event_idx);
  return q.activate();
}

// The virtio 1.2 (3.1.1) driver initialisation sequence over MMIO registers.
// Returns false (with gtest failures) when the device refused a step.
inline bool InitMmio(Device& dev, uint64_t features, std::initializer_list<const TestRing*> rings) {
  auto w = [&](uint64_t off, uint32_t v) { dev.mmio_write(off, 4, v); };
  auto r = [&](uint64_t off) { return uint32_t(dev.mmio_read(off, 4)); };
  EXPECT_EQ(r(VIRTIO_MMIO_MAGIC_VALUE), VIRTIO_MMIO_MAGIC);
  EXPECT_EQ(r(VIRTIO_MMIO_VERSION), 2u);
  w(VIRTIO_MMIO_STATUS, 0);
  w(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
  w(VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
  w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
  uint64_t offered = r(VIRTIO_MMIO_DEVICE_FEATURES);
  w(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
  offered |= uint64_t(r(VIRTIO_MMIO_DEVICE_FEATURES)) << 32;
  EXPECT_EQ(features & ~offered, 0u) << "test asks for features the device does not offer";
  w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
  w(VIRTIO_MMIO_DRIVER_FEATURES, uint32_t(features));
  w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
  w(VIRTIO_MMIO_DRIVER_FEATURES, uint32_t(features >> 32));
  const uint32_t s = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
  w(VIRTIO_MMIO_STATUS, s);
  if (!(r(VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
    ADD_FAILURE() << "device refused FEATURES_OK";
    return false;
  }
  uint32_t qi = 0;
  for (const TestRing* ring : rings) {
    w(VIRTIO_MMIO_QUEUE_SEL, qi++);
    EXPECT_EQ(r(VIRTIO_MMIO_QUEUE_READY), 0u);
    EXPECT_GE(r(VIRTIO_MMIO_QUEUE_NUM_MAX), ring->size());
    w(VIRTIO_MMIO_QUEUE_NUM, ring->size());
    w(VIRTIO_MMIO_QUEUE_DESC_LOW, uint32_t(ring->desc));
    w(VIRTIO_MMIO_QUEUE_DESC_HIGH, uint32_t(ring->desc >> 32));
    w(VIRTIO_MMIO_QUEUE_DRIVER_LOW, uint32_t(ring->avail));
    w(VIRTIO_MMIO_QUEUE_DRIVER_HIGH, uint32_t(ring->avail >> 32));
    w(VIRTIO_MMIO_QUEUE_DEVICE_LOW, uint32_t(ring->used));
    w(VIRTIO_MMIO_QUEUE_DEVICE_HIGH, uint32_t(ring->used >> 32));
    w(VIRTIO_MMIO_QUEUE_READY, 1);
    if (r(VIRTIO_MMIO_QUEUE_READY) != 1) {
      ADD_FAILURE() << "queue " << qi - 1 << " did not become ready";
      return false;
    }
  }
  w(VIRTIO_MMIO_STATUS, s | VIRTIO_STATUS_DRIVER_OK);
  const uint32_t st = r(VIRTIO_MMIO_STATUS);
  if (st != (s | VIRTIO_STATUS_DRIVER_OK)) {
    ADD_FAILURE() << "status after DRIVER_OK is " << st;
    return false;
  }
  return true;
}

inline constexpr uint64_t Feature(unsigned bit) { return uint64_t(1) << bit; }

}  // namespace ftvm::vmm::testing
