// The TCP transport: frames back to back on one non-blocking socket.
//
// A send is one sendmsg() of header, payload parts and CRC (gathered, never copied
// together), repeated only when the socket buffer takes part of it. A recv reads up to
// 256 KiB at a time into a buffer that the frame decoder consumes, so a burst of small
// messages costs one system call, while the rest of a large payload is read straight
// into the message (readv with the buffer as second vector for what follows it).
// Blocking waits are ppoll() on the socket plus an eventfd that close() makes readable,
// so close() wakes both directions without touching a descriptor another thread may
// be using.
#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "common/error.h"
#include "common/log.h"
#include "eventlog/crc32c.h"
#include "eventlog/format.h"
#include "transport/channel.h"
#include "transport/frame.h"
#include "transport/io.h"
#include "transport/sockets.h"

namespace ftvm::transport {

using detail::Counters;
using detail::Deadline;
using detail::HostPort;
using detail::PollUntil;

namespace {

constexpr size_t kReadBufferBytes = 256u << 10;
// A handshake is 16 bytes each way; a peer that takes longer than this is not a live
// ftvm channel, and must not hold up an accept() that has no timeout.
using detail::kHandshakeTimeout;

class TcpChannel final : public Channel {
 public:
  TcpChannel(UniqueFd fd, std::string peer)
      : fd_(std::move(fd)), peer_(std::move(peer)), decoder_(peer_),
        rbuf_(std::make_unique_for_overwrite<uint8_t[]>(kReadBufferBytes)) {
    wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_) throw SysError(peer_ + ": eventfd");
  }
  ~TcpChannel() override {
    close();
    // Closing a socket with unread data makes the kernel send a reset, which can
    // discard what we sent and the peer has not read yet. Read what is there first
    // (bounded: this is a destructor).
    for (int i = 0; i < 64; ++i) {
      if (::recv(fd_.get(), rbuf_.get(), kReadBufferBytes, MSG_DONTWAIT) <= 0) break;
    }
  }

  std::string_view kind() const override { return "tcp"; }
  const std::string& peer() const override { return peer_; }
  SendResult send(uint8_t type, std::span<const std::span<const uint8_t>> parts,
                  std::chrono::nanoseconds timeout) override;
  RecvResult recv(Message& out, std::chrono::nanoseconds timeout) override;
  void close() override;
  ChannelStats stats() const override { return counters_.snapshot(); }

 private:
  SendResult closed_locally() const { return {SendCode::kClosed, peer_ + ": channel closed"}; }
  RecvResult recv_closed_locally() const { return {RecvCode::kClosed, peer_ + ": channel closed"}; }
  RecvResult end_recv(RecvCode code, std::string message) {
    recv_end_ = RecvResult{code, std::move(message)};
    return *recv_end_;
  }

  size_t send_buffer_bytes() const {
    int v = 0;
    socklen_t len = sizeof v;
    if (::getsockopt(fd_.get(), SOL_SOCKET, SO_SNDBUF, &v, &len) < 0 || v <= 0) return 0;
    return static_cast<size_t>(v);
  }

  UniqueFd fd_;
  UniqueFd wake_;  // readable once close() was called; never drained
  const std::string peer_;
  std::atomic<bool> closed_{false};
  Counters counters_;

  std::mutex send_mutex_;
  std::optional<SendResult> send_end_;  // sticky: the peer is gone or the socket failed
  std::vector<iovec> iov_;
  size_t room_ = 0;  // send-buffer bytes known free for whole frames (see send())

  std::mutex recv_mutex_;
  std::optional<RecvResult> recv_end_;  // sticky: EOF, reset or an I/O error
  FrameDecoder decoder_;
  std::unique_ptr<uint8_t[]> rbuf_;
  size_t rpos_ = 0;
  size_t rend_ = 0;
};

SendResult TcpChannel::send(uint8_t type, std::span<const std::span<const uint8_t>> parts,
                            std::chrono::nanoseconds timeout) {
  const Deadline deadline(timeout);
  std::lock_guard lock(send_mutex_);
  if (closed_.load(std::memory_order_acquire)) return closed_locally();
  if (send_end_) return *send_end_;
  if (type == 0) return {SendCode::kError, peer_ + ": message type 0 is reserved"};
  size_t length = 0;
  for (auto p : parts) length += p.size();
  if (length > kMaxMessageBytes) {
    return {SendCode::kError, peer_ + ": message of " + std::to_string(length) +
                                  " bytes exceeds the limit of " + std::to_string(kMaxMessageBytes)};
  }

  const auto header = EncodeFrameHeader(type, static_cast<uint32_t>(length));
  uint8_t trailer[kFrameTrailerBytes];
  eventlog::PutLe32(trailer, FrameCrc(header, parts));
  iov_.clear();
  iov_.push_back({const_cast<uint8_t*>(header.data()), header.size()});
  for (auto p : parts) {
    if (!p.empty()) iov_.push_back({const_cast<uint8_t*>(p.data()), p.size()});
  }
  iov_.push_back({trailer, sizeof trailer});

  const size_t total = length + kFrameOverhead;
  // Wait for room for the whole frame before writing any of it, so that a timeout
  // leaves nothing half sent (TCP takes partial writes). The kernel reports POLLOUT
  // only while at least a third of the send buffer is free, so a frame that fits in a
  // third (~2.7 MiB with the default buffers) is written whole once POLLOUT was seen;
  // `room_` counts down what we wrote since, so a fast peer costs one poll per third
  // of the buffer, not one per message. Larger frames are streamed.
  const size_t need = total + total / 8 + 4096;  // payload plus the kernel's per-skb overhead
  if (need > room_) {
    room_ = 0;
    const size_t third = send_buffer_bytes() / 3;
    if (need <= third) {
      pollfd fds[2] = {{fd_.get(), POLLOUT, 0}, {wake_.get(), POLLIN, 0}};
      int r = PollUntil(fds, Deadline(std::chrono::nanoseconds::zero()));
      if (r == 0) {
        Counters::add(counters_.send_waits, 1);
        r = PollUntil(fds, deadline);
      }
      if (r < 0) {
        send_end_ = SendResult{SendCode::kError, peer_ + ": poll: " + std::strerror(errno)};
        return *send_end_;
      }
      if (fds[1].revents != 0) return closed_locally();
      if (r == 0) {
        return {SendCode::kTimeout, peer_ + ": peer not reading: no room for a message of " +
                                        std::to_string(length) + " bytes within " +
                                        detail::DescribeTimeout(timeout)};
      }
      // Writable (at least a third free), or an error the sendmsg() below reports.
      if (fds[0].revents & POLLOUT) room_ = third;
    }
  }
  room_ = room_ > need ? room_ - need : 0;

  size_t sent = 0;
  size_t idx = 0;
  while (sent < total) {
    msghdr m{};
    m.msg_iov = &iov_[idx];
    m.msg_iovlen = std::min<size_t>(iov_.size() - idx, IOV_MAX);
    ssize_t n = ::sendmsg(fd_.get(), &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      for (size_t left = static_cast<size_t>(n); left > 0;) {
        if (left >= iov_[idx].iov_len) {
          left -= iov_[idx].iov_len;
          ++idx;
        } else {
          iov_[idx].iov_base = static_cast<uint8_t*>(iov_[idx].iov_base) + left;
          iov_[idx].iov_len -= left;
          left = 0;
        }
      }
      continue;
    }
    const int err = errno;
    if (err == EINTR) continue;
    if (closed_.load(std::memory_order_acquire)) return closed_locally();
    if (err == EPIPE || err == ECONNRESET) {
      send_end_ = SendResult{SendCode::kClosed, peer_ + ": peer closed the connection (" +
                                                    std::strerror(err) + ")"};
      return *send_end_;
    }
    if (err != EAGAIN && err != EWOULDBLOCK) {
      send_end_ = SendResult{SendCode::kError, peer_ + ": send: " + std::strerror(err)};
      return *send_end_;
    }
    // The socket buffer is full: the peer is not reading fast enough. Wait for room.
    Counters::add(counters_.send_waits, 1);
    pollfd fds[2] = {{fd_.get(), POLLOUT, 0}, {wake_.get(), POLLIN, 0}};
    int r = PollUntil(fds, deadline);
    if (r < 0) {
      send_end_ = SendResult{SendCode::kError, peer_ + ": poll: " + std::strerror(errno)};
      return *send_end_;
    }
    if (fds[1].revents != 0) return closed_locally();
    if (r == 0) {
      if (sent == 0) {
        return {SendCode::kTimeout, peer_ + ": peer not reading: no room for a message of " +
                                        std::to_string(length) + " bytes within " +
                                        detail::DescribeTimeout(timeout)};
      }
      // Part of the frame is out: anything sent after it would be read as its rest.
      close();
      return {SendCode::kError, peer_ + ": timed out after " + std::to_string(sent) + " of " +
                                    std::to_string(total) + " bytes of a message were sent (" +
                                    detail::DescribeTimeout(timeout) +
                                    "); the stream cannot continue, channel closed"};
    }
    // Writable, or POLLERR/POLLHUP: the next sendmsg() reports which.
  }
  Counters::add(counters_.messages_sent, 1);
  Counters::add(counters_.bytes_sent, length);
  return {};
}

RecvResult TcpChannel::recv(Message& out, std::chrono::nanoseconds timeout) {
  const Deadline deadline(timeout);
  std::lock_guard lock(recv_mutex_);
  if (closed_.load(std::memory_order_acquire)) return recv_closed_locally();
  if (recv_end_) return *recv_end_;
  if (decoder_.failed()) return RecvResult::Damaged(decoder_.error());
  for (;;) {
    while (rpos_ < rend_) {
      auto step = decoder_.feed({rbuf_.get() + rpos_, rend_ - rpos_});
      rpos_ += step.consumed;
      if (step.status == FrameDecoder::Status::kMessage) {
        decoder_.take(out);
        Counters::add(counters_.messages_received, 1);
        Counters::add(counters_.bytes_received, out.size());
        return {};
      }
      if (step.status == FrameDecoder::Status::kError) return RecvResult::Damaged(decoder_.error());
    }
    rpos_ = rend_ = 0;
    // The rest of a payload goes straight into the message; whatever follows it lands
    // in the buffer.
    iovec iov[2];
    int niov = 0;
    const auto space = decoder_.payload_space();
    if (!space.empty()) iov[niov++] = {space.data(), space.size()};
    iov[niov++] = {rbuf_.get(), kReadBufferBytes};
    ssize_t n = ::readv(fd_.get(), iov, niov);
    if (n > 0) {
      size_t direct = std::min(static_cast<size_t>(n), space.size());
      if (direct > 0) decoder_.payload_written(direct);
      rend_ = static_cast<size_t>(n) - direct;
      continue;
    }
    if (n == 0) {
      std::string partial = decoder_.mid_frame() ? " " + decoder_.describe_partial() : "";
      return end_recv(RecvCode::kClosed, peer_ + ": peer closed the connection" + partial);
    }
    const int err = errno;
    if (err == EINTR) continue;
    if (closed_.load(std::memory_order_acquire)) return recv_closed_locally();
    if (err == ECONNRESET || err == EPIPE) {
      std::string partial = decoder_.mid_frame() ? " " + decoder_.describe_partial() : "";
      return end_recv(RecvCode::kClosed, peer_ + ": connection reset by peer" + partial);
    }
    if (err != EAGAIN && err != EWOULDBLOCK) {
      return end_recv(RecvCode::kError, peer_ + ": recv at stream offset " +
                                            std::to_string(decoder_.stream_offset()) + ": " +
                                            std::strerror(err));
    }
    Counters::add(counters_.recv_waits, 1);
    pollfd fds[2] = {{fd_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    int r = PollUntil(fds, deadline);
    if (r < 0) return end_recv(RecvCode::kError, peer_ + ": poll: " + std::strerror(errno));
    if (fds[1].revents != 0) return recv_closed_locally();
    if (r == 0) {
      return {RecvCode::kTimeout, peer_ + ": no message within " + detail::DescribeTimeout(timeout)};
    }
  }
}

void TcpChannel::close() {
  if (closed_.exchange(true, std::memory_order_acq_rel)) return;
  uint64_t one = 1;
  [[maybe_unused]] ssize_t w = ::write(wake_.get(), &one, sizeof one);
  // FIN after everything already written: the peer reads what we sent, then kClosed.
  // The descriptor itself stays open until the destructor, so a thread still inside
  // send/recv never sees it reused.
  ::shutdown(fd_.get(), SHUT_WR);
}

}  // namespace

TcpListener::TcpListener(const std::string& bind_address, uint16_t port, const TcpOptions& options)
    : host_(bind_address), options_(options) {
  fd_ = detail::ListenTcp(bind_address, port, options_.socket_buffer_bytes,
                          "tcp listen on " + HostPort(bind_address, port), &port_);
}

TcpListener::~TcpListener() = default;

std::string TcpListener::address() const { return "tcp:" + HostPort(host_, port_); }

std::unique_ptr<Channel> TcpListener::accept(std::chrono::nanoseconds timeout) {
  const Deadline deadline(timeout);
  const std::string what = "tcp accept on " + HostPort(host_, port_);
  for (;;) {
    std::string peer;
    UniqueFd conn = detail::AcceptTcp(fd_.get(), options_.socket_buffer_bytes, deadline, what, &peer);
    if (!conn) return nullptr;
    peer = "tcp:" + peer;
    std::string err = detail::ExchangeHello(conn.get(), HelloKind::kTcp, Deadline(kHandshakeTimeout));
    if (!err.empty()) {
      log::warn("channel_handshake_failed", {{"listener", address()}, {"peer", peer}, {"error", err}});
      if (deadline.expired()) return nullptr;
      continue;
    }
    log::debug("channel_accepted", {{"listener", address()}, {"peer", peer}});
    return std::make_unique<TcpChannel>(std::move(conn), peer);
  }
}

std::unique_ptr<Channel> TcpConnect(const std::string& host, uint16_t port, std::chrono::nanoseconds timeout,
                                    const TcpOptions& options) {
  const std::string target = HostPort(host, port);
  const std::string what = "tcp connect to " + target;
  const Deadline deadline(timeout);
  UniqueFd fd = detail::ConnectTcp(host, port, options.socket_buffer_bytes, deadline, timeout, what);
  std::string err = detail::ExchangeHello(fd.get(), HelloKind::kTcp, deadline);
  if (!err.empty()) throw Error(what + ": handshake: " + err);
  return std::make_unique<TcpChannel>(std::move(fd), "tcp:" + target);
}

}  // namespace ftvm::transport
