// `ftvm run`: boot a guest-kit image and run it until it powers off or a signal.
#include <iostream>

#include "common/clock.h"
#include "common/error.h"
#include "tools/ftvm/commands.h"
#include "tools/ftvm/vm_runner.h"
#include "tools/ftvm/vm_storage.h"

namespace ftvm::cli {
namespace po = boost::program_options;

int RunVm(const std::string& cmd, const vmm::VmConfig& config, const StorageCliOptions& storage_options) {
  try {
    auto clock = MakeSystemClock();
    auto random = MakeSystemRandom();
    vmm::Machine machine(config, *clock, *random);
    VmStorage storage(storage_options, machine, *clock);
    int code = RunUntilDone(machine);
    storage.final_report();
    return code < 0 ? 0 : code;
  } catch (const Error& e) {
    std::cerr << "ftvm " << cmd << ": " << e.what() << "\n";
    return kExitVmmError;
  } catch (const std::exception& e) {
    std::cerr << "ftvm " << cmd << ": internal error: " << e.what() << "\n";
    return kExitVmmError;
  }
}

int RunMain(int argc, char** argv) {
  BlockStopSignals();
  VmOptions vm;
  StorageCliOptions st;
  po::options_description desc("ftvm run options");
  desc.add_options()("help,h", "show this help");
  desc.add(vm.describe());
  desc.add(st.describe());
  if (auto code = ParseCommandLine(argc, argv, desc, "run",
                                   "usage: ftvm run --guest IMAGE --app NAME [options]\n"))
    return *code;
  if (std::string bad = vm.apply() + st.check(); !bad.empty()) {
    std::cerr << "ftvm run: " << bad << "\n";
    return kExitUsage;
  }
  return RunVm("run", vm.config, st);
}

}  // namespace ftvm::cli
