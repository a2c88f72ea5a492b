// Fuzz target for the logging channel's framing (transport/frame.h), which every
// transport (TCP, shared memory, RDMA, DPDK) runs on the bytes its peer sent.
//
// Input: one mode byte, the peer's 16-byte hello, then the frame stream. The mode
// says how the stream is handed over: at once, a byte at a time, in pieces of a
// size, or the way TCP reads (payload bytes written straight into payload_space()).
// Invariants: the decoder never consumes more than it was given and counts what it
// consumed; every message delivered re-encodes to exactly the bytes it came from;
// an error is sticky, has a message and consumes nothing more; a stream that ends
// mid-frame says so.
#include <algorithm>
#include <cstring>

#include "eventlog/crc32c.h"
#include "eventlog/format.h"
#include "fuzz/harness.h"
#include "transport/frame.h"

namespace {

using namespace ftvm::transport;
using ftvm::fuzz::Require;

constexpr size_t kStreamStart = 1 + kHelloBytes;

void Run(std::span<const uint8_t> input) {
  if (input.size() < kStreamStart) return;
  const uint8_t mode = input[0];
  for (uint8_t kind = 1; kind <= 5; ++kind) {
    const std::string problem =
        CheckHello(std::span<const uint8_t, kHelloBytes>(input.data() + 1, kHelloBytes), HelloKind(kind));
    const auto good = EncodeHello(HelloKind(kind));
    Require(problem.empty() == std::equal(good.begin(), good.end(), input.begin() + 1),
            "a hello is accepted exactly when it is the canonical one");
  }

  const std::span<const uint8_t> stream = input.subspan(kStreamStart);
  FrameDecoder decoder("fuzz");
  Message message;
  size_t at = 0;             // bytes handed to the decoder
  size_t frame_start = 0;    // where the frame being decoded began
  const size_t piece = (mode & 3) == 2 ? 1 + (mode >> 2) : (mode & 3) == 1 ? 1 : stream.size();
  const bool direct_payload = (mode & 3) == 3;
  while (at < stream.size()) {
    if (direct_payload) {
      // TCP's readv: the rest of a payload goes straight into place.
      std::span<uint8_t> space = decoder.payload_space();
      if (!space.empty()) {
        const size_t n = std::min({space.size(), stream.size() - at, size_t{1} + (mode >> 2) * 97});
        std::memcpy(space.data(), stream.data() + at, n);
        decoder.payload_written(n);
        at += n;
        Require(decoder.stream_offset() == at, "payload_written counts the stream");
        continue;
      }
    }
    const std::span<const uint8_t> offered = stream.subspan(at, std::min(piece, stream.size() - at));
    const FrameDecoder::Step step = decoder.feed(offered);
    Require(step.consumed <= offered.size(), "consumes no more than it is given");
    at += step.consumed;
    Require(decoder.stream_offset() == at, "stream_offset counts the bytes consumed");
    if (step.status == FrameDecoder::Status::kError) {
      Require(decoder.failed() && !decoder.error().empty(), "an error says what is wrong");
      const FrameDecoder::Step again = decoder.feed(stream.subspan(at));
      Require(again.status == FrameDecoder::Status::kError && again.consumed == 0, "errors are sticky");
      return;
    }
    if (step.status == FrameDecoder::Status::kMessage) {
      decoder.take(message);
      const std::vector<uint8_t> encoded = EncodeFrame(message.type(), message.payload());
      Require(encoded.size() == at - frame_start &&
                  std::equal(encoded.begin(), encoded.end(), stream.begin() + static_cast<long>(frame_start)),
              "a message re-encodes to the frame it came from");
      frame_start = at;
    } else {
      Require(step.consumed == offered.size(), "needing more means everything was used");
    }
  }
  Require(decoder.mid_frame() == (frame_start != at), "mid_frame() exactly when a frame is unfinished");
  if (decoder.mid_frame()) Require(!decoder.describe_partial().empty(), "a partial frame is described");
}

// Frames back to back: the header check and CRC of each as far as the lengths lead.
void Repair(std::span<uint8_t> input) {
  if (input.size() < kStreamStart) return;
  size_t off = kStreamStart;
  while (off + kFrameHeaderBytes <= input.size()) {
    uint8_t* h = input.data() + off;
    const uint32_t length = ftvm::eventlog::GetLe32(h);
    const auto header = EncodeFrameHeader(h[4], std::min<uint32_t>(length, kMaxMessageBytes));
    ftvm::eventlog::PutLe16(h + 6, ftvm::eventlog::GetLe16(header.data() + 6));
    if (length > kMaxMessageBytes || off + kFrameOverhead + length > input.size()) return;
    const uint32_t crc = ftvm::eventlog::Crc32c({h, kFrameHeaderBytes + length});
    ftvm::eventlog::PutLe32(h + kFrameHeaderBytes + length, crc);
    off += kFrameOverhead + length;
  }
}

std::vector<uint8_t> Seed(std::minstd_rand& rng) {
  std::vector<uint8_t> out{static_cast<uint8_t>(rng())};
  const auto hello = EncodeHello(HelloKind(1 + rng() % 5));
  out.insert(out.end(), hello.begin(), hello.end());
  for (int n = int(rng() % 5); n >= 0; --n) {
    std::vector<uint8_t> payload(rng() % 3 == 0 ? 0 : rng() % 600);
    for (auto& b : payload) b = static_cast<uint8_t>(rng());
    const auto frame = EncodeFrame(static_cast<uint8_t>(1 + rng() % 255), payload);
    out.insert(out.end(), frame.begin(), frame.end());
  }
  return out;
}

}  // namespace

const ftvm::fuzz::Target ftvm::fuzz::kTarget = {"transport_frame", Run, Seed, Repair};
