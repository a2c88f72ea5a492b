// channel_bench: what each logging-channel transport costs between two processes.
//
// For each transport a child process connects and serves: it echoes pings and
// swallows a stream. The parent measures
//   - round trip (send, then receive the echo) of 64 B and 4 KiB messages: p50, p99;
//   - streaming throughput of 1 MiB messages, one way, for ~1.5 s, timed from the
//     first send to the receiver's acknowledgement of the last message;
//   - CPU time per GB streamed, sender and receiver together (each process measures
//     its own CPU clock);
//   - how often a receive had to sleep in the kernel (the rest were caught spinning).
// The shared-memory transport runs with its default spin (10 us), with 5 us, and with
// ShmOptions::spin = 0 (always sleep): the baseline that shows what the spin buys.
// The RDMA channel runs over its shared-memory emulation of one-sided writes
// ("rdma+shm", labelled "emulated"): it measures the ring and credit protocol's own
// cost (the copy into the staging ring, the emulated DMA copy into the peer's ring,
// doorbells and acknowledgements), not an RDMA fabric. Over real verbs ("rdma") it runs
// only where an RDMA device exists.
//
// DPDK (when built with it): the channel over net_memif between two processes, and, as
// root, over net_af_packet on a veth pair; each next to a bare ping-pong of raw frames
// on the same kind of device (no protocol: send a frame, busy-poll for the echo), the
// floor the channel's round trip is compared with (goal: within 2x). Every DPDK end
// runs in a child process of its own (the EAL initializes once per process and cannot
// be used across a fork); the measuring child sends its figures back through a pipe.
//
// Usage: channel_bench [--quick] [--dpdk-only | --memif-only]
// Figures vary run to run on a noisy 2-core machine; compare rows of the same run.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/netns.h"
#include "eventlog/format.h"
#include "transport/channel.h"
#include "transport/dpdk_testing.h"

namespace {

using namespace ftvm::transport;
using Clock = std::chrono::steady_clock;

enum : uint8_t { kPing = 1, kStreamBegin = 2, kData = 3, kStreamEnd = 4, kStreamAck = 5, kQuit = 6 };

uint64_t CpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "channel_bench: %s\n", what.c_str());
  std::exit(1);
}

// The child: echo pings, count the stream, report its CPU time for the stream.
int Serve(const std::string& address, const ChannelOptions& options) {
  auto ch = Connect(address, std::chrono::seconds(10), options);
  Message m;
  uint64_t cpu_start = 0;
  for (;;) {
    auto r = ch->recv(m, kNoTimeout);
    if (!r.is_message()) {
      std::fprintf(stderr, "peer: %s\n", r.message.c_str());
      return 1;
    }
    switch (m.type()) {
      case kPing:
        if (!ch->send(kPing, m.payload(), kNoTimeout).ok()) return 1;
        break;
      case kStreamBegin:
        cpu_start = CpuNs();
        break;
      case kData:
        break;
      case kStreamEnd: {
        uint8_t cpu[8];
        ftvm::eventlog::PutLe64(cpu, CpuNs() - cpu_start);
        if (!ch->send(kStreamAck, cpu, kNoTimeout).ok()) return 1;
        break;
      }
      case kQuit:
        return 0;
    }
  }
}

struct Latency {
  double p50_us = 0;
  double p99_us = 0;
  double slept = 0;  // fraction of receives that slept in the kernel
};

// `gap`: a pause before each ping, long enough for both sides' pollers to have gone
// to sleep, as between a protected VM's outputs at a moderate rate: the latency of
// the first message after a pause.
Latency RoundTrips(Channel& ch, size_t size, int iterations,
                   std::chrono::microseconds gap = std::chrono::microseconds::zero()) {
  std::vector<uint8_t> payload(size, 0x5a);
  Message m;
  std::vector<double> us;
  us.reserve(static_cast<size_t>(iterations));
  const int warmup = std::max(100, iterations / 10);
  uint64_t waits_before = 0;
  for (int i = 0; i < warmup + iterations; ++i) {
    if (i == warmup) waits_before = ch.stats().recv_waits;
    if (gap.count() > 0) std::this_thread::sleep_for(gap);
    auto t0 = Clock::now();
    auto s = ch.send(kPing, payload, std::chrono::seconds(10));
    if (!s.ok()) Die(s.message);
    auto r = ch.recv(m, std::chrono::seconds(10));
    if (!r.is_message()) Die(r.message);
    auto t1 = Clock::now();
    if (i >= warmup) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  std::sort(us.begin(), us.end());
  Latency l;
  l.p50_us = us[us.size() / 2];
  l.p99_us = us[std::min(us.size() - 1, us.size() * 99 / 100)];
  l.slept = static_cast<double>(ch.stats().recv_waits - waits_before) / iterations;
  return l;
}

struct Throughput {
  double gb_per_s = 0;
  double cpu_s_per_gb = 0;  // sender + receiver
  double gb = 0;
};

Throughput Stream(Channel& ch, std::chrono::milliseconds duration) {
  constexpr size_t kMessage = 1u << 20;
  std::vector<uint8_t> payload(kMessage);
  for (size_t i = 0; i < kMessage; ++i) payload[i] = static_cast<uint8_t>(i * 131);
  if (!ch.send(kStreamBegin, std::span<const uint8_t>(), std::chrono::seconds(10)).ok()) Die("stream begin");
  const uint64_t cpu0 = CpuNs();
  const auto t0 = Clock::now();
  uint64_t bytes = 0;
  for (uint64_t n = 0;; ++n) {
    if ((n & 15) == 0 && Clock::now() - t0 >= duration) break;
    auto s = ch.send(kData, payload, std::chrono::seconds(10));
    if (!s.ok()) Die(s.message);
    bytes += kMessage;
  }
  if (!ch.send(kStreamEnd, std::span<const uint8_t>(), std::chrono::seconds(10)).ok()) Die("stream end");
  Message m;
  auto r = ch.recv(m, std::chrono::seconds(30));
  if (!r.is_message() || m.type() != kStreamAck || m.size() != 8) Die("no stream ack: " + r.message);
  const auto t1 = Clock::now();
  const uint64_t cpu = CpuNs() - cpu0 + ftvm::eventlog::GetLe64(m.payload().data());
  Throughput t;
  t.gb = static_cast<double>(bytes) / 1e9;
  t.gb_per_s = t.gb / std::chrono::duration<double>(t1 - t0).count();
  t.cpu_s_per_gb = static_cast<double>(cpu) / 1e9 / t.gb;
  return t;
}

struct Row {
  std::string name;
  Latency small, page;
  Throughput stream;
};

Row Measure(const std::string& name, const std::string& address, const ChannelOptions& options, int iterations,
            std::chrono::milliseconds stream_time) {
  auto listener = Listen(address, options);
  const std::string where = listener->address();
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) Die("fork failed");
  if (pid == 0) {
    int rc = 1;
    try {
      rc = Serve(where, options);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "peer: %s\n", e.what());
    }
    ::_exit(rc);
  }
  auto ch = listener->accept(std::chrono::seconds(10));
  if (!ch) Die("no peer connected to " + where);
  Row row;
  row.name = name;
  row.small = RoundTrips(*ch, 64, iterations);
  row.page = RoundTrips(*ch, 4096, iterations);
  row.stream = Stream(*ch, stream_time);
  (void)ch->send(kQuit, std::span<const uint8_t>(), std::chrono::seconds(1));
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) Die(name + ": peer process failed");
  return row;
}

// Runs `measure` in one child and `serve` in another; returns what `measure` wrote
// into the pipe (a trivially copyable T).
template <typename T, typename Measure, typename ServeFn>
T InTwoChildren(const std::string& name, Measure measure, ServeFn serve) {
  std::fprintf(stderr, "channel_bench: %s...\n", name.c_str());
  int fds[2];
  if (::pipe(fds) != 0) Die("pipe failed");
  std::fflush(nullptr);
  pid_t server = ::fork();
  if (server < 0) Die("fork failed");
  if (server == 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    int rc = 1;
    try {
      rc = serve();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "peer: %s\n", e.what());
    }
    ::_exit(rc);
  }
  pid_t measurer = ::fork();
  if (measurer < 0) Die("fork failed");
  if (measurer == 0) {
    ::close(fds[0]);
    int rc = 1;
    try {
      T result = measure();
      rc = ::write(fds[1], &result, sizeof result) == static_cast<ssize_t>(sizeof result) ? 0 : 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s: %s\n", name.c_str(), e.what());
    }
    ::_exit(rc);
  }
  ::close(fds[1]);
  T result{};
  const bool got = ::read(fds[0], &result, sizeof result) == static_cast<ssize_t>(sizeof result);
  ::close(fds[0]);
  int status = 0;
  ::waitpid(measurer, &status, 0);
  const bool measured = got && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (!measured) ::kill(server, SIGKILL);
  // The server ends when told to; one that missed it (a lost quit frame on a bare
  // port) is not waited for beyond a few seconds.
  for (int i = 0; i < 500 && ::waitpid(server, &status, WNOHANG) == 0; ++i) ::usleep(10000);
  if (::waitpid(server, &status, WNOHANG) == 0) {
    ::kill(server, SIGKILL);
    ::waitpid(server, &status, 0);
    status = 0;  // it did its part: the measurement is complete
  }
  if (!measured) throw std::runtime_error(name + ": measurement failed");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error(name + ": peer process failed");
  return result;
}

struct DpdkRow {
  Latency small, page, idle;
  Throughput stream;
};

// Moves this (child) process into a network namespace, before its EAL starts. Each
// end of the veth pair lives in a namespace of its own: net_af_packet names its
// PACKET_FANOUT group after pid ^ ifindex, which two processes on the two ends of a
// pair in one namespace can share by chance (consecutive pids and ifindexes), and
// then the second one fails with EINVAL.
void EnterNamespace(const std::string& ns) {
  if (!ns.empty()) ftvm::netns::Enter(ns);
}

// `idle_iterations`: round trips after a 2 ms pause each (0: none).
DpdkRow MeasureDpdk(const std::string& name, const std::string& listen_at, const std::string& connect_to,
                    const std::string& listen_ns, const std::string& connect_ns, const ChannelOptions& options,
                    int iterations, std::chrono::milliseconds stream_time, int idle_iterations) {
  return InTwoChildren<DpdkRow>(
      name,
      [&] {
        EnterNamespace(listen_ns);
        auto listener = Listen(listen_at, options);
        auto ch = listener->accept(std::chrono::seconds(20));
        if (!ch) throw ftvm::Error("no peer connected to " + listen_at);
        DpdkRow row;
        row.small = RoundTrips(*ch, 64, iterations);
        row.page = RoundTrips(*ch, 4096, iterations);
        row.stream = Stream(*ch, stream_time);
        if (idle_iterations > 0) row.idle = RoundTrips(*ch, 64, idle_iterations, std::chrono::milliseconds(2));
        (void)ch->send(kQuit, std::span<const uint8_t>(), std::chrono::seconds(1));
        return row;
      },
      [&] {
        EnterNamespace(connect_ns);
        return Serve(connect_to, options);
      });
}

// A bare ping-pong of raw Ethernet frames: `size` bytes of payload after a broadcast
// header with an EtherType of its own; the echo side sends back what it got, from a
// source address of its own (a bridge drops a frame whose source is not a unicast
// address, and learns where each one is).
constexpr uint16_t kBareEtherType = 0x88B6;

void SetBareSource(uint8_t* frame, uint8_t side) {
  const uint8_t mac[6] = {0x02, 0, 0, 0, 0, side};
  std::memcpy(frame + 6, mac, 6);
}

std::vector<uint8_t> BareFrame(size_t size, uint8_t tag) {
  std::vector<uint8_t> f(14 + size, tag);
  std::memset(f.data(), 0xff, 6);
  SetBareSource(f.data(), 1);
  f[12] = kBareEtherType >> 8;
  f[13] = kBareEtherType & 0xff;
  return f;
}

int BareEcho(const DpdkAddress& address) {
  test_hooks::DpdkRawPort port(address, /*listening=*/false, std::chrono::seconds(20));
  std::vector<uint8_t> buf(16384);
  for (;;) {
    size_t n = port.poll(buf);
    if (n < 15 || buf[12] != (kBareEtherType >> 8) || buf[13] != (kBareEtherType & 0xff)) continue;
    if (buf[14] == 0xff) return 0;  // quit
    SetBareSource(buf.data(), 2);
    while (!port.send({buf.data(), n})) {
    }
  }
}

Latency BareRoundTrips(test_hooks::DpdkRawPort& port, size_t size, int iterations) {
  auto frame = BareFrame(size, 1);
  std::vector<uint8_t> buf(16384);
  std::vector<double> us;
  const int warmup = std::max(100, iterations / 10);
  for (int i = 0; i < warmup + iterations; ++i) {
    auto t0 = Clock::now();
    while (!port.send(frame)) {
    }
    for (;;) {
      size_t n = port.poll(buf);
      if (n == frame.size() && buf[12] == (kBareEtherType >> 8) && buf[13] == (kBareEtherType & 0xff)) break;
      if (Clock::now() - t0 > std::chrono::seconds(1)) {
        // A lost frame (af_packet under pressure): send again, do not count it.
        t0 = Clock::now();
        while (!port.send(frame)) {
        }
      }
    }
    auto t1 = Clock::now();
    if (i >= warmup) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  std::sort(us.begin(), us.end());
  Latency l;
  l.p50_us = us[us.size() / 2];
  l.p99_us = us[std::min(us.size() - 1, us.size() * 99 / 100)];
  return l;
}

DpdkRow MeasureBare(const std::string& name, const std::string& listen_at, const std::string& connect_to,
                    const std::string& listen_ns, const std::string& connect_ns, int iterations, bool page) {
  const DpdkAddress l = ParseChannelAddress(listen_at).dpdk;
  const DpdkAddress c = ParseChannelAddress(connect_to).dpdk;
  return InTwoChildren<DpdkRow>(
      name,
      [&] {
        EnterNamespace(listen_ns);
        test_hooks::DpdkRawPort port(l, /*listening=*/true, std::chrono::seconds(20));
        DpdkRow row;
        row.small = BareRoundTrips(port, 64, iterations);
        if (page) row.page = BareRoundTrips(port, 4096, iterations);
        auto quit = BareFrame(64, 0xff);
        for (int i = 0; i < 10; ++i) (void)port.send(quit);
        return row;
      },
      [&] {
        EnterNamespace(connect_ns);
        return BareEcho(c);
      });
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  bool dpdk_only = false;
  bool memif_only = false;  // --memif-only: the DPDK memif rows alone (implies --dpdk-only)
  for (int i = 1; i < argc; ++i) {
    memif_only |= std::strcmp(argv[i], "--memif-only") == 0;
    dpdk_only |= memif_only || std::strcmp(argv[i], "--dpdk-only") == 0;
  }
  const int fast_iters = quick ? 2000 : 50000;
  const int slow_iters = quick ? 500 : 5000;  // transports that sleep ~40 us per wake-up
  const auto stream_time = std::chrono::milliseconds(quick ? 300 : 1500);
  const std::string sock = "/tmp/ftvm-channel-bench-" + std::to_string(::getpid()) + ".sock";

  std::vector<Row> rows;
  try {
    if (dpdk_only) throw std::runtime_error("");
    ChannelOptions tcp;
    rows.push_back(Measure("tcp loopback", "tcp:127.0.0.1:0", tcp, slow_iters, stream_time));
    ChannelOptions shm;
    rows.push_back(Measure("shm (spin 10 us)", "shm:" + sock, shm, fast_iters, stream_time));
    ChannelOptions spin5;
    spin5.shm.spin = std::chrono::microseconds(5);
    rows.push_back(Measure("shm, spin 5 us", "shm:" + sock, spin5, fast_iters, stream_time));
    ChannelOptions nospin;
    nospin.shm.spin = std::chrono::nanoseconds::zero();
    rows.push_back(Measure("shm, no spin", "shm:" + sock, nospin, slow_iters, stream_time));
    ChannelOptions rdma_emulated;
    rows.push_back(Measure("rdma+shm emulated", "rdma+shm:" + sock, rdma_emulated, fast_iters, stream_time));
    ChannelOptions rdma_nospin;
    rdma_nospin.rdma.spin = std::chrono::nanoseconds::zero();
    rows.push_back(Measure("rdma+shm emu, no spin", "rdma+shm:" + sock, rdma_nospin, slow_iters, stream_time));
    std::string why;
    if (!RdmaDevices(&why).empty()) {
      rows.push_back(Measure("rdma verbs", "rdma:127.0.0.1:0", ChannelOptions(), fast_iters, stream_time));
    } else {
      std::fprintf(stderr, "channel_bench: rdma verbs row skipped: %s\n", why.c_str());
    }
  } catch (const std::exception& e) {
    if (!dpdk_only) Die(e.what());
  }

  // DPDK: the channel and the bare ping-pong on the same kind of device, side by side.
  struct DpdkCase {
    std::string name;
    std::string listen_at, connect_to;
    std::string listen_ns, connect_ns;
    bool bare_page = true;  // the device carries a 4 KiB frame (the bare 4 KiB ping)
    bool slow = false;      // ~100 us round trips: fewer of them
  };
  std::vector<DpdkCase> dpdk_cases;
  // As root, net_af_packet on a veth pair between two namespaces, and net_tap on two
  // taps on a bridge in a third (deleted, with everything in them, however the run
  // ends).
  std::unique_ptr<ftvm::netns::Namespace> ns_a, ns_b, ns_t;
  std::unique_ptr<ftvm::netns::VethPair> veth;
  if (DpdkAvailable()) {
    const std::string memif = "dpdk:memif:/ftvm-bench-" + std::to_string(::getpid());
    dpdk_cases.push_back({"memif", memif, memif, "", ""});
    if (::geteuid() == 0 && !memif_only) {
      try {
        ns_a = std::make_unique<ftvm::netns::Namespace>("ftvm-bench-a");
        ns_b = std::make_unique<ftvm::netns::Namespace>("ftvm-bench-b");
        veth = std::make_unique<ftvm::netns::VethPair>(ftvm::netns::VethPair::End{ns_a->name(), "ftvmb0", ""},
                                                       ftvm::netns::VethPair::End{ns_b->name(), "ftvmb0", ""});
        dpdk_cases.push_back({"af_packet", "dpdk:af_packet:ftvmb0", "dpdk:af_packet:ftvmb0", ns_a->name(),
                              ns_b->name()});
      } catch (const std::exception& e) {
        std::fprintf(stderr, "channel_bench: no af_packet rows: %s\n", e.what());
      }
      try {
        ns_t = std::make_unique<ftvm::netns::Namespace>("ftvm-bench-t");
        ftvm::netns::Ip({"-n", ns_t->name(), "link", "add", "br0", "type", "bridge"});
        ftvm::netns::Ip({"-n", ns_t->name(), "link", "set", "br0", "up"});
        for (const char* tap : {"ftvmta", "ftvmtb"}) {
          ftvm::netns::Ip({"-n", ns_t->name(), "tuntap", "add", "dev", tap, "mode", "tap", "multi_queue"});
          ftvm::netns::Ip({"-n", ns_t->name(), "link", "set", tap, "master", "br0"});
          ftvm::netns::Ip({"-n", ns_t->name(), "link", "set", tap, "up"});
        }
        // net_tap sets its tap's MTU to 1500 and takes no more: no bare 4 KiB frame.
        dpdk_cases.push_back({"tap", "dpdk:tap:ftvmta", "dpdk:tap:ftvmtb", ns_t->name(), ns_t->name(), false, true});
      } catch (const std::exception& e) {
        std::fprintf(stderr, "channel_bench: no tap rows: %s\n", e.what());
      }
    }
  }
  struct DpdkResult {
    std::string name;
    DpdkRow channel, bare, long_spin;
  };
  std::vector<DpdkResult> dpdk_rows;
  int rc = 0;
  for (const auto& c : dpdk_cases) {
    ChannelOptions o;
    DpdkResult r;
    r.name = c.name;
    // A control socket of its own for each measurement (memif): a server still going
    // away must not meet the next one.
    static int run = 0;
    auto fresh = [&](const std::string& a) {
      return a.starts_with("dpdk:memif:") ? a + "-" + std::to_string(run++) : a;
    };
    const std::string bare_l = fresh(c.listen_at), bare_c = c.listen_at == c.connect_to ? bare_l : c.connect_to;
    const std::string chan_l = fresh(c.listen_at), chan_c = c.listen_at == c.connect_to ? chan_l : c.connect_to;
    const std::string busy_l = fresh(c.listen_at), busy_c = c.listen_at == c.connect_to ? busy_l : c.connect_to;
    const int iters = c.slow ? slow_iters : fast_iters;
    try {
      r.bare = MeasureBare(c.name + " bare", bare_l, bare_c, c.listen_ns, c.connect_ns, iters, c.bare_page);
      r.channel = MeasureDpdk(c.name + " channel", chan_l, chan_c, c.listen_ns, c.connect_ns, o, iters, stream_time,
                              quick ? 100 : 300);
      // The same polling without ever sleeping, as the bare ping-pong does: the cost of
      // the protocol itself, apart from the waiting policy (which sleeps once the peer
      // is off the CPU for longer than the spin: on a busy host, often).
      ChannelOptions busy = o;
      busy.dpdk.spin = busy.dpdk.max_spin = std::chrono::seconds(1);
      r.long_spin = MeasureDpdk(c.name + " channel, busy poll", busy_l, busy_c, c.listen_ns, c.connect_ns, busy,
                                iters, stream_time, 0);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "channel_bench: %s\n", e.what());
      rc = 1;
      continue;
    }
    dpdk_rows.push_back(r);
  }
  for (const auto& d : dpdk_rows) {
    Row channel;
    channel.name = "dpdk " + d.name;
    channel.small = d.channel.small;
    channel.page = d.channel.page;
    channel.stream = d.channel.stream;
    rows.push_back(channel);
    Row spin;
    spin.name = "dpdk " + d.name + ", busy poll";
    spin.small = d.long_spin.small;
    spin.page = d.long_spin.page;
    spin.stream = d.long_spin.stream;
    rows.push_back(spin);
    Row bare;
    bare.name = d.name + " bare ping";
    bare.small = d.bare.small;
    bare.page = d.bare.page;
    rows.push_back(bare);
  }

  std::printf("| transport              | RTT 64 B p50 | p99      | RTT 4 KiB p50 | p99      | slept | 1 MiB stream | CPU per GB |\n");
  std::printf("|------------------------|--------------|----------|---------------|----------|-------|--------------|------------|\n");
  for (const Row& r : rows) {
    std::printf("| %-22s | %9.2f us | %5.1f us | %10.2f us | %5.1f us | %4.0f%% |", r.name.c_str(), r.small.p50_us,
                r.small.p99_us, r.page.p50_us, r.page.p99_us, 100.0 * (r.small.slept + r.page.slept) / 2);
    if (r.stream.gb > 0) {
      std::printf(" %7.2f GB/s | %7.3f s  |\n", r.stream.gb_per_s, r.stream.cpu_s_per_gb);
    } else {
      std::printf("            - |          - |\n");
    }
  }
  for (const auto& d : dpdk_rows) {
    std::printf("\ndpdk %s: channel round trip / bare ping-pong on the same device (p50; goal <= 2x): 64 B %.2fx",
                d.name.c_str(), d.channel.small.p50_us / d.bare.small.p50_us);
    if (d.bare.page.p50_us > 0) std::printf(", 4 KiB %.2fx", d.channel.page.p50_us / d.bare.page.p50_us);
    std::printf("; busy polling: 64 B %.2fx", d.long_spin.small.p50_us / d.bare.small.p50_us);
    if (d.bare.page.p50_us > 0) std::printf(", 4 KiB %.2fx", d.long_spin.page.p50_us / d.bare.page.p50_us);
    std::printf("\ndpdk %s: 64 B round trip after 2 ms idle (both sides asleep): p50 %.1f us, p99 %.1f us",
                d.name.c_str(), d.channel.idle.p50_us, d.channel.idle.p99_us);
  }
  if (!dpdk_rows.empty()) std::printf("\n");
  std::printf("\nslept: share of round trips whose reply receive slept in the kernel instead of\n"
              "catching the reply while spinning. CPU per GB: sender + receiver CPU time per GB\n"
              "of payload streamed. Goals: shm round trip < 5 us, shm stream >= 1 GB/s.\n"
              "rdma+shm rows: the RDMA ring protocol over its shared-memory emulation of one-sided\n"
              "writes (a test transport): protocol cost on this host, not RDMA hardware figures.\n");
  return rc;
}
