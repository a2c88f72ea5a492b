// `ftvm replay`: run a replica of a recorded VM from its event log and say whether
// it went through the same states: "identical", or where it diverged.
//
// Exit codes: 0 identical, 1 diverged, 3 the log stops early (cut short), 125 the
// log is unusable or the replica cannot be built, 2 bad command line.
#include <cstdio>
#include <iostream>

#include "common/clock.h"
#include "common/error.h"
#include "eventlog/reader.h"
#include "primary/log_header.h"
#include "secondary/replayer.h"
#include "tools/ftvm/commands.h"
#include "tools/ftvm/vm_runner.h"
#include "vmm/state_digest.h"

namespace ftvm::cli {
namespace po = boost::program_options;

namespace {
constexpr int kExitDiverged = 1;
constexpr int kExitIncomplete = 3;
}  // namespace

int ReplayMain(int argc, char** argv) {
  BlockStopSignals();
  std::string log_path, guest, disk, console;
  secondary::ReplayOptions opts;
  po::options_description desc("ftvm replay options");
  desc.add_options()
      ("help,h", "show this help")
      ("log", po::value(&log_path)->required(), "event log written by ftvm record")
      ("verify", po::bool_switch(&opts.verify), "compare the state digest at every Verify record")
      ("guest", po::value(&guest), "guest image (default: the path in the log)")
      ("disk", po::value(&disk), "the replica's copy of the VM's disk as it was when recording began")
      ("console", po::value(&console), "write the replica's console output to FILE instead of stdout");
  if (auto code = ParseCommandLine(argc, argv, desc, "replay",
                                   "usage: ftvm replay --log FILE [--verify] [--disk FILE] [options]\n"))
    return *code;
  try {
    eventlog::LogReader reader = eventlog::LogReader::OpenFile(log_path);
    vmm::VmConfig config = primary::ReplicaConfig(reader.header(), guest, disk, console);
    auto clock = MakeSystemClock();
    auto random = MakeSystemRandom();
    vmm::Machine machine(config, *clock, *random);
    secondary::FileSource source(reader);
    secondary::Replayer replayer(machine, source, opts);
    machine.set_hooks(&replayer);
    RunUntilDone(machine);
    const secondary::ReplayStats& s = replayer.stats();
    std::fprintf(stderr, "replayed %llu records to position %llu in %.2f s: %llu interrupts, %llu frames, "
                 "%llu checkpoints, %llu verifications, %llu output checks\n",
                 static_cast<unsigned long long>(s.records), static_cast<unsigned long long>(s.final_position),
                 double(machine.stats().run_ns) / 1e9, static_cast<unsigned long long>(s.interrupts),
                 static_cast<unsigned long long>(s.frames), static_cast<unsigned long long>(s.checkpoints),
                 static_cast<unsigned long long>(s.verifications), static_cast<unsigned long long>(s.output_checks));
    if (replayer.final_digest()) std::printf("final digest %s\n", vmm::DigestHex(*replayer.final_digest()).c_str());
    std::printf("%s\n", replayer.message().c_str());
    std::fflush(stdout);
    switch (replayer.outcome()) {
      case secondary::ReplayOutcome::kIdentical: return 0;
      case secondary::ReplayOutcome::kDiverged: return kExitDiverged;
      case secondary::ReplayOutcome::kIncomplete: return kExitIncomplete;
      case secondary::ReplayOutcome::kBadLog: return kExitVmmError;
      case secondary::ReplayOutcome::kWentLive: return kExitVmmError;  // no go-live handler here
    }
    return kExitVmmError;
  } catch (const Error& e) {
    std::cerr << "ftvm replay: " << e.what() << "\n";
    return kExitVmmError;
  } catch (const std::exception& e) {
    std::cerr << "ftvm replay: internal error: " << e.what() << "\n";
    return kExitVmmError;
  }
}

}  // namespace ftvm::cli
