#include "eventlog/format.h"

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
  }
  return "?";
}

void EncodeRecordFrame(RecordType type, uint8_t flags, uint64_t position, std::span<const uint8_t> payload,
                       uint8_t (&head)[kRecordHeaderBytes], uint8_t (&tail)[kRecordCrcBytes]) {
  EncodeRecordHeader({static_cast<uint32_t>(payload.size()), static_cast<uint8_t>(type), flags, 0,
                      position},
                     head);
  PutLe32(tail, Crc32c(payload, Crc32c(head)));
}

void AppendRecord(std::vector<uint8_t>& out, RecordType type, uint8_t flags, uint64_t position,
                  std::span<const uint8_t> payload) {
  uint8_t head[kRecordHeaderBytes];
  uint8_t tail[kRecordCrcBytes];
  EncodeRecordFrame(type, flags, position, payload, head, tail);
  out.insert(out.end(), head, head + sizeof head);
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

namespace {

ReadResult Fail(ReadCode code, uint64_t offset, std::string_view name, const std::string& what) {
  return ReadResult{code, offset, "event log " + std::string(name) + ": " + what};
}

}  // namespace

ReadResult ParseRecord(std::span<const uint8_t> bytes, uint64_t offset, std::string_view name,
                       RecordView& out) {
  // Built only on the error paths: the hot path allocates nothing.
  auto at = [offset] { return " at offset " + std::to_string(offset); };
  if (bytes.size() < kRecordHeaderBytes) {
    return Fail(ReadCode::kTruncated, offset, name,
                "truncated record" + at() + " (" + std::to_string(bytes.size()) + " of at least " +
                    std::to_string(kRecordOverhead) + " bytes)");
  }
  RecordHeader h = DecodeRecordHeader(bytes.data());
  if (h.length > kMaxPayloadBytes) {
    return Fail(ReadCode::kPayloadTooLarge, offset, name,
                "payload too large" + at() + " (" + std::to_string(h.length) + " bytes, cap " +
                    std::to_string(kMaxPayloadBytes) + ")");
  }
  size_t total = kRecordOverhead + size_t{h.length};
  if (bytes.size() < total) {
    return Fail(ReadCode::kTruncated, offset, name,
                "truncated record" + at() + " (" + std::to_string(bytes.size()) + " of " +
                    std::to_string(total) + " bytes)");
  }
  size_t crc_at = kRecordHeaderBytes + h.length;
  uint32_t stored = GetLe32(bytes.data() + crc_at);
  uint32_t computed = Crc32c(bytes.first(crc_at));
  if (stored != computed) {
    return Fail(ReadCode::kBadCrc, offset, name,
                "bad CRC" + at() + " (stored " + Hex(stored) + ", computed " + Hex(computed) + ")");
  }
  if (!IsKnownRecordType(h.type)) {
    return Fail(ReadCode::kUnknownType, offset, name,
                "unknown record type " + std::to_string(h.type) + at());
  }
  if ((h.flags & ~kKnownFlags) != 0 || h.reserved != 0) {
    return Fail(ReadCode::kBadFlags, offset, name,
                "unknown flags " + Hex(h.flags) + " or reserved " + Hex(h.reserved) + at());
  }
  out.header = h;
  out.stored_payload = bytes.subspan(kRecordHeaderBytes, h.length);
  out.encoded_bytes = total;
  return ReadResult{ReadCode::kRecord, offset, {}};
}

}  // namespace ftvm::eventlog
