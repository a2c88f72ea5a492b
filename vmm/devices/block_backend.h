// Where a virtio-blk device's blocks live when they are not in a file it opened
// itself: a disk served by another host (storage/remote_disk.h, `ftvm move-disk --to
// tcp:HOST:PORT`). A local image stays the device's own pread/pwrite/fdatasync on its
// fd (no virtual call on that path); a backend replaces it once attached
// (VirtioBlk::switch_backend). Observers, dirty tracking and the output rule work the
// same on either: they are the device's, not the backend's.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>
#include <string>

namespace ftvm::vmm {

class BlockBackend {
 public:
  virtual ~BlockBackend() = default;
  // What `ftvm status` shows as the disk: "tcp:10.0.0.9:7300".
  virtual std::string describe() const = 0;
  // The disk's size in bytes.
  virtual uint64_t size_bytes() const = 0;
  // Reads (write=false) or writes all of `iov` at byte `offset`, on the vCPU thread,
  // blocking until done. A write is done once the disk holds it as a local pwrite
  // would (it survives this process dying); flush() makes it durable. Returns 0 or an
  // errno value (EIO once the backend is lost: it stops the VM itself).
  virtual int transfer(bool write, std::span<const iovec> iov, uint64_t offset) = 0;
  // Every write done so far is durable (a local fdatasync). 0 or an errno value.
  virtual int flush() = 0;
};

}  // namespace ftvm::vmm
