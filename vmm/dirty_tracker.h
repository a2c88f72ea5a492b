// Which guest RAM pages were written, so that epoch checkpoints carry only those
// pages and verification digests hash only those.
//
// A tracker must report a superset of the pages written since the previous
// collect(): a page reported but unchanged costs a little hashing, a page missed
// would make a checkpoint incomplete. Each vCPU backend provides the one that sees
// its guest's writes (CpuBackend::make_dirty_tracker): the software CPU writes guest
// RAM through the VMM's own mapping, which userfaultfd write-protection watches; KVM
// reports its guest's writes in its dirty log. Writes the VMM itself makes into guest
// RAM (virtio buffers and rings, the RNG) are noted in GuestMemory by the device
// code and merged in by every tracker.
#pragma once

#include <memory>
#include <string_view>

#include "vmm/guest_memory.h"
#include "vmm/page_bitmap.h"

namespace ftvm::vmm {

class DirtyTracker {
 public:
  virtual ~DirtyTracker() = default;
  virtual std::string_view name() const = 0;
  // Adds to `pages` every page written since the tracker was made or since the
  // previous collect(), and starts a new interval. vCPU thread, at a boundary.
  // Throws ftvm::Error if the host stops reporting (a failed ioctl).
  virtual void collect(PageBitmap& pages) = 0;
};

// userfaultfd write-protection in async mode (Linux 6.7+: UFFD_FEATURE_WP_ASYNC and
// the PAGEMAP_SCAN ioctl, which reads and re-arms the written bits in one call).
// Watches every write through `memory`'s mapping, by any thread. Throws ftvm::Error
// naming what is missing on older kernels.
std::unique_ptr<DirtyTracker> MakeUffdDirtyTracker(GuestMemory& memory);

}  // namespace ftvm::vmm
