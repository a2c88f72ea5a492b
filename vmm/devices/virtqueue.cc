#include "vmm/devices/virtqueue.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "vmm/abi/ftvm_abi.h"
#include "vmm/snapshot.pb.h"

namespace ftvm::vmm {

// The ring layout is little-endian (VIRTIO_F_VERSION_1); we copy structs as-is.
static_assert(std::endian::native == std::endian::little, "virtio rings are little-endian");
static_assert(sizeof(virtq_desc) == 16 && sizeof(virtq_used_elem) == 8);

namespace {

// Ring indices live in guest RAM and are written by a vCPU concurrently: every access
// goes through atomic_ref (alignment was checked in activate()).
uint16_t LoadAcquire(const uint16_t* p) {
  return std::atomic_ref<uint16_t>(*const_cast<uint16_t*>(p)).load(std::memory_order_acquire);
}
uint16_t LoadRelaxed(const uint16_t* p) {
  return std::atomic_ref<uint16_t>(*const_cast<uint16_t*>(p)).load(std::memory_order_relaxed);
}
void StoreRelease(uint16_t* p, uint16_t v) {
  std::atomic_ref<uint16_t>(*p).store(v, std::memory_order_release);
}
void StoreRelaxed(uint16_t* p, uint16_t v) {
  std::atomic_ref<uint16_t>(*p).store(v, std::memory_order_relaxed);
}

}  // namespace

namespace {

// Calls fn(chunk_pointer, bytes_done_before, chunk_len) for the bytes
// [offset, offset+len) of `iov`, in order; returns how many bytes were covered.
template <typename Fn>
size_t WalkIov(std::span<const iovec> iov, size_t offset, size_t len, Fn&& fn) {
  size_t done = 0;
  for (const iovec& v : iov) {
    if (done == len) break;
    if (offset >= v.iov_len) {
      offset -= v.iov_len;
      continue;
    }
    size_t n = std::min(v.iov_len - offset, len - done);
    fn(static_cast<uint8_t*>(v.iov_base) + offset, done, n);
    done += n;
    offset = 0;
  }
  return done;
}

}  // namespace

size_t CopyFromIov(std::span<const iovec> iov, size_t offset, void* dst, size_t len) {
  auto* out = static_cast<uint8_t*>(dst);
  return WalkIov(iov, offset, len, [&](const uint8_t* chunk, size_t at, size_t n) { std::memcpy(out + at, chunk, n); });
}

size_t CopyToIov(std::span<const iovec> iov, size_t offset, const void* src, size_t len) {
  const auto* in = static_cast<const uint8_t*>(src);
  return WalkIov(iov, offset, len, [&](uint8_t* chunk, size_t at, size_t n) { std::memcpy(chunk, in + at, n); });
}

size_t SliceIov(std::span<const iovec> iov, size_t offset, size_t len, std::vector<iovec>& out) {
  return WalkIov(iov, offset, len, [&](uint8_t* chunk, size_t, size_t n) { out.push_back(iovec{chunk, n}); });
}

Virtqueue::Virtqueue(GuestMemory& mem, uint16_t max_size)
    : mem_(&mem), max_size_(max_size), size_(max_size) {}

void Virtqueue::reset() {
  size_ = max_size_;
  desc_gpa_ = driver_gpa_ = device_gpa_ = 0;
  event_idx_ = false;
  ready_ = false;
  broken_ = false;
  error_.clear();
  desc_ = driver_ = device_ = nullptr;
  last_avail_ = used_idx_ = signalled_used_ = 0;
  can_unpop_ = false;
}

void Virtqueue::fail(std::string reason) {
  if (broken_) return;  // keep the first reason: it is the root cause
  broken_ = true;
  error_ = std::move(reason);
}

PopResult Virtqueue::broken_result(std::string reason) {
  fail(std::move(reason));
  return PopResult::kBroken;
}

void Virtqueue::save(snapshot::Virtqueue& out) const {
  out.set_size(size_);
  out.set_desc_gpa(desc_gpa_);
  out.set_driver_gpa(driver_gpa_);
  out.set_device_gpa(device_gpa_);
  out.set_event_idx(event_idx_);
  out.set_ready(ready_);
  out.set_broken(broken_);
  out.set_error(error_);
  out.set_last_avail(last_avail_);
  out.set_used_idx(used_idx_);
  out.set_signalled_used(signalled_used_);
}

void Virtqueue::restore(const snapshot::Virtqueue& in) {
  reset();
  // The fields are 32-bit on the wire and 16-bit here: a value that does not fit is
  // a damaged checkpoint, not one to truncate into a different queue.
  for (const auto& [what, value] : {std::pair{"size", in.size()}, std::pair{"last avail index", in.last_avail()},
                                    std::pair{"used index", in.used_idx()},
                                    std::pair{"signalled used index", in.signalled_used()}}) {
    if (value > UINT16_MAX) {
      fail(std::string("checkpoint queue ") + what + " " + std::to_string(value) + " does not fit in 16 bits");
      return;
    }
  }
  size_ = uint16_t(in.size());
  desc_gpa_ = in.desc_gpa();
  driver_gpa_ = in.driver_gpa();
  device_gpa_ = in.device_gpa();
  event_idx_ = in.event_idx();
  if (in.broken()) {
    // A queue that broke while ready stays ready (the driver reads QUEUE_READY=1
    // until it resets the device) and keeps its indices; it never touches the rings
    // again, so it needs no host pointers.
    fail(in.error());
    ready_ = in.ready();
    last_avail_ = uint16_t(in.last_avail());
    used_idx_ = uint16_t(in.used_idx());
    signalled_used_ = uint16_t(in.signalled_used());
    return;
  }
  if (!in.ready()) return;
  if (!activate()) return;
  last_avail_ = uint16_t(in.last_avail());
  used_idx_ = uint16_t(in.used_idx());
  signalled_used_ = uint16_t(in.signalled_used());
}

bool Virtqueue::activate() {
  if (broken_) return false;
  if (size_ == 0 || size_ > max_size_ || !std::has_single_bit(size_)) {
    fail("queue size " + std::to_string(size_) + " is not a power of two in 1.." +
         std::to_string(max_size_));
    return false;
  }
  const uint64_t desc_bytes = uint64_t(size_) * sizeof(virtq_desc);
  const uint64_t driver_bytes = 6 + 2 * uint64_t(size_);
  const uint64_t device_bytes = 6 + sizeof(virtq_used_elem) * uint64_t(size_);
  struct Area {
    const char* what;
    uint64_t gpa, bytes, align;
    uint8_t** host;
  } areas[] = {
      {"descriptor table", desc_gpa_, desc_bytes, 16, &desc_},
      {"driver area", driver_gpa_, driver_bytes, 2, &driver_},
      {"device area", device_gpa_, device_bytes, 4, &device_},
  };
  for (const Area& a : areas) {
    if (a.gpa % a.align != 0) {
      fail(std::string(a.what) + " at " + std::to_string(a.gpa) + " is not " +
           std::to_string(a.align) + "-byte aligned");
      return false;
    }
    uint8_t* p = mem_->ptr(a.gpa, a.bytes);
    if (p == nullptr) {
      fail(std::string(a.what) + " at " + std::to_string(a.gpa) + " (" + std::to_string(a.bytes) +
           " bytes) is outside guest RAM");
      return false;
    }
    *a.host = p;
  }
  last_avail_ = used_idx_ = signalled_used_ = 0;
  can_unpop_ = false;
  ready_ = true;
  return true;
}

void Virtqueue::restore_indices(uint16_t last_avail_idx, uint16_t used_idx) {
  last_avail_ = last_avail_idx;
  used_idx_ = used_idx;
  signalled_used_ = used_idx;
  can_unpop_ = false;
}

// Driver area: flags, idx, ring[size], used_event. Device area: flags, idx,
// elem[size], avail_event.
uint16_t* Virtqueue::avail_flags_ptr() const { return reinterpret_cast<uint16_t*>(driver_); }
uint16_t* Virtqueue::avail_ring_entry(uint16_t slot) const {
  return reinterpret_cast<uint16_t*>(driver_ + 4 + 2 * size_t(slot));
}
uint16_t* Virtqueue::used_event_ptr() const {
  return reinterpret_cast<uint16_t*>(driver_ + 4 + 2 * size_t(size_));
}
uint16_t* Virtqueue::used_flags_ptr() const { return reinterpret_cast<uint16_t*>(device_); }
uint16_t* Virtqueue::used_idx_ptr() const { return reinterpret_cast<uint16_t*>(device_ + 2); }
uint16_t* Virtqueue::avail_event_ptr() const {
  return reinterpret_cast<uint16_t*>(device_ + 4 + sizeof(virtq_used_elem) * size_t(size_));
}

uint16_t Virtqueue::load_avail_idx() const {
  // Acquire: ring entries and descriptors the driver wrote before publishing this
  // index are visible to the reads that follow.
  return LoadAcquire(reinterpret_cast<const uint16_t*>(driver_ + 2));
}

bool Virtqueue::has_available() const {
  if (!ready_ || broken_) return false;
  return load_avail_idx() != last_avail_;
}

PopResult Virtqueue::pop(DescChain& out) {
  out.clear();
  can_unpop_ = false;
  if (!ready_ || broken_) return broken_ ? PopResult::kBroken : PopResult::kEmpty;
  const uint16_t avail_idx = load_avail_idx();
  const uint16_t pending = uint16_t(avail_idx - last_avail_);
  if (pending == 0) return PopResult::kEmpty;
  // A driver can have at most `size` chains outstanding; more means a corrupt index.
  if (pending > size_)
    return broken_result("avail idx " + std::to_string(avail_idx) + " is " + std::to_string(pending) +
                         " ahead of the device (queue size " + std::to_string(size_) + ")");
  const uint16_t head = LoadRelaxed(avail_ring_entry(last_avail_ & (size_ - 1)));
  if (head >= size_)
    return broken_result("avail ring head " + std::to_string(head) + " >= queue size " +
                         std::to_string(size_));

  // Walk the chain. A descriptor seen twice is a loop; since there are only `size`
  // descriptors, this also bounds the chain length by the queue size.
  uint64_t visited[65536 / 64];  // one bit per possible descriptor index (8 KiB of stack)
  const size_t words = (size_t(size_) + 63) / 64;
  std::memset(visited, 0, words * sizeof(uint64_t));
  bool seen_writable = false;
  uint16_t i = head;
  for (unsigned count = 0;; ++count) {
    if (count >= size_)
      return broken_result("descriptor chain from head " + std::to_string(head) +
                           " is longer than the queue size " + std::to_string(size_));
    if (visited[i / 64] & (uint64_t(1) << (i % 64)))
      return broken_result("descriptor chain from head " + std::to_string(head) +
                           " loops back to descriptor " + std::to_string(i));
    visited[i / 64] |= uint64_t(1) << (i % 64);

    virtq_desc d;
    std::memcpy(&d, desc_ + size_t(i) * sizeof(virtq_desc), sizeof d);
    if (d.flags & kVirtqDescFIndirect)
      return broken_result("descriptor " + std::to_string(i) +
                           " is indirect, but VIRTIO_F_INDIRECT_DESC was not offered");
    if (d.len != 0) {
      uint8_t* p = mem_->ptr(d.addr, d.len);
      if (p == nullptr)
        return broken_result("descriptor " + std::to_string(i) + " buffer at " + std::to_string(d.addr) +
                             " (" + std::to_string(d.len) + " bytes) is outside guest RAM");
      if (d.flags & VIRTQ_DESC_F_WRITE) {
        // The device may write any of it before push(): noted now, for dirty tracking.
        mem_->note_write(d.addr, d.len);
        out.writable.push_back(iovec{p, d.len});
        out.writable_bytes += d.len;
        seen_writable = true;
      } else {
        if (seen_writable)
          return broken_result("descriptor " + std::to_string(i) +
                               " is device-readable but follows a device-writable one");
        out.readable.push_back(iovec{p, d.len});
        out.readable_bytes += d.len;
      }
    } else if (d.flags & VIRTQ_DESC_F_WRITE) {
      seen_writable = true;  // still constrains the order of what follows
    } else if (seen_writable) {
      return broken_result("descriptor " + std::to_string(i) +
                           " is device-readable but follows a device-writable one");
    }
    if (!(d.flags & VIRTQ_DESC_F_NEXT)) break;
    if (d.next >= size_)
      return broken_result("descriptor " + std::to_string(i) + " links to " + std::to_string(d.next) +
                           " >= queue size " + std::to_string(size_));
    i = d.next;
  }
  out.head = head;
  last_popped_head_ = head;
  ++last_avail_;
  can_unpop_ = true;
  return PopResult::kChain;
}

void Virtqueue::unpop() {
  if (!can_unpop_) return;
  --last_avail_;
  can_unpop_ = false;
}

void Virtqueue::push(uint16_t head, uint32_t written) {
  if (!ready_ || broken_) return;
  can_unpop_ = false;
  const virtq_used_elem e{head, written};
  std::memcpy(device_ + 4 + sizeof(virtq_used_elem) * size_t(used_idx_ & (size_ - 1)), &e, sizeof e);
  ++used_idx_;
  note_device_area();
  // Release: the element (and the data written into the buffer) is visible before
  // the driver can see the new index.
  StoreRelease(used_idx_ptr(), used_idx_);
}

bool Virtqueue::needs_interrupt() {
  if (!ready_ || broken_) return false;
  if (used_idx_ == signalled_used_) return false;  // nothing new since the last decision
  // Full fence: our used-idx store must be ordered before the load of the driver's
  // used_event/flags, or we could miss the driver re-enabling interrupts.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const uint16_t old = signalled_used_;
  signalled_used_ = used_idx_;
  if (event_idx_) return vring_need_event(LoadRelaxed(used_event_ptr()), used_idx_, old);
  return !(LoadRelaxed(avail_flags_ptr()) & kVirtqAvailFNoInterrupt);
}

namespace {

// Writes only when the value changes: a store into guest RAM dirties the page, and
// under dirty logging each first write to a page costs a write-protect fault.
void StoreIfChanged(uint16_t* p, uint16_t v) {
  if (LoadRelaxed(p) != v) StoreRelaxed(p, v);
}

}  // namespace

void Virtqueue::note_device_area() const {
  mem_->note_write(device_gpa_, 6 + sizeof(virtq_used_elem) * uint64_t(size_));
}

void Virtqueue::enable_notifications() {
  if (!ready_ || broken_) return;
  note_device_area();
  if (event_idx_)
    StoreIfChanged(avail_event_ptr(), last_avail_);
  else
    StoreIfChanged(used_flags_ptr(), LoadRelaxed(used_flags_ptr()) & ~kVirtqUsedFNoNotify);
  // Full fence: the store above must be visible before we re-read avail idx, or a
  // driver that added a buffer meanwhile and saw the old value would never kick.
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

void Virtqueue::disable_notifications() {
  if (!ready_ || broken_) return;
  note_device_area();
  if (event_idx_) {
    // An event index just behind what we consumed is one the driver will not cross
    // again for 65535 additions, so it does not kick (a rare kick after a full wrap
    // is harmless).
    StoreIfChanged(avail_event_ptr(), uint16_t(last_avail_ - 1));
  } else {
    StoreIfChanged(used_flags_ptr(), LoadRelaxed(used_flags_ptr()) | kVirtqUsedFNoNotify);
  }
}

}  // namespace ftvm::vmm
