#include "guest/net/checksum.h"

namespace ftvm::net {

uint64_t csum_add(uint64_t sum, const uint8_t* p, size_t n) {
  size_t i = 0;
  for (; i + 1 < n; i += 2) sum += static_cast<uint64_t>(p[i]) << 8 | p[i + 1];
  if (i < n) sum += static_cast<uint64_t>(p[i]) << 8;
  return sum;
}

uint16_t csum_finish(uint64_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

uint64_t csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint16_t len) {
  return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + proto + len;
}

}  // namespace ftvm::net
