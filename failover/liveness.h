// Failure detection by silence: any message from the peer proves it alive; when
// nothing arrived for `timeout`, it is declared gone. A dead process is usually
// noticed sooner (its channel closes); silence is what a cut link or a frozen host
// leaves. The largest gap ever seen is kept: it is how the default timeout was chosen
// (no false failover over a long idle run on a noisy host).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "common/clock.h"

namespace ftvm::failover {

struct LivenessOptions {
  uint64_t heartbeat_interval_ns = 10'000'000;  // send one when idle this long
  uint64_t failure_timeout_ns = 300'000'000;    // silent this long: gone
};

class PeerLiveness {
 public:
  PeerLiveness(Clock& clock, const LivenessOptions& options)
      : clock_(clock), options_(options), last_(clock.monotonic_ns()) {}

  // A message arrived (any thread).
  void heard() {
    const uint64_t now = clock_.monotonic_ns();
    const uint64_t gap = now - last_.exchange(now, std::memory_order_acq_rel);
    uint64_t prev = max_gap_.load(std::memory_order_relaxed);
    while (gap > prev && !max_gap_.compare_exchange_weak(prev, gap, std::memory_order_relaxed)) {
    }
  }
  // Starts over, as if a message arrived now and none before it (a peer that has
  // just become ready: the time it took to get there is no silence).
  void restart() {
    last_.store(clock_.monotonic_ns(), std::memory_order_release);
    max_gap_.store(0, std::memory_order_relaxed);
  }
  uint64_t silent_ns() const { return clock_.monotonic_ns() - last_.load(std::memory_order_acquire); }
  bool expired() const { return silent_ns() > options_.failure_timeout_ns; }
  uint64_t max_gap_ns() const { return max_gap_.load(std::memory_order_relaxed); }
  const LivenessOptions& options() const { return options_; }

 private:
  Clock& clock_;
  LivenessOptions options_;
  std::atomic<uint64_t> last_;
  std::atomic<uint64_t> max_gap_{0};
};

}  // namespace ftvm::failover
