// The DPDK channel over real virtual devices between real processes: net_memif
// between two processes (no root needed), net_af_packet on a veth pair between two
// network namespaces and net_tap on two taps joined by a bridge (root), and the
// protocol under injected loss, reordering and duplication.
//
// Every DPDK end runs in a fork()ed child: the EAL initializes once per process, and
// a process that forked after initializing it cannot use it in the child, so this
// test process itself never touches DPDK. Children report failures on stderr and in
// their exit code; the parent asserts the exit codes.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <thread>

#include "common/netns.h"
#include "transport/dpdk_testing.h"
#include "tests/transport/test_util.h"

namespace ftvm::transport {
namespace {

using namespace std::chrono_literals;
using testutil::Child;
using testutil::Equal;
using testutil::GetU64;
using testutil::Pattern;
using testutil::PutU64;

// In a child: a failed check ends it with a message (Child prints it, exit code 99).
void Require(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what);
}

// A memif control socket name unique to this test run (an abstract socket name, so
// nothing is left on disk).
std::string MemifAddress(const std::string& tag, const std::string& options = "") {
  static int counter = 0;
  return "dpdk:memif:/ftvm-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" + tag + options;
}

// Options for quick tests: a short keepalive so a dead peer is seen fast.
DpdkOptions QuickOptions() {
  DpdkOptions o;
  o.keepalive_interval = 50ms;
  o.peer_timeout = 1s;
  return o;
}

std::unique_ptr<Channel> AcceptOne(const std::string& address, const DpdkOptions& o) {
  ChannelOptions co;
  co.dpdk = o;
  auto listener = Listen(address, co);
  auto ch = listener->accept(15s);
  Require(ch != nullptr, "no peer connected to " + address);
  return ch;
}

std::unique_ptr<Channel> ConnectTo(const std::string& address, const DpdkOptions& o) {
  ChannelOptions co;
  co.dpdk = o;
  return Connect(address, 15s, co);
}

// Echoes every message until the peer closes the channel.
int EchoUntilClosed(Channel& ch) {
  Message m;
  for (;;) {
    RecvResult r = ch.recv(m, 30s);
    if (r.closed()) return 0;
    Require(r.is_message(), "echo recv: " + r.message);
    SendResult s = ch.send(m.type(), m.payload(), 30s);
    Require(s.ok(), "echo send: " + s.message);
  }
}

// Round trips of 64 bytes, each after a pause long enough for both ends' pollers to
// have gone to sleep (a protected VM's outputs at a moderate rate). A sleeping end
// must be woken by the frame's arrival, not wait out its sleep (max_sleep, 1 ms): this
// end must have been woken, and the median round trip must be well under 1 ms.
void RoundTripsAfterAPauseWakeTheSleepers(Channel& ch, int count = 25) {
  std::vector<double> us;
  Message m;
  const auto ping = Pattern(64, 77);
  for (int i = 0; i < count; ++i) {
    std::this_thread::sleep_for(5ms);
    const auto t0 = std::chrono::steady_clock::now();
    Require(ch.send(6, ping, 5s).ok(), "ping");
    Require(ch.recv(m, 5s).is_message(), "pong");
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(us.begin(), us.end());
  const auto c = test_hooks::DpdkChannelCounters(ch);
  std::fprintf(stderr, "[          ] round trip after a 5 ms pause: median %.0f us, max %.0f us; woken %llu times\n",
               us[us.size() / 2], us.back(), static_cast<unsigned long long>(c.wakeups));
  // The wake-up itself is what is checked, not how long it took (timings belong to
  // bench/): a sleeper that only a timeout got going would show no wake-ups.
  Require(c.wakeups > 0, "no sleeping thread was ever woken by a frame's arrival");
}

// A pipe for a child to signal another process: one byte per event. Every process
// but the writer closes the write end (close_write()), so that a writer that died
// before signalling gives the waiter end-of-file (false) instead of a hang.
class Signal {
 public:
  Signal() {
    int fds[2];
    Require(::pipe2(fds, O_CLOEXEC) == 0, "pipe");
    read_.reset(fds[0]);
    write_.reset(fds[1]);
  }
  void close_write() { write_.reset(); }
  void raise() { Require(::write(write_.get(), "x", 1) == 1, "signal write"); }
  bool wait() {
    char c;
    return ::read(read_.get(), &c, 1) == 1;
  }

 private:
  UniqueFd read_, write_;
};

// In a child: says so through `ready`, then waits on the channel until killed.
int SignalAndWaitToBeKilled(Channel& ch, Signal& ready) {
  ready.raise();
  Message m;
  (void)ch.recv(m, kNoTimeout);
  return 4;
}

// In this process: once `child` raised `ready`, SIGKILL it.
void KillOnceReady(Child& child, Signal& ready) {
  ready.close_write();
  ASSERT_TRUE(ready.wait());
  child.kill(SIGKILL);
  EXPECT_EQ(child.wait(), 128 + SIGKILL);
}

TEST(DpdkAvailable, BuiltWithDpdk) { EXPECT_TRUE(DpdkAvailable()); }

// Every size class both ways across two processes, then a long run of small messages
// pipelined from a second thread: all arrive whole and in order.
TEST(DpdkMemif, EchoAcrossProcessesEverySizeAndOrder) {
  const std::string address = MemifAddress("echo");
  Child listener([&] {
    auto ch = AcceptOne(address, QuickOptions());
    Require(ch->kind() == "dpdk", "kind");
    return EchoUntilClosed(*ch);
  });
  Child connector([&] {
    auto ch = ConnectTo(address, QuickOptions());
    Message m;
    for (size_t size : {size_t{0}, size_t{1}, size_t{4096}, size_t{9000}, size_t{1} << 20, size_t{20} << 20}) {
      auto data = Pattern(size, static_cast<uint32_t>(size) + 1);
      std::span<const uint8_t> d(data);
      std::span<const uint8_t> parts[] = {d.subspan(0, size / 3), d.subspan(size / 3)};
      const uint8_t type = static_cast<uint8_t>(1 + size % 255);
      SendResult s;
      // 20 MiB does not fit in the 4 MiB send buffer: the echo must be read while it
      // is still being sent.
      std::thread sender([&] { s = ch->send(type, parts, 30s); });
      RecvResult r = ch->recv(m, 30s);
      sender.join();
      Require(s.ok(), "send of " + std::to_string(size) + ": " + s.message);
      Require(r.is_message(), "recv of " + std::to_string(size) + ": " + r.message);
      Require(m.type() == type && Equal(m.payload(), data), "echo of " + std::to_string(size) + " differs");
    }
    constexpr uint64_t kCount = 20000;
    std::thread sender([&] {
      uint8_t buf[64];
      for (uint64_t i = 0; i < kCount; ++i) {
        std::memset(buf, static_cast<int>(i & 0xff), sizeof buf);
        PutU64(buf, i);
        if (!ch->send(static_cast<uint8_t>(1 + i % 200), std::span<const uint8_t>(buf, 8 + i % 57), 10s).ok()) return;
      }
    });
    uint64_t bad = 0;
    for (uint64_t i = 0; i < kCount; ++i) {
      RecvResult r = ch->recv(m, 10s);
      Require(r.is_message(), "small message " + std::to_string(i) + ": " + r.message);
      bad += !(m.type() == 1 + i % 200 && m.size() == 8 + i % 57 && GetU64(m.payload().data()) == i);
    }
    sender.join();
    Require(bad == 0, std::to_string(bad) + " small messages out of order or damaged");
    const ChannelStats st = ch->stats();
    Require(st.messages_sent == 6 + kCount && st.messages_received == 6 + kCount, "message counters");
    ch->close();
    return 0;
  });
  EXPECT_EQ(connector.wait(), 0);
  EXPECT_EQ(listener.wait(), 0);
}

struct FaultCase {
  const char* name;
  double loss, duplicate, reorder;
  uint64_t messages;
  size_t max_size;
};

class DpdkFaultTest : public ::testing::TestWithParam<FaultCase> {};

// Loss, duplication and reordering injected into both sides' segments (handshake,
// data, acknowledgements): streams both ways at once still arrive whole, in order,
// nothing twice; and the injector and the recovery really did something.
TEST_P(DpdkFaultTest, LogArrivesWholeAndInOrder) {
  const FaultCase fc = GetParam();
  const std::string address = MemifAddress("faults");
  auto options = [&](uint64_t seed) {
    DpdkOptions o = QuickOptions();
    o.window_bytes = 256u << 10;  // flow control in play too
    o.faults = {fc.loss, fc.duplicate, fc.reorder, seed};
    return o;
  };
  auto size_of = [&](uint64_t i) { return 8 + (i * 7919) % fc.max_size; };
  // Each side streams its messages from a thread and checks the other's as they come.
  auto run = [&](Channel& ch, uint32_t out_seed, uint32_t in_seed) {
    std::atomic<bool> send_ok{true};
    std::string send_error;
    std::thread sender([&] {
      for (uint64_t i = 0; i < fc.messages; ++i) {
        auto data = Pattern(size_of(i), out_seed + static_cast<uint32_t>(i));
        PutU64(data.data(), i);
        SendResult s = ch.send(1, data, 30s);
        if (!s.ok()) {
          send_error = s.message;
          send_ok = false;
          return;
        }
      }
    });
    Message m;
    uint64_t bad = 0;
    std::string recv_error;
    for (uint64_t i = 0; i < fc.messages; ++i) {
      RecvResult r = ch.recv(m, 30s);
      if (!r.is_message()) {
        recv_error = "message " + std::to_string(i) + ": " + r.message;
        break;
      }
      auto data = Pattern(size_of(i), in_seed + static_cast<uint32_t>(i));
      PutU64(data.data(), i);
      bad += !Equal(m.payload(), data);
    }
    sender.join();
    Require(send_ok, "send: " + send_error);
    Require(recv_error.empty(), "recv: " + recv_error);
    Require(bad == 0, std::to_string(bad) + " messages damaged or out of order");
    // Both have everything; a last exchange makes sure neither closes while the other
    // still waits for acknowledgements of its last data.
    const uint8_t done = 9;
    Require(ch.send(done, std::span<const uint8_t>(), 10s).ok(), "done");
    RecvResult r = ch.recv(m, 10s);
    Require(r.is_message() && m.type() == done, "done: " + r.message);
    const auto c = test_hooks::DpdkChannelCounters(ch);
    std::fprintf(stderr,
                 "[          ] %s side: sent %llu segments (%llu retransmitted), injected %llu losses, %llu "
                 "duplicates, %llu reorders; received %llu duplicates, %llu out of order\n",
                 out_seed == 100 ? "listener" : "connector", (unsigned long long)c.segments_sent,
                 (unsigned long long)c.retransmits, (unsigned long long)c.injected_losses,
                 (unsigned long long)c.injected_duplicates, (unsigned long long)c.injected_reorders,
                 (unsigned long long)c.duplicates_received, (unsigned long long)c.out_of_order_received);
    if (fc.loss > 0) Require(c.injected_losses > 0 && c.retransmits > 0, "no loss injected or repaired");
    if (fc.duplicate > 0) Require(c.injected_duplicates > 0 && c.duplicates_received > 0, "no duplicates");
    if (fc.reorder > 0) Require(c.injected_reorders > 0 && c.out_of_order_received > 0, "no reordering");
    return 0;
  };
  Child listener([&] {
    auto ch = AcceptOne(address, options(11));
    return run(*ch, 100, 200);
  });
  Child connector([&] {
    auto ch = ConnectTo(address, options(22));
    return run(*ch, 200, 100);
  });
  EXPECT_EQ(connector.wait(), 0);
  EXPECT_EQ(listener.wait(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Faults, DpdkFaultTest,
    ::testing::Values(FaultCase{"loss", 0.05, 0, 0, 1500, 40000}, FaultCase{"duplication", 0, 0.05, 0, 1500, 40000},
                      FaultCase{"reordering", 0, 0, 0.05, 1500, 40000},
                      FaultCase{"all_three", 0.05, 0.05, 0.05, 1500, 40000},
                      FaultCase{"heavy_loss", 0.3, 0.1, 0.1, 200, 20000}),
    [](const auto& info) { return std::string(info.param.name); });

// While the receiver does not read, the sender times out ("not reading") instead of
// dropping or buffering without bound; once it reads, everything arrives in order.
TEST(DpdkMemif, FlowControlBlocksTheSenderAndLosesNothing) {
  const std::string address = MemifAddress("flow");
  constexpr size_t kSize = 16 << 10;
  constexpr uint64_t kTotal = 1000;  // 16 MiB, far more than the 256 KiB window
  auto message = [](uint64_t i) {
    auto d = Pattern(kSize, static_cast<uint32_t>(i));
    PutU64(d.data(), i);
    return d;
  };
  DpdkOptions o = QuickOptions();
  o.window_bytes = 256u << 10;
  Signal start_reading;
  Child listener([&] {
    start_reading.close_write();
    auto ch = AcceptOne(address, o);
    Require(start_reading.wait(), "start signal");
    Message m;
    for (uint64_t i = 0; i < kTotal; ++i) {
      RecvResult r = ch->recv(m, 20s);
      Require(r.is_message(), "message " + std::to_string(i) + ": " + r.message);
      Require(Equal(m.payload(), message(i)), "message " + std::to_string(i) + " damaged or out of order");
    }
    Require(ch->send(2, std::span<const uint8_t>(), 5s).ok(), "final ack");
    return 0;
  });
  Child connector([&] {
    auto ch = ConnectTo(address, o);
    uint64_t next = 0;
    SendResult last;
    for (; next < kTotal; ++next) {
      last = ch->send(1, message(next), 100ms);
      if (!last.ok()) break;
    }
    Require(last.timed_out(), "expected a timeout, got: " + last.message);
    Require(last.message.find("not reading") != std::string::npos, "timeout message: " + last.message);
    // Send buffer plus the peer's window, at most: nothing beyond is buffered.
    Require(next * kSize <= 2 * o.window_bytes, "sent " + std::to_string(next) + " messages without a reader");
    Require(ch->stats().send_waits > 0, "send_waits");
    start_reading.raise();
    for (; next < kTotal; ++next) Require(ch->send(1, message(next), kNoTimeout).ok(), "send after reading");
    Message m;
    RecvResult r = ch->recv(m, 20s);
    Require(r.is_message() && m.type() == 2, "final ack: " + r.message);
    return 0;
  });
  start_reading.close_write();
  EXPECT_EQ(connector.wait(), 0);
  EXPECT_EQ(listener.wait(), 0);
}

// close(): the peer gets what was sent, then kClosed (sticky), and its sends end with
// kClosed; a recv blocked with no timeout is woken by close() on its own end; a recv
// with a timeout times out and leaves the channel usable.
TEST(DpdkMemif, CloseTimeoutsAndWakeUps) {
  const std::string address = MemifAddress("close");
  Signal closed_blocked;
  Child listener([&] {
    auto ch = AcceptOne(address, QuickOptions());
    Message m;
    RecvResult r = ch->recv(m, 50ms);
    Require(r.timed_out() && r.message.find("no message within 50 ms") != std::string::npos, "timeout: " + r.message);
    Require(ch->recv(m, 0ns).timed_out(), "zero timeout");
    Require(ch->send(5, Pattern(10, 5), 5s).ok(), "go");
    for (uint8_t i = 1; i <= 3; ++i) {
      r = ch->recv(m, 10s);
      Require(r.is_message() && m.type() == i && Equal(m.payload(), Pattern(1000u * i, i)),
              "message " + std::to_string(i) + ": " + r.message);
    }
    r = ch->recv(m, 10s);
    Require(r.closed() && r.message.find("closed") != std::string::npos, "after the messages: " + r.message);
    Require(ch->recv(m, 1s).closed(), "sticky");
    SendResult s = ch->send(1, Pattern(10, 1), 1s);
    Require(s.closed(), "send to a closed peer: " + s.message);
    return 0;
  });
  Child connector([&] {
    auto ch = ConnectTo(address, QuickOptions());
    Message m;
    Require(ch->recv(m, 10s).is_message() && m.type() == 5, "go");
    // A receiver blocked with no timeout, woken by close() from another thread.
    RecvResult blocked;
    std::thread receiver([&] { blocked = ch->recv(m, kNoTimeout); });
    for (uint8_t i = 1; i <= 3; ++i) Require(ch->send(i, Pattern(1000u * i, i), 5s).ok(), "send");
    std::this_thread::sleep_for(50ms);
    ch->close();
    receiver.join();
    Require(blocked.closed() && blocked.message.find("channel closed") != std::string::npos,
            "blocked recv: " + blocked.message);
    Require(ch->send(1, Pattern(1, 1), 1s).closed(), "send after close");
    return 0;  // the destructor lingers until the peer has all of it
  });
  EXPECT_EQ(connector.wait(), 0);
  EXPECT_EQ(listener.wait(), 0);
}

// A peer killed with SIGKILL: the survivor gets the whole messages sent before, then
// kClosed (memif: its link goes down at once).
TEST(DpdkMemif, PeerKilledGivesClosed) {
  const std::string address = MemifAddress("kill");
  Signal sent;
  Child connector([&] {
    auto ch = ConnectTo(address, QuickOptions());
    for (uint8_t i = 1; i <= 2; ++i) Require(ch->send(i, Pattern(5000, i), 5s).ok(), "send");
    Message m;
    Require(ch->recv(m, 10s).is_message(), "ack");  // the peer has both
    sent.raise();
    (void)ch->recv(m, kNoTimeout);  // until killed
    return 4;
  });
  sent.close_write();
  Child listener([&] {
    auto ch = AcceptOne(address, QuickOptions());
    Message m;
    for (uint8_t i = 1; i <= 2; ++i) {
      RecvResult r = ch->recv(m, 10s);
      Require(r.is_message() && m.type() == i, "message: " + r.message);
    }
    Require(ch->send(3, std::span<const uint8_t>(), 5s).ok(), "ack");
    RecvResult r = ch->recv(m, 20s);
    Require(r.closed(), "after SIGKILL: " + std::string(RecvCodeName(r.code)) + ": " + r.message);
    std::fprintf(stderr, "[          ] survivor: %s\n", r.message.c_str());
    return 0;
  });
  ASSERT_TRUE(sent.wait());
  connector.kill(SIGKILL);
  EXPECT_EQ(connector.wait(), 128 + SIGKILL);
  EXPECT_EQ(listener.wait(), 0);
}

// A peer killed while this end streams to it as fast as it can: this end's bursts
// are running when the memif driver unmaps the connection's memory (from its
// interrupt thread, at the peer's death), which killed the process with SIGSEGV
// before bursts were guarded. This end must live on and see the channel end, every
// time. Several rounds, since the race is a matter of timing.
TEST(DpdkMemif, PeerKilledMidStreamLeavesTheSenderAlive) {
  uint64_t faults = 0;
  for (int round = 0; round < 6; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const std::string address = MemifAddress("midstream");
    Child sink([&] {
      auto ch = AcceptOne(address, QuickOptions());
      Message m;
      while (ch->recv(m, 30s).is_message()) {
      }
      return 0;
    });
    Signal streaming;
    Signal counted;  // the sender's burst-fault count: one byte per fault, then EOF
    Child sender([&] {
      auto ch = ConnectTo(address, QuickOptions());
      const auto payload = Pattern(4096, 9);
      for (int i = 0;; ++i) {
        if (i == 64) streaming.raise();
        SendResult r = ch->send(1, payload, 5s);
        if (!r.ok()) break;
      }
      for (uint64_t f = test_hooks::DpdkChannelCounters(*ch).burst_faults; f > 0; --f) counted.raise();
      return 0;
    });
    streaming.close_write();
    counted.close_write();
    ASSERT_TRUE(streaming.wait());
    sink.kill(SIGKILL);
    EXPECT_EQ(sink.wait(), 128 + SIGKILL);
    EXPECT_EQ(sender.wait(), 0) << "the sender must outlive its peer (128+11 is SIGSEGV)";
    while (counted.wait()) ++faults;
  }
  std::fprintf(stderr, "[          ] bursts cut short by the driver's unmapping: %llu\n",
               static_cast<unsigned long long>(faults));
}

// A listener serves one channel at a time on its port, and accepts again once that
// channel is gone (a primary taking a new secondary after losing one).
TEST(DpdkMemif, ListenerAcceptsAgainAfterAChannelEnds) {
  const std::string address = MemifAddress("again");
  Child listener([&] {
    ChannelOptions co;
    co.dpdk = QuickOptions();
    auto l = Listen(address, co);
    for (uint8_t round = 1; round <= 2; ++round) {
      auto ch = l->accept(15s);
      Require(ch != nullptr, "accept " + std::to_string(round));
      Message m;
      RecvResult r = ch->recv(m, 10s);
      Require(r.is_message() && m.type() == round, "round " + std::to_string(round) + ": " + r.message);
      Require(ch->send(round, m.payload(), 5s).ok(), "echo");
      r = ch->recv(m, 10s);
      Require(r.closed(), "round " + std::to_string(round) + " end: " + r.message);
      // A second accept() while this channel lives waits for the port.
      if (round == 1) Require(l->accept(20ms) == nullptr, "a second channel on a busy port");
    }
    return 0;
  });
  for (uint8_t round = 1; round <= 2; ++round) {
    Child connector([&] {
      auto ch = ConnectTo(address, QuickOptions());
      Require(ch->send(round, Pattern(100, round), 5s).ok(), "send");
      Message m;
      RecvResult r = ch->recv(m, 10s);
      Require(r.is_message() && Equal(m.payload(), Pattern(100, round)), "echo: " + r.message);
      return 0;
    });
    EXPECT_EQ(connector.wait(), 0) << "round " << int(round);
  }
  EXPECT_EQ(listener.wait(), 0);
}

// The first message after a pause: both ends have gone to sleep, and the receiving end
// is woken by its doorbell (net_memif has no receive interrupt), rung by the sender
// because the sleeper said in its last segment that it sleeps.
TEST(DpdkMemif, FirstMessageAfterAPauseWakesTheSleepingPeer) {
  const std::string address = MemifAddress("pause");
  Child listener([&] {
    auto ch = AcceptOne(address, QuickOptions());
    return EchoUntilClosed(*ch);
  });
  Child connector([&] {
    auto ch = ConnectTo(address, QuickOptions());
    RoundTripsAfterAPauseWakeTheSleepers(*ch);
    const auto c = test_hooks::DpdkChannelCounters(*ch);
    Require(c.doorbells_rung > 0, "the sleeping listener's doorbell was never rung");
    ch->close();
    return 0;
  });
  EXPECT_EQ(connector.wait(), 0);
  EXPECT_EQ(listener.wait(), 0);
}

// A channel whose peer died gives its port back at once, though its owner still holds
// it (a primary keeps its lost secondary's channel until a new one takes over): the
// listener accepts the next peer meanwhile instead of leaving its hello unanswered.
TEST(DpdkMemif, DeadPeersChannelGivesThePortBackBeforeItIsDestroyed) {
  const std::string address = MemifAddress("dead");
  Signal up;  // written by the first connector only
  Child listener([&] {
    up.close_write();
    ChannelOptions co;
    co.dpdk = QuickOptions();
    co.dpdk.peer_timeout = 10s;  // the link's going down says it, not a keepalive timeout
    auto l = Listen(address, co);
    auto first = l->accept(15s);
    Require(first != nullptr, "first accept");
    Message m;
    RecvResult r = first->recv(m, 20s);
    Require(r.closed(), "after the first peer's death: " + std::string(RecvCodeName(r.code)) + ": " + r.message +
                            (r.is_message() ? " (a message of type " + std::to_string(m.type()) + ")" : ""));
    auto second = l->accept(5s);  // while `first` still exists
    Require(second != nullptr, "no second channel while the dead one is held");
    r = second->recv(m, 10s);
    Require(r.is_message() && second->send(m.type(), m.payload(), 5s).ok(), "echo: " + r.message);
    return 0;
  });
  {
    Child first([&] {
      auto ch = ConnectTo(address, QuickOptions());
      return SignalAndWaitToBeKilled(*ch, up);
    });
    KillOnceReady(first, up);
  }
  Child second([&] {
    auto ch = ConnectTo(address, QuickOptions());
    Require(ch->send(7, Pattern(64, 7), 5s).ok(), "send");
    Message m;
    RecvResult r = ch->recv(m, 10s);
    Require(r.is_message() && Equal(m.payload(), Pattern(64, 7)), "echo: " + r.message);
    return 0;
  });
  EXPECT_EQ(second.wait(), 0);
  EXPECT_EQ(listener.wait(), 0);
}

// abandon(): a peer its owner declared gone (here it is stopped, so it acknowledges
// nothing and its link stays up) is not waited for: the channel is closed and
// destroyed at once, where a closed one lingers until the peer acknowledged what was
// sent, up to peer_timeout.
TEST(DpdkMemif, AbandonedChannelIsReleasedWithoutWaitingForThePeer) {
  const std::string address = MemifAddress("abandon");
  DpdkOptions o = QuickOptions();
  o.peer_timeout = 5s;
  Signal talked;   // written by the connector only
  Signal stopped;  // written by this process only
  Child listener([&] {
    talked.close_write();
    stopped.close_write();
    auto ch = AcceptOne(address, o);
    Message m;
    for (;;) {
      RecvResult r = ch->recv(m, 30s);
      if (!r.is_message()) return 0;
      Require(ch->send(m.type(), m.payload(), 5s).ok(), "echo");
    }
  });
  Child connector([&] {
    stopped.close_write();
    auto ch = ConnectTo(address, o);
    Message m;
    Require(ch->send(1, Pattern(100, 1), 5s).ok() && ch->recv(m, 10s).is_message(), "first exchange");
    talked.raise();
    Require(stopped.wait(), "stopped");
    Require(ch->send(2, Pattern(100, 2), 5s).ok(), "send to the stopped peer");  // never acknowledged
    const auto t0 = std::chrono::steady_clock::now();
    ch->abandon();
    Require(ch->recv(m, 1s).closed(), "recv after abandon()");
    ch.reset();
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    std::fprintf(stderr, "[          ] abandon() and destruction took %lld ms\n", static_cast<long long>(ms.count()));
    Require(ms < 500ms, "destroying an abandoned channel took " + std::to_string(ms.count()) + " ms");
    return 0;
  });
  talked.close_write();
  ASSERT_TRUE(talked.wait());
  listener.kill(SIGSTOP);
  stopped.raise();
  EXPECT_EQ(connector.wait(), 0);
  listener.kill(SIGKILL);
  EXPECT_EQ(listener.wait(), 128 + SIGKILL);
}

// A peer speaking another protocol version is refused at the handshake with a
// reason it can show (REJECT), and the listener keeps waiting. The peer here is a bare
// port sending a hand-made HELLO (layout in transport/dpdk_channel.cc).
TEST(DpdkMemif, HelloOfAnotherVersionIsRejectedWithTheReason) {
  const std::string address = MemifAddress("version");
  Child listener([&] {
    ChannelOptions co;
    auto l = Listen(address, co);
    Require(l->accept(2s) == nullptr, "accepted a peer of another protocol version");
    return 0;
  });
  Child peer([&] {
    test_hooks::DpdkRawPort port(ParseChannelAddress(address).dpdk, /*listening=*/false, 10s);
    std::vector<uint8_t> hello(14 + 40 + 24, 0);
    std::memset(hello.data(), 0xff, 6);
    hello[6] = 0x02;
    hello[12] = 0x88;
    hello[13] = 0xb5;
    uint8_t* seg = hello.data() + 14;
    seg[0] = 'F';
    seg[1] = 'D';
    seg[2] = 1;                      // HELLO
    seg[4] = 0x34;                   // sender's connection id 0x1234
    seg[5] = 0x12;
    seg[12] = 24;                    // payload length
    seg[34] = 1;                     // window 65536
    uint8_t* p = seg + 40;
    std::memcpy(p, "FTVMCHAN", 8);
    p[8] = 2;                        // protocol version 2
    p[10] = 3;                       // DPDK
    p[17] = 0x05;                    // MTU 1280
    p[22] = 1;                       // window 65536
    std::vector<uint8_t> in(16384);
    const auto until = std::chrono::steady_clock::now() + 5s;
    auto next = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() < until) {
      if (std::chrono::steady_clock::now() >= next) {
        (void)port.send(hello);
        next += 50ms;
      }
      const size_t n = port.poll(in);
      if (n < 54 || in[12] != 0x88 || in[13] != 0xb5 || in[16] != 3) continue;  // not a REJECT
      Require(in[22] == 0x34 && in[23] == 0x12, "REJECT for another connection");
      const std::string why(reinterpret_cast<const char*>(in.data() + 54), n - 54);
      Require(why.find("protocol version 2") != std::string::npos, "reason: " + why);
      std::fprintf(stderr, "[          ] rejected: %s\n", why.c_str());
      return 0;
    }
    Require(false, "no REJECT");
    return 1;
  });
  EXPECT_EQ(peer.wait(), 0);
  EXPECT_EQ(listener.wait(), 0);
}

TEST(DpdkMemif, ConnectWithoutListenerFailsClearly) {
  const std::string address = MemifAddress("nobody");
  Child c([&] {
    ChannelOptions co;
    try {
      (void)Connect(address, 300ms, co);
    } catch (const std::exception& e) {
      const std::string what = e.what();
      Require(what.find(address.substr(5)) != std::string::npos && what.find("memif") != std::string::npos,
              "unclear error: " + what);
      std::fprintf(stderr, "[          ] %s\n", what.c_str());
      return 0;
    }
    return 1;
  });
  EXPECT_EQ(c.wait(), 0);
}

// --- net_af_packet on a veth pair between two network namespaces --------------------

// Two network namespaces (stand-in hosts) joined by a veth pair of MTU 9000; nullopt
// (and the reason on stderr) when they cannot be made here.
struct VethHosts {
  netns::Namespace a{"ftvm-dpdk-a"}, b{"ftvm-dpdk-b"};
  netns::VethPair link{{a.name(), "fdv0", ""}, {b.name(), "fdv0", ""}};
};
std::unique_ptr<VethHosts> MakeVethHosts() {
  try {
    return std::make_unique<VethHosts>();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[          ] %s\n", e.what());
    return nullptr;
  }
}

// In a child, before the EAL: move this process into a network namespace.
void EnterNamespace(const std::string& ns) {
  try {
    netns::Enter(ns);
  } catch (const std::exception& e) {
    Require(false, e.what());
  }
}

TEST(DpdkAfPacket, ChannelAcrossNamespacesOnAVethPair) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces, AF_PACKET)";
  auto veth = MakeVethHosts();
  if (!veth) GTEST_SKIP() << "cannot create network namespaces and a veth pair here";
  DpdkOptions o = QuickOptions();
  o.peer_timeout = 1500ms;  // not shorter: on a host busy with other work, 500 ms of silence happened
  Signal echoed;  // written by the connector only
  // Each end names its own interface; both are called fdv0, in their own namespace.
  const std::string a = "dpdk:af_packet:fdv0";
  const std::string b = a;
  Child listener([&] {
    echoed.close_write();
    EnterNamespace(veth->a.name());
    auto ch = AcceptOne(a, o);
    Message m;
    // Echo until the first empty message, then wait for the peer's death.
    for (;;) {
      RecvResult r = ch->recv(m, 30s);
      Require(r.is_message(), "echo recv: " + r.message);
      Require(ch->send(m.type(), m.payload(), 30s).ok(), "echo send");
      if (m.size() == 0) break;
    }
    RecvResult r = ch->recv(m, 20s);
    Require(r.closed() && r.message.find("presumed dead") != std::string::npos,
            "after SIGKILL: " + std::string(RecvCodeName(r.code)) + ": " + r.message);
    std::fprintf(stderr, "[          ] survivor: %s\n", r.message.c_str());
    return 0;
  });
  Child connector([&] {
    EnterNamespace(veth->b.name());
    auto ch = ConnectTo(b, o);
    Message m;
    for (size_t size : {size_t{1}, size_t{4096}, size_t{8950}, size_t{1} << 20, size_t{6} << 20}) {
      auto data = Pattern(size, static_cast<uint32_t>(size) + 7);
      SendResult s;
      std::thread sender([&] { s = ch->send(3, data, 30s); });
      RecvResult r = ch->recv(m, 30s);
      sender.join();
      Require(s.ok() && r.is_message(), "echo of " + std::to_string(size) + ": " + s.message + r.message);
      Require(Equal(m.payload(), data), "echo of " + std::to_string(size) + " differs");
    }
    // A sleeping end is woken by a packet socket of its own that sees the frame arrive.
    RoundTripsAfterAPauseWakeTheSleepers(*ch);
    Require(ch->send(3, std::span<const uint8_t>(), 5s).ok() && ch->recv(m, 5s).is_message(), "last echo");
    return SignalAndWaitToBeKilled(*ch, echoed);
  });
  KillOnceReady(connector, echoed);
  EXPECT_EQ(listener.wait(), 0);
}

// --- net_tap: two taps on a bridge ---------------------------------------------------

// net_tap on two taps joined by a bridge (how a tap reaches a NIC, or another tap):
// messages go both ways, small and large. The taps are persistent ones made
// beforehand and put on the bridge (net_tap attaches to an existing tap of its name).
// net_tap gives the kernel's side of a tap the port's own MAC address, which makes it
// the bridge's own: unless the channel changes it, the bridge keeps every frame sent to
// the port, and the connector never hears the listener's answer. Then a stream one
// way: the tap's queue holds 1000 frames, and a sender with more in flight than that
// loses frames in bursts (DpdkOptions::max_segments_in_flight keeps it below).
TEST(DpdkTap, ChannelBetweenTwoTapsOnABridge) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (network namespaces, taps)";
  std::unique_ptr<netns::Namespace> ns;
  try {
    ns = std::make_unique<netns::Namespace>("ftvm-dpdk-tap");
    netns::Ip({"-n", ns->name(), "link", "add", "br0", "type", "bridge"});
    netns::Ip({"-n", ns->name(), "link", "set", "br0", "up"});
    for (const char* tap : {"fdta", "fdtb"}) {
      netns::Ip({"-n", ns->name(), "tuntap", "add", "dev", tap, "mode", "tap", "multi_queue"});
      netns::Ip({"-n", ns->name(), "link", "set", tap, "master", "br0"});
      netns::Ip({"-n", ns->name(), "link", "set", tap, "up"});
    }
  } catch (const std::exception& e) {
    GTEST_SKIP() << "cannot make a namespace with taps on a bridge here: " << e.what();
  }
  constexpr int kStreamed = 16;  // MiB
  Child listener([&] {
    EnterNamespace(ns->name());
    auto ch = AcceptOne("dpdk:tap:fdta", QuickOptions());
    Message m;
    for (int i = 0; i < kStreamed; ++i) {
      RecvResult r = ch->recv(m, 30s);
      Require(r.is_message() && m.size() == (1u << 20), "streamed message " + std::to_string(i) + ": " + r.message);
    }
    return EchoUntilClosed(*ch);
  });
  Child connector([&] {
    EnterNamespace(ns->name());
    auto ch = ConnectTo("dpdk:tap:fdtb", QuickOptions());
    const auto mib = Pattern(1u << 20, 11);
    for (int i = 0; i < kStreamed; ++i) Require(ch->send(4, mib, 30s).ok(), "stream send " + std::to_string(i));
    Message m;
    for (size_t size : {size_t{1}, size_t{1400}, size_t{100000}}) {
      auto data = Pattern(size, static_cast<uint32_t>(size) + 3);
      Require(ch->send(5, data, 10s).ok(), "send of " + std::to_string(size));
      RecvResult r = ch->recv(m, 10s);
      Require(r.is_message() && Equal(m.payload(), data), "echo of " + std::to_string(size) + ": " + r.message);
    }
    // A sleeping end is woken by a packet socket of its own that sees the kernel send
    // the frame into its tap.
    RoundTripsAfterAPauseWakeTheSleepers(*ch);
    const auto c = test_hooks::DpdkChannelCounters(*ch);
    std::fprintf(stderr, "[          ] sent %llu segments, %llu retransmitted\n",
                 static_cast<unsigned long long>(c.segments_sent), static_cast<unsigned long long>(c.retransmits));
    Require(c.retransmits * 50 < c.segments_sent, "more than 2% of the segments were retransmitted");
    ch->close();
    return 0;
  });
  EXPECT_EQ(connector.wait(), 0);
  EXPECT_EQ(listener.wait(), 0);
}

}  // namespace
}  // namespace ftvm::transport
