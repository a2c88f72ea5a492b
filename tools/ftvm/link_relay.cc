#include "tools/ftvm/link_relay.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <vector>

#include "common/error.h"
#include "common/log.h"
#include "common/netns.h"

namespace ftvm::drill {
namespace {

uint64_t NowNs() {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
}

sockaddr_in Ipv4(const std::string& host, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &a.sin_addr) != 1) throw Error("link relay: bad IPv4 address " + host);
  return a;
}

void NoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// Runs `f` on a thread of its own inside `netns` (a namespace is a per-thread
// property for sockets made from then on), rethrowing what it throws.
template <typename F>
void InNamespace(const std::string& netns, F f) {
  std::exception_ptr error;
  std::thread t([&] {
    try {
      if (!netns.empty()) netns::Enter(netns);
      f();
    } catch (...) {
      error = std::current_exception();
    }
  });
  t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

LinkRelay::LinkRelay(const std::string& netns, uint16_t listen_port, std::string upstream_host,
                     uint16_t upstream_port)
    : netns_(netns), upstream_host_(std::move(upstream_host)), upstream_port_(upstream_port) {
  InNamespace(netns_, [&] {
    listener_.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listener_) throw SysError("link relay: socket");
    int one = 1;
    setsockopt(listener_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    const sockaddr_in a = Ipv4("127.0.0.1", listen_port);
    if (bind(listener_.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0)
      throw SysError("link relay: bind 127.0.0.1:" + std::to_string(listen_port) + " in " + netns_);
    if (listen(listener_.get(), 1) != 0) throw SysError("link relay: listen");
  });
  server_ = std::thread([this] { Serve(); });
}

LinkRelay::~LinkRelay() {
  stop_.store(true);
  // Wakes a pump blocked in a write to a peer that stopped reading.
  for (UniqueFd* fd : {&downstream_, &upstream_}) {
    if (*fd) shutdown(fd->get(), SHUT_RDWR);
  }
  if (server_.joinable()) server_.join();
}

void LinkRelay::corrupt_next(uint64_t random) {
  corrupt_random_.store(random, std::memory_order_relaxed);
  corrupt_pending_.store(true, std::memory_order_release);
}

std::string LinkRelay::ended() const {
  std::lock_guard lock(mu_);
  return ended_;
}

void LinkRelay::End(const std::string& why) {
  std::lock_guard lock(mu_);
  if (ended_.empty()) ended_ = why;
}

void LinkRelay::Serve() {
  try {
    if (!netns_.empty()) netns::Enter(netns_);
    // The one connection: the secondary's.
    for (;;) {
      if (stop_.load()) return;
      pollfd p{listener_.get(), POLLIN, 0};
      if (poll(&p, 1, 50) > 0) break;
    }
    UniqueFd down(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!down) throw SysError("link relay: accept");
    // The secondary may come before its primary listens: keep trying, as it would.
    const sockaddr_in a = Ipv4(upstream_host_, upstream_port_);
    UniqueFd up;
    for (const uint64_t give_up = NowNs() + 60'000'000'000ull;;) {
      up.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (!up) throw SysError("link relay: socket");
      if (connect(up.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0) break;
      if ((errno != ECONNREFUSED && errno != ENETUNREACH) || NowNs() > give_up || stop_.load())
        throw SysError("link relay: connecting to " + upstream_host_ + ":" + std::to_string(upstream_port_));
      usleep(50000);
    }
    NoDelay(down.get());
    NoDelay(up.get());
    const int d = down.get(), u = up.get();
    downstream_ = std::move(down);
    upstream_ = std::move(up);
    if (stop_.load()) return;  // the destructor may have looked before they were set
    std::thread back([this, d, u] { Pump(1, d, u); });
    Pump(0, u, d);
    back.join();
  } catch (const std::exception& e) {
    End(e.what());
    log::warn("drill.relay_failed", {{"error", e.what()}});
  }
}

void LinkRelay::Pump(int direction, int from, int to) {
  struct Chunk {
    uint64_t due_ns;
    std::vector<uint8_t> bytes;
  };
  std::deque<Chunk> queue;
  uint64_t read_total = 0;
  bool eof = false;
  std::vector<uint8_t> buf(64 * 1024);
  while (!stop_.load(std::memory_order_relaxed)) {
    // Deliver what is due, in order.
    const uint64_t now = NowNs();
    while (!queue.empty() && queue.front().due_ns <= now) {
      const std::vector<uint8_t>& b = queue.front().bytes;
      for (size_t off = 0; off < b.size();) {
        const ssize_t n = send(to, b.data() + off, b.size() - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          End(std::string(direction == 0 ? "to the secondary: " : "to the primary: ") + std::strerror(errno));
          shutdown(from, SHUT_RD);
          return;
        }
        off += size_t(n);
      }
      bytes_[direction].fetch_add(b.size(), std::memory_order_relaxed);
      queue.pop_front();
    }
    if (eof) {
      if (queue.empty()) {
        // The sender hung up: so does the relay, toward the other side.
        shutdown(to, SHUT_WR);
        End(direction == 0 ? "the primary hung up" : "the secondary hung up");
        return;
      }
    }
    int wait_ms = 20;
    if (!queue.empty()) {
      const uint64_t t = NowNs(), due = queue.front().due_ns;
      wait_ms = int(std::min<uint64_t>(20, due > t ? (due - t + 999999) / 1000000 : 0));
    }
    pollfd p{from, short(eof ? 0 : POLLIN), 0};
    const int ready = poll(&p, 1, wait_ms);
    if (ready < 0 && errno != EINTR) {
      End(std::string("poll: ") + std::strerror(errno));
      return;
    }
    if (ready <= 0 || eof) continue;
    const ssize_t n = recv(from, buf.data(), buf.size(), 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) {
      if (n < 0) End(std::string(direction == 0 ? "from the primary: " : "from the secondary: ") + std::strerror(errno));
      eof = true;
      continue;
    }
    std::vector<uint8_t> bytes(buf.begin(), buf.begin() + n);
    read_total += uint64_t(n);
    if (direction == 0 && corrupt_pending_.exchange(false, std::memory_order_acq_rel)) {
      const uint64_t r = corrupt_random_.load(std::memory_order_relaxed);
      const size_t at = size_t(r % uint64_t(n));
      bytes[at] ^= uint8_t(1u << ((r >> 32) % 8));
      corrupted_.store(true, std::memory_order_release);
      log::info("drill.relay_corrupted", {{"stream_offset", read_total - uint64_t(n) + at}, {"bit", (r >> 32) % 8}});
    }
    // Order is kept: a chunk never overtakes the one before it, even when the delay
    // shrinks meanwhile.
    uint64_t due = NowNs() + delay_ns_.load(std::memory_order_relaxed);
    if (!queue.empty()) due = std::max(due, queue.back().due_ns);
    queue.push_back({due, std::move(bytes)});
  }
}

}  // namespace ftvm::drill
