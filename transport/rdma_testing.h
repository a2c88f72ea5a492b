// Test-only access to the memory an RDMA channel's peer writes into (its incoming ring
// and the acknowledgement area of its outgoing direction), so tests can damage what the
// peer wrote and check that the channel reports it.
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
  virtual std::span<uint8_t> outgoing_ack_area() = 0;

 protected:
  ~RdmaRingAccess() = default;
};

// The ring `channel` receives into. Throws ftvm::Error when it is not an RDMA channel.
RdmaRingView RdmaIncomingRing(Channel& channel);
// Where the receiver of what `channel` sends writes its acknowledgements: u64 consumed
// position at +0, u64 doorbells taken at +8.
std::span<uint8_t> RdmaOutgoingAckArea(Channel& channel);

}  // namespace ftvm::transport::test_hooks
