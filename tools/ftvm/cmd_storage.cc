// `ftvm dr-replica` (also `ftvm disk-server`), `ftvm dr-start` and `ftvm move-disk`:
// the DR target, which also serves a disk moved to its host; starting a VM from it;
// moving a running VM's disk.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "control/control.h"
#include "storage/dr_checkpoint.h"
#include "storage/dr_replica.h"
#include "storage/vm_checkpoint.h"
#include "tools/ftvm/commands.h"
#include "tools/ftvm/vm_runner.h"
#include "tools/ftvm/vm_storage.h"

namespace ftvm::cli {
namespace po = boost::program_options;

namespace {

// `ftvm dr-replica` and `ftvm disk-server` are one process (storage/dr_replica.h):
// `cmd` names it in messages.
int ReplicaMain(const std::string& cmd, int argc, char** argv) {
  BlockStopSignals();
  storage::ReplicaOptions opts;
  bool status = false;
  double sync_ms = double(opts.sync_interval.count()) / 1e6;
  po::options_description desc("ftvm " + cmd + " options");
  desc.add_options()
      ("help,h", "show this help")
      ("listen", po::value(&opts.listen),
       "channel address the source's --dr-target or ftvm move-disk --to names (tcp:HOST:PORT, shm:/path.sock)")
      ("dir", po::value(&opts.dir)->required(), "directory for the replica's disk image (disk.img) and its state file")
      ("sync-ms", po::value(&sync_ms)->default_value(sync_ms), "fsync applied writes at least this often")
      ("status", po::bool_switch(&status), "print the replica's state file (recovery point, how far behind) and exit");
  if (auto code = ParseCommandLine(argc, argv, desc, cmd,
                                   "usage: ftvm " + cmd + " --listen ADDR --dir DIR | --status --dir DIR\n"))
    return *code;
  try {
    if (status) {
      std::map<std::string, std::string> state = storage::ReadReplicaState(opts.dir);
      // The checkpoint's age as of now (the state file has its source time).
      if (state["checkpoint"] == "yes" && !state["checkpoint_wall_ns"].empty()) {
        auto clock = MakeSystemClock();
        const double age = (double(clock->wall_ns()) - std::stod(state["checkpoint_wall_ns"])) / 1e9;
        char text[32];
        std::snprintf(text, sizeof text, "%.1f", age);
        state["checkpoint_age_s"] = text;
      }
      for (const auto& [k, v] : state) std::cout << k << "=" << v << "\n";
      return 0;
    }
    if (opts.listen.empty()) {
      std::cerr << "ftvm " << cmd << ": --listen is required (or --status)\n";
      return kExitUsage;
    }
    if (!(sync_ms > 0)) {
      std::cerr << "ftvm " << cmd << ": --sync-ms must be positive\n";
      return kExitUsage;
    }
    opts.sync_interval = std::chrono::nanoseconds(int64_t(sync_ms * 1e6));
    auto clock = MakeSystemClock();
    storage::DrReplica replica(opts, *clock);
    std::fprintf(stderr, "%s: listening on %s, keeping %s\n", cmd.c_str(), replica.address().c_str(),
                 storage::DiskImagePath(opts.dir).c_str());
    return RunUntilDone([&] { return replica.run(); }, [&] { replica.stop(); });
  } catch (const Error& e) {
    std::cerr << "ftvm " << cmd << ": " << e.what() << "\n";
    return kExitVmmError;
  } catch (const std::exception& e) {
    std::cerr << "ftvm " << cmd << ": internal error: " << e.what() << "\n";
    return kExitVmmError;
  }
}

}  // namespace

int DrReplicaMain(int argc, char** argv) { return ReplicaMain("dr-replica", argc, argv); }
int DiskServerMain(int argc, char** argv) { return ReplicaMain("disk-server", argc, argv); }

namespace {

// dr-start --from-checkpoint: everything that could refuse is checked before the
// disk is touched (the checkpoint file and its undo journal, the state's format,
// this VM's RAM, app, backend and devices, the state loaded into it); then the disk
// is rolled back to the checkpoint's write, and the VM continues from its state
// instead of booting.
int ResumeFromCheckpoint(const std::string& dir, VmOptions& vm, const StorageCliOptions& st, const OperatorOptions& ops) {
  storage::LoadedCheckpoint ckpt;
  std::vector<uint8_t> raw;
  double lost_s = 0;  // source time from the checkpoint to the replica's recovery point
  try {
    std::map<std::string, std::string> state = storage::ReadReplicaState(dir);
    ckpt = storage::LoadCheckpoint(dir);
    raw = storage::DecompressState(ckpt.state, ckpt.header.raw_bytes);
    const uint64_t durable = state["durable_seq"].empty() ? 0 : std::stoull(state["durable_seq"]);
    if (durable < ckpt.header.seq)
      throw Error("the checkpoint is at write " + std::to_string(ckpt.header.seq) + ", but the replica's disk holds only up "
                  "to write " + std::to_string(durable) + ": its undo journal rolls the disk back, never forward");
    const uint64_t rp = state["recovery_point_wall_ns"].empty() ? 0 : std::stoull(state["recovery_point_wall_ns"]);
    if (rp > ckpt.header.wall_ns) lost_s = double(rp - ckpt.header.wall_ns) / 1e9;
  } catch (const Error& e) {
    std::cerr << "ftvm dr-start: " << e.what() << "\n(the replica's disk is untouched; without --from-checkpoint, dr-start "
                 "boots it)\n";
    return kExitVmmError;
  } catch (const std::logic_error& e) {  // std::stoull on a damaged state file
    std::cerr << "ftvm dr-start: the replica's state file " << storage::StatePath(dir) << " has a damaged number ("
              << e.what() << "); the replica's disk is untouched\n";
    return kExitVmmError;
  }
  const std::string tap = vm.config.tap;
  vm.config.disk = storage::DiskImagePath(dir);
  // Built as a replica (no tap yet); ResumeVmState makes it live on `tap`.
  vm.config.mode = vmm::ExecutionMode::kReplay;
  vm.config.nic_without_tap = !tap.empty();
  vm.config.tap.clear();
  auto prepare = [&](vmm::Machine& m) {
    const uint64_t t0 = MakeSystemClock()->monotonic_ns();
    const storage::VmStateInfo info = storage::CheckVmState(m, raw);
    if (info.disk_seq != ckpt.header.seq)
      throw Error("the checkpoint's state is for write " + std::to_string(info.disk_seq) + ", its header says " +
                  std::to_string(ckpt.header.seq) + " (damaged)");
    storage::ResumeVmState(m, raw, tap, [&] {
      storage::RollbackDisk(dir, ckpt, vm.config.disk);
      // Resumed once: the VM writes the disk from here on, without an undo journal.
      if (std::rename(storage::CheckpointPath(dir).c_str(), storage::InvalidCheckpointPath(dir).c_str()) != 0)
        throw SysError("setting the resumed checkpoint aside");
    });
    uint64_t undo_bytes = 0;
    for (const auto& u : ckpt.undo) undo_bytes += u.length;
    std::fprintf(stderr,
                 "dr-start: resuming the VM from the checkpoint at disk write %llu (taken %.1f s before the replica's "
                 "recovery point): rolled the disk back by %zu undo records (%.1f KiB), restored %.1f MiB "
                 "of state in %.0f ms. The VM continues where it was, without a boot, keeping its memory; every write "
                 "after the checkpoint is lost (a cold dr-start keeps them).\n",
                 static_cast<unsigned long long>(ckpt.header.seq),
                 lost_s, ckpt.undo.size(), double(undo_bytes) / 1024.0, double(raw.size()) / 1048576.0,
                 double(MakeSystemClock()->monotonic_ns() - t0) / 1e6);
    log::info("dr.resumed", {{"seq", ckpt.header.seq}, {"position", info.position}, {"undo_records", uint64_t(ckpt.undo.size())}});
  };
  return RunVm("dr-start", vm.config, st, ops, nullptr, {}, prepare);
}

}  // namespace

int DrStartMain(int argc, char** argv) {
  BlockStopSignals();
  VmOptions vm;
  StorageCliOptions st;
  OperatorOptions ops;
  std::string dir;
  bool force = false;
  bool from_checkpoint = false;
  po::options_description desc("ftvm dr-start options");
  desc.add_options()
      ("help,h", "show this help")
      ("dir", po::value(&dir)->required(), "the DR replica's directory (ftvm dr-replica --dir); stop the replica first")
      ("force", po::bool_switch(&force), "start even though the replica says its image is not crash-consistent")
      ("from-checkpoint", po::bool_switch(&from_checkpoint),
       "resume the VM from the replica's newest checkpoint (a source with --dr-checkpoint-s): the disk is rolled back to "
       "the checkpoint's write and the VM continues running from there, no boot; writes after the checkpoint are lost. "
       "Default: boot on the newest crash-consistent disk");
  desc.add(vm.describe());
  desc.add(st.describe());
  desc.add(ops.describe());
  if (auto code = ParseCommandLine(argc, argv, desc, "dr-start",
                                   "usage: ftvm dr-start --dir DIR [--from-checkpoint] --guest IMAGE --app NAME [VM options]\n"))
    return *code;
  if (std::string bad = vm.apply() + st.check(); !bad.empty()) {
    std::cerr << "ftvm dr-start: " << bad << "\n";
    return kExitUsage;
  }
  if (!vm.config.disk.empty()) {
    std::cerr << "ftvm dr-start: --disk is the replica's image (" << storage::DiskImagePath(dir) << "); do not give one\n";
    return kExitUsage;
  }
  if (from_checkpoint) return ResumeFromCheckpoint(dir, vm, st, ops);
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
    // The VM writes the disk from here on without an undo journal: the checkpoint
    // can no longer be reached from it.
    if (::access(storage::CheckpointPath(dir).c_str(), F_OK) == 0) {
      if (std::rename(storage::CheckpointPath(dir).c_str(), storage::InvalidCheckpointPath(dir).c_str()) != 0)
        throw SysError("setting the checkpoint aside (" + storage::InvalidCheckpointPath(dir) + ")");
      std::fprintf(stderr, "dr-start: cold boot on the newest crash-consistent disk (every write the replica holds); the "
                           "replica's checkpoint no longer matches this disk once the VM writes it: set aside as %s\n",
                   storage::InvalidCheckpointPath(dir).c_str());
    } else {
      std::fprintf(stderr, "dr-start: cold boot on the newest crash-consistent disk (every write the replica holds)\n");
    }
  } catch (const Error& e) {
    std::cerr << "ftvm dr-start: " << e.what() << "\n";
    return kExitVmmError;
  }
  return RunVm("dr-start", vm.config, st, ops);
}

int MoveDiskMain(int argc, char** argv) {
  std::string control, to;
  bool keep_old = false;
  double rate_mib = 0, timeout_s = 10;
  po::options_description desc("ftvm move-disk options");
  desc.add_options()
      ("help,h", "show this help")
      ("control", po::value(&control)->required(), "the VMM's control socket (its --control PATH)")
      ("to", po::value(&to)->required(),
       "the new image path (must not exist), or an ftvm disk-server's channel address (tcp:HOST:PORT): the disk moves "
       "to that host and the VM reads and writes it there")
      ("keep-old", po::bool_switch(&keep_old), "keep the old image after the switch (default: remove it)")
      ("rate-mib", po::value(&rate_mib)->default_value(rate_mib),
       "copy at most this many MiB/s, sparing the guest's own I/O (0: as fast as it goes)")
      ("timeout-s", po::value(&timeout_s)->default_value(timeout_s),
       "with --to tcp:HOST:PORT: how long the disk server may be unreachable (the VM's disk requests wait) before the "
       "VM stops with an error");
  if (auto code = ParseCommandLine(argc, argv, desc, "move-disk",
                                   "usage: ftvm move-disk --control PATH --to NEW_IMAGE|tcp:HOST:PORT [--keep-old]\n"))
    return *code;
  if (!(timeout_s > 0 && timeout_s <= 3600)) {
    std::cerr << "ftvm move-disk: --timeout-s must be in (0, 3600]\n";
    return kExitUsage;
  }
  try {
    control::Request req;
    req.mutable_move_disk()->set_new_path(to);
    req.mutable_move_disk()->set_keep_old(keep_old);
    req.mutable_move_disk()->set_rate_mib(rate_mib);
    req.mutable_move_disk()->set_timeout_s(timeout_s);
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
