#include "storage/write_stream.h"

#include "eventlog/crc32c.h"
#include "eventlog/format.h"

namespace ftvm::storage {

using eventlog::GetLe16;
using eventlog::GetLe32;
using eventlog::GetLe64;
using eventlog::PutLe16;
using eventlog::PutLe32;
using eventlog::PutLe64;

void AppendRecord(std::vector<uint8_t>& out, RecordKind kind, uint32_t delta_us, uint64_t a, uint64_t b,
                  std::span<const std::span<const uint8_t>> parts) {
  const size_t at = out.size();
  out.resize(at + kRecordHeaderBytes);
  uint8_t* p = out.data() + at;
  p[0] = uint8_t(kind);
  PutLe32(p + 1, delta_us);
  PutLe64(p + 5, a);
  PutLe64(p + 13, b);
  for (std::span<const uint8_t> part : parts) out.insert(out.end(), part.begin(), part.end());
}

void SealBatch(std::vector<uint8_t>& batch, const BatchHeader& h) {
  uint8_t* p = batch.data();
  p[0] = kStreamFormatVersion;
  p[1] = 0;
  PutLe16(p + 2, h.count);
  PutLe64(p + 8, h.first_seq);
  PutLe64(p + 16, h.first_bytes);
  PutLe64(p + 24, h.first_wall_ns);
  PutLe64(p + 32, h.head_seq);
  PutLe64(p + 40, h.head_bytes);
  PutLe64(p + 48, h.head_wall_ns);
  PutLe32(p + 4, eventlog::Crc32c(std::span<const uint8_t>(batch).subspan(8)));
}

std::string DecodeBatch(std::span<const uint8_t> batch, DecodedBatch& out) {
  if (batch.size() < kBatchHeaderBytes)
    return "write batch of " + std::to_string(batch.size()) + " bytes is shorter than its " +
           std::to_string(kBatchHeaderBytes) + "-byte header";
  const uint8_t* p = batch.data();
  if (p[0] != kStreamFormatVersion)
    return "write batch in stream format " + std::to_string(p[0]) + "; this build reads format " +
           std::to_string(kStreamFormatVersion);
  // Byte 1 lies outside the CRC: a value other than 0 is damage (or a format this
  // build does not know), not something to ignore.
  if (p[1] != 0) return "write batch with reserved byte " + std::to_string(p[1]) + " (not 0)";
  const uint32_t crc = eventlog::Crc32c(batch.subspan(8));
  if (crc != GetLe32(p + 4)) return "write batch fails its CRC (damaged in transit or on disk)";
  BatchHeader h;
  h.count = GetLe16(p + 2);
  h.first_seq = GetLe64(p + 8);
  h.first_bytes = GetLe64(p + 16);
  h.first_wall_ns = GetLe64(p + 24);
  h.head_seq = GetLe64(p + 32);
  h.head_bytes = GetLe64(p + 40);
  h.head_wall_ns = GetLe64(p + 48);
  std::vector<Record> records;
  records.reserve(h.count);
  size_t at = kBatchHeaderBytes;
  while (at < batch.size()) {
    if (batch.size() - at < kRecordHeaderBytes)
      return "write batch record " + std::to_string(records.size()) + " is cut short";
    const uint8_t* r = p + at;
    Record rec{RecordKind(r[0]), GetLe32(r + 1), GetLe64(r + 5), GetLe64(r + 13), {}};
    at += kRecordHeaderBytes;
    switch (rec.kind) {
      case RecordKind::kWrite:
      case RecordKind::kBlock:
        if (rec.b > batch.size() - at)
          return "write batch record " + std::to_string(records.size()) + " says " + std::to_string(rec.b) +
                 " data bytes, but only " + std::to_string(batch.size() - at) + " follow";
        rec.data = batch.subspan(at, rec.b);
        at += rec.b;
        break;
      case RecordKind::kFlush:
      case RecordKind::kCatchupBegin:
      case RecordKind::kCatchupEnd:
        break;
      default:
        return "write batch record " + std::to_string(records.size()) + " has unknown kind " +
               std::to_string(unsigned(r[0]));
    }
    records.push_back(rec);
  }
  if (records.size() != h.count)
    return "write batch header says " + std::to_string(h.count) + " records, but it holds " +
           std::to_string(records.size());
  out.header = h;
  out.records = std::move(records);
  return "";
}

std::vector<uint8_t> EncodeAck(const Ack& ack) {
  std::vector<uint8_t> out(26 + ack.reason.size());
  uint8_t* p = out.data();
  p[0] = kStreamFormatVersion;
  p[1] = uint8_t(ack.state);
  PutLe64(p + 2, ack.applied_seq);
  PutLe64(p + 10, ack.durable_seq);
  PutLe64(p + 18, ack.durable_bytes);
  std::copy(ack.reason.begin(), ack.reason.end(), out.begin() + 26);
  return out;
}

std::string DecodeAck(std::span<const uint8_t> payload, Ack& out) {
  if (payload.size() < 26) return "acknowledgement of " + std::to_string(payload.size()) + " bytes is too short";
  if (payload[0] != kStreamFormatVersion)
    return "acknowledgement in stream format " + std::to_string(payload[0]) + "; this build reads format " +
           std::to_string(kStreamFormatVersion);
  if (payload[1] > uint8_t(Ack::State::kStopped))
    return "acknowledgement with unknown state " + std::to_string(payload[1]);
  out.state = Ack::State(payload[1]);
  out.applied_seq = GetLe64(payload.data() + 2);
  out.durable_seq = GetLe64(payload.data() + 10);
  out.durable_bytes = GetLe64(payload.data() + 18);
  out.reason.assign(payload.begin() + 26, payload.end());
  return "";
}

}  // namespace ftvm::storage
