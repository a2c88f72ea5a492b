// The output rule on the primary: what the outside world or the guest could act on
// is held until the secondary has the log up to the point where it was produced,
// so that after a failover the replica has certainly reached that point too.
//
// Outputs are marked with the log offset at which they were produced (everything
// logged before them). A frame the guest sends is copied and held until that offset
// is acknowledged, then written to the tap, in order; a disk write is reported
// complete to the guest only then (vmm/devices/virtio_blk.h asks released()). In
// strict mode an acknowledgement counts only once the replica has replayed that far.
// Without a secondary (after winning the arbiter) the gate is open: everything goes
// at once. After losing it, the gate discards: nothing held may ever go out.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <vector>

#include "common/clock.h"

namespace ftvm::primary {

struct OutputGateStats {
  uint64_t frames_held = 0;
  uint64_t frames_released = 0;
  uint64_t frames_discarded = 0;
  uint64_t marks = 0;
  // How long frames waited, in ns: a sample of the most recent ones (for p50/p99).
  std::vector<uint64_t> hold_ns;
};

class OutputGate {
 public:
  // `emit` writes a released frame to the network (any thread; called in order).
  // `wake` tells the VM that held disk reports may go now (Machine::notify_host_event).
  // `flush` asks the log streamer to send what it has right away: an output waits.
  OutputGate(Clock& clock, std::function<void(std::span<const uint8_t>)> emit, std::function<void()> wake,
             std::function<void()> flush);

  // ---- vCPU thread.
  // A mark for an output produced now, with everything logged up to `log_offset`.
  uint64_t mark(uint64_t log_offset);
  bool released(uint64_t mark) const {
    return open_.load(std::memory_order_acquire) || acked_.load(std::memory_order_acquire) >= mark;
  }
  // Holds a copy of `frame` until `mark` is released (sends it now if it is).
  void hold(uint64_t mark, std::span<const iovec> frame);

  // ---- Any thread.
  // The secondary acknowledged the log up to `offset` (strict mode: replayed it).
  void acknowledged(uint64_t offset);
  // No secondary any more, and this side won the arbiter: release everything.
  void open();
  // This side lost the arbiter: drop what is held; nothing may go out any more.
  void discard();
  bool is_open() const { return open_.load(std::memory_order_acquire); }
  // A new secondary joined: from now on marks wait for its acknowledgements again
  // (marks are offsets in its new log stream, which starts at `start_offset`).
  void protect(uint64_t start_offset);

  // With at most `max_hold_samples` of the most recent hold times.
  OutputGateStats stats(size_t max_hold_samples = SIZE_MAX) const;

 private:
  struct Held {
    uint64_t mark;
    uint64_t since_ns;
    std::vector<uint8_t> frame;
  };
  void ReleaseLocked(uint64_t up_to, bool all);

  Clock& clock_;
  std::function<void(std::span<const uint8_t>)> emit_;
  std::function<void()> wake_;
  std::function<void()> flush_;
  std::atomic<uint64_t> acked_{0};
  std::atomic<bool> open_{false};
  std::atomic<uint64_t> highest_mark_{0};
  mutable std::mutex mu_;
  std::deque<Held> held_;
  bool discarding_ = false;
  OutputGateStats stats_;
};

}  // namespace ftvm::primary
