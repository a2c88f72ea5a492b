// The on-disk (and on-the-wire) layout of an ftvm event log, shared by the recorder,
// the replayer and the logging channels.
//
// File layout (all integers little-endian, whatever the host):
//
//   offset 0   8 bytes  magic "FTVMLOG\0"
//          8   u32      format version (kFormatVersion = 3; version 2 logs read too)
//         12   u32      header length L (<= kMaxHeaderBytes)
//         16   L bytes  LogHeader protobuf (eventlog.proto)
//       16+L   u32      CRC32C of bytes [8, 16+L): version, length and header bytes
//       20+L   records, back to back, to the end of the file
//
// Record layout (kRecordOverhead = 20 bytes besides the payload):
//
//   +0   u32  payload length N as stored (<= kMaxPayloadBytes)
//   +4   u8   type (RecordType)
//   +5   u8   flags; bit 0 (kFlagZstd): payload is one zstd frame; bit 1
//             (kFlagDelta, Checkpoint records with kFlagZstd only): the frame was
//             compressed with the previous Checkpoint record's payload as its
//             prefix; other bits 0
//   +6   u16  reserved, 0
//   +8   u64  position: guest-caused exits since the start of the recording; the
//             event takes effect right after exit number `position`. Positions are
//             absolute for the whole log and never decrease from one record to the
//             next (several events may share one position; a checkpoint does not
//             reset them).
//   +16  N bytes payload
//   +16+N u32 CRC32C of bytes [+0, +16+N): fixed header and stored payload
//
// Why this shape: a 20-byte overhead keeps a clock read at 28 bytes and an interrupt
// at 21, so non-network logs stay far below 1 Mbit/s and a received packet costs its
// frame plus 20 bytes. The length comes first so a reader knows how much to fetch
// after 16 bytes; the CRC comes last so a writer streams a record without seeking
// back, and a record cut short by a crash is simply missing its CRC. The CRC covers
// the header too, so a flipped length, type or position is caught like a flipped
// payload byte. Payload semantics per type are in eventlog/records.h.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ftvm::eventlog {

class LogHeader;  // eventlog/eventlog.pb.h

inline constexpr std::array<uint8_t, 8> kMagic = {'F', 'T', 'V', 'M', 'L', 'O', 'G', 0};
// 2: Verify records carry component digests, registers and page hashes; timer,
// WAIT-result and disk-error records.
inline constexpr uint32_t kFormatVersion = 3;
// Version 3 added OutputCheck records and delta-compressed checkpoints; a version 2
// log is a valid version 3 log without them.
inline constexpr uint32_t kOldestReadableVersion = 2;
inline constexpr size_t kFileFixedHeaderBytes = 16;  // magic, version, length
inline constexpr size_t kMaxHeaderBytes = 1 << 20;   // a VM config is a few hundred bytes
inline constexpr size_t kRecordHeaderBytes = 16;
inline constexpr size_t kRecordCrcBytes = 4;
inline constexpr size_t kRecordOverhead = kRecordHeaderBytes + kRecordCrcBytes;
// Cap on a stored payload and on a decompressed one. It bounds what a corrupt length
// can make a reader allocate; larger checkpoints are split into several records.
inline constexpr size_t kMaxPayloadBytes = 64u << 20;

inline constexpr uint8_t kFlagZstd = 0x01;
// A guest interrupted by a timer between exits costs a checkpoint per tick, mostly
// the same pages and registers as the last one: compressed against it, a tick
// costs what changed (about half here).
inline constexpr uint8_t kFlagDelta = 0x02;
inline constexpr uint8_t kKnownFlags = kFlagZstd | kFlagDelta;
// A checkpoint larger than this is never a delta base (neither side keeps a copy).
inline constexpr size_t kMaxDeltaBaseBytes = 4u << 20;

// Record types. Values are part of the format: never renumber; add new types at the
// end (and bump kFormatVersion only if old readers must refuse new logs, which they
// do anyway for a type they do not know).
enum class RecordType : uint8_t {
  kClockRead = 1,       // u64 value the clock register returned
  kRngData = 2,         // the random bytes the RNG device returned
  kPacketRx = 3,        // one received Ethernet frame
  kDiskCompletion = 4,  // u16 queue, u16 count: requests completed at this position
  kInterrupt = 5,       // u8 vector injected at this position
  kCheckpoint = 6,      // opaque epoch-checkpoint blob (usually zstd-compressed)
  kVerify = 7,          // state digest, its components, registers, dirty-page hashes
  kEnd = 8,             // 32-byte final digest; the last record of a complete log
  kTimerExpiry = 9,     // empty: the one-shot timer expired at this position
  kIrqWaitResult = 10,  // u64 value an interrupt-controller WAIT read returned
  kDiskError = 11,      // u16 descriptor head, u32 host errno: a disk request failed
  kOutputCheck = 12,    // u8 output stream, u64 its running hash: an output left here
};
inline constexpr uint8_t kMaxRecordType = 12;

inline bool IsKnownRecordType(uint8_t type) { return type >= 1 && type <= kMaxRecordType; }
// "ClockRead", ...; "type 42" for an unknown value.
std::string RecordTypeName(uint8_t type);
inline std::string RecordTypeName(RecordType type) {
  return RecordTypeName(static_cast<uint8_t>(type));
}

// Little-endian helpers: memcpy (no type punning, no alignment assumption, one move
// on x86) plus a byte swap on big-endian hosts, so the format is the same everywhere.
namespace detail {
template <typename T>
T ToLe(T v) {
  if constexpr (std::endian::native == std::endian::big) {
    if constexpr (sizeof(T) == 2) return static_cast<T>(__builtin_bswap16(v));
    if constexpr (sizeof(T) == 4) return static_cast<T>(__builtin_bswap32(v));
    if constexpr (sizeof(T) == 8) return static_cast<T>(__builtin_bswap64(v));
  }
  return v;
}
template <typename T>
void Put(uint8_t* p, T v) {
  v = ToLe(v);
  std::memcpy(p, &v, sizeof v);
}
template <typename T>
T Get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return ToLe(v);
}
}  // namespace detail

inline void PutLe16(uint8_t* p, uint16_t v) { detail::Put(p, v); }
inline void PutLe32(uint8_t* p, uint32_t v) { detail::Put(p, v); }
inline void PutLe64(uint8_t* p, uint64_t v) { detail::Put(p, v); }
inline uint16_t GetLe16(const uint8_t* p) { return detail::Get<uint16_t>(p); }
inline uint32_t GetLe32(const uint8_t* p) { return detail::Get<uint32_t>(p); }
inline uint64_t GetLe64(const uint8_t* p) { return detail::Get<uint64_t>(p); }

// The decoded fixed header of a record.
struct RecordHeader {
  uint32_t length = 0;  // stored payload bytes
  uint8_t type = 0;
  uint8_t flags = 0;
  uint16_t reserved = 0;
  uint64_t position = 0;
};

inline void EncodeRecordHeader(const RecordHeader& h, uint8_t* out /* 16 bytes */) {
  PutLe32(out, h.length);
  out[4] = h.type;
  out[5] = h.flags;
  PutLe16(out + 6, h.reserved);
  PutLe64(out + 8, h.position);
}
inline RecordHeader DecodeRecordHeader(const uint8_t* in /* 16 bytes */) {
  return RecordHeader{GetLe32(in), in[4], in[5], GetLe16(in + 6), GetLe64(in + 8)};
}

// The 16-byte header and the 4-byte CRC that frame `payload`: the one place the
// record framing is computed (AppendRecord and LogWriter's direct writes use it).
void EncodeRecordFrame(RecordType type, uint8_t flags, uint64_t position, std::span<const uint8_t> payload,
                       uint8_t (&head)[kRecordHeaderBytes], uint8_t (&tail)[kRecordCrcBytes]);

// Appends one whole record (header, payload as given, CRC) to `out`. The payload is
// stored as is: compression, when wanted, is done by the caller (LogWriter) and
// announced with kFlagZstd in `flags`. For logging channels that frame records
// themselves; the caller is responsible for the size limits LogWriter checks.
void AppendRecord(std::vector<uint8_t>& out, RecordType type, uint8_t flags, uint64_t position,
                  std::span<const uint8_t> payload);

// The file header: magic, version, length, `header` serialized (with its
// format_version set to kFormatVersion), CRC. Throws
// ftvm::Error if the header does not serialize or exceeds kMaxHeaderBytes.
std::vector<uint8_t> EncodeFileHeader(const LogHeader& header);

// --- Results ---------------------------------------------------------------------

// Outcome of a writer operation: ok, or an error whose message names the log's path,
// the byte offset and the cause (with errno when a system call failed).
class [[nodiscard]] Status {
 public:
  static Status Ok() { return Status(); }
  static Status Failure(std::string message, int err = 0) {
    Status s;
    s.ok_ = false;
    s.err_ = err;
    s.message_ = std::move(message);
    return s;
  }
  bool ok() const { return ok_; }
  int err() const { return err_; }  // errno of the failed system call, or 0
  const std::string& message() const { return message_; }

 private:
  bool ok_ = true;
  int err_ = 0;
  std::string message_;
};

enum class ReadCode : uint8_t {
  kRecord,             // a record was read
  kEnd,                // clean end: the data ends exactly after a whole record
  kTruncated,          // the data ends inside a record
  kBadCrc,
  kPayloadTooLarge,    // stored or decompressed length above kMaxPayloadBytes
  kUnknownType,
  kBadFlags,           // unknown flag bits or nonzero reserved field
  kBadPayload,         // payload size invalid for its type
  kPositionBackwards,
  kDecompress,
  kTrailingData,       // bytes after the End record
  kIo,                 // a read system call failed
};
std::string_view ReadCodeName(ReadCode code);

// Outcome of reading one record. On an error, `offset` is where the bad record starts
// and `message` names the log, the offset and the problem, e.g.
// "event log /x.log: bad CRC at offset 1234 (stored 0x1, computed 0x2)".
struct [[nodiscard]] ReadResult {
  ReadCode code = ReadCode::kRecord;
  uint64_t offset = 0;
  std::string message;  // empty for kRecord and kEnd

  bool is_record() const { return code == ReadCode::kRecord; }
  bool is_end() const { return code == ReadCode::kEnd; }
  bool is_error() const { return !is_record() && !is_end(); }
};

// One record as stored, parsed from contiguous bytes.
struct RecordView {
  RecordHeader header;
  std::span<const uint8_t> stored_payload;  // compressed if header.flags & kFlagZstd
  size_t encoded_bytes = 0;                 // kRecordOverhead + payload length
};

// Parses the record at the front of `bytes`, which starts at byte `offset` of the log
// (used only in messages). Checks, in this order: enough bytes for the fixed header,
// the length cap, enough bytes for the whole record, the CRC, then type, flags and
// reserved field. Nothing outside `bytes` is ever read. Returns kRecord with `out`
// filled, or an error (kTruncated when `bytes` ends inside the record). `name`
// prefixes messages ("event log <name>: ...").
ReadResult ParseRecord(std::span<const uint8_t> bytes, uint64_t offset, std::string_view name,
                       RecordView& out);

}  // namespace ftvm::eventlog
