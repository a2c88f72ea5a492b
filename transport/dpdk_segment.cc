#include "transport/dpdk_segment.h"

#include <cstring>

#include "eventlog/format.h"

namespace ftvm::transport::segment {

void EncodeHead(std::span<uint8_t, kHeadBytes> out, const Mac& dst, const Mac& src, const SegHeader& h) {
  uint8_t* p = out.data();
  std::memcpy(p, dst.data(), 6);
  std::memcpy(p + 6, src.data(), 6);
  p[12] = kEtherType >> 8;
  p[13] = kEtherType & 0xff;
  uint8_t* s = p + kEthBytes;
  s[0] = 'F';
  s[1] = 'D';
  s[2] = h.type;
  s[3] = h.flags;
  eventlog::PutLe32(s + 4, h.src);
  eventlog::PutLe32(s + 8, h.dst);
  eventlog::PutLe16(s + 12, h.len);
  eventlog::PutLe16(s + 14, 0);
  eventlog::PutLe64(s + 16, h.seq);
  eventlog::PutLe64(s + 24, h.ack);
  eventlog::PutLe32(s + 32, h.window);
  eventlog::PutLe32(s + 36, 0);
}

bool ParseHead(std::span<const uint8_t, kHeadBytes> head, size_t frame_bytes, SegHeader& h, Mac& src_mac) {
  const uint8_t* p = head.data();
  if (p[12] != (kEtherType >> 8) || p[13] != (kEtherType & 0xff)) return false;
  const uint8_t* s = p + kEthBytes;
  if (s[0] != 'F' || s[1] != 'D') return false;
  std::memcpy(src_mac.data(), p + 6, 6);
  h.type = s[2];
  h.flags = s[3];
  h.src = eventlog::GetLe32(s + 4);
  h.dst = eventlog::GetLe32(s + 8);
  h.len = eventlog::GetLe16(s + 12);
  h.seq = eventlog::GetLe64(s + 16);
  h.ack = eventlog::GetLe64(s + 24);
  h.window = eventlog::GetLe32(s + 32);
  return frame_bytes >= kHeadBytes + h.len;
}

void PutHello(std::span<uint8_t, kHelloPayload> out, uint32_t mtu, uint32_t window) {
  const auto hello = EncodeHello(HelloKind::kDpdk);
  std::memcpy(out.data(), hello.data(), hello.size());
  eventlog::PutLe32(out.data() + kHelloBytes, mtu);
  eventlog::PutLe32(out.data() + kHelloBytes + 4, window);
}

HelloInfo ParseHello(std::span<const uint8_t> payload, uint16_t payload_length) {
  HelloInfo info;
  if (payload_length < kHelloPayload || payload.size() < kHelloPayload) {
    info.problem = "hello of " + std::to_string(payload_length) + " bytes";
    return info;
  }
  info.problem = CheckHello(payload.first<kHelloBytes>(), HelloKind::kDpdk);
  info.mtu = eventlog::GetLe32(payload.data() + kHelloBytes);
  info.window = eventlog::GetLe32(payload.data() + kHelloBytes + 4);
  if (info.problem.empty() && (info.mtu < kMinMtu || info.window == 0)) {
    info.problem = "bad hello (MTU " + std::to_string(info.mtu) + ", window " + std::to_string(info.window) + ")";
  }
  return info;
}

}  // namespace ftvm::transport::segment
