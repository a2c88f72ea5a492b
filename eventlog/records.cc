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
      return size >= kVerifyFixedBytes ? "" : Wrong(type, size, "at least " + std::to_string(kVerifyFixedBytes));
    case RecordType::kEnd:
      return size == kEndBytes ? "" : Wrong(type, size, "32");
    case RecordType::kTimerExpiry:
      return size == 0 ? "" : Wrong(type, size, "0");
    case RecordType::kIrqWaitResult:
      return size == kIrqWaitResultBytes ? "" : Wrong(type, size, "8");
    case RecordType::kDiskError:
      return size == kDiskErrorBytes ? "" : Wrong(type, size, "6");
    case RecordType::kOutputCheck:
      return size == kOutputCheckBytes ? "" : Wrong(type, size, "9");
    case RecordType::kGuestReset:
    case RecordType::kWaitCut:
      return size == 0 ? "" : Wrong(type, size, "0");
  }
  return "unknown record type " + std::to_string(static_cast<unsigned>(type));
}

std::string PayloadProblem(RecordType type, std::span<const uint8_t> payload) {
  std::string problem = PayloadSizeProblem(type, payload.size());
  if (problem.empty() && type == RecordType::kVerify && !DecodeVerify(payload))
    problem = "Verify payload of " + std::to_string(payload.size()) +
              " bytes whose register or page-hash lengths do not add up";
  return problem;
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

namespace {

void AppendVarint(std::vector<uint8_t>& out, uint64_t v) {
  uint8_t bytes[kMaxVarintBytes];
  out.insert(out.end(), bytes, PutVarint(bytes, v));
}

bool ReadVarint(std::span<const uint8_t> in, size_t& at, uint64_t& v) {
  return GetVarint(in, at, v) == VarintResult::kOk;
}

}  // namespace

// Layout: digest[32] dirty_pages:u64 devices[32] memory[16] regs_len:u16 regs, then
// the page list: varint count, and per page varint (page - previous page - 1; the
// first page itself) and u16 hash. Pages ascend, so gaps are small: ~3 bytes a page,
// which matters at one Verify every 50 ms. Varints are those of the record header
// (format.h), shortest form only, so a Verify payload has one encoding.
std::vector<uint8_t> EncodeVerify(const Verify& v) {
  std::vector<uint8_t> out(kVerifyFixedBytes - 1 + v.regs.size());
  uint8_t* p = out.data();
  p = std::copy(v.digest.begin(), v.digest.end(), p);
  PutLe64(p, v.dirty_pages);
  p += 8;
  p = std::copy(v.devices.begin(), v.devices.end(), p);
  p = std::copy(v.memory.begin(), v.memory.end(), p);
  PutLe16(p, uint16_t(v.regs.size()));
  p += 2;
  std::copy(v.regs.begin(), v.regs.end(), p);
  AppendVarint(out, v.pages.size());
  uint64_t next = 0;
  for (const PageHash& h : v.pages) {
    AppendVarint(out, h.page - next);  // callers give ascending pages
    next = uint64_t(h.page) + 1;
    out.push_back(uint8_t(h.hash));
    out.push_back(uint8_t(h.hash >> 8));
  }
  return out;
}
std::optional<Verify> DecodeVerify(std::span<const uint8_t> payload) {
  if (payload.size() < kVerifyFixedBytes) return std::nullopt;
  Verify v;
  const uint8_t* p = payload.data();
  std::copy_n(p, 32, v.digest.begin());
  v.dirty_pages = GetLe64(p + 32);
  std::copy_n(p + 40, 32, v.devices.begin());
  std::copy_n(p + 72, 16, v.memory.begin());
  const size_t regs_len = GetLe16(p + 88);
  size_t at = 90;
  if (payload.size() - at < regs_len + 1) return std::nullopt;
  v.regs.assign(p + at, p + at + regs_len);
  at += regs_len;
  uint64_t count = 0;
  if (!ReadVarint(payload, at, count) || count > (payload.size() - at) / 3) return std::nullopt;
  v.pages.resize(count);
  uint64_t next = 0;
  for (PageHash& h : v.pages) {
    uint64_t delta = 0;
    if (!ReadVarint(payload, at, delta) || payload.size() - at < 2) return std::nullopt;
    const uint64_t page = next + delta;
    if (page > UINT32_MAX || page < next) return std::nullopt;
    h.page = uint32_t(page);
    h.hash = uint16_t(payload[at] | payload[at + 1] << 8);
    at += 2;
    next = page + 1;
  }
  if (at != payload.size()) return std::nullopt;
  return v;
}

std::array<uint8_t, kIrqWaitResultBytes> EncodeIrqWaitResult(uint64_t value) {
  std::array<uint8_t, kIrqWaitResultBytes> out;
  PutLe64(out.data(), value);
  return out;
}
std::optional<uint64_t> DecodeIrqWaitResult(std::span<const uint8_t> payload) {
  if (payload.size() != kIrqWaitResultBytes) return std::nullopt;
  return GetLe64(payload.data());
}

std::array<uint8_t, kDiskErrorBytes> EncodeDiskError(const DiskError& e) {
  std::array<uint8_t, kDiskErrorBytes> out;
  PutLe16(out.data(), e.head);
  PutLe32(out.data() + 2, e.error);
  return out;
}
std::optional<DiskError> DecodeDiskError(std::span<const uint8_t> payload) {
  if (payload.size() != kDiskErrorBytes) return std::nullopt;
  return DiskError{GetLe16(payload.data()), GetLe32(payload.data() + 2)};
}

std::array<uint8_t, kOutputCheckBytes> EncodeOutputCheck(const OutputCheck& c) {
  std::array<uint8_t, kOutputCheckBytes> out;
  out[0] = c.stream;
  PutLe64(out.data() + 1, c.hash);
  return out;
}
std::optional<OutputCheck> DecodeOutputCheck(std::span<const uint8_t> payload) {
  if (payload.size() != kOutputCheckBytes) return std::nullopt;
  return OutputCheck{payload[0], GetLe64(payload.data() + 1)};
}

std::array<uint8_t, kEndBytes> EncodeEnd(const Digest& final_digest) { return final_digest; }
std::optional<Digest> DecodeEnd(std::span<const uint8_t> payload) {
  if (payload.size() != kEndBytes) return std::nullopt;
  Digest d;
  std::copy_n(payload.begin(), 32, d.begin());
  return d;
}

}  // namespace ftvm::eventlog
