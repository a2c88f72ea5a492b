// Fuzz target for the guest kit's network stack (guest/net/stack.h) and the mail
// store's request parser (guest/apps/mail_proto.h), compiled for the host: what a
// protected guest decodes from the network.
//
// Input: frames back to back, each a u16 little-endian length and the Ethernet
// frame. The stack (10.0.9.2, gateway 10.0.9.254) takes each, with a UDP handler on
// the mail port that parses the datagram and echoes it.
// Invariants: a datagram handed up lies inside the frame it came in; the parsed
// request's tokens lie inside the datagram; every frame the stack sends is a whole
// Ethernet frame no longer than the largest it may send (14 + 1500).
// tests/guest/net_fuzz_test.cc keeps the fixed robustness cases (every truncation
// and bit flip of captured frames).
#include <cstring>
#include <memory>

#include "fuzz/harness.h"
#include "guest/apps/mail_proto.h"
#include "guest/apps/mailstore_proto.h"
#include "guest/net/bytes.h"
#include "guest/net/checksum.h"
#include "guest/net/stack.h"

namespace {

using namespace ftvm::net;
using ftvm::fuzz::Require;

constexpr size_t kMaxFrame = 14 + 1500;
constexpr uint8_t kGuestMac[6] = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
constexpr uint32_t kGuestIp = 0x0a000902;
constexpr uint32_t kPeerIp = 0x0a000901;

class CheckingSink final : public FrameSink {
 public:
  bool send_frame(const uint8_t* frame, size_t len) override {
    Require(len >= 14 && len <= kMaxFrame, "the stack sends whole frames of a valid size");
    volatile uint8_t sum = 0;  // ASan checks the bounds
    for (size_t i = 0; i < len; ++i) sum = uint8_t(sum + frame[i]);
    return true;
  }
};

bool Inside(const void* p, size_t n, const uint8_t* base, size_t len) {
  const auto* b = static_cast<const uint8_t*>(p);
  return n == 0 || (b >= base && n <= len && size_t(b - base) <= len - n);
}

class MailEcho final : public UdpHandler {
 public:
  explicit MailEcho(NetStack& stack) : stack_(stack) {}
  std::span<const uint8_t> frame;  // the frame being fed
  void on_udp(const UdpDatagram& d) override {
    Require(Inside(d.data, d.len, frame.data(), frame.size()), "a datagram lies inside its frame");
    const ftvm::guest::MailRequest r = ftvm::guest::mail_parse(d.data, d.len);
    for (const ftvm::guest::Str& s : {r.reqid, r.msgid, r.mailbox, r.body})  // an unreadable reqid is "-"
      Require(Inside(s.p, s.n, d.data, d.len) || (s.n == 1 && s.p[0] == '-'), "request tokens lie inside the datagram");
    stack_.send_udp(d.src_ip, d.dst_port, d.src_port, d.data, d.len);
  }

 private:
  NetStack& stack_;
};

void Run(std::span<const uint8_t> input) {
  NetConfig cfg{};
  std::memcpy(cfg.mac, kGuestMac, 6);
  cfg.ip = kGuestIp;
  cfg.netmask = 0xffffff00;
  cfg.gateway = 0x0a0009fe;
  CheckingSink sink;
  NetStack stack(cfg, &sink);
  MailEcho echo(stack);
  stack.bind_udp(FTVM_MAIL_PORT, &echo);
  size_t off = 0;
  while (input.size() - off >= 2) {
    const size_t len = std::min<size_t>(input[off] | size_t{input[off + 1]} << 8, input.size() - off - 2);
    off += 2;
    // Its own heap block of exactly `len` bytes, so ASan sees a read past its end.
    const auto copy = std::make_unique<uint8_t[]>(std::max<size_t>(len, 1));
    std::memcpy(copy.get(), input.data() + off, len);
    off += len;
    echo.frame = {copy.get(), len};
    stack.input(copy.get(), len);
  }
}

// Makes the IPv4 header checksum and the UDP checksum of each frame right again.
void Repair(std::span<uint8_t> input) {
  size_t off = 0;
  while (input.size() - off >= 2) {
    const size_t len = std::min<size_t>(input[off] | size_t{input[off + 1]} << 8, input.size() - off - 2);
    uint8_t* f = input.data() + off + 2;
    off += 2 + len;
    if (len < 14 + 20 || load_be16(f + 12) != 0x0800) continue;
    uint8_t* ip = f + 14;
    const size_t ihl = size_t(ip[0] & 15) * 4;
    if (ihl < 20 || 14 + ihl > len) continue;
    store_be16(ip + 10, 0);
    store_be16(ip + 10, csum_finish(csum_add(0, ip, ihl)));
    const size_t ulen = load_be16(ip + 2) >= ihl ? load_be16(ip + 2) - ihl : 0;
    if (ip[9] != 17 || ulen < 8 || 14 + ihl + ulen > len) continue;
    uint8_t* u = ip + ihl;
    store_be16(u + 6, 0);
    const uint16_t sum =
        csum_finish(csum_add(csum_pseudo(load_be32(ip + 12), load_be32(ip + 16), 17, uint16_t(ulen)), u, ulen));
    store_be16(u + 6, sum == 0 ? 0xffff : sum);
  }
}

void AppendFrame(std::vector<uint8_t>& out, const std::vector<uint8_t>& frame) {
  ftvm::fuzz::AppendLe(out, frame.size(), 2);
  out.insert(out.end(), frame.begin(), frame.end());
}

// An ARP request for the guest, then mail requests over UDP (with checksums).
std::vector<uint8_t> Seed(std::minstd_rand& rng) {
  const uint8_t peer_mac[6] = {0x4a, 0xc6, 0xe2, 0x15, 0xec, 0x64};
  std::vector<uint8_t> out;
  std::vector<uint8_t> arp(42);
  std::memset(arp.data(), 0xff, 6);
  std::memcpy(arp.data() + 6, peer_mac, 6);
  store_be16(arp.data() + 12, 0x0806);
  const uint8_t arp_body[8] = {0, 1, 8, 0, 6, 4, 0, 1};
  std::memcpy(arp.data() + 14, arp_body, 8);
  std::memcpy(arp.data() + 22, peer_mac, 6);
  store_be32(arp.data() + 28, kPeerIp);
  store_be32(arp.data() + 38, kGuestIp);
  AppendFrame(out, arp);
  static const char* const kRequests[] = {"PING r1\n", "DELIVER r2 m1 alice\nhello", "FETCH r3 alice 0\n",
                                          "COUNT r4 bob\n"};
  for (int n = int(rng() % 3); n >= 0; --n) {
    const char* req = kRequests[rng() % 4];
    const size_t dlen = std::strlen(req);
    std::vector<uint8_t> f(14 + 20 + 8 + dlen);
    std::memcpy(f.data(), kGuestMac, 6);
    std::memcpy(f.data() + 6, peer_mac, 6);
    store_be16(f.data() + 12, 0x0800);
    uint8_t* ip = f.data() + 14;
    ip[0] = 0x45;
    store_be16(ip + 2, uint16_t(20 + 8 + dlen));
    ip[8] = 64;
    ip[9] = 17;
    store_be32(ip + 12, kPeerIp);
    store_be32(ip + 16, kGuestIp);
    uint8_t* u = ip + 20;
    store_be16(u, uint16_t(40000 + rng() % 1000));
    store_be16(u + 2, FTVM_MAIL_PORT);
    store_be16(u + 4, uint16_t(8 + dlen));
    std::memcpy(u + 8, req, dlen);
    AppendFrame(out, f);
  }
  Repair(out);
  return out;
}

}  // namespace

const ftvm::fuzz::Target ftvm::fuzz::kTarget = {"guest_net", Run, Seed, Repair};
