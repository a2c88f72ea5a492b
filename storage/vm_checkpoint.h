// A running VM's whole state as a DR checkpoint (storage/dr_checkpoint.h), and a new
// VM continued from one (ftvm dr-start --from-checkpoint). The state is the epoch
// checkpoint's (vmm/checkpoint.h: vCPU, devices, memory) with every page of RAM,
// wrapped in a storage.DrCheckpoint that carries the state-format version and what
// the restoring VM must match.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "vmm/machine.h"

namespace ftvm::storage {

// The VM's state copied at a boundary, turned into a checkpoint's bytes later, off
// the vCPU thread. The pause costs a copy of the RAM pages ever written into a
// buffer kept from one capture to the next (fresh memory costs a page fault per
// page here, tens of microseconds each on a nested host, which the reused buffer
// pays only once); the protobuf is built by serialize().
class VmStateCapture {
 public:
  struct Stats {
    uint64_t pages = 0;    // RAM pages carried
    uint64_t find_ns = 0;  // finding them (the memfd's data extents)
    uint64_t copy_ns = 0;  // vCPU, devices and pages copied
  };
  // At a boundary (vCPU thread). `disk_seq`: the disk-write stream's position now.
  Stats capture(vmm::Machine& m, uint64_t disk_seq);
  // Any thread, after capture(): the serialized storage.DrCheckpoint (its
  // `checkpoint` a vmm.snapshot.Checkpoint as vmm::CaptureCheckpoint makes them).
  std::string serialize() const;

 private:
  uint64_t disk_seq_ = 0;
  uint64_t position_ = 0;
  uint64_t guest_clock_ns_ = 0;
  uint64_t memory_bytes_ = 0;
  std::string app_;
  std::string backend_;
  std::vector<uint8_t> native_;
  std::string devices_;             // a serialized vmm.snapshot.Devices
  std::vector<uint64_t> pages_;     // page numbers, ascending
  std::vector<uint8_t> data_;       // their contents, in that order
};

// capture() and serialize() at once (tests).
std::string CaptureVmState(vmm::Machine& m, uint64_t disk_seq);

// What a checkpoint says about itself, checked against the VM that would continue it.
struct VmStateInfo {
  uint64_t disk_seq = 0;
  uint64_t memory_bytes = 0;
  uint64_t position = 0;
  uint64_t guest_clock_ns = 0;
  std::string app;
};
// Parses and checks `raw` (format version, RAM size, app, backend) against `m`
// without changing it. Throws ftvm::Error naming the mismatch.
VmStateInfo CheckVmState(vmm::Machine& m, std::span<const uint8_t> raw);

// Loads `raw` into `m` (built in replay mode, not yet run: its NIC without a tap):
// memory, devices, vCPU; then runs `before_live` (dr-start rolls the disk back
// there: after everything that could refuse the state, before the VM can touch the
// disk) and makes the VM live: the guest clock continuing from the capture, the NIC
// on `tap`. Then m.run() continues the guest where it was. Throws ftvm::Error.
void ResumeVmState(vmm::Machine& m, std::span<const uint8_t> raw, const std::string& tap,
                   const std::function<void()>& before_live);

}  // namespace ftvm::storage
