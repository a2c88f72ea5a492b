// What the `ftvm` subcommands share: parsing the command line, the VM options
// on it, and running a Machine until it powers off or a signal
// (SIGINT/SIGTERM) stops it cleanly.
#pragma once

#include <boost/program_options.hpp>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "vmm/health_monitor.h"
#include "vmm/machine.h"

namespace ftvm::control {
class StatusReply;
}

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

// --health-grace-ms and --health-action (vmm/health_monitor.h), for the commands
// that run a VM themselves (run, primary).
struct HealthCliOptions {
  std::string grace_ms;  // text, so that "-5" is named as what it is, not wrapped around
  std::string action = "reset";
  vmm::HealthOptions options;  // the result, after apply()
  boost::program_options::options_description describe();
  // Fills `options`; returns an error line naming the bad value, or "".
  std::string apply();
};
// The health rows of `ftvm status`.
void FillHealthStatus(const vmm::HealthStatus& health, control::StatusReply& status);

// Parses a subcommand's argv against `desc`. Returns nothing when the command
// should go on; otherwise its exit code: 0 after printing `usage` and the options
// for --help, kExitUsage after naming the bad option on stderr. With
// `config_command` (one of ConfiguredCommands(), config.h), --config FILE is
// accepted too, and the file's options for that command fill in what the command
// line does not give.
std::optional<int> ParseCommandLine(int argc, char** argv, const boost::program_options::options_description& desc,
                                    const std::string& cmd, const std::string& usage,
                                    const std::string& config_command = "");

// printf to stderr for a command's summary lines: as they are, or as JSON log lines
// under --log-json (log::summary).
[[gnu::format(printf, 1, 2)]] void PrintSummary(const char* format, ...);

// Blocks SIGINT and SIGTERM in the calling thread and every thread it creates from
// now on. Call first thing in a command that will run a VM: a thread started before
// (a channel's, a log streamer's) would otherwise take the signal and kill the
// process outright, which its peer would rightly treat as a crash.
void BlockStopSignals();

// Runs `run` with SIGINT/SIGTERM blocked everywhere but one thread, which calls
// `stop`. Returns run's result (throws what it throws).
int RunUntilDone(const std::function<int()>& run, const std::function<void()>& stop);
inline int RunUntilDone(vmm::Machine& machine) {
  return RunUntilDone([&] { return machine.run(); }, [&] { machine.stop(); });
}

}  // namespace ftvm::cli
