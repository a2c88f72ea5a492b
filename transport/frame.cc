#include "transport/frame.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "eventlog/crc32c.h"
#include "eventlog/format.h"

namespace ftvm::transport {

using eventlog::Crc32c;
using eventlog::GetLe16;
using eventlog::GetLe32;
using eventlog::PutLe16;
using eventlog::PutLe32;

namespace {

constexpr uint8_t kHelloMagic[8] = {'F', 'T', 'V', 'M', 'C', 'H', 'A', 'N'};
// Payload bytes are copied and checksummed in pieces of this size, so the CRC reads
// them back from L1/L2 rather than from memory.
constexpr size_t kCopyPiece = 64u << 10;

uint16_t HeaderCheck(const uint8_t* header) {
  return static_cast<uint16_t>(Crc32c({header, 6}) & 0xffff);
}

std::string Hex(uint32_t v, int digits) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%0*x", digits, v);
  return buf;
}

std::string_view HelloKindName(uint8_t kind) {
  switch (kind) {
    case static_cast<uint8_t>(HelloKind::kTcp): return "tcp";
    case static_cast<uint8_t>(HelloKind::kShm): return "shm";
    case static_cast<uint8_t>(HelloKind::kRdma): return "rdma";
    case static_cast<uint8_t>(HelloKind::kRdmaShm): return "rdma+shm";
    case static_cast<uint8_t>(HelloKind::kDpdk): return "dpdk";
  }
  return "unknown";
}

}  // namespace

uint8_t* Message::prepare(uint8_t type, size_t size) {
  if (size > capacity_) {
    // Not zero-filled: every byte is about to be overwritten by the payload, and
    // zeroing 1 MiB per message would cost as much as the copy itself.
    data_ = std::make_unique_for_overwrite<uint8_t[]>(size);
    capacity_ = size;
  }
  type_ = type;
  size_ = size;
  return data_.get();
}

std::array<uint8_t, kFrameHeaderBytes> EncodeFrameHeader(uint8_t type, uint32_t length) {
  std::array<uint8_t, kFrameHeaderBytes> h{};
  PutLe32(h.data(), length);
  h[4] = type;
  h[5] = 0;
  PutLe16(h.data() + 6, HeaderCheck(h.data()));
  return h;
}

uint32_t FrameCrc(std::span<const uint8_t, kFrameHeaderBytes> header,
                  std::span<const std::span<const uint8_t>> parts) {
  uint32_t crc = Crc32c(header);
  for (auto part : parts) crc = Crc32c(part, crc);
  return crc;
}

std::vector<uint8_t> EncodeFrame(uint8_t type, std::span<const uint8_t> payload) {
  auto header = EncodeFrameHeader(type, static_cast<uint32_t>(payload.size()));
  std::vector<uint8_t> out(payload.size() + kFrameOverhead);
  std::memcpy(out.data(), header.data(), header.size());
  if (!payload.empty()) std::memcpy(out.data() + kFrameHeaderBytes, payload.data(), payload.size());
  PutLe32(out.data() + kFrameHeaderBytes + payload.size(),
          FrameCrc(header, std::span<const std::span<const uint8_t>>(&payload, 1)));
  return out;
}

std::array<uint8_t, kHelloBytes> EncodeHello(HelloKind kind) {
  std::array<uint8_t, kHelloBytes> h{};
  std::memcpy(h.data(), kHelloMagic, sizeof kHelloMagic);
  PutLe16(h.data() + 8, kProtocolVersion);
  h[10] = static_cast<uint8_t>(kind);
  return h;
}

std::string CheckHello(std::span<const uint8_t, kHelloBytes> hello, HelloKind kind) {
  if (std::memcmp(hello.data(), kHelloMagic, sizeof kHelloMagic) != 0) {
    // Show what the peer sent, which usually tells what it is ("HTTP/1.1", "SSH-2.0-").
    std::string shown;
    for (size_t i = 0; i < 8; ++i) {
      char c = static_cast<char>(hello[i]);
      shown += (c >= 0x20 && c < 0x7f) ? c : '.';
    }
    return "peer is not an ftvm channel (it sent \"" + shown + "\", expected \"FTVMCHAN\")";
  }
  uint16_t version = GetLe16(hello.data() + 8);
  if (version != kProtocolVersion) {
    return "peer speaks channel protocol version " + std::to_string(version) + ", this side " +
           std::to_string(kProtocolVersion);
  }
  if (hello[10] != static_cast<uint8_t>(kind)) {
    return "peer is a " + std::string(HelloKindName(hello[10])) + " channel, this side is " +
           std::string(HelloKindName(static_cast<uint8_t>(kind)));
  }
  if (hello[11] != 0 || GetLe32(hello.data() + 12) != 0) return "reserved hello fields are not 0";
  return {};
}

// --- FrameDecoder ------------------------------------------------------------------

FrameDecoder::Step FrameDecoder::feed(std::span<const uint8_t> in) {
  if (failed_) return {Status::kError, 0};
  if (ready_) return {Status::kMessage, 0};  // the caller has not taken it yet
  size_t used = 0;
  while (used < in.size()) {
    const uint8_t* p = in.data() + used;
    const size_t avail = in.size() - used;
    switch (phase_) {
      case Phase::kHeader: {
        if (got_ == 0) frame_offset_ = offset_;
        size_t n = std::min(kFrameHeaderBytes - got_, avail);
        std::memcpy(header_ + got_, p, n);
        got_ += n;
        used += n;
        offset_ += n;
        if (got_ == kFrameHeaderBytes && header_done() == Status::kError) {
          return {Status::kError, used};
        }
        break;
      }
      case Phase::kPayload: {
        size_t n = std::min<size_t>(length_ - got_, avail);
        uint8_t* dst = pending_.data_.get() + got_;
        for (size_t done = 0; done < n;) {
          size_t piece = std::min(kCopyPiece, n - done);
          std::memcpy(dst + done, p + done, piece);
          crc_ = Crc32c({dst + done, piece}, crc_);
          done += piece;
        }
        got_ += n;
        used += n;
        offset_ += n;
        if (got_ == length_) {
          phase_ = Phase::kTrailer;
          got_ = 0;
        }
        break;
      }
      case Phase::kTrailer: {
        size_t n = std::min(kFrameTrailerBytes - got_, avail);
        std::memcpy(trailer_ + got_, p, n);
        got_ += n;
        used += n;
        offset_ += n;
        if (got_ == kFrameTrailerBytes) return {trailer_done(), used};
        break;
      }
    }
  }
  return {Status::kNeedMore, used};
}

FrameDecoder::Status FrameDecoder::header_done() {
  const uint16_t stored = GetLe16(header_ + 6);
  const uint16_t computed = HeaderCheck(header_);
  const std::string at = " at stream offset " + std::to_string(frame_offset_);
  if (stored != computed) {
    return fail("bad CRC in message header" + at + " (stored " + Hex(stored, 4) + ", computed " +
                Hex(computed, 4) + ")");
  }
  length_ = GetLe32(header_);
  type_ = header_[4];
  if (header_[5] != 0) return fail("unknown flags " + Hex(header_[5], 2) + " in message header" + at);
  if (type_ == 0) return fail("message type 0 (reserved, never sent)" + at);
  if (length_ > kMaxMessageBytes) {
    return fail("message of " + std::to_string(length_) + " bytes" + at + " exceeds the limit of " +
                std::to_string(kMaxMessageBytes) + " bytes");
  }
  crc_ = Crc32c({header_, kFrameHeaderBytes});
  pending_.prepare(type_, length_);
  phase_ = length_ > 0 ? Phase::kPayload : Phase::kTrailer;
  got_ = 0;
  return Status::kNeedMore;
}

FrameDecoder::Status FrameDecoder::trailer_done() {
  const uint32_t stored = GetLe32(trailer_);
  if (stored != crc_) {
    return fail("bad CRC in message of " + std::to_string(length_) + " bytes at stream offset " +
                std::to_string(frame_offset_) + " (stored " + Hex(stored, 8) + ", computed " +
                Hex(crc_, 8) + ")");
  }
  ready_ = true;
  phase_ = Phase::kHeader;
  got_ = 0;
  return Status::kMessage;
}

FrameDecoder::Status FrameDecoder::fail(std::string what) {
  failed_ = true;
  error_ = name_ + ": " + what;
  return Status::kError;
}

std::span<uint8_t> FrameDecoder::payload_space() {
  if (failed_ || ready_ || phase_ != Phase::kPayload) return {};
  return {pending_.data_.get() + got_, length_ - got_};
}

void FrameDecoder::payload_written(size_t n) {
  uint8_t* p = pending_.data_.get() + got_;
  for (size_t done = 0; done < n;) {
    size_t piece = std::min(kCopyPiece, n - done);
    crc_ = Crc32c({p + done, piece}, crc_);
    done += piece;
  }
  got_ += n;
  offset_ += n;
  if (got_ == length_) {
    phase_ = Phase::kTrailer;
    got_ = 0;
  }
}

void FrameDecoder::take(Message& out) {
  std::swap(out, pending_);
  ready_ = false;
}

std::string FrameDecoder::describe_partial() const {
  const std::string at = " at stream offset " + std::to_string(frame_offset_);
  switch (phase_) {
    case Phase::kHeader:
      return "in the middle of a message header (" + std::to_string(got_) + " of " +
             std::to_string(kFrameHeaderBytes) + " bytes)" + at;
    case Phase::kPayload:
      return "in the middle of a message (" + std::to_string(got_) + " of " + std::to_string(length_) +
             " payload bytes)" + at;
    case Phase::kTrailer:
      return "in the middle of a message (" + std::to_string(length_) + " payload bytes, " +
             std::to_string(got_) + " of 4 CRC bytes)" + at;
  }
  return {};
}

}  // namespace ftvm::transport
