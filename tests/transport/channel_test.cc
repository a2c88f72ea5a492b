// Behaviour every transport must show, run against TCP (loopback), shared memory, the
// RDMA channel over its shared-memory emulation, and RDMA verbs where a device exists:
// round trips of every size class (also across a fork()ed process), ordering,
// concurrent use, flow control, timeouts, close, and a peer killed with SIGKILL.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "transport/frame.h"
#include "tests/transport/test_util.h"

namespace ftvm::transport {
namespace {

using namespace std::chrono_literals;
using testutil::Child;
using testutil::Equal;
using testutil::GetU64;
using testutil::Kind;
using testutil::MakePair;
using testutil::Pattern;
using testutil::PutU64;
using ::testing::HasSubstr;

class ChannelTest : public ::testing::TestWithParam<Kind> {
 protected:
  Kind kind() const { return GetParam(); }
  // Options giving a small buffer between the two ends (64 KiB ring, or 64 KiB socket
  // buffers, which the kernel doubles), so that flow control is reached quickly.
  ChannelOptions SmallBuffers() const {
    ChannelOptions o;
    o.tcp.socket_buffer_bytes = 64 << 10;
    o.shm.ring_bytes = 64 << 10;
    o.rdma.ring_bytes = 64 << 10;
    return o;
  }
};

TEST_P(ChannelTest, KindAndPeerAreReported) {
  auto p = MakePair(kind());
  EXPECT_EQ(p.a->kind(), testutil::KindName(kind()));
  EXPECT_EQ(p.b->kind(), testutil::KindName(kind()));
  EXPECT_THAT(p.b->peer(), HasSubstr(testutil::KindName(kind()) + ":"));
}

TEST_P(ChannelTest, RoundTripOfEverySize) {
  auto p = MakePair(kind());
  const size_t sizes[] = {0, 1, 4096, 1u << 20, 60u << 20};
  for (size_t size : sizes) {
    SCOPED_TRACE("size " + std::to_string(size));
    auto data = Pattern(size, static_cast<uint32_t>(size));
    // Both directions; a sender thread because a 60 MiB message does not fit in any
    // buffer between the ends.
    for (int dir = 0; dir < 2; ++dir) {
      Channel& from = dir == 0 ? *p.a : *p.b;
      Channel& to = dir == 0 ? *p.b : *p.a;
      SendResult sent;
      std::thread sender([&] { sent = from.send(7, data, 20s); });
      Message m;
      RecvResult r = to.recv(m, 20s);
      sender.join();
      ASSERT_TRUE(sent.ok()) << sent.message;
      ASSERT_TRUE(r.is_message()) << r.message;
      EXPECT_EQ(m.type(), 7);
      ASSERT_EQ(m.size(), size);
      EXPECT_TRUE(Equal(m.payload(), data));
    }
  }
  ChannelStats s = p.a->stats();
  EXPECT_EQ(s.messages_sent, 5u);
  EXPECT_EQ(s.messages_received, 5u);
  EXPECT_EQ(s.bytes_sent, 1u + 4096 + (1u << 20) + (60u << 20));
  EXPECT_EQ(s.bytes_received, s.bytes_sent);
}

TEST_P(ChannelTest, GatheredPartsArriveAsOneMessage) {
  auto p = MakePair(kind());
  auto whole = Pattern(10000, 3);
  std::span<const uint8_t> w(whole);
  std::span<const uint8_t> parts[] = {w.subspan(0, 10), w.subspan(10, 0), w.subspan(10, 5000), w.subspan(5010)};
  ASSERT_TRUE(p.a->send(9, parts, 5s).ok());
  Message m;
  ASSERT_TRUE(p.b->recv(m, 5s).is_message());
  EXPECT_EQ(m.type(), 9);
  EXPECT_TRUE(Equal(m.payload(), whole));
}

TEST_P(ChannelTest, EchoAcrossProcesses) {
  testutil::TestListener listener(kind());
  const std::string address = listener.address();
  // The child connects and echoes every message until the channel closes.
  Child child([&] {
    auto ch = Connect(address, 10s);
    Message m;
    for (;;) {
      RecvResult r = ch->recv(m, 30s);
      if (r.closed()) return 0;
      if (!r.is_message()) return 2;
      if (!ch->send(m.type(), m.payload(), 30s).ok()) return 3;
    }
  });
  auto ch = listener->accept(10s);
  ASSERT_NE(ch, nullptr);
  const size_t sizes[] = {0, 1, 4096, 1u << 20, 60u << 20};
  Message m;
  for (size_t size : sizes) {
    SCOPED_TRACE("size " + std::to_string(size));
    auto data = Pattern(size, static_cast<uint32_t>(size) + 1);
    // Three gathered parts; the echo comes back as one payload.
    std::span<const uint8_t> d(data);
    std::span<const uint8_t> parts[] = {d.subspan(0, size / 3), d.subspan(size / 3, size / 3),
                                        d.subspan(2 * (size / 3))};
    uint8_t type = static_cast<uint8_t>(1 + size % 255);
    ASSERT_TRUE(ch->send(type, parts, 30s).ok());
    RecvResult r = ch->recv(m, 30s);
    ASSERT_TRUE(r.is_message()) << r.message;
    EXPECT_EQ(m.type(), type);
    ASSERT_EQ(m.size(), size);
    EXPECT_TRUE(Equal(m.payload(), data));
  }
  ch->close();
  EXPECT_EQ(child.wait(), 0);
}

TEST_P(ChannelTest, HundredThousandSmallMessagesStayInOrder) {
  auto p = MakePair(kind());
  constexpr uint64_t kCount = 100000;
  std::thread sender([&] {
    uint8_t buf[64];
    for (uint64_t i = 0; i < kCount; ++i) {
      size_t n = 8 + i % 57;
      std::memset(buf, static_cast<int>(i & 0xff), sizeof buf);
      PutU64(buf, i);
      if (!p.a->send(static_cast<uint8_t>(1 + i % 200), std::span<const uint8_t>(buf, n), 10s).ok()) return;
    }
  });
  Message m;
  uint64_t bad = 0;
  for (uint64_t i = 0; i < kCount; ++i) {
    RecvResult r = p.b->recv(m, 10s);
    ASSERT_TRUE(r.is_message()) << "message " << i << ": " << r.message;
    bool ok = m.type() == 1 + i % 200 && m.size() == 8 + i % 57 && GetU64(m.payload().data()) == i &&
              (m.size() == 8 || m.payload()[8] == (i & 0xff));
    if (!ok && bad++ == 0) ADD_FAILURE() << "message " << i << " out of order or damaged";
  }
  sender.join();
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(p.b->stats().messages_received, kCount);
}

// Both ends send and receive at the same time, each with one sender and one receiver
// thread, with sizes around the buffer sizes.
TEST_P(ChannelTest, ConcurrentSendAndReceiveOnBothSides) {
  auto p = MakePair(kind(), SmallBuffers());
  constexpr uint64_t kCount = 3000;
  auto size_of = [](uint64_t i) { return 8 + (i * 7919) % (100 << 10); };
  auto sender = [&](Channel& ch, uint32_t seed) {
    for (uint64_t i = 0; i < kCount; ++i) {
      auto data = Pattern(size_of(i), seed + static_cast<uint32_t>(i));
      PutU64(data.data(), i);
      if (!ch.send(1, data, 20s).ok()) return;
    }
  };
  std::atomic<uint64_t> errors{0};
  auto receiver = [&](Channel& ch, uint32_t seed) {
    Message m;
    for (uint64_t i = 0; i < kCount; ++i) {
      if (!ch.recv(m, 20s).is_message()) {
        errors += kCount - i;
        return;
      }
      auto data = Pattern(size_of(i), seed + static_cast<uint32_t>(i));
      PutU64(data.data(), i);
      if (!Equal(m.payload(), data)) ++errors;
    }
  };
  std::thread t1(sender, std::ref(*p.a), 100);
  std::thread t2(sender, std::ref(*p.b), 200);
  std::thread t3(receiver, std::ref(*p.b), 100);
  std::thread t4(receiver, std::ref(*p.a), 200);
  t1.join();
  t2.join();
  t3.join();
  t4.join();
  EXPECT_EQ(errors.load(), 0u);
}

// Sends from several threads are whole messages, never interleaved bytes.
TEST_P(ChannelTest, SendsFromSeveralThreadsAreSerialized) {
  auto p = MakePair(kind(), SmallBuffers());
  constexpr int kThreads = 4;
  constexpr uint64_t kPerThread = 2000;
  std::vector<std::thread> senders;
  for (int t = 0; t < kThreads; ++t) {
    senders.emplace_back([&, t] {
      for (uint64_t i = 0; i < kPerThread; ++i) {
        auto data = Pattern(16 + (i * 31 + t) % 20000, static_cast<uint32_t>(t * 1000003 + i));
        data[0] = static_cast<uint8_t>(t);
        PutU64(data.data() + 1, i);
        if (!p.a->send(static_cast<uint8_t>(t + 1), data, 20s).ok()) return;
      }
    });
  }
  std::map<int, uint64_t> next;
  Message m;
  uint64_t bad = 0;
  for (uint64_t n = 0; n < kThreads * kPerThread; ++n) {
    RecvResult r = p.b->recv(m, 20s);
    ASSERT_TRUE(r.is_message()) << r.message;
    int t = m.type() - 1;
    uint64_t i = GetU64(m.payload().data() + 1);
    auto data = Pattern(16 + (i * 31 + t) % 20000, static_cast<uint32_t>(t * 1000003 + i));
    data[0] = static_cast<uint8_t>(t);
    PutU64(data.data() + 1, i);
    if (i != next[t]++ || !Equal(m.payload(), data)) ++bad;
  }
  for (auto& s : senders) s.join();
  EXPECT_EQ(bad, 0u);
}

// While the receiver does not read, the sender blocks (and times out) instead of
// dropping or buffering without bound; once the receiver reads, everything arrives,
// in order, nothing twice.
TEST_P(ChannelTest, FlowControlBlocksTheSenderAndLosesNothing) {
  auto p = MakePair(kind(), SmallBuffers());
  constexpr size_t kSize = 16 << 10;
  constexpr uint64_t kTotal = 2000;  // 32 MiB, far more than any buffer in between
  auto message = [](uint64_t i) {
    auto d = Pattern(kSize, static_cast<uint32_t>(i));
    PutU64(d.data(), i);
    return d;
  };
  // 1. Nobody reads: sends succeed until the buffers are full, then one times out.
  uint64_t next = 0;
  SendResult last;
  for (; next < kTotal; ++next) {
    last = p.a->send(1, message(next), 100ms);
    if (!last.ok()) break;
  }
  ASSERT_TRUE(last.timed_out()) << "after " << next << " messages: " << last.message;
  EXPECT_THAT(last.message, HasSubstr("not reading"));
  EXPECT_LT(next, kTotal / 4);
  EXPECT_GT(p.a->stats().send_waits, 0u);

  // 2. A sender thread with no timeout blocks on the full buffer...
  std::atomic<uint64_t> sent{next};
  std::thread sender([&] {
    for (uint64_t i = sent.load(); i < kTotal; ++i) {
      if (!p.a->send(1, message(i), kNoTimeout).ok()) return;
      sent = i + 1;
    }
  });
  std::this_thread::sleep_for(200ms);
  EXPECT_LT(sent.load(), kTotal);  // the buffer is a few hundred KiB: it cannot be done

  // 3. ...until the receiver reads: then all of it arrives, the timed-out message too.
  Message m;
  uint64_t bad = 0;
  for (uint64_t i = 0; i < kTotal; ++i) {
    RecvResult r = p.b->recv(m, 20s);
    ASSERT_TRUE(r.is_message()) << "message " << i << ": " << r.message;
    if (GetU64(m.payload().data()) != i || !Equal(m.payload(), message(i))) ++bad;
  }
  sender.join();
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(sent.load(), kTotal);
  EXPECT_TRUE(p.b->recv(m, 0ns).timed_out());
}

TEST_P(ChannelTest, RecvTimesOutAndStaysUsable) {
  auto p = MakePair(kind());
  Message m;
  RecvResult r = p.b->recv(m, 50ms);
  EXPECT_TRUE(r.timed_out());
  EXPECT_THAT(r.message, HasSubstr("no message within 50 ms"));
  EXPECT_TRUE(p.b->recv(m, 0ns).timed_out());
  EXPECT_TRUE(p.b->recv(m, -5ms).timed_out());
  ASSERT_TRUE(p.a->send(3, Pattern(100, 1), 1s).ok());
  r = p.b->recv(m, 5s);
  ASSERT_TRUE(r.is_message()) << r.message;
  EXPECT_TRUE(Equal(m.payload(), Pattern(100, 1)));
}

TEST_P(ChannelTest, RefusesBadMessagesAndStaysUsable) {
  auto p = MakePair(kind());
  SendResult s = p.a->send(0, Pattern(10, 1), 1s);
  EXPECT_TRUE(s.error());
  EXPECT_THAT(s.message, HasSubstr("type 0"));
  // 65 MiB from one 1 MiB buffer: over the limit without allocating it.
  auto mib = Pattern(1 << 20, 2);
  std::vector<std::span<const uint8_t>> parts(65, std::span<const uint8_t>(mib));
  s = p.a->send(1, parts, 1s);
  EXPECT_TRUE(s.error());
  EXPECT_THAT(s.message, HasSubstr("exceeds the limit"));
  ASSERT_TRUE(p.a->send(1, mib, 5s).ok());
  Message m;
  ASSERT_TRUE(p.b->recv(m, 5s).is_message());
  EXPECT_TRUE(Equal(m.payload(), mib));
}

TEST_P(ChannelTest, PeerCloseDeliversWhatWasSentThenClosed) {
  auto p = MakePair(kind());
  for (uint8_t i = 1; i <= 3; ++i) ASSERT_TRUE(p.a->send(i, Pattern(1000 * i, i), 1s).ok());
  p.a->close();
  EXPECT_TRUE(p.a->send(1, Pattern(1, 1), 1s).closed());
  Message m;
  EXPECT_TRUE(p.a->recv(m, 1s).closed());
  for (uint8_t i = 1; i <= 3; ++i) {
    RecvResult r = p.b->recv(m, 5s);
    ASSERT_TRUE(r.is_message()) << r.message;
    EXPECT_EQ(m.type(), i);
    EXPECT_TRUE(Equal(m.payload(), Pattern(1000 * i, i)));
  }
  RecvResult r = p.b->recv(m, 5s);
  EXPECT_TRUE(r.closed()) << RecvCodeName(r.code) << ": " << r.message;
  EXPECT_THAT(r.message, HasSubstr("closed"));
  EXPECT_TRUE(p.b->recv(m, 5s).closed());  // sticky
  // Sending to a peer that closed (and is gone) ends with kClosed: at once for shared
  // memory, after the peer's socket is released for TCP.
  p.a.reset();
  SendResult s;
  for (int i = 0; i < 500; ++i) {
    s = p.b->send(1, Pattern(1000, 1), 1s);
    if (!s.ok()) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(s.closed()) << SendCodeName(s.code) << ": " << s.message;
}

TEST_P(ChannelTest, CloseWakesBlockedRecvAndSend) {
  // A receiver blocked on an idle channel with no timeout, woken by close() on its end.
  {
    auto p = MakePair(kind());
    RecvResult r;
    std::thread receiver([&] {
      Message m;
      r = p.b->recv(m, kNoTimeout);
    });
    std::this_thread::sleep_for(50ms);  // let it block (the outcome is the same if not)
    p.b->close();
    receiver.join();
    EXPECT_TRUE(r.closed());
    EXPECT_THAT(r.message, HasSubstr("channel closed"));
  }
  // A sender blocked on a full buffer with no timeout, woken by close() on its end. The
  // peer then gets the messages that were whole before, and kClosed.
  {
    auto p = MakePair(kind(), SmallBuffers());
    auto big = Pattern(16 << 10, 1);
    uint64_t n = 0;
    while (p.a->send(1, big, 50ms).ok()) ++n;
    SendResult s;
    std::thread sender([&] { s = p.a->send(1, big, kNoTimeout); });
    std::this_thread::sleep_for(50ms);
    p.a->close();
    sender.join();
    EXPECT_TRUE(s.closed()) << s.message;
    Message m;
    for (uint64_t i = 0; i < n; ++i) {
      RecvResult r = p.b->recv(m, 5s);
      ASSERT_TRUE(r.is_message()) << "message " << i << " of " << n << ": " << r.message;
      EXPECT_TRUE(Equal(m.payload(), big));
    }
    RecvResult r = p.b->recv(m, 5s);
    EXPECT_TRUE(r.closed()) << RecvCodeName(r.code) << ": " << r.message;
  }
}

// The peer process dies (SIGKILL) in the middle of sending a message larger than any
// buffer between the ends: the receiver gets what was whole before, then kClosed, and
// never the half-written message.
TEST_P(ChannelTest, PeerKilledMidMessageGivesClosed) {
  testutil::TestListener listener(kind());
  const std::string address = listener.address();
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  Child child([&] {
    auto ch = Connect(address, 10s);
    for (uint8_t i = 1; i <= 2; ++i) {
      if (!ch->send(i, Pattern(100, i), 5s).ok()) return 2;
    }
    // Send the huge message from a thread; tell the parent once it is blocked in the
    // middle of it (send_waits counts waits for room, which for a message larger than
    // the buffers only happen after its first bytes went out).
    auto huge = Pattern(60 << 20, 9);
    std::thread sender([&] { (void)ch->send(3, huge, kNoTimeout); });
    while (ch->stats().send_waits == 0) std::this_thread::sleep_for(1ms);
    char c = 'r';
    if (::write(ready[1], &c, 1) != 1) return 3;
    sender.join();  // never returns: the parent kills us
    return 4;
  });
  ::close(ready[1]);
  auto ch = listener->accept(10s);
  ASSERT_NE(ch, nullptr);
  char c;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ::close(ready[0]);
  child.kill(SIGKILL);
  EXPECT_EQ(child.wait(), 128 + SIGKILL);
  Message m;
  for (uint8_t i = 1; i <= 2; ++i) {
    RecvResult r = ch->recv(m, 5s);
    ASSERT_TRUE(r.is_message()) << r.message;
    EXPECT_EQ(m.type(), i);
  }
  RecvResult r = ch->recv(m, 10s);
  EXPECT_TRUE(r.closed()) << RecvCodeName(r.code) << ": " << r.message;
  EXPECT_THAT(r.message, HasSubstr("in the middle of a message"));
  // The sender side notices too.
  SendResult s = ch->send(1, Pattern(10, 1), 5s);
  for (int i = 0; i < 100 && s.ok(); ++i) s = ch->send(1, Pattern(10, 1), 5s);
  EXPECT_TRUE(s.closed()) << s.message;
}

// A peer killed while idle: a receiver blocked with no timeout wakes with kClosed.
TEST_P(ChannelTest, PeerKilledWhileIdleWakesBlockedRecv) {
  testutil::TestListener listener(kind());
  const std::string address = listener.address();
  Child child([&] {
    auto ch = Connect(address, 10s);
    Message m;
    (void)ch->recv(m, kNoTimeout);  // waits forever
    return 0;
  });
  auto ch = listener->accept(10s);
  ASSERT_NE(ch, nullptr);
  RecvResult r;
  std::thread receiver([&] {
    Message m;
    r = ch->recv(m, kNoTimeout);
  });
  std::this_thread::sleep_for(50ms);
  const auto killed = std::chrono::steady_clock::now();
  child.kill(SIGKILL);
  receiver.join();
  const auto noticed = std::chrono::steady_clock::now();
  EXPECT_TRUE(r.closed()) << r.message;
  EXPECT_EQ(child.wait(), 128 + SIGKILL);
  // Informational only (timings are not asserted): how soon the death was noticed.
  std::cerr << "[          ] " << testutil::KindName(kind()) << ": kClosed "
            << std::chrono::duration_cast<std::chrono::microseconds>(noticed - killed).count()
            << " us after SIGKILL: " << r.message << "\n";
}

// RDMA verbs joins where ibv_get_device_list() finds a device (never on our build
// hosts: there the RDMA ring protocol runs over its shared-memory emulation).
std::vector<Kind> Transports() {
  std::vector<Kind> kinds = {Kind::kTcp, Kind::kShm, Kind::kRdmaShm};
  std::string why;
  if (!RdmaDevices(&why).empty()) kinds.push_back(Kind::kRdma);
  return kinds;
}

INSTANTIATE_TEST_SUITE_P(Transports, ChannelTest, ::testing::ValuesIn(Transports()),
                         [](const auto& info) { return testutil::KindTestName(info.param); });

}  // namespace
}  // namespace ftvm::transport
