// `ftvm run`: boot a guest-kit image and run it until it powers off or a signal.
#include <iostream>

#include "common/clock.h"
#include "common/error.h"
#include "tools/ftvm/commands.h"
#include "tools/ftvm/config.h"
#include "tools/ftvm/vm_runner.h"
#include "tools/ftvm/vm_storage.h"

namespace ftvm::cli {
namespace po = boost::program_options;

int RunVm(const std::string& cmd, const vmm::VmConfig& config, const StorageCliOptions& storage_options,
          const OperatorOptions& operator_options, const vmm::HealthOptions& health_options) {
  try {
    operator_options.configure_logging(cmd, config.app);
    auto clock = MakeSystemClock();
    auto random = MakeSystemRandom();
    vmm::Machine machine(config, *clock, *random);
    VmStorage storage(storage_options, machine, *clock);
    ControlEndpoint control(operator_options, cmd, operator_options.vm_or(config.app));
    storage.serve(control);
    // A VM that runs alone is live and unprotected.
    control.add_status([](control::StatusReply& s) { s.set_state("unprotected"); });
    vmm::HealthMonitor health(machine, health_options);
    control.add_status([&health](control::StatusReply& s) { FillHealthStatus(health.status(), s); });
    control.start();
    int code = RunUntilDone(machine);
    health.stop();
    storage.final_report();
    if (health.restart_requested()) {
      PrintSummary("%s: the guest hung; exiting with %d for a restart\n", cmd.c_str(), vmm::kExitGuestHung);
      return vmm::kExitGuestHung;
    }
    return code < 0 ? 0 : code;
  } catch (const Error& e) {
    std::cerr << "ftvm " << cmd << ": " << e.what() << "\n";
    return kExitVmmError;
  } catch (const std::exception& e) {
    std::cerr << "ftvm " << cmd << ": internal error: " << e.what() << "\n";
    return kExitVmmError;
  }
}

namespace {

struct RunOptions final : CommandOptions {
  VmOptions vm;
  StorageCliOptions storage;
  OperatorOptions ops;
  HealthCliOptions health;
  po::options_description describe() override {
    po::options_description desc("ftvm run options");
    desc.add_options()("help,h", "show this help");
    desc.add(vm.describe());
    desc.add(storage.describe());
    desc.add(health.describe());
    desc.add(ops.describe());
    return desc;
  }
  std::string finish() override { return vm.apply() + storage.check() + health.apply(); }
};

}  // namespace

std::unique_ptr<CommandOptions> MakeRunOptions() { return std::make_unique<RunOptions>(); }

int RunMain(int argc, char** argv) {
  BlockStopSignals();
  RunOptions o;
  if (auto code = ParseCommand(argc, argv, o, "run", "usage: ftvm run --guest IMAGE --app NAME [options]\n"))
    return *code;
  return RunVm("run", o.vm.config, o.storage, o.ops, o.health.options);
}

}  // namespace ftvm::cli
