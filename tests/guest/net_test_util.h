// Helpers for the guest network stack tests: hex frames and a capturing sink.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "guest/net/netif.h"
#include "guest/net/stack.h"

namespace ftvm::net::testing {

inline std::vector<uint8_t> Hex(const std::string& hex) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(uint8_t(std::stoul(hex.substr(i, 2), nullptr, 16)));
  return out;
}

inline std::string ToHex(const std::vector<uint8_t>& v) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (uint8_t b : v) {
    s += d[b >> 4];
    s += d[b & 15];
  }
  return s;
}

class CaptureSink final : public FrameSink {
 public:
  bool send_frame(const uint8_t* frame, size_t len) override {
    frames.emplace_back(frame, frame + len);
    return accept;
  }
  std::vector<std::vector<uint8_t>> frames;
  bool accept = true;
};

// Records every datagram handed up, optionally answering it.
class RecordingUdp final : public UdpHandler {
 public:
  struct Got {
    uint32_t src_ip, dst_ip;
    uint16_t src_port, dst_port;
    std::string data;
  };
  void on_udp(const UdpDatagram& d) override {
    got.push_back({d.src_ip, d.dst_ip, d.src_port, d.dst_port,
                   std::string(reinterpret_cast<const char*>(d.data), d.len)});
  }
  std::vector<Got> got;
};

// The addresses in the frames captured from Linux talking to a guest on a tap.
constexpr uint8_t kGuestMac[6] = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
constexpr uint32_t kGuestIp = 0x0a000902;  // 10.0.9.2
constexpr uint32_t kHostIp = 0x0a000901;   // 10.0.9.1
inline NetConfig GuestConfig(uint32_t gateway = 0) {
  NetConfig c{};
  for (int i = 0; i < 6; ++i) c.mac[i] = kGuestMac[i];
  c.ip = kGuestIp;
  c.netmask = 0xffffff00;
  c.gateway = gateway;
  return c;
}

}  // namespace ftvm::net::testing
