#include "vmm/devices/virtio_net.h"

#include <bit>
#include <cstring>
#include <string>

#include "common/error.h"
#include "common/log.h"
#include "vmm/output_hash.h"
#include "vmm/snapshot.pb.h"

namespace ftvm::vmm {

namespace {

// Tap-side failures can repeat for every frame (an interface that is down fails
// each write): log the 1st, 2nd, 4th, 8th... occurrence, and count all of them.
bool WorthLogging(uint64_t count) { return std::has_single_bit(count); }

// Largest frame a tap can hand us (64 KiB MTU plus Ethernet and VLAN headers).
constexpr size_t kMaxTapFrame = 65536 + 18;

}  // namespace

VirtioNet::VirtioNet(std::optional<Tap> tap, std::array<uint8_t, 6> mac, DeviceIo& io)
    : tap_(std::move(tap)), mac_(mac), io_(io), rx_frame_(kMaxTapFrame) {
  if (mac_[0] & 1) throw Error("virtio-net on tap " + tap_name() + ": MAC address is multicast");
}

const std::string& VirtioNet::tap_name() const {
  static const std::string kNone = "(none: replaying)";
  return tap_ ? tap_->name() : kNone;
}

void VirtioNet::save(snapshot::Virtio& out) const {
  snapshot::Net* s = out.mutable_net();
  s->set_tx_frames(counters_.tx_frames);
  s->set_tx_hash(tx_hash_);
  s->set_rx_frames(counters_.rx_frames);
}

void VirtioNet::restore(const snapshot::Virtio& in) {
  if (!in.has_net()) throw Error("snapshot for virtio-net holds another device's state");
  counters_.tx_frames = in.net().tx_frames();
  tx_hash_ = in.net().tx_hash();
  counters_.rx_frames = in.net().rx_frames();
}

uint64_t VirtioNet::device_features() const {
  return (uint64_t(1) << VIRTIO_F_VERSION_1) | (uint64_t(1) << VIRTIO_F_RING_EVENT_IDX) |
         (uint64_t(1) << VIRTIO_NET_F_MAC);
}

bool VirtioNet::wants_host_events(std::span<const Virtqueue> queues) const {
  return tap_.has_value() && queues[kRxQueue].has_available();
}

void VirtioNet::process(unsigned /*queue*/, std::span<Virtqueue> queues) {
  // A kick on either queue means the same as a poll: move whatever can move.
  poll(queues);
}

void VirtioNet::poll(std::span<Virtqueue> queues) {
  // Cheap when idle: each ring costs one acquire load of its avail idx, and the
  // notification-suppression stores happen only when their value changes.
  if (queues[kTxQueue].ready()) transmit(queues[kTxQueue]);
  if (queues[kRxQueue].ready()) receive(queues[kRxQueue]);
}

void VirtioNet::transmit(Virtqueue& tx) {
  while (tx.pop(chain_) == PopResult::kChain) {
    if (!chain_.writable.empty()) {
      tx.fail("virtio-net TX chain at head " + std::to_string(chain_.head) +
              " has device-writable descriptors");
      return;
    }
    if (chain_.readable_bytes < kHdrBytes) {
      tx.fail("virtio-net TX chain at head " + std::to_string(chain_.head) + " is shorter than the " +
              std::to_string(kHdrBytes) + "-byte virtio_net_hdr");
      return;
    }
    // Zero copy: the tap gathers the frame straight out of guest RAM, past the
    // header (we offer no offloads, so the header carries nothing we need).
    tx_iov_.clear();
    const size_t frame = SliceIov(chain_.readable, kHdrBytes, chain_.readable_bytes - kHdrBytes, tx_iov_);
    if (frame == 0) {
      ++counters_.tx_dropped;
    } else {
      for (const iovec& v : tx_iov_) tx_hash_ = OutputHash(tx_hash_, {static_cast<const uint8_t*>(v.iov_base), v.iov_len});
      // The hooks may hold it (output rule) or drop it (a replica: the primary sent
      // it). Asked with or without a tap, so that primary and replica log and check
      // the same outputs.
      const bool send_now = io_.transmit_frame(tx_iov_, tx_hash_);
      const Tap::Result r = tap_ && send_now ? tap_->write(tx_iov_) : Tap::Result{Tap::Status::kOk, frame, 0};
      if (r.status == Tap::Status::kOk) {
        ++counters_.tx_frames;
        counters_.tx_bytes += frame;
      } else if (r.status == Tap::Status::kWouldBlock) {
        if (WorthLogging(++counters_.tx_dropped))
          log::warn("virtio-net tap full, frame dropped",
                    {{"tap", tap_name()}, {"tx_dropped", counters_.tx_dropped}});
      } else if (WorthLogging(++counters_.tx_errors)) {
        log::warn("virtio-net tap write failed",
                  {{"tap", tap_name()}, {"error", std::strerror(r.err)}, {"tx_errors", counters_.tx_errors}});
      }
    }
    tx.push(chain_.head, 0);
  }
  tx.disable_notifications();
}

void VirtioNet::finish_rx(Virtqueue& rx) { rx.disable_notifications(); }

void VirtioNet::attach_tap(Tap tap) {
  tap_.emplace(std::move(tap));
  tap_readable_ = true;  // frames may already wait
}

bool VirtioNet::announce(uint32_t ip) {
  if (!tap_) return false;
  // Ethernet broadcast, ARP request with sender and target protocol address both the
  // VM's (RFC 5227's ARP announcement).
  uint8_t f[42] = {};
  std::memset(f, 0xff, 6);
  std::memcpy(f + 6, mac_.data(), 6);
  f[12] = 0x08, f[13] = 0x06;             // ARP
  f[14] = 0x00, f[15] = 0x01;             // Ethernet
  f[16] = 0x08, f[17] = 0x00;             // IPv4
  f[18] = 6, f[19] = 4;
  f[20] = 0x00, f[21] = 0x01;             // request
  std::memcpy(f + 22, mac_.data(), 6);
  const uint8_t ip_bytes[4] = {uint8_t(ip >> 24), uint8_t(ip >> 16), uint8_t(ip >> 8), uint8_t(ip)};
  std::memcpy(f + 28, ip_bytes, 4);
  std::memcpy(f + 38, ip_bytes, 4);
  iovec v{f, sizeof f};
  return tap_->write({&v, 1}).status == Tap::Status::kOk;
}

void VirtioNet::receive(Virtqueue& rx) {
  // Read from the tap only while the guest has somewhere to put the frame; the
  // rest waits in the tap's queue (and the event thread ignores the tap meanwhile).
  while (tap_ && tap_readable_ && rx.has_available()) {
    const Tap::Result r = tap_->read(rx_frame_);
    if (r.status == Tap::Status::kWouldBlock) {
      tap_readable_ = false;
      break;
    }
    if (r.status == Tap::Status::kError) {
      if (WorthLogging(++counters_.rx_errors))
        log::warn("virtio-net tap read failed",
                  {{"tap", tap_name()}, {"error", std::strerror(r.err)}, {"rx_errors", counters_.rx_errors}});
      break;
    }
    const std::span<const uint8_t> frame(rx_frame_.data(), r.bytes);
    const RxResult result = deliver_frame(rx, frame);
    if (result == RxResult::kDelivered) io_.frame_received(frame);
    if (result == RxResult::kBroken) return;
  }
  finish_rx(rx);
}

VirtioNet::RxResult VirtioNet::deliver_frame(Virtqueue& rx, std::span<const uint8_t> frame) {
  switch (rx.pop(chain_)) {
    case PopResult::kEmpty: return RxResult::kNoBuffer;
    case PopResult::kBroken: return RxResult::kBroken;
    case PopResult::kChain: break;
  }
  if (!chain_.readable.empty()) {
    rx.fail("virtio-net RX chain at head " + std::to_string(chain_.head) +
            " has device-readable descriptors");
    return RxResult::kBroken;
  }
  if (chain_.writable_bytes < kHdrBytes + frame.size()) {
    // Keep the buffer for the next (smaller) frame.
    rx.unpop();
    if (WorthLogging(++counters_.rx_dropped))
      log::warn("virtio-net frame larger than the RX buffer, dropped",
                {{"tap", tap_name()}, {"frame", frame.size()}, {"buffer", chain_.writable_bytes},
                 {"rx_dropped", counters_.rx_dropped}});
    return RxResult::kDropped;
  }
  // No offloads negotiated: no flags, no GSO; one buffer per frame.
  virtio_net_hdr hdr{};
  hdr.num_buffers = 1;
  CopyToIov(chain_.writable, 0, &hdr, kHdrBytes);
  CopyToIov(chain_.writable, kHdrBytes, frame.data(), frame.size());
  rx.push(chain_.head, uint32_t(kHdrBytes + frame.size()));
  ++counters_.rx_frames;
  counters_.rx_bytes += frame.size();
  return RxResult::kDelivered;
}

}  // namespace ftvm::vmm
