// The Internet checksum (RFC 1071).
#ifndef FTVM_GUEST_NET_CHECKSUM_H_
#define FTVM_GUEST_NET_CHECKSUM_H_

#include <stddef.h>
#include <stdint.h>

namespace ftvm::net {

// Adds n bytes as big-endian 16-bit words (odd tail padded with zero) to sum.
// Chain calls only at even offsets.
uint64_t csum_add(uint64_t sum, const uint8_t* p, size_t n);
// Folds to 16 bits and complements: the value to store in a checksum field.
// Over data that includes a correct checksum field the result is 0.
uint16_t csum_finish(uint64_t sum);

// Sum of the IPv4 pseudo header for UDP/TCP.
uint64_t csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint16_t len);

}  // namespace ftvm::net

#endif  // FTVM_GUEST_NET_CHECKSUM_H_
