// Entry points of the `ftvm` subcommands. Each takes argv with argv[0] = the
// subcommand name and returns the process exit code; none throws.
#pragma once

#include <memory>

namespace ftvm::cli {

class CommandOptions;  // config.h

constexpr int kExitUsage = 2;      // bad command line
constexpr int kExitVmmError = 125; // the VMM could not run the guest
constexpr int kExitFailoverDrill = 6;  // a VMM a failover drill ended (as if its host died)

int RunMain(int argc, char** argv);
int RecordMain(int argc, char** argv);
int ReplayMain(int argc, char** argv);
int LogMain(int argc, char** argv);
int PrimaryMain(int argc, char** argv);
int SecondaryMain(int argc, char** argv);
// A running VM moves to this host: a secondary that takes it over once caught up.
int MigrateMain(int argc, char** argv);
int DrillMain(int argc, char** argv);
int ProtectMain(int argc, char** argv);
// The DR target, a VM started from it, and a live disk move (cmd_storage.cc).
int DrReplicaMain(int argc, char** argv);
int DiskServerMain(int argc, char** argv);
int DrStartMain(int argc, char** argv);
int MoveDiskMain(int argc, char** argv);
// The image server a VM can start from before its image is copied (cmd_image.cc).
int ServeImageMain(int argc, char** argv);
// HA restart of unprotected VMs across a cluster of hosts (ha_agent.cc).
int HaAgentMain(int argc, char** argv);
// Operating it: `ftvm status` (operations.cc), `ftvm config check` (config.cc).
int StatusMain(int argc, char** argv);
// `ftvm failover-test` and `ftvm switchover` (operations.cc): the dashboard's buttons.
int FailoverTestMain(int argc, char** argv);
int SwitchoverMain(int argc, char** argv);
int ConfigMain(int argc, char** argv);

// The options of the commands a configuration file configures (config.h).
std::unique_ptr<CommandOptions> MakeRunOptions();
std::unique_ptr<CommandOptions> MakePrimaryOptions();
std::unique_ptr<CommandOptions> MakeSecondaryOptions();
std::unique_ptr<CommandOptions> MakeProtectOptions();

}  // namespace ftvm::cli
