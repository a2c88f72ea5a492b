#include "transport/dpdk_segment.h"

#include <cstring>

#include "eventlog/format.h"

namespace ftvm::transport::segment {

using eventlog::GetLe16;
using eventlog::GetLe32;
using eventlog::GetLe64;
using eventlog::PutLe16;
using eventlog::PutLe32;
using eventlog::PutLe64;

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
  PutLe32(s + 4, h.src);
  PutLe32(s + 8, h.dst);
  PutLe16(s + 12, h.len);
  PutLe16(s + 14, 0);
  PutLe64(s + 16, h.seq);
  PutLe64(s + 24, h.ack);
  PutLe32(s + 32, h.window);
  PutLe32(s + 36, 0);
}

bool ParseHead(std::span<const uint8_t, kHeadBytes> head, size_t frame_bytes, SegHeader& h, Mac& src_mac) {
  const uint8_t* p = head.data();
  if (p[12] != (kEtherType >> 8) || p[13] != (kEtherType & 0xff)) return false;
  const uint8_t* s = p + kEthBytes;
  if (s[0] != 'F' || s[1] != 'D') return false;
  std::memcpy(src_mac.data(), p + 6, 6);
  h.type = s[2];
  h.flags = s[3];
  h.src = GetLe32(s + 4);
  h.dst = GetLe32(s + 8);
  h.len = GetLe16(s + 12);
  h.seq = GetLe64(s + 16);
  h.ack = GetLe64(s + 24);
  h.window = GetLe32(s + 32);
  return frame_bytes >= kHeadBytes + h.len;
}

void PutHello(std::span<uint8_t, kHelloPayload> out, uint32_t mtu, uint32_t window) {
  const auto hello = EncodeHello(HelloKind::kDpdk);
  std::memcpy(out.data(), hello.data(), hello.size());
  PutLe32(out.data() + kHelloBytes, mtu);
  PutLe32(out.data() + kHelloBytes + 4, window);
}

HelloInfo ParseHello(std::span<const uint8_t> payload, uint16_t payload_length) {
  HelloInfo info;
  if (payload_length < kHelloPayload || payload.size() < kHelloPayload) {
    info.problem = "hello of " + std::to_string(payload_length) + " bytes";
    return info;
  }
  info.problem = CheckHello(payload.first<kHelloBytes>(), HelloKind::kDpdk);
  info.mtu = GetLe32(payload.data() + kHelloBytes);
  info.window = GetLe32(payload.data() + kHelloBytes + 4);
  if (info.problem.empty() && (info.mtu < kMinMtu || info.window == 0)) {
    info.problem = "bad hello (MTU " + std::to_string(info.mtu) + ", window " + std::to_string(info.window) + ")";
  }
  return info;
}

}  // namespace ftvm::transport::segment
