// The digests primary and replica compare to prove they are identical.
//
// Memory is digested page by page: each 4 KiB page has a 128-bit hash (XXH3, seeded
// with the page number) and the memory digest is the sum of all of them. So after
// the initial pass only pages written since (a dirty-tracker superset) are rehashed,
// yet the digest always covers all of RAM, and a superset costs only hashing time.
// The state digest is SHA-256 over the position, the encoded registers, the
// serialized device state and that memory digest.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "vmm/guest_memory.h"
#include "vmm/page_bitmap.h"

namespace ftvm::vmm {

using Sha256Digest = std::array<uint8_t, 32>;
using MemorySum = std::array<uint8_t, 16>;

class MemoryDigest {
 public:
  // Hashes every page of `memory` (about 10 ms per 64 MiB here; pages the guest
  // never touched are not read, so they stay unallocated).
  explicit MemoryDigest(const GuestMemory& memory);
  // As if every page of `memory` held zeros, without reading it: for a digest kept
  // from page contents seen elsewhere (a live copy's sender hashes what it sends).
  struct AllZero {};
  MemoryDigest(const GuestMemory& memory, AllZero);
  // Storage only, its value meaningless until copy_from(): allocated (and first
  // touched, ~14 us a page on this host) before a VM pauses, so that copying a
  // digest in the pause costs only the copy.
  struct Unfilled {};
  MemoryDigest(const GuestMemory& memory, Unfilled);
  // Becomes a copy of `other`, a digest of memory of the same size, without
  // allocating.
  void copy_from(const MemoryDigest& other);

  // Rehashes these pages (any superset of the pages that changed).
  void update(const PageBitmap& pages);
  // Page `page` holds `contents` (not read from memory: a post-copy receiver digests
  // pages as they arrive, before the guest can change them).
  void set_page(uint64_t page, std::span<const uint8_t, kPageSize> contents);
  void set_zero_page(uint64_t page);
  MemorySum value() const;
  // Low 32 bits of a page's hash, as logged in Verify records.
  uint32_t page_hash32(uint64_t page) const { return uint32_t(hashes_[page][0]); }
  uint64_t pages() const { return hashes_.size(); }
  // Hashes one page's current contents (what update stores).
  uint32_t current_hash32(uint64_t page) const;

 private:
  static std::array<uint64_t, 2> HashBytes(uint64_t page, const uint8_t* contents);
  std::array<uint64_t, 2> hash_page(uint64_t page) const;
  void Replace(uint64_t page, const std::array<uint64_t, 2>& h);

  const GuestMemory& memory_;
  std::vector<std::array<uint64_t, 2>> hashes_;
  uint64_t sum_lo_ = 0, sum_hi_ = 0;
};

Sha256Digest Sha256(std::span<const uint8_t> bytes);
Sha256Digest StateDigest(uint64_t position, std::span<const uint8_t> regs, std::span<const uint8_t> devices,
                         const MemorySum& memory);
// Lowercase hex of a digest (any length).
std::string DigestHex(std::span<const uint8_t> digest);

}  // namespace ftvm::vmm
