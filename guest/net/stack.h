// A minimal IPv4 host stack: Ethernet II, ARP, IPv4 (no fragments), ICMP echo and
// UDP. Host-compilable (no kernel or device dependencies): frames come in through
// input() and leave through a FrameSink.
//
// Every received byte is untrusted: each header is length-checked against what
// was actually received before it is read, and the IPv4/UDP length fields are
// checked against each other and the frame.
#ifndef FTVM_GUEST_NET_STACK_H_
#define FTVM_GUEST_NET_STACK_H_

#include <stddef.h>
#include <stdint.h>

#include "guest/net/arp_cache.h"
#include "guest/net/netif.h"

namespace ftvm::net {

constexpr size_t kEthHeader = 14;
constexpr size_t kArpBody = 28;
constexpr size_t kIpv4Header = 20;
constexpr size_t kUdpHeader = 8;
constexpr size_t kIcmpHeader = 8;
constexpr size_t kMtu = 1500;
constexpr size_t kMaxFrame = kEthHeader + kMtu;
constexpr size_t kMaxUdpPayload = kMtu - kIpv4Header - kUdpHeader;
constexpr uint16_t kEtherTypeIpv4 = 0x0800;
constexpr uint16_t kEtherTypeArp = 0x0806;
constexpr uint8_t kProtoIcmp = 1;
constexpr uint8_t kProtoUdp = 17;

struct NetConfig {
  uint8_t mac[6];
  uint32_t ip;       // host byte order
  uint32_t netmask;
  uint32_t gateway;  // 0: none (only the local subnet is reachable)
};

struct UdpDatagram {
  uint32_t src_ip, dst_ip;
  uint16_t src_port, dst_port;
  const uint8_t* data;
  size_t len;
};

class UdpHandler {
 public:
  virtual void on_udp(const UdpDatagram& d) = 0;

 protected:
  ~UdpHandler() = default;
};

struct NetStats {
  uint64_t rx_frames, rx_runt, rx_not_for_us, rx_unknown_type;
  uint64_t rx_arp, rx_arp_bad, arp_replies, arp_requests;
  uint64_t rx_ipv4, rx_ipv4_bad, rx_ipv4_fragment, rx_ipv4_not_for_us;
  uint64_t rx_icmp_bad, icmp_echo_replies;
  uint64_t rx_udp, rx_udp_bad, rx_udp_no_port;
  uint64_t tx_frames, tx_dropped, tx_no_route, tx_arp_queued;
};

class NetStack {
 public:
  NetStack(const NetConfig& cfg, FrameSink* sink);

  // Up to kUdpPorts handlers; false if the table is full.
  static constexpr unsigned kUdpPorts = 4;
  bool bind_udp(uint16_t port, UdpHandler* handler);

  // One received Ethernet frame (no FCS). Handlers run synchronously.
  void input(const uint8_t* frame, size_t len);

  // Sends a datagram (checksummed). If the next hop's MAC is unknown the packet is
  // held (a few per stack) while an ARP request goes out. False when dropped.
  bool send_udp(uint32_t dst_ip, uint16_t src_port, uint16_t dst_port, const uint8_t* data,
                size_t len);
  // Gratuitous ARP: tells the segment our IP is at our MAC (after boot/failover).
  void announce();

  const NetConfig& config() const { return cfg_; }
  const NetStats& stats() const { return stats_; }
  const ArpCache& arp_cache() const { return arp_; }

 private:
  static constexpr unsigned kPending = 4;
  struct Pending {
    uint32_t next_hop;  // 0 = free
    size_t len;
    uint8_t frame[kMaxFrame];
  };

  void arp_input(const uint8_t* src_mac, const uint8_t* p, size_t len);
  void ipv4_input(const uint8_t* src_mac, const uint8_t* p, size_t len);
  void icmp_input(uint32_t src, const uint8_t* p, size_t len);
  void udp_input(uint32_t src, uint32_t dst, const uint8_t* p, size_t len);

  // Sends the IPv4 packet whose payload the caller wrote at tx_ + 34.
  bool ip_output(uint32_t dst, uint8_t proto, size_t payload_len);
  void send_arp(uint16_t op, const uint8_t* dst_mac, const uint8_t* target_mac, uint32_t target_ip);
  void learned(uint32_t ip, const uint8_t* mac);  // releases held packets
  bool on_link(uint32_t ip) const { return (ip & cfg_.netmask) == (cfg_.ip & cfg_.netmask); }
  bool transmit(const uint8_t* frame, size_t len);

  NetConfig cfg_;
  FrameSink* sink_;
  ArpCache arp_;
  NetStats stats_ = {};
  uint16_t ip_id_ = 1;
  struct {
    uint16_t port;
    UdpHandler* handler;
  } udp_[kUdpPorts] = {};
  Pending pending_[kPending] = {};
  unsigned pending_evict_ = 0;
  uint8_t tx_[kMaxFrame] = {};
};

}  // namespace ftvm::net

#endif  // FTVM_GUEST_NET_STACK_H_
