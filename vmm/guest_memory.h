// Guest RAM: one memfd, mapped shared into the VMM. memfd so that RAM can later be
// shared with another process, snapshotted and migrated without copying.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <type_traits>

#include "common/unique_fd.h"
#include "vmm/page_bitmap.h"

namespace ftvm::vmm {

class GuestMemory {
 public:
  // Creates `bytes` of zeroed RAM at GPA 0. Throws ftvm::Error on failure.
  static GuestMemory Create(uint64_t bytes);

  GuestMemory(GuestMemory&& other) noexcept;
  GuestMemory& operator=(GuestMemory&& other) noexcept;
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  ~GuestMemory();

  uint64_t size() const { return size_; }
  uint8_t* host_base() const { return base_; }
  int fd() const { return fd_.get(); }

  // True when [gpa, gpa+len) lies inside RAM (overflow-safe).
  bool contains(uint64_t gpa, uint64_t len) const {
    return gpa <= size_ && len <= size_ - gpa;
  }
  // Host pointer for a checked range, or nullptr when it leaves RAM.
  uint8_t* ptr(uint64_t gpa, uint64_t len) const {
    return contains(gpa, len) ? base_ + gpa : nullptr;
  }
  bool read(uint64_t gpa, void* out, uint64_t len) const {
    const uint8_t* p = ptr(gpa, len);
    if (p == nullptr) return false;
    std::memcpy(out, p, len);
    return true;
  }
  bool write(uint64_t gpa, const void* in, uint64_t len) {
    uint8_t* p = ptr(gpa, len);
    if (p == nullptr) return false;
    std::memcpy(p, in, len);
    note_write(gpa, len);
    return true;
  }
  template <typename T>
    requires std::is_trivially_copyable_v<T>
  bool read_obj(uint64_t gpa, T& out) const {
    return read(gpa, &out, sizeof(T));
  }
  // Device code that writes guest RAM through host pointers notes it here, so that
  // dirty tracking (vmm/dirty_tracker.h) sees VMM writes the vCPU's own tracking
  // cannot. Cheap when tracking is off. vCPU thread only.
  void note_write(uint64_t gpa, uint64_t len) {
    if (vmm_writes_) vmm_writes_->set_range(gpa, len);
  }
  void note_write(const void* host, uint64_t len) {
    if (vmm_writes_) vmm_writes_->set_range(uint64_t(static_cast<const uint8_t*>(host) - base_), len);
  }
  void track_vmm_writes(bool on) {
    if (on && !vmm_writes_) vmm_writes_ = std::make_unique<PageBitmap>(size_ / kPageSize);
    if (!on) vmm_writes_.reset();
  }
  // Adds the pages noted since the last call to `into` and forgets them.
  void take_vmm_writes(PageBitmap& into) {
    if (!vmm_writes_) return;
    into.merge(*vmm_writes_);
    vmm_writes_->clear();
  }

  template <typename T>
    requires std::is_trivially_copyable_v<T>
  bool write_obj(uint64_t gpa, const T& in) {
    return write(gpa, &in, sizeof(T));
  }

 private:
  GuestMemory(UniqueFd fd, uint8_t* base, uint64_t size) : fd_(std::move(fd)), base_(base), size_(size) {}
  void unmap();

  UniqueFd fd_;
  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  std::unique_ptr<PageBitmap> vmm_writes_;
};

}  // namespace ftvm::vmm
