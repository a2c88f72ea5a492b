// The RDMA channel's ring and credit protocol (transport/rdma_ring.h), run over its
// shared-memory implementation of one-sided writes between fork()ed processes: echo
// across a small ring's wraparound, ordering, byte credit and doorbell credit running
// out (the sender times out, nothing is lost, sending resumes), messages larger than
// the ring, stream positions past the doorbell's 31 bits, a peer killed with SIGKILL, a
// damaged ring byte, a forged acknowledgement; the credit protocol against a scripted
// receiver at the point of a once-lost wake-up; and, on hosts without an RDMA device,
// that the verbs transport says so plainly. The behaviour every transport shares runs
// over "rdma+shm" too, in channel_test.cc (and over "rdma" where a device exists).
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <deque>
#include <functional>
#include <thread>

#include "common/error.h"
#include "common/unique_fd.h"
#include "transport/frame.h"
#include "transport/rdma_ring.h"
#include "transport/rdma_testing.h"
#include "tests/transport/test_util.h"

namespace ftvm::transport {
namespace {

using namespace std::chrono_literals;
using testutil::Child;
using testutil::Equal;
using testutil::GetU64;
using testutil::Kind;
using testutil::Pattern;
using testutil::PutU64;
using testutil::SocketPath;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

ChannelOptions Ring(size_t bytes) {
  ChannelOptions o;
  o.rdma.ring_bytes = bytes;
  return o;
}

// A one-shot signal between a parent and a fork()ed child.
class Gate {
 public:
  Gate() {
    if (::pipe2(fds_, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  }
  ~Gate() {
    ::close(fds_[0]);
    ::close(fds_[1]);
  }
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;
  void open() {
    char c = 'g';
    if (::write(fds_[1], &c, 1) != 1) throw std::runtime_error("gate write failed");
  }
  bool wait() {
    char c = 0;
    return ::read(fds_[0], &c, 1) == 1;
  }

 private:
  int fds_[2] = {-1, -1};
};

// The message with sequence number `i`: its number, then a pattern.
std::vector<uint8_t> Numbered(uint64_t i, size_t size) {
  auto d = Pattern(std::max<size_t>(size, 8), static_cast<uint32_t>(i));
  PutU64(d.data(), i);
  return d;
}

// The child receives `count` numbered messages of `size` bytes (after `gate`, if any),
// checks each, and reports "received, damaged or out of order" as one message back.
int VerifyingReceiver(const std::string& address, uint64_t count, size_t size, Gate* gate) {
  auto ch = Connect(address, 10s);
  if (gate != nullptr && !gate->wait()) return 5;
  Message m;
  uint64_t got = 0;
  uint64_t bad = 0;
  for (; got < count; ++got) {
    RecvResult r = ch->recv(m, 20s);
    if (!r.is_message()) break;
    if (m.type() != 1 + got % 200 || !Equal(m.payload(), Numbered(got, size))) ++bad;
  }
  uint8_t report[16];
  PutU64(report, got);
  PutU64(report + 8, bad);
  if (!ch->send(9, report, 10s).ok()) return 6;
  Message end;
  return ch->recv(end, 20s).closed() ? 0 : 7;  // wait for the parent to finish
}

void ExpectReport(Channel& ch, uint64_t count) {
  Message m;
  RecvResult r = ch.recv(m, 20s);
  ASSERT_TRUE(r.is_message()) << r.message;
  ASSERT_EQ(m.type(), 9);
  ASSERT_EQ(m.size(), 16u);
  EXPECT_EQ(GetU64(m.payload().data()), count) << "messages the child received";
  EXPECT_EQ(GetU64(m.payload().data() + 8), 0u) << "messages damaged or out of order";
}

// An echo child: sends back every message until the channel closes.
int Echo(const std::string& address) {
  auto ch = Connect(address, 10s);
  Message m;
  for (;;) {
    RecvResult r = ch->recv(m, 30s);
    if (r.closed()) return 0;
    if (!r.is_message()) return 2;
    if (!ch->send(m.type(), m.payload(), 30s).ok()) return 3;
  }
}

// Frames are laid across the end of a 4 KiB ring many times over, in both directions.
TEST(RdmaShm, EchoWrapsAroundASmallRingAcrossProcesses) {
  testutil::TestListener listener(Kind::kRdmaShm, Ring(4096));
  const std::string address = listener.address();
  Child child([&] { return Echo(address); });
  auto ch = listener->accept(10s);
  ASSERT_NE(ch, nullptr);
  EXPECT_EQ(ch->kind(), "rdma+shm");
  Message m;
  for (uint32_t i = 0; i < 500; ++i) {
    auto data = Pattern(1 + (i * 97) % 3000, i);
    ASSERT_TRUE(ch->send(static_cast<uint8_t>(1 + i % 255), data, 5s).ok()) << i;
    RecvResult r = ch->recv(m, 5s);
    ASSERT_TRUE(r.is_message()) << i << ": " << r.message;
    ASSERT_EQ(m.type(), 1 + i % 255);
    ASSERT_TRUE(Equal(m.payload(), data)) << i;
  }
  auto ring = test_hooks::RdmaIncomingRing(*ch);
  EXPECT_EQ(ring.data.size(), 4096u);
  EXPECT_GT(ring.head, 100u * 4096) << "the stream went round the ring many times";
  ch->close();
  EXPECT_EQ(child.wait(), 0);
}

TEST(RdmaShm, HundredThousandMessagesFromAnotherProcessStayInOrder) {
  testutil::TestListener listener(Kind::kRdmaShm);
  const std::string address = listener.address();
  constexpr uint64_t kCount = 100000;
  Child child([&] {
    auto ch = Connect(address, 10s);
    for (uint64_t i = 0; i < kCount; ++i) {
      auto data = Numbered(i, 8 + i % 57);
      if (!ch->send(static_cast<uint8_t>(1 + i % 200), data, 10s).ok()) return 2;
    }
    Message m;
    return ch->recv(m, 20s).closed() ? 0 : 3;
  });
  auto ch = listener->accept(10s);
  ASSERT_NE(ch, nullptr);
  Message m;
  uint64_t bad = 0;
  for (uint64_t i = 0; i < kCount; ++i) {
    RecvResult r = ch->recv(m, 10s);
    ASSERT_TRUE(r.is_message()) << "message " << i << ": " << r.message;
    if (m.type() != 1 + i % 200 || !Equal(m.payload(), Numbered(i, 8 + i % 57))) {
      if (bad++ == 0) ADD_FAILURE() << "message " << i << " out of order or damaged";
    }
  }
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(ch->stats().messages_received, kCount);
  ch->close();
  EXPECT_EQ(child.wait(), 0);
}

// The receiving process does not read: the ring fills, the sender times out with
// kTimeout (not an error, nothing half sent), and once the receiver reads, every
// message arrives, the timed-out one included, in order, nothing twice.
TEST(RdmaShm, ByteCreditExhaustedTimesOutLosesNothingAndResumes) {
  testutil::TestListener listener(Kind::kRdmaShm, Ring(64 << 10));
  const std::string address = listener.address();
  constexpr uint64_t kTotal = 2000;  // 32 MiB through a 64 KiB ring
  constexpr size_t kSize = 16 << 10;
  Gate go;
  Child child([&] { return VerifyingReceiver(address, kTotal, kSize, &go); });
  auto ch = listener->accept(10s);
  ASSERT_NE(ch, nullptr);
  uint64_t next = 0;
  SendResult last;
  for (; next < kTotal; ++next) {
    last = ch->send(static_cast<uint8_t>(1 + next % 200), Numbered(next, kSize), 100ms);
    if (!last.ok()) break;
  }
  ASSERT_TRUE(last.timed_out()) << "after " << next << " messages: " << last.message;
  EXPECT_THAT(last.message, HasSubstr("peer not reading: no room for a message of 16384 bytes"));
  // 64 KiB hold three frames of 16 KiB + 12 bytes of framing, not four.
  EXPECT_EQ(next, 3u);
  EXPECT_GT(ch->stats().send_waits, 0u);
  EXPECT_TRUE(ch->send(1, Numbered(next, kSize), 0ns).timed_out()) << "still full, still usable";

  go.open();
  for (uint64_t i = next; i < kTotal; ++i) {
    SendResult s = ch->send(static_cast<uint8_t>(1 + i % 200), Numbered(i, kSize), 20s);
    ASSERT_TRUE(s.ok()) << "message " << i << ": " << s.message;
  }
  ExpectReport(*ch, kTotal);
  ch->close();
  EXPECT_EQ(child.wait(), 0);
}

// Tiny messages run out of doorbells (each uses up one of the receiver's posted
// receives until it is taken) long before they run out of ring: the sender stops at
// kMaxDoorbells unacknowledged doorbells, times out, and resumes once the receiver
// reads.
TEST(RdmaShm, DoorbellCreditExhaustedTimesOutLosesNothingAndResumes) {
  testutil::TestListener listener(Kind::kRdmaShm);  // 8 MiB: room for ~400000 such frames
  const std::string address = listener.address();
  constexpr uint64_t kTotal = 5000;
  Gate go;
  Child child([&] { return VerifyingReceiver(address, kTotal, 8, &go); });
  auto ch = listener->accept(10s);
  ASSERT_NE(ch, nullptr);
  uint64_t next = 0;
  SendResult last;
  for (; next < kTotal; ++next) {
    last = ch->send(static_cast<uint8_t>(1 + next % 200), Numbered(next, 8), 50ms);
    if (!last.ok()) break;
  }
  ASSERT_TRUE(last.timed_out()) << "after " << next << " messages: " << last.message;
  EXPECT_EQ(next, rdma::kMaxDoorbells);
  go.open();
  for (uint64_t i = next; i < kTotal; ++i) {
    SendResult s = ch->send(static_cast<uint8_t>(1 + i % 200), Numbered(i, 8), 20s);
    ASSERT_TRUE(s.ok()) << "message " << i << ": " << s.message;
  }
  ExpectReport(*ch, kTotal);
  ch->close();
  EXPECT_EQ(child.wait(), 0);
}

// Messages many times the ring go through in pieces, both ways between processes.
TEST(RdmaShm, MessagesLargerThanTheRingAreStreamed) {
  testutil::TestListener listener(Kind::kRdmaShm, Ring(64 << 10));
  const std::string address = listener.address();
  Child child([&] { return Echo(address); });
  auto ch = listener->accept(10s);
  ASSERT_NE(ch, nullptr);
  Message m;
  for (size_t size : {size_t{65536 - 12}, size_t{65536}, size_t{5} << 20, size_t{17} << 20}) {
    SCOPED_TRACE("size " + std::to_string(size));
    auto data = Pattern(size, static_cast<uint32_t>(size));
    std::span<const uint8_t> d(data);
    std::span<const uint8_t> parts[] = {d.subspan(0, size / 2), d.subspan(size / 2)};
    ASSERT_TRUE(ch->send(4, parts, 20s).ok());
    RecvResult r = ch->recv(m, 20s);
    ASSERT_TRUE(r.is_message()) << r.message;
    EXPECT_EQ(m.type(), 4);
    EXPECT_TRUE(Equal(m.payload(), data));
  }
  ch->close();
  EXPECT_EQ(child.wait(), 0);
}

// The doorbell carries only the low 31 bits of the stream position: past 2 GiB the
// receiver must rebuild the full position from what it knows. 2.2 GB go one way; every
// message carries its number at both ends (the CRC guards the bytes in between).
TEST(RdmaShm, StreamPastTwoGiBRebuildsPositionsFromTheDoorbell) {
  testutil::TestListener listener(Kind::kRdmaShm, Ring(1 << 20));
  const std::string address = listener.address();
  constexpr size_t kSize = 256 << 10;
  constexpr uint64_t kCount = ((uint64_t{1} << 31) / kSize) + 64;
  Child child([&] {
    auto ch = Connect(address, 10s);
    std::vector<uint8_t> data(kSize, 0x5a);
    for (uint64_t i = 0; i < kCount; ++i) {
      PutU64(data.data(), i);
      PutU64(data.data() + kSize - 8, ~i);
      if (!ch->send(2, data, 20s).ok()) return 2;
    }
    Message m;
    return ch->recv(m, 20s).closed() ? 0 : 3;
  });
  auto ch = listener->accept(10s);
  ASSERT_NE(ch, nullptr);
  Message m;
  uint64_t bad = 0;
  for (uint64_t i = 0; i < kCount; ++i) {
    RecvResult r = ch->recv(m, 20s);
    ASSERT_TRUE(r.is_message()) << "message " << i << ": " << r.message;
    if (m.size() != kSize || GetU64(m.payload().data()) != i || GetU64(m.payload().data() + kSize - 8) != ~i) {
      if (bad++ == 0) ADD_FAILURE() << "message " << i << " out of order or damaged";
    }
  }
  EXPECT_EQ(bad, 0u);
  EXPECT_GT(test_hooks::RdmaIncomingRing(*ch).head, uint64_t{1} << 31);
  ch->close();
  EXPECT_EQ(child.wait(), 0);
}

// SIGKILL of the peer wakes both a receive and a send blocked with no timeout (the
// send on a full ring), with kClosed; what was whole before is delivered first.
TEST(RdmaShm, PeerKilledWakesBlockedSendAndRecvWithClosed) {
  testutil::TestListener listener(Kind::kRdmaShm, Ring(64 << 10));
  const std::string address = listener.address();
  Gate sent;
  Child child([&] {
    auto ch = Connect(address, 10s);
    for (uint8_t i = 1; i <= 2; ++i) {
      if (!ch->send(i, Pattern(100, i), 5s).ok()) return 2;
    }
    sent.open();
    ::pause();  // never reads: the parent's sends fill the ring
    return 3;
  });
  auto ch = listener->accept(10s);
  ASSERT_NE(ch, nullptr);
  ASSERT_TRUE(sent.wait());
  Message m;
  for (uint8_t i = 1; i <= 2; ++i) {
    RecvResult r = ch->recv(m, 5s);
    ASSERT_TRUE(r.is_message()) << r.message;
    EXPECT_EQ(m.type(), i);
  }
  auto block = Pattern(16 << 10, 1);
  while (ch->send(1, block, 50ms).ok()) {
  }
  std::atomic<int> blocked{0};
  SendResult s;
  RecvResult r;
  std::thread sender([&] {
    ++blocked;
    s = ch->send(1, block, kNoTimeout);
  });
  std::thread receiver([&] {
    ++blocked;
    Message msg;
    r = ch->recv(msg, kNoTimeout);
  });
  while (blocked.load() < 2) std::this_thread::yield();
  std::this_thread::sleep_for(50ms);  // let both sleep (the outcome is the same if not)
  child.kill(SIGKILL);
  sender.join();
  receiver.join();
  EXPECT_EQ(child.wait(), 128 + SIGKILL);
  EXPECT_TRUE(s.closed()) << SendCodeName(s.code) << ": " << s.message;
  EXPECT_THAT(s.message, HasSubstr("peer is gone"));
  EXPECT_TRUE(r.closed()) << RecvCodeName(r.code) << ": " << r.message;
  EXPECT_THAT(r.message, HasSubstr("peer is gone"));
  EXPECT_TRUE(ch->send(1, block, 0ns).closed()) << "sticky";
}

// A flipped bit in the ring memory the peer wrote into: the message before it is
// delivered, then kError naming the stream offset of the damaged message, for good.
TEST(RdmaShm, CorruptedRingByteGivesErrorNamingTheOffset) {
  testutil::TestListener listener(Kind::kRdmaShm);
  const std::string address = listener.address();
  Gate sent;
  Child child([&] {
    auto ch = Connect(address, 10s);
    if (!ch->send(1, Pattern(300, 1), 1s).ok() || !ch->send(2, Pattern(5000, 2), 1s).ok() ||
        !ch->send(3, Pattern(10, 3), 1s).ok()) {
      return 2;
    }
    sent.open();
    Message m;
    return ch->recv(m, 20s).closed() ? 0 : 3;
  });
  auto ch = listener->accept(10s);
  ASSERT_NE(ch, nullptr);
  ASSERT_TRUE(sent.wait());
  auto ring = test_hooks::RdmaIncomingRing(*ch);
  ASSERT_EQ(ring.head, 0u);
  // Payload byte 4321 of the second message (its frame starts at 300 + 12).
  ring.data[(ring.head + 312 + 8 + 4321) % ring.data.size()] ^= 0x08;
  Message m;
  RecvResult r = ch->recv(m, 5s);
  ASSERT_TRUE(r.is_message()) << r.message;
  EXPECT_TRUE(Equal(m.payload(), Pattern(300, 1)));
  r = ch->recv(m, 5s);
  ASSERT_TRUE(r.error()) << RecvCodeName(r.code) << ": " << r.message;
  EXPECT_THAT(r.message, HasSubstr("bad CRC in message of 5000 bytes at stream offset 312"));
  EXPECT_THAT(r.message, HasSubstr("rdma+shm:/"));
  EXPECT_TRUE(r.damaged);
  EXPECT_TRUE(ch->recv(m, 1s).error()) << "sticky: message 3 is never delivered";
  EXPECT_EQ(ch->stats().messages_received, 1u);
  ch->close();
  EXPECT_EQ(child.wait(), 0);
}

// The acknowledgement area is memory the peer writes into: a consumed position beyond
// what was sent is refused (kError, for good), never taken as credit to overwrite
// unread bytes.
TEST(RdmaShm, ImpossibleAcknowledgementIsAnError) {
  auto p = testutil::MakePair(Kind::kRdmaShm, Ring(64 << 10));
  ASSERT_TRUE(p.a->send(1, Pattern(100, 1), 1s).ok());
  auto ack = test_hooks::RdmaOutgoingAckArea(*p.a);
  PutU64(ack.data(), uint64_t{1} << 40);
  SendResult s = p.a->send(1, Pattern(100, 2), 1s);
  ASSERT_TRUE(s.error()) << SendCodeName(s.code) << ": " << s.message;
  EXPECT_THAT(s.message, HasSubstr("acknowledgement area corrupted (consumed position 1099511627776 of 112 "
                                   "bytes written"));
  EXPECT_TRUE(p.a->send(1, Pattern(100, 3), 1s).error()) << "sticky";
  Message m;
  RecvResult r = p.b->recv(m, 1s);
  ASSERT_TRUE(r.is_message()) << r.message;  // what was sent before is intact
  EXPECT_TRUE(Equal(m.payload(), Pattern(100, 1)));
}

// Timing out in the middle of a message larger than the ring ends the stream.
TEST(RdmaShm, TimeoutInTheMiddleOfAStreamedMessageClosesTheChannel) {
  auto p = testutil::MakePair(Kind::kRdmaShm, Ring(64 << 10));
  SendResult s = p.a->send(4, Pattern(1 << 20, 1), 100ms);
  ASSERT_TRUE(s.error()) << SendCodeName(s.code) << ": " << s.message;
  EXPECT_THAT(s.message, HasSubstr("in the middle of a message"));
  EXPECT_TRUE(p.a->send(1, Pattern(1, 1), 100ms).closed());
  Message m;
  RecvResult r = p.b->recv(m, 5s);
  ASSERT_TRUE(r.closed()) << r.message;
  EXPECT_THAT(r.message, HasSubstr("peer closed the channel in the middle of a message"));
}

// A scripted peer for the sending direction of a ring channel (MakeRingChannel over
// links of the test's own): it plays the receiver's part of the credit protocol at
// exact points, so that an interleaving seen only rarely under TSan happens every time.
// Its doorbell queue never signals notify_fd(): a sender that goes to sleep stays
// asleep until its deadline.
class ScriptedSendLink final : public rdma::OneSidedLink {
 public:
  // `on_request(n)` runs when the sender rings its n-th credit request (1-based),
  // `on_arm(n)` when it arms for the n-th time; both may ack() and ring().
  std::function<void(int)> on_request = [](int) {};
  std::function<void(int)> on_arm = [](int) {};

  ScriptedSendLink(size_t ring_bytes) : staging_(ring_bytes), efd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}
  std::string describe() const override { return "scripted receiver"; }
  std::span<uint8_t> exposed() override { return ack_; }
  std::span<uint8_t> staging() override { return staging_; }
  std::string write(size_t, size_t, size_t, std::optional<uint32_t> imm) override {
    const bool request = imm && (*imm & rdma::kImmControl) != 0 &&
                         ((*imm >> 28) & 7) == static_cast<uint32_t>(rdma::Control::kCreditRequest);
    if (request) on_request(++requests);
    return {};
  }
  rdma::PollResult poll(std::span<uint32_t> out) override {
    rdma::PollResult r;
    for (; r.count < out.size() && !queue_.empty(); ++r.count) {
      out[r.count] = queue_.front();
      queue_.pop_front();
    }
    return r;
  }
  int notify_fd() const override { return efd_.get(); }
  std::string arm() override {
    on_arm(++arms);
    return {};
  }
  void acknowledge_notification() override {}

  // What the receiver writes into the ack area, and the doorbells it rings.
  void ack(uint64_t head, uint64_t doorbells_taken) {
    PutU64(ack_.data(), head);
    PutU64(ack_.data() + 8, doorbells_taken);
  }
  void ring(rdma::Control c) { queue_.push_back(rdma::ControlImm(c, 0)); }

  int requests = 0;
  int arms = 0;

 private:
  alignas(8) std::array<uint8_t, rdma::kAckBytes> ack_{};
  std::vector<uint8_t> staging_;
  std::deque<uint32_t> queue_;
  UniqueFd efd_;
};

// The receiving direction of that channel: nothing ever arrives.
class IdleRecvLink final : public rdma::OneSidedLink {
 public:
  IdleRecvLink(size_t ring_bytes) : ring_(ring_bytes), efd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}
  std::string describe() const override { return "idle"; }
  std::span<uint8_t> exposed() override { return ring_; }
  std::span<uint8_t> staging() override { return ack_; }
  std::string write(size_t, size_t, size_t, std::optional<uint32_t>) override { return {}; }
  rdma::PollResult poll(std::span<uint32_t>) override { return {}; }
  int notify_fd() const override { return efd_.get(); }
  std::string arm() override { return {}; }
  void acknowledge_notification() override {}

 private:
  std::vector<uint8_t> ring_;
  std::array<uint8_t, rdma::kAckBytes> ack_{};
  UniqueFd efd_;
};

// The lost wake-up behind rare 20 s stalls under TSan: a waiting sender arms its
// completion channel and looks once more; if that look takes the kCreditProgress that
// answers its credit request but the credit is still short, the receiver no longer
// counts it as waiting (its next acknowledgements come without a doorbell). The
// sender must ring a new request instead of going to sleep on the old one.
TEST(RdmaRing, ProgressSeenJustBeforeSleepingLeadsToANewRequest) {
  constexpr size_t kRing = rdma::kMinRingBytes;
  constexpr size_t kPayload = 3000;  // two frames do not fit in the ring
  constexpr uint64_t kFrame = kPayload + kFrameOverhead;
  auto out = std::make_unique<ScriptedSendLink>(kRing);
  ScriptedSendLink& link = *out;
  // Request 1: answered at once with nothing freed yet (doorbells taken: the first
  // frame's and the request). Then, just as the sender arms, the receiver has read
  // 1000 bytes and sends its progress: still too little room for the second frame.
  link.on_request = [&](int n) {
    if (n == 1) {
      link.ack(0, 2);
      link.ring(rdma::Control::kCreditReply);
    } else {  // request 2: answered with all of the ring free
      link.ack(kFrame, n + 1);
      link.ring(rdma::Control::kCreditReply);
    }
  };
  link.on_arm = [&](int n) {
    if (n == 1) {
      link.ack(1000, 2);
      link.ring(rdma::Control::kCreditProgress);
    }
  };
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd other_end(sv[1]);
  rdma::RingChannelParts parts;
  parts.kind = "rdma+shm";
  parts.peer = "rdma+shm:scripted";
  parts.out = std::move(out);
  parts.in = std::make_unique<IdleRecvLink>(kRing);
  parts.setup_socket = UniqueFd(sv[0]);
  parts.ring_bytes = kRing;
  parts.spin = 0ns;
  auto ch = rdma::MakeRingChannel(std::move(parts));

  ASSERT_TRUE(ch->send(1, Pattern(kPayload, 1), 2s).ok());
  SendResult s = ch->send(1, Pattern(kPayload, 2), 2s);
  EXPECT_TRUE(s.ok()) << SendCodeName(s.code) << ": " << s.message;
  EXPECT_EQ(link.requests, 2) << "a new credit request after the progress";
  EXPECT_EQ(ch->stats().messages_sent, 2u);
}

TEST(RdmaShm, RefusesOtherTransportsAndBadRingSizes) {
  SocketPath path("mismatch");
  ShmListener shm(path.str());
  std::thread acceptor([&] { (void)shm.accept(500ms); });  // drops the stranger, times out
  EXPECT_THAT([&] { RdmaShmConnect(path.str(), 2s); },
              ThrowsMessage<Error>(HasSubstr("peer is a shm channel, this side is rdma+shm")));
  acceptor.join();
  SocketPath other("ring");
  RdmaOptions o;
  o.ring_bytes = 3 << 20;
  EXPECT_THAT([&] { RdmaShmListen(other.str(), o); },
              ThrowsMessage<Error>(HasSubstr("ring size 3145728 is not a power of two")));
}

// On hosts without an RDMA device (ours: no InfiniBand in the kernel), the verbs
// transport fails at set-up with a message that says so, naming the address.
TEST(RdmaVerbs, NoDeviceIsReportedPlainly) {
  std::string why;
  std::vector<std::string> devices = RdmaDevices(&why);
  if (!devices.empty()) GTEST_SKIP() << "RDMA device " << devices[0] << " present: ChannelTest runs over it";
  EXPECT_THAT(why, HasSubstr("no RDMA device (ibv_get_device_list found none"));
  EXPECT_THAT([] { Listen("rdma:127.0.0.1:0"); },
              ThrowsMessage<Error>(AllOf(HasSubstr("rdma listen on 127.0.0.1:0: "),
                                         HasSubstr("no RDMA device (ibv_get_device_list found none"))));
  EXPECT_THAT([] { Connect("rdma:127.0.0.1:7000", 1s); },
              ThrowsMessage<Error>(AllOf(HasSubstr("rdma connect to 127.0.0.1:7000: "),
                                         HasSubstr("no RDMA device (ibv_get_device_list found none"))));
}

}  // namespace
}  // namespace ftvm::transport
