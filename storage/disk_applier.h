// The replica's side of the write stream: applies batches to a disk image strictly
// in stream order, and knows which moment of the source's disk its image holds (the
// recovery point). Used by the DR replica (storage/dr_replica.h) and by a disk
// move's new image.
//
// Durability is group commit: apply() notes a flush barrier (flush_pending()) and
// the caller calls sync() once after the batches that arrived together, rather than
// one fdatasync per guest flush (a replica doing one per flush fell seconds behind a
// mail store flushing ~1000 times a second on this host). The page cache always
// holds an in-order prefix, so the replica's image is crash-consistent whenever its
// *source* dies; durable_seq is what survives a crash of the replica's own host, and
// writes after it in the group being synced may then be on disk out of order.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/unique_fd.h"
#include "storage/write_stream.h"

namespace ftvm::storage {

struct ApplierState {
  uint64_t applied_seq = 0;     // every record up to this one is on the image
  uint64_t applied_bytes = 0;
  uint64_t durable_seq = 0;     // ... and fsynced
  uint64_t durable_bytes = 0;
  bool consistent = true;       // false between kCatchupBegin and kCatchupEnd
  bool stopped = false;         // a write failed (disk full): nothing more is applied
  std::string stop_reason;
  // A source wall time such that every write the source had reported done to its
  // guest by then is in this image durably (0: unknown). It is the time the source
  // saw the last write held here (or, holding the source's head, the time it read
  // the head); writes after it may have been in flight on the source's disk then.
  uint64_t recovery_point_wall_ns = 0;
  // The source's head as the last batch told it.
  uint64_t head_seq = 0;
  uint64_t head_bytes = 0;
  uint64_t head_wall_ns = 0;
  uint64_t batches = 0;
  uint64_t records = 0;
  uint64_t syncs = 0;

  // How far behind the source the durable image is, as of the last batch.
  uint64_t lag_bytes() const { return head_bytes > durable_bytes ? head_bytes - durable_bytes : 0; }
  uint64_t lag_ns() const {
    return head_wall_ns > recovery_point_wall_ns && recovery_point_wall_ns != 0 ? head_wall_ns - recovery_point_wall_ns : 0;
  }
};

class DiskApplier {
 public:
  // Opens the image at `path` read-write, creating it as a sparse file of
  // `disk_bytes` if it does not exist. Throws ftvm::Error naming the file when it
  // cannot, or when an existing image has another size.
  DiskApplier(const std::string& path, uint64_t disk_bytes);

  // Applies every record of `batch` in order. Returns "" or why the stream cannot be
  // applied (a sequence number out of order, a write outside the disk): the caller
  // drops the stream; the image keeps every record before the bad one. A write the
  // host refuses (ENOSPC, EIO) stops the applier instead (state().stopped, reason
  // given) and returns ""; later batches are ignored.
  std::string apply(const DecodedBatch& batch);
  // fdatasync if something was applied since the last one. "" or the error (which
  // stops the applier too).
  std::string sync();
  // Picks up where a previous run of this replica left off (its state file).
  void resume(const ApplierState& saved);
  // Called with the extents (offset, length) a batch is about to write, before any
  // of them reaches the image: a DR checkpoint's undo journal saves what they
  // overwrite (storage/dr_checkpoint.h). Empty: none.
  using BeforeWrite = std::function<void(int fd, std::span<const std::pair<uint64_t, uint64_t>> extents)>;
  void set_before_write(BeforeWrite f) { before_write_ = std::move(f); }

  const ApplierState& state() const { return state_; }
  bool needs_sync() const { return state_.applied_seq != state_.durable_seq || unsynced_blocks_; }
  // A flush barrier (or the end of a catch-up) was applied since the last sync().
  bool flush_pending() const { return flush_pending_; }
  uint64_t disk_bytes() const { return disk_bytes_; }
  int fd() const { return fd_.get(); }

 private:
  void Stop(const std::string& why);
  std::string Write(uint64_t offset, std::span<const uint8_t> data);

  std::string path_;
  UniqueFd fd_;
  uint64_t disk_bytes_ = 0;
  ApplierState state_;
  bool unsynced_blocks_ = false;   // catch-up blocks written since the last sync
  uint64_t unsynced_block_bytes_ = 0;
  bool flush_pending_ = false;
  uint64_t applied_wall_ns_ = 0;   // source time of the last record applied
  BeforeWrite before_write_;
  std::vector<std::pair<uint64_t, uint64_t>> extents_;  // scratch for before_write_
};

}  // namespace ftvm::storage
