// Synchronous DR (`--dr-sync`): a disk write (or flush) is reported done to the
// guest only once the DR replica holds it durably. Asynchronous mirroring loses the
// writes the replica had not yet made durable when the source's host died; an
// application that acknowledges work only after its disk write completes (the mail
// store's journal) would then have acknowledged data the replica lacks. With this,
// whatever the guest was told is on disk is on the replica.
//
// It is the output rule of a protected primary (vmm/devices/device_io.h) applied to
// the mirror: the virtio-blk device takes a mark for each completion that changes the
// disk; the mark is the mirror's sequence number of that write (the device tells the
// mirror about a write before it takes the mark), and the completion is reported
// when the replica's durable acknowledgement covers it. The mirror's acknowledgement
// path wakes the vCPU (Machine::notify_host_event) so the held reports go at once.
//
// A lost replica must not hang the VM for ever: when a completion has waited
// `timeout`, the gate goes on asynchronously (a loud warning, event
// dr.sync_degraded): availability over the guarantee, as a lone primary does when
// its secondary dies. It goes back to synchronous (dr.sync_resumed) once the replica
// is streaming again and durably holds every write.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

#include "common/clock.h"
#include "storage/disk_mirror.h"
#include "vmm/devices/device_io.h"

namespace ftvm::storage {

class SyncDrGate final : public vmm::DeviceIo {
 public:
  // `wake` makes the VM look at its held disk reports again (thread-safe).
  SyncDrGate(DiskMirror& mirror, std::chrono::nanoseconds timeout, Clock& clock, std::function<void()> wake);
  ~SyncDrGate() override;
  SyncDrGate(const SyncDrGate&) = delete;
  SyncDrGate& operator=(const SyncDrGate&) = delete;

  // The mirror's durable point advanced (its on_durable callback; any thread).
  void durable_advanced();
  bool degraded() const { return degraded_.load(std::memory_order_acquire); }
  uint64_t held_reports() const { return held_.load(std::memory_order_relaxed); }

  // vmm::DeviceIo: live pass-through, except for the disk's completions.
  bool replaying() const override { return false; }
  uint64_t input_value(vmm::InputKind, uint64_t live) override { return live; }
  bool input_bytes(vmm::InputKind, std::span<uint8_t> out, RandomSource& live) override { return live.fill(out); }
  void timer_expired() override {}
  void frame_received(std::span<const uint8_t>) override {}
  int disk_request_done(uint16_t, int host_error) override { return host_error; }
  void disk_batch_done(uint16_t, uint16_t) override {}
  uint64_t output_mark(vmm::OutputStream stream, uint64_t stream_hash) override;
  bool output_released(uint64_t mark) override;
  bool transmit_frame(std::span<const iovec>, uint64_t) override { return true; }

 private:
  void Watchdog();

  DiskMirror& mirror_;
  const std::chrono::nanoseconds timeout_;
  Clock& clock_;
  std::function<void()> wake_;
  std::atomic<bool> degraded_{false};
  std::atomic<uint64_t> waiting_since_ns_{0};  // the oldest held report's wait (0: none held)
  std::atomic<uint64_t> held_{0};              // reports that had to wait, in all
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread watchdog_;
};

}  // namespace ftvm::storage
