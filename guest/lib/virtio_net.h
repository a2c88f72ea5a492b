// virtio-net driver (ring 3): queue 0 receives, queue 1 transmits.
//
// The RX ring is kept full of buffers (12-byte header + 1514-byte frame each).
// Sends only publish into the TX ring; flush_tx() notifies the device if its
// avail_event asks for it — otherwise the VMM drains TX at its next exit anyway.
#ifndef FTVM_GUEST_LIB_VIRTIO_NET_H_
#define FTVM_GUEST_LIB_VIRTIO_NET_H_

#include <stddef.h>
#include <stdint.h>

#include "guest/lib/virtio.h"
#include "guest/net/netif.h"

namespace ftvm::guest {

class VirtioNet final : public net::FrameSink {
 public:
  struct Stats {
    uint64_t rx_frames, rx_runts, tx_frames, tx_dropped, tx_notifies, rx_notifies;
  };

  // Probes slot FTVM_SLOT_VIRTIO_NET, sets up both queues, fills RX.
  bool init(Arena& arena);
  const char* error() const { return dev_.error(); }
  const uint8_t* mac() const { return mac_; }

  // Hands up to `max` received frames to fn (frame excludes the virtio header),
  // then returns their buffers to the device. Returns the number handled.
  unsigned poll_rx(void (*fn)(void* ctx, const uint8_t* frame, size_t len), void* ctx,
                   unsigned max);
  // FrameSink: copies the frame into a TX buffer and publishes it (no exit).
  bool send_frame(const uint8_t* frame, size_t len) override;
  // Notifies TX if the device wants it (event index).
  void flush_tx();
  // Idles until a frame is available or any other interrupt arrives.
  void wait_rx();
  // Or returns at once if any interrupt came since `snapshot` (see VirtQueue).
  void wait_rx_since(uint64_t snapshot);

  const Stats& stats() const { return stats_; }

 private:
  static constexpr size_t kBufBytes = 2048;  // >= 12 + 1514
  void reclaim_tx();

  VirtioDevice dev_;
  VirtQueue rxq_;
  VirtQueue txq_;
  uint8_t mac_[6] = {};
  uint8_t* rx_bufs_ = nullptr;
  uint8_t* tx_bufs_ = nullptr;
  uint16_t tx_free_[FTVM_VIRTQ_MAX_SIZE] = {};  // stack of free TX buffer indexes
  unsigned tx_free_count_ = 0;
  Stats stats_ = {};
};

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_LIB_VIRTIO_NET_H_
