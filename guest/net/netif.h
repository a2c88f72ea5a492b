// The stack's only dependency on a network device: somewhere to send a frame.
#ifndef FTVM_GUEST_NET_NETIF_H_
#define FTVM_GUEST_NET_NETIF_H_

#include <stddef.h>
#include <stdint.h>

namespace ftvm::net {

class FrameSink {
 public:
  // Queues one Ethernet frame (header included, no FCS). The bytes are copied
  // before returning. False when the frame was dropped (queue full, too long).
  virtual bool send_frame(const uint8_t* frame, size_t len) = 0;

 protected:
  ~FrameSink() = default;  // never deleted through this interface
};

}  // namespace ftvm::net

#endif  // FTVM_GUEST_NET_NETIF_H_
