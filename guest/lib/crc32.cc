#include "guest/lib/crc32.h"

namespace ftvm::guest {
namespace {

struct Table {
  uint32_t v[256];
};

constexpr Table make_table() {
  Table t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    t.v[i] = c;
  }
  return t;
}

// Built at compile time: lands in .rodata, no runtime initialisation.
constexpr Table kTable = make_table();

}  // namespace

uint32_t crc32_update(uint32_t crc, const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < len; ++i) crc = kTable.v[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

}  // namespace ftvm::guest
