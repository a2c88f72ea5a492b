// Test-only access to a shared-memory channel's ring, so tests can damage the bytes a
// peer wrote (a flipped bit, a forged length) and check that recv() reports it.
#pragma once

#include <cstdint>
#include <span>

#include "transport/channel.h"

namespace ftvm::transport::test_hooks {

struct ShmRingView {
  std::span<uint8_t> data;  // the whole ring as mapped here; byte at position p is data[p % size]
  uint64_t head = 0;        // consumer position: the next byte recv() reads
  uint64_t tail = 0;        // producer position: bytes before it are published
};

// The ring `channel` receives from. Throws ftvm::Error when it is not a shm channel.
ShmRingView ShmIncomingRing(Channel& channel);

}  // namespace ftvm::transport::test_hooks
