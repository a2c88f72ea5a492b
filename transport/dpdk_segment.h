// The DPDK channel's segments on the wire (transport/dpdk_channel.cc has the protocol
// that carries them): plain byte formats, with no DPDK types, so that they build and
// are fuzzed (fuzz/dpdk_segment_fuzz.cc) on hosts without DPDK.
//
// Segment (after a 14-byte Ethernet header with EtherType 0x88B5, IEEE "local
// experimental"; integers little-endian; 40 bytes):
//
//   +0   u8[2] "FD"
//   +2   u8   type: HELLO, HELLO_ACK, REJECT, DATA, ACK, FIN, RST
//   +3   u8   flags: 1 = answer with an ACK at once (a probe), 2 = FIN received,
//             4 = a thread of the sender sleeps on its doorbell (net_memif: ring it)
//   +4   u32  sender's connection id (random per channel end, never 0)
//   +8   u32  receiver's connection id (0 in a HELLO)
//   +12  u16  payload length
//   +14  u16  0
//   +16  u64  seq: stream offset of the first payload byte (DATA), end of stream (FIN)
//   +24  u64  ack: every stream byte before it was received (cumulative)
//   +32  u32  window: bytes the receiver takes beyond `ack`
//   +36  u32  0
//
// HELLO and HELLO_ACK payload: the 16-byte channel hello of kind DPDK
// (transport/frame.h), u32 the sender's largest Ethernet payload (MTU), u32 its window.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "transport/frame.h"

namespace ftvm::transport::segment {

inline constexpr uint16_t kEtherType = 0x88B5;
inline constexpr size_t kEthBytes = 14;
inline constexpr size_t kSegHeaderBytes = 40;
inline constexpr size_t kHeadBytes = kEthBytes + kSegHeaderBytes;
enum SegType : uint8_t { kHello = 1, kHelloAck = 2, kReject = 3, kData = 4, kAck = 5, kFin = 6, kRst = 7 };
inline constexpr uint8_t kFlagAckNow = 1;
inline constexpr uint8_t kFlagFinSeen = 2;
// The sender has a thread asleep on its doorbell (net_memif): ring it when sending it
// data or an acknowledgement it may be waiting for (see RxWaker in dpdk_channel.cc).
inline constexpr uint8_t kFlagSleeping = 4;
inline constexpr size_t kHelloPayload = kHelloBytes + 8;
// The smallest MTU a hello may announce.
inline constexpr uint32_t kMinMtu = 256;

using Mac = std::array<uint8_t, 6>;

struct SegHeader {
  uint8_t type = 0;
  uint8_t flags = 0;
  uint32_t src = 0;
  uint32_t dst = 0;
  uint16_t len = 0;
  uint64_t seq = 0;
  uint64_t ack = 0;
  uint32_t window = 0;
};

// Writes the Ethernet header (to `dst`, from `src`) and the segment header.
void EncodeHead(std::span<uint8_t, kHeadBytes> out, const Mac& dst, const Mac& src, const SegHeader& h);

// Parses the head of a received frame of `frame_bytes` in all. False for anything
// that is not a well-formed segment: another EtherType, no "FD", a payload length
// beyond the frame.
bool ParseHead(std::span<const uint8_t, kHeadBytes> head, size_t frame_bytes, SegHeader& h, Mac& src_mac);

struct HelloInfo {
  std::string problem;  // empty: a valid hello
  uint32_t mtu = 0;
  uint32_t window = 0;
};
void PutHello(std::span<uint8_t, kHelloPayload> out, uint32_t mtu, uint32_t window);
// Checks a HELLO or HELLO_ACK payload (`payload` is all of it: h.len bytes, or at
// least the first kHelloPayload of them).
HelloInfo ParseHello(std::span<const uint8_t> payload, uint16_t payload_length);

}  // namespace ftvm::transport::segment
