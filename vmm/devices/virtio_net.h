// virtio-net over a tap interface. Queue 0 receives, queue 1 transmits.
//
// When replaying there is no tap: received frames come from the log (the machine
// calls deliver_frame) and transmitted frames are produced, hashed and counted, but
// never released.
//
// Exits are expensive, so the device asks the driver not to kick for either queue
// (event index / NO_NOTIFY) and instead looks at both rings in poll(), which runs
// after every exit: a frame the guest queues goes out at its next exit, and frames
// from the tap land in RX buffers at an exit boundary (what record/replay needs).
#pragma once

#include <sys/uio.h>

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "vmm/devices/device_io.h"

#include "vmm/devices/tap.h"
#include "vmm/devices/virtio_mmio.h"
#include "vmm/devices/virtqueue.h"

namespace ftvm::vmm {

struct NetCounters {
  uint64_t rx_frames = 0;       // frames delivered into guest RX buffers
  uint64_t rx_bytes = 0;        // their Ethernet bytes (without virtio_net_hdr)
  uint64_t rx_dropped = 0;      // frames larger than the RX buffer offered for them
  uint64_t rx_errors = 0;       // tap read failures
  uint64_t tx_frames = 0;       // frames written to the tap
  uint64_t tx_bytes = 0;
  uint64_t tx_dropped = 0;      // empty frames, or the tap had no room (EAGAIN)
  uint64_t tx_errors = 0;       // tap write failures (e.g. EIO: interface down)
};

class VirtioNet : public VirtioBackend {
 public:
  static constexpr unsigned kRxQueue = 0;
  static constexpr unsigned kTxQueue = 1;
  static constexpr size_t kHdrBytes = sizeof(virtio_net_hdr);  // 12 with VERSION_1

  // Throws ftvm::Error for a multicast MAC address. `tap` is empty when replaying.
  VirtioNet(std::optional<Tap> tap, std::array<uint8_t, 6> mac, DeviceIo& io);

  uint32_t device_id() const override { return VIRTIO_ID_NET; }
  uint64_t device_features() const override;
  std::span<const uint8_t> config() const override { return mac_; }
  unsigned num_queues() const override { return 2; }
  void process(unsigned queue, std::span<Virtqueue> queues) override;
  void poll(std::span<Virtqueue> queues) override;
  std::vector<int> host_fds() const override {
    return tap_ ? std::vector<int>{tap_->fd()} : std::vector<int>{};
  }
  void host_ready() override { tap_readable_ = true; }
  // Only while the guest has RX buffers: with none, a readable tap must not keep
  // waking the vCPU thread.
  bool wants_host_events(std::span<const Virtqueue> queues) const override;

  enum class RxResult { kDelivered, kNoBuffer, kDropped, kBroken };
  // Puts one Ethernet frame into the next RX buffer (the path a replayer will use
  // with logged frames). kDropped: larger than that buffer; the buffer stays.
  RxResult deliver_frame(Virtqueue& rx, std::span<const uint8_t> frame);
  // After a run of deliveries: ask the driver again not to kick for RX. Its value
  // (avail_event) is guest-visible, so it is written after the last frame of every
  // run, live or replayed, never before: how many polls an exit took must not show.
  void finish_rx(Virtqueue& rx);
  // A replica going live takes over the network: frames from now on go to and come
  // from `tap`.
  void attach_tap(Tap tap);
  // Tells the network this MAC now owns `ipv4` (a gratuitous ARP), so switches and
  // neighbours send the VM's traffic here. Returns false when the tap refused it.
  bool announce(uint32_t ipv4_host_order);

  void save(snapshot::Virtio& out) const override;
  void restore(const snapshot::Virtio& in) override;

  const NetCounters& counters() const { return counters_; }
  // The host side; only for a VM that has one (not when replaying).
  const Tap& tap() const { return tap_.value(); }
  bool has_tap() const { return tap_.has_value(); }
  // A running hash of every frame the guest transmitted.
  uint64_t tx_hash() const { return tx_hash_; }

 private:
  void transmit(Virtqueue& tx);
  void receive(Virtqueue& rx);

  const std::string& tap_name() const;

  std::optional<Tap> tap_;
  std::array<uint8_t, 6> mac_;
  DeviceIo& io_;
  uint64_t tx_hash_ = 0;
  NetCounters counters_;
  DescChain chain_;             // scratch, reused
  std::vector<iovec> tx_iov_;   // scratch, reused
  std::vector<uint8_t> rx_frame_;
  // False once a read found the tap empty, until the event thread sees it readable
  // again: saves a read(2) per exit on the vCPU thread.
  bool tap_readable_ = true;
};

}  // namespace ftvm::vmm
