// The recorder: runs on the primary and writes every nondeterministic input of the
// VM to an event log, each at its position (vmm/execution.h), so that a replica
// started from the same initial state reproduces the run exactly.
//
// It also makes the run replayable where the guest gives no exit to anchor an
// interrupt: when host input has waited longer than `checkpoint_after_ns` while the
// guest computes without exits, it takes an epoch checkpoint there (vCPU, devices,
// the pages written since the last agreed state) and injects at that point. And at
// regular intervals it writes a Verify record with the state digest, which the
// replica compares with its own.
#pragma once

#include <condition_variable>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "eventlog/encoder.h"
#include "eventlog/eventlog.pb.h"
#include "eventlog/records.h"
#include "vmm/dirty_tracker.h"
#include "vmm/execution.h"
#include "vmm/machine.h"
#include "vmm/page_bitmap.h"
#include "vmm/state_digest.h"

namespace ftvm::primary {

struct RecorderOptions {
  uint64_t verify_interval_ns = 50'000'000;  // a Verify record every 50 ms of run time
  uint64_t checkpoint_after_ns = 2'000'000;  // input may wait 2 ms for a guest exit
  // Log an OutputCheck after every output (the strict output rule: the replica
  // proves it produced the same output before the output is released).
  bool output_checks = false;
};

struct RecorderStats {
  uint64_t records = 0;
  uint64_t clock_reads = 0;
  uint64_t wait_results = 0;
  uint64_t random_bytes = 0;
  uint64_t frames = 0;
  uint64_t output_checks = 0;
  uint64_t frame_bytes = 0;
  uint64_t timer_expiries = 0;
  uint64_t interrupts = 0;
  uint64_t disk_batches = 0;
  uint64_t disk_errors = 0;
  uint64_t guest_resets = 0;
  uint64_t wait_cuts = 0;
  uint64_t checkpoints = 0;
  uint64_t checkpoint_pages = 0;
  uint64_t checkpoint_ns = 0;     // time spent capturing and logging checkpoints
  uint64_t verifications = 0;
  uint64_t verify_pages = 0;      // pages rehashed for verifications
  uint64_t verify_ns = 0;         // time spent computing verification digests
  uint64_t log_bytes = 0;         // the log's size, header included
  uint64_t final_position = 0;
};

class Recorder final : public vmm::ExecutionHooks {
 public:
  // `machine` must be configured with ExecutionMode::kRecord and not yet run, or be
  // a replica about to go live as a recorder (Machine::go_live). Hashes the
  // initial state and prepares the log header. Throws ftvm::Error naming the
  // problem (no dirty tracking, unreadable image or disk).
  Recorder(vmm::Machine& machine, RecorderOptions options);
  ~Recorder() override;

  // What the log's header says: the VM, its image and the initial state digest.
  const eventlog::LogHeader& header() const { return header_; }
  // Where records go from now on (not owned; it must outlive the recording or be
  // detached). Null: nowhere (a primary without a secondary). Attach before run()
  // or from a hook.
  void attach(eventlog::RecordSink* sink) { sink_ = sink; }
  // The output rule for a protected primary (not owned). Without one, outputs go at
  // once (a recording to a file, a primary without a secondary).
  void set_output_gate(class OutputGate* gate) { gate_ = gate; }

  const RecorderStats& stats() const { return stats_; }
  // Checkpoints taken and verifications written so far, readable from any thread
  // while the VM runs (stats() is the vCPU thread's).
  uint64_t checkpoint_count() const { return checkpoints_published_.load(std::memory_order_relaxed); }
  uint64_t verification_count() const { return verifications_published_.load(std::memory_order_relaxed); }
  // The End record is (about to be) logged (any thread): a secondary that has it
  // may finish and hang up, which is then no loss.
  bool log_ended() const { return log_ended_.load(std::memory_order_acquire); }
  // After Machine::run: the digest written in the End record (absent when the run
  // ended in an error that left no consistent state).
  const std::optional<vmm::Sha256Digest>& final_digest() const { return final_digest_; }
  // Why recording stopped early (the log could not be written), or "".
  const std::string& error() const { return error_; }

  // The start of a log for a secondary joining the running VM (call from a task at
  // a boundary: Machine::run_at_boundary): a header whose initial state is the VM's now, at its current
  // position, and a checkpoint of everything (serialized snapshot parts) to send
  // first. Starts a new verification interval.
  struct SnapshotStart {
    eventlog::LogHeader header;
    std::vector<std::string> checkpoint_parts;
  };
  // `pages`: only those pages go into the checkpoint (the replica already has the
  // rest, sent while the VM ran: migration/); null: all of them.
  // `memory`: the digest of memory as it is now, kept by whoever copied it (a live
  // copy's sender), taken over instead of hashing what the VM wrote since the last
  // verification in the pause; null: hash those pages.
  SnapshotStart snapshot_start(const vmm::PageBitmap* pages = nullptr,
                               std::unique_ptr<vmm::MemoryDigest> memory = nullptr);

  // For a live copy of the VM (migration/), at boundaries: start_write_tracking()
  // begins noting the pages the VM writes (guest and devices alike); each
  // take_written_pages() returns those written since the previous call (or since
  // the start) and starts over; stop_write_tracking() ends it.
  void start_write_tracking();
  vmm::PageBitmap take_written_pages();
  void stop_write_tracking() { written_.reset(); }
  // At a boundary: copies the memory digest, exact but for the pages written since
  // the last verification (all of which hold data), into `into`.
  void copy_memory_digest(vmm::MemoryDigest& into) const { into.copy_from(*memory_digest_); }
  // Slows the guest down so that it runs at most (100 - percent)% of the time
  // (0: full speed): a live copy that cannot keep up with the pages the guest
  // writes throttles it to converge. Any thread; takes effect at boundaries.
  void set_throttle_percent(unsigned percent) { throttle_percent_.store(std::min(percent, 99u)); }
  unsigned throttle_percent() const { return throttle_percent_.load(); }

 private:
  // DeviceIo
  bool replaying() const override { return false; }
  uint64_t input_value(vmm::InputKind kind, uint64_t live) override;
  bool input_bytes(vmm::InputKind kind, std::span<uint8_t> out, RandomSource& live) override;
  void timer_expired() override;
  void frame_received(std::span<const uint8_t> frame) override;
  int disk_request_done(uint16_t head, int host_error) override;
  void disk_batch_done(uint16_t queue, uint16_t count) override;
  uint64_t output_mark(vmm::OutputStream stream, uint64_t stream_hash) override;
  bool output_released(uint64_t mark) override;
  bool transmit_frame(std::span<const iovec> frame, uint64_t stream_hash) override;
  // ExecutionHooks
  void started(vmm::Machine& m) override;
  void after_exit(vmm::Machine& m, bool guest_caused) override;
  bool apply_device_events(vmm::Machine&, bool) override { return false; }
  bool boundary(vmm::Machine& m, bool exact) override;
  void vector_injected(vmm::Machine& m, uint8_t vector) override;
  void guest_reset(vmm::Machine& m) override;
  void wait_cut(vmm::Machine& m) override;
  void finished(vmm::Machine& m, bool exact, bool completed) override;

  void Append(eventlog::RecordType type, std::span<const uint8_t> payload, bool compress = false);
  void CollectDirty();
  void WriteVerify();
  void WriteCheckpoint();

  vmm::Machine& m_;
  RecorderOptions options_;
  std::unique_ptr<vmm::DirtyTracker> tracker_;
  std::unique_ptr<vmm::MemoryDigest> memory_digest_;
  eventlog::LogHeader header_;
  eventlog::RecordSink* sink_ = nullptr;
  class OutputGate* gate_ = nullptr;
  vmm::PageBitmap since_verify_;      // pages written since the last Verify record
  vmm::PageBitmap since_checkpoint_;  // ... since the last Verify or checkpoint
  std::optional<vmm::PageBitmap> written_;  // ... since take_written_pages()
  std::atomic<unsigned> throttle_percent_{0};
  uint64_t throttle_mark_ns_ = 0;  // where the guest's current run slice began
  uint64_t last_verify_ns_ = 0;
  bool exit_boundary_ = false;        // the next boundary is the first after an exit
  RecorderStats stats_;
  std::atomic<uint64_t> checkpoints_published_{0};    // stats_.checkpoints, for other threads
  std::atomic<uint64_t> verifications_published_{0};  // stats_.verifications, for other threads
  std::optional<vmm::Sha256Digest> final_digest_;
  std::string error_;
  std::atomic<bool> log_ended_{false};
};

}  // namespace ftvm::primary
