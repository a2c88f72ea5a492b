// Live state transfer: copies a running VM's memory and disk to another VMM over a
// logging channel while the VM keeps running (pre-copy), so that the VM pauses
// only for what it wrote during the last round.
//
//   sender (VM runs here)                          receiver (the copy)
//   MemoryPages / DiskData, round 0: everything --->  written into its memory / disk
//   MemoryPages / DiskData, round n: what the VM  --->  ... (the same pages again)
//                           wrote during round n-1
//   -- the VM pauses at a boundary --
//   DiskData: blocks written during the last round ->
//   StateManifest (protobuf: format version, sizes, the header of the log that
//                  follows, whose opening checkpoint carries the vCPU, the devices
//                  and the pages written during the last round) ->
//
// Each round reads pages and blocks while the guest may be writing them: a torn copy
// is harmless because every write after the round began marks its page for the next
// round (the trackers are re-armed before the copy starts). Correctness is checked
// end to end: the receiver's whole-VM digest after the opening checkpoint must equal
// the digest in the log header, taken at the pause.
//
// Rounds end when what is left would take at most a quarter of the downtime target
// at the bandwidth measured so far (the rest of the pause is the state and the
// destination taking over), or at most all of it once rounds stop shrinking. A guest that writes faster than the channel carries is
// throttled step by step (PrecopyOptions); if that does not converge the copy gives
// up with a message that names both rates, and the VM runs on untouched.
//
// Message types share the replication protocol's numbering (primary/protocol.h).
// MemoryPages: u32 n_data, u32 n_zero, then n_data + n_zero u32 page numbers (the
// data pages first), then n_data pages of 4 KiB. DiskData: u64 byte offset, then the
// bytes. All integers little-endian.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/unique_fd.h"
#include "migration/migration.pb.h"
#include "migration/page_messages.h"
#include "migration/state_messages.h"
#include "transport/channel.h"
#include "vmm/guest_memory.h"
#include "vmm/page_bitmap.h"
#include "vmm/state_digest.h"

namespace ftvm::migration {

inline constexpr uint8_t kMsgDiskData = 7;
inline constexpr uint8_t kMsgMemoryPages = 9;
inline constexpr uint8_t kMsgStateManifest = 10;
// Receiver -> sender, before the copy, when the receiver already has a disk image of
// the right size (a secondary coming back after an outage): u64 first block, then
// u64 hashes (BlockHash) of consecutive 4 KiB blocks. The first round then sends
// only the blocks whose contents differ.
inline constexpr uint8_t kMsgDiskHashes = 14;
// Receiver -> sender, after each MemoryPages or DiskData message it has applied: u64
// bytes applied so far. A round ends when everything sent has been applied, so the
// rates the sender measures are end to end, and no round is still queued in the
// channel when the VM pauses.
inline constexpr uint8_t kMsgCopyProgress = 17;

// The hash a resync compares a disk block by (XXH3-64 of its 4 KiB; a short last
// block is hashed as it is).
uint64_t BlockHash(std::span<const uint8_t> block);
// The hashes of every 4 KiB block of the image at `path` (holes hash as zeros,
// without being read). Throws ftvm::Error naming the file.
std::vector<uint64_t> DiskBlockHashes(const std::string& path);
// Sends them (several messages for a large disk). "" or why not.
std::string SendDiskHashes(transport::Channel& channel, std::span<const uint64_t> hashes,
                           std::chrono::nanoseconds timeout);
// Receives `blocks` hashes sent by SendDiskHashes. Throws ftvm::Error.
std::vector<uint64_t> ReceiveDiskHashes(transport::Channel& channel, uint64_t blocks,
                                        std::chrono::nanoseconds timeout);

// Bump on any change a receiver of the old format would misread.
inline constexpr uint32_t kStateFormatVersion = 1;

// What a live copy needs from the VM it copies (the recorder on a primary).
class RunningVm {
 public:
  virtual ~RunningVm() = default;
  virtual vmm::GuestMemory& memory() = 0;
  // The disk image ("" when the VM has none), read while the VM writes it.
  virtual const std::string& disk_path() const = 0;
  // Runs `task` on the vCPU thread at the next boundary, the VM paused there, and
  // waits for it; false when the VM ended first.
  virtual bool at_boundary(const std::function<void()>& task) = 0;
  // At a boundary: start noting written memory pages and disk blocks; hand over (and
  // reset) what was noted; stop.
  virtual void start_write_tracking(vmm::PageBitmap* disk_blocks) = 0;
  virtual vmm::PageBitmap take_written_pages() = 0;
  virtual void stop_write_tracking() = 0;
  // Any thread: let the guest run at most (100 - percent)% of the time.
  virtual void set_throttle_percent(unsigned percent) = 0;
  // At a boundary: copies into `into` (allocated before, MemoryDigest::Unfilled) a
  // digest of the VM's memory that is exact for every page but those written since
  // it was last brought up to date (which hold data, so the first round sends and
  // rehashes them); false for none (the sender then hashes every page that is a
  // hole, ~0.1 s per GiB).
  virtual bool copy_memory_digest(vmm::MemoryDigest& /*into*/) { return false; }
};

struct PrecopyOptions {
  // The pause to aim for: stop and copy once the rest takes a quarter of it at the
  // measured bandwidth (all of it once rounds stop shrinking).
  std::chrono::nanoseconds downtime_target = std::chrono::milliseconds(10);
  // After this many rounds, stop and copy if the rest fits max_downtime, else give up.
  unsigned max_rounds = 30;
  std::chrono::nanoseconds max_downtime = std::chrono::milliseconds(500);
  // Slow the guest down by `throttle_step` percent more after each round that did not
  // shrink what is left to copy, up to `max_throttle`. 0: never throttle.
  unsigned throttle_step = 20;
  unsigned max_throttle = 80;
  // A send that makes no progress this long ends the copy (the receiver is stuck).
  std::chrono::nanoseconds send_timeout = std::chrono::seconds(60);
  // false: post-copy (migration/postcopy.h): memory goes after the switch, the rounds
  // copy the disk only, and the pages the VM writes meanwhile are its working set,
  // which finish_at_boundary() hands back to be sent first.
  bool copy_memory = true;
};

struct PrecopyStats {
  unsigned rounds = 0;               // rounds copied while the VM ran
  uint64_t memory_pages_sent = 0;
  uint64_t zero_pages_sent = 0;      // of those, sent as a page number only
  uint64_t first_round_pages = 0;    // of those, round 0's: the pages holding data (no holes)
  uint64_t disk_bytes_sent = 0;
  uint64_t bytes_sent = 0;           // everything on the channel
  uint64_t last_round_bytes = 0;     // what the last round had to copy
  uint64_t dirty_bytes_per_s = 0;    // written by the VM during the last round
  uint64_t bandwidth_bytes_per_s = 0;
  uint64_t expected_downtime_ns = 0;
  unsigned throttle_percent = 0;
  uint64_t final_pages = 0;          // memory pages left for the pause
  uint64_t final_disk_bytes = 0;     // disk bytes copied in the pause
  uint64_t copy_ns = 0;              // rounds, the VM running
  // A resync (set_receiver_disk): blocks compared in the first round, and of those
  // the ones that differed and were sent.
  uint64_t disk_blocks_compared = 0;
  uint64_t disk_blocks_resynced = 0;
};

class PrecopySender {
 public:
  PrecopySender(RunningVm& vm, transport::Channel& channel, Clock& clock, PrecopyOptions options = {});
  ~PrecopySender();

  // The receiver already has a disk whose blocks hash to `hashes`: the first round
  // sends only blocks that differ (see stats().disk_blocks_resynced). Before
  // copy_while_running().
  void set_receiver_disk(std::vector<uint64_t> hashes) { receiver_disk_ = std::move(hashes); }

  // Copies rounds until what is left fits the downtime (then returns ""), or gives
  // up (returns why; tracking is stopped and the guest unthrottled). The VM runs.
  std::string copy_while_running();
  // At a boundary, after copy_while_running() succeeded: sends the disk blocks the
  // VM wrote since the last round, then the memory pages (straight from guest
  // memory: the pause costs a copy, not a checkpoint's compression), and stops
  // tracking. `final_pages` gets those pages (post-copy: the working set, not sent).
  // Returns "" or why it failed.
  std::string finish_at_boundary(vmm::PageBitmap& final_pages);
  // Sends the manifest that ends the state stream.
  std::string send_manifest(StateManifest manifest);
  // After finish_at_boundary() copied memory: the digest of the VM's memory as it
  // is in the pause, kept from the pages as they were sent (so the pause need not
  // hash what the VM wrote since its last verification). Null for post-copy.
  std::unique_ptr<vmm::MemoryDigest> take_memory_digest() { return std::move(digest_); }

  const PrecopyStats& stats() const { return stats_; }

 private:
  std::string SendPages(const vmm::PageBitmap& pages);
  std::string SendDiskBlocks(const vmm::PageBitmap& blocks);
  std::string SendDiskExtents();
  std::string SendDiskDifferences();
  std::string SendDisk(uint64_t offset, uint64_t bytes);
  // Waits until the receiver has applied everything sent so far. "" or why not.
  std::string WaitForReceiver();
  void Release();

  RunningVm& vm_;
  transport::Channel& channel_;
  Clock& clock_;
  PrecopyOptions options_;
  UniqueFd disk_fd_;
  uint64_t disk_bytes_ = 0;
  vmm::PageBitmap disk_written_;  // blocks written since the last round (vCPU thread)
  // Found by the round that decided to stop: they go in the pause.
  vmm::PageBitmap pending_pages_;
  vmm::PageBitmap pending_blocks_;
  std::vector<uint64_t> receiver_disk_;  // block hashes of the receiver's disk, if it has one
  bool tracking_ = false;
  uint64_t applied_bytes_ = 0;  // by the receiver (kMsgCopyProgress)
  PageSender pages_out_;
  std::vector<uint8_t> disk_buf_;  // SendDisk's
  std::unique_ptr<vmm::MemoryDigest> digest_;  // of the pages as sent (copy_memory)
  PrecopyStats stats_;
};

// Creates (or truncates) the replica's disk image as a sparse file of `bytes`, for a
// StateReceiver to fill. Throws ftvm::Error naming the file.
void CreateSparseDisk(const std::string& path, uint64_t bytes);

// The receiving side: applies the state stream to a replica's memory and disk.
class StateReceiver {
 public:
  // `disk_path`: the replica's disk image, created or truncated to `disk_bytes`
  // ("" when the VM has none). Throws ftvm::Error naming the file.
  // `digest` (optional): kept equal to a fresh MemoryDigest of `memory` as pages
  // arrive, so that whoever checks the copied state need not hash it all in the
  // pause.
  StateReceiver(vmm::GuestMemory& memory, const std::string& disk_path, uint64_t disk_bytes,
                vmm::MemoryDigest* digest = nullptr);

  // Receives until the manifest, within `timeout` per message. Throws ftvm::Error
  // naming what went wrong: the sender went away, a malformed message, data outside
  // the memory or the disk, a manifest of another format version or for another VM.
  StateManifest receive(transport::Channel& channel, std::chrono::nanoseconds timeout);

  uint64_t pages_received() const { return pages_; }
  uint64_t disk_bytes_received() const { return disk_received_; }

 private:
  void ApplyPages(std::span<const uint8_t> payload);
  void ApplyDisk(std::span<const uint8_t> payload);

  vmm::GuestMemory& memory_;
  vmm::MemoryDigest* digest_ = nullptr;
  std::string disk_path_;
  uint64_t disk_bytes_ = 0;
  UniqueFd disk_fd_;
  uint64_t pages_ = 0;
  uint64_t disk_received_ = 0;
  uint64_t received_bytes_ = 0;  // everything, for progress
  uint64_t applied_bytes_ = 0;   // of memory pages and disk data: what the sender counts
  uint64_t last_progress_ = 0;
};

}  // namespace ftvm::migration
