// The TCP transport against hand-made peers: a raw socket that speaks the hello and
// then writes damaged, oversized or cut-short frames; servers that are not ftvm
// channels; addresses with nothing listening.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "common/error.h"
#include "common/unique_fd.h"
#include "eventlog/format.h"
#include "transport/frame.h"
#include "tests/transport/test_util.h"

namespace ftvm::transport {
namespace {

using namespace std::chrono_literals;
using testutil::Equal;
using testutil::Pattern;
using ::testing::HasSubstr;

UniqueFd RawConnect(uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw SysError("raw connect");
  return fd;
}

void WriteAll(int fd, std::span<const uint8_t> bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n <= 0) throw SysError("raw write");
    bytes = bytes.subspan(static_cast<size_t>(n));
  }
}

// A raw peer that has completed the handshake with an accepted channel.
struct RawPeer {
  TcpListener listener{"127.0.0.1", 0};
  UniqueFd raw;
  std::unique_ptr<Channel> ch;

  RawPeer() {
    raw = RawConnect(listener.port());
    WriteAll(raw.get(), EncodeHello(HelloKind::kTcp));  // sent before accept() reads it
    ch = listener.accept(5s);
    if (!ch) throw std::runtime_error("accept timed out");
    uint8_t hello[kHelloBytes];
    if (::recv(raw.get(), hello, sizeof hello, MSG_WAITALL) != static_cast<ssize_t>(sizeof hello)) {
      throw std::runtime_error("no hello from the listener");
    }
  }
};

TEST(Tcp, CorruptedByteGivesBadCrcNamingOffset) {
  RawPeer p;
  auto good = EncodeFrame(1, Pattern(300, 1));
  auto bad = EncodeFrame(2, Pattern(5000, 2));
  bad[8 + 1234] ^= 0x01;
  WriteAll(p.raw.get(), good);
  WriteAll(p.raw.get(), bad);
  WriteAll(p.raw.get(), EncodeFrame(3, Pattern(10, 3)));  // never delivered
  Message m;
  RecvResult r = p.ch->recv(m, 5s);
  ASSERT_TRUE(r.is_message()) << r.message;
  EXPECT_TRUE(Equal(m.payload(), Pattern(300, 1)));
  r = p.ch->recv(m, 5s);
  ASSERT_TRUE(r.error()) << RecvCodeName(r.code) << ": " << r.message;
  EXPECT_THAT(r.message, HasSubstr("bad CRC in message of 5000 bytes at stream offset 312"));
  EXPECT_THAT(r.message, HasSubstr("tcp:127.0.0.1:"));
  EXPECT_TRUE(r.damaged) << "the peer sent it: a broken stream, not a lost peer";
  r = p.ch->recv(m, 5s);
  EXPECT_TRUE(r.error() && r.damaged);  // sticky: the stream cannot be trusted
  EXPECT_EQ(p.ch->stats().messages_received, 1u);
}

TEST(Tcp, CorruptedHeaderIsReportedAtOnce) {
  RawPeer p;
  auto f = EncodeFrame(1, Pattern(1000, 1));
  f[2] ^= 0x10;  // the length grows by 1 MiB: without the header check recv would wait for it
  WriteAll(p.raw.get(), f);
  Message m;
  RecvResult r = p.ch->recv(m, 5s);
  ASSERT_TRUE(r.error()) << r.message;
  EXPECT_THAT(r.message, HasSubstr("bad CRC in message header at stream offset 0"));
  EXPECT_TRUE(r.damaged);
}

TEST(Tcp, OversizedLengthGivesError) {
  RawPeer p;
  WriteAll(p.raw.get(), EncodeFrameHeader(5, 0xffffffffu));
  Message m;
  RecvResult r = p.ch->recv(m, 5s);
  ASSERT_TRUE(r.error()) << r.message;
  EXPECT_THAT(r.message, HasSubstr("message of 4294967295 bytes at stream offset 0 exceeds the limit"));
}

TEST(Tcp, RecvTimeoutInTheMiddleOfAMessageKeepsWhatArrived) {
  RawPeer p;
  auto payload = Pattern(200000, 4);
  auto f = EncodeFrame(4, payload);
  WriteAll(p.raw.get(), std::span<const uint8_t>(f).first(70000));
  Message m;
  EXPECT_TRUE(p.ch->recv(m, 100ms).timed_out());
  WriteAll(p.raw.get(), std::span<const uint8_t>(f).subspan(70000));
  RecvResult r = p.ch->recv(m, 5s);
  ASSERT_TRUE(r.is_message()) << r.message;
  EXPECT_TRUE(Equal(m.payload(), payload));
}

TEST(Tcp, PeerGoneInTheMiddleOfAMessageGivesClosed) {
  RawPeer p;
  WriteAll(p.raw.get(), EncodeFrame(1, Pattern(10, 1)));
  auto f = EncodeFrame(2, Pattern(50000, 2));
  WriteAll(p.raw.get(), std::span<const uint8_t>(f).first(20000));
  p.raw.reset();
  Message m;
  ASSERT_TRUE(p.ch->recv(m, 5s).is_message());
  RecvResult r = p.ch->recv(m, 5s);
  ASSERT_TRUE(r.closed()) << r.message;
  EXPECT_FALSE(r.damaged) << "a frame cut short by a dying peer is the peer's end, not damage";
  EXPECT_THAT(r.message, HasSubstr("peer closed the connection in the middle of a message (19992 of 50000"));
}

TEST(Tcp, ConnectToNothingNamesTheAddress) {
  uint16_t port;
  {
    TcpListener l("127.0.0.1", 0);
    port = l.port();
  }
  try {
    TcpConnect("127.0.0.1", port, 2s);
    FAIL() << "connected to a closed port";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("tcp connect to 127.0.0.1:" + std::to_string(port)));
    EXPECT_THAT(e.what(), HasSubstr("Connection refused"));
  }
  try {
    Connect("tcp:127.0.0.1:" + std::to_string(port), 2s);
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("127.0.0.1:" + std::to_string(port)));
  }
  EXPECT_THAT([] { TcpConnect("no-such-host.invalid", 7000, 2s); },
              ::testing::ThrowsMessage<Error>(HasSubstr("no-such-host.invalid:7000: cannot resolve")));
}

TEST(Tcp, ConnectToSomethingElseFailsTheHandshake) {
  // A server that answers like a web server.
  UniqueFd srv(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(srv.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(srv.get(), 1), 0);
  socklen_t len = sizeof a;
  ::getsockname(srv.get(), reinterpret_cast<sockaddr*>(&a), &len);
  const uint16_t port = ntohs(a.sin_port);
  std::thread server([&] {
    UniqueFd c(::accept(srv.get(), nullptr, nullptr));
    const char reply[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
    (void)::send(c.get(), reply, sizeof reply - 1, MSG_NOSIGNAL);
    char buf[64];
    (void)::recv(c.get(), buf, sizeof buf, 0);
  });
  EXPECT_THAT([&] { TcpConnect("127.0.0.1", port, 2s); },
              ::testing::ThrowsMessage<Error>(HasSubstr("not an ftvm channel (it sent \"HTTP/1.1\"")));
  server.join();
}

TEST(Tcp, ListenerDropsABadClientAndAcceptsTheNext) {
  TcpListener l("127.0.0.1", 0);
  UniqueFd junk = RawConnect(l.port());
  const char text[] = "GET / HTTP/1.0\r\n\r\n";
  WriteAll(junk.get(), {reinterpret_cast<const uint8_t*>(text), sizeof text - 1});
  EXPECT_EQ(l.accept(300ms), nullptr);  // handshake failed: logged, dropped
  std::unique_ptr<Channel> b;
  std::thread t([&] { b = TcpConnect("127.0.0.1", l.port(), 5s); });
  auto a = l.accept(5s);
  t.join();
  ASSERT_NE(a, nullptr);
  ASSERT_TRUE(b->send(1, Pattern(10, 1), 1s).ok());
  Message m;
  EXPECT_TRUE(a->recv(m, 5s).is_message());
}

TEST(Tcp, AcceptTimesOutWithNobody) {
  TcpListener l("127.0.0.1", 0);
  EXPECT_EQ(l.accept(50ms), nullptr);
  EXPECT_EQ(l.accept(0ns), nullptr);
}

TEST(Tcp, PortInUseIsAnError) {
  TcpListener l("127.0.0.1", 0);
  EXPECT_THAT([&] { TcpListener again("127.0.0.1", l.port()); },
              ::testing::ThrowsMessage<Error>(HasSubstr("127.0.0.1:" + std::to_string(l.port()) +
                                                        ": bind: Address already in use")));
  EXPECT_EQ(l.address(), "tcp:127.0.0.1:" + std::to_string(l.port()));
}

TEST(Tcp, WorksOverIpv6Loopback) {
  std::unique_ptr<Listener> l;
  try {
    l = Listen("tcp:[::1]:0");
  } catch (const Error& e) {
    GTEST_SKIP() << "no IPv6 loopback: " << e.what();
  }
  std::unique_ptr<Channel> b;
  std::thread t([&] { b = Connect(l->address(), 5s); });
  auto a = l->accept(5s);
  t.join();
  ASSERT_NE(a, nullptr);
  EXPECT_THAT(a->peer(), HasSubstr("tcp:[::1]:"));
  ASSERT_TRUE(a->send(2, Pattern(1000, 2), 1s).ok());
  Message m;
  ASSERT_TRUE(b->recv(m, 5s).is_message());
  EXPECT_TRUE(Equal(m.payload(), Pattern(1000, 2)));
}

}  // namespace
}  // namespace ftvm::transport
