#include "guest/lib/virtio_net.h"

#include "guest/lib/arena.h"
#include "guest/lib/mem.h"

namespace ftvm::guest {
namespace {
constexpr uint32_t kHdr = sizeof(virtio_net_hdr);
static_assert(sizeof(virtio_net_hdr) == 12);
constexpr uint32_t kRxLen = kHdr + FTVM_NET_MAX_FRAME;

// Tokens must be non-null: buffer index + 1.
void* to_token(unsigned i) { return reinterpret_cast<void*>(static_cast<uintptr_t>(i) + 1); }
unsigned from_token(void* t) { return static_cast<unsigned>(reinterpret_cast<uintptr_t>(t) - 1); }
}  // namespace

bool VirtioNet::init(Arena& arena) {
  if (!dev_.probe(FTVM_SLOT_VIRTIO_NET, VIRTIO_ID_NET)) return false;
  uint64_t wanted = (1ull << VIRTIO_F_RING_EVENT_IDX) | (1ull << VIRTIO_NET_F_MAC);
  if (!dev_.begin_init(wanted)) return false;
  if (!dev_.setup_queue(0, FTVM_VIRTQ_MAX_SIZE, &rxq_, arena) ||
      !dev_.setup_queue(1, FTVM_VIRTQ_MAX_SIZE, &txq_, arena)) {
    dev_.fail();
    return false;
  }
  rx_bufs_ = static_cast<uint8_t*>(arena.alloc(kBufBytes * rxq_.size(), 4096));
  tx_bufs_ = static_cast<uint8_t*>(arena.alloc(kBufBytes * txq_.size(), 4096));
  if (rx_bufs_ == nullptr || tx_bufs_ == nullptr) {
    dev_.fail();
    return false;
  }
  if (dev_.has_feature(VIRTIO_NET_F_MAC)) {
    for (unsigned i = 0; i < 6; ++i) mac_[i] = dev_.read_config8(i);
  } else {
    // No MAC from the device: a fixed locally administered one.
    const uint8_t fallback[6] = {0x02, 0x46, 0x54, 0x56, 0x4d, 0x01};
    memcpy(mac_, fallback, 6);
  }
  for (unsigned i = 0; i < rxq_.size(); ++i) {
    VqBuf b{rx_bufs_ + i * kBufBytes, kRxLen, true};
    rxq_.add(&b, 1, to_token(i));
  }
  for (unsigned i = 0; i < txq_.size(); ++i) tx_free_[tx_free_count_++] = static_cast<uint16_t>(i);
  dev_.driver_ok();
  // The device may look at RX only when told (spec: after DRIVER_OK).
  rxq_.force_kick();
  ++stats_.rx_notifies;
  return true;
}

unsigned VirtioNet::poll_rx(void (*fn)(void*, const uint8_t*, size_t), void* ctx, unsigned max) {
  unsigned n = 0;
  while (n < max) {
    uint32_t written;
    void* token = rxq_.pop_used(&written);
    if (token == nullptr) break;
    unsigned i = from_token(token);
    uint8_t* buf = rx_bufs_ + i * kBufBytes;
    if (written > kRxLen) written = kRxLen;  // never trust a length past our buffer
    if (written > kHdr) {
      ++stats_.rx_frames;
      fn(ctx, buf + kHdr, written - kHdr);
    } else {
      ++stats_.rx_runts;
    }
    VqBuf b{buf, kRxLen, true};
    rxq_.add(&b, 1, token);
    ++n;
  }
  if (n > 0 && rxq_.kick()) ++stats_.rx_notifies;
  return n;
}

void VirtioNet::reclaim_tx() {
  while (void* token = txq_.pop_used(nullptr)) tx_free_[tx_free_count_++] = static_cast<uint16_t>(from_token(token));
}

bool VirtioNet::send_frame(const uint8_t* frame, size_t len) {
  if (len > FTVM_NET_MAX_FRAME) {
    ++stats_.tx_dropped;
    return false;
  }
  reclaim_tx();
  if (tx_free_count_ == 0) {
    // Ring full of frames the device has not drained: make it drain now.
    txq_.force_kick();
    ++stats_.tx_notifies;
    reclaim_tx();
    if (tx_free_count_ == 0) {
      ++stats_.tx_dropped;
      return false;
    }
  }
  unsigned i = tx_free_[--tx_free_count_];
  uint8_t* buf = tx_bufs_ + i * kBufBytes;
  memset(buf, 0, kHdr);  // no checksum offload, no GSO
  memcpy(buf + kHdr, frame, len);
  VqBuf b{buf, static_cast<uint32_t>(kHdr + len), false};
  txq_.add(&b, 1, to_token(i));
  ++stats_.tx_frames;
  return true;
}

void VirtioNet::flush_tx() {
  if (txq_.kick()) ++stats_.tx_notifies;
}

void VirtioNet::wait_rx() {
  rxq_.wait_used();
}

void VirtioNet::wait_rx_since(uint64_t snapshot) { rxq_.wait_used_since(snapshot); }

}  // namespace ftvm::guest
