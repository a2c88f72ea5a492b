// virtio-net and tap against the real kernel: every test runs in a fresh network
// namespace of its own (unshare(CLONE_NEWNET)), creates a real tap there, and talks
// to it from the host side through an AF_PACKET socket bound to the tap.
#include "vmm/devices/virtio_net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"
#include "tests/vmm/devices/test_driver.h"

namespace ftvm::vmm {
namespace {

LiveDeviceIo live_io;  // a live VM's devices: host results pass through

using testing::Feature;
using testing::InitMmio;
using testing::RecordingSink;
using testing::TestRing;

constexpr char kTapName[] = "ftvmtest0";
constexpr std::array<uint8_t, 6> kGuestMac{0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
constexpr std::array<uint8_t, 6> kHostMac{0x02, 0x00, 0x00, 0x00, 0x00, 0x01};
constexpr uint16_t kEtherType = 0x88b5;  // IEEE local experimental: nothing else sends it
constexpr uint64_t kRxBufs = 0x100000;   // 4 KiB apart
constexpr uint64_t kTxBufs = 0x200000;   // 4 KiB apart
constexpr size_t kHdr = VirtioNet::kHdrBytes;

std::vector<uint8_t> MakeFrame(const std::array<uint8_t, 6>& dst, const std::array<uint8_t, 6>& src,
                               size_t payload, uint8_t seed) {
  std::vector<uint8_t> f(14 + payload);
  std::memcpy(f.data(), dst.data(), 6);
  std::memcpy(f.data() + 6, src.data(), 6);
  f[12] = kEtherType >> 8;
  f[13] = kEtherType & 0xff;
  for (size_t i = 0; i < payload; ++i) f[14 + i] = uint8_t(seed + i);
  return f;
}

bool WaitReadable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1;
}

void WriteSysctl(const std::string& path, const char* value) {
  std::ofstream f(path);
  if (f) f << value;  // absent when the kernel has no IPv6: nothing to silence then
}

class VirtioNetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A private network namespace: the tap, its traffic and any failure stay here.
    ASSERT_EQ(::unshare(CLONE_NEWNET), 0)
        << "unshare(CLONE_NEWNET) failed: " << std::strerror(errno) << " (these tests need root)";
    ASSERT_EQ(::access("/dev/net/tun", R_OK | W_OK), 0)
        << "/dev/net/tun is not usable: " << std::strerror(errno) << " (load the tun module)";
    // No IPv6 autoconfiguration chatter (router solicitations, MLD) on the tap.
    WriteSysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
    WriteSysctl("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
    try {
      auto backend = std::make_unique<VirtioNet>(Tap(kTapName), kGuestMac, live_io);
      net = backend.get();
      dev = std::make_unique<VirtioMmioDevice>("virtio-net", mem, sink, FTVM_IRQ_VIRTIO_NET,
                                               std::move(backend));
    } catch (const Error& e) {
      FAIL() << "creating the tap failed: " << e.what();
    }
    ifindex = int(if_nametoindex(kTapName));
    ASSERT_GT(ifindex, 0) << "tap " << kTapName << " not visible: " << std::strerror(errno);
    packet.reset(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL)));
    ASSERT_TRUE(packet) << "AF_PACKET socket: " << std::strerror(errno);
    // Up before bind: binding to a down interface leaves a pending ENETDOWN on the
    // socket that the first send() would report.
    ASSERT_NO_FATAL_FAILURE(SetLinkUp(true));
    sockaddr_ll sll{};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = ifindex;
    ASSERT_EQ(::bind(packet.get(), reinterpret_cast<sockaddr*>(&sll), sizeof sll), 0)
        << "bind AF_PACKET to " << kTapName << ": " << std::strerror(errno);
  }

  void SetLinkUp(bool up) {
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, kTapName, IFNAMSIZ - 1);
    ASSERT_EQ(::ioctl(packet.get(), SIOCGIFFLAGS, &ifr), 0) << std::strerror(errno);
    if (up)
      ifr.ifr_flags |= IFF_UP;
    else
      ifr.ifr_flags &= ~IFF_UP;
    ASSERT_EQ(::ioctl(packet.get(), SIOCSIFFLAGS, &ifr), 0) << std::strerror(errno);
  }

  void Init() {
    ASSERT_TRUE(InitMmio(*dev,
                         Feature(VIRTIO_F_VERSION_1) | Feature(VIRTIO_F_RING_EVENT_IDX) |
                             Feature(VIRTIO_NET_F_MAC),
                         {&rx, &tx}));
  }

  // The host sends `frame` to the tap (that is, to the guest).
  void HostSend(const std::vector<uint8_t>& frame) {
    ASSERT_EQ(::send(packet.get(), frame.data(), frame.size(), 0), ssize_t(frame.size()))
        << "AF_PACKET send: " << std::strerror(errno);
    ASSERT_TRUE(WaitReadable(net->tap().fd(), 2000)) << "frame never reached the tap";
  }

  // The next frame of ours (our ethertype, not our own sends) the host side sees.
  std::optional<std::vector<uint8_t>> HostReceive(int timeout_ms = 2000) {
    for (;;) {
      if (!WaitReadable(packet.get(), timeout_ms)) return std::nullopt;
      std::vector<uint8_t> buf(65536);
      sockaddr_ll from{};
      socklen_t len = sizeof from;
      const ssize_t n = ::recvfrom(packet.get(), buf.data(), buf.size(), MSG_DONTWAIT,
                                   reinterpret_cast<sockaddr*>(&from), &len);
      if (n < 0) return std::nullopt;
      if (from.sll_pkttype == PACKET_OUTGOING || n < 14) continue;
      if (buf[12] != (kEtherType >> 8) || buf[13] != (kEtherType & 0xff)) continue;
      buf.resize(size_t(n));
      return buf;
    }
  }

  GuestMemory mem = GuestMemory::Create(4ull << 20);
  RecordingSink sink;
  TestRing rx{mem, 16, 0x10000};
  TestRing tx{mem, 16, 0x20000};
  VirtioNet* net = nullptr;
  std::unique_ptr<VirtioMmioDevice> dev;
  int ifindex = 0;
  UniqueFd packet;
};

TEST(TapOpen, NameTooLongIsRejected) {
  try {
    Tap tap("an-interface-name-too-long");
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "tap an-interface-name-too-long: interface name longer than 15 characters");
  }
}

TEST_F(VirtioNetTest, TapIsNonBlockingAndVisible) {
  EXPECT_EQ(net->tap().name(), kTapName);
  const int flags = ::fcntl(net->tap().fd(), F_GETFL);
  EXPECT_NE(flags & O_NONBLOCK, 0);
  EXPECT_NE(::fcntl(net->tap().fd(), F_GETFD) & FD_CLOEXEC, 0);
  std::array<uint8_t, 64> buf;
  EXPECT_EQ(const_cast<Tap&>(net->tap()).read(buf).status, Tap::Status::kWouldBlock);
  EXPECT_EQ(dev->host_fds(), std::vector<int>{net->tap().fd()});
}

TEST_F(VirtioNetTest, TapWithoutCapNetAdminFailsClearly) {
  int pipefd[2];
  ASSERT_EQ(::pipe2(pipefd, O_CLOEXEC), 0);
  UniqueFd rd(pipefd[0]), wr(pipefd[1]);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0) << std::strerror(errno);
  if (pid == 0) {
    // Child: drop CAP_NET_ADMIN from the effective set, then try to create a tap.
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2]{};
    std::string msg;
    if (::syscall(SYS_capget, &hdr, data) != 0) {
      msg = std::string("capget: ") + std::strerror(errno);
    } else {
      data[0].effective &= ~(1u << CAP_NET_ADMIN);
      if (::syscall(SYS_capset, &hdr, data) != 0) {
        msg = std::string("capset: ") + std::strerror(errno);
      } else {
        try {
          Tap tap("ftvmnocap0");
          msg = "no exception";
        } catch (const Error& e) {
          msg = e.what();
        }
      }
    }
    (void)!::write(wr.get(), msg.data(), msg.size());
    ::_exit(0);
  }
  wr.reset();
  std::string got;
  char buf[256];
  ssize_t n;
  while ((n = ::read(rd.get(), buf, sizeof buf)) > 0) got.append(buf, size_t(n));
  int st = 0;
  ASSERT_EQ(::waitpid(pid, &st, 0), pid);
  EXPECT_EQ(got, "tap ftvmnocap0: TUNSETIFF: Operation not permitted");
}

TEST_F(VirtioNetTest, FeaturesAndMacInConfig) {
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_DEVICE_ID, 4), VIRTIO_ID_NET);
  dev->mmio_write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 4, 0);
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_DEVICE_FEATURES, 4),
            (1u << VIRTIO_F_RING_EVENT_IDX) | (1u << VIRTIO_NET_F_MAC));
  for (unsigned i = 0; i < 6; ++i) EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_CONFIG + i, 1), kGuestMac[i]);
  EXPECT_EQ(dev->mmio_read(VIRTIO_MMIO_CONFIG, 4), 0x12005452u);
}

TEST_F(VirtioNetTest, MulticastMacIsRejected) {
  EXPECT_THROW(VirtioNet(Tap("ftvmtest1"), {0x01, 0, 0, 0, 0, 1}, live_io), Error);
}

TEST_F(VirtioNetTest, HostFramesArriveInRxRing) {
  ASSERT_NO_FATAL_FAILURE(Init());
  for (unsigned i = 0; i < 4; ++i) rx.add({{kRxBufs + 4096ull * i, uint32_t(kHdr + 1514), true}});
  std::vector<std::vector<uint8_t>> sent;
  for (uint8_t i = 0; i < 3; ++i) {
    sent.push_back(MakeFrame(kGuestMac, kHostMac, 100 + 200 * i, i));
    ASSERT_NO_FATAL_FAILURE(HostSend(sent.back()));
  }
  dev->poll();
  auto used = rx.take_used();
  ASSERT_EQ(used.size(), 3u);
  for (unsigned i = 0; i < 3; ++i) {
    EXPECT_EQ(used[i].id, i);
    ASSERT_EQ(used[i].len, kHdr + sent[i].size());
    virtio_net_hdr h{};
    ASSERT_TRUE(mem.read_obj(kRxBufs + 4096ull * i, h));
    EXPECT_EQ(h.flags, 0);
    EXPECT_EQ(h.gso_type, 0);
    EXPECT_EQ(h.num_buffers, 1);
    EXPECT_EQ(std::memcmp(mem.ptr(kRxBufs + 4096ull * i + kHdr, sent[i].size()), sent[i].data(), sent[i].size()), 0);
  }
  EXPECT_EQ(sink.raised, std::vector<unsigned>{FTVM_IRQ_VIRTIO_NET});  // one for the batch
  EXPECT_EQ(dev->interrupt_status(), kVirtioInterruptUsedRing);
  EXPECT_EQ(net->counters().rx_frames, 3u);
  EXPECT_EQ(net->counters().rx_bytes, sent[0].size() + sent[1].size() + sent[2].size());
  EXPECT_EQ(net->counters().rx_dropped, 0u);
}

TEST_F(VirtioNetTest, RxFrameSpansDescriptorChain) {
  ASSERT_NO_FATAL_FAILURE(Init());
  rx.add({{kRxBufs, uint32_t(kHdr), true}, {kRxBufs + 4096, 20, true}, {kRxBufs + 8192, 2000, true}});
  const auto frame = MakeFrame(kGuestMac, kHostMac, 300, 7);
  ASSERT_NO_FATAL_FAILURE(HostSend(frame));
  dev->poll();
  auto used = rx.take_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].len, kHdr + frame.size());
  EXPECT_EQ(std::memcmp(mem.ptr(kRxBufs + 4096, 20), frame.data(), 20), 0);
  EXPECT_EQ(std::memcmp(mem.ptr(kRxBufs + 8192, frame.size() - 20), frame.data() + 20, frame.size() - 20), 0);
}

TEST_F(VirtioNetTest, OversizedFrameIsDroppedAndBufferKept) {
  ASSERT_NO_FATAL_FAILURE(Init());
  rx.add({{kRxBufs, uint32_t(kHdr + 100), true}});
  ASSERT_NO_FATAL_FAILURE(HostSend(MakeFrame(kGuestMac, kHostMac, 500, 1)));
  dev->poll();
  EXPECT_EQ(net->counters().rx_dropped, 1u);
  EXPECT_EQ(rx.used_idx(), 0);
  EXPECT_TRUE(dev->wants_host_events());  // the buffer is still offered
  const auto small = MakeFrame(kGuestMac, kHostMac, 60, 2);
  ASSERT_NO_FATAL_FAILURE(HostSend(small));
  // The tap read empty once: until the machine reports it readable again, exits do
  // not pay a read(2).
  dev->poll();
  EXPECT_EQ(rx.used_idx(), 0);
  dev->host_ready();
  dev->poll();
  auto used = rx.take_used();
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used[0].len, kHdr + small.size());
  EXPECT_EQ(std::memcmp(mem.ptr(kRxBufs + kHdr, small.size()), small.data(), small.size()), 0);
  EXPECT_EQ(net->counters().rx_frames, 1u);
  EXPECT_FALSE(dev->mmio_read(VIRTIO_MMIO_STATUS, 4) & VIRTIO_STATUS_NEEDS_RESET);
}

TEST_F(VirtioNetTest, WantsHostEventsOnlyWhileRxBuffersAreOffered) {
  EXPECT_FALSE(dev->wants_host_events());  // not live yet
  ASSERT_NO_FATAL_FAILURE(Init());
  EXPECT_FALSE(dev->wants_host_events());  // live, no RX buffers
  rx.add({{kRxBufs, uint32_t(kHdr + 1514), true}});  // no kick: the device polls
  EXPECT_TRUE(dev->wants_host_events());
  ASSERT_NO_FATAL_FAILURE(HostSend(MakeFrame(kGuestMac, kHostMac, 64, 3)));
  ASSERT_NO_FATAL_FAILURE(HostSend(MakeFrame(kGuestMac, kHostMac, 64, 4)));
  dev->poll();
  EXPECT_EQ(rx.used_idx(), 1);
  EXPECT_FALSE(dev->wants_host_events());  // full: a readable tap must not wake us
  EXPECT_TRUE(WaitReadable(net->tap().fd(), 0));  // the second frame waits in the tap
  rx.add({{kRxBufs + 4096, uint32_t(kHdr + 1514), true}});
  dev->poll();
  EXPECT_EQ(rx.used_idx(), 2);
  EXPECT_EQ(net->counters().rx_frames, 2u);
}

TEST_F(VirtioNetTest, RxKicksAreSuppressed) {
  ASSERT_NO_FATAL_FAILURE(Init());
  dev->poll();
  EXPECT_FALSE(rx.driver_would_kick(0, 1, true));
  EXPECT_FALSE(tx.driver_would_kick(0, 1, true));
}

TEST_F(VirtioNetTest, GuestFramesLeaveAtTheNextExitWithoutKick) {
  ASSERT_NO_FATAL_FAILURE(Init());
  dev->poll();  // any exit: the device publishes avail_event
  const auto f1 = MakeFrame(kHostMac, kGuestMac, 80, 9);
  const auto f2 = MakeFrame(kHostMac, kGuestMac, 1400, 10);
  // Frame 1: header and frame in one descriptor. Frame 2: header, then two pieces.
  virtio_net_hdr h{};
  ASSERT_TRUE(mem.write_obj(kTxBufs, h));
  std::memcpy(mem.ptr(kTxBufs + kHdr, f1.size()), f1.data(), f1.size());
  ASSERT_TRUE(mem.write_obj(kTxBufs + 4096, h));
  std::memcpy(mem.ptr(kTxBufs + 8192, 100), f2.data(), 100);
  std::memcpy(mem.ptr(kTxBufs + 12288, f2.size() - 100), f2.data() + 100, f2.size() - 100);
  const uint16_t before = tx.avail_idx();
  tx.add({{kTxBufs, uint32_t(kHdr + f1.size()), false}});
  tx.add({{kTxBufs + 4096, uint32_t(kHdr), false},
          {kTxBufs + 8192, 100, false},
          {kTxBufs + 12288, uint32_t(f2.size() - 100), false}});
  EXPECT_FALSE(tx.driver_would_kick(before, tx.avail_idx(), true)) << "the guest would have exited to kick";
  dev->poll();  // the guest's next exit, whatever it was
  auto used = tx.take_used();
  ASSERT_EQ(used.size(), 2u);
  EXPECT_EQ(used[0].len, 0u);
  auto got1 = HostReceive();
  ASSERT_TRUE(got1.has_value()) << "frame 1 did not appear on the AF_PACKET socket";
  EXPECT_EQ(*got1, f1);
  auto got2 = HostReceive();
  ASSERT_TRUE(got2.has_value()) << "frame 2 did not appear on the AF_PACKET socket";
  EXPECT_EQ(*got2, f2);
  EXPECT_EQ(net->counters().tx_frames, 2u);
  EXPECT_EQ(net->counters().tx_bytes, f1.size() + f2.size());
  EXPECT_FALSE(tx.driver_would_kick(tx.avail_idx(), uint16_t(tx.avail_idx() + 1), true));
}

TEST_F(VirtioNetTest, TxKickAlsoDrains) {
  ASSERT_NO_FATAL_FAILURE(Init());
  const auto f = MakeFrame(kHostMac, kGuestMac, 64, 11);
  std::memset(mem.ptr(kTxBufs, kHdr), 0, kHdr);
  std::memcpy(mem.ptr(kTxBufs + kHdr, f.size()), f.data(), f.size());
  tx.add({{kTxBufs, uint32_t(kHdr + f.size()), false}});
  dev->mmio_write(VIRTIO_MMIO_QUEUE_NOTIFY, 4, VirtioNet::kTxQueue);
  EXPECT_EQ(tx.used_idx(), 1);
  auto got = HostReceive();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, f);
}

TEST_F(VirtioNetTest, TxOnDownInterfaceIsCountedAndBufferReturned) {
  ASSERT_NO_FATAL_FAILURE(Init());
  ASSERT_NO_FATAL_FAILURE(SetLinkUp(false));
  const auto f = MakeFrame(kHostMac, kGuestMac, 64, 12);
  std::memset(mem.ptr(kTxBufs, kHdr), 0, kHdr);
  std::memcpy(mem.ptr(kTxBufs + kHdr, f.size()), f.data(), f.size());
  tx.add({{kTxBufs, uint32_t(kHdr + f.size()), false}});
  dev->poll();
  EXPECT_EQ(tx.used_idx(), 1);
  EXPECT_EQ(net->counters().tx_frames, 0u);
  EXPECT_EQ(net->counters().tx_errors + net->counters().tx_dropped, 1u);
  EXPECT_FALSE(dev->needs_reset());
}

TEST_F(VirtioNetTest, MalformedTxChainNeedsReset) {
  ASSERT_NO_FATAL_FAILURE(Init());
  tx.add({{kTxBufs, 64, true}});  // TX buffers are device-readable
  dev->poll();
  EXPECT_TRUE(dev->needs_reset());
  EXPECT_EQ(tx.used_idx(), 0);
  EXPECT_FALSE(dev->wants_host_events());
}

TEST_F(VirtioNetTest, IdlePollLeavesGuestMemoryUntouched) {
  ASSERT_NO_FATAL_FAILURE(Init());
  rx.add({{kRxBufs, uint32_t(kHdr + 1514), true}});
  dev->poll();  // settles notification suppression
  const std::vector<uint8_t> before(mem.host_base(), mem.host_base() + 0x30000);
  for (int i = 0; i < 100; ++i) dev->poll();
  EXPECT_EQ(std::memcmp(before.data(), mem.host_base(), before.size()), 0);
  EXPECT_TRUE(sink.raised.empty());
}

}  // namespace
}  // namespace ftvm::vmm
