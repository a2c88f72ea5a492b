// The address syntax of the command line and the factory behind it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/error.h"
#include "tests/transport/test_util.h"

namespace ftvm::transport {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

TEST(Address, ParsesTcpAndShm) {
  ChannelAddress a = ParseChannelAddress("tcp:10.0.0.2:7000");
  EXPECT_EQ(a.kind, ChannelAddress::Kind::kTcp);
  EXPECT_EQ(a.host, "10.0.0.2");
  EXPECT_EQ(a.port, 7000);
  a = ParseChannelAddress("tcp:[::1]:0");
  EXPECT_EQ(a.host, "::1");
  EXPECT_EQ(a.port, 0);
  a = ParseChannelAddress("tcp:primary.example:65535");
  EXPECT_EQ(a.host, "primary.example");
  EXPECT_EQ(a.port, 65535);
  a = ParseChannelAddress("shm:/run/ftvm/vm1.sock");
  EXPECT_EQ(a.kind, ChannelAddress::Kind::kShm);
  EXPECT_EQ(a.path, "/run/ftvm/vm1.sock");
}

TEST(Address, ParsesRdmaAndItsEmulation) {
  ChannelAddress a = ParseChannelAddress("rdma:10.0.0.2:7000");
  EXPECT_EQ(a.kind, ChannelAddress::Kind::kRdma);
  EXPECT_EQ(a.host, "10.0.0.2");
  EXPECT_EQ(a.port, 7000);
  a = ParseChannelAddress("rdma:[fe80::1]:0");
  EXPECT_EQ(a.kind, ChannelAddress::Kind::kRdma);
  EXPECT_EQ(a.host, "fe80::1");
  EXPECT_EQ(a.port, 0);
  a = ParseChannelAddress("rdma+shm:/run/ftvm/vm1.sock");
  EXPECT_EQ(a.kind, ChannelAddress::Kind::kRdmaShm);
  EXPECT_EQ(a.path, "/run/ftvm/vm1.sock");
}

TEST(Address, ParsesDpdk) {
  ChannelAddress a = ParseChannelAddress("dpdk:memif:/run/ftvm/vm1.sock");
  EXPECT_EQ(a.kind, ChannelAddress::Kind::kDpdk);
  EXPECT_EQ(a.dpdk.device, DpdkAddress::Device::kMemif);
  EXPECT_EQ(a.dpdk.target, "/run/ftvm/vm1.sock");
  EXPECT_TRUE(a.dpdk.eal.empty());
  EXPECT_EQ(a.dpdk.mtu, 0u);
  EXPECT_EQ(a.dpdk.text, "dpdk:memif:/run/ftvm/vm1.sock");
  a = ParseChannelAddress("dpdk:af_packet:veth0;mtu=1500;eal=-l 1  --no-huge --no-pci");
  EXPECT_EQ(a.dpdk.device, DpdkAddress::Device::kAfPacket);
  EXPECT_EQ(a.dpdk.target, "veth0");
  EXPECT_EQ(a.dpdk.mtu, 1500u);
  EXPECT_EQ(a.dpdk.eal, (std::vector<std::string>{"-l", "1", "--no-huge", "--no-pci"}));
  EXPECT_TRUE(a.dpdk.abstract_socket);
  a = ParseChannelAddress("dpdk:memif:/run/x.sock;abstract=no");
  EXPECT_FALSE(a.dpdk.abstract_socket);
  EXPECT_THROW(ParseChannelAddress("dpdk:tap:ftvm0;abstract=no"), Error);
  a = ParseChannelAddress("dpdk:tap:ftvm0");
  EXPECT_EQ(a.dpdk.device, DpdkAddress::Device::kTap);
  a = ParseChannelAddress("dpdk:dev=net_memif0,socket=/x.sock,role=server;eal=--no-huge");
  EXPECT_EQ(a.dpdk.device, DpdkAddress::Device::kDevargs);
  EXPECT_EQ(a.dpdk.target, "net_memif0,socket=/x.sock,role=server");
  a = ParseChannelAddress("dpdk:dev=0000:03:00.0");
  EXPECT_EQ(a.dpdk.target, "0000:03:00.0");
}

TEST(Address, RejectsWhatItCannotUse) {
  const std::pair<const char*, const char*> bad[] = {
      {"udp:1.2.3.4:5", "unknown scheme 'udp'"},
      {"rdmx:host:1", "unknown scheme 'rdmx'"},
      {"rdma:host", "no port"},
      {"rdma:host:70000", "bad port '70000'"},
      {"rdma:::1:7000", "IPv6 host must be in brackets, as in rdma:[::1]:7000"},
      {"rdma+shm:", "empty socket path"},
      {"/run/x.sock", "no scheme"},
      {"tcp:host", "no port"},
      {"tcp:host:", "bad port ''"},
      {"tcp:host:99999", "bad port '99999'"},
      {"tcp:host:12a", "bad port '12a'"},
      {"tcp::7000", "empty host"},
      {"tcp:::1:7000", "IPv6 host must be in brackets"},
      {"shm:", "empty socket path"},
      {"dpdk:", "unknown DPDK device ''"},
      {"dpdk:pcap:x", "unknown DPDK device 'pcap:x'"},
      {"dpdk:memif:", "empty DPDK device"},
      {"dpdk:memif:/x,role=client", "give driver arguments with dpdk:dev=DEVARGS"},
      {"dpdk:af_packet:a-very-long-interface", "longer than 15 bytes"},
      {"dpdk:memif:/x;mtu=12", "bad mtu '12'"},
      {"dpdk:memif:/x;mtu=", "bad mtu ''"},
      {"dpdk:memif:/x;eal=", "eal= with no arguments"},
      {"dpdk:memif:/x;eal=-l 0;eal=-l 1", "eal= given twice"},
      {"dpdk:memif:/x;speed=fast", "unknown DPDK option 'speed=fast'"},
  };
  for (auto [text, why] : bad) {
    EXPECT_THAT([&] { ParseChannelAddress(text); },
                ThrowsMessage<Error>(::testing::AllOf(HasSubstr("channel address '" + std::string(text) + "'"),
                                                      HasSubstr(why), HasSubstr("expected tcp:HOST:PORT"))))
        << text;
  }
  EXPECT_THAT([] { Connect("tcp:127.0.0.1:0", 1s); }, ThrowsMessage<Error>(HasSubstr("port 0")));
  EXPECT_THAT([] { Connect("rdma:127.0.0.1:0", 1s); }, ThrowsMessage<Error>(HasSubstr("port 0")));
  EXPECT_THAT([] { Listen("bogus:thing"); }, ThrowsMessage<Error>(HasSubstr("unknown scheme 'bogus'")));
}

TEST(Address, ListenReportsTheRealAddressAndConnectUsesIt) {
  for (auto kind : {testutil::Kind::kTcp, testutil::Kind::kShm, testutil::Kind::kRdmaShm}) {
    auto p = testutil::MakePair(kind);  // Listen(...) + Connect(listener->address())
    std::string address = p.listener->address();
    if (kind == testutil::Kind::kTcp) {
      EXPECT_THAT(address, ::testing::StartsWith("tcp:127.0.0.1:"));
      EXPECT_NE(address, "tcp:127.0.0.1:0");
    } else {
      EXPECT_THAT(address, ::testing::StartsWith(testutil::KindName(kind) + ":/"));
    }
    ASSERT_TRUE(p.b->send(1, testutil::Pattern(3, 3), 1s).ok());
    Message m;
    EXPECT_TRUE(p.a->recv(m, 1s).is_message());
  }
}

}  // namespace
}  // namespace ftvm::transport
