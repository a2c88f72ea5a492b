// DR checkpoints: a VM's whole state at a position S of its disk-write stream, sent
// over the DR stream right after write S (kMsgCheckpoint, storage/write_stream.h;
// storage/disk_mirror.h sends it), and what the replica keeps of it so that it can
// start the VM from there instead of booting it.
//
// The checkpoint travels as one channel message (kMsgCheckpoint) and is kept as the
// head of one file, DIR/checkpoint; the replica then appends to that same file an
// undo journal: the before-image of every disk block that a write after S changes
// (only the first write to a block after S), each record made durable before the
// write that overwrites the block is applied. The newest disk image (DIR/disk.img)
// thus stays the newest crash-consistent moment, as without checkpoints, and the
// disk at S is one rollback away. A new checkpoint replaces the file (write to a
// temporary, fsync, rename): the undo journal starts empty again, atomically with
// the new state. All integers little-endian.
//
//   checkpoint header (kCheckpointHeaderBytes = 56)
//   +0   8 bytes  magic "FTVMDRCK"
//   +8   u32  format version (kCheckpointFormatVersion)
//   +12  u32  CRC32C of bytes [16, 56 + state bytes): header fields and state
//   +16  u64  S: the stream's sequence number of the last write before the capture
//   +24  u64  the guest-written bytes up to S
//   +32  u64  the source's wall time at the capture (ns since the Unix epoch)
//   +40  u64  state bytes uncompressed
//   +48  u64  state bytes stored (a zstd frame of a storage.DrCheckpoint)
//   state
//   undo records, back to back (file only)
//   +0   u32  CRC32C of bytes [4, 16 + length)
//   +4   u32  length (bytes of disk data that follow)
//   +8   u64  disk offset
//   +16  data: the block(s) as they were at S
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "vmm/page_bitmap.h"

namespace ftvm::storage {

inline constexpr uint32_t kCheckpointFormatVersion = 1;
inline constexpr size_t kCheckpointHeaderBytes = 56;
inline constexpr size_t kUndoRecordHeaderBytes = 16;

struct CheckpointHeader {
  uint32_t version = kCheckpointFormatVersion;
  uint64_t seq = 0;
  uint64_t bytes = 0;
  uint64_t wall_ns = 0;
  uint64_t raw_bytes = 0;
  uint64_t state_bytes = 0;
};

// The message (= the head of the file): header + compressed state.
std::vector<uint8_t> EncodeCheckpoint(CheckpointHeader header, std::span<const uint8_t> compressed_state);
// Checks a message or the head of a file: "" or what is wrong (not a checkpoint,
// another format version, cut short, a bad CRC). `state` points into `bytes`.
std::string DecodeCheckpoint(std::span<const uint8_t> bytes, CheckpointHeader& header, std::span<const uint8_t>& state);

// DIR/checkpoint, and where a checkpoint goes once it can no longer be resumed (a
// cold boot wrote the disk, or its undo journal could not be written).
std::string CheckpointPath(const std::string& dir);
std::string InvalidCheckpointPath(const std::string& dir);

// The replica's side: the newest checkpoint and its undo journal.
class CheckpointStore {
 public:
  // Writes `message` (checked by DecodeCheckpoint) as DIR/checkpoint durably:
  // temporary file, fsync, rename, fsync of DIR. The disk must already hold exactly
  // write S durably. Throws ftvm::Error naming the file.
  static CheckpointStore Install(const std::string& dir, std::span<const uint8_t> message, uint64_t disk_bytes);
  // Reopens DIR/checkpoint for more undo records (a restarted replica). Throws
  // ftvm::Error when it is missing or damaged (see LoadCheckpoint).
  static CheckpointStore Reopen(const std::string& dir, uint64_t disk_bytes);

  CheckpointStore(CheckpointStore&&) = default;
  CheckpointStore& operator=(CheckpointStore&&) = default;

  // Before a batch's writes reach the disk: appends the before-image of each block
  // in `extents` (offset, length) that no write since S has changed yet, and makes
  // them durable. "" or why not (the caller invalidates the checkpoint then: a
  // rollback could no longer reach S).
  std::string save_before(int disk_fd, std::span<const std::pair<uint64_t, uint64_t>> extents);

  const CheckpointHeader& header() const { return header_; }
  uint64_t undo_bytes() const { return end_ - undo_start_; }
  uint64_t undo_records() const { return records_; }

 private:
  CheckpointStore() = default;
  std::string dir_;
  CheckpointHeader header_;
  UniqueFd fd_;
  uint64_t undo_start_ = 0;  // file offset of the first undo record
  uint64_t end_ = 0;         // file offset to append at
  uint64_t records_ = 0;
  uint64_t disk_bytes_ = 0;
  vmm::PageBitmap saved_;    // blocks whose image at S is in the journal
  std::vector<uint8_t> buf_;
};

// A checkpoint file read back and checked.
struct LoadedCheckpoint {
  CheckpointHeader header;
  std::vector<uint8_t> state;  // compressed, as stored
  struct Undo {
    uint64_t file_offset;      // of the data
    uint64_t disk_offset;
    uint32_t length;
  };
  std::vector<Undo> undo;      // in journal order
  uint64_t torn_tail_bytes = 0;  // an unfinished last record (never made durable: ignored)
  uint64_t file_bytes = 0;
};
// Reads and checks DIR/checkpoint whole, undo journal included, touching nothing.
// Throws ftvm::Error naming the file and the problem: missing (and why: a cold
// boot invalidated it), cut short, a bad CRC, another format version, an undo
// record damaged before the end (the disk could not be rolled back to S).
LoadedCheckpoint LoadCheckpoint(const std::string& dir);
// LoadCheckpoint's reading and checking, on a checkpoint file of `file_bytes` bytes
// read through `read` (n bytes at an offset, throwing ftvm::Error with `what` when it
// cannot); `path` names the file in errors. Reads only inside the file.
using CheckpointReader = std::function<void(uint8_t* p, size_t n, uint64_t offset, const std::string& what)>;
LoadedCheckpoint ParseCheckpointFile(const CheckpointReader& read, uint64_t file_bytes, const std::string& path);

// Writes the before-images back onto `disk_path` (newest first, so the image at S
// wins for a block saved twice) and fsyncs it: the disk then holds exactly write S.
// Throws ftvm::Error; call it only after everything else that could refuse has been
// checked (LoadCheckpoint does the journal's).
void RollbackDisk(const std::string& dir, const LoadedCheckpoint& checkpoint, const std::string& disk_path);

// zstd, for the state (level 1: the vCPU does not wait for it, but the stream does).
std::vector<uint8_t> CompressState(std::span<const uint8_t> raw);
// Throws ftvm::Error when `stored` is not one zstd frame of exactly `raw_bytes`.
std::vector<uint8_t> DecompressState(std::span<const uint8_t> stored, uint64_t raw_bytes);

}  // namespace ftvm::storage
