// The replayer: runs on the secondary. Its VM is configured for replay (no tap, no
// host timers) and it feeds that VM the primary's inputs from the event log at
// their positions, so the replica goes through exactly the primary's states.
//
// Everything the replica does is checked against the log as it goes: every input
// its devices ask for must be the next record, every interrupt it injects must be
// the logged one, and (with verification on) every Verify record's digest must
// equal the replica's own. The first mismatch stops the replica and is reported
// as a divergence naming the position, what differed and what was being replayed.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "secondary/record_source.h"
#include "eventlog/records.h"
#include "vmm/checkpoint.h"
#include "vmm/dirty_tracker.h"
#include "vmm/execution.h"
#include "vmm/machine.h"
#include "vmm/page_bitmap.h"
#include "vmm/state_digest.h"

namespace ftvm::secondary {

struct ReplayOptions {
  bool verify = false;  // compare every Verify record (needs dirty tracking)
  // Called on the vCPU thread when the log ends without an End record (the primary
  // is gone) and the replica has consumed all of it. It decides whether this
  // replica carries on as the VM: it must then have switched the machine to live
  // (Machine::go_live) and returns true; false stops the replica. Unset (replaying a
  // file): the replay stops as kIncomplete.
  std::function<bool(vmm::Machine&)> go_live;
  // Post-copy (migration/postcopy.h): the memory of a log that opens with a
  // checkpoint arrives after the replica has gone live. The initial state is then
  // checked by check_initial_memory() once it has, not when the replica starts.
  bool memory_arrives_later = false;
  // Called (vCPU thread) when the replica diverges, with what differs and where.
  std::function<void(const std::string&)> on_diverged;
};

enum class ReplayOutcome {
  kIdentical,   // the End record's digest equals the replica's final state
  kDiverged,    // the replica left the recorded execution (message says where)
  kIncomplete,  // the log stops before an End record (a crashed or cut recording)
  kBadLog,      // the log is corrupt or does not fit this VM
  kWentLive,    // the log ended, and the replica took over as the VM
};
std::string_view ReplayOutcomeName(ReplayOutcome outcome);

struct ReplayStats {
  uint64_t records = 0;
  uint64_t checkpoints = 0;
  uint64_t checkpoint_pages = 0;
  uint64_t verifications = 0;
  uint64_t verify_pages = 0;
  uint64_t verify_ns = 0;
  uint64_t interrupts = 0;
  uint64_t frames = 0;
  uint64_t output_checks = 0;
  uint64_t guest_resets = 0;
  uint64_t wait_cuts = 0;
  uint64_t final_position = 0;
};

class Replayer final : public vmm::ExecutionHooks {
 public:
  // `machine` must be configured by primary::ReplicaConfig from `source`'s header
  // and not yet run; `source` stays owned by the caller and must outlive this.
  Replayer(vmm::Machine& machine, RecordSource& source, ReplayOptions options);
  ~Replayer() override;

  // After Machine::run.
  ReplayOutcome outcome() const { return outcome_; }
  // "identical", or what went wrong, naming the position (and log offset).
  const std::string& message() const { return message_; }
  const std::optional<vmm::Sha256Digest>& final_digest() const { return final_digest_; }
  const ReplayStats& stats() const { return stats_; }
  // The last clock values the log gave the guest (0: none), for a replica going
  // live: its clock must go on from there, never back.
  // The digest of the replica's memory as it is now, kept by whoever wrote it (a
  // live copy): a log that opens with a checkpoint then rehashes only the pages the
  // checkpoint changes instead of all of memory. Before the machine runs.
  void adopt_memory_digest(std::unique_ptr<vmm::MemoryDigest> digest);
  // memory_arrives_later: "" when the initial state (the registers and devices as
  // the opening checkpoint left them, and `memory`, the digest of the memory that
  // arrived) is the one the log's header names, or what differs. Any thread.
  std::string check_initial_memory(const vmm::MemorySum& memory) const;
  uint64_t last_monotonic_ns() const { return last_clock_[0]; }
  uint64_t last_wall_ns() const { return last_clock_[1]; }
  // The replica's progress, for acknowledgements (any thread): log bytes consumed,
  // and the position reached.
  uint64_t consumed_offset() const { return consumed_.load(std::memory_order_acquire); }
  uint64_t replayed_position() const { return replayed_position_.load(std::memory_order_acquire); }
  // Checkpoints jumped to and verifications passed so far, readable from any thread
  // while the replica runs (stats() is the vCPU thread's).
  uint64_t checkpoint_count() const { return checkpoints_published_.load(std::memory_order_relaxed); }
  uint64_t verification_count() const { return verifications_published_.load(std::memory_order_relaxed); }
  // Makes the replica stop at once, even while it waits for log data.
  void interrupt();

 private:
  // DeviceIo
  bool replaying() const override { return true; }
  uint64_t input_value(vmm::InputKind kind, uint64_t live) override;
  bool input_bytes(vmm::InputKind kind, std::span<uint8_t> out, RandomSource& live) override;
  void timer_expired() override {}
  void frame_received(std::span<const uint8_t>) override {}
  int disk_request_done(uint16_t head, int host_error) override;
  void disk_batch_done(uint16_t, uint16_t) override {}  // reports come from the log
  uint64_t output_mark(vmm::OutputStream stream, uint64_t stream_hash) override;
  bool output_released(uint64_t) override { return false; }
  bool transmit_frame(std::span<const iovec>, uint64_t stream_hash) override {
    output_mark(vmm::OutputStream::kFrames, stream_hash);
    return false;
  }
  // ExecutionHooks
  void started(vmm::Machine& m) override;
  void after_exit(vmm::Machine& m, bool guest_caused) override;
  bool apply_device_events(vmm::Machine& m, bool one) override;
  bool boundary(vmm::Machine& m, bool exact) override;
  void vector_injected(vmm::Machine& m, uint8_t vector) override;
  void finished(vmm::Machine& m, bool exact, bool completed) override;

  // The next record, if the log has one; reading errors end the replay (kBadLog).
  const eventlog::Record* Peek();
  // The next record if it is at the current position, else null.
  const eventlog::Record* HeadHere();
  void Consume();
  // Requires the next record to be `type` at the current position; otherwise
  // reports a divergence (doing = what the replica was doing) and returns null.
  const eventlog::Record* Expect(eventlog::RecordType type, const char* doing);
  // Says so (an operator event) and tells options_.on_diverged; message_ is set.
  void Diverged();
  void Diverge(const std::string& what);
  void Fail(ReplayOutcome outcome, const std::string& message);
  std::string Describe(const eventlog::Record& r) const;
  void Verify(const eventlog::Record& r);
  // Compares the replica's outputs not yet checked with the OutputCheck records at
  // the head of the log, in order, as far as both go.
  void MatchOutputChecks();
  vmm::Sha256Digest CurrentDigest(vmm::MemorySum* memory = nullptr);

  vmm::Machine& m_;
  // The log ended without an End record: go live, or stop as incomplete.
  void Exhausted(const std::string& where);

  RecordSource& source_;
  ReplayOptions options_;
  eventlog::Record head_;
  bool have_head_ = false;
  bool log_done_ = false;  // the reader has nothing more (clean end or error)
  std::unique_ptr<vmm::DirtyTracker> tracker_;
  std::unique_ptr<vmm::MemoryDigest> memory_digest_;
  // memory_arrives_later: the state check_initial_memory() completes.
  uint64_t initial_position_ = 0;
  std::vector<uint8_t> initial_regs_;
  std::string initial_devices_;
  vmm::PageBitmap since_verify_;
  vmm::CheckpointLoader checkpoints_;
  bool exit_boundary_ = false;
  bool stopped_ = false;     // outcome decided before the run ended
  bool live_ = false;        // went live: the hooks are no longer this replayer
  std::atomic<uint64_t> consumed_{0};
  std::atomic<uint64_t> replayed_position_{0};
  std::atomic<uint64_t> checkpoints_published_{0};    // stats_.checkpoints, for other threads
  std::atomic<uint64_t> verifications_published_{0};  // stats_.verifications, for other threads
  uint64_t last_clock_[2] = {0, 0};
  // Outputs the replica produced whose OutputCheck it has not reached yet. Within
  // one position the primary may have logged a device event (a disk report, a frame
  // received) before an output the replica produces earlier in the same exit, as
  // devices are polled in a fixed order there and events are applied after the
  // polls here; by the exit's boundary every one must have been matched.
  struct UncheckedOutput {
    vmm::OutputStream stream;
    uint64_t hash;
  };
  std::deque<UncheckedOutput> unchecked_;
  std::string last_replayed_ = "nothing yet";
  ReplayOutcome outcome_ = ReplayOutcome::kIncomplete;
  std::string message_;
  std::optional<vmm::Sha256Digest> final_digest_;
  ReplayStats stats_;
};

}  // namespace ftvm::secondary
