// Split virtqueue (virtio 1.2, section 2.7), device side, over guest RAM.
//
// The guest driver runs concurrently on a vCPU (KVM), so the ring indices are read
// and written with atomics and the fences the spec's memory-ordering rules ask for;
// descriptor contents are copied once before use (the guest could change them while
// we look). A malformed ring never crashes the VMM: the queue marks itself broken,
// remembers why, and stops; the transport turns that into VIRTIO_STATUS_NEEDS_RESET.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "vmm/guest_memory.h"

namespace ftvm::vmm {

namespace snapshot {
class Virtqueue;  // vmm/snapshot.proto
}

// Ring flag bits (virtio 1.2, 2.7.6 / 2.7.8). Named here, not taken from
// <linux/virtio_ring.h>, so this header does not drag in kernel uapi names.
inline constexpr uint16_t kVirtqAvailFNoInterrupt = 1;
inline constexpr uint16_t kVirtqUsedFNoNotify = 1;
inline constexpr uint16_t kVirtqDescFIndirect = 4;

// One descriptor chain, as host views of guest RAM (already bounds-checked).
// Reused across pops so the hot path does not allocate once capacity is reached.
struct DescChain {
  uint16_t head = 0;
  std::vector<iovec> readable;  // device-readable, in chain order
  std::vector<iovec> writable;  // device-writable, in chain order
  uint64_t readable_bytes = 0;
  uint64_t writable_bytes = 0;
  void clear() {
    readable.clear();
    writable.clear();
    readable_bytes = writable_bytes = 0;
  }
};

// Scatter/gather helpers over iovec lists. They return the bytes actually copied
// (less than `len` when the list ends first).
size_t CopyFromIov(std::span<const iovec> iov, size_t offset, void* dst, size_t len);
size_t CopyToIov(std::span<const iovec> iov, size_t offset, const void* src, size_t len);
// Appends to `out` the iovecs covering [offset, offset+len) of `iov`; returns the
// bytes covered (less than `len` when the list ends first).
size_t SliceIov(std::span<const iovec> iov, size_t offset, size_t len, std::vector<iovec>& out);

enum class PopResult {
  kChain,   // `out` holds the next chain
  kEmpty,   // the driver has made nothing new available
  kBroken,  // the ring is malformed (see error()); the queue has stopped
};

class Virtqueue {
 public:
  Virtqueue(GuestMemory& mem, uint16_t max_size);

  // ---- Configuration, written by the transport while the queue is not ready.
  uint16_t max_size() const { return max_size_; }
  GuestMemory& memory() const { return *mem_; }
  uint16_t size() const { return size_; }
  void set_size(uint16_t n) { size_ = n; }
  uint64_t desc_gpa() const { return desc_gpa_; }
  uint64_t driver_gpa() const { return driver_gpa_; }
  uint64_t device_gpa() const { return device_gpa_; }
  void set_desc_gpa(uint64_t gpa) { desc_gpa_ = gpa; }
  void set_driver_gpa(uint64_t gpa) { driver_gpa_ = gpa; }
  void set_device_gpa(uint64_t gpa) { device_gpa_ = gpa; }
  // VIRTIO_F_RING_EVENT_IDX negotiated: used_event/avail_event replace the flags.
  void set_event_idx(bool on) { event_idx_ = on; }
  bool event_idx() const { return event_idx_; }

  // Checks size (power of two, 1..max) and that the three areas are aligned and
  // inside RAM, then makes the queue ready with both indices at 0. On failure the
  // queue is broken (error() says why) and false is returned.
  bool activate();
  // Back to the unconfigured state (device reset or QUEUE_READY=0).
  void reset();
  // For state restore (and tests of index wraparound): the next avail index to
  // consume and the next used index to write. Only while ready.
  void restore_indices(uint16_t last_avail_idx, uint16_t used_idx);
  // Whole-queue state for checkpoints. restore() re-checks the areas against RAM
  // like activate() and marks the queue broken if they no longer fit.
  void save(snapshot::Virtqueue& out) const;
  void restore(const snapshot::Virtqueue& in);

  bool ready() const { return ready_; }
  bool broken() const { return broken_; }
  const std::string& error() const { return error_; }
  // Marks the queue broken (a device found a request it cannot frame, say).
  void fail(std::string reason);

  uint16_t last_avail_idx() const { return last_avail_; }
  uint16_t used_idx() const { return used_idx_; }

  // ---- Hot path: explicit results, no exceptions.
  // True when the driver has published chains we have not popped. One acquire load.
  bool has_available() const;
  PopResult pop(DescChain& out);
  // Gives back the chain returned by the last pop() (not yet pushed), so it is
  // popped again next time: a NIC that cannot use a buffer for this frame keeps it.
  void unpop();
  // Returns chain `head` to the driver with `written` bytes written into its
  // device-writable part, and publishes the new used index (release).
  void push(uint16_t head, uint32_t written);
  // Whether the driver wants an interrupt for the entries pushed since the last
  // call (used_event with EVENT_IDX, else the NO_INTERRUPT flag). Call after a batch.
  bool needs_interrupt();
  // Ask the driver to notify (kick) when it adds buffers past what we consumed.
  // Afterwards call has_available() again: the driver may have added one just
  // before it saw the request (the classic lost-wakeup race).
  void enable_notifications();
  // Ask the driver not to notify: the device will find new buffers by polling.
  void disable_notifications();

 private:
  uint16_t load_avail_idx() const;
  uint16_t* avail_ring_entry(uint16_t slot) const;
  uint16_t* used_event_ptr() const;
  uint16_t* avail_event_ptr() const;
  uint16_t* used_flags_ptr() const;
  uint16_t* used_idx_ptr() const;
  uint16_t* avail_flags_ptr() const;
  PopResult broken_result(std::string reason);
  // The device area (used ring, flags, avail_event) is about to be written.
  void note_device_area() const;

  GuestMemory* mem_;
  uint16_t max_size_;
  uint16_t size_;
  uint64_t desc_gpa_ = 0;
  uint64_t driver_gpa_ = 0;
  uint64_t device_gpa_ = 0;
  bool event_idx_ = false;
  bool ready_ = false;
  bool broken_ = false;
  std::string error_;
  // Host pointers, valid while ready_ (checked against RAM in activate()).
  uint8_t* desc_ = nullptr;
  uint8_t* driver_ = nullptr;
  uint8_t* device_ = nullptr;
  uint16_t last_avail_ = 0;      // next avail ring slot to consume
  uint16_t used_idx_ = 0;        // next used ring slot to fill
  uint16_t signalled_used_ = 0;  // used_idx_ when needs_interrupt() last ran
  uint16_t last_popped_head_ = 0;
  bool can_unpop_ = false;
};

}  // namespace ftvm::vmm
