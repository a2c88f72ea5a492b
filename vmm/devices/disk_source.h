// Where the blocks of a disk image come from while the image file does not hold
// all of them yet (an image streamed from an image server, storage/image_stream.h).
// The virtio-blk device asks it before touching the file; without one attached the
// device's path is unchanged.
#pragma once

#include <cstdint>

namespace ftvm::vmm {

class DiskBlockSource {
 public:
  virtual ~DiskBlockSource() = default;
  // Before the device reads (write=false) or writes [offset, offset+bytes) of its
  // image file: makes every byte a read will see present in the file, and for a
  // write, the blocks it covers only in part; the blocks a write covers whole are
  // taken over by the write (never filled in later). Blocks the vCPU thread until
  // then. Returns 0 or an errno value: the request fails (a source that can no
  // longer supply blocks stops the VM itself; the guest never reads a hole).
  virtual int prepare(bool write, uint64_t offset, uint64_t bytes) = 0;
  // A write prepared above has been carried out on the file (or failed).
  virtual void written(uint64_t offset, uint64_t bytes) = 0;
};

}  // namespace ftvm::vmm
