// What `ftvm run`, `ftvm primary` and `ftvm dr-start` add to a VM for its disk: a
// DR mirror (--dr-target), and the disk's part of the control socket (`ftvm
// move-disk`, the disk and DR rows of `ftvm status`). Built before the VM runs, torn
// down after.
#pragma once

#include <boost/program_options.hpp>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "common/clock.h"
#include "control/control.h"
#include "tools/ftvm/operations.h"
#include "storage/disk_mirror.h"
#include "vmm/health_monitor.h"
#include "vmm/machine.h"

namespace ftvm::cli {

struct StorageCliOptions {
  std::string dr_target;     // channel address of an ftvm dr-replica
  double dr_queue_mib = 32;  // the mirror's queue bound
  double dr_report_s = 1;    // dr.lag log lines
  boost::program_options::options_description describe();
  // "" or what is wrong with the values.
  std::string check() const;
};

class VmStorage {
 public:
  // Attaches the mirror (if asked for). Before machine.run(). Throws ftvm::Error.
  VmStorage(const StorageCliOptions& options, vmm::Machine& machine, Clock& clock);
  ~VmStorage();
  // Answers move-disk and adds the disk's part to the status on `control`, which
  // must be destroyed before this.
  void serve(ControlEndpoint& control);
  // A last dr.lag line (the VM has stopped).
  void final_report();

 private:
  control::Reply MoveDisk(const control::Request& req, control::Responder& out);
  void Status(control::StatusReply& status);

  StorageCliOptions options_;
  vmm::Machine& machine_;
  Clock& clock_;
  storage::DiskTaps taps_;
  std::unique_ptr<storage::DiskMirror> dr_;
  std::mutex move_mu_;  // one move at a time
};

// Runs a VM (no recording) with its mirror and control socket until it powers off or
// a signal; returns the exit code of `ftvm <cmd>` (errors on stderr). cmd_run.cc.
// `health`: the guest health monitor's settings (off by default).
int RunVm(const std::string& cmd, const vmm::VmConfig& config, const StorageCliOptions& storage_options,
          const OperatorOptions& operator_options, const vmm::HealthOptions& health = {});

}  // namespace ftvm::cli
