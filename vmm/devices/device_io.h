// The nondeterminism boundary as device models see it.
//
// Everything a device hands the guest that depends on the host (a clock value, a
// WAIT result, random bytes, a received frame, a timer expiry, a failed disk
// request) passes through DeviceIo, so one implementation can pass it through
// (live), log it (recording, on the primary) or supply it from the log (replaying,
// on the secondary). The machine implements it; devices call it on the vCPU thread.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>

#include "common/clock.h"

namespace ftvm::vmm {

enum class InputKind : uint8_t {
  kClockMonotonic,  // MONO_NS: ns since the VM started
  kClockWall,       // WALL_NS: ns since the Unix epoch
  kIrqWait,  // the value an interrupt-controller WAIT read returned
  kRandom,   // random bytes
};

// What leaves the VM, each a stream with a running hash (vmm/output_hash.h).
enum class OutputStream : uint8_t {
  kFrames = 1,      // frames the guest transmitted
  kDiskWrites = 2,  // sectors the guest wrote, with where
};

class DeviceIo {
 public:
  virtual ~DeviceIo() = default;
  // Replaying: devices must not touch the host (no tap, no timerfd); the machine
  // applies logged timer expiries and frames through the devices' replay entries.
  virtual bool replaying() const = 0;

  // A register value that depends on the host. `live` is the host's value; the
  // result is what the guest sees (the logged one when replaying).
  virtual uint64_t input_value(InputKind kind, uint64_t live) = 0;
  // Random bytes into `out`. Returns false when the source failed.
  virtual bool input_bytes(InputKind kind, std::span<uint8_t> out, RandomSource& live) = 0;

  // Asynchronous inputs that just changed guest-visible state (live/recording).
  virtual void timer_expired() = 0;
  virtual void frame_received(std::span<const uint8_t> frame) = 0;

  // A disk request at descriptor `head` finished with host errno `host_error` (0:
  // success). Returns the errno to report to the guest: the primary's outcome
  // when replaying.
  virtual int disk_request_done(uint16_t head, int host_error) = 0;
  // `count` finished disk requests of `queue` were reported to the guest now.
  virtual void disk_batch_done(uint16_t queue, uint16_t count) = 0;

  // The output rule (primary side). A device about to make an effect visible
  // outside the VM, or to tell the guest a disk write is done, takes a mark; the
  // effect may happen once the mark is released: the secondary has acknowledged the
  // log up to it. Without a secondary every mark is released at once; a replica
  // never releases (its completions come from the log). `stream_hash` is the
  // output stream's running hash with this output in it (the strict rule has the
  // replica compare it).
  virtual uint64_t output_mark(OutputStream stream, uint64_t stream_hash) = 0;
  virtual bool output_released(uint64_t mark) = 0;
  // A frame the guest transmits (with or without a tap to send it on). True: the
  // device writes it to its tap now, if it has one. False: the hooks took it (held
  // until released; a replica only checks it).
  virtual bool transmit_frame(std::span<const iovec> frame, uint64_t stream_hash) = 0;
};

// Passes host values through: a VM that is neither recorded nor replayed.
class LiveDeviceIo final : public DeviceIo {
 public:
  bool replaying() const override { return false; }
  uint64_t input_value(InputKind, uint64_t live) override { return live; }
  bool input_bytes(InputKind, std::span<uint8_t> out, RandomSource& live) override { return live.fill(out); }
  void timer_expired() override {}
  void frame_received(std::span<const uint8_t>) override {}
  int disk_request_done(uint16_t, int host_error) override { return host_error; }
  void disk_batch_done(uint16_t, uint16_t) override {}
  uint64_t output_mark(OutputStream, uint64_t) override { return 0; }
  bool output_released(uint64_t) override { return true; }
  bool transmit_frame(std::span<const iovec>, uint64_t) override { return true; }
};

}  // namespace ftvm::vmm
