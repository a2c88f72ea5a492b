// Internal helpers of the transports that share memory between processes (the
// shared-memory channel and the RDMA channel's shared-memory emulation): mappings,
// bounded busy-waiting, and eventfd wake-ups.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "common/error.h"
#include "common/unique_fd.h"
#include "transport/io.h"

namespace ftvm::transport::detail {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Busy-waits for `ready()` for at most `spin` (and never past the deadline).
template <typename Ready>
bool SpinUntil(std::chrono::nanoseconds spin, const Deadline& deadline, Ready ready) {
  auto limit = std::min(spin, deadline.remaining());
  if (limit <= std::chrono::nanoseconds::zero()) return false;
  const auto until = std::chrono::steady_clock::now() + limit;
  do {
    // Look every pause (~20 ns), read the clock (~27 ns) every 16 looks.
    for (int i = 0; i < 16; ++i) {
      if (ready()) return true;
      CpuRelax();
    }
  } while (std::chrono::steady_clock::now() < until);
  return ready();
}

inline void SignalEventfd(int efd) {
  uint64_t one = 1;
  // Cannot fail short of a counter overflow after 2^64 wake-ups; a lost signal to a
  // dead peer does not matter.
  [[maybe_unused]] ssize_t w = ::write(efd, &one, sizeof one);
}

inline void DrainEventfd(int efd) {
  uint64_t v;
  [[maybe_unused]] ssize_t r = ::read(efd, &v, sizeof v);
}

// An mmap()ed region, unmapped on destruction.
class Mapping {
 public:
  Mapping() = default;
  Mapping(void* addr, size_t size) : addr_(addr), size_(size) {}
  Mapping(Mapping&& o) noexcept : addr_(std::exchange(o.addr_, nullptr)), size_(o.size_) {}
  Mapping& operator=(Mapping&& o) noexcept {
    if (this != &o) {
      reset();
      addr_ = std::exchange(o.addr_, nullptr);
      size_ = o.size_;
    }
    return *this;
  }
  ~Mapping() { reset(); }
  uint8_t* data() const { return static_cast<uint8_t*>(addr_); }
  size_t size() const { return size_; }

 private:
  void reset() {
    if (addr_ != nullptr) ::munmap(addr_, size_);
    addr_ = nullptr;
  }
  void* addr_ = nullptr;
  size_t size_ = 0;
};

// Maps `size` bytes of `fd` shared. MAP_POPULATE: fault the memory in now rather than
// on the first pass over it, so the first megabytes sent do not pay thousands of page
// faults.
inline Mapping MapShared(int fd, size_t size, const std::string& what) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) throw SysError(what + ": mmap of " + std::to_string(size) + " bytes");
  return Mapping(p, size);
}

// A memfd of `total` bytes named `name`, sealed so that neither side can shrink the
// memory under the other's mapping (which would turn its next access into SIGBUS),
// mapped here. The caller lays out its control block.
inline Mapping CreateSealedMemory(size_t total, const char* name, UniqueFd& memfd, const std::string& what) {
  memfd.reset(::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!memfd) throw SysError(what + ": memfd_create");
  if (::ftruncate(memfd.get(), static_cast<off_t>(total)) < 0) {
    throw SysError(what + ": ftruncate to " + std::to_string(total) + " bytes");
  }
  if (::fcntl(memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
    throw SysError(what + ": sealing the memfd");
  }
  return MapShared(memfd.get(), total, what);
}

// Private zeroed memory, page aligned (what RDMA registers), faulted in at once.
inline Mapping MapPrivate(size_t size, const std::string& what) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) throw SysError(what + ": mmap of " + std::to_string(size) + " bytes");
  return Mapping(p, size);
}

}  // namespace ftvm::transport::detail
