#include "eventlog/records.h"

#include <algorithm>

namespace ftvm::eventlog {
namespace {

std::string Wrong(RecordType type, size_t size, const std::string& expected) {
  return RecordTypeName(type) + " payload of " + std::to_string(size) + " bytes, expected " +
         expected;
}

}  // namespace

std::string PayloadSizeProblem(RecordType type, size_t size) {
  switch (type) {
    case RecordType::kClockRead:
      return size == kClockReadBytes ? "" : Wrong(type, size, "8");
    case RecordType::kRngData:
      return size >= 1 && size <= kMaxPayloadBytes ? "" : Wrong(type, size, "at least 1");
    case RecordType::kPacketRx:
      return size >= 1 && size <= kMaxPacketBytes
                 ? ""
                 : Wrong(type, size, "1 to " + std::to_string(kMaxPacketBytes));
    case RecordType::kDiskCompletion:
      return size == kDiskCompletionBytes ? "" : Wrong(type, size, "4");
    case RecordType::kInterrupt:
      return size == kInterruptBytes ? "" : Wrong(type, size, "1");
    case RecordType::kCheckpoint:
      return size <= kMaxPayloadBytes ? "" : Wrong(type, size, "at most the payload cap");
    case RecordType::kVerify:
      return size == kVerifyBytes ? "" : Wrong(type, size, "40");
    case RecordType::kEnd:
      return size == kEndBytes ? "" : Wrong(type, size, "32");
  }
  return "unknown record type " + std::to_string(static_cast<unsigned>(type));
}

std::array<uint8_t, kClockReadBytes> EncodeClockRead(uint64_t value) {
  std::array<uint8_t, kClockReadBytes> out;
  PutLe64(out.data(), value);
  return out;
}
std::optional<uint64_t> DecodeClockRead(std::span<const uint8_t> payload) {
  if (payload.size() != kClockReadBytes) return std::nullopt;
  return GetLe64(payload.data());
}

std::optional<std::span<const uint8_t>> DecodeRngData(std::span<const uint8_t> payload) {
  if (!PayloadSizeProblem(RecordType::kRngData, payload.size()).empty()) return std::nullopt;
  return payload;
}

std::optional<std::span<const uint8_t>> DecodePacketRx(std::span<const uint8_t> payload) {
  if (!PayloadSizeProblem(RecordType::kPacketRx, payload.size()).empty()) return std::nullopt;
  return payload;
}

std::array<uint8_t, kDiskCompletionBytes> EncodeDiskCompletion(const DiskCompletion& c) {
  std::array<uint8_t, kDiskCompletionBytes> out;
  PutLe16(out.data(), c.queue);
  PutLe16(out.data() + 2, c.count);
  return out;
}
std::optional<DiskCompletion> DecodeDiskCompletion(std::span<const uint8_t> payload) {
  if (payload.size() != kDiskCompletionBytes) return std::nullopt;
  return DiskCompletion{GetLe16(payload.data()), GetLe16(payload.data() + 2)};
}

std::array<uint8_t, kInterruptBytes> EncodeInterrupt(uint8_t vector) { return {vector}; }
std::optional<uint8_t> DecodeInterrupt(std::span<const uint8_t> payload) {
  if (payload.size() != kInterruptBytes) return std::nullopt;
  return payload[0];
}

std::optional<std::span<const uint8_t>> DecodeCheckpoint(std::span<const uint8_t> payload) {
  if (payload.size() > kMaxPayloadBytes) return std::nullopt;
  return payload;
}

std::array<uint8_t, kVerifyBytes> EncodeVerify(const Verify& v) {
  std::array<uint8_t, kVerifyBytes> out;
  std::copy(v.digest.begin(), v.digest.end(), out.begin());
  PutLe64(out.data() + 32, v.dirty_pages);
  return out;
}
std::optional<Verify> DecodeVerify(std::span<const uint8_t> payload) {
  if (payload.size() != kVerifyBytes) return std::nullopt;
  Verify v;
  std::copy_n(payload.begin(), 32, v.digest.begin());
  v.dirty_pages = GetLe64(payload.data() + 32);
  return v;
}

std::array<uint8_t, kEndBytes> EncodeEnd(const Digest& final_digest) { return final_digest; }
std::optional<Digest> DecodeEnd(std::span<const uint8_t> payload) {
  if (payload.size() != kEndBytes) return std::nullopt;
  Digest d;
  std::copy_n(payload.begin(), 32, d.begin());
  return d;
}

}  // namespace ftvm::eventlog
