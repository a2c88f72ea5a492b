// `ftvm record`: run a VM like `ftvm run` while logging every nondeterministic input
// to an event log that `ftvm replay` (or a secondary) can reproduce exactly.
#include <cstdio>
#include <iostream>

#include "common/clock.h"
#include "common/error.h"
#include "eventlog/writer.h"
#include "primary/recorder.h"
#include "tools/ftvm/commands.h"
#include "tools/ftvm/vm_runner.h"
#include "vmm/state_digest.h"

namespace ftvm::cli {
namespace po = boost::program_options;

int RecordMain(int argc, char** argv) {
  BlockStopSignals();
  VmOptions vm;
  primary::RecorderOptions rec;
  std::string log_path;
  bool overwrite = false;
  uint64_t verify_ms = rec.verify_interval_ns / 1000000;
  uint64_t checkpoint_us = rec.checkpoint_after_ns / 1000;
  po::options_description desc("ftvm record options");
  desc.add_options()
      ("help,h", "show this help")
      ("log", po::value(&log_path)->required(), "event log to write (must not exist)")
      ("overwrite", po::bool_switch(&overwrite), "replace an existing log")
      ("verify-interval-ms", po::value(&verify_ms)->default_value(verify_ms),
       "write a state digest (Verify record) this often")
      ("checkpoint-after-us", po::value(&checkpoint_us)->default_value(checkpoint_us),
       "take an epoch checkpoint when input waited this long for a guest exit")
      ("output-checks", po::bool_switch(&rec.output_checks),
       "log the hash of every frame sent and disk write, for replay to check one by one");
  desc.add(vm.describe());
  if (auto code = ParseCommandLine(argc, argv, desc, "record",
                                   "usage: ftvm record --log FILE --guest IMAGE --app NAME [options]\n"))
    return *code;
  if (std::string bad = vm.apply(); !bad.empty()) {
    std::cerr << "ftvm record: " << bad << "\n";
    return kExitUsage;
  }
  if (verify_ms == 0 || checkpoint_us == 0) {
    std::cerr << "ftvm record: --verify-interval-ms and --checkpoint-after-us must be positive\n";
    return kExitUsage;
  }
  rec.verify_interval_ns = verify_ms * 1000000;
  rec.checkpoint_after_ns = checkpoint_us * 1000;
  vm.config.mode = vmm::ExecutionMode::kRecord;
  try {
    auto clock = MakeSystemClock();
    auto random = MakeSystemRandom();
    vmm::Machine machine(vm.config, *clock, *random);
    primary::Recorder recorder(machine, rec);
    eventlog::WriterOptions wo;
    wo.overwrite = overwrite;
    eventlog::LogWriter writer = eventlog::LogWriter::Create(log_path, recorder.header(), wo);
    recorder.attach(&writer);
    machine.set_hooks(&recorder);
    int code = RunUntilDone(machine);
    const primary::RecorderStats& s = recorder.stats();
    const double seconds = double(machine.stats().run_ns) / 1e9;
    std::fprintf(stderr,
                 "recorded %llu records, %llu bytes (%.3f Mbit/s over %.2f s) to %s\n"
                 "  positions %llu, interrupts %llu, clock reads %llu, frames %llu, checkpoints %llu, "
                 "verifications %llu, output checks %llu\n",
                 static_cast<unsigned long long>(s.records), static_cast<unsigned long long>(s.log_bytes),
                 seconds > 0 ? double(s.log_bytes) * 8 / seconds / 1e6 : 0.0, seconds, log_path.c_str(),
                 static_cast<unsigned long long>(s.final_position), static_cast<unsigned long long>(s.interrupts),
                 static_cast<unsigned long long>(s.clock_reads), static_cast<unsigned long long>(s.frames),
                 static_cast<unsigned long long>(s.checkpoints), static_cast<unsigned long long>(s.verifications),
                 static_cast<unsigned long long>(s.output_checks));
    if (recorder.final_digest()) std::fprintf(stderr, "final digest %s\n", vmm::DigestHex(*recorder.final_digest()).c_str());
    if (!recorder.error().empty()) {
      std::cerr << "ftvm record: recording stopped: " << recorder.error() << "\n";
      return kExitVmmError;
    }
    return code < 0 ? 0 : code;
  } catch (const Error& e) {
    std::cerr << "ftvm record: " << e.what() << "\n";
    return kExitVmmError;
  } catch (const std::exception& e) {
    std::cerr << "ftvm record: internal error: " << e.what() << "\n";
    return kExitVmmError;
  }
}

}  // namespace ftvm::cli
