// CRC-32 (IEEE 802.3, reflected, poly 0xEDB88320): the journal's record check.
#ifndef FTVM_GUEST_LIB_CRC32_H_
#define FTVM_GUEST_LIB_CRC32_H_

#include <stddef.h>
#include <stdint.h>

namespace ftvm::guest {

// Streaming form: crc = crc32_update(crc32_update(0, a, n), b, m) == crc32 of a||b.
uint32_t crc32_update(uint32_t crc, const void* data, size_t len);
inline uint32_t crc32(const void* data, size_t len) { return crc32_update(0, data, len); }

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_LIB_CRC32_H_
