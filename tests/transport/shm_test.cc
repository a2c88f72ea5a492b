// The shared-memory transport specifically: damage written into the ring memory
// itself, rings smaller than the messages, and the setup socket (nothing listening,
// stale and live socket files, bad options).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <fstream>

#include "common/error.h"
#include "common/unique_fd.h"
#include "transport/frame.h"
#include "transport/shm_testing.h"
#include "tests/transport/test_util.h"

namespace ftvm::transport {
namespace {

using namespace std::chrono_literals;
using testutil::Equal;
using testutil::Kind;
using testutil::MakePair;
using testutil::Pattern;
using testutil::SocketPath;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

// Writes `bytes` into the ring at stream position `pos`, wrapping like the channel.
void WriteRing(test_hooks::ShmRingView ring, uint64_t pos, std::span<const uint8_t> bytes) {
  for (size_t i = 0; i < bytes.size(); ++i) ring.data[(pos + i) % ring.data.size()] = bytes[i];
}

TEST(Shm, CorruptedRingByteGivesBadCrcNamingOffset) {
  auto p = MakePair(Kind::kShm);
  ASSERT_TRUE(p.a->send(1, Pattern(300, 1), 1s).ok());
  ASSERT_TRUE(p.a->send(2, Pattern(5000, 2), 1s).ok());
  ASSERT_TRUE(p.a->send(3, Pattern(10, 3), 1s).ok());
  auto ring = test_hooks::ShmIncomingRing(*p.b);
  ASSERT_EQ(ring.tail - ring.head, 300 + 5000 + 10 + 3 * kFrameOverhead);
  ring.data[(ring.head + 312 + 8 + 4321) % ring.data.size()] ^= 0x08;
  Message m;
  RecvResult r = p.b->recv(m, 1s);
  ASSERT_TRUE(r.is_message()) << r.message;
  EXPECT_TRUE(Equal(m.payload(), Pattern(300, 1)));
  r = p.b->recv(m, 1s);
  ASSERT_TRUE(r.error()) << RecvCodeName(r.code) << ": " << r.message;
  EXPECT_THAT(r.message, HasSubstr("bad CRC in message of 5000 bytes at stream offset 312"));
  EXPECT_THAT(r.message, HasSubstr("shm:/"));
  EXPECT_TRUE(p.b->recv(m, 1s).error());  // sticky; message 3 is never delivered
  EXPECT_EQ(p.b->stats().messages_received, 1u);
}

TEST(Shm, ForgedOversizedLengthGivesError) {
  auto p = MakePair(Kind::kShm);
  ASSERT_TRUE(p.a->send(1, Pattern(64, 1), 1s).ok());
  auto ring = test_hooks::ShmIncomingRing(*p.b);
  // A well-formed header (its check matches) announcing more than the limit.
  WriteRing(ring, ring.head, EncodeFrameHeader(1, static_cast<uint32_t>(kMaxMessageBytes + 4096)));
  Message m;
  RecvResult r = p.b->recv(m, 1s);
  ASSERT_TRUE(r.error()) << r.message;
  EXPECT_THAT(r.message, HasSubstr("message of 67112960 bytes at stream offset 0 exceeds the limit"));
}

TEST(Shm, DamagedHeaderIsReportedAtOnce) {
  auto p = MakePair(Kind::kShm);
  ASSERT_TRUE(p.a->send(1, Pattern(64, 1), 1s).ok());
  auto ring = test_hooks::ShmIncomingRing(*p.b);
  ring.data[(ring.head + 1) % ring.data.size()] ^= 0x01;  // length + 256
  Message m;
  RecvResult r = p.b->recv(m, 1s);
  ASSERT_TRUE(r.error()) << r.message;
  EXPECT_THAT(r.message, HasSubstr("bad CRC in message header at stream offset 0"));
}

// Frames are laid across the ring's end: positions run on, bytes wrap around.
TEST(Shm, MessagesWrapAroundASmallRing) {
  ChannelOptions o;
  o.shm.ring_bytes = 4096;
  auto p = MakePair(Kind::kShm, o);
  Message m;
  for (uint32_t i = 0; i < 500; ++i) {
    auto data = Pattern(1 + (i * 97) % 3000, i);
    ASSERT_TRUE(p.a->send(1, data, 1s).ok()) << i;
    RecvResult r = p.b->recv(m, 1s);
    ASSERT_TRUE(r.is_message()) << i << ": " << r.message;
    ASSERT_TRUE(Equal(m.payload(), data)) << i;
  }
  auto ring = test_hooks::ShmIncomingRing(*p.b);
  EXPECT_GT(ring.head, 100u * 4096);
  EXPECT_EQ(ring.head, ring.tail);
}

// A message many times the ring goes through in pieces; the receiver never holds a
// partial one as a message.
TEST(Shm, MessageLargerThanTheRingIsStreamed) {
  ChannelOptions o;
  o.shm.ring_bytes = 64 << 10;
  auto p = MakePair(Kind::kShm, o);
  auto big = Pattern(5 << 20, 11);
  SendResult s;
  std::thread sender([&] { s = p.a->send(4, big, 10s); });
  Message m;
  RecvResult r = p.b->recv(m, 10s);
  sender.join();
  ASSERT_TRUE(s.ok()) << s.message;
  ASSERT_TRUE(r.is_message()) << r.message;
  EXPECT_TRUE(Equal(m.payload(), big));
}

// A sender that times out in the middle of a message larger than the ring cannot
// continue the stream: kError, channel closed, and the peer sees kClosed.
TEST(Shm, TimeoutInTheMiddleOfAStreamedMessageClosesTheChannel) {
  ChannelOptions o;
  o.shm.ring_bytes = 64 << 10;
  auto p = MakePair(Kind::kShm, o);
  SendResult s = p.a->send(4, Pattern(1 << 20, 1), 100ms);
  ASSERT_TRUE(s.error()) << SendCodeName(s.code) << ": " << s.message;
  EXPECT_THAT(s.message, HasSubstr("in the middle of a message"));
  EXPECT_TRUE(p.a->send(1, Pattern(1, 1), 100ms).closed());
  Message m;
  RecvResult r = p.b->recv(m, 5s);
  ASSERT_TRUE(r.closed()) << r.message;
  EXPECT_THAT(r.message, HasSubstr("peer closed the channel in the middle of a message"));
}

TEST(Shm, ConnectToNothingNamesThePath) {
  SocketPath path("none");
  EXPECT_THAT([&] { ShmConnect(path.str(), 1s); },
              ThrowsMessage<Error>(HasSubstr("shm connect to " + path.str() + ": No such file or directory")));
  EXPECT_THAT([&] { Connect("shm:" + path.str(), 1s); }, ThrowsMessage<Error>(HasSubstr(path.str())));
}

TEST(Shm, ConnectToASocketNobodyAcceptsOnTimesOut) {
  SocketPath path("mute");
  UniqueFd srv(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strcpy(a.sun_path, path.str().c_str());
  ASSERT_EQ(::bind(srv.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(srv.get(), 1), 0);
  EXPECT_THAT([&] { ShmConnect(path.str(), 100ms); },
              ThrowsMessage<Error>(HasSubstr("no setup message within 100 ms")));
}

TEST(Shm, StaleSocketFileIsReplacedLiveOneIsNot) {
  SocketPath path("stale");
  {
    // A socket file whose listener is gone.
    UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, path.str().c_str());
    ASSERT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  }
  struct stat st {};
  ASSERT_EQ(::stat(path.str().c_str(), &st), 0);
  {
    ShmListener l(path.str());
    EXPECT_THAT([&] { ShmListener again(path.str()); },
                ThrowsMessage<Error>(HasSubstr("another listener is live on this socket")));
    EXPECT_EQ(l.address(), "shm:" + path.str());
  }
  EXPECT_NE(::stat(path.str().c_str(), &st), 0) << "the listener removes its socket file";
}

TEST(Shm, RefusesPathsThatAreNotSocketsAndBadRingSizes) {
  SocketPath path("file");
  { std::ofstream(path.str()) << "data"; }
  EXPECT_THAT([&] { ShmListener l(path.str()); }, ThrowsMessage<Error>(HasSubstr("exists and is not a socket")));
  SocketPath other("ring");
  ShmOptions o;
  o.ring_bytes = 3 << 20;
  EXPECT_THAT([&] { ShmListener l(other.str(), o); },
              ThrowsMessage<Error>(HasSubstr("ring size 3145728 is not a power of two")));
  EXPECT_THAT([&] { ShmListener l("/tmp/" + std::string(200, 'x')); },
              ThrowsMessage<Error>(HasSubstr("Unix socket path must be")));
}

TEST(Shm, SendToAClosedPeerIsClosedAtOnce) {
  auto p = MakePair(Kind::kShm);
  p.b->close();
  SendResult s = p.a->send(1, Pattern(10, 1), 1s);
  EXPECT_TRUE(s.closed());
  EXPECT_THAT(s.message, HasSubstr("peer closed the channel"));
}

}  // namespace
}  // namespace ftvm::transport
