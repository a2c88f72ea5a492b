// The RDMA channel's ring protocol, written once against a small one-sided-write
// interface (OneSidedLink) that has two implementations: RDMA verbs (rdma_verbs.cc:
// an RC queue pair, RDMA WRITE and RDMA WRITE WITH IMMEDIATE, a completion queue with
// a completion channel) and shared memory (rdma_shm.cc: memcpy into the peer's mapping,
// a doorbell queue in shared memory, an eventfd as completion channel). Internal.
//
// One link per direction (so the sending and the receiving thread of a channel never
// share a queue pair or a completion queue). On the link of one direction:
//
//   receiver's exposed memory: the ring, R bytes (a power of two, <= 1 GiB). Byte p of
//     the stream (frames of transport/frame.h back to back) lives at ring[p & (R-1)].
//   sender's staging memory:   an R-byte mirror of the ring; a frame is built at the
//     same offsets there and written over with one RDMA write (two at the ring's end).
//   sender's exposed memory:   the ack area, written by the receiver: u64 consumed
//     position (head) at +0, u64 number of doorbells it has taken at +8.
//   receiver's staging memory: where it builds the ack area before writing it over.
//
// Doorbells are 32-bit immediates, delivered after the bytes written before them:
//   bit 31 = 0: data; bits 30..0 are the low 31 bits of the sender's new tail (the
//               receiver rebuilds the full position: it never runs more than R <= 2^30
//               ahead of what the receiver knows)
//   bit 31 = 1: control; bits 30..28 the kind (Control), 27..0 a sequence number.
//
// Credit: the sender writes only into bytes the receiver has acknowledged consuming
// (tail - acked head <= R), and keeps at most kMaxDoorbells doorbells outstanding,
// because each one uses up a posted receive (an RDMA receive queue entry, or an entry
// of the emulated doorbell queue) until the receiver takes it. The receiver writes the
// ack area back with a plain write when it has drained the ring, freed R/8 bytes or
// taken kMaxDoorbells/4 doorbells since the last one.
//
// Waiting for credit without spinning forever: after a short spin on the ack area, the
// sender rings a kCreditRequest doorbell and sleeps on its completion channel. The
// receiver answers a request at once with a kCreditReply (an ack written with an
// immediate, so the sender wakes and re-reads the ack area, which is now current), and
// remembers that the sender waits: its next ack, whatever triggers it, carries
// kCreditProgress. The sender asks again only after having seen a kCreditProgress, so
// at most one request is unanswered and at most a reply, a progress and a kClose
// travel towards a sender: no queue ever overflows. A receiver that stops reading answers nothing, and
// the sender times out (kTimeout), as flow control says.
//
// Close: close() rings kClose on both links (after whatever was written: the peer's
// receiver delivers it first; the peer's sender stops at once) and shuts the setup
// socket down. Death: the setup socket (TCP for verbs, Unix for the emulation) stays
// open for the channel's life and is in every sleep; the kernel closes it when the
// peer process dies. A failed RDMA operation (a queue pair in error) ends the channel.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "common/unique_fd.h"
#include "transport/channel.h"

namespace ftvm::transport::rdma {

inline constexpr uint32_t kImmControl = 0x80000000u;
inline constexpr uint32_t kImmPositionMask = 0x7fffffffu;
enum class Control : uint32_t { kCreditRequest = 1, kCreditReply = 2, kCreditProgress = 3, kClose = 4 };
inline constexpr uint32_t ControlImm(Control c, uint32_t seq) {
  return kImmControl | (static_cast<uint32_t>(c) << 28) | (seq & 0x0fffffffu);
}

inline constexpr size_t kAckBytes = 64;  // the ack area: head at +0, doorbells taken at +8
inline constexpr size_t kMinRingBytes = 4096;
inline constexpr size_t kMaxRingBytes = size_t{1} << 30;
// Doorbells a sender may have outstanding. Each costs one receive queue entry until
// taken; 256 keep a stream of small messages going between acks.
inline constexpr uint32_t kMaxDoorbells = 256;
// Entries of each receive (doorbell) queue: kMaxDoorbells data doorbells + 1 credit
// request + 1 close towards a receiver; <= 3 replies + 1 close towards a sender.
inline constexpr uint32_t kDoorbellQueueDepth = 512;

inline bool ValidRingBytes(uint64_t n) { return n >= kMinRingBytes && n <= kMaxRingBytes && (n & (n - 1)) == 0; }

struct PollResult {
  size_t count = 0;     // doorbells stored in `out`
  std::string error;    // non-empty: the link failed (the queue pair is in error, ...)
  bool peer_lost = false;  // the failure means the peer is unreachable (retries exhausted)
};

// One end of one direction's link: one-sided writes into memory the peer exposes, and
// doorbells (immediate values) from the peer.
class OneSidedLink {
 public:
  virtual ~OneSidedLink() = default;
  OneSidedLink() = default;
  OneSidedLink(const OneSidedLink&) = delete;
  OneSidedLink& operator=(const OneSidedLink&) = delete;

  // "verbs mlx5_0 port 1 qp 0x1234", "shared-memory emulation".
  virtual std::string describe() const = 0;
  // Where the peer's writes land (registered for remote write).
  virtual std::span<uint8_t> exposed() = 0;
  // Where our writes take their bytes from (registered for the device to read). Bytes
  // may be reused once the peer has acknowledged them (it saw them, so they were read).
  virtual std::span<uint8_t> staging() = 0;
  // Posts a write of staging()[src, src+len) to the peer's exposed memory at `dst`
  // (len may be 0) and, with `imm`, a doorbell that the peer's poll() returns once
  // these bytes and all written before are visible there. Writes and doorbells take
  // effect in the order posted. Thread-safe (close() rings from any thread). Returns
  // "" or what failed.
  virtual std::string write(size_t src, size_t len, size_t dst, std::optional<uint32_t> imm) = 0;
  // Takes the doorbells that have arrived, oldest first, up to out.size(); never
  // waits. One thread at a time.
  virtual PollResult poll(std::span<uint32_t> out) = 0;
  // Becomes readable after arm() once a doorbell arrives (or spuriously).
  virtual int notify_fd() const = 0;
  // Asks for notify_fd() to become readable at the next doorbell. A caller polls once
  // more after arming and sleeps only if that found nothing. "" or what failed.
  virtual std::string arm() = 0;
  // Consumes the notification after notify_fd() was seen readable.
  virtual void acknowledge_notification() = 0;
};

struct RingChannelParts {
  std::string kind;  // "rdma", "rdma+shm"
  std::string peer;  // "rdma:10.0.0.2:7000", "rdma+shm:/run/x.sock"
  std::unique_ptr<OneSidedLink> out;  // we send: staging = ring mirror, exposed = ack area
  std::unique_ptr<OneSidedLink> in;   // we receive: exposed = ring, staging = ack area
  UniqueFd setup_socket;  // kept open for the channel's life: the peer's death closes it
  size_t ring_bytes = 0;
  std::chrono::nanoseconds spin{};
};

// The channel over two links. Throws ftvm::Error when the regions do not have the
// sizes above.
std::unique_ptr<Channel> MakeRingChannel(RingChannelParts parts);

}  // namespace ftvm::transport::rdma
