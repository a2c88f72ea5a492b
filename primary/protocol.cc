#include "primary/protocol.h"

#include "eventlog/format.h"

namespace ftvm::replication {

using eventlog::GetLe64;
using eventlog::PutLe64;

std::array<uint8_t, kLogDataHeaderBytes> EncodeLogDataHeader(const LogDataHeader& h) {
  std::array<uint8_t, kLogDataHeaderBytes> out;
  PutLe64(out.data(), h.offset);
  PutLe64(out.data() + 8, h.complete_below);
  return out;
}

std::optional<LogDataHeader> DecodeLogDataHeader(std::span<const uint8_t> p) {
  if (p.size() < kLogDataHeaderBytes) return std::nullopt;
  return LogDataHeader{GetLe64(p.data()), GetLe64(p.data() + 8)};
}

std::array<uint8_t, kAckBytes> EncodeAck(const Ack& a) {
  std::array<uint8_t, kAckBytes> out;
  PutLe64(out.data(), a.received_offset);
  PutLe64(out.data() + 8, a.replayed_offset);
  PutLe64(out.data() + 16, a.replayed_position);
  return out;
}

std::optional<Ack> DecodeAck(std::span<const uint8_t> p) {
  if (p.size() != kAckBytes) return std::nullopt;
  return Ack{GetLe64(p.data()), GetLe64(p.data() + 8), GetLe64(p.data() + 16)};
}

std::array<uint8_t, 8> EncodeHeartbeat(uint64_t position) {
  std::array<uint8_t, 8> out;
  PutLe64(out.data(), position);
  return out;
}

std::optional<uint64_t> DecodeHeartbeat(std::span<const uint8_t> p) {
  if (p.size() != 8) return std::nullopt;
  return GetLe64(p.data());
}

std::array<uint8_t, 16> EncodeHandover(const Handover& h) {
  std::array<uint8_t, 16> out;
  PutLe64(out.data(), h.position);
  PutLe64(out.data() + 8, h.guest_clock_ns);
  return out;
}

std::optional<Handover> DecodeHandover(std::span<const uint8_t> p) {
  if (p.size() != 16) return std::nullopt;
  return Handover{GetLe64(p.data()), GetLe64(p.data() + 8)};
}

}  // namespace ftvm::replication
