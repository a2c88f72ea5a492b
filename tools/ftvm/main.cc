// The `ftvm` command: one binary, subcommands.
#include <cstring>
#include <iostream>

#include "tools/ftvm/commands.h"
#include "tools/ftvm/mail_client.h"

namespace {

void Usage(std::ostream& out) {
  out << "usage: ftvm <command> [options]\n"
         "commands:\n"
         "  run     boot a guest-kit image (ftvm run --help)\n"
         "  record  run a VM and log its nondeterministic inputs (ftvm record --help)\n"
         "  replay  replay a recorded VM and check it stays identical (ftvm replay --help)\n"
         "  log     inspect or recover an event log (ftvm log --help)\n"
         "  primary    run a protected VM, streaming its log to a secondary (ftvm primary --help)\n"
         "  protect    run a protected pair on this host, for demos (ftvm protect --help)\n"
         "  drill      pull the plug on a protected mail store and report (ftvm drill --help)\n"
         "  secondary  keep a replica of a primary's VM and take over when it dies (ftvm secondary --help)\n"
         "  migrate    move a running VM from its primary to this host, live (ftvm migrate --help)\n"
         "  dr-replica keep a crash-consistent copy of a VM's disk, fed by --dr-target (ftvm dr-replica --help)\n"
         "  dr-start   start a VM from a DR replica's disk (ftvm dr-start --help)\n"
         "  move-disk  move a running VM's disk image to a new path or another host (ftvm move-disk --help)\n"
         "  disk-server  hold a disk moved here and serve it to its VM (ftvm move-disk --to; ftvm disk-server --help)\n"
         "  serve-image  serve disk images a VM can start from before they are copied (ftvm serve-image --help)\n"
         "  ha-agent   restart a dead host's VMs on the others from their DR replicas (ftvm ha-agent --help)\n"
         "  status     a running VMM's role, protection, lag and events (ftvm status --help)\n"
         "  failover-test  a failover drill: the primary ends as if its host died (ftvm failover-test --help)\n"
         "  switchover a planned move of a protected VM to its secondary's host (ftvm switchover --help)\n"
         "  config     check a VM's configuration file: ftvm config check FILE\n"
         "  mail    talk to the mail-store guest (ftvm mail --help)\n"
         "  version\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    Usage(std::cerr);
    return ftvm::cli::kExitUsage;
  }
  const char* cmd = argv[1];
  if (std::strcmp(cmd, "run") == 0) return ftvm::cli::RunMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "record") == 0) return ftvm::cli::RecordMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "replay") == 0) return ftvm::cli::ReplayMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "primary") == 0) return ftvm::cli::PrimaryMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "protect") == 0) return ftvm::cli::ProtectMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "drill") == 0) return ftvm::cli::DrillMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "secondary") == 0) return ftvm::cli::SecondaryMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "migrate") == 0) return ftvm::cli::MigrateMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "dr-replica") == 0) return ftvm::cli::DrReplicaMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "dr-start") == 0) return ftvm::cli::DrStartMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "disk-server") == 0) return ftvm::cli::DiskServerMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "move-disk") == 0) return ftvm::cli::MoveDiskMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "serve-image") == 0) return ftvm::cli::ServeImageMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "ha-agent") == 0) return ftvm::cli::HaAgentMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "status") == 0) return ftvm::cli::StatusMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "failover-test") == 0) return ftvm::cli::FailoverTestMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "switchover") == 0) return ftvm::cli::SwitchoverMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "config") == 0) return ftvm::cli::ConfigMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "log") == 0) return ftvm::cli::LogMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "mail") == 0) return ftvm::MailMain(argc - 1, argv + 1);
  if (std::strcmp(cmd, "version") == 0) {
    std::cout << "ftvm 0.1.0\n";
    return 0;
  }
  if (std::strcmp(cmd, "help") == 0 || std::strcmp(cmd, "--help") == 0 || std::strcmp(cmd, "-h") == 0) {
    Usage(std::cout);
    return 0;
  }
  std::cerr << "ftvm: unknown command '" << cmd << "'\n";
  Usage(std::cerr);
  return ftvm::cli::kExitUsage;
}
