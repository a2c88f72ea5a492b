// The source side of the write stream: a DiskWriteObserver on the VM's virtio-blk
// device that hands every write and flush, in completion order, to a target (a DR
// replica over a channel, or a disk move's new image in this process) without making
// the vCPU wait on it.
//
//   vCPU thread: disk_written()/disk_flushed() append a record to the open batch (a
//                copy of the data) under a short lock: no I/O, no network.
//   sender thread: connects, copies what the target lacks (catch-up), then sends the
//                open batch whenever it has records, and reads acknowledgements.
//
// The open batch is bounded (MirrorOptions::queue_bytes). When a write would overflow
// it (the target is slow or unreachable) the mirror drops the queued records, notes
// their blocks and every later write in a bitmap instead, and catches up by copying
// those blocks from the image; the target is *not* crash-consistent during a
// catch-up (it says so, and so does status()), and is again once the copy's last
// round, read with no write in progress, has been applied. The same catch-up copies
// the whole difference (by block hashes) when a target connects.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/unique_fd.h"
#include "storage/disk_applier.h"
#include "storage/storage.pb.h"
#include "storage/write_stream.h"
#include "vmm/devices/disk_observer.h"
#include "vmm/page_bitmap.h"

namespace ftvm::storage {

// A connected target.
class MirrorLink {
 public:
  virtual ~MirrorLink() = default;
  // Block hashes (migration::BlockHash) of the target's image, one per 4 KiB block.
  virtual const std::vector<uint64_t>& target_hashes() const = 0;
  // Sends (or applies) one sealed batch; "" or why the link is unusable.
  virtual std::string send(std::span<const uint8_t> batch) = 0;
  // The newest acknowledgement that arrived since the last call, if any; "" or why
  // the link is unusable.
  virtual std::string poll_ack(Ack& ack, bool& got) = 0;
  // Sends a DR checkpoint (storage/dr_checkpoint.h) after the batches sent so far.
  virtual std::string send_checkpoint(std::span<const uint8_t> message) {
    (void)message;
    return "this target keeps no checkpoints";
  }
};

class MirrorTarget {
 public:
  virtual ~MirrorTarget() = default;
  // "tcp:10.0.0.9:7100", "/new/disk.img".
  virtual std::string describe() const = 0;
  // Connects and shakes hands. Throws ftvm::Error naming the target and the cause (a
  // refused hello included: wrong protocol version, another disk size).
  virtual std::unique_ptr<MirrorLink> connect(const MirrorHello& hello) = 0;
};

// The DR replica at a channel address (ftvm dr-replica --listen).
std::unique_ptr<MirrorTarget> MakeChannelTarget(const std::string& address);
// A new image in this process (ftvm move-disk): created sparse if missing.
std::unique_ptr<MirrorTarget> MakeLocalTarget(const std::string& path);

struct MirrorOptions {
  std::string disk_path;          // the VM's image (read for catch-up copies)
  std::string vm_name = "vm";
  size_t queue_bytes = 32u << 20; // the open batch's bound (at most 48 MiB: one message)
  // The sender sends at least this often (the replica's view of the head stays fresh).
  std::chrono::nanoseconds heartbeat = std::chrono::milliseconds(100);
  std::chrono::nanoseconds retry = std::chrono::seconds(1);     // reconnecting
  std::chrono::nanoseconds report = std::chrono::seconds(1);    // dr.lag log lines (0: none)
  // A catch-up round with at most this many blocks left ends the catch-up (read while
  // the vCPU's writes wait: bounded).
  uint64_t final_round_blocks = 256;
  // Catch-up copies go at most this fast (bytes/s; 0: as fast as they can), so that
  // a copy does not crowd out the guest's own I/O and vCPU on a busy host.
  uint64_t copy_rate = 0;
  // Called (on the sender thread, no lock held) when the target's durable point
  // advanced: synchronous DR releases the guest's held disk reports (sync_gate.h).
  std::function<void()> on_durable;
};

enum class MirrorState : uint8_t { kConnecting, kCatchingUp, kStreaming, kStopped };
std::string_view MirrorStateName(MirrorState s);

struct MirrorStatus {
  MirrorState state = MirrorState::kConnecting;
  bool target_consistent = false;  // the target's image is a moment of this disk
  uint64_t head_seq = 0;           // writes and flushes the guest completed
  uint64_t head_bytes = 0;
  uint64_t durable_seq = 0;        // the target has these durably
  uint64_t durable_bytes = 0;
  uint64_t lag_bytes = 0;          // guest-written bytes the target does not durably hold
  uint64_t lag_ns = 0;             // age of the oldest write the target does not durably hold
  uint64_t overflows = 0;          // queue overflows (each began a catch-up)
  uint64_t catchups = 0;           // catch-ups finished
  uint64_t blocks_copied = 0;
  uint64_t bytes_sent = 0;
  uint64_t queued_bytes = 0;       // in the open batch now
  uint64_t checkpoints_sent = 0;   // DR checkpoints (queue_checkpoint) sent
  uint64_t checkpoints_dropped = 0;  // queued, but the stream broke before they went
  uint64_t last_checkpoint_seq = 0;
  uint64_t last_checkpoint_bytes = 0;  // compressed, as sent
  uint64_t last_checkpoint_wall_ns = 0;  // when the VM paused for it
  std::string last_error;
};

// Several observers on one device (a DR mirror and a disk move at once). Changed
// only on the vCPU thread (Machine::run_at_boundary), so it needs no lock.
class DiskTaps final : public vmm::DiskWriteObserver {
 public:
  void add(vmm::DiskWriteObserver* o) { taps_.push_back(o); }
  void remove(vmm::DiskWriteObserver* o) { std::erase(taps_, o); }
  void disk_written(uint64_t offset, std::span<const iovec> data) override {
    for (vmm::DiskWriteObserver* o : taps_) o->disk_written(offset, data);
  }
  void disk_flushed() override {
    for (vmm::DiskWriteObserver* o : taps_) o->disk_flushed();
  }

 private:
  std::vector<vmm::DiskWriteObserver*> taps_;
};

class DiskMirror final : public vmm::DiskWriteObserver {
 public:
  // Throws ftvm::Error when the image cannot be opened. Nothing is sent before
  // start().
  DiskMirror(std::unique_ptr<MirrorTarget> target, MirrorOptions options, Clock& clock);
  // Starts the sender thread, which connects in the background. Call it only once
  // the mirror observes the device: the first copy reads the image, and a write
  // that reached it before the mirror saw writes, after that read, would be lost.
  void start();
  ~DiskMirror() override;
  DiskMirror(const DiskMirror&) = delete;
  DiskMirror& operator=(const DiskMirror&) = delete;

  // vmm::DiskWriteObserver (vCPU thread).
  void disk_written(uint64_t offset, std::span<const iovec> data) override;
  void disk_flushed() override;

  MirrorStatus status() const;
  // Waits until the target is streaming, consistent, and durably holds all but at
  // most `max_behind` of the guest's writes and flushes, or `timeout`.
  bool wait_synced(std::chrono::nanoseconds timeout, uint64_t max_behind = 0);
  // With the guest's writes stopped (on the vCPU thread, or with no VM writing):
  // sends what is queued and waits until the target holds all of it durably. "" or
  // why not (not streaming, a failed link). A disk move's switch.
  std::string drain(std::chrono::nanoseconds timeout);
  // vCPU thread, at a boundary (no write in progress, so the stream's head is
  // `seq`): a DR checkpoint at write `seq`, sent after the writes up to it and
  // before any later one. `build` makes its state (storage/vm_checkpoint.h) on the
  // sender thread, which then compresses and sends it; later writes wait in the open
  // batch meanwhile. False, with nothing queued, when the target is not streaming
  // (a catch-up's end is no write position) or the previous one is still queued.
  bool queue_checkpoint(std::function<std::string()> build, uint64_t seq);
  // Reads catch-up copies from the image at `path` from now on (the VM's disk moved
  // there; vCPU thread, at the switch). Throws ftvm::Error.
  void reopen_image(const std::string& path);
  // Stops the sender thread (the destructor does this too).
  void stop();

 private:
  void SenderLoop();
  // One connection's life: hello, catch-up, streaming. Returns why it ended.
  std::string Serve(MirrorLink& link);
  std::string CatchUp(MirrorLink& link, vmm::PageBitmap initial);
  std::string SendOpenBatch(MirrorLink& link, bool heartbeat);
  std::string PollAcks(MirrorLink& link);
  void NoteAck(const Ack& ack);
  // mu_ held: starts a new open batch.
  void ResetOpen();
  // mu_ held: the open batch overflowed: note its writes' blocks and catch up.
  void Overflow();
  // mu_ held: forgets a queued checkpoint (the stream broke before it went); its
  // writes, if `overflow`, go to the catch-up.
  void DropCheckpointLocked(const std::string& why, bool overflow);
  // Sends the queued checkpoint, if any: the writes before it, then it.
  std::string SendCheckpoint(MirrorLink& link);
  void AppendLocked(RecordKind kind, uint64_t offset, uint64_t bytes, std::span<const iovec> data);
  void Report(bool force);
  void FillStatusLocked(MirrorStatus& s, uint64_t now_wall) const;

  std::unique_ptr<MirrorTarget> target_;
  MirrorOptions options_;
  Clock& clock_;
  UniqueFd image_;
  uint64_t disk_bytes_ = 0;

  mutable std::mutex mu_;           // everything below, with the vCPU thread
  std::condition_variable cv_;
  MirrorState state_ = MirrorState::kConnecting;
  std::vector<uint8_t> open_;       // header room + records
  uint16_t open_count_ = 0;
  uint64_t open_first_seq_ = 0;
  uint64_t open_first_bytes_ = 0;
  uint64_t open_first_wall_ = 0;
  uint64_t head_seq_ = 0;
  uint64_t head_bytes_ = 0;
  vmm::PageBitmap dirty_;           // blocks written while not streaming
  uint64_t dirty_since_wall_ = 0;   // the oldest write noted only in dirty_ (0: none)
  // Batches sent but not durable at the target: (last seq, first record's wall time).
  std::deque<std::pair<uint64_t, uint64_t>> unacked_;
  // A checkpoint queued on the vCPU thread, with the writes before it (the open
  // batch when it was queued), waiting for the sender.
  struct PendingCheckpoint {
    std::function<std::string()> build;
    uint64_t seq = 0;
    uint64_t bytes = 0;
    uint64_t wall_ns = 0;
    std::vector<uint8_t> before;  // header room + records, or empty
    BatchHeader before_header;
  };
  std::unique_ptr<PendingCheckpoint> checkpoint_;
  Ack last_ack_;
  MirrorStatus counters_;
  bool stopping_ = false;

  std::mutex send_mu_;              // one sender of batches at a time (thread, drain)
  std::vector<uint8_t> sending_;    // the batch being sent (swapped with open_)
  MirrorLink* link_ = nullptr;      // guarded by send_mu_
  uint64_t next_report_ns_ = 0;
  std::thread thread_;
};

}  // namespace ftvm::storage
