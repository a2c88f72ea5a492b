// CRC32C against published vectors (RFC 3720 B.4 and the "123456789" check value),
// and the SSE4.2 path (three interleaved chains, combined) against the table path on
// random data of every alignment and length.
#include "eventlog/crc32c.h"

#include <gtest/gtest.h>

#include <numeric>
#include <random>
#include <string_view>
#include <vector>

namespace ftvm::eventlog {
namespace {

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

struct Vector {
  std::vector<uint8_t> data;
  uint32_t crc;
};

std::vector<Vector> KnownVectors() {
  std::vector<Vector> v;
  std::string_view check = "123456789";
  v.push_back({{check.begin(), check.end()}, 0xE3069283u});
  v.push_back({{}, 0u});
  v.push_back({std::vector<uint8_t>(32, 0x00), 0x8A9136AAu});
  v.push_back({std::vector<uint8_t>(32, 0xFF), 0x62A8AB43u});
  std::vector<uint8_t> up(32);
  std::iota(up.begin(), up.end(), 0);
  v.push_back({up, 0x46DD794Eu});
  std::vector<uint8_t> down(up.rbegin(), up.rend());
  v.push_back({down, 0x113FDB5Cu});
  return v;
}

TEST(Crc32c, TableMatchesKnownVectors) {
  for (const auto& [data, crc] : KnownVectors()) EXPECT_EQ(Crc32cTable(data), crc);
}

TEST(Crc32c, HardwareMatchesKnownVectors) {
  if (!Crc32cHardwareAvailable()) GTEST_SKIP() << "CPU has no SSE4.2";
  for (const auto& [data, crc] : KnownVectors()) EXPECT_EQ(Crc32cHardware(data), crc);
}

TEST(Crc32c, DispatchMatchesKnownVectors) {
  EXPECT_EQ(Crc32c(Bytes("123456789")), 0xE3069283u);
  for (const auto& [data, crc] : KnownVectors()) EXPECT_EQ(Crc32c(data), crc);
}

TEST(Crc32c, HardwareAndTableAgreeOnRandomData) {
  if (!Crc32cHardwareAvailable()) GTEST_SKIP() << "CPU has no SSE4.2";
  std::mt19937_64 rng(42);
  std::vector<uint8_t> buf(70000);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  // Every start alignment and many lengths, including the 8-byte-loop boundaries.
  for (size_t start = 0; start < 16; ++start) {
    for (size_t len : {0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4096, 65536}) {
      auto s = std::span<const uint8_t>(buf).subspan(start, len);
      ASSERT_EQ(Crc32cHardware(s), Crc32cTable(s)) << "start " << start << " len " << len;
    }
  }
  for (int i = 0; i < 200; ++i) {
    size_t start = rng() % 1000, len = rng() % 60000;
    auto s = std::span<const uint8_t>(buf).subspan(start, len);
    ASSERT_EQ(Crc32cHardware(s), Crc32cTable(s));
  }
}

// The hardware path combines three interleaved chains over blocks of 3 x 8 KiB, then
// 3 x 256 bytes: every length around those boundaries, at every alignment, continuing
// from random previous CRCs, gives exactly the table's result.
TEST(Crc32c, InterleavedHardwareMatchesTableAtBlockBoundariesAndRandomLengths) {
  if (!Crc32cHardwareAvailable()) GTEST_SKIP() << "CPU has no SSE4.2";
  std::mt19937_64 rng(7);
  std::vector<uint8_t> buf(200000);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  std::vector<size_t> lengths;
  for (size_t base : {size_t{3 * 256}, size_t{2 * 3 * 256}, size_t{4096}, size_t{3 * 8192}, size_t{3 * 8192 + 3 * 256},
                      size_t{2 * 3 * 8192}}) {
    for (size_t d = 0; d <= 17; ++d) {
      lengths.push_back(base + d);
      lengths.push_back(base - d);
    }
  }
  for (size_t start = 0; start < 8; ++start) {
    for (size_t len : lengths) {
      auto s = std::span<const uint8_t>(buf).subspan(start, len);
      const auto prev = static_cast<uint32_t>(rng());
      ASSERT_EQ(Crc32cHardware(s, prev), Crc32cTable(s, prev)) << "start " << start << " len " << len;
    }
  }
  for (int i = 0; i < 2000; ++i) {
    const size_t start = rng() % 64, len = rng() % (buf.size() - 64);
    auto s = std::span<const uint8_t>(buf).subspan(start, len);
    const auto prev = static_cast<uint32_t>(rng());
    ASSERT_EQ(Crc32cHardware(s, prev), Crc32cTable(s, prev)) << "start " << start << " len " << len;
  }
}

TEST(Crc32c, ExtendEqualsWhole) {
  std::string_view all = "The quick brown fox jumps over the lazy dog";
  for (size_t cut = 0; cut <= all.size(); ++cut) {
    auto a = Bytes(all.substr(0, cut)), b = Bytes(all.substr(cut));
    EXPECT_EQ(Crc32c(b, Crc32c(a)), Crc32c(Bytes(all)));
    EXPECT_EQ(Crc32cTable(b, Crc32cTable(a)), Crc32cTable(Bytes(all)));
  }
}

}  // namespace
}  // namespace ftvm::eventlog
