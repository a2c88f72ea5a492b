// What `ftvm run`, `ftvm record` and (later) the lockstep pair share: the VM options
// on the command line and running a Machine until it powers off or a signal
// (SIGINT/SIGTERM) stops it cleanly.
#pragma once

#include <boost/program_options.hpp>
#include <string>
#include <vector>

#include "vmm/machine.h"

namespace ftvm::cli {

// The options describing a VM (--guest, --app, --mem, --disk, --tap, ...), bound to
// `config`; `backend` and `args` are finished by ApplyVmOptions.
struct VmOptions {
  vmm::VmConfig config;
  std::string backend = "auto";
  std::vector<std::string> args;
  boost::program_options::options_description describe();
  // Copies backend/args into config; returns an error line for a bad --backend.
  std::string apply();
};

// Runs `machine` with SIGINT/SIGTERM blocked everywhere but one thread, which stops
// the machine. Returns Machine::run's result (throws what it throws).
int RunUntilDone(vmm::Machine& machine);

}  // namespace ftvm::cli
