// virtio-mmio (version 2) transport and split virtqueues, for ring 3.
//
// Exits are expensive, so the queue API separates publishing buffers (RAM writes
// only) from notifying the device (one QUEUE_NOTIFY exit, skipped when the device
// said via event index that it does not need one). Interrupts are suppressed with
// the used_event index except while the driver is about to wait.
#ifndef FTVM_GUEST_LIB_VIRTIO_H_
#define FTVM_GUEST_LIB_VIRTIO_H_

#include <stddef.h>
#include <stdint.h>

#include "vmm/abi/ftvm_abi.h"

namespace ftvm::guest {

class Arena;

class VirtioDevice;

// One buffer of a descriptor chain.
struct VqBuf {
  const void* addr;
  uint32_t len;
  bool device_writes;  // VIRTQ_DESC_F_WRITE
};

class VirtQueue {
 public:
  // Chains bufs into descriptors and publishes the chain (no exit). Returns false
  // when fewer than n descriptors are free. `token` comes back from pop_used().
  bool add(const VqBuf* bufs, unsigned n, void* token);
  // Tells the device about chains published since the last kick, unless its
  // avail_event says it does not need to hear (one exit when it does). Returns
  // whether it notified.
  bool kick();
  // Notifies unconditionally (e.g. the ring is full and we must make progress).
  void force_kick();
  // Next completed chain: its token and the bytes the device wrote; frees its
  // descriptors. nullptr when none.
  void* pop_used(uint32_t* written);
  bool has_used() const;

  // Interrupt control via used_event: enable before waiting (returns false if a
  // completion slipped in meanwhile, so do not wait), disable while polling.
  bool enable_irq();
  void disable_irq();
  // Sleeps until the device has used a buffer (or returns at once if it already
  // has): interrupts on, WAIT_IF, interrupts off. The drivers' one way to block.
  void wait_used();
  // The same, but returns at once if any interrupt came since `snapshot`
  // (irq_total() taken before the caller's last look for work of its own).
  void wait_used_since(uint64_t snapshot);

  unsigned size() const { return num_; }
  unsigned free_descs() const { return num_free_; }

  // A misbehaving driver's reach, for guest/apps/hostile.cc (which shows the VMM
  // survives it): the descriptor table to fill with anything, and publishing any
  // head with the avail index moved by any amount (no exit; kick() notifies).
  virtq_desc* raw_descriptors() { return desc_; }
  void raw_publish(uint16_t head, uint16_t advance);

 private:
  friend class VirtioDevice;

  volatile uint16_t* avail_idx() { return &avail_[1]; }
  volatile uint16_t* used_event() { return &avail_[2 + num_]; }
  volatile uint16_t* used_idx() const { return &used_[1]; }
  volatile uint16_t* avail_event() { return &used_[2 + 4 * num_]; }

  VirtioDevice* dev_ = nullptr;
  uint16_t index_ = 0;  // queue number for QUEUE_NOTIFY
  uint16_t num_ = 0;
  virtq_desc* desc_ = nullptr;
  volatile uint16_t* avail_ = nullptr;  // flags, idx, ring[num], used_event
  volatile uint16_t* used_ = nullptr;   // flags, idx, ring[num] (as 2x u32), avail_event
  uint16_t free_head_ = 0;
  uint16_t num_free_ = 0;
  uint16_t avail_shadow_ = 0;   // our next avail idx
  uint16_t kicked_idx_ = 0;     // avail idx at the last notification
  uint16_t last_used_ = 0;      // next used entry to consume
  bool irq_enabled_ = false;
  void* tokens_[FTVM_VIRTQ_MAX_SIZE] = {};
};

class VirtioDevice {
 public:
  // Checks slot presence (boot info) and the magic/version/device-id registers.
  bool probe(unsigned slot, uint32_t device_id);
  // Reset, ACKNOWLEDGE, DRIVER, negotiate features (must include VERSION_1; the
  // others in `wanted` are taken if offered), FEATURES_OK. Returns false and sets
  // FAILED if the device rejects us.
  bool begin_init(uint64_t wanted);
  // Allocates and registers queue `index` with up to max_size entries.
  bool setup_queue(unsigned index, unsigned max_size, VirtQueue* q, Arena& arena);
  void driver_ok();
  void fail();

  bool has_feature(unsigned bit) const { return (features_ >> bit) & 1u; }
  uint32_t read_config32(uint32_t offset) const;
  uint8_t read_config8(uint32_t offset) const;
  void notify(uint16_t queue);
  unsigned slot() const { return slot_; }
  // The device's status register (one exit): VIRTIO_STATUS_NEEDS_RESET once it gave
  // up on what the driver did.
  uint32_t status() const { return read32(VIRTIO_MMIO_STATUS); }
  const char* error() const { return error_; }

 private:
  uint32_t read32(uint32_t reg) const;
  void write32(uint32_t reg, uint32_t v) const;

  unsigned slot_ = 0;
  uint64_t features_ = 0;
  uint8_t status_ = 0;
  const char* error_ = "";
};

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_LIB_VIRTIO_H_
