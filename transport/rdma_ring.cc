// The RDMA channel: the ring and credit protocol of transport/rdma_ring.h on top of two
// OneSidedLinks, with the Channel contract of transport/channel.h (timeouts, close from
// any thread, peer death, flow control that never drops and never buffers without
// bound).
#include "transport/rdma_ring.h"

#include <sys/eventfd.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <optional>

#include "common/error.h"
#include "eventlog/crc32c.h"
#include "eventlog/format.h"
#include "transport/frame.h"
#include "transport/io.h"
#include "transport/rdma_testing.h"
#include "transport/shm_util.h"

namespace ftvm::transport::rdma {

using detail::Counters;
using detail::Deadline;
using detail::PollUntil;

namespace {

// A frame larger than the ring is streamed: the sender publishes (rings a doorbell)
// every this many bytes, and a receiver copying a large payload frees space as it goes.
constexpr size_t kPublishEvery = 256u << 10;
constexpr size_t kPollBatch = 32;

uint64_t LoadWord(const uint8_t* p) {
  // The peer (or its device) writes the ack words with 8-byte aligned writes, which are
  // never torn; each word only grows.
  return std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(const_cast<uint8_t*>(p)))
      .load(std::memory_order_acquire);
}
void StoreWord(uint8_t* p, uint64_t v) {
  std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(p)).store(v, std::memory_order_release);
}

enum class Wait : uint8_t { kReady, kTimeout, kClosedHere, kPeerGone, kFault };

class RingChannel final : public Channel, public test_hooks::RdmaRingAccess {
 public:
  explicit RingChannel(RingChannelParts parts)
      : kind_(std::move(parts.kind)), peer_(std::move(parts.peer)), out_(std::move(parts.out)),
        in_(std::move(parts.in)), sock_(std::move(parts.setup_socket)), cap_(parts.ring_bytes),
        mask_(parts.ring_bytes - 1), spin_(parts.spin), decoder_(peer_) {
    if (!ValidRingBytes(cap_) || out_->staging().size() < cap_ || in_->exposed().size() < cap_ ||
        out_->exposed().size() < kAckBytes || in_->staging().size() < kAckBytes) {
      throw Error(peer_ + ": RDMA link regions do not match a ring of " + std::to_string(cap_) + " bytes");
    }
    wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_) throw SysError(peer_ + ": eventfd");
  }
  ~RingChannel() override { close(); }

  std::string_view kind() const override { return kind_; }
  const std::string& peer() const override { return peer_; }
  SendResult send(uint8_t type, std::span<const std::span<const uint8_t>> parts,
                  std::chrono::nanoseconds timeout) override;
  RecvResult recv(Message& out, std::chrono::nanoseconds timeout) override;
  void close() override;
  ChannelStats stats() const override { return counters_.snapshot(); }

  test_hooks::RdmaRingView incoming_ring() override {
    std::lock_guard lock(recv_mutex_);
    return {in_->exposed().first(cap_), head_};
  }
  std::span<uint8_t> outgoing_ack_area() override { return out_->exposed().first(kAckBytes); }

 private:
  enum PeerState : int { kAlive = 0, kHungUp = 1 };

  bool hung_up() const { return peer_state_.load(std::memory_order_acquire) != kAlive; }
  std::string gone_text() const {
    return ": peer is gone (its end of the setup socket closed: it exited or died)";
  }
  // One sleep on a link's completion channel, the setup socket and our close() eventfd.
  Wait sleep(OneSidedLink& link, const Deadline& deadline);

  // Sender side (under send_mutex_).
  bool refresh_credit();  // false: the ack area is impossible (send_fault_ says why)
  void poll_out();
  bool has_credit(size_t need) const {
    return cap_ - (tail_ - acked_head_) >= need && doorbells_sent_ - acked_doorbells_ < kMaxDoorbells;
  }
  Wait wait_credit(size_t need, const Deadline& deadline);
  bool publish();  // posts [posted_, tail_) and its doorbell; false: send_fault_
  void stage(const uint8_t* src, size_t n) {
    uint8_t* ring = out_->staging().data();
    size_t off = tail_ & mask_;
    size_t first = std::min(n, cap_ - off);
    std::memcpy(ring + off, src, first);
    std::memcpy(ring, src + first, n - first);
    tail_ += n;
  }
  SendResult send_failed(Wait w, bool mid_message, size_t length, std::chrono::nanoseconds timeout);

  // Receiver side (under recv_mutex_).
  bool poll_in();  // false: recv_fault_
  bool write_ack(std::optional<Control> imm);
  bool maybe_ack();
  FrameDecoder::Status consume(Message& out);
  RecvResult end_recv(RecvCode code, std::string message) {
    recv_end_ = RecvResult{code, std::move(message)};
    return *recv_end_;
  }
  RecvResult end_damaged(std::string message) {
    recv_end_ = RecvResult::Damaged(std::move(message));
    return *recv_end_;
  }

  const std::string kind_;
  const std::string peer_;
  std::unique_ptr<OneSidedLink> out_;
  std::unique_ptr<OneSidedLink> in_;
  UniqueFd sock_;
  UniqueFd wake_;  // readable once close() was called; never drained
  const size_t cap_;
  const uint64_t mask_;
  const std::chrono::nanoseconds spin_;
  std::atomic<bool> closed_{false};
  std::atomic<int> peer_state_{kAlive};
  Counters counters_;

  std::mutex send_mutex_;
  uint64_t tail_ = 0;             // bytes staged
  uint64_t posted_ = 0;           // bytes written to the peer with a doorbell after them
  uint64_t acked_head_ = 0;       // the receiver's head, from the ack area
  uint64_t doorbells_sent_ = 0;   // data doorbells and credit requests
  uint64_t acked_doorbells_ = 0;  // how many of them the receiver took, from the ack area
  uint32_t requests_ = 0;
  bool need_request_ = true;      // no credit request is pending an answer
  bool peer_closed_send_ = false; // the peer rang kClose on this link
  std::string send_fault_;
  bool send_fault_lost_ = false;  // the fault means the peer is unreachable
  std::optional<SendResult> send_end_;

  std::mutex recv_mutex_;
  uint64_t head_ = 0;           // consumed
  uint64_t tail_known_ = 0;     // from data doorbells
  uint64_t doorbells_taken_ = 0;
  uint64_t acked_head_sent_ = 0;
  uint64_t acked_doorbells_sent_ = 0;
  bool peer_waiting_ = false;   // a credit request was answered; the next ack is progress
  bool reply_due_ = false;      // a credit request came: answer it now
  bool peer_closed_recv_ = false;
  std::string recv_fault_;
  bool recv_fault_lost_ = false;
  FrameDecoder decoder_;
  std::optional<RecvResult> recv_end_;
};

Wait RingChannel::sleep(OneSidedLink& link, const Deadline& deadline) {
  pollfd fds[3] = {{link.notify_fd(), POLLIN, 0}, {sock_.get(), POLLIN | POLLRDHUP, 0}, {wake_.get(), POLLIN, 0}};
  int r = PollUntil(fds, deadline);
  if (r < 0) return Wait::kFault;
  if (fds[2].revents != 0) return Wait::kClosedHere;
  if (fds[1].revents != 0) peer_state_.store(kHungUp, std::memory_order_release);
  if (fds[0].revents != 0) link.acknowledge_notification();
  return r == 0 ? Wait::kTimeout : Wait::kReady;
}

// --- Sender --------------------------------------------------------------------------

bool RingChannel::refresh_credit() {
  const uint8_t* ack = out_->exposed().data();
  const uint64_t head = LoadWord(ack);
  const uint64_t taken = LoadWord(ack + 8);
  // The receiver can only acknowledge what we wrote, and never goes back.
  if (head < acked_head_ || head > posted_ || taken < acked_doorbells_ || taken > doorbells_sent_) {
    send_fault_ = peer_ + ": acknowledgement area corrupted (consumed position " + std::to_string(head) +
                  " of " + std::to_string(posted_) + " bytes written, " + std::to_string(taken) + " of " +
                  std::to_string(doorbells_sent_) + " doorbells taken)";
    return false;
  }
  acked_head_ = head;
  acked_doorbells_ = taken;
  return true;
}

void RingChannel::poll_out() {
  std::array<uint32_t, kPollBatch> imms;
  for (;;) {
    PollResult p = out_->poll(imms);
    for (size_t i = 0; i < p.count; ++i) {
      const uint32_t imm = imms[i];
      const auto kind = static_cast<Control>((imm >> 28) & 7);
      if ((imm & kImmControl) != 0 && kind == Control::kCreditReply) continue;  // a wake-up
      if ((imm & kImmControl) != 0 && kind == Control::kCreditProgress) {
        need_request_ = true;
      } else if ((imm & kImmControl) != 0 && kind == Control::kClose) {
        peer_closed_send_ = true;
      } else if (send_fault_.empty()) {
        send_fault_ = peer_ + ": unexpected doorbell " + std::to_string(imm) + " on the acknowledgement path";
      }
    }
    if (!p.error.empty()) {  // after the doorbells that came before the failure
      if (send_fault_.empty()) {
        send_fault_ = peer_ + ": " + p.error;
        send_fault_lost_ = p.peer_lost;
      }
      return;
    }
    if (p.count < imms.size()) return;
  }
}

Wait RingChannel::wait_credit(size_t need, const Deadline& deadline) {
  // What ends a wait besides credit: our close(), the peer's, its death, a fault.
  auto check = [&]() -> std::optional<Wait> {
    poll_out();
    if (!send_fault_.empty() || !refresh_credit()) return Wait::kFault;
    if (closed_.load(std::memory_order_acquire)) return Wait::kClosedHere;
    if (peer_closed_send_) return Wait::kPeerGone;
    if (has_credit(need)) return Wait::kReady;
    if (hung_up()) return Wait::kPeerGone;
    return std::nullopt;
  };
  if (auto w = check()) return *w;
  std::optional<Wait> result;
  if (spin_ > std::chrono::nanoseconds::zero() &&
      detail::SpinUntil(spin_, deadline, [&] { return (result = check()).has_value(); })) {
    return *result;
  }
  Counters::add(counters_.send_waits, 1);
  for (;;) {
    if (auto w = check()) return *w;
    if (need_request_) {
      // Ask the receiver to tell us when it frees space (rdma_ring.h: at most one
      // request is unanswered, so this never overflows its doorbell queue).
      std::string err = out_->write(0, 0, 0, ControlImm(Control::kCreditRequest, ++requests_));
      if (!err.empty()) {
        send_fault_ = peer_ + ": ringing a credit request: " + err;
        return Wait::kFault;
      }
      ++doorbells_sent_;
      need_request_ = false;
    }
    if (std::string err = out_->arm(); !err.empty()) {
      send_fault_ = peer_ + ": " + err;
      return Wait::kFault;
    }
    if (auto w = check()) return *w;
    // That look may have taken the kCreditProgress that ends our request, without
    // enough credit: the receiver no longer counts us as waiting and acknowledges
    // without a doorbell from now on, so sleeping now would wait for the deadline.
    // Ask again first.
    if (need_request_) continue;
    Wait w = sleep(*out_, deadline);
    if (w == Wait::kTimeout) return check().value_or(Wait::kTimeout);
    if (w == Wait::kFault) {
      send_fault_ = peer_ + ": poll: " + std::strerror(errno);
      return w;
    }
    if (w == Wait::kClosedHere) return w;
  }
}

bool RingChannel::publish() {
  if (posted_ == tail_) return true;
  const size_t off = posted_ & mask_;
  const size_t len = tail_ - posted_;
  const size_t first = std::min(len, cap_ - off);
  const auto imm = static_cast<uint32_t>(tail_ & kImmPositionMask);
  std::string err;
  if (first == len) {
    err = out_->write(off, len, off, imm);
  } else {
    err = out_->write(off, first, off, std::nullopt);
    if (err.empty()) err = out_->write(0, len - first, 0, imm);
  }
  if (!err.empty()) {
    send_fault_ = peer_ + ": RDMA write at stream offset " + std::to_string(posted_) + ": " + err;
    return false;
  }
  posted_ = tail_;
  ++doorbells_sent_;
  return true;
}

SendResult RingChannel::send_failed(Wait w, bool mid_message, size_t length, std::chrono::nanoseconds timeout) {
  switch (w) {
    case Wait::kClosedHere:
      return {SendCode::kClosed, peer_ + ": channel closed"};
    case Wait::kPeerGone:
      send_end_ = SendResult{SendCode::kClosed,
                             peer_ + (peer_closed_send_ ? ": peer closed the channel" : gone_text())};
      return *send_end_;
    case Wait::kFault:
      // A link that failed because the peer is unreachable is a dead peer; anything
      // else (a corrupted ack area, a local verbs error) is an error.
      if (send_fault_lost_ || hung_up()) {
        send_end_ = SendResult{SendCode::kClosed, send_fault_.empty() ? peer_ + gone_text() : send_fault_};
      } else {
        send_end_ = SendResult{SendCode::kError, send_fault_};
      }
      return *send_end_;
    case Wait::kTimeout:
      if (!mid_message) {
        return {SendCode::kTimeout, peer_ + ": peer not reading: no room for a message of " +
                                        std::to_string(length) + " bytes within " +
                                        detail::DescribeTimeout(timeout)};
      }
      // Part of a frame larger than the ring is written: nothing else may follow it.
      close();
      return {SendCode::kError, peer_ + ": timed out (" + detail::DescribeTimeout(timeout) +
                                    ") in the middle of a message of " + std::to_string(length) +
                                    " bytes larger than the ring; the stream cannot continue, channel closed"};
    case Wait::kReady:
      break;
  }
  return {};
}

SendResult RingChannel::send(uint8_t type, std::span<const std::span<const uint8_t>> parts,
                             std::chrono::nanoseconds timeout) {
  const Deadline deadline(timeout);
  std::lock_guard lock(send_mutex_);
  if (closed_.load(std::memory_order_acquire)) return {SendCode::kClosed, peer_ + ": channel closed"};
  if (send_end_) return *send_end_;
  poll_out();  // a kClose from the peer ends sends at once
  // So does a death already seen (by a wait in either direction).
  if (peer_closed_send_ || hung_up()) return send_failed(Wait::kPeerGone, false, 0, timeout);
  if (!send_fault_.empty()) return send_failed(Wait::kFault, false, 0, timeout);
  if (type == 0) return {SendCode::kError, peer_ + ": message type 0 is reserved"};
  size_t length = 0;
  for (auto p : parts) length += p.size();
  if (length > kMaxMessageBytes) {
    return {SendCode::kError, peer_ + ": message of " + std::to_string(length) +
                                  " bytes exceeds the limit of " + std::to_string(kMaxMessageBytes)};
  }

  const size_t frame = length + kFrameOverhead;
  const bool whole = frame <= cap_;
  // A frame that fits waits for room (and a doorbell) for all of it, so a timeout
  // leaves nothing behind and the receiver never sees it half written.
  if (whole) {
    Wait w = wait_credit(frame, deadline);
    if (w != Wait::kReady) return send_failed(w, false, length, timeout);
  }

  const uint64_t start = tail_;
  // A streamed frame rings a doorbell every kPublishEvery bytes and whenever it waits
  // for space, and each doorbell needs credit of its own.
  auto doorbell_credit = [&]() -> std::optional<SendResult> {
    if (has_credit(0)) return std::nullopt;
    Wait w = wait_credit(0, deadline);
    if (w != Wait::kReady) return send_failed(w, /*mid_message=*/true, length, timeout);
    return std::nullopt;
  };
  // Stages `n` bytes at tail_; when streaming a frame larger than the ring, publishes
  // and waits for credit as it goes. Returns a failure, or nothing when all are in.
  auto put = [&](const uint8_t* src, size_t n) -> std::optional<SendResult> {
    while (n > 0) {
      if (!whole && tail_ - posted_ >= kPublishEvery) {
        if (auto fail = doorbell_credit()) return fail;
        if (!publish()) return send_failed(Wait::kFault, true, length, timeout);
      }
      const size_t space = cap_ - (tail_ - acked_head_);
      if (space == 0) {  // only when streaming: a whole frame waited for all its room
        if (auto fail = doorbell_credit()) return fail;
        if (!publish()) return send_failed(Wait::kFault, true, length, timeout);
        const size_t left = frame - (tail_ - start);
        Wait w = wait_credit(std::min(left, cap_ / 4), deadline);
        if (w != Wait::kReady) return send_failed(w, /*mid_message=*/true, length, timeout);
        continue;
      }
      const size_t k = std::min({n, space, kPublishEvery});
      stage(src, k);
      src += k;
      n -= k;
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
  if (!whole) {
    if (auto fail = doorbell_credit()) return *fail;
  }
  if (!publish()) return send_failed(Wait::kFault, !whole, length, timeout);
  Counters::add(counters_.messages_sent, 1);
  Counters::add(counters_.bytes_sent, length);
  return {};
}

// --- Receiver ------------------------------------------------------------------------

bool RingChannel::poll_in() {
  std::array<uint32_t, kPollBatch> imms;
  for (;;) {
    PollResult p = in_->poll(imms);
    for (size_t i = 0; i < p.count; ++i) {
      const uint32_t imm = imms[i];
      if (peer_closed_recv_) continue;  // after kClose: a write racing with close()
      if ((imm & kImmControl) == 0) {
        // The new tail is at most a ring ahead of what we consumed.
        const uint64_t tail = tail_known_ + ((imm - static_cast<uint32_t>(tail_known_)) & kImmPositionMask);
        if (tail - head_ > cap_) {
          recv_fault_ = peer_ + ": doorbell announces stream position " + std::to_string(tail) +
                        ", more than the ring of " + std::to_string(cap_) + " bytes beyond consumed position " +
                        std::to_string(head_);
          return false;
        }
        tail_known_ = tail;
        ++doorbells_taken_;
        continue;
      }
      switch (static_cast<Control>((imm >> 28) & 7)) {
        case Control::kCreditRequest:
          ++doorbells_taken_;
          reply_due_ = true;
          peer_waiting_ = true;
          break;
        case Control::kClose:
          peer_closed_recv_ = true;
          break;
        default:
          recv_fault_ = peer_ + ": unexpected doorbell " + std::to_string(imm) + " on the data path";
          return false;
      }
    }
    if (!p.error.empty()) {  // after the doorbells that came before the failure
      recv_fault_ = peer_ + ": " + p.error;
      recv_fault_lost_ = p.peer_lost;
      return false;
    }
    if (p.count < imms.size()) return true;
  }
}

bool RingChannel::write_ack(std::optional<Control> imm) {
  uint8_t* ack = in_->staging().data();
  StoreWord(ack, head_);
  StoreWord(ack + 8, doorbells_taken_);
  std::optional<uint32_t> value;
  if (imm) value = ControlImm(*imm, 0);
  std::string err = in_->write(0, 16, 0, value);
  if (!err.empty()) {
    recv_fault_ = peer_ + ": writing an acknowledgement: " + err;
    return false;
  }
  acked_head_sent_ = head_;
  acked_doorbells_sent_ = doorbells_taken_;
  return true;
}

bool RingChannel::maybe_ack() {
  if (reply_due_) {
    reply_due_ = false;
    return write_ack(Control::kCreditReply);
  }
  if (head_ == acked_head_sent_ && doorbells_taken_ == acked_doorbells_sent_) return true;
  if (peer_waiting_) {
    peer_waiting_ = false;
    return write_ack(Control::kCreditProgress);
  }
  // Drained: the sender gets all of the ring back. Otherwise in batches, so a stream
  // of small messages does not cost one write back per message.
  if (head_ == tail_known_ || head_ - acked_head_sent_ >= cap_ / 8 ||
      doorbells_taken_ - acked_doorbells_sent_ >= kMaxDoorbells / 4) {
    return write_ack(std::nullopt);
  }
  return true;
}

// Feeds the decoder the bytes announced up to tail_known_, stopping at the end of the
// first whole message.
FrameDecoder::Status RingChannel::consume(Message& out) {
  const uint8_t* ring = in_->exposed().data();
  auto status = FrameDecoder::Status::kNeedMore;
  while (head_ != tail_known_) {
    size_t off = head_ & mask_;
    size_t n = std::min<uint64_t>({tail_known_ - head_, cap_ - off, kPublishEvery});
    auto step = decoder_.feed({ring + off, n});
    head_ += step.consumed;
    if (step.status != FrameDecoder::Status::kNeedMore) {
      status = step.status;
      break;
    }
    // While copying out a large payload, hand space back as we go so the sender
    // refills the ring in parallel.
    if (head_ - acked_head_sent_ >= cap_ / 8 && !maybe_ack()) break;
  }
  if (status == FrameDecoder::Status::kMessage) decoder_.take(out);
  return status;
}

RecvResult RingChannel::recv(Message& out, std::chrono::nanoseconds timeout) {
  const Deadline deadline(timeout);
  std::lock_guard lock(recv_mutex_);
  if (closed_.load(std::memory_order_acquire)) return {RecvCode::kClosed, peer_ + ": channel closed"};
  if (recv_end_) return *recv_end_;
  // A link failure is reported once the messages whole before it are delivered.
  auto failed = [&] {
    std::string partial = decoder_.mid_frame() ? " " + decoder_.describe_partial() : "";
    if (recv_fault_lost_ || hung_up()) return end_recv(RecvCode::kClosed, recv_fault_ + partial);
    return end_recv(RecvCode::kError, recv_fault_);
  };
  for (;;) {
    if (closed_.load(std::memory_order_acquire)) return {RecvCode::kClosed, peer_ + ": channel closed"};
    const bool polled = recv_fault_.empty() && poll_in();
    auto status = consume(out);
    if (recv_fault_.empty()) maybe_ack();
    if (status == FrameDecoder::Status::kMessage) {
      Counters::add(counters_.messages_received, 1);
      Counters::add(counters_.bytes_received, out.size());
      return {};
    }
    if (status == FrameDecoder::Status::kError) return end_damaged(decoder_.error());
    if (!polled || !recv_fault_.empty()) return failed();
    if (peer_closed_recv_ || hung_up()) {
      // Whatever the peer wrote before it went is delivered first: look once more,
      // after having seen it gone (a doorbell always precedes the hang-up).
      if (!poll_in()) return failed();
      if (tail_known_ != head_) continue;
      std::string partial = decoder_.mid_frame() ? " " + decoder_.describe_partial() : "";
      return end_recv(RecvCode::kClosed,
                      peer_ + (peer_closed_recv_ ? ": peer closed the channel" : gone_text()) + partial);
    }
    // Wait for a doorbell: spin, then sleep on the completion channel.
    auto ready = [&] {
      return !poll_in() || tail_known_ != head_ || reply_due_ || peer_closed_recv_ ||
             closed_.load(std::memory_order_acquire);
    };
    if (spin_ > std::chrono::nanoseconds::zero() && detail::SpinUntil(spin_, deadline, ready)) continue;
    if (ready()) continue;
    Counters::add(counters_.recv_waits, 1);
    if (std::string err = in_->arm(); !err.empty()) {
      recv_fault_ = peer_ + ": " + err;
      return failed();
    }
    if (ready()) continue;
    switch (sleep(*in_, deadline)) {
      case Wait::kReady:
      case Wait::kPeerGone:
        break;
      case Wait::kTimeout:
        if (ready()) continue;
        return {RecvCode::kTimeout, peer_ + ": no message within " + detail::DescribeTimeout(timeout)};
      case Wait::kClosedHere:
        return {RecvCode::kClosed, peer_ + ": channel closed"};
      case Wait::kFault:
        return end_recv(RecvCode::kError, peer_ + ": poll: " + std::strerror(errno));
    }
  }
}

void RingChannel::close() {
  if (closed_.exchange(true, std::memory_order_acq_rel)) return;
  detail::SignalEventfd(wake_.get());
  // Tell the peer on both links: its receiver delivers what we wrote and then kClosed;
  // its sender stops at once. A failure here means the link is already gone, and the
  // peer learns of our end from the setup socket instead.
  const uint32_t bye = ControlImm(Control::kClose, 0);
  (void)out_->write(0, 0, 0, bye);
  (void)in_->write(0, 0, 0, bye);
  ::shutdown(sock_.get(), SHUT_RDWR);
}

}  // namespace

std::unique_ptr<Channel> MakeRingChannel(RingChannelParts parts) { return std::make_unique<RingChannel>(std::move(parts)); }

}  // namespace ftvm::transport::rdma

namespace ftvm::transport::test_hooks {

RdmaRingView RdmaIncomingRing(Channel& channel) {
  auto* access = dynamic_cast<RdmaRingAccess*>(&channel);
  if (access == nullptr) throw Error("RdmaIncomingRing: " + channel.peer() + " is not an RDMA channel");
  return access->incoming_ring();
}

std::span<uint8_t> RdmaOutgoingAckArea(Channel& channel) {
  auto* access = dynamic_cast<RdmaRingAccess*>(&channel);
  if (access == nullptr) throw Error("RdmaOutgoingAckArea: " + channel.peer() + " is not an RDMA channel");
  return access->outgoing_ack_area();
}

}  // namespace ftvm::transport::test_hooks
