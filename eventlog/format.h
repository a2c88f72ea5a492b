// The on-disk (and on-the-wire) layout of an ftvm event log, shared by the recorder,
// the replayer and the logging channels.
//
// File layout (all fixed-size integers little-endian, whatever the host):
//
//   offset 0   8 bytes  magic "FTVMLOG\0"
//          8   u32      format version (kFormatVersion = 5; no other version is read)
//         12   u32      header length L (<= kMaxHeaderBytes)
//         16   L bytes  LogHeader protobuf (eventlog.proto)
//       16+L   u32      CRC32C of bytes [8, 16+L): version, length and header bytes
//       20+L   records, back to back, to the end of the file
//
// Record layout (kMinRecordOverhead = 8 to kMaxRecordHeaderBytes + kRecordCrcBytes =
// 20 bytes besides the payload; RecordOverhead() gives a record's exact figure):
//
//   varint   payload length N as stored (<= kMaxPayloadBytes, so 1 to 4 bytes)
//   u8       type (RecordType)
//   u8       flags; bit 0 (kFlagZstd): payload is one zstd frame; bit 1
//            (kFlagDelta, Checkpoint records with kFlagZstd only): the frame was
//            compressed with the previous Checkpoint record's payload as its
//            prefix; other bits 0
//   varint   position (1 to 10 bytes): guest-caused exits since the start of the
//            recording; the event takes effect right after exit number `position`.
//            Positions are absolute for the whole log and never decrease from one
//            record to the next (several events may share one position; a
//            checkpoint does not reset them).
//   N bytes  payload
//   u32      CRC32C of every preceding byte of the record: header and stored payload
//
// A varint is unsigned LEB128 (7 bits a byte, low bits first, the top bit set on
// every byte but the last), and only its shortest encoding is valid: a record's size
// follows from its length and position, and each record has exactly one encoding.
//
// Why this shape: the small records that dominate a log (a clock read, an interrupt,
// a received packet's framing) are mostly overhead, so the header spends a byte only
// where a value needs it. A clock read costs 16 bytes at a position below 128 and 18
// at one below 2^21, an interrupt 10 to 11 there (12 below 2^28), and a received
// packet its frame plus 10 to 12 (it was a fixed 20: 28 bytes a clock read, 21 an
// interrupt). The position stays absolute rather than a delta from the previous
// record, so every record is self-contained: a reader can start at any record
// boundary (a replica joining a live stream, a log recovered after a crash) and a
// damaged record cannot shift the positions of the ones after it. The length comes
// first so a reader knows how much to fetch after at most kMaxRecordHeaderBytes; the
// CRC comes last so a writer streams a record without seeking back, and a record cut
// short by a crash is simply missing its CRC. The CRC covers the header too, so a
// flipped length, type or position is caught like a flipped payload byte. Payload
// semantics per type are in eventlog/records.h.
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
// 3: OutputCheck records, delta-compressed checkpoints, and varint record headers.
// 4: GuestReset records (a hung guest reset in place). Bumped although the layout
// is unchanged, so that a version-3 reader refuses such a log when it opens it,
// naming the version, instead of failing in the middle at an unknown type.
// 5: WaitCut records (the VMM ended an idle wait to reach a boundary), bumped for
// the same reason.
// A reader reads its own version only: version 2 records have another layout.
inline constexpr uint32_t kFormatVersion = 5;
inline constexpr size_t kFileFixedHeaderBytes = 16;  // magic, version, length
inline constexpr size_t kMaxHeaderBytes = 1 << 20;   // a VM config is a few hundred bytes
// Cap on a stored payload and on a decompressed one. It bounds what a corrupt length
// can make a reader allocate; larger checkpoints are split into several records.
inline constexpr size_t kMaxPayloadBytes = 64u << 20;

// Record framing (layout above).
inline constexpr size_t kMaxVarintBytes = 10;       // a u64
inline constexpr size_t kMaxLengthVarintBytes = 4;  // 28 bits hold any length up to the cap
static_assert(kMaxPayloadBytes < (uint64_t{1} << (7 * kMaxLengthVarintBytes)));
inline constexpr size_t kMaxRecordHeaderBytes = kMaxLengthVarintBytes + 2 + kMaxVarintBytes;  // 16
inline constexpr size_t kMinRecordHeaderBytes = 1 + 2 + 1;
inline constexpr size_t kRecordCrcBytes = 4;
inline constexpr size_t kMinRecordOverhead = kMinRecordHeaderBytes + kRecordCrcBytes;  // 8

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
  kGuestReset = 13,     // empty: the VM was reset in place here (its guest hung)
  kWaitCut = 14,        // empty: the VMM ended the guest's idle wait here, no interrupt due
};
inline constexpr uint8_t kMaxRecordType = 14;

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

// --- Varints (unsigned LEB128, shortest form only) ---------------------------------

constexpr size_t VarintBytes(uint64_t v) {
  size_t n = 1;
  for (; v >= 0x80; v >>= 7) ++n;
  return n;
}

// Writes `v` at `out` (VarintBytes(v) bytes); returns the byte after it.
inline uint8_t* PutVarint(uint8_t* out, uint64_t v) {
  for (; v >= 0x80; v >>= 7) *out++ = static_cast<uint8_t>(v | 0x80);
  *out++ = static_cast<uint8_t>(v);
  return out;
}

enum class VarintResult : uint8_t {
  kOk,
  kTruncated,  // the input ends before the varint's last byte
  kOverlong,   // not the shortest encoding of its value (a last byte of 0 after others)
  kTooLong,    // no last byte within the allowed bytes, or bits beyond 64
};

// Decodes the varint at in[at], of at most `max_bytes` (<= kMaxVarintBytes) bytes. On
// kOk sets `v` and moves `at` past the varint; otherwise leaves both alone. Nothing
// outside `in` is read.
VarintResult GetVarint(std::span<const uint8_t> in, size_t& at, uint64_t& v,
                       size_t max_bytes = kMaxVarintBytes);

// --- Records -----------------------------------------------------------------------

// The decoded header of a record.
struct RecordHeader {
  uint32_t length = 0;  // stored payload bytes
  uint8_t type = 0;
  uint8_t flags = 0;
  uint64_t position = 0;
};

// What a record takes in the log, from the two fields whose varints vary in size.
constexpr size_t RecordHeaderBytes(size_t payload_bytes, uint64_t position) {
  return VarintBytes(payload_bytes) + 2 + VarintBytes(position);
}
constexpr size_t RecordOverhead(size_t payload_bytes, uint64_t position) {
  return RecordHeaderBytes(payload_bytes, position) + kRecordCrcBytes;
}
constexpr size_t EncodedRecordBytes(size_t payload_bytes, uint64_t position) {
  return payload_bytes + RecordOverhead(payload_bytes, position);
}
static_assert(EncodedRecordBytes(8, 5) == 16, "a clock read early in a log");
static_assert(EncodedRecordBytes(1, 300) == 10, "an interrupt");
static_assert(RecordHeaderBytes(kMaxPayloadBytes, UINT64_MAX) == kMaxRecordHeaderBytes);

// Writes the header of `h` at `out` (room for kMaxRecordHeaderBytes); returns its
// size, RecordHeaderBytes(h.length, h.position).
inline size_t EncodeRecordHeader(const RecordHeader& h, uint8_t* out) {
  uint8_t* p = PutVarint(out, h.length);
  *p++ = h.type;
  *p++ = h.flags;
  return static_cast<size_t>(PutVarint(p, h.position) - out);
}

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
  kBadFlags,           // unknown flag bits
  kBadPayload,         // payload size invalid for its type
  kPositionBackwards,
  kDecompress,
  kTrailingData,       // bytes after the End record
  kIo,                 // a read system call failed
  kBadVarint,          // a header varint overlong, too long or above 64 bits
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
  size_t encoded_bytes = 0;                 // EncodedRecordBytes(length, position)
};

// Decodes the header of the record at the front of `bytes`, which starts at byte
// `offset` of the log (used only in messages): the length varint, the cap on it, type
// and flags (not checked here), the position varint. Returns kRecord with `h` and
// `header_bytes` set; kTruncated when `bytes` ends inside the header; kBadVarint for
// a varint that is overlong or runs past its maximum size; kPayloadTooLarge. A
// header whose bytes are all there is never reported as truncated. `name` prefixes
// messages ("event log <name>: ...").
ReadResult ParseRecordHeader(std::span<const uint8_t> bytes, uint64_t offset, std::string_view name,
                             RecordHeader& h, size_t& header_bytes);

// Parses the whole record at the front of `bytes`. Checks, in this order: the header
// (ParseRecordHeader), enough bytes for the whole record, the CRC, then type and
// flags. Nothing outside `bytes` is ever read. Returns kRecord with `out` filled, or
// an error (kTruncated when `bytes` ends inside the record).
ReadResult ParseRecord(std::span<const uint8_t> bytes, uint64_t offset, std::string_view name,
                       RecordView& out);

}  // namespace ftvm::eventlog
