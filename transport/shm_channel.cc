// The shared-memory transport: two processes on one host share a memfd holding one
// single-producer/single-consumer byte ring per direction, carrying the same frames as
// TCP (transport/frame.h).
//
// Memory layout (one memfd, sealed against shrinking so the peer can never make our
// accesses fault):
//
//   [0, 4096)                    ShmControl: magic, layout version, ring size, then
//                                per side a "closed" flag and per ring the producer's
//                                line (tail, producer waiting) and the consumer's line
//                                (head, consumer waiting), each on its own 128 bytes
//   [4096, 4096+R)               ring 0: listener -> connector
//   [4096+R, 4096+2R)            ring 1: connector -> listener
//
// Positions (head, tail) are free-running byte counts; byte p of the stream lives at
// data[p & (R-1)]. The producer writes bytes at tail and then publishes tail with a
// release store; the consumer reads [head, tail) after an acquire load and publishes
// head when it has copied bytes out. A frame that fits in the ring is written whole
// and published once, so the consumer never sees half of it; a larger one is streamed
// and published every 256 KiB (its CRC still guards delivery).
//
// Wake-ups: each side busy-waits up to ShmOptions::spin (10 us by default) and then
// sleeps in ppoll() on an eventfd. Before sleeping it sets its "waiting" flag and
// looks once more; after publishing, the other side looks at that flag and writes the
// eventfd only when it is set. Both use a seq_cst fence between their store and their
// load, so at least one of them sees the other's store: no lost wake-up, and no system
// call at all while both sides are keeping up.
//
// Peer death: the Unix socket used for setup stays open for the channel's life and is
// in every ppoll() set; the kernel closes it when the peer process dies, whatever the
// way. A graceful close() also sets the side's flag in shared memory. Either way the
// receiver first delivers every whole message already published, then kClosed; a
// frame the peer did not finish is dropped.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>
#include <vector>

#include "common/error.h"
#include "common/log.h"
#include "eventlog/crc32c.h"
#include "eventlog/format.h"
#include "transport/channel.h"
#include "transport/frame.h"
#include "transport/io.h"
#include "transport/shm_testing.h"
#include "transport/shm_util.h"
#include "transport/sockets.h"

namespace ftvm::transport {

using detail::Counters;
using detail::Deadline;
using detail::DrainEventfd;
using detail::Mapping;
using detail::MapShared;
using detail::PollUntil;
using detail::SignalEventfd;
using detail::SpinUntil;
using eventlog::GetLe64;
using eventlog::PutLe64;

namespace {

constexpr uint8_t kShmMagic[8] = {'F', 'T', 'V', 'M', 'R', 'I', 'N', 'G'};
constexpr uint32_t kShmLayoutVersion = 1;
constexpr size_t kControlBytes = 4096;
constexpr size_t kMinRingBytes = 4096;
constexpr size_t kMaxRingBytes = size_t{1} << 30;
// Streaming granularity for frames larger than the ring, and how often a consumer
// copying a large payload hands space back to the producer.
constexpr size_t kPublishEvery = 256u << 10;
using detail::kHandshakeTimeout;
// Setup message: a hello, the ring size and the memfd size; with it, SCM_RIGHTS
// passes the memfd and the four eventfds.
constexpr size_t kSetupBytes = kHelloBytes + 16;
constexpr int kSetupFds = 5;

// 128 bytes, not 64: the adjacent-line prefetcher pulls cache lines in pairs, which
// would make the producer's and the consumer's lines bounce together.
constexpr size_t kLine = 128;
struct alignas(kLine) ProducerLine {
  std::atomic<uint64_t> tail;
  std::atomic<uint32_t> waiting;  // the producer sleeps until the consumer frees space
};
struct alignas(kLine) ConsumerLine {
  std::atomic<uint64_t> head;
  std::atomic<uint32_t> waiting;  // the consumer sleeps until the producer publishes
};
struct RingControl {
  ProducerLine producer;
  ConsumerLine consumer;
};
struct alignas(kLine) SideLine {
  std::atomic<uint32_t> closed;  // this side called close()
};
struct ShmControl {
  uint8_t magic[8];
  uint32_t version;
  uint32_t reserved;
  uint64_t ring_bytes;
  uint64_t data_offset;
  SideLine sides[2];    // 0: listener, 1: connector
  RingControl rings[2];  // 0: listener -> connector, 1: connector -> listener
};
static_assert(sizeof(ShmControl) <= kControlBytes);
// Atomics shared between processes must not be implemented with a process-local lock.
static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free);

bool ValidRingBytes(uint64_t n) {
  return n >= kMinRingBytes && n <= kMaxRingBytes && (n & (n - 1)) == 0;
}

struct RingEnd {
  RingControl* ctl = nullptr;
  uint8_t* data = nullptr;
  UniqueFd data_efd;   // producer -> consumer: bytes were published
  UniqueFd space_efd;  // consumer -> producer: space was freed
};

enum class Wait : uint8_t { kReady, kTimeout, kClosedHere, kPeerGone, kCorrupt, kFailed };

class ShmChannel final : public Channel {
 public:
  // `side` 0 is the listener, 1 the connector. `efds`: ring 0 data, ring 0 space,
  // ring 1 data, ring 1 space.
  ShmChannel(std::string peer, int side, Mapping map, UniqueFd sock, std::array<UniqueFd, 4> efds,
             std::chrono::nanoseconds spin)
      : peer_(std::move(peer)), side_(side), map_(std::move(map)), sock_(std::move(sock)), spin_(spin),
        decoder_(peer_) {
    ctl_ = std::launder(reinterpret_cast<ShmControl*>(map_.data()));
    cap_ = ctl_->ring_bytes;
    mask_ = cap_ - 1;
    RingEnd rings[2];
    for (int r = 0; r < 2; ++r) {
      rings[r].ctl = &ctl_->rings[r];
      rings[r].data = map_.data() + ctl_->data_offset + r * cap_;
      rings[r].data_efd = std::move(efds[2 * r]);
      rings[r].space_efd = std::move(efds[2 * r + 1]);
    }
    out_ = std::move(rings[side]);
    in_ = std::move(rings[1 - side]);
    tail_ = head_seen_ = out_.ctl->producer.tail.load(std::memory_order_relaxed);
    head_ = in_.ctl->consumer.head.load(std::memory_order_relaxed);
    wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_) throw SysError(peer_ + ": eventfd");
  }
  ~ShmChannel() override { close(); }

  std::string_view kind() const override { return "shm"; }
  const std::string& peer() const override { return peer_; }
  SendResult send(uint8_t type, std::span<const std::span<const uint8_t>> parts,
                  std::chrono::nanoseconds timeout) override;
  RecvResult recv(Message& out, std::chrono::nanoseconds timeout) override;
  void close() override;
  ChannelStats stats() const override { return counters_.snapshot(); }

  test_hooks::ShmRingView incoming_ring() {
    return {{in_.data, cap_},
            in_.ctl->consumer.head.load(std::memory_order_acquire),
            in_.ctl->producer.tail.load(std::memory_order_acquire)};
  }

 private:
  enum PeerState : int { kAlive = 0, kClosedByPeer = 1, kHungUp = 2 };

  bool peer_gone() {
    if (peer_state_.load(std::memory_order_acquire) != kAlive) return true;
    if (ctl_->sides[1 - side_].closed.load(std::memory_order_acquire) != 0) {
      peer_state_.store(kClosedByPeer, std::memory_order_release);
      return true;
    }
    return false;
  }
  // The setup socket became readable or hung up: the peer closed it, or died.
  void socket_hung_up() {
    if (!peer_gone()) peer_state_.store(kHungUp, std::memory_order_release);
  }
  std::string gone_text() const {
    return peer_state_.load(std::memory_order_acquire) == kClosedByPeer
               ? ": peer closed the channel"
               : ": peer is gone (its end of the setup socket closed: it exited or died)";
  }

  // Producer side (under send_mutex_).
  int64_t free_space() {  // -1: the consumer's head is not within the ring
    head_seen_ = out_.ctl->consumer.head.load(std::memory_order_acquire);
    uint64_t used = tail_ - head_seen_;
    return used > cap_ ? -1 : static_cast<int64_t>(cap_ - used);
  }
  template <typename Ready>
  Wait sleep_until(Ready ready, std::atomic<uint32_t>& waiting, int efd, std::atomic<uint64_t>& wait_count,
                   const Deadline& deadline);
  Wait wait_space(size_t need, const Deadline& deadline);
  void copy_in(const uint8_t* src, size_t n) {
    size_t off = tail_ & mask_;
    size_t first = std::min(n, cap_ - off);
    std::memcpy(out_.data + off, src, first);
    std::memcpy(out_.data, src + first, n - first);
    tail_ += n;
  }
  void publish_tail() {
    out_.ctl->producer.tail.store(tail_, std::memory_order_release);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (out_.ctl->consumer.waiting.load(std::memory_order_relaxed) != 0) SignalEventfd(out_.data_efd.get());
  }
  SendResult wait_failed(Wait w, bool mid_message, size_t length, std::chrono::nanoseconds timeout);

  // Consumer side (under recv_mutex_).
  Wait wait_data(const Deadline& deadline);
  FrameDecoder::Status consume(Message& out, uint64_t tail);
  void publish_head() {
    in_.ctl->consumer.head.store(head_, std::memory_order_release);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (in_.ctl->producer.waiting.load(std::memory_order_relaxed) != 0) SignalEventfd(in_.space_efd.get());
  }
  RecvResult end_recv(RecvCode code, std::string message) {
    recv_end_ = RecvResult{code, std::move(message)};
    return *recv_end_;
  }
  RecvResult end_damaged(std::string message) {
    recv_end_ = RecvResult::Damaged(std::move(message));
    return *recv_end_;
  }

  const std::string peer_;
  const int side_;
  Mapping map_;
  ShmControl* ctl_ = nullptr;
  size_t cap_ = 0;
  uint64_t mask_ = 0;
  UniqueFd sock_;
  UniqueFd wake_;  // readable once close() was called; never drained
  RingEnd out_;
  RingEnd in_;
  const std::chrono::nanoseconds spin_;
  std::atomic<bool> closed_{false};
  std::atomic<int> peer_state_{kAlive};
  Counters counters_;

  std::mutex send_mutex_;
  uint64_t tail_ = 0;       // our producer position (published or about to be)
  uint64_t head_seen_ = 0;  // the consumer's head when we last looked
  std::optional<SendResult> send_end_;

  std::mutex recv_mutex_;
  uint64_t head_ = 0;  // our consumer position
  FrameDecoder decoder_;
  std::optional<RecvResult> recv_end_;
};

// The wait both directions share: spin a little, then raise `waiting` so the peer
// signals `efd`, look again (the fence orders the flag against the peer's publish,
// so a wakeup cannot be missed), and sleep. Also wakes for close() and for the
// peer's setup socket hanging up.
template <typename Ready>
Wait ShmChannel::sleep_until(Ready ready, std::atomic<uint32_t>& waiting, int efd, std::atomic<uint64_t>& wait_count,
                             const Deadline& deadline) {
  if (spin_ > std::chrono::nanoseconds::zero() && SpinUntil(spin_, deadline, ready)) return Wait::kReady;
  if (ready()) return Wait::kReady;
  Counters::add(wait_count, 1);
  for (;;) {
    waiting.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (ready()) {
      waiting.store(0, std::memory_order_relaxed);
      return Wait::kReady;
    }
    if (closed_.load(std::memory_order_acquire)) return Wait::kClosedHere;
    if (peer_gone()) {
      waiting.store(0, std::memory_order_relaxed);
      return Wait::kPeerGone;
    }
    pollfd fds[3] = {{efd, POLLIN, 0}, {sock_.get(), POLLIN | POLLRDHUP, 0}, {wake_.get(), POLLIN, 0}};
    int r = PollUntil(fds, deadline);
    if (r < 0) return Wait::kFailed;
    if (fds[2].revents != 0) return Wait::kClosedHere;
    if (fds[1].revents != 0) socket_hung_up();
    if (fds[0].revents != 0) DrainEventfd(efd);
    if (r == 0) {
      waiting.store(0, std::memory_order_relaxed);
      return ready() ? Wait::kReady : Wait::kTimeout;
    }
  }
}

Wait ShmChannel::wait_space(size_t need, const Deadline& deadline) {
  auto ready = [&] { return free_space() < 0 || static_cast<size_t>(free_space()) >= need; };
  Wait w = sleep_until(ready, out_.ctl->producer.waiting, out_.space_efd.get(), counters_.send_waits, deadline);
  return w == Wait::kReady && free_space() < 0 ? Wait::kCorrupt : w;
}

SendResult ShmChannel::wait_failed(Wait w, bool mid_message, size_t length, std::chrono::nanoseconds timeout) {
  switch (w) {
    case Wait::kClosedHere:
      return {SendCode::kClosed, peer_ + ": channel closed"};
    case Wait::kPeerGone:
      send_end_ = SendResult{SendCode::kClosed, peer_ + gone_text()};
      return *send_end_;
    case Wait::kCorrupt:
      send_end_ = SendResult{SendCode::kError, peer_ + ": shared ring corrupted (consumer position " +
                                                   std::to_string(head_seen_) + ", producer position " +
                                                   std::to_string(tail_) + ", ring of " +
                                                   std::to_string(cap_) + " bytes)"};
      return *send_end_;
    case Wait::kFailed:
      send_end_ = SendResult{SendCode::kError, peer_ + ": poll: " + std::strerror(errno)};
      return *send_end_;
    case Wait::kTimeout:
      if (!mid_message) {
        return {SendCode::kTimeout, peer_ + ": peer not reading: no room for a message of " +
                                        std::to_string(length) + " bytes within " +
                                        detail::DescribeTimeout(timeout)};
      }
      // Part of a frame larger than the ring is published: nothing else may follow it.
      close();
      return {SendCode::kError, peer_ + ": timed out (" + detail::DescribeTimeout(timeout) +
                                    ") in the middle of a message of " + std::to_string(length) +
                                    " bytes larger than the ring; the stream cannot continue, channel closed"};
    case Wait::kReady:
      break;
  }
  return {};
}

SendResult ShmChannel::send(uint8_t type, std::span<const std::span<const uint8_t>> parts,
                            std::chrono::nanoseconds timeout) {
  const Deadline deadline(timeout);
  std::lock_guard lock(send_mutex_);
  if (closed_.load(std::memory_order_acquire)) return {SendCode::kClosed, peer_ + ": channel closed"};
  if (send_end_) return *send_end_;
  if (peer_gone()) {
    send_end_ = SendResult{SendCode::kClosed, peer_ + gone_text()};
    return *send_end_;
  }
  if (type == 0) return {SendCode::kError, peer_ + ": message type 0 is reserved"};
  size_t length = 0;
  for (auto p : parts) length += p.size();
  if (length > kMaxMessageBytes) {
    return {SendCode::kError, peer_ + ": message of " + std::to_string(length) +
                                  " bytes exceeds the limit of " + std::to_string(kMaxMessageBytes)};
  }

  const size_t frame = length + kFrameOverhead;
  const bool whole = frame <= cap_;
  // A frame that fits waits for room for all of it, so a timeout leaves nothing
  // behind and the consumer never sees it half written.
  if (whole) {
    Wait w = wait_space(frame, deadline);
    if (w != Wait::kReady) return wait_failed(w, false, length, timeout);
  }

  const uint64_t start = tail_;
  uint64_t published = tail_;
  // Copies `n` bytes at tail_, waiting for space when streaming a frame larger than
  // the ring. Returns a failure, or nothing when all bytes are in.
  auto put = [&](const uint8_t* src, size_t n) -> std::optional<SendResult> {
    while (n > 0) {
      int64_t space = static_cast<int64_t>(cap_ - (tail_ - head_seen_));
      if (space == 0) space = free_space();
      if (space <= 0) {
        publish_tail();
        published = tail_;
        size_t left = frame - (tail_ - start);
        Wait w = wait_space(std::min(left, cap_ / 4), deadline);
        if (w != Wait::kReady) return wait_failed(w, /*mid_message=*/true, length, timeout);
        continue;
      }
      size_t k = std::min({n, static_cast<size_t>(space), kPublishEvery});
      copy_in(src, k);
      src += k;
      n -= k;
      if (!whole && tail_ - published >= kPublishEvery) {
        publish_tail();
        published = tail_;
      }
    }
    return std::nullopt;
  };

  const auto header = EncodeFrameHeader(type, static_cast<uint32_t>(length));
  uint32_t crc = eventlog::Crc32c(header);
  if (auto fail = put(header.data(), header.size())) return *fail;
  for (auto part : parts) {
    // CRC and copy per piece, so the CRC reads what the copy just brought into cache.
    for (size_t done = 0; done < part.size();) {
      size_t piece = std::min<size_t>(kPublishEvery, part.size() - done);
      crc = eventlog::Crc32c(part.subspan(done, piece), crc);
      if (auto fail = put(part.data() + done, piece)) return *fail;
      done += piece;
    }
  }
  uint8_t trailer[kFrameTrailerBytes];
  eventlog::PutLe32(trailer, crc);
  if (auto fail = put(trailer, sizeof trailer)) return *fail;
  publish_tail();
  Counters::add(counters_.messages_sent, 1);
  Counters::add(counters_.bytes_sent, length);
  return {};
}

Wait ShmChannel::wait_data(const Deadline& deadline) {
  auto& tail = in_.ctl->producer.tail;
  auto ready = [&] { return tail.load(std::memory_order_acquire) != head_; };
  return sleep_until(ready, in_.ctl->consumer.waiting, in_.data_efd.get(), counters_.recv_waits, deadline);
}

// Feeds the decoder the bytes published up to `tail` (loaded and checked by the
// caller), stopping at the end of the first whole message. kNeedMore means everything
// up to `tail` was consumed.
FrameDecoder::Status ShmChannel::consume(Message& out, uint64_t tail) {
  uint64_t published = head_;
  auto status = FrameDecoder::Status::kNeedMore;
  while (head_ != tail) {
    size_t off = head_ & mask_;
    size_t n = std::min<uint64_t>({tail - head_, cap_ - off, kPublishEvery});
    auto step = decoder_.feed({in_.data + off, n});
    head_ += step.consumed;
    if (step.status != FrameDecoder::Status::kNeedMore) {
      status = step.status;
      break;
    }
    // While copying out a large payload, hand space back as we go so the producer
    // refills the ring in parallel.
    if (head_ - published >= kPublishEvery) {
      publish_head();
      published = head_;
    }
  }
  if (head_ != published) publish_head();
  if (status == FrameDecoder::Status::kMessage) decoder_.take(out);
  return status;
}

RecvResult ShmChannel::recv(Message& out, std::chrono::nanoseconds timeout) {
  const Deadline deadline(timeout);
  std::lock_guard lock(recv_mutex_);
  if (closed_.load(std::memory_order_acquire)) return {RecvCode::kClosed, peer_ + ": channel closed"};
  if (recv_end_) return *recv_end_;
  for (;;) {
    const uint64_t tail = in_.ctl->producer.tail.load(std::memory_order_acquire);
    if (tail - head_ > cap_) {
      return end_damaged(peer_ + ": shared ring corrupted (producer position " + std::to_string(tail) +
                         ", consumer position " + std::to_string(head_) + ", ring of " + std::to_string(cap_) +
                         " bytes)");
    }
    auto status = consume(out, tail);
    if (status == FrameDecoder::Status::kMessage) {
      Counters::add(counters_.messages_received, 1);
      Counters::add(counters_.bytes_received, out.size());
      return {};
    }
    if (status == FrameDecoder::Status::kError) return end_damaged(decoder_.error());
    if (peer_gone()) {
      // Whatever the peer published before it went is delivered first: look again,
      // after having seen it gone.
      if (in_.ctl->producer.tail.load(std::memory_order_acquire) != head_) continue;
      std::string partial = decoder_.mid_frame() ? " " + decoder_.describe_partial() : "";
      return end_recv(RecvCode::kClosed, peer_ + gone_text() + partial);
    }
    switch (wait_data(deadline)) {
      case Wait::kReady:
      case Wait::kPeerGone:  // the loop delivers what is left, then kClosed
        break;
      case Wait::kTimeout:
        return {RecvCode::kTimeout, peer_ + ": no message within " + detail::DescribeTimeout(timeout)};
      case Wait::kClosedHere:
        return {RecvCode::kClosed, peer_ + ": channel closed"};
      case Wait::kFailed:
        return end_recv(RecvCode::kError, peer_ + ": poll: " + std::strerror(errno));
      case Wait::kCorrupt:
        break;  // not produced by wait_data
    }
  }
}

void ShmChannel::close() {
  if (closed_.exchange(true, std::memory_order_acq_rel)) return;
  ctl_->sides[side_].closed.store(1, std::memory_order_release);
  SignalEventfd(wake_.get());
  // Wake the peer wherever it may sleep: its recv on our outgoing ring, its send on
  // our incoming one. It sees the flag and ends with kClosed.
  SignalEventfd(out_.data_efd.get());
  SignalEventfd(in_.space_efd.get());
  ::shutdown(sock_.get(), SHUT_RDWR);
}

// Builds the memfd (control block zeroed, then filled in) and maps it here.
Mapping CreateSharedMemory(size_t ring_bytes, UniqueFd& memfd, const std::string& what) {
  Mapping map = detail::CreateSealedMemory(kControlBytes + 2 * ring_bytes, "ftvm-channel", memfd, what);
  auto* ctl = new (map.data()) ShmControl();
  std::memcpy(ctl->magic, kShmMagic, sizeof kShmMagic);
  ctl->version = kShmLayoutVersion;
  ctl->ring_bytes = ring_bytes;
  ctl->data_offset = kControlBytes;
  return map;
}

}  // namespace

// --- Listener ----------------------------------------------------------------------

ShmListener::ShmListener(std::string socket_path, const ShmOptions& options)
    : path_(std::move(socket_path)), options_(options) {
  const std::string what = "shm listen on " + path_;
  if (!ValidRingBytes(options_.ring_bytes)) {
    throw Error(what + ": ring size " + std::to_string(options_.ring_bytes) +
                " is not a power of two between 4096 and " + std::to_string(kMaxRingBytes));
  }
  fd_ = detail::ListenUnix(path_, what, &inode_);
}

ShmListener::~ShmListener() { detail::UnlinkUnixIfOurs(path_, inode_); }

std::unique_ptr<Channel> ShmListener::accept(std::chrono::nanoseconds timeout) {
  const Deadline deadline(timeout);
  const std::string what = "shm accept on " + path_;
  for (;;) {
    UniqueFd conn = detail::AcceptUnix(fd_.get(), deadline, what);
    if (!conn) return nullptr;

    // Local resources: failures here are ours and throw.
    UniqueFd memfd;
    Mapping map = CreateSharedMemory(options_.ring_bytes, memfd, what);
    std::array<UniqueFd, 4> efds;
    for (auto& e : efds) {
      e.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      if (!e) throw SysError(what + ": eventfd");
    }

    // The handshake: failures here are the peer's; drop it and keep listening.
    uint8_t setup[kSetupBytes];
    auto hello = EncodeHello(HelloKind::kShm);
    std::memcpy(setup, hello.data(), hello.size());
    PutLe64(setup + kHelloBytes, options_.ring_bytes);
    PutLe64(setup + kHelloBytes + 8, map.size());
    const int fds[kSetupFds] = {memfd.get(), efds[0].get(), efds[1].get(), efds[2].get(), efds[3].get()};
    std::string err = detail::SendWithFds(conn.get(), setup, fds);
    if (!err.empty()) {
      err = "sending the setup message: " + err;
    } else {
      std::array<uint8_t, kHelloBytes> ack{};
      err = detail::RecvAll(conn.get(), ack, Deadline(kHandshakeTimeout));
      if (!err.empty()) {
        err = "waiting for the peer's hello: " + err;
      } else {
        err = CheckHello(ack, HelloKind::kShm);
      }
    }
    if (!err.empty()) {
      log::warn("channel_handshake_failed", {{"listener", address()}, {"error", err}});
      if (deadline.expired()) return nullptr;
      continue;
    }
    log::debug("channel_accepted", {{"listener", address()}, {"ring_bytes", options_.ring_bytes}});
    return std::make_unique<ShmChannel>(address(), 0, std::move(map), std::move(conn), std::move(efds),
                                        options_.spin);
  }
}

// --- Connector ---------------------------------------------------------------------

std::unique_ptr<Channel> ShmConnect(const std::string& socket_path, std::chrono::nanoseconds timeout,
                                    const ShmOptions& options) {
  const std::string what = "shm connect to " + socket_path;
  const Deadline deadline(timeout);
  UniqueFd sock = detail::ConnectUnix(socket_path, what);

  // The setup message and the descriptors that come with it.
  uint8_t setup[kSetupBytes];
  std::vector<UniqueFd> fds;
  bool truncated = false;
  std::string failed = detail::RecvWithFds(sock.get(), setup, fds, &truncated, deadline);
  if (failed == "closed the connection") throw Error(what + ": the listener closed the connection during setup");
  if (failed == "timed out") throw Error(what + ": no setup message within " + detail::DescribeTimeout(timeout));
  if (!failed.empty()) throw Error(what + ": receiving the setup message: " + failed);
  std::string bad = CheckHello(std::span<const uint8_t, kHelloBytes>(setup, kHelloBytes), HelloKind::kShm);
  if (!bad.empty()) throw Error(what + ": " + bad);
  const uint64_t ring_bytes = GetLe64(setup + kHelloBytes);
  const uint64_t total = GetLe64(setup + kHelloBytes + 8);
  if (!ValidRingBytes(ring_bytes) || total != kControlBytes + 2 * ring_bytes) {
    throw Error(what + ": bad setup message (ring of " + std::to_string(ring_bytes) + " bytes, memory of " +
                std::to_string(total) + " bytes)");
  }
  if (truncated || fds.size() != kSetupFds) {
    throw Error(what + ": setup message carried " + std::to_string(fds.size()) + " descriptors, expected " +
                std::to_string(kSetupFds));
  }
  struct stat st {};
  if (::fstat(fds[0].get(), &st) < 0) throw SysError(what + ": fstat of the shared memory");
  int seals = ::fcntl(fds[0].get(), F_GET_SEALS);
  if (static_cast<uint64_t>(st.st_size) != total || seals < 0 || !(seals & F_SEAL_SHRINK)) {
    throw Error(what + ": the shared memory is not what the setup message announced (" +
                std::to_string(st.st_size) + " bytes, seals " + std::to_string(seals) + ")");
  }
  Mapping map = MapShared(fds[0].get(), total, what);
  const auto* ctl = std::launder(reinterpret_cast<const ShmControl*>(map.data()));
  if (std::memcmp(ctl->magic, kShmMagic, sizeof kShmMagic) != 0 || ctl->version != kShmLayoutVersion ||
      ctl->ring_bytes != ring_bytes || ctl->data_offset != kControlBytes) {
    throw Error(what + ": the shared memory does not hold a channel control block of layout version " +
                std::to_string(kShmLayoutVersion));
  }
  auto ack = EncodeHello(HelloKind::kShm);
  std::string err = detail::SendAll(sock.get(), ack, deadline);
  if (!err.empty()) throw Error(what + ": sending the hello: " + err);
  std::array<UniqueFd, 4> efds = {std::move(fds[1]), std::move(fds[2]), std::move(fds[3]), std::move(fds[4])};
  return std::make_unique<ShmChannel>("shm:" + socket_path, 1, std::move(map), std::move(sock), std::move(efds),
                                      options.spin);
}

namespace test_hooks {

ShmRingView ShmIncomingRing(Channel& channel) {
  auto* shm = dynamic_cast<ShmChannel*>(&channel);
  if (shm == nullptr) throw Error("ShmIncomingRing: " + channel.peer() + " is not a shared-memory channel");
  return shm->incoming_ring();
}

}  // namespace test_hooks
}  // namespace ftvm::transport
