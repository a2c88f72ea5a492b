// The running hash of a device's output stream (console bytes, transmitted frames).
// Primary and replica compute it alike; it is part of device state, so verification
// digests cover what the guest has output, not only its memory and registers.
#pragma once

#include <xxhash.h>

#include <cstdint>
#include <span>

namespace ftvm::vmm {

inline uint64_t OutputHash(uint64_t previous, std::span<const uint8_t> bytes) {
  return XXH3_64bits_withSeed(bytes.data(), bytes.size(), previous);
}

}  // namespace ftvm::vmm
