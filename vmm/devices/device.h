// The one interface every device model implements.
//
// A device owns one 4 KiB MMIO slot (see vmm/abi/ftvm_abi.h) and, optionally, port
// numbers for ring-0 paths. All calls happen on the vCPU thread, at a VM exit, so the
// guest-visible effects of a device happen at a well-defined position in the guest's
// instruction stream (what record/replay needs). Host-side readiness (a tap with
// packets, an expired timerfd) is noticed by the machine's event thread, which only
// wakes the vCPU thread; the device then does its work in poll().
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace ftvm::vmm {

namespace snapshot {
class Device;  // vmm/snapshot.proto
}

// Where devices raise interrupt lines (implemented by the interrupt controller).
class InterruptSink {
 public:
  virtual ~InterruptSink() = default;
  virtual void raise(unsigned line) = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual std::string_view name() const = 0;

  // MMIO access at `offset` inside the device's slot; size is 1, 2, 4 or 8.
  // Reads of undefined registers return 0; writes to them are ignored (and logged
  // at debug level), as hardware does.
  virtual uint64_t mmio_read(uint64_t offset, unsigned size) = 0;
  virtual void mmio_write(uint64_t offset, unsigned size, uint64_t value) = 0;

  // Port I/O for ring-0 paths. Only called for ports listed in ports().
  virtual std::vector<uint16_t> ports() const { return {}; }
  virtual uint32_t port_read(uint16_t /*port*/, unsigned /*size*/) { return 0xffffffffu; }
  virtual void port_write(uint16_t /*port*/, unsigned /*size*/, uint32_t /*value*/) {}

  // Host file descriptors whose readiness should wake the vCPU thread, and whether
  // the device wants to hear about them now (a NIC with no receive buffers does not,
  // so a full tap never spins the event thread).
  virtual std::vector<int> host_fds() const { return {}; }
  virtual bool wants_host_events() const { return true; }

  // One of host_fds() became ready since the last poll(): lets a device skip host
  // system calls on exits where nothing can have arrived.
  virtual void host_ready() {}

  // Called on the vCPU thread after every exit and whenever one of host_fds() became
  // ready: move data between host and guest, raise interrupts.
  virtual void poll() {}

  // Guest-visible state, for checkpoints and verification digests. Returns false
  // for a device that has none (the clock and RNG only pass inputs through).
  // restore() throws ftvm::Error when `in` holds another device's state.
  virtual bool save(snapshot::Device& /*out*/) const { return false; }
  virtual void restore(const snapshot::Device& /*in*/) {}

  // Back to the power-on state (a guest reset: Machine::reset_guest). Host
  // resources (files, taps) stay; what the guest set up is forgotten.
  virtual void reset() {}
};

}  // namespace ftvm::vmm
