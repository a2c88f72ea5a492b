// Test-only access to an RDMA channel's incoming ring, so tests can damage the bytes
// the peer wrote (a flipped bit) and check that recv() reports it.
#pragma once

#include <cstdint>
#include <span>

#include "transport/channel.h"

namespace ftvm::transport::test_hooks {

struct RdmaRingView {
  std::span<uint8_t> data;  // the whole ring as registered here; stream byte p is data[p % size]
  uint64_t head = 0;        // the next stream byte recv() reads
};

class RdmaRingAccess {
 public:
  virtual RdmaRingView incoming_ring() = 0;

 protected:
  ~RdmaRingAccess() = default;
};

// The ring `channel` receives into. Throws ftvm::Error when it is not an RDMA channel.
RdmaRingView RdmaIncomingRing(Channel& channel);

}  // namespace ftvm::transport::test_hooks
