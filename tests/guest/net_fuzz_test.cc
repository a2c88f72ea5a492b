// Robustness: the network stack and the mail-request parser fed truncated,
// bit-flipped and length-corrupted inputs. This binary is built with
// AddressSanitizer/UBSan over the stack's own sources (tests/guest/meson.build), so
// any out-of-bounds read fails the test, not just a crash.
#include <gtest/gtest.h>

#include <random>

#include "guest/apps/mail_proto.h"
#include "guest/net/bytes.h"
#include "guest/net/stack.h"
#include "tests/guest/net_test_util.h"

namespace ftvm::net {
namespace {

using testing::CaptureSink;
using testing::GuestConfig;
using testing::Hex;

const char* const kSeeds[] = {
    "ffffffffffff4ac6e215ec64080600010800060400014ac6e215ec640a0009010000000000000a000902",
    "5254001234564ac6e215ec640800450000301e8940004001f6410a0009010a0009020800b90144250001bbf6066b"
    "00000000a8ef0b000000000041424344",
    "5254001234564ac6e215ec64080045000023ba7a400040115a4d0a0009010a0009029c4009dd000f11e07131205049"
    "4e47",
};

class Echo final : public UdpHandler {
 public:
  explicit Echo(NetStack* s) : stack_(s) {}
  void on_udp(const UdpDatagram& d) override {
    // Touch every byte we were given (ASan checks the bounds) and answer.
    volatile uint8_t sum = 0;
    for (size_t i = 0; i < d.len; ++i) sum = uint8_t(sum + d.data[i]);
    stack_->send_udp(d.src_ip, d.dst_port, d.src_port, d.data, d.len);
  }

 private:
  NetStack* stack_;
};

// Feeds a copy of exactly len bytes in its own heap block so ASan sees any
// read past the end.
void Feed(NetStack& s, const std::vector<uint8_t>& f, size_t len) {
  std::unique_ptr<uint8_t[]> copy(new uint8_t[len == 0 ? 1 : len]);
  std::copy(f.begin(), f.begin() + std::ptrdiff_t(len), copy.get());
  s.input(len == 0 ? nullptr : copy.get(), len);
  s.input(copy.get(), len);
}

TEST(NetFuzz, EveryTruncation) {
  CaptureSink sink;
  NetStack stack(GuestConfig(), &sink);
  Echo echo(&stack);
  stack.bind_udp(2525, &echo);
  for (const char* seed : kSeeds) {
    auto f = Hex(seed);
    for (size_t len = 0; len <= f.size(); ++len) Feed(stack, f, len);
  }
  // Only the complete frames (and their duplicates) produce replies.
  EXPECT_LE(sink.frames.size(), 6u);
}

TEST(NetFuzz, RandomMutations) {
  CaptureSink sink;
  NetStack stack(GuestConfig(0x0a000901), &sink);
  Echo echo(&stack);
  stack.bind_udp(2525, &echo);
  std::mt19937 rng(12345);
  for (int iter = 0; iter < 60000; ++iter) {
    auto f = Hex(kSeeds[iter % 3]);
    int flips = 1 + int(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      size_t at = rng() % f.size();
      switch (rng() % 4) {
        case 0: f[at] ^= uint8_t(1u << (rng() % 8)); break;
        case 1: f[at] = uint8_t(rng()); break;
        case 2:  // corrupt a length field: IP total length or UDP length
          if (f.size() >= 40) store_be16(&f[(rng() % 2) ? 16 : 38], uint16_t(rng()));
          break;
        case 3:  // grow with junk (still within one frame)
          if (f.size() < kMaxFrame) f.push_back(uint8_t(rng()));
          break;
      }
    }
    Feed(stack, f, rng() % 3 == 0 ? rng() % (f.size() + 1) : f.size());
  }
  SUCCEED() << sink.frames.size() << " frames sent";
}

TEST(MailFuzz, ParserNeverReadsOutOfBounds) {
  std::mt19937 rng(777);
  const std::string seeds[] = {"r1 PING", "r2 DELIVER m1 box\nhello", "r3 FETCH box 12", "r4 COUNT box"};
  for (int iter = 0; iter < 50000; ++iter) {
    std::string s = seeds[iter % 4];
    int edits = int(rng() % 4);
    for (int k = 0; k < edits && !s.empty(); ++k) {
      size_t at = rng() % s.size();
      switch (rng() % 3) {
        case 0: s[at] = char(rng()); break;
        case 1: s.erase(at, 1); break;
        case 2: s.insert(at, 1, " \n\r0x"[rng() % 5]); break;
      }
    }
    size_t len = s.size();
    std::unique_ptr<uint8_t[]> copy(new uint8_t[len == 0 ? 1 : len]);
    std::copy(s.begin(), s.end(), copy.get());
    ftvm::guest::MailRequest r = ftvm::guest::mail_parse(copy.get(), len);
    // Every slice the parser returns lies inside the input.
    for (ftvm::guest::Str part : {r.msgid, r.mailbox, r.body}) {
      if (part.n == 0) continue;
      const auto* p = reinterpret_cast<const uint8_t*>(part.p);
      ASSERT_GE(p, copy.get());
      ASSERT_LE(p + part.n, copy.get() + len);
    }
  }
}

}  // namespace
}  // namespace ftvm::net
