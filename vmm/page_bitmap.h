// A set of 4 KiB guest pages as a bitmap: what dirty tracking reports and what
// checkpoints and verification digests walk.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ftvm::vmm {

inline constexpr uint64_t kPageSize = 4096;
inline constexpr unsigned kPageShift = 12;

class PageBitmap {
 public:
  PageBitmap() = default;
  explicit PageBitmap(uint64_t pages) : pages_(pages), words_((pages + 63) / 64) {}

  uint64_t pages() const { return pages_; }
  void set(uint64_t page) {
    if (page < pages_) words_[page / 64] |= uint64_t(1) << (page % 64);
  }
  // Sets every page overlapping [gpa, gpa+len).
  void set_range(uint64_t gpa, uint64_t len) {
    if (len == 0) return;
    for (uint64_t p = gpa >> kPageShift; p <= (gpa + len - 1) >> kPageShift && p < pages_; ++p) set(p);
  }
  void reset(uint64_t page) {
    if (page < pages_) words_[page / 64] &= ~(uint64_t(1) << (page % 64));
  }
  bool test(uint64_t page) const {
    return page < pages_ && (words_[page / 64] >> (page % 64)) & 1;
  }
  void merge(const PageBitmap& other) {
    for (size_t i = 0; i < words_.size() && i < other.words_.size(); ++i) words_[i] |= other.words_[i];
  }
  void clear() { std::fill(words_.begin(), words_.end(), 0); }
  uint64_t count() const {
    uint64_t n = 0;
    for (uint64_t w : words_) n += uint64_t(std::popcount(w));
    return n;
  }
  bool empty() const {
    for (uint64_t w : words_)
      if (w != 0) return false;
    return true;
  }
  // Calls f(page) for every set page, in increasing order.
  template <typename F>
  void for_each(F&& f) const {
    for (size_t i = 0; i < words_.size(); ++i) {
      uint64_t w = words_[i];
      while (w != 0) {
        f(uint64_t(i) * 64 + uint64_t(std::countr_zero(w)));
        w &= w - 1;
      }
    }
  }

 private:
  uint64_t pages_ = 0;
  std::vector<uint64_t> words_;
};

// The pages of the file `fd` (`bytes` long: a memfd of guest RAM, a disk image)
// that hold data; the rest are holes, which read as zeros and which reading through
// a mapping would allocate. All of them when there is no file (fd < 0) or it cannot
// tell (no SEEK_DATA). SEEK_DATA counts swapped-out pages as data, so a hole is
// truly zeros.
inline PageBitmap FileDataPages(int fd, uint64_t bytes) {
  PageBitmap pages((bytes + kPageSize - 1) / kPageSize);
  if (fd < 0) {
    pages.set_range(0, bytes);
    return pages;
  }
  off_t at = 0;
  while (uint64_t(at) < bytes) {
    const off_t data = lseek(fd, at, SEEK_DATA);
    if (data < 0) {
      if (errno != ENXIO) pages.set_range(uint64_t(at), bytes - uint64_t(at));  // ENXIO: only a hole is left
      break;
    }
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0 || uint64_t(hole) > bytes) hole = off_t(bytes);
    pages.set_range(uint64_t(data), uint64_t(hole - data));
    at = hole;
  }
  return pages;
}

}  // namespace ftvm::vmm
