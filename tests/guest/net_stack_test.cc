// The guest network stack against frames Linux sent to a guest on a tap (so their
// checksums are known good), with the expected replies byte for byte.
#include <gtest/gtest.h>

#include "guest/net/bytes.h"
#include "guest/net/checksum.h"
#include "guest/net/stack.h"
#include "tests/guest/net_test_util.h"

namespace ftvm::net {
namespace {

using testing::CaptureSink;
using testing::GuestConfig;
using testing::Hex;
using testing::RecordingUdp;
using testing::ToHex;

// Captured from Linux (host 10.0.9.1, MAC 4a:c6:e2:15:ec:64) talking to the guest.
const char kArpRequest[] =
    "ffffffffffff4ac6e215ec64080600010800060400014ac6e215ec640a0009010000000000000a000902";
const char kEchoRequest[] =  // ping -p 41424344 -s 20
    "5254001234564ac6e215ec640800450000301e8940004001f6410a0009010a0009020800b901442500"
    "01bbf6066b00000000a8ef0b000000000041424344";
const char kUdpPing[] =  // "q1 PING" from port 40000 to 2525
    "5254001234564ac6e215ec64080045000023ba7a400040115a4d0a0009010a0009029c4009dd000f11e0"
    "71312050494e47";

// Expected replies of a fresh stack (first IPv4 id is 1). The ICMP checksum is
// the request's plus 0x0800 (RFC 1624: type 8 -> 0); IP checksums computed
// independently.
const char kArpReply[] =
    "4ac6e215ec64525400123456080600010800060400025254001234560a0009024ac6e215ec640a000901";
const char kEchoReply[] =
    "4ac6e215ec6452540012345608004500003000014000400114ca0a0009020a0009010000c101442500"
    "01bbf6066b00000000a8ef0b000000000041424344";
const char kUdpPong[] =
    "4ac6e215ec6452540012345608004500002300014000401114c70a0009020a00090109dd9c40000f0be0"
    "713120504f4e47";

class NetStackTest : public ::testing::Test {
 protected:
  void Input(const std::vector<uint8_t>& f) { stack.input(f.data(), f.size()); }
  CaptureSink sink;
  NetStack stack{GuestConfig(), &sink};
};

TEST(Checksum, KnownValues) {
  // The classic example header (checksum field zeroed) sums to 0xb861.
  auto h = Hex("450000730000400040110000c0a80001c0a800c7");
  EXPECT_EQ(csum_finish(csum_add(0, h.data(), h.size())), 0xb861);
  h[10] = 0xb8;
  h[11] = 0x61;
  EXPECT_EQ(csum_finish(csum_add(0, h.data(), h.size())), 0);
  // Odd length: the last byte is padded with zero.
  uint8_t odd[3] = {0x01, 0x02, 0x03};
  EXPECT_EQ(csum_finish(csum_add(0, odd, 3)), uint16_t(~(0x0102 + 0x0300)));
}

TEST_F(NetStackTest, AnswersArpRequestForOurIp) {
  Input(Hex(kArpRequest));
  ASSERT_EQ(sink.frames.size(), 1u);
  EXPECT_EQ(ToHex(sink.frames[0]), kArpReply);
  EXPECT_EQ(stack.stats().arp_replies, 1u);
  uint8_t mac[6];
  ASSERT_TRUE(stack.arp_cache().lookup(testing::kHostIp, mac));  // learned the asker
  EXPECT_EQ(mac[0], 0x4a);
}

TEST_F(NetStackTest, IgnoresArpRequestForAnotherIp) {
  auto f = Hex(kArpRequest);
  f[41] = 0x03;  // target 10.0.9.3
  Input(f);
  EXPECT_TRUE(sink.frames.empty());
  uint8_t mac[6];
  EXPECT_FALSE(stack.arp_cache().lookup(testing::kHostIp, mac));  // not about us: not learned
}

TEST_F(NetStackTest, RejectsMalformedArp) {
  auto f = Hex(kArpRequest);
  auto bad = f;
  bad[18] = 8;  // hlen 8
  Input(bad);
  bad = f;
  bad[15] = 6;  // ptype 0x0806
  Input(bad);
  bad = f;
  bad[21] = 9;  // op 9
  Input(bad);
  bad = f;
  bad[22] = 0x01;  // sender MAC multicast
  Input(bad);
  Input(std::vector<uint8_t>(f.begin(), f.end() - 1));  // one byte short
  EXPECT_TRUE(sink.frames.empty());
  EXPECT_EQ(stack.stats().rx_arp_bad, 5u);
}

TEST_F(NetStackTest, RepliesToEchoRequest) {
  Input(Hex(kEchoRequest));
  ASSERT_EQ(sink.frames.size(), 1u);  // MAC learned from the request itself: no ARP
  EXPECT_EQ(ToHex(sink.frames[0]), kEchoReply);
  EXPECT_EQ(stack.stats().icmp_echo_replies, 1u);
}

TEST_F(NetStackTest, EchoRequestWithEthernetPaddingAndIpOptions) {
  // Ethernet padding after the IP packet is ignored.
  auto f = Hex(kEchoRequest);
  f.insert(f.end(), 10, 0xee);
  Input(f);
  ASSERT_EQ(sink.frames.size(), 1u);
  EXPECT_EQ(ToHex(sink.frames[0]), kEchoReply);

  // A 4-byte option (NOP NOP NOP EOL): IHL 6, header checksum fixed up.
  auto o = Hex(kEchoRequest);
  o.insert(o.begin() + 34, {0x01, 0x01, 0x01, 0x00});
  o[14] = 0x46;
  store_be16(&o[16], uint16_t(load_be16(&o[16]) + 4));
  store_be16(&o[24], 0);
  store_be16(&o[24], csum_finish(csum_add(0, &o[14], 24)));
  Input(o);
  ASSERT_EQ(sink.frames.size(), 2u);
  // Same ICMP reply (the stack does not echo options); IP id advanced to 2.
  auto want = Hex(kEchoReply);
  EXPECT_EQ(std::vector<uint8_t>(sink.frames[1].begin() + 34, sink.frames[1].end()),
            std::vector<uint8_t>(want.begin() + 34, want.end()));
  EXPECT_EQ(load_be16(&sink.frames[1][18]), 2);
  EXPECT_EQ(csum_finish(csum_add(0, &sink.frames[1][14], 20)), 0);
}

TEST_F(NetStackTest, DropsBadIpv4) {
  auto f = Hex(kEchoRequest);
  auto bad = f;
  bad[24] ^= 1;  // header checksum
  Input(bad);
  bad = f;
  bad[14] = 0x65;  // version 6
  Input(bad);
  bad = f;
  bad[14] = 0x44;  // IHL 4
  Input(bad);
  bad = f;
  bad[17] = 0xff;  // total length past the frame (checksum fixed below)
  store_be16(&bad[24], 0);
  store_be16(&bad[24], csum_finish(csum_add(0, &bad[14], 20)));
  Input(bad);
  bad = f;
  store_be16(&bad[16], 19);  // total length < header
  store_be16(&bad[24], 0);
  store_be16(&bad[24], csum_finish(csum_add(0, &bad[14], 20)));
  Input(bad);
  EXPECT_TRUE(sink.frames.empty());
  EXPECT_EQ(stack.stats().rx_ipv4_bad, 5u);
}

TEST_F(NetStackTest, DropsFragments) {
  for (uint16_t frag : {uint16_t(0x2000), uint16_t(0x0001), uint16_t(0x2010)}) {
    auto f = Hex(kEchoRequest);
    store_be16(&f[20], frag);
    store_be16(&f[24], 0);
    store_be16(&f[24], csum_finish(csum_add(0, &f[14], 20)));
    Input(f);
  }
  EXPECT_TRUE(sink.frames.empty());
  EXPECT_EQ(stack.stats().rx_ipv4_fragment, 3u);
}

TEST_F(NetStackTest, DropsEchoWithBadIcmpChecksum) {
  auto f = Hex(kEchoRequest);
  f[f.size() - 1] ^= 0x40;
  Input(f);
  EXPECT_TRUE(sink.frames.empty());
  EXPECT_EQ(stack.stats().rx_icmp_bad, 1u);
}

TEST_F(NetStackTest, IgnoresOtherDestinations) {
  auto f = Hex(kEchoRequest);
  f[0] = 0x02;  // another unicast MAC
  Input(f);
  f = Hex(kEchoRequest);
  f[33] = 0x07;  // IP 10.0.9.7 (checksum fixed)
  store_be16(&f[24], 0);
  store_be16(&f[24], csum_finish(csum_add(0, &f[14], 20)));
  Input(f);
  EXPECT_TRUE(sink.frames.empty());
  EXPECT_EQ(stack.stats().rx_not_for_us, 1u);
  EXPECT_EQ(stack.stats().rx_ipv4_not_for_us, 1u);
}

TEST_F(NetStackTest, DeliversUdpAndRepliesByteForByte) {
  RecordingUdp udp;
  ASSERT_TRUE(stack.bind_udp(2525, &udp));
  Input(Hex(kUdpPing));
  ASSERT_EQ(udp.got.size(), 1u);
  EXPECT_EQ(udp.got[0].data, "q1 PING");
  EXPECT_EQ(udp.got[0].src_ip, testing::kHostIp);
  EXPECT_EQ(udp.got[0].src_port, 40000);
  EXPECT_EQ(udp.got[0].dst_port, 2525);
  const char pong[] = "q1 PONG";
  ASSERT_TRUE(stack.send_udp(testing::kHostIp, 2525, 40000, reinterpret_cast<const uint8_t*>(pong), 7));
  ASSERT_EQ(sink.frames.size(), 1u);  // no ARP: MAC learned from the request
  EXPECT_EQ(ToHex(sink.frames[0]), kUdpPong);
}

TEST_F(NetStackTest, UdpChecksumZeroMeansNone) {
  RecordingUdp udp;
  stack.bind_udp(2525, &udp);
  auto f = Hex(kUdpPing);
  f[40] = f[41] = 0;
  Input(f);
  EXPECT_EQ(udp.got.size(), 1u);
}

TEST_F(NetStackTest, DropsBadUdp) {
  RecordingUdp udp;
  stack.bind_udp(2525, &udp);
  auto f = Hex(kUdpPing);
  auto bad = f;
  bad[f.size() - 1] ^= 1;  // payload changed: checksum fails
  Input(bad);
  bad = f;
  store_be16(&bad[38], 7);  // UDP length < header
  Input(bad);
  bad = f;
  store_be16(&bad[38], 16);  // UDP length past the IP payload
  Input(bad);
  EXPECT_TRUE(udp.got.empty());
  EXPECT_EQ(stack.stats().rx_udp_bad, 3u);
  bad = f;
  store_be16(&bad[36], 9);  // unbound port (checksum zeroed: "none")
  bad[40] = bad[41] = 0;
  Input(bad);
  EXPECT_EQ(stack.stats().rx_udp_no_port, 1u);
}

TEST_F(NetStackTest, HoldsPacketUntilArpResolves) {
  const uint8_t data[] = {'h', 'i'};
  ASSERT_TRUE(stack.send_udp(testing::kHostIp, 2525, 40000, data, 2));
  ASSERT_EQ(sink.frames.size(), 1u);  // an ARP request, the datagram is held
  EXPECT_EQ(ToHex(sink.frames[0]),
            "ffffffffffff525400123456080600010800060400015254001234560a0009020000000000000a000901");
  // The reply Linux would send.
  Input(Hex("5254001234564ac6e215ec64080600010800060400024ac6e215ec640a0009015254001234560a000902"));
  ASSERT_EQ(sink.frames.size(), 2u);
  EXPECT_EQ(ToHex(std::vector<uint8_t>(sink.frames[1].begin(), sink.frames[1].begin() + 6)), "4ac6e215ec64");
  EXPECT_EQ(load_be16(&sink.frames[1][12]), kEtherTypeIpv4);
}

TEST_F(NetStackTest, RoutesOffLinkViaGatewayOrDrops) {
  const uint8_t data[] = {'x'};
  EXPECT_FALSE(stack.send_udp(0x08080808, 1, 2, data, 1));  // no gateway
  EXPECT_EQ(stack.stats().tx_no_route, 1u);
  CaptureSink sink2;
  NetStack gw_stack(GuestConfig(0x0a000901), &sink2);
  EXPECT_TRUE(gw_stack.send_udp(0x08080808, 1, 2, data, 1));
  ASSERT_EQ(sink2.frames.size(), 1u);  // ARP for the gateway, not for 8.8.8.8
  EXPECT_EQ(load_be32(&sink2.frames[0][38]), 0x0a000901u);
}

TEST_F(NetStackTest, AnnounceIsGratuitousArp) {
  stack.announce();
  ASSERT_EQ(sink.frames.size(), 1u);
  EXPECT_EQ(ToHex(sink.frames[0]),
            "ffffffffffff525400123456080600010800060400015254001234560a0009020000000000000a000902");
}

TEST_F(NetStackTest, RefusesOversizedDatagram) {
  std::vector<uint8_t> big(kMaxUdpPayload + 1, 'a');
  EXPECT_FALSE(stack.send_udp(testing::kHostIp, 1, 2, big.data(), big.size()));
  Input(Hex(kUdpPing));  // learn the MAC
  std::vector<uint8_t> max(kMaxUdpPayload, 'a');
  EXPECT_TRUE(stack.send_udp(testing::kHostIp, 1, 2, max.data(), max.size()));
  EXPECT_EQ(sink.frames.back().size(), kMaxFrame);
}

}  // namespace
}  // namespace ftvm::net
