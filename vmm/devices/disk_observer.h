// What the virtio-blk device tells an observer about the writes it carries out on
// its image: a disk mirror (storage/) sees every write in the order the device
// completed it, with flush barriers, without reading the image back.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>

namespace ftvm::vmm {

class DiskWriteObserver {
 public:
  virtual ~DiskWriteObserver() = default;
  // A write reached the image successfully (pwritev returned), before the guest is
  // told it is done. `data` is the guest's buffers, valid only during the call: an
  // observer that keeps the bytes copies them. vCPU thread; must not block long.
  virtual void disk_written(uint64_t offset, std::span<const iovec> data) = 0;
  // A flush succeeded: every write reported before it is durable on the image.
  virtual void disk_flushed() = 0;
};

}  // namespace ftvm::vmm
