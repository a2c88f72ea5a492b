// The event log as a stream to the secondary: the RecordSink a protected primary's
// recorder writes to.
//
// Records are encoded on the vCPU thread into a pending buffer; a sender thread
// ships it as LogData messages every `flush_interval_ns` (or at once when an output
// waits, see OutputGate), each saying how far the log is complete: no record below
// the VM's current position can follow, so the replica may run up to it. That
// promise also travels when no record was written, so a replica is never left
// waiting longer than an interval while the guest makes exits without inputs.
// Flow control: when the replica has not replayed `max_unreplayed_bytes` of log, or
// a batch sent `max_lag_ns` ago, append() blocks the vCPU: the primary slows down,
// nothing is dropped. The time bound is what matters for a failover: a replica
// taking over first replays what it lags behind.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "eventlog/encoder.h"
#include "transport/channel.h"

namespace ftvm::primary {

struct StreamerOptions {
  uint64_t flush_interval_ns = 500'000;
  uint64_t max_unreplayed_bytes = 64ull << 20;
  uint64_t max_lag_ns = 100'000'000;  // 0: no time bound
  std::chrono::nanoseconds send_timeout = std::chrono::seconds(5);
};

struct StreamerStats {
  // Replica lag: from sending a batch to the replica having replayed all of it, in
  // ns, for a sample of recent batches (p50/p99 come from these).
  std::vector<uint64_t> lag_ns;
  uint64_t messages = 0;
  uint64_t bytes = 0;            // log bytes sent (records)
  uint64_t flow_control_waits = 0;
  uint64_t flow_control_ns = 0;  // time the vCPU spent blocked by flow control
  // Where the stream stands (log offsets in bytes) and since when it runs, for
  // ftvm status.
  uint64_t appended_offset = 0;  // logged by the VM
  uint64_t sent_offset = 0;      // handed to the channel
  uint64_t received_offset = 0;  // the secondary has it (its last acknowledgement)
  uint64_t replayed_offset = 0;  // the replica has replayed it
  uint64_t oldest_unreplayed_ns = 0;  // how long ago the oldest unreplayed batch went out (0: none)
  uint64_t streaming_ns = 0;          // how long this stream has run
};

class LogStreamer final : public eventlog::RecordSink {
 public:
  // `start_offset`: the stream offset of the first record (the header's size).
  LogStreamer(transport::Channel& channel, uint64_t start_offset, Clock& clock, StreamerOptions options = {});
  ~LogStreamer() override;

  // ---- RecordSink (vCPU thread).
  eventlog::Status append(eventlog::RecordType type, uint64_t position, std::span<const uint8_t> payload,
                          bool compress = false) override;
  // Ships what is pending now, from the calling thread.
  eventlog::Status flush() override;
  // Ships everything and says Bye; waits for the sender (up to the send timeout).
  eventlog::Status close() override;
  uint64_t size() const override { return appended_.load(std::memory_order_acquire); }

  // The VM's position: everything logged below it is complete (vCPU thread).
  void note_position(uint64_t position) override { set_position(position); }
  void set_position(uint64_t position);
  // Changes the time bound on the replica's lag (any thread): a handover tightens it
  // so that the replica is close behind when the VM pauses.
  void set_max_lag_ns(uint64_t ns);
  // The secondary's acknowledgement (receiver thread).
  void acknowledged(uint64_t received_offset, uint64_t replayed_offset);
  // The secondary is gone: stop sending, and let append() drop records from now on.
  void abandon(const std::string& why);
  bool abandoned() const { return abandoned_.load(std::memory_order_acquire); }
  uint64_t sent_offset() const { return sent_.load(std::memory_order_acquire); }
  // With at most `max_lag_samples` of the most recent lag samples kept (ftvm status
  // asks often, and the copy is made under the lock append() takes).
  StreamerStats stats(size_t max_lag_samples = SIZE_MAX) const;

 private:
  void SenderLoop();
  // Sends what is pending, with the current completion promise. False once the
  // channel failed.
  bool Ship(bool closing);

  transport::Channel& channel_;
  Clock& clock_;
  StreamerOptions options_;
  eventlog::RecordEncoder encoder_;
  std::atomic<uint64_t> appended_;
  std::atomic<uint64_t> sent_;
  std::atomic<uint64_t> replayed_;
  std::atomic<uint64_t> received_;
  const uint64_t started_ns_;
  std::atomic<uint64_t> position_{0};
  std::atomic<bool> abandoned_{false};
  std::atomic<bool> idle_{false};  // the sender sleeps with nothing to send
  mutable std::mutex mu_;
  std::condition_variable cv_;       // the sender waits here
  std::condition_variable room_cv_;  // append waits here for the replica (flow control)
  std::vector<uint8_t> pending_;
  std::mutex ship_mu_;                // one Ship() at a time
  std::vector<uint8_t> batch_;        // guarded by ship_mu_
  uint64_t last_complete_below_ = 0;  // guarded by ship_mu_ (read unlocked as a hint)
  // Batches sent and not yet replayed: (send time, end offset), for lag samples.
  std::deque<std::pair<uint64_t, uint64_t>> in_flight_;
  bool urgent_ = false;
  bool closing_ = false;
  bool done_ = false;                // the sender has finished (closed or failed)
  std::string error_;
  StreamerStats stats_;
  std::thread sender_;
};

}  // namespace ftvm::primary
