#include "vmm/state_digest.h"

#include <openssl/evp.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <memory>
#include <string>

#include "common/error.h"
#include "vmm/abi/ftvm_abi.h"

namespace ftvm::vmm {

namespace {
const std::array<uint8_t, kPageSize> kZeroPage{};
}  // namespace

MemoryDigest::MemoryDigest(const GuestMemory& memory)
    : memory_(memory), hashes_(memory.size() / kPageSize) {
  // Pages the guest never touched are holes in the memfd: they read as zeros, and
  // reading them through the mapping would allocate every one (all of guest RAM
  // resident, ~0.25 s per 64 MiB here). Their hash comes from a zero page instead.
  const PageBitmap data = FileDataPages(memory_.fd(), memory_.size());
  for (uint64_t p = 0; p < hashes_.size(); ++p) {
    hashes_[p] = data.test(p) ? hash_page(p) : HashBytes(p, kZeroPage.data());
    sum_lo_ += hashes_[p][0];
    sum_hi_ += hashes_[p][1];
  }
}

MemoryDigest::MemoryDigest(const GuestMemory& memory, AllZero)
    : memory_(memory), hashes_(memory.size() / kPageSize) {
  for (uint64_t p = 0; p < hashes_.size(); ++p) {
    hashes_[p] = HashBytes(p, kZeroPage.data());
    sum_lo_ += hashes_[p][0];
    sum_hi_ += hashes_[p][1];
  }
}

MemoryDigest::MemoryDigest(const GuestMemory& memory, Unfilled)
    : memory_(memory), hashes_(memory.size() / kPageSize) {}

void MemoryDigest::copy_from(const MemoryDigest& other) {
  if (other.hashes_.size() != hashes_.size())
    throw Error("internal: copying a digest of " + std::to_string(other.hashes_.size()) + " pages into one of " +
                std::to_string(hashes_.size()));
  std::copy(other.hashes_.begin(), other.hashes_.end(), hashes_.begin());
  sum_lo_ = other.sum_lo_;
  sum_hi_ = other.sum_hi_;
}

std::array<uint64_t, 2> MemoryDigest::HashBytes(uint64_t page, const uint8_t* contents) {
  XXH128_hash_t h = XXH3_128bits_withSeed(contents, kPageSize, page);
  return {h.low64, h.high64};
}

std::array<uint64_t, 2> MemoryDigest::hash_page(uint64_t page) const {
  return HashBytes(page, memory_.host_base() + page * kPageSize);
}

void MemoryDigest::set_page(uint64_t page, std::span<const uint8_t, kPageSize> contents) {
  if (page >= hashes_.size()) return;
  Replace(page, HashBytes(page, contents.data()));
}

void MemoryDigest::set_zero_page(uint64_t page) {
  if (page >= hashes_.size()) return;
  Replace(page, HashBytes(page, kZeroPage.data()));
}

void MemoryDigest::Replace(uint64_t page, const std::array<uint64_t, 2>& h) {
  sum_lo_ += h[0] - hashes_[page][0];
  sum_hi_ += h[1] - hashes_[page][1];
  hashes_[page] = h;
}

uint32_t MemoryDigest::current_hash32(uint64_t page) const { return uint32_t(hash_page(page)[0]); }

void MemoryDigest::update(const PageBitmap& pages) {
  pages.for_each([&](uint64_t p) {
    if (p < hashes_.size()) Replace(p, hash_page(p));
  });
}

MemorySum MemoryDigest::value() const {
  MemorySum out;
  for (int i = 0; i < 8; ++i) {
    out[i] = uint8_t(sum_lo_ >> (8 * i));
    out[8 + i] = uint8_t(sum_hi_ >> (8 * i));
  }
  return out;
}

namespace {

struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

class Sha256Builder {
 public:
  Sha256Builder() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1) throw Error("SHA-256: init failed");
  }
  void add(std::span<const uint8_t> bytes) {
    if (EVP_DigestUpdate(ctx_.get(), bytes.data(), bytes.size()) != 1) throw Error("SHA-256: update failed");
  }
  Sha256Digest finish() {
    Sha256Digest d{};
    unsigned len = 0;
    if (EVP_DigestFinal_ex(ctx_.get(), d.data(), &len) != 1 || len != d.size()) throw Error("SHA-256: final failed");
    return d;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx_;
};

}  // namespace

Sha256Digest Sha256(std::span<const uint8_t> bytes) {
  Sha256Builder b;
  b.add(bytes);
  return b.finish();
}

Sha256Digest StateDigest(uint64_t position, std::span<const uint8_t> regs, std::span<const uint8_t> devices,
                         const MemorySum& memory) {
  Sha256Builder b;
  uint8_t pos[8];
  for (int i = 0; i < 8; ++i) pos[i] = uint8_t(position >> (8 * i));
  b.add(pos);
  b.add(regs);
  b.add(devices);
  b.add(memory);
  return b.finish();
}

std::string DigestHex(std::span<const uint8_t> digest) {
  static const char* kHex = "0123456789abcdef";
  std::string s;
  s.reserve(digest.size() * 2);
  for (uint8_t b : digest) {
    s += kHex[b >> 4];
    s += kHex[b & 15];
  }
  return s;
}

}  // namespace ftvm::vmm
