// The ordered disk-write stream: what a disk mirror (storage/disk_mirror.h) sends a
// replica (the DR target, or a disk move's new image) and what the replica applies.
//
// Control messages (hello, its reply) are protobuf (storage.proto); the hot path is
// binary, like the event log's records: one channel message (kMsgWrites) carries a
// batch of records in the order the source's device completed them. All integers
// little-endian.
//
//   batch header (kBatchHeaderBytes = 56)
//   +0   u8   format version (kStreamFormatVersion)
//   +1   u8   0
//   +2   u16  record count
//   +4   u32  CRC32C of bytes [8, end): the batch checks itself, so a journal of
//             batches on a file is as safe as the channel (whose frames have a CRC)
//   +8   u64  sequence number of the first write/flush record in the batch
//   +16  u64  guest-written bytes before it (the stream's byte position)
//   +24  u64  source wall time of the first record (ns since the Unix epoch)
//   +32  u64  the source's head when it sent the batch: the last sequence number
//   +40  u64  ... the guest-written bytes up to it
//   +48  u64  ... and the wall time it read them at (no write completed after the
//             head until then): the replica's measure of how far behind it is
//   records, back to back
//   +0   u8   kind (RecordKind)
//   +1   u32  microseconds after the batch's first record (saturating)
//   +5   u64  a: kWrite, kBlock: byte offset on the disk; kCatchupEnd: sequence number
//   +13  u64  b: kWrite, kBlock: byte count (the data follows); kCatchupEnd: bytes
//   +21  data (b bytes, for kWrite and kBlock)
//
// Sequence numbers count the guest's writes and flushes, 1 for the first. A record
// applies only after every record before it; a flush makes what came before durable.
// When the source cannot stream (its queue overflowed, or the replica just
// connected), it copies blocks instead: kCatchupBegin, kBlock..., kCatchupEnd(S,
// bytes): between those the replica's disk is not crash-consistent; after
// kCatchupEnd it holds exactly the source's disk after write S.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ftvm::storage {

// The hello's. 2: a stream may carry VM checkpoints (--dr-checkpoint-s), which a
// version-1 replica would take for a broken stream; the hello refuses it instead.
inline constexpr uint32_t kMirrorProtocolVersion = 2;
inline constexpr uint8_t kStreamFormatVersion = 1;     // the batches'

// Channel message types.
inline constexpr uint8_t kMsgHello = 1;       // source -> replica: MirrorHello
inline constexpr uint8_t kMsgHelloReply = 2;  // replica -> source: MirrorHelloReply
inline constexpr uint8_t kMsgWrites = 3;      // source -> replica: a batch
inline constexpr uint8_t kMsgAck = 4;         // replica -> source: EncodeAck
// source -> replica, right after the batch that ends with write S: a DR checkpoint
// at S (storage/dr_checkpoint.h).
inline constexpr uint8_t kMsgCheckpoint = 5;
// Both ways, after the hello: block hashes of the replica's disk (migration/
// kMsgDiskHashes numbering), so a reconnecting source sends only what differs.
inline constexpr uint8_t kMsgDiskHashes = 14;

enum class RecordKind : uint8_t {
  kWrite = 1,
  kFlush = 2,
  kBlock = 3,          // catch-up copy of disk contents
  kCatchupBegin = 4,
  kCatchupEnd = 5,
};

inline constexpr size_t kBatchHeaderBytes = 56;
inline constexpr size_t kRecordHeaderBytes = 21;

struct BatchHeader {
  uint16_t count = 0;
  uint64_t first_seq = 0;
  uint64_t first_bytes = 0;
  uint64_t first_wall_ns = 0;
  uint64_t head_seq = 0;
  uint64_t head_bytes = 0;
  uint64_t head_wall_ns = 0;
};

struct Record {
  RecordKind kind;
  uint32_t delta_us;
  uint64_t a;
  uint64_t b;
  std::span<const uint8_t> data;  // points into the batch
};

// Appends one record to `out` (a batch body being built); `data` is gathered from
// `parts` (b = their total size for writes and blocks).
void AppendRecord(std::vector<uint8_t>& out, RecordKind kind, uint32_t delta_us, uint64_t a, uint64_t b,
                  std::span<const std::span<const uint8_t>> parts = {});
// Writes the header in front of a batch built with AppendRecord after
// kBatchHeaderBytes of room, and its CRC.
void SealBatch(std::vector<uint8_t>& batch, const BatchHeader& header);

// A batch checked and split into records. Decode returns "" or what is wrong (a
// version it does not speak, a bad CRC, a record cut short, an unknown kind, a count
// that does not match) without touching anything.
struct DecodedBatch {
  BatchHeader header;
  std::vector<Record> records;
};
std::string DecodeBatch(std::span<const uint8_t> batch, DecodedBatch& out);

// The replica's acknowledgement (kMsgAck): what its disk holds.
struct Ack {
  enum class State : uint8_t { kStreaming = 0, kCatchingUp = 1, kStopped = 2 };
  uint64_t applied_seq = 0;
  uint64_t durable_seq = 0;   // applied and fsynced: survives the replica's crash
  uint64_t durable_bytes = 0;
  State state = State::kStreaming;
  std::string reason;         // kStopped: why it stopped applying
};
std::vector<uint8_t> EncodeAck(const Ack& ack);
std::string DecodeAck(std::span<const uint8_t> payload, Ack& out);

}  // namespace ftvm::storage
