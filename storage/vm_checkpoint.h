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

#include "vmm/machine.h"

namespace ftvm::storage {

// At a boundary (vCPU thread): the serialized storage.DrCheckpoint, uncompressed.
// `disk_seq`: the disk-write stream's position now.
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
