#include "eventlog/format.h"

#include <algorithm>

#include "common/error.h"
#include "common/hex.h"
#include "eventlog/crc32c.h"
#include "eventlog/eventlog.pb.h"

namespace ftvm::eventlog {

std::string RecordTypeName(uint8_t type) {
  switch (static_cast<RecordType>(type)) {
    case RecordType::kClockRead: return "ClockRead";
    case RecordType::kRngData: return "RngData";
    case RecordType::kPacketRx: return "PacketRx";
    case RecordType::kDiskCompletion: return "DiskCompletion";
    case RecordType::kInterrupt: return "Interrupt";
    case RecordType::kCheckpoint: return "Checkpoint";
    case RecordType::kVerify: return "Verify";
    case RecordType::kEnd: return "End";
    case RecordType::kTimerExpiry: return "TimerExpiry";
    case RecordType::kIrqWaitResult: return "IrqWaitResult";
    case RecordType::kDiskError: return "DiskError";
    case RecordType::kOutputCheck: return "OutputCheck";
    case RecordType::kGuestReset: return "GuestReset";
    case RecordType::kWaitCut: return "WaitCut";
  }
  return "type " + std::to_string(type);
}

std::string_view ReadCodeName(ReadCode code) {
  switch (code) {
    case ReadCode::kRecord: return "record";
    case ReadCode::kEnd: return "end";
    case ReadCode::kTruncated: return "truncated";
    case ReadCode::kBadCrc: return "bad CRC";
    case ReadCode::kPayloadTooLarge: return "payload too large";
    case ReadCode::kUnknownType: return "unknown type";
    case ReadCode::kBadFlags: return "bad flags";
    case ReadCode::kBadPayload: return "bad payload";
    case ReadCode::kPositionBackwards: return "position backwards";
    case ReadCode::kDecompress: return "decompression failure";
    case ReadCode::kTrailingData: return "trailing data";
    case ReadCode::kIo: return "I/O error";
    case ReadCode::kBadVarint: return "bad varint";
  }
  return "?";
}

void AppendRecord(std::vector<uint8_t>& out, RecordType type, uint8_t flags, uint64_t position,
                  std::span<const uint8_t> payload) {
  uint8_t head[kMaxRecordHeaderBytes];
  const size_t head_bytes = EncodeRecordHeader(
      {static_cast<uint32_t>(payload.size()), static_cast<uint8_t>(type), flags, position}, head);
  uint8_t tail[kRecordCrcBytes];
  PutLe32(tail, Crc32c(payload, Crc32c(std::span<const uint8_t>(head, head_bytes))));
  out.insert(out.end(), head, head + head_bytes);
  out.insert(out.end(), payload.begin(), payload.end());
  out.insert(out.end(), tail, tail + sizeof tail);
}

std::vector<uint8_t> EncodeFileHeader(const LogHeader& header_in) {
  // The protobuf's version always matches the fixed header's; readers check both.
  LogHeader header = header_in;
  header.set_format_version(kFormatVersion);
  std::string body;
  if (!header.SerializeToString(&body)) throw Error("event log header: protobuf serialization failed");
  if (body.size() > kMaxHeaderBytes) {
    throw Error("event log header: " + std::to_string(body.size()) + " bytes exceeds the cap of " +
                std::to_string(kMaxHeaderBytes));
  }
  std::vector<uint8_t> out(kFileFixedHeaderBytes + body.size() + 4);
  std::copy(kMagic.begin(), kMagic.end(), out.begin());
  PutLe32(&out[8], kFormatVersion);
  PutLe32(&out[12], static_cast<uint32_t>(body.size()));
  std::copy(body.begin(), body.end(), out.begin() + kFileFixedHeaderBytes);
  uint32_t crc = Crc32c(std::span(out).subspan(8, 8 + body.size()));
  PutLe32(&out[kFileFixedHeaderBytes + body.size()], crc);
  return out;
}

VarintResult GetVarint(std::span<const uint8_t> in, size_t& at, uint64_t& v, size_t max_bytes) {
  uint64_t value = 0;
  for (size_t i = 0; i < std::min(max_bytes, kMaxVarintBytes); ++i) {
    if (at + i >= in.size()) return VarintResult::kTruncated;
    const uint8_t b = in[at + i];
    const unsigned shift = static_cast<unsigned>(7 * i);
    if (shift == 63 && b > 1) return VarintResult::kTooLong;  // the 10th byte holds bit 63 only
    value |= uint64_t{b & 0x7fu} << shift;
    if (b & 0x80) continue;
    if (b == 0 && i > 0) return VarintResult::kOverlong;
    v = value;
    at += i + 1;
    return VarintResult::kOk;
  }
  return VarintResult::kTooLong;
}

namespace {

// Messages are built only on the error paths: the hot path allocates nothing.
ReadResult Fail(ReadCode code, uint64_t offset, std::string_view name, const std::string& what) {
  return ReadResult{code, offset, "event log " + std::string(name) + ": " + what};
}

std::string AtOffset(uint64_t offset) { return " at offset " + std::to_string(offset); }

ReadResult Truncated(uint64_t offset, std::string_view name, size_t have, const std::string& of_what) {
  return Fail(ReadCode::kTruncated, offset, name,
              "truncated record" + AtOffset(offset) + " (" + std::to_string(have) + of_what + ")");
}

// A header varint (`field`, `at` bytes into the record at `offset`) that GetVarint
// refused. Cut short, the record is truncated; otherwise its header is garbled.
ReadResult BadVarint(VarintResult r, const char* field, size_t max_bytes, size_t at, size_t have,
                     uint64_t offset, std::string_view name) {
  if (r == VarintResult::kTruncated) return Truncated(offset, name, have, " bytes, inside its header");
  std::string what = r == VarintResult::kOverlong
                         ? std::string("overlong ") + field + " varint"
                         : std::string(field) + " varint longer than " + std::to_string(max_bytes) + " bytes" +
                               (max_bytes == kMaxVarintBytes ? " or above 64 bits" : "");
  return Fail(ReadCode::kBadVarint, offset, name,
              "bad record header" + AtOffset(offset) + ": " + what + AtOffset(offset + at));
}

}  // namespace

ReadResult ParseRecordHeader(std::span<const uint8_t> bytes, uint64_t offset, std::string_view name,
                             RecordHeader& h, size_t& header_bytes) {
  size_t at = 0;
  uint64_t length = 0;
  if (VarintResult r = GetVarint(bytes, at, length, kMaxLengthVarintBytes); r != VarintResult::kOk)
    return BadVarint(r, "length", kMaxLengthVarintBytes, 0, bytes.size(), offset, name);
  if (length > kMaxPayloadBytes) {
    return Fail(ReadCode::kPayloadTooLarge, offset, name,
                "payload too large" + AtOffset(offset) + " (" + std::to_string(length) + " bytes, cap " +
                    std::to_string(kMaxPayloadBytes) + ")");
  }
  if (bytes.size() - at < 2) return Truncated(offset, name, bytes.size(), " bytes, inside its header");
  const uint8_t type = bytes[at];
  const uint8_t flags = bytes[at + 1];
  at += 2;
  const size_t position_at = at;
  uint64_t position = 0;
  if (VarintResult r = GetVarint(bytes, at, position); r != VarintResult::kOk)
    return BadVarint(r, "position", kMaxVarintBytes, position_at, bytes.size(), offset, name);
  h = RecordHeader{static_cast<uint32_t>(length), type, flags, position};
  header_bytes = at;
  return ReadResult{ReadCode::kRecord, offset, {}};
}

ReadResult ParseRecord(std::span<const uint8_t> bytes, uint64_t offset, std::string_view name,
                       RecordView& out) {
  RecordHeader h;
  size_t head = 0;
  if (ReadResult r = ParseRecordHeader(bytes, offset, name, h, head); r.is_error()) return r;
  const size_t crc_at = head + size_t{h.length};
  const size_t total = crc_at + kRecordCrcBytes;
  if (bytes.size() < total) {
    return Truncated(offset, name, bytes.size(), " of " + std::to_string(total) + " bytes");
  }
  uint32_t stored = GetLe32(bytes.data() + crc_at);
  uint32_t computed = Crc32c(bytes.first(crc_at));
  if (stored != computed) {
    return Fail(ReadCode::kBadCrc, offset, name,
                "bad CRC" + AtOffset(offset) + " (stored " + Hex(stored) + ", computed " + Hex(computed) + ")");
  }
  if (!IsKnownRecordType(h.type)) {
    return Fail(ReadCode::kUnknownType, offset, name,
                "unknown record type " + std::to_string(h.type) + AtOffset(offset));
  }
  if ((h.flags & ~kKnownFlags) != 0) {
    return Fail(ReadCode::kBadFlags, offset, name, "unknown flags " + Hex(h.flags) + AtOffset(offset));
  }
  out.header = h;
  out.stored_payload = bytes.subspan(head, h.length);
  out.encoded_bytes = total;
  return ReadResult{ReadCode::kRecord, offset, {}};
}

}  // namespace ftvm::eventlog
