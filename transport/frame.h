// The wire format of the logging channel, the same on every transport: a TCP byte
// stream and each shared-memory ring carry frames back to back.
//
// Frame layout (all integers little-endian; kFrameOverhead = 12 bytes besides the
// payload):
//
//   +0    u32  payload length N (<= kMaxMessageBytes)
//   +4    u8   message type, 1..255 (0 is never sent, so zeroed memory is no message)
//   +5    u8   flags, 0 (reserved)
//   +6    u16  header check: the low 16 bits of CRC32C of bytes [+0, +6)
//   +8    N bytes payload
//   +8+N  u32  CRC32C of bytes [+0, +8+N): header and payload
//
// Why this shape: the length comes first so a reader knows how much follows. The
// header check lets a reader refuse a damaged length at once, instead of waiting for
// up to 64 MiB that may never come or swallowing the following messages as payload.
// The CRC comes last so a sender streams a payload of any size (larger than the ring)
// without seeking back, and a frame cut short by a dying peer lacks its CRC and is
// never delivered. It covers the header too, so every flipped bit is caught.
//
// Before the first frame, each side of a TCP channel sends a 16-byte hello (below);
// a shared-memory or RDMA channel exchanges it over its setup socket, a DPDK channel
// in its handshake segments. Stream offsets in error messages count frame bytes in
// one direction from the first frame (hello excluded).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "transport/channel.h"

namespace ftvm::transport {

inline constexpr size_t kFrameHeaderBytes = 8;
inline constexpr size_t kFrameTrailerBytes = 4;
inline constexpr size_t kFrameOverhead = kFrameHeaderBytes + kFrameTrailerBytes;

// Encodes the header of a frame. `length` must be <= kMaxMessageBytes.
std::array<uint8_t, kFrameHeaderBytes> EncodeFrameHeader(uint8_t type, uint32_t length);
// CRC32C over the header and the payload parts: the frame's trailer value.
uint32_t FrameCrc(std::span<const uint8_t, kFrameHeaderBytes> header,
                  std::span<const std::span<const uint8_t>> parts);
// A whole frame in one buffer (tests, raw peers).
std::vector<uint8_t> EncodeFrame(uint8_t type, std::span<const uint8_t> payload);

// --- Hello -----------------------------------------------------------------------
//
//   +0   8 bytes "FTVMCHAN"
//   +8   u16  protocol version (kProtocolVersion)
//   +10  u8   transport: 1 TCP, 2 shared memory, 3 RDMA verbs (on the TCP side
//             channel that sets up the queue pairs), 4 the RDMA ring protocol over its
//             shared-memory emulation of one-sided writes, 5 DPDK
//   +11  u8   0
//   +12  u32  0 (reserved)
//
// It makes a connection to something that is not an ftvm channel (or a different
// protocol version, or the other transport) fail at setup with a clear message
// rather than with a bad CRC on the first message.
inline constexpr size_t kHelloBytes = 16;
inline constexpr uint16_t kProtocolVersion = 1;
enum class HelloKind : uint8_t { kTcp = 1, kShm = 2, kRdma = 3, kRdmaShm = 4, kDpdk = 5 };

std::array<uint8_t, kHelloBytes> EncodeHello(HelloKind kind);
// Empty when `hello` is a valid hello of `kind`; otherwise what is wrong with it.
std::string CheckHello(std::span<const uint8_t, kHelloBytes> hello, HelloKind kind);

// --- Decoding --------------------------------------------------------------------

// Reassembles frames from bytes handed over in pieces of any size, checks them, and
// produces messages. Transport-neutral: TCP feeds it what recv() returned, the shared
// memory channel feeds it spans of its ring. Each payload byte is copied once, into
// the message buffer, and its CRC is computed there, right after the copy, while the
// bytes are in the cache, and over exactly the bytes that will be delivered.
class FrameDecoder {
 public:
  enum class Status : uint8_t { kNeedMore, kMessage, kError };
  struct Step {
    Status status;
    size_t consumed;  // bytes of the input used
  };

  // `name` prefixes error messages ("tcp:10.0.0.2:7000: bad CRC ...").
  explicit FrameDecoder(std::string name) : name_(std::move(name)) {}

  // Consumes bytes from `in`: all of them (kNeedMore), or up to the end of the first
  // message completed (kMessage: take() it), or up to a damaged header or trailer
  // (kError: error() says what and where; every later call returns kError again).
  Step feed(std::span<const uint8_t> in);

  // While a payload is being received: where its remaining bytes go, so a transport
  // can read them straight into place (TCP readv). Empty otherwise.
  std::span<uint8_t> payload_space();
  // Accounts for `n` bytes written at the front of payload_space().
  void payload_written(size_t n);

  // After kMessage: swaps the message into `out` (buffers are swapped, not copied).
  void take(Message& out);

  bool failed() const { return failed_; }
  const std::string& error() const { return error_; }
  // True when part of a frame has been consumed but not the whole of it.
  bool mid_frame() const { return phase_ != Phase::kHeader || got_ != 0; }
  // Frame bytes consumed since the start of the stream.
  uint64_t stream_offset() const { return offset_; }
  // Describes the partly received frame for a kClosed message: "in the middle of a
  // message (X of N payload bytes) at stream offset Y".
  std::string describe_partial() const;

 private:
  enum class Phase : uint8_t { kHeader, kPayload, kTrailer };
  Status fail(std::string what);
  Status header_done();
  Status trailer_done();

  std::string name_;
  Phase phase_ = Phase::kHeader;
  uint8_t header_[kFrameHeaderBytes] = {};
  uint8_t trailer_[kFrameTrailerBytes] = {};
  size_t got_ = 0;  // bytes of the current phase
  uint8_t type_ = 0;
  uint32_t length_ = 0;
  uint32_t crc_ = 0;
  uint64_t offset_ = 0;        // bytes consumed
  uint64_t frame_offset_ = 0;  // where the current frame starts
  Message pending_;            // the message being assembled
  bool ready_ = false;
  bool failed_ = false;
  std::string error_;
};

}  // namespace ftvm::transport
