// Where record/replay plugs into the machine.
//
// A Machine runs live unless it is given ExecutionHooks: the recorder (primary/)
// logs every nondeterministic input with its position, the replayer (secondary/)
// supplies them from the log. Inputs that devices hand the guest pass through the
// DeviceIo half; the run-loop half sees exits, boundaries and injections. Every call
// happens on the vCPU thread.
//
// Positions: the count of guest-caused exits so far (Machine::position()). An
// event logged at position P took effect during or right after exit P; the replica
// reproduces it at the same point because the guest is deterministic between the
// exits it causes itself, and interrupts are only ever injected at exact
// boundaries (see ExitHandler in cpu_backend.h) or at an epoch checkpoint.
#pragma once

#include <cstdint>

#include "vmm/devices/device_io.h"

namespace ftvm::vmm {

class Machine;

enum class ExecutionMode {
  kLive,    // inputs from the host, interrupts whenever they arrive
  kRecord,  // inputs from the host, logged; interrupts only at exact boundaries
  kReplay,  // inputs from the log; no host I/O; outputs produced, not released
};

class ExecutionHooks : public DeviceIo {
 public:
  // The guest is about to run from position 0 (Machine::run, before the backend).
  virtual void started(Machine& m) = 0;
  // After every exit, once the machine has serviced its devices (for a guest-caused
  // exit; a kick services nothing when recording or replaying).
  virtual void after_exit(Machine& m, bool guest_caused) = 0;
  // Replaying: apply the logged device events (timer expiries, frames) that took
  // effect at the current position, in log order. `one`: stop after the first (a
  // blocking WAIT re-checks for a deliverable interrupt after each). Returns
  // whether it applied any.
  virtual bool apply_device_events(Machine& m, bool one) = 0;
  // The vCPU is at a boundary (ExitHandler::boundary). Returns true when the hooks
  // made it exact: the recorder took an epoch checkpoint here, or the replayer
  // applied one; the machine then services its devices as after an exit.
  virtual bool boundary(Machine& m, bool exact) = 0;
  virtual void vector_injected(Machine& m, uint8_t vector) = 0;
  // The guest is about to be reset in place (Machine::reset_guest), at the current
  // position: a recorder logs it; a replayer makes the reset happen when the log
  // says so. (The pages it rewrites reach dirty tracking through GuestMemory's
  // note_write.) No-op by default.
  virtual void guest_reset(Machine& /*m*/) {}
  // Recording: the guest idled at the current exit (FTVM_IRQ_WAIT, _WAIT_IF, HLT) and
  // the machine ends that wait with no interrupt deliverable, because a
  // run_at_boundary task waits (an idle guest may not exit for a timer period, tens
  // of ms): a recorder logs it, so that the replica's wait ends there too. No-op by
  // default.
  virtual void wait_cut(Machine& /*m*/) {}
  // The backend stopped for good. `exact`: at a deterministic point. `completed`:
  // it stopped because the VM powered off or was asked to (not an error).
  virtual void finished(Machine& m, bool exact, bool completed) = 0;
};

}  // namespace ftvm::vmm
