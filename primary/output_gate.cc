#include "primary/output_gate.h"

#include <algorithm>

namespace ftvm::primary {
namespace {
constexpr size_t kHoldSamples = 100000;  // keeps the statistics' memory bounded
}

OutputGate::OutputGate(Clock& clock, std::function<void(std::span<const uint8_t>)> emit, std::function<void()> wake,
                       std::function<void()> flush)
    : clock_(clock), emit_(std::move(emit)), wake_(std::move(wake)), flush_(std::move(flush)) {}

uint64_t OutputGate::mark(uint64_t log_offset) {
  uint64_t prev = highest_mark_.load(std::memory_order_relaxed);
  while (log_offset > prev && !highest_mark_.compare_exchange_weak(prev, log_offset, std::memory_order_acq_rel)) {
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.marks;
  }
  // Somebody waits for this part of the log: do not let it sit in a batch.
  if (!released(log_offset)) flush_();
  return log_offset;
}

void OutputGate::hold(uint64_t mark, std::span<const iovec> frame) {
  std::vector<uint8_t> copy;
  for (const iovec& v : frame)
    copy.insert(copy.end(), static_cast<const uint8_t*>(v.iov_base), static_cast<const uint8_t*>(v.iov_base) + v.iov_len);
  std::lock_guard<std::mutex> lock(mu_);
  if (discarding_) {
    ++stats_.frames_discarded;
    return;
  }
  ++stats_.frames_held;
  held_.push_back(Held{mark, clock_.monotonic_ns(), std::move(copy)});
  ReleaseLocked(acked_.load(std::memory_order_acquire), open_.load(std::memory_order_acquire));
}

void OutputGate::ReleaseLocked(uint64_t up_to, bool all) {
  const uint64_t now = clock_.monotonic_ns();
  while (!held_.empty() && (all || held_.front().mark <= up_to)) {
    emit_(held_.front().frame);
    if (stats_.hold_ns.size() < kHoldSamples) stats_.hold_ns.push_back(now - held_.front().since_ns);
    ++stats_.frames_released;
    held_.pop_front();
  }
}

void OutputGate::acknowledged(uint64_t offset) {
  const uint64_t before = acked_.load(std::memory_order_acquire);
  if (offset <= before) return;
  acked_.store(offset, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!discarding_) ReleaseLocked(offset, false);
  }
  // Disk reports wait in the VM for marks this ack may have released.
  if (highest_mark_.load(std::memory_order_acquire) > before) wake_();
}

void OutputGate::open() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (discarding_) return;
    open_.store(true, std::memory_order_release);
    ReleaseLocked(0, true);
  }
  wake_();
}

void OutputGate::protect(uint64_t start_offset) {
  std::lock_guard<std::mutex> lock(mu_);
  if (discarding_) return;
  acked_.store(start_offset, std::memory_order_release);
  highest_mark_.store(start_offset, std::memory_order_release);
  open_.store(false, std::memory_order_release);
}

void OutputGate::discard() {
  std::lock_guard<std::mutex> lock(mu_);
  discarding_ = true;
  stats_.frames_discarded += held_.size();
  held_.clear();
}

OutputGateStats OutputGate::stats(size_t max_hold_samples) const {
  std::lock_guard<std::mutex> lock(mu_);
  OutputGateStats s;
  s.frames_held = stats_.frames_held;
  s.frames_released = stats_.frames_released;
  s.frames_discarded = stats_.frames_discarded;
  s.marks = stats_.marks;
  const size_t samples = std::min(max_hold_samples, stats_.hold_ns.size());
  s.hold_ns.assign(stats_.hold_ns.end() - long(samples), stats_.hold_ns.end());
  return s;
}

}  // namespace ftvm::primary
