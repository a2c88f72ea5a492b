#include "vmm/guest_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <string>
#include <utility>

#include "common/error.h"

namespace ftvm::vmm {

GuestMemory GuestMemory::Create(uint64_t bytes) {
  if (bytes == 0 || bytes % 4096 != 0) throw Error("guest memory size must be a non-zero multiple of 4 KiB");
  UniqueFd fd(memfd_create("ftvm-guest-ram", MFD_CLOEXEC));
  if (!fd) throw SysError("memfd_create for guest RAM");
  if (ftruncate(fd.get(), off_t(bytes)) != 0)
    throw SysError("sizing guest RAM to " + std::to_string(bytes >> 20) + " MiB");
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd.get(), 0);
  if (p == MAP_FAILED) throw SysError("mapping guest RAM of " + std::to_string(bytes >> 20) + " MiB");
  // Transparent huge pages back 2 MiB guest pages cheaply where the host allows it.
  madvise(p, bytes, MADV_HUGEPAGE);
  return GuestMemory(std::move(fd), static_cast<uint8_t*>(p), bytes);
}

GuestMemory::GuestMemory(GuestMemory&& other) noexcept
    : fd_(std::move(other.fd_)),
      base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      vmm_writes_(std::move(other.vmm_writes_)) {}

GuestMemory& GuestMemory::operator=(GuestMemory&& other) noexcept {
  if (this != &other) {
    unmap();
    fd_ = std::move(other.fd_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    vmm_writes_ = std::move(other.vmm_writes_);
  }
  return *this;
}

GuestMemory::~GuestMemory() { unmap(); }

void GuestMemory::unmap() {
  if (base_ != nullptr) munmap(base_, size_);
  base_ = nullptr;
  size_ = 0;
}

}  // namespace ftvm::vmm
