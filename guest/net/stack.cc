#include "guest/net/stack.h"

#include "guest/lib/mem.h"
#include "guest/net/bytes.h"
#include "guest/net/checksum.h"

namespace ftvm::net {
namespace {

const uint8_t kBroadcastMac[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
const uint8_t kZeroMac[6] = {};

bool is_multicast_mac(const uint8_t* mac) { return (mac[0] & 1u) != 0; }  // includes broadcast
// Addresses that may never be a packet's source: 0, limited broadcast, class D/E.
bool bad_source_ip(uint32_t ip) { return ip == 0 || (ip >> 28) >= 0xe; }

constexpr uint16_t kArpRequest = 1;
constexpr uint16_t kArpReply = 2;
constexpr uint16_t kIpFlagMf = 0x2000;
constexpr uint16_t kIpFragOffset = 0x1fff;
constexpr uint16_t kIpFlagDf = 0x4000;
constexpr uint8_t kIcmpEchoReply = 0;
constexpr uint8_t kIcmpEchoRequest = 8;
constexpr size_t kIpPayloadOffset = kEthHeader + kIpv4Header;

}  // namespace

NetStack::NetStack(const NetConfig& cfg, FrameSink* sink) : cfg_(cfg), sink_(sink) {}

bool NetStack::bind_udp(uint16_t port, UdpHandler* handler) {
  for (auto& b : udp_) {
    if (b.handler == nullptr || b.port == port) {
      b.port = port;
      b.handler = handler;
      return true;
    }
  }
  return false;
}

bool NetStack::transmit(const uint8_t* frame, size_t len) {
  if (sink_->send_frame(frame, len)) {
    ++stats_.tx_frames;
    return true;
  }
  ++stats_.tx_dropped;
  return false;
}

// ---- receive -------------------------------------------------------------------

void NetStack::input(const uint8_t* f, size_t len) {
  ++stats_.rx_frames;
  if (f == nullptr || len < kEthHeader) {
    ++stats_.rx_runt;
    return;
  }
  if (memcmp(f, cfg_.mac, 6) != 0 && memcmp(f, kBroadcastMac, 6) != 0) {
    ++stats_.rx_not_for_us;  // other unicast, multicast
    return;
  }
  const uint8_t* src_mac = f + 6;
  uint16_t type = load_be16(f + 12);
  if (type == kEtherTypeArp) {
    arp_input(src_mac, f + kEthHeader, len - kEthHeader);
  } else if (type == kEtherTypeIpv4) {
    ipv4_input(src_mac, f + kEthHeader, len - kEthHeader);
  } else {
    ++stats_.rx_unknown_type;  // IPv6, VLAN tags, ...
  }
}

void NetStack::arp_input(const uint8_t* src_mac, const uint8_t* p, size_t len) {
  ++stats_.rx_arp;
  // Ethernet/IPv4 ARP only; trailing padding is fine.
  if (len < kArpBody || load_be16(p) != 1 || load_be16(p + 2) != kEtherTypeIpv4 || p[4] != 6 ||
      p[5] != 4) {
    ++stats_.rx_arp_bad;
    return;
  }
  uint16_t op = load_be16(p + 6);
  const uint8_t* sha = p + 8;
  uint32_t spa = load_be32(p + 14);
  uint32_t tpa = load_be32(p + 24);
  if ((op != kArpRequest && op != kArpReply) || is_multicast_mac(sha) || is_multicast_mac(src_mac)) {
    ++stats_.rx_arp_bad;
    return;
  }
  bool for_us = tpa == cfg_.ip;
  // Learn the sender unless it is a probe (spa 0), claims our address, or is
  // not a plausible host. Entries are created only when the ARP concerns us;
  // anything else just refreshes what we already know (RFC 826 merge).
  if (!bad_source_ip(spa) && spa != cfg_.ip) {
    bool known = arp_.refresh(spa, sha);
    if (!known && for_us) arp_.update(spa, sha);
    if (known || for_us) learned(spa, sha);
  }
  if (op == kArpRequest && for_us) {
    send_arp(kArpReply, sha, sha, spa);
    ++stats_.arp_replies;
  }
}

void NetStack::ipv4_input(const uint8_t* src_mac, const uint8_t* p, size_t len) {
  ++stats_.rx_ipv4;
  if (len < kIpv4Header || (p[0] >> 4) != 4) {
    ++stats_.rx_ipv4_bad;
    return;
  }
  size_t ihl = static_cast<size_t>(p[0] & 0xf) * 4;
  size_t total = load_be16(p + 2);
  // Header within the packet, packet within what we received (the rest is
  // Ethernet padding).
  if (ihl < kIpv4Header || total < ihl || total > len) {
    ++stats_.rx_ipv4_bad;
    return;
  }
  if (csum_finish(csum_add(0, p, ihl)) != 0) {
    ++stats_.rx_ipv4_bad;
    return;
  }
  uint16_t frag = load_be16(p + 6);
  if ((frag & kIpFlagMf) != 0 || (frag & kIpFragOffset) != 0) {
    ++stats_.rx_ipv4_fragment;  // no reassembly: our datagrams fit one frame
    return;
  }
  uint32_t src = load_be32(p + 12);
  uint32_t dst = load_be32(p + 16);
  uint8_t proto = p[9];
  bool unicast = dst == cfg_.ip;
  bool broadcast =
      dst == 0xffffffffu || (cfg_.netmask != 0xffffffffu && dst == (cfg_.ip | ~cfg_.netmask));
  if (!unicast && !broadcast) {
    ++stats_.rx_ipv4_not_for_us;
    return;
  }
  if (bad_source_ip(src) || src == cfg_.ip || is_multicast_mac(src_mac)) {
    ++stats_.rx_ipv4_bad;
    return;
  }
  // A neighbour that talks to us is at the frame's source MAC: replies need no
  // ARP round trip.
  if (on_link(src)) {
    arp_.update(src, src_mac);
    learned(src, src_mac);
  }
  const uint8_t* payload = p + ihl;  // options (ihl > 20) are skipped, not parsed
  size_t plen = total - ihl;
  if (proto == kProtoUdp) {
    udp_input(src, dst, payload, plen);
  } else if (proto == kProtoIcmp && unicast) {
    icmp_input(src, payload, plen);
  }
}

void NetStack::icmp_input(uint32_t src, const uint8_t* p, size_t len) {
  if (len < kIcmpHeader || csum_finish(csum_add(0, p, len)) != 0) {
    ++stats_.rx_icmp_bad;
    return;
  }
  if (p[0] != kIcmpEchoRequest || p[1] != 0) return;
  if (len > kMtu - kIpv4Header) {  // request carried IP options; reply would not fit
    ++stats_.rx_icmp_bad;
    return;
  }
  uint8_t* r = tx_ + kIpPayloadOffset;
  memcpy(r, p, len);  // same identifier, sequence and data
  r[0] = kIcmpEchoReply;
  r[1] = 0;
  store_be16(r + 2, 0);
  store_be16(r + 2, csum_finish(csum_add(0, r, len)));
  if (ip_output(src, kProtoIcmp, len)) ++stats_.icmp_echo_replies;
}

void NetStack::udp_input(uint32_t src, uint32_t dst, const uint8_t* p, size_t len) {
  if (len < kUdpHeader) {
    ++stats_.rx_udp_bad;
    return;
  }
  size_t ulen = load_be16(p + 4);
  if (ulen < kUdpHeader || ulen > len) {
    ++stats_.rx_udp_bad;
    return;
  }
  if (load_be16(p + 6) != 0) {  // 0 = sender did not checksum
    uint64_t sum = csum_add(csum_pseudo(src, dst, kProtoUdp, static_cast<uint16_t>(ulen)), p, ulen);
    if (csum_finish(sum) != 0) {
      ++stats_.rx_udp_bad;
      return;
    }
  }
  ++stats_.rx_udp;
  uint16_t dport = load_be16(p + 2);
  for (auto& b : udp_) {
    if (b.handler != nullptr && b.port == dport) {
      b.handler->on_udp(UdpDatagram{src, dst, load_be16(p), dport, p + kUdpHeader, ulen - kUdpHeader});
      return;
    }
  }
  ++stats_.rx_udp_no_port;
}

// ---- send ----------------------------------------------------------------------

void NetStack::send_arp(uint16_t op, const uint8_t* dst_mac, const uint8_t* target_mac,
                        uint32_t target_ip) {
  uint8_t f[kEthHeader + kArpBody];
  memcpy(f, dst_mac, 6);
  memcpy(f + 6, cfg_.mac, 6);
  store_be16(f + 12, kEtherTypeArp);
  uint8_t* a = f + kEthHeader;
  store_be16(a, 1);  // Ethernet
  store_be16(a + 2, kEtherTypeIpv4);
  a[4] = 6;
  a[5] = 4;
  store_be16(a + 6, op);
  memcpy(a + 8, cfg_.mac, 6);
  store_be32(a + 14, cfg_.ip);
  memcpy(a + 18, target_mac, 6);
  store_be32(a + 24, target_ip);
  transmit(f, sizeof f);
}

void NetStack::announce() { send_arp(kArpRequest, kBroadcastMac, kZeroMac, cfg_.ip); }

void NetStack::learned(uint32_t ip, const uint8_t* mac) {
  for (Pending& p : pending_) {
    if (p.next_hop != ip || p.len == 0) continue;
    memcpy(p.frame, mac, 6);
    transmit(p.frame, p.len);
    p.next_hop = 0;
    p.len = 0;
  }
}

bool NetStack::ip_output(uint32_t dst, uint8_t proto, size_t payload_len) {
  if (payload_len > kMtu - kIpv4Header) {
    ++stats_.tx_dropped;
    return false;
  }
  size_t total = kIpv4Header + payload_len;
  uint8_t* ip = tx_ + kEthHeader;
  ip[0] = 0x45;
  ip[1] = 0;
  store_be16(ip + 2, static_cast<uint16_t>(total));
  store_be16(ip + 4, ip_id_++);
  store_be16(ip + 6, kIpFlagDf);
  ip[8] = 64;  // TTL
  ip[9] = proto;
  store_be16(ip + 10, 0);
  store_be32(ip + 12, cfg_.ip);
  store_be32(ip + 16, dst);
  store_be16(ip + 10, csum_finish(csum_add(0, ip, kIpv4Header)));
  memcpy(tx_ + 6, cfg_.mac, 6);
  store_be16(tx_ + 12, kEtherTypeIpv4);
  size_t frame_len = kEthHeader + total;

  bool broadcast =
      dst == 0xffffffffu || (cfg_.netmask != 0xffffffffu && dst == (cfg_.ip | ~cfg_.netmask));
  if (broadcast) {
    memcpy(tx_, kBroadcastMac, 6);
    return transmit(tx_, frame_len);
  }
  uint32_t next_hop = on_link(dst) ? dst : cfg_.gateway;
  if (next_hop == 0) {
    ++stats_.tx_no_route;
    return false;
  }
  if (arp_.lookup(next_hop, tx_)) return transmit(tx_, frame_len);

  // Unknown neighbour: hold the frame (if all slots are busy, replace them in
  // turn) and ask for its MAC.
  Pending* slot = nullptr;
  for (Pending& p : pending_) {
    if (p.len == 0) {
      slot = &p;
      break;
    }
  }
  if (slot == nullptr) {
    slot = &pending_[pending_evict_];
    pending_evict_ = (pending_evict_ + 1) % kPending;
  }
  slot->next_hop = next_hop;
  slot->len = frame_len;
  memcpy(slot->frame, tx_, frame_len);
  ++stats_.tx_arp_queued;
  send_arp(kArpRequest, kBroadcastMac, kZeroMac, next_hop);
  ++stats_.arp_requests;
  return true;
}

bool NetStack::send_udp(uint32_t dst_ip, uint16_t src_port, uint16_t dst_port, const uint8_t* data,
                        size_t len) {
  if (len > kMaxUdpPayload) {
    ++stats_.tx_dropped;
    return false;
  }
  uint8_t* u = tx_ + kIpPayloadOffset;
  size_t ulen = kUdpHeader + len;
  store_be16(u, src_port);
  store_be16(u + 2, dst_port);
  store_be16(u + 4, static_cast<uint16_t>(ulen));
  store_be16(u + 6, 0);
  memmove(u + kUdpHeader, data, len);
  uint16_t sum = csum_finish(csum_add(csum_pseudo(cfg_.ip, dst_ip, kProtoUdp, static_cast<uint16_t>(ulen)), u, ulen));
  store_be16(u + 6, sum == 0 ? 0xffff : sum);  // 0 would mean "no checksum"
  return ip_output(dst_ip, kProtoUdp, ulen);
}

}  // namespace ftvm::net
