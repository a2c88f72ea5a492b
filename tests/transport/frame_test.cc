// The frame format on its own: encoding, reassembly from pieces of any size, and that
// every damaged frame is refused with a message naming the problem and the offset.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "eventlog/crc32c.h"
#include "eventlog/format.h"
#include "transport/frame.h"
#include "tests/transport/test_util.h"

namespace ftvm::transport {
namespace {

using testutil::Equal;
using testutil::Pattern;
using ::testing::HasSubstr;
using Status = FrameDecoder::Status;

TEST(Frame, LayoutIsLengthTypeCheckPayloadCrc) {
  auto payload = Pattern(5, 1);
  auto f = EncodeFrame(42, payload);
  ASSERT_EQ(f.size(), 5 + kFrameOverhead);
  EXPECT_EQ(eventlog::GetLe32(f.data()), 5u);
  EXPECT_EQ(f[4], 42);
  EXPECT_EQ(f[5], 0);
  EXPECT_EQ(eventlog::GetLe16(f.data() + 6), eventlog::Crc32c({f.data(), 6}) & 0xffff);
  EXPECT_TRUE(Equal({f.data() + 8, 5}, payload));
  EXPECT_EQ(eventlog::GetLe32(f.data() + 13), eventlog::Crc32c({f.data(), 13}));
}

TEST(Frame, DecodesWholeFramesAndEmptyPayloads) {
  FrameDecoder d("test");
  auto f = EncodeFrame(1, {});
  auto step = d.feed(f);
  EXPECT_EQ(step.status, Status::kMessage);
  EXPECT_EQ(step.consumed, f.size());
  Message m;
  d.take(m);
  EXPECT_EQ(m.type(), 1);
  EXPECT_EQ(m.size(), 0u);
  EXPECT_FALSE(d.mid_frame());
  EXPECT_EQ(d.stream_offset(), kFrameOverhead);
}

TEST(Frame, StopsAfterEachMessage) {
  FrameDecoder d("test");
  auto a = EncodeFrame(1, Pattern(10, 1));
  auto b = EncodeFrame(2, Pattern(20, 2));
  std::vector<uint8_t> both(a);
  both.insert(both.end(), b.begin(), b.end());
  auto step = d.feed(both);
  ASSERT_EQ(step.status, Status::kMessage);
  EXPECT_EQ(step.consumed, a.size());
  Message m;
  d.take(m);
  EXPECT_EQ(m.type(), 1);
  step = d.feed(std::span<const uint8_t>(both).subspan(a.size()));
  ASSERT_EQ(step.status, Status::kMessage);
  d.take(m);
  EXPECT_EQ(m.type(), 2);
  EXPECT_TRUE(Equal(m.payload(), Pattern(20, 2)));
}

// Many frames cut into random pieces (1 byte to a few KiB) come out whole and in order.
TEST(Frame, ReassemblesFromPiecesOfAnySize) {
  std::mt19937 rng(7);
  std::vector<uint8_t> stream;
  std::vector<std::vector<uint8_t>> payloads;
  for (int i = 0; i < 300; ++i) {
    payloads.push_back(Pattern(rng() % 5000, static_cast<uint32_t>(i)));
    auto f = EncodeFrame(static_cast<uint8_t>(1 + i % 255), payloads.back());
    stream.insert(stream.end(), f.begin(), f.end());
  }
  FrameDecoder d("test");
  Message m;
  size_t pos = 0;
  size_t next = 0;
  while (pos < stream.size()) {
    size_t n = std::min<size_t>(stream.size() - pos, 1 + rng() % (rng() % 2 ? 7 : 4000));
    std::span<const uint8_t> piece(stream.data() + pos, n);
    while (!piece.empty()) {
      auto step = d.feed(piece);
      ASSERT_NE(step.status, Status::kError) << d.error();
      piece = piece.subspan(step.consumed);
      if (step.status == Status::kMessage) {
        d.take(m);
        ASSERT_LT(next, payloads.size());
        EXPECT_EQ(m.type(), 1 + next % 255);
        EXPECT_TRUE(Equal(m.payload(), payloads[next])) << "message " << next;
        ++next;
      }
    }
    pos += n;
  }
  EXPECT_EQ(next, payloads.size());
  EXPECT_FALSE(d.mid_frame());
}

// The TCP path: the rest of a payload is written straight into payload_space().
TEST(Frame, PayloadCanBeWrittenInPlace) {
  auto payload = Pattern(100000, 5);
  auto f = EncodeFrame(3, payload);
  FrameDecoder d("test");
  ASSERT_EQ(d.feed(std::span<const uint8_t>(f).first(100)).status, Status::kNeedMore);
  auto space = d.payload_space();
  ASSERT_EQ(space.size(), payload.size() - 92);
  std::memcpy(space.data(), f.data() + 100, 5000);
  d.payload_written(5000);
  space = d.payload_space();
  std::memcpy(space.data(), f.data() + 5100, space.size());
  d.payload_written(space.size());
  EXPECT_TRUE(d.payload_space().empty());
  auto step = d.feed(std::span<const uint8_t>(f).subspan(f.size() - 4));
  ASSERT_EQ(step.status, Status::kMessage) << d.error();
  Message m;
  d.take(m);
  EXPECT_TRUE(Equal(m.payload(), payload));
}

// Every single-bit flip anywhere in a frame is refused, never delivered, and the
// message says "bad CRC" (header or payload) or names the bad field.
TEST(Frame, EveryBitFlipIsRefused) {
  auto good = EncodeFrame(9, Pattern(40, 9));
  for (size_t byte = 0; byte < good.size(); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      auto f = good;
      f[byte] ^= static_cast<uint8_t>(1u << bit);
      FrameDecoder d("peer");
      auto step = d.feed(f);
      ASSERT_EQ(step.status, Status::kError) << "byte " << byte << " bit " << bit;
      EXPECT_THAT(d.error(), HasSubstr("bad CRC")) << "byte " << byte << " bit " << bit;
      EXPECT_THAT(d.error(), HasSubstr("at stream offset 0"));
      EXPECT_EQ(d.feed(good).status, Status::kError);  // sticky
    }
  }
}

TEST(Frame, BadCrcNamesSizeAndOffset) {
  auto first = EncodeFrame(1, Pattern(100, 1));
  auto second = EncodeFrame(2, Pattern(1000, 2));
  second[8 + 500] ^= 0x40;
  FrameDecoder d("tcp:10.0.0.2:7000");
  ASSERT_EQ(d.feed(first).status, Status::kMessage);
  Message m;
  d.take(m);
  auto step = d.feed(second);
  ASSERT_EQ(step.status, Status::kError);
  EXPECT_THAT(d.error(), HasSubstr("tcp:10.0.0.2:7000: bad CRC in message of 1000 bytes at stream offset 112"));
  EXPECT_THAT(d.error(), HasSubstr("stored 0x"));
}

// A well-formed header announcing more than the limit (a bug or another protocol on
// the sender's side) is refused before anything is allocated.
TEST(Frame, OversizedLengthIsRefused) {
  auto h = EncodeFrameHeader(1, static_cast<uint32_t>(kMaxMessageBytes + 1));
  FrameDecoder d("peer");
  ASSERT_EQ(d.feed(h).status, Status::kError);
  EXPECT_THAT(d.error(), HasSubstr("message of 67108865 bytes at stream offset 0 exceeds the limit"));
  h = EncodeFrameHeader(1, static_cast<uint32_t>(kMaxMessageBytes));
  FrameDecoder ok("peer");
  EXPECT_EQ(ok.feed(h).status, Status::kNeedMore);  // exactly the limit is fine
}

TEST(Frame, TypeZeroAndUnknownFlagsAreRefused) {
  {
    auto h = EncodeFrameHeader(0, 4);
    FrameDecoder d("peer");
    ASSERT_EQ(d.feed(h).status, Status::kError);
    EXPECT_THAT(d.error(), HasSubstr("type 0"));
  }
  {
    auto h = EncodeFrameHeader(1, 4);
    h[5] = 0x80;
    eventlog::PutLe16(h.data() + 6, eventlog::Crc32c({h.data(), 6}) & 0xffff);
    FrameDecoder d("peer");
    ASSERT_EQ(d.feed(h).status, Status::kError);
    EXPECT_THAT(d.error(), HasSubstr("unknown flags 0x80"));
  }
}

TEST(Frame, DescribesAPartialFrame) {
  auto f = EncodeFrame(1, Pattern(1000, 1));
  FrameDecoder d("peer");
  ASSERT_EQ(d.feed(std::span<const uint8_t>(f).first(3)).status, Status::kNeedMore);
  EXPECT_TRUE(d.mid_frame());
  EXPECT_THAT(d.describe_partial(), HasSubstr("message header (3 of 8 bytes)"));
  ASSERT_EQ(d.feed(std::span<const uint8_t>(f).subspan(3, 300)).status, Status::kNeedMore);
  EXPECT_THAT(d.describe_partial(), HasSubstr("(295 of 1000 payload bytes) at stream offset 0"));
}

TEST(Hello, AcceptsItsOwnKindOnly) {
  auto tcp = EncodeHello(HelloKind::kTcp);
  EXPECT_EQ(CheckHello(tcp, HelloKind::kTcp), "");
  EXPECT_THAT(CheckHello(tcp, HelloKind::kShm), HasSubstr("peer is a tcp channel, this side is shm"));
  auto v2 = tcp;
  eventlog::PutLe16(v2.data() + 8, 2);
  EXPECT_THAT(CheckHello(v2, HelloKind::kTcp), HasSubstr("protocol version 2"));
  std::array<uint8_t, kHelloBytes> http{};
  std::memcpy(http.data(), "HTTP/1.1 400 Bad", 16);
  EXPECT_THAT(CheckHello(http, HelloKind::kTcp), HasSubstr("not an ftvm channel (it sent \"HTTP/1.1\""));
}

}  // namespace
}  // namespace ftvm::transport
