#include "storage/sync_gate.h"

#include "common/log.h"

namespace ftvm::storage {

namespace {
constexpr auto kWatchdogTick = std::chrono::milliseconds(50);
}

SyncDrGate::SyncDrGate(DiskMirror& mirror, std::chrono::nanoseconds timeout, Clock& clock, std::function<void()> wake)
    : mirror_(mirror), timeout_(timeout), clock_(clock), wake_(std::move(wake)) {
  watchdog_ = std::thread([this] { Watchdog(); });
}

SyncDrGate::~SyncDrGate() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
}

void SyncDrGate::durable_advanced() {
  if (waiting_since_ns_.load(std::memory_order_acquire) != 0) wake_();
}

uint64_t SyncDrGate::output_mark(vmm::OutputStream stream, uint64_t) {
  // The device told the mirror about this write before taking the mark: the
  // mirror's head is this write's sequence number.
  return stream == vmm::OutputStream::kDiskWrites ? mirror_.status().head_seq : 0;
}

bool SyncDrGate::output_released(uint64_t mark) {
  if (mark == 0 || degraded_.load(std::memory_order_acquire)) return true;
  const MirrorStatus s = mirror_.status();
  if (s.target_consistent && s.durable_seq >= mark) {
    waiting_since_ns_.store(0, std::memory_order_release);
    return true;
  }
  const uint64_t now = clock_.monotonic_ns();
  uint64_t since = 0;
  if (waiting_since_ns_.compare_exchange_strong(since, now, std::memory_order_acq_rel)) {
    held_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  if (now - since < uint64_t(timeout_.count())) return false;
  // The replica has not confirmed this write for the whole timeout: carry on
  // without it rather than hang the guest's disk for ever.
  degraded_.store(true, std::memory_order_release);
  waiting_since_ns_.store(0, std::memory_order_release);
  log::error("dr.sync_degraded",
             {{"waited_ms", double(now - since) / 1e6},
              {"mark", mark},
              {"durable_seq", s.durable_seq},
              {"state", MirrorStateName(s.state)},
              {"reason", s.last_error.empty() ? std::string("no durable acknowledgement in time") : s.last_error},
              {"now", "ASYNCHRONOUS: writes acknowledged to the guest may be missing on the replica"}});
  return true;
}

void SyncDrGate::Watchdog() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, kWatchdogTick, [&] { return stopping_; })) {
    if (degraded_.load(std::memory_order_acquire)) {
      // Back to synchronous once the replica holds every write again.
      const MirrorStatus s = mirror_.status();
      if (s.state == MirrorState::kStreaming && s.target_consistent && s.durable_seq >= s.head_seq) {
        degraded_.store(false, std::memory_order_release);
        log::warn("dr.sync_resumed", {{"durable_seq", s.durable_seq}});
      }
      continue;
    }
    // A held report must see its timeout even when no acknowledgement comes.
    if (waiting_since_ns_.load(std::memory_order_acquire) != 0) wake_();
  }
}

}  // namespace ftvm::storage
