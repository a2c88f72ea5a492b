#include "primary/log_streamer.h"

#include <algorithm>

#include "common/log.h"
#include "primary/protocol.h"

namespace ftvm::primary {

using eventlog::Status;

LogStreamer::LogStreamer(transport::Channel& channel, uint64_t start_offset, Clock& clock, StreamerOptions options)
    : channel_(channel),
      clock_(clock),
      options_(options),
      appended_(start_offset),
      sent_(start_offset),
      replayed_(start_offset),
      received_(start_offset),
      started_ns_(clock.monotonic_ns()) {
  sender_ = std::thread([this] { SenderLoop(); });
}

LogStreamer::~LogStreamer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
  }
  cv_.notify_all();
  room_cv_.notify_all();
  if (sender_.joinable()) sender_.join();
}

Status LogStreamer::append(eventlog::RecordType type, uint64_t position, std::span<const uint8_t> payload,
                           bool compress) {
  if (abandoned()) return Status::Ok();  // unprotected: the records have no reader
  std::unique_lock<std::mutex> lock(mu_);
  const size_t before = pending_.size();
  if (std::string problem = encoder_.encode(type, position, payload, compress, pending_); !problem.empty())
    return Status::Failure("log stream to " + channel_.peer() + ": " + problem);
  appended_.fetch_add(pending_.size() - before, std::memory_order_acq_rel);
  if (pending_.size() >= (1u << 20)) {
    urgent_ = true;
    cv_.notify_one();
  }
  // Flow control: the replica is too far behind. Wait for it (or for it to be
  // declared gone), never drop. (Each acknowledgement notifies room_cv_.)
  auto behind = [&] {
    if (appended_.load(std::memory_order_acquire) - replayed_.load(std::memory_order_acquire) >
        options_.max_unreplayed_bytes)
      return true;
    return options_.max_lag_ns != 0 && !in_flight_.empty() &&
           clock_.monotonic_ns() - in_flight_.front().first > options_.max_lag_ns;
  };
  if (behind()) {
    const uint64_t t0 = clock_.monotonic_ns();
    ++stats_.flow_control_waits;
    urgent_ = true;
    cv_.notify_one();
    room_cv_.wait(lock, [&] { return abandoned() || closing_ || done_ || !behind(); });
    stats_.flow_control_ns += clock_.monotonic_ns() - t0;
  }
  return Status::Ok();
}

Status LogStreamer::flush() {
  // An output waits for this: ship now, from this thread, rather than wake the
  // sender (a thread wake-up costs ~40 us here, a send a few).
  if (!abandoned()) Ship(false);
  return Status::Ok();
}

Status LogStreamer::close() {
  std::unique_lock<std::mutex> lock(mu_);
  closing_ = true;
  cv_.notify_all();
  room_cv_.notify_all();
  lock.unlock();
  if (sender_.joinable()) sender_.join();
  lock.lock();
  if (!error_.empty() && !abandoned()) return Status::Failure(error_);
  return Status::Ok();
}

void LogStreamer::set_max_lag_ns(uint64_t ns) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.max_lag_ns = ns;
}

void LogStreamer::acknowledged(uint64_t received_offset, uint64_t replayed_offset) {
  if (received_offset > received_.load(std::memory_order_relaxed))
    received_.store(received_offset, std::memory_order_relaxed);
  uint64_t prev = replayed_.load(std::memory_order_acquire);
  if (replayed_offset <= prev) return;
  replayed_.store(replayed_offset, std::memory_order_release);
  const uint64_t now = clock_.monotonic_ns();
  std::lock_guard<std::mutex> lock(mu_);
  while (!in_flight_.empty() && in_flight_.front().second <= replayed_offset) {
    if (stats_.lag_ns.size() < 200000) stats_.lag_ns.push_back(now - in_flight_.front().first);
    in_flight_.pop_front();
  }
  room_cv_.notify_all();
}

void LogStreamer::abandon(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (abandoned()) return;
    abandoned_.store(true, std::memory_order_release);
    if (error_.empty()) error_ = why;
    pending_.clear();
  }
  cv_.notify_all();
  room_cv_.notify_all();
}

StreamerStats LogStreamer::stats(size_t max_lag_samples) const {
  const uint64_t now = clock_.monotonic_ns();
  std::lock_guard<std::mutex> lock(mu_);
  StreamerStats s;
  s.messages = stats_.messages;
  s.bytes = stats_.bytes;
  s.flow_control_waits = stats_.flow_control_waits;
  s.flow_control_ns = stats_.flow_control_ns;
  const size_t samples = std::min(max_lag_samples, stats_.lag_ns.size());
  s.lag_ns.assign(stats_.lag_ns.end() - long(samples), stats_.lag_ns.end());
  s.appended_offset = appended_.load(std::memory_order_acquire);
  s.sent_offset = sent_.load(std::memory_order_acquire);
  s.received_offset = received_.load(std::memory_order_relaxed);
  s.replayed_offset = replayed_.load(std::memory_order_acquire);
  s.oldest_unreplayed_ns = in_flight_.empty() ? 0 : now - std::min(now, in_flight_.front().first);
  s.streaming_ns = now - started_ns_;
  return s;
}

void LogStreamer::set_position(uint64_t position) {
  position_.store(position, std::memory_order_seq_cst);
  // Wake the sender only when it sleeps with nothing to do: one notify per idle
  // spell, not one per exit.
  if (idle_.exchange(false, std::memory_order_seq_cst)) {
    std::lock_guard<std::mutex> lock(mu_);
    cv_.notify_one();
  }
}

bool LogStreamer::Ship(bool closing) {
  // One shipper at a time (the sender thread, or the vCPU for an output that waits):
  // batches leave in offset order.
  std::lock_guard<std::mutex> ship(ship_mu_);
  uint64_t complete_below;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return false;
    // The position first, then the records: every record of a position below it
    // was appended before the VM reached it, so it is in the buffer taken now.
    complete_below = position_.load(std::memory_order_acquire);
    batch_.swap(pending_);
    pending_.clear();
    urgent_ = false;
  }
  const uint64_t offset = sent_.load(std::memory_order_acquire);
  if (batch_.empty() && complete_below <= last_complete_below_ && !closing) return true;
  auto head = replication::EncodeLogDataHeader({offset, complete_below});
  const std::span<const uint8_t> parts[] = {head, batch_};
  transport::SendResult r = channel_.send(replication::kLogData, parts, options_.send_timeout);
  if (!r.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.empty()) error_ = r.message;
    done_ = true;
    room_cv_.notify_all();
    log::warn("stream.send_failed", {{"peer", channel_.peer()}, {"error", r.message}});
    return false;
  }
  sent_.store(offset + batch_.size(), std::memory_order_release);
  last_complete_below_ = complete_below;
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.messages;
  stats_.bytes += batch_.size();
  if (!batch_.empty() && in_flight_.size() < 100000) in_flight_.emplace_back(clock_.monotonic_ns(), offset + batch_.size());
  batch_.clear();
  return true;
}

void LogStreamer::SenderLoop() {
  uint64_t next_flush = 0;
  for (;;) {
    bool closing;
    {
      std::unique_lock<std::mutex> lock(mu_);
      for (;;) {
        if (abandoned() || closing_ || done_) break;
        const uint64_t now = clock_.monotonic_ns();
        idle_.store(true, std::memory_order_seq_cst);
        const bool have = !pending_.empty() || position_.load(std::memory_order_seq_cst) > last_complete_below_;
        if (urgent_ || (have && now >= next_flush)) break;
        if (have)
          cv_.wait_for(lock, std::chrono::nanoseconds(next_flush - now));
        else
          cv_.wait(lock);  // set_position, append of a large batch, flush or close wake it
      }
      idle_.store(false, std::memory_order_seq_cst);
      if (abandoned() || done_) break;
      closing = closing_;
    }
    // Batches are at least an interval apart, so a busy VM sends few, large ones.
    next_flush = clock_.monotonic_ns() + options_.flush_interval_ns;
    if (!Ship(closing)) return;
    if (closing) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!pending_.empty()) continue;  // appended while we sent: ship it too
      }
      std::lock_guard<std::mutex> ship(ship_mu_);
      transport::SendResult r = channel_.send(replication::kBye, std::span<const uint8_t>(), options_.send_timeout);
      std::lock_guard<std::mutex> lock(mu_);
      if (!r.ok() && error_.empty()) error_ = r.message;
      done_ = true;
      room_cv_.notify_all();
      return;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  done_ = true;
  room_cv_.notify_all();
}

}  // namespace ftvm::primary
