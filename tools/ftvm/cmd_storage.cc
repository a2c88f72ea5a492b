// `ftvm dr-replica`, `ftvm dr-start` and `ftvm move-disk`: the DR target, starting a
// VM from it, and moving a running VM's disk.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "common/clock.h"
#include "common/error.h"
#include "control/control.h"
#include "storage/dr_replica.h"
#include "tools/ftvm/commands.h"
#include "tools/ftvm/vm_runner.h"
#include "tools/ftvm/vm_storage.h"

namespace ftvm::cli {
namespace po = boost::program_options;

int DrReplicaMain(int argc, char** argv) {
  BlockStopSignals();
  storage::ReplicaOptions opts;
  bool status = false;
  double sync_ms = double(opts.sync_interval.count()) / 1e6;
  po::options_description desc("ftvm dr-replica options");
  desc.add_options()
      ("help,h", "show this help")
      ("listen", po::value(&opts.listen), "channel address the source's --dr-target names (tcp:HOST:PORT, shm:/path.sock)")
      ("dir", po::value(&opts.dir)->required(), "directory for the replica's disk image (disk.img) and its state file")
      ("sync-ms", po::value(&sync_ms)->default_value(sync_ms), "fsync applied writes at least this often")
      ("status", po::bool_switch(&status), "print the replica's state file (recovery point, how far behind) and exit");
  if (auto code = ParseCommandLine(argc, argv, desc, "dr-replica",
                                   "usage: ftvm dr-replica --listen ADDR --dir DIR | --status --dir DIR\n"))
    return *code;
  try {
    if (status) {
      for (const auto& [k, v] : storage::ReadReplicaState(opts.dir)) std::cout << k << "=" << v << "\n";
      return 0;
    }
    if (opts.listen.empty()) {
      std::cerr << "ftvm dr-replica: --listen is required (or --status)\n";
      return kExitUsage;
    }
    if (!(sync_ms > 0)) {
      std::cerr << "ftvm dr-replica: --sync-ms must be positive\n";
      return kExitUsage;
    }
    opts.sync_interval = std::chrono::nanoseconds(int64_t(sync_ms * 1e6));
    auto clock = MakeSystemClock();
    storage::DrReplica replica(opts, *clock);
    std::fprintf(stderr, "dr-replica: listening on %s, keeping %s\n", replica.address().c_str(),
                 storage::DiskImagePath(opts.dir).c_str());
    return RunUntilDone([&] { return replica.run(); }, [&] { replica.stop(); });
  } catch (const Error& e) {
    std::cerr << "ftvm dr-replica: " << e.what() << "\n";
    return kExitVmmError;
  } catch (const std::exception& e) {
    std::cerr << "ftvm dr-replica: internal error: " << e.what() << "\n";
    return kExitVmmError;
  }
}

int DrStartMain(int argc, char** argv) {
  BlockStopSignals();
  VmOptions vm;
  StorageCliOptions st;
  OperatorOptions ops;
  std::string dir;
  bool force = false;
  po::options_description desc("ftvm dr-start options");
  desc.add_options()
      ("help,h", "show this help")
      ("dir", po::value(&dir)->required(), "the DR replica's directory (ftvm dr-replica --dir); stop the replica first")
      ("force", po::bool_switch(&force), "start even though the replica says its image is not crash-consistent");
  desc.add(vm.describe());
  desc.add(st.describe());
  desc.add(ops.describe());
  if (auto code = ParseCommandLine(argc, argv, desc, "dr-start",
                                   "usage: ftvm dr-start --dir DIR --guest IMAGE --app NAME [VM options]\n"))
    return *code;
  if (std::string bad = vm.apply() + st.check(); !bad.empty()) {
    std::cerr << "ftvm dr-start: " << bad << "\n";
    return kExitUsage;
  }
  if (!vm.config.disk.empty()) {
    std::cerr << "ftvm dr-start: --disk is the replica's image (" << storage::DiskImagePath(dir) << "); do not give one\n";
    return kExitUsage;
  }
  try {
    std::map<std::string, std::string> state = storage::ReadReplicaState(dir);
    const bool consistent = state["consistent"] == "yes";
    std::fprintf(stderr, "dr-start: replica holds the source's disk up to write %s (%s bytes written), recovery point %s ns "
                         "since the epoch, %s ms / %s bytes behind the source when last heard; %s\n",
                 state["durable_seq"].c_str(), state["durable_bytes"].c_str(), state["recovery_point_wall_ns"].c_str(),
                 state["behind_ms"].c_str(), state["behind_bytes"].c_str(),
                 consistent ? "crash-consistent" : "NOT crash-consistent (it was catching up)");
    if (!consistent && !force) {
      std::cerr << "ftvm dr-start: the replica's image is not crash-consistent (its source was catching up when it "
                   "stopped); --force starts it anyway\n";
      return kExitVmmError;
    }
    vm.config.disk = storage::DiskImagePath(dir);
  } catch (const Error& e) {
    std::cerr << "ftvm dr-start: " << e.what() << "\n";
    return kExitVmmError;
  }
  return RunVm("dr-start", vm.config, st, ops);
}

int MoveDiskMain(int argc, char** argv) {
  std::string control, to;
  bool keep_old = false;
  double rate_mib = 0;
  po::options_description desc("ftvm move-disk options");
  desc.add_options()
      ("help,h", "show this help")
      ("control", po::value(&control)->required(), "the VMM's control socket (its --control PATH)")
      ("to", po::value(&to)->required(), "the new image path (must not exist)")
      ("keep-old", po::bool_switch(&keep_old), "keep the old image after the switch (default: remove it)")
      ("rate-mib", po::value(&rate_mib)->default_value(rate_mib),
       "copy at most this many MiB/s, sparing the guest's own I/O (0: as fast as it goes)");
  if (auto code = ParseCommandLine(argc, argv, desc, "move-disk",
                                   "usage: ftvm move-disk --control PATH --to NEW_IMAGE [--keep-old]\n"))
    return *code;
  try {
    control::Request req;
    req.mutable_move_disk()->set_new_path(to);
    req.mutable_move_disk()->set_keep_old(keep_old);
    req.mutable_move_disk()->set_rate_mib(rate_mib);
    control::Reply r = control::Call(control, req, [](const std::string& line) {
      std::fprintf(stderr, "move-disk: %s\n", line.c_str());
    });
    if (!r.error().empty()) {
      std::cerr << "ftvm move-disk: " << r.error() << "\n";
      return 1;
    }
    const control::MoveDiskResult& m = r.move_disk();
    std::printf("moved %s to %s in %.2f s (%llu blocks copied, vCPU waited %.2f ms at the switch); old image %s\n",
                m.old_path().c_str(), m.new_path().c_str(), m.seconds(),
                static_cast<unsigned long long>(m.blocks_copied()), m.switch_ms(), m.old_removed() ? "removed" : "kept");
    return 0;
  } catch (const Error& e) {
    std::cerr << "ftvm move-disk: " << e.what() << "\n";
    return kExitVmmError;
  }
}

}  // namespace ftvm::cli
