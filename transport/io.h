// Internal helpers shared by the transports: deadlines, waiting on several file
// descriptors, whole-buffer I/O for handshakes, and the counters behind stats().
#pragma once

#include <poll.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <span>
#include <string>

#include "transport/channel.h"
#include "transport/frame.h"

namespace ftvm::transport::detail {

// A point in time computed once from a relative timeout, so that loops which wait
// several times (partial writes, spurious wake-ups) never extend the caller's timeout.
class Deadline {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Deadline(std::chrono::nanoseconds timeout) {
    if (timeout == kNoTimeout) {
      forever_ = true;
    } else {
      if (timeout < std::chrono::nanoseconds::zero()) timeout = std::chrono::nanoseconds::zero();
      // Saturate: a timeout of years must not overflow into the past.
      auto now = Clock::now();
      at_ = (Clock::time_point::max() - now > timeout) ? now + timeout : Clock::time_point::max();
    }
  }
  bool forever() const { return forever_; }
  bool expired() const { return !forever_ && Clock::now() >= at_; }
  // Against a time the caller read already (a poll loop reads the clock once a round).
  bool expired(Clock::time_point now) const { return !forever_ && now >= at_; }
  // Time left, never negative; kNoTimeout when forever.
  std::chrono::nanoseconds remaining() const {
    if (forever_) return kNoTimeout;
    auto left = at_ - Clock::now();
    return left > Clock::duration::zero() ? std::chrono::duration_cast<std::chrono::nanoseconds>(left)
                                          : std::chrono::nanoseconds::zero();
  }
  // The earlier of this deadline and now + `cap` (handshakes bound their wait even
  // when the caller's timeout is infinite).
  Deadline capped(std::chrono::nanoseconds cap) const {
    return Deadline(std::min(remaining(), cap));
  }

 private:
  bool forever_ = false;
  Clock::time_point at_{};
};

// ppoll() until a descriptor is ready or the deadline passes (EINTR retried).
// Returns the number of ready descriptors, 0 on timeout, -1 with errno on failure.
int PollUntil(std::span<pollfd> fds, const Deadline& deadline);

// Milliseconds for messages: "250 ms".
std::string DescribeTimeout(std::chrono::nanoseconds timeout);

// Writes all of `data` to a non-blocking socket, waiting for room until the
// deadline. Returns "" or what went wrong ("timed out", "Connection reset by peer").
std::string SendAll(int fd, std::span<const uint8_t> data, const Deadline& deadline);
// Reads exactly `out.size()` bytes from a non-blocking socket. Returns "" or what went
// wrong ("peer closed the connection", "timed out", an errno text).
std::string RecvAll(int fd, std::span<uint8_t> out, const Deadline& deadline);

void SetNonBlocking(int fd, const std::string& what);  // throws ftvm::Error

// Sends our hello and reads and checks the peer's (transport/frame.h) within the
// deadline. Returns "" or why the peer is not acceptable.
std::string ExchangeHello(int fd, HelloKind kind, const Deadline& deadline);

// The counters behind Channel::stats(): each one is written by one side (the sender
// under its mutex, the receiver under its own) and read by anyone.
struct Counters {
  std::atomic<uint64_t> messages_sent{0};
  std::atomic<uint64_t> bytes_sent{0};
  std::atomic<uint64_t> messages_received{0};
  std::atomic<uint64_t> bytes_received{0};
  std::atomic<uint64_t> send_waits{0};
  std::atomic<uint64_t> recv_waits{0};

  static void add(std::atomic<uint64_t>& c, uint64_t n) {
    // Single writer: a relaxed load+store, no locked read-modify-write on the hot path.
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  ChannelStats snapshot() const {
    ChannelStats s;
    s.messages_sent = messages_sent.load(std::memory_order_relaxed);
    s.bytes_sent = bytes_sent.load(std::memory_order_relaxed);
    s.messages_received = messages_received.load(std::memory_order_relaxed);
    s.bytes_received = bytes_received.load(std::memory_order_relaxed);
    s.send_waits = send_waits.load(std::memory_order_relaxed);
    s.recv_waits = recv_waits.load(std::memory_order_relaxed);
    return s;
  }
};

inline SendResult SendFailure(SendCode code, std::string message) { return {code, std::move(message)}; }
inline RecvResult RecvFailure(RecvCode code, std::string message) { return {code, std::move(message)}; }

// How long a peer that connected may take over its hello (and, for RDMA, its
// queue-pair exchange), whatever the caller's own timeout: every transport's accept
// and connect bound their handshake by it (channel.h).
inline constexpr std::chrono::seconds kHandshakeTimeout{10};

}  // namespace ftvm::transport::detail
