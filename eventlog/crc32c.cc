#include "eventlog/crc32c.h"

#include <array>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#include "eventlog/format.h"

namespace ftvm::eventlog {
namespace {

constexpr uint32_t kPolyReflected = 0x82F63B78u;

// Slicing-by-8 tables, built at compile time so there is no mutable global state and
// no init-order question.
using Tables = std::array<std::array<uint32_t, 256>, 8>;
constexpr Tables MakeTables() {
  Tables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPolyReflected : c >> 1;
    t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i) {
    for (size_t s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
  }
  return t;
}
constexpr Tables kTables = MakeTables();

// Shifting a CRC past zero bytes, to combine CRCs computed side by side. The register
// (without the ~ pre- and post-conditioning) is linear over GF(2): running it over A
// then B from state s ends in Zeros_|B|(s_A) ^ raw(B, 0). Zeros_n is a 32x32 bit
// matrix (column i: the image of bit i), built by squaring the one-zero-bit operator,
// and applied a byte at a time from four 256-entry tables.
using Matrix = std::array<uint32_t, 32>;
constexpr uint32_t Apply(const Matrix& m, uint32_t v) {
  uint32_t r = 0;
  for (int i = 0; v != 0; ++i, v >>= 1) {
    if (v & 1) r ^= m[i];
  }
  return r;
}
using ShiftTables = std::array<std::array<uint32_t, 256>, 4>;
constexpr ShiftTables MakeShiftTables(size_t bytes) {
  Matrix power{};  // the operator for 1, 2, 4, ... zero bits
  power[0] = kPolyReflected;
  for (int i = 1; i < 32; ++i) power[i] = 1u << (i - 1);
  Matrix op{};  // the identity
  for (int i = 0; i < 32; ++i) op[i] = 1u << i;
  for (size_t bits = bytes * 8; bits != 0; bits >>= 1) {
    if (bits & 1) {
      for (auto& column : op) column = Apply(power, column);
    }
    Matrix squared{};
    for (int i = 0; i < 32; ++i) squared[i] = Apply(power, power[i]);
    power = squared;
  }
  ShiftTables t{};
  for (uint32_t k = 0; k < 4; ++k) {
    for (uint32_t b = 0; b < 256; ++b) t[k][b] = Apply(op, b << (8 * k));
  }
  return t;
}
constexpr uint32_t Shift(const ShiftTables& t, uint32_t crc) {
  return t[0][crc & 0xff] ^ t[1][(crc >> 8) & 0xff] ^ t[2][(crc >> 16) & 0xff] ^ t[3][crc >> 24];
}

// The hardware path runs three independent crc32 chains (the instruction's latency is
// three times its throughput) over three adjacent blocks and combines them: 3 x 8 KiB
// while that much is left, then 3 x 256 bytes (a 4 KiB message: five such rounds).
constexpr size_t kLongBlock = 8192;
constexpr size_t kShortBlock = 256;
constexpr ShiftTables kShiftLong = MakeShiftTables(kLongBlock);
constexpr ShiftTables kShiftShort = MakeShiftTables(kShortBlock);

}  // namespace

uint32_t Crc32cTable(std::span<const uint8_t> data, uint32_t crc) {
  uint32_t c = ~crc;
  const uint8_t* p = data.data();
  size_t n = data.size();
  while (n >= 8) {
    uint64_t v = GetLe64(p) ^ c;
    c = kTables[7][v & 0xff] ^ kTables[6][(v >> 8) & 0xff] ^ kTables[5][(v >> 16) & 0xff] ^
        kTables[4][(v >> 24) & 0xff] ^ kTables[3][(v >> 32) & 0xff] ^
        kTables[2][(v >> 40) & 0xff] ^ kTables[1][(v >> 48) & 0xff] ^ kTables[0][v >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ kTables[0][(c ^ *p++) & 0xff];
  return ~c;
}

#if defined(__x86_64__)
namespace {
// Runs rounds of three `block`-byte chains while 3 x block bytes are left; advances
// `p` and `n` past them.
__attribute__((target("sse4.2"))) uint64_t Interleaved(uint64_t c, const uint8_t*& p, size_t& n,
                                                      size_t block, const ShiftTables& shift) {
  while (n >= 3 * block) {
    uint64_t c1 = 0, c2 = 0;
    for (const uint8_t* end = p + block; p < end; p += 8) {
      c = _mm_crc32_u64(c, GetLe64(p));
      c1 = _mm_crc32_u64(c1, GetLe64(p + block));
      c2 = _mm_crc32_u64(c2, GetLe64(p + 2 * block));
    }
    c = Shift(shift, static_cast<uint32_t>(c)) ^ c1;
    c = Shift(shift, static_cast<uint32_t>(c)) ^ c2;
    p += 2 * block;
    n -= 3 * block;
  }
  return c;
}
}  // namespace

// Compiled for SSE4.2 regardless of the build's -march, and only called after the
// CPUID check, so one binary runs on every x86-64 host.
__attribute__((target("sse4.2"))) uint32_t Crc32cHardware(std::span<const uint8_t> data,
                                                           uint32_t crc) {
  uint64_t c = ~crc;
  const uint8_t* p = data.data();
  size_t n = data.size();
  c = Interleaved(c, p, n, kLongBlock, kShiftLong);
  c = Interleaved(c, p, n, kShortBlock, kShiftShort);
  while (n >= 8) {
    c = _mm_crc32_u64(c, GetLe64(p));
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return ~c32;
}

bool Crc32cHardwareAvailable() {
  // CPUID is read once (thread-safe static init); the result never changes.
  static const bool available = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") != 0;
  }();
  return available;
}
#else
uint32_t Crc32cHardware(std::span<const uint8_t> data, uint32_t crc) {
  return Crc32cTable(data, crc);
}
bool Crc32cHardwareAvailable() { return false; }
#endif

uint32_t Crc32c(std::span<const uint8_t> data, uint32_t crc) {
  return Crc32cHardwareAvailable() ? Crc32cHardware(data, crc) : Crc32cTable(data, crc);
}

}  // namespace ftvm::eventlog
