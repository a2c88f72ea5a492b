// Fuzz target for the DPDK channel's segment parser (transport/dpdk_segment.h): any
// Ethernet frame that arrives on the channel's port, from the peer or from anyone on
// the link, goes through it, and HELLO payloads through the hello check.
//
// Input: the frame as received (Ethernet header first).
// Invariants: a head that parses has our EtherType and "FD", a payload that fits in
// the frame, and re-encodes to the same bytes (but for the reserved fields, which
// the parser ignores); a hello is accepted only when its channel hello is the
// canonical one, its MTU at least kMinMtu and its window not 0, and then re-encodes
// to the same bytes.
#include <algorithm>

#include "fuzz/harness.h"
#include "transport/dpdk_segment.h"

namespace {

using namespace ftvm::transport;
using namespace ftvm::transport::segment;
using ftvm::fuzz::Require;

bool SameBytesBut(std::span<const uint8_t> a, std::span<const uint8_t> b, std::initializer_list<size_t> skip) {
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i] && std::find(skip.begin(), skip.end(), i) == skip.end()) return false;
  return true;
}

void Run(std::span<const uint8_t> frame) {
  if (frame.size() < kHeadBytes) return;
  const auto head = frame.first<kHeadBytes>();
  SegHeader h;
  Mac src;
  if (!ParseHead(head, frame.size(), h, src)) return;
  Require(frame.size() >= kHeadBytes + h.len, "the payload fits in the frame");
  Mac dst;
  std::copy(frame.begin(), frame.begin() + 6, dst.begin());
  std::array<uint8_t, kHeadBytes> again;
  EncodeHead(again, dst, src, h);
  constexpr size_t kReserved = kEthBytes + 14, kReserved2 = kEthBytes + 36;
  Require(SameBytesBut(again, head, {kReserved, kReserved + 1, kReserved2, kReserved2 + 1, kReserved2 + 2, kReserved2 + 3}),
          "a parsed head re-encodes to its bytes");

  const std::span<const uint8_t> payload = frame.subspan(kHeadBytes, h.len);
  const HelloInfo hello = ParseHello(payload, h.len);
  if (hello.problem.empty()) {
    Require(h.len >= kHelloPayload && hello.mtu >= kMinMtu && hello.window != 0, "an accepted hello is sound");
    std::array<uint8_t, kHelloPayload> encoded;
    PutHello(encoded, hello.mtu, hello.window);
    Require(std::equal(encoded.begin(), encoded.end(), payload.begin()), "an accepted hello re-encodes to its bytes");
  }
}

std::vector<uint8_t> Seed(std::minstd_rand& rng) {
  SegHeader h;
  h.type = static_cast<uint8_t>(1 + rng() % 7);
  h.flags = static_cast<uint8_t>(rng() % 8);
  h.src = static_cast<uint32_t>(rng());
  h.dst = static_cast<uint32_t>(rng());
  h.seq = rng() * 1000;
  h.ack = rng() * 1000;
  h.window = 64u << 10;
  std::vector<uint8_t> payload;
  if (h.type == kHello || h.type == kHelloAck) {
    payload.resize(kHelloPayload);
    PutHello(std::span<uint8_t, kHelloPayload>(payload.data(), kHelloPayload), 1500 + rng() % 8000, h.window);
  } else if (h.type == kData || h.type == kReject) {
    payload.resize(rng() % 200, static_cast<uint8_t>(rng()));
  }
  h.len = static_cast<uint16_t>(payload.size());
  std::vector<uint8_t> out(kHeadBytes);
  const Mac dst{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, src{0x02, 0, 0, 0, 0, static_cast<uint8_t>(rng())};
  EncodeHead(std::span<uint8_t, kHeadBytes>(out.data(), kHeadBytes), dst, src, h);
  out.insert(out.end(), payload.begin(), payload.end());
  if (rng() % 4 == 0) out.resize(out.size() + rng() % 16);  // Ethernet padding
  return out;
}

}  // namespace

const ftvm::fuzz::Target ftvm::fuzz::kTarget = {"dpdk_segment", Run, Seed, nullptr};
