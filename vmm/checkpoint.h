// Epoch checkpoints: the whole VM state at a boundary, with memory as the pages
// written since the last point both sides agree on. The recorder captures one when
// the guest ran too long without an exit while input waited (or when it stops at
// a point the replica cannot find); the replayer applies it and goes on from there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "vmm/machine.h"
#include "vmm/page_bitmap.h"
#include "vmm/snapshot.pb.h"

namespace ftvm::vmm {

// Serialized snapshot::Checkpoint parts: vCPU and devices in part 0, the pages'
// contents spread so that no part carries more than `max_part_page_bytes`. At a
// boundary (or after Machine::run returned).
std::vector<std::string> CaptureCheckpoint(Machine& m, const PageBitmap& pages,
                                           size_t max_part_page_bytes = 32u << 20);

// The device state as digests see it (deterministic serialization).
std::string DeviceStateBytes(const Machine& m);

// Collects the parts of one checkpoint and applies it once the last has arrived.
class CheckpointLoader {
 public:
  // Returns true when `payload` completed a checkpoint, which is then applied to
  // `m` (memory, devices, vCPU). Throws ftvm::Error naming what is wrong with a
  // malformed, out-of-order or foreign checkpoint.
  bool add(Machine& m, std::span<const uint8_t> payload);
  bool in_progress() const { return expected_parts_ != 0; }
  uint64_t pages_applied() const { return pages_applied_; }
  uint64_t pages_changed() const { return pages_changed_; }  // of those, pages that differed

 private:
  snapshot::Checkpoint first_;
  uint32_t expected_parts_ = 0;
  uint32_t next_part_ = 0;
  uint64_t pages_applied_ = 0;
  uint64_t pages_changed_ = 0;
};

}  // namespace ftvm::vmm
