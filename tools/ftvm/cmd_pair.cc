// `ftvm primary` and `ftvm secondary`: the two halves of a protected VM, normally on
// two hosts. The primary runs the VM and streams its log; the secondary keeps a
// replica and takes over when the primary's host dies.
//
// Exit codes: primary: the guest's exit code; 4 when it stopped its VM because the
// secondary took over. Secondary: 0 when the primary ended cleanly (replica
// identical) or the VM it took over ended; the guest's code if that was not 0; 1
// when the replica diverged; 4 when it stopped because the primary kept the VM.
// Both: 2 bad command line, 125 could not run.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>

#include "common/clock.h"
#include "common/error.h"
#include "primary/protected_primary.h"
#include "secondary/protecting_secondary.h"
#include "tools/ftvm/commands.h"
#include "tools/ftvm/config.h"
#include "tools/ftvm/operations.h"
#include "tools/ftvm/vm_runner.h"
#include "tools/ftvm/vm_storage.h"

namespace ftvm::cli {
namespace po = boost::program_options;

namespace {

constexpr int kExitStoppedForPeer = 4;
constexpr int kExitVmLost = 5;  // post-copy could not complete: no host has the VM

std::string Percentiles(const std::vector<uint64_t>& ns) {
  if (ns.empty()) return "-";
  char buf[96];
  std::snprintf(buf, sizeof buf, "p50 %.0f us, p99 %.0f us (%zu samples)", double(Quantile(ns, 0.5)) / 1000.0,
                double(Quantile(ns, 0.99)) / 1000.0, ns.size());
  return buf;
}

struct PrimaryCommandOptions final : CommandOptions {
  VmOptions vm;
  primary::PrimaryOptions opts;
  StorageCliOptions st;
  OperatorOptions ops;
  HealthCliOptions health;
  uint64_t heartbeat_ms = opts.liveness.heartbeat_interval_ns / 1000000;
  uint64_t timeout_ms = opts.liveness.failure_timeout_ns / 1000000;
  uint64_t flush_us = opts.streamer.flush_interval_ns / 1000;
  uint64_t max_lag_kib = opts.streamer.max_unreplayed_bytes >> 10;
  uint64_t max_lag_ms = opts.streamer.max_lag_ns / 1000000;
  double wait_s = -1;
  double handshake_s = double(opts.handshake_timeout.count()) / 1e9;
  uint64_t verify_ms = opts.recorder.verify_interval_ns / 1000000;
  uint64_t checkpoint_us = opts.recorder.checkpoint_after_ns / 1000;
  double pause_target_ms = double(opts.precopy.downtime_target.count()) / 1e6;
  double max_pause_ms = double(opts.precopy.max_downtime.count()) / 1e6;

  po::options_description describe() override;
  std::string finish() override;
};

po::options_description PrimaryCommandOptions::describe() {
  po::options_description desc("ftvm primary options");
  desc.add_options()
      ("help,h", "show this help")
      ("listen", po::value(&opts.listen)->required(),
       "channel address for the secondary: tcp:HOST:PORT, shm:/path.sock, rdma:HOST:PORT (RDMA verbs), "
       "rdma+shm:/path.sock (the RDMA protocol emulated over shared memory, for tests) or dpdk:... (a DPDK port: "
       "dpdk:memif:/path, dpdk:af_packet:IFACE, dpdk:tap:IFACE, dpdk:dev=DEVARGS)")
      ("arbiter", po::value(&opts.arbiter_dir)->required(), "arbiter directory, shared with the secondary")
      ("witness", po::value(&opts.witness), "IPv4 address on the clients' side: a host that cannot reach it when "
                                             "the pair loses contact knows it is the cut-off one")
      ("name", po::value(&opts.name)->default_value(opts.name), "this host's name (in the arbiter and logs)")
      ("heartbeat-ms", po::value(&heartbeat_ms)->default_value(heartbeat_ms), "heartbeat interval")
      ("failure-timeout-ms", po::value(&timeout_ms)->default_value(timeout_ms),
       "declare the secondary lost after this long without a message")
      ("flush-us", po::value(&flush_us)->default_value(flush_us), "log batching interval")
      ("max-lag-kib", po::value(&max_lag_kib)->default_value(max_lag_kib),
       "slow the VM down when the replica has this much log not yet replayed")
      ("max-lag-ms", po::value(&max_lag_ms)->default_value(max_lag_ms),
       "slow the VM down when the replica has not replayed log sent this long ago (0: no bound)")
      ("strict", po::bool_switch(&opts.strict_outputs),
       "release an output only once the replica replayed it and produced the same one (by hash)")
      ("wait-secondary-s", po::value(&wait_s), "how long to wait for a secondary (default: as long as it takes)")
      ("handshake-timeout-s", po::value(&handshake_s)->default_value(handshake_s),
       "give up on a secondary that does not answer the hello within this")
      ("verify-interval-ms", po::value(&verify_ms)->default_value(verify_ms),
       "write a state digest for the replica to compare this often")
      ("checkpoint-after-us", po::value(&checkpoint_us)->default_value(checkpoint_us),
       "take an epoch checkpoint when input waited this long for a guest exit")
      ("pause-target-ms", po::value(&pause_target_ms)->default_value(pause_target_ms),
       "a secondary joining the running VM: copy memory and disk in rounds while the VM runs until the rest fits "
       "a pause this long")
      ("max-rounds", po::value(&opts.precopy.max_rounds)->default_value(opts.precopy.max_rounds),
       "after this many rounds, pause anyway if the rest fits --max-pause-ms, else give up")
      ("max-pause-ms", po::value(&max_pause_ms)->default_value(max_pause_ms),
       "the longest pause a live copy may end with")
      ("max-throttle", po::value(&opts.precopy.max_throttle)->default_value(opts.precopy.max_throttle),
       "slow down a VM that writes memory faster than the copy carries it, up to this percent (0: never)");
  desc.add(vm.describe());
  desc.add(st.describe());
  desc.add(health.describe());
  desc.add(ops.describe());
  return desc;
}

std::string PrimaryCommandOptions::finish() {
  if (std::string bad = vm.apply() + st.check() + health.apply(); !bad.empty()) return bad;
  if (heartbeat_ms == 0 || timeout_ms <= heartbeat_ms)
    return "--failure-timeout-ms must be larger than --heartbeat-ms (> 0)";
  opts.liveness.heartbeat_interval_ns = heartbeat_ms * 1000000;
  opts.liveness.failure_timeout_ns = timeout_ms * 1000000;
  opts.streamer.flush_interval_ns = flush_us * 1000;
  opts.streamer.max_unreplayed_bytes = max_lag_kib << 10;
  opts.streamer.max_lag_ns = max_lag_ms * 1000000;
  if (wait_s >= 0) opts.wait_for_secondary = std::chrono::nanoseconds(int64_t(wait_s * 1e9));
  opts.handshake_timeout = std::chrono::nanoseconds(int64_t(handshake_s * 1e9));
  if (verify_ms == 0 || checkpoint_us == 0) return "--verify-interval-ms and --checkpoint-after-us must be positive";
  opts.recorder.verify_interval_ns = verify_ms * 1000000;
  opts.recorder.checkpoint_after_ns = checkpoint_us * 1000;
  if (!(pause_target_ms >= 0) || !(max_pause_ms >= pause_target_ms) || opts.precopy.max_rounds == 0 ||
      opts.precopy.max_throttle > 99)
    return "need 0 <= --pause-target-ms <= --max-pause-ms, --max-rounds >= 1 and --max-throttle <= 99";
  opts.precopy.downtime_target = std::chrono::nanoseconds(int64_t(pause_target_ms * 1e6));
  opts.precopy.max_downtime = std::chrono::nanoseconds(int64_t(max_pause_ms * 1e6));
  if (opts.precopy.max_throttle == 0) opts.precopy.throttle_step = 0;
  return "";
}

}  // namespace

std::unique_ptr<CommandOptions> MakePrimaryOptions() { return std::make_unique<PrimaryCommandOptions>(); }

int PrimaryMain(int argc, char** argv) {
  BlockStopSignals();
  PrimaryCommandOptions o;
  if (auto code = ParseCommand(argc, argv, o, "primary",
                               "usage: ftvm primary --listen ADDR --arbiter DIR --guest IMAGE --app NAME [options]\n"))
    return *code;
  VmOptions& vm = o.vm;
  primary::PrimaryOptions& opts = o.opts;
  StorageCliOptions& st = o.st;
  try {
    auto clock = MakeSystemClock();
    auto random = MakeSystemRandom();
    o.ops.configure_logging("primary", vm.config.app);
    primary::ProtectedPrimary p(vm.config, opts, *clock, *random);
    VmStorage storage(st, p.machine(), *clock);
    ControlEndpoint control(o.ops, "primary", o.ops.vm_or(vm.config.app));
    storage.serve(control);
    control.add_status([&p, name = opts.name](control::StatusReply& s) {
      s.set_host(name);
      FillPrimaryStatus(p.status(), s);
    });
    control.on(control::Request::kSwitchover, [&p](const control::Request&, control::Responder&) {
      if (std::string why = p.hand_over(); !why.empty()) throw Error("switchover: " + why);
      return ActionStarted("switchover: the VM pauses once the secondary caught up, and runs there next");
    });
    // A hung guest is reset here, as a logged event the replica replays; the
    // secondary never sees it as a lost primary (the pair's heartbeats go on).
    vmm::HealthMonitor health(p.machine(), o.health.options);
    control.add_status([&health](control::StatusReply& s) { FillHealthStatus(health.status(), s); });
    control.start();
    PrintSummary("primary: listening on %s\n", p.listen_address().c_str());
    p.accept_secondary();
    p.serve_reprotection();  // a later secondary joins the running VM
    int guest = RunUntilDone([&] { return p.run(); }, [&] { p.stop(); });
    health.stop();
    storage.final_report();
    primary::PrimaryReport r = p.report();
    PrintSummary("primary: %s%s%s\n", std::string(primary::ProtectionName(r.protection)).c_str(),
                 r.event.empty() ? "" : ": ", r.event.c_str());
    std::fprintf(stderr,
                 "primary: log %llu bytes in %llu messages; replica lag %s; outputs held %s; "
                 "flow-control waits %llu; longest silence of the secondary %.1f ms\n",
                 static_cast<unsigned long long>(r.streamer.bytes), static_cast<unsigned long long>(r.streamer.messages),
                 Percentiles(r.streamer.lag_ns).c_str(), Percentiles(r.gate.hold_ns).c_str(),
                 static_cast<unsigned long long>(r.streamer.flow_control_waits), double(r.max_silence_ns) / 1e6);
    if (const migration::PrecopyStats& a = r.last_attach; a.rounds != 0)
      std::fprintf(stderr,
                   "primary: last live copy: %u rounds, %.1f MiB sent at %.0f MiB/s, %llu pages and %llu KiB of disk "
                   "left for a pause of %.2f ms\n",
                   a.rounds, double(a.bytes_sent) / double(1u << 20), double(a.bandwidth_bytes_per_s) / double(1u << 20),
                   static_cast<unsigned long long>(a.final_pages),
                   static_cast<unsigned long long>(a.final_disk_bytes >> 10), double(r.last_attach_pause_ns) / 1e6);
    if (const migration::PrecopyStats& a = r.last_attach; a.disk_blocks_compared != 0)
      PrintSummary("primary: disk resync: %llu of %llu blocks differed and were sent\n",
                   static_cast<unsigned long long>(a.disk_blocks_resynced),
                   static_cast<unsigned long long>(a.disk_blocks_compared));
    if (r.protection == primary::Protection::kStoppedForPeer) return kExitStoppedForPeer;
    if (health.restart_requested()) {
      PrintSummary("primary: the guest hung; exiting with %d for a restart\n", vmm::kExitGuestHung);
      return vmm::kExitGuestHung;
    }
    return guest < 0 ? 0 : guest;
  } catch (const Error& e) {
    std::cerr << "ftvm primary: " << e.what() << "\n";
    return kExitVmmError;
  } catch (const std::exception& e) {
    std::cerr << "ftvm primary: internal error: " << e.what() << "\n";
    return kExitVmmError;
  }
}

namespace {

// `ftvm secondary`, `ftvm migrate` (a secondary that asks for the VM once it has
// caught up) and `ftvm protect --attach` (a secondary for a VM that runs already).
enum class Joiner { kSecondary, kMigrate, kAttach };

struct SecondaryCommandOptions final : CommandOptions {
  explicit SecondaryCommandOptions(Joiner joiner) : as(joiner) {
    opts.handover = as == Joiner::kMigrate;
    opts.require_running = as == Joiner::kAttach;
  }
  const Joiner as;
  secondary::SecondaryOptions opts;
  OperatorOptions ops;
  bool no_verify = false;
  double connect_s = double(opts.connect_timeout.count()) / 1e9;

  const char* command() const {
    return as == Joiner::kMigrate ? "migrate" : as == Joiner::kAttach ? "protect --attach" : "secondary";
  }
  po::options_description describe() override {
    const bool migrate = as == Joiner::kMigrate;
    po::options_description desc(std::string("ftvm ") + command() + " options");
    desc.add_options()("help,h", "show this help");
    if (migrate)
      desc.add_options()("from", po::value(&opts.connect)->required(),
                         "the channel address of the primary (ftvm primary --listen) whose VM moves here");
    else if (as == Joiner::kAttach)
      desc.add_options()("attach", po::value(&opts.connect)->required(),
                         "the channel address of the running VM's primary (ftvm primary --listen): this host becomes "
                         "its secondary, by a live copy of its memory and disk, then replay");
    else
      desc.add_options()("connect", po::value(&opts.connect)->required(), "the primary's channel address");
    desc.add_options()
        ("arbiter", po::value(&opts.arbiter_dir)->required(), "arbiter directory, shared with the primary")
        ("witness", po::value(&opts.witness), "IPv4 address on the clients' side (see ftvm primary --help)")
        ("name", po::value(&opts.name)->default_value(opts.name), "this host's name")
        ("disk", po::value(&opts.disk),
         "this host's copy of the VM's disk: joining a VM that already runs, where its disk is copied live (an "
         "existing file of the right size gets only the blocks that differ); otherwise a copy of the primary's disk "
         "as it was when the primary started")
        ("tap", po::value(&opts.tap), "tap interface the VM uses on this host after a takeover")
        ("listen", po::value(&opts.listen), "after a takeover, accept a new secondary on this address (re-protection)")
        ("guest", po::value(&opts.guest_image), "guest image (default: the primary's path)")
        ("console", po::value(&opts.console_path), "write the replica's console output to FILE")
        ("no-verify", po::bool_switch(&no_verify), "do not check the primary's state digests")
        ("connect-timeout-s", po::value(&connect_s)->default_value(connect_s), "keep trying to reach the primary this long");
    if (migrate)
      desc.add_options()("postcopy", po::bool_switch(&opts.postcopy),
                         "run the VM here as soon as its registers, devices and disk are here, and fetch its memory "
                         "while it runs (pages it touches first); the source is needed until all has arrived: if it is "
                         "lost before, so is the VM (exit 5)");
    desc.add(ops.describe());
    return desc;
  }
  std::string finish() override {
    opts.verify = !no_verify;
    opts.connect_timeout = std::chrono::nanoseconds(int64_t(connect_s * 1e9));
    return "";
  }
};

int RunSecondary(int argc, char** argv, Joiner as) {
  BlockStopSignals();
  const bool migrate = as == Joiner::kMigrate;
  SecondaryCommandOptions o(as);
  const char* cmd = o.command();
  secondary::SecondaryOptions& opts = o.opts;
  if (auto code = ParseCommandLine(argc, argv, o.describe(), cmd,
                                   migrate ? "usage: ftvm migrate --from ADDR --arbiter DIR [--disk F] [--tap T] "
                                             "[--listen ADDR]\n"
                                   : as == Joiner::kAttach
                                       ? "usage: ftvm protect --attach ADDR --arbiter DIR [--disk F] [--tap T]\n"
                                       : "usage: ftvm secondary --connect ADDR --arbiter DIR [--disk F] [--tap T]\n",
                                   as == Joiner::kSecondary ? "secondary" : ""))
    return *code;
  o.finish();
  try {
    auto clock = MakeSystemClock();
    auto random = MakeSystemRandom();
    const std::string role = as == Joiner::kMigrate ? "migrate" : "secondary";
    // The VM's name is known once the primary's hello says which app it runs.
    o.ops.configure_logging(role, "");
    secondary::ProtectingSecondary s(opts, *clock, *random);
    ControlEndpoint control(o.ops, role, o.ops.vm_name);
    control.add_status([&s, name = opts.name](control::StatusReply& status) {
      status.set_host(name);
      const secondary::SecondaryStatus st = s.status();
      if (status.vm().empty()) status.set_vm(st.app);
      FillSecondaryStatus(st, status);
    });
    control.start();
    s.connect();
    if (o.ops.vm_name.empty()) o.ops.configure_logging(role, s.status().app);
    int guest = RunUntilDone([&] { return s.run(); }, [&] { s.stop(); });
    secondary::SecondaryReport r = s.report();
    PrintSummary("secondary: %s: %s\n", std::string(secondary::SecondaryOutcomeName(r.outcome)).c_str(),
                 r.detail.c_str());
    PrintSummary("secondary: replayed %llu records, %llu checkpoints, %llu verifications, %llu output checks; "
                 "longest silence of the primary %.1f ms\n",
                 static_cast<unsigned long long>(r.replay.records), static_cast<unsigned long long>(r.replay.checkpoints),
                 static_cast<unsigned long long>(r.replay.verifications),
                 static_cast<unsigned long long>(r.replay.output_checks), double(r.max_silence_ns) / 1e6);
    if (r.outcome == secondary::SecondaryOutcome::kWentLive && r.primary_lost_at_ns != 0)
      PrintSummary("secondary: took over %.1f ms after the primary was declared lost\n",
                   double(r.live_at_ns - r.primary_lost_at_ns) / 1e6);
    if (migrate && r.outcome == secondary::SecondaryOutcome::kWentLive && r.handover_requested_at_ns != 0)
      PrintSummary("migrate: the VM ran here %.1f ms after this host asked for it\n",
                   double(r.live_at_ns - r.handover_requested_at_ns) / 1e6);
    if (r.postcopy.pages != 0)
      PrintSummary("migrate: post-copy: %llu of %llu pages arrived, %llu fetched on demand (waits p50 %.2f ms, "
                   "p99 %.2f ms), in %.1f ms\n",
                   static_cast<unsigned long long>(r.postcopy.received_pages),
                   static_cast<unsigned long long>(r.postcopy.pages), static_cast<unsigned long long>(r.postcopy.faults),
                   double(r.postcopy.fault_wait_p50_ns) / 1e6, double(r.postcopy.fault_wait_p99_ns) / 1e6,
                   double(r.postcopy.complete_ns) / 1e6);
    if (migrate && r.outcome != secondary::SecondaryOutcome::kWentLive) {
      PrintSummary("ftvm migrate: the VM did not move here\n");
      if (r.outcome == secondary::SecondaryOutcome::kPrimaryEnded) return kExitVmmError;
    }
    switch (r.outcome) {
      case secondary::SecondaryOutcome::kPrimaryEnded: return 0;
      case secondary::SecondaryOutcome::kReleased: return 0;
      case secondary::SecondaryOutcome::kWentLive: return guest;
      case secondary::SecondaryOutcome::kStoppedForPeer: return kExitStoppedForPeer;
      case secondary::SecondaryOutcome::kDiverged: return 1;
      case secondary::SecondaryOutcome::kVmLost: return kExitVmLost;
      default: return kExitVmmError;
    }
  } catch (const Error& e) {
    std::cerr << "ftvm " << cmd << ": " << e.what() << "\n";
    return kExitVmmError;
  } catch (const std::exception& e) {
    std::cerr << "ftvm " << cmd << ": internal error: " << e.what() << "\n";
    return kExitVmmError;
  }
}

}  // namespace

int SecondaryMain(int argc, char** argv) { return RunSecondary(argc, argv, Joiner::kSecondary); }
std::unique_ptr<CommandOptions> MakeSecondaryOptions() {
  return std::make_unique<SecondaryCommandOptions>(Joiner::kSecondary);
}
int MigrateMain(int argc, char** argv) { return RunSecondary(argc, argv, Joiner::kMigrate); }

namespace {

std::string SelfExe() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, size_t(n)) : "ftvm";
}

void CopyFileOrThrow(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  if (!in) throw Error("disk image " + from + ": cannot read it");
  std::ofstream out(to, std::ios::binary | std::ios::trunc);
  out << in.rdbuf();
  if (!out) throw Error("copying the disk to " + to + " failed");
}

}  // namespace

namespace {

struct ProtectCommandOptions final : CommandOptions {
  VmOptions vm;
  primary::PrimaryOptions opts;
  OperatorOptions ops;
  std::string workdir = "/tmp/ftvm-protect-" + std::to_string(getpid());
  std::string channel = "shm";
  po::options_description describe() override {
    po::options_description desc("ftvm protect options");
    desc.add_options()
        ("help,h", "show this help")
        ("workdir", po::value(&workdir)->default_value(workdir), "where the replica's disk, the arbiter and logs go")
        ("channel", po::value(&channel)->default_value(channel),
         "logging channel: shm, tcp (loopback), dpdk (net_memif) or rdma+shm (the RDMA ring protocol over shared memory)")
        ("strict", po::bool_switch(&opts.strict_outputs),
         "release an output only once the replica produced the same one");
    desc.add(vm.describe());
    desc.add(ops.describe());
    return desc;
  }
  std::string finish() override {
    if (std::string bad = vm.apply(); !bad.empty()) return bad;
    if (channel != "shm" && channel != "tcp" && channel != "dpdk" && channel != "rdma+shm")
      return "--channel must be shm, tcp, dpdk or rdma+shm";
    return "";
  }
};

}  // namespace

std::unique_ptr<CommandOptions> MakeProtectOptions() { return std::make_unique<ProtectCommandOptions>(); }

// `ftvm protect`: a protected pair on this one host, for demos: the secondary runs as
// a child process over a shared-memory channel, with its own copy of the disk.
int ProtectMain(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--attach") == 0 || std::strncmp(argv[i], "--attach=", 9) == 0)
      return RunSecondary(argc, argv, Joiner::kAttach);
  BlockStopSignals();
  ProtectCommandOptions o;
  if (auto code = ParseCommand(argc, argv, o, "protect", "usage: ftvm protect --guest IMAGE --app NAME [VM options]\n"))
    return *code;
  VmOptions& vm = o.vm;
  primary::PrimaryOptions& opts = o.opts;
  const std::string& workdir = o.workdir;
  const std::string& channel = o.channel;
  try {
    mkdir(workdir.c_str(), 0755);
    const std::string arbiter = workdir + "/arbiter";
    mkdir(arbiter.c_str(), 0755);
    opts.listen = channel == "tcp"    ? "tcp:127.0.0.1:0"
                  : channel == "dpdk" ? "dpdk:memif:" + workdir + "/channel.sock;abstract=no"
                                      : channel + ":" + workdir + "/channel.sock";
    opts.arbiter_dir = arbiter;
    opts.name = "primary";
    auto clock = MakeSystemClock();
    auto random = MakeSystemRandom();
    std::string replica_disk;
    if (!vm.config.disk.empty()) {
      replica_disk = workdir + "/replica.img";
      CopyFileOrThrow(vm.config.disk, replica_disk);
    }
    o.ops.configure_logging("primary", vm.config.app);
    primary::ProtectedPrimary p(vm.config, opts, *clock, *random);
    ControlEndpoint control(o.ops, "primary", o.ops.vm_or(vm.config.app));
    control.add_status([&p](control::StatusReply& s) {
      s.set_host("primary");
      FillPrimaryStatus(p.status(), s);
    });
    control.start();
    std::vector<std::string> args = {SelfExe(), "secondary", "--connect", p.listen_address(), "--arbiter", arbiter,
                                     "--name", "secondary", "--console", workdir + "/secondary.console",
                                     "--guest", vm.config.guest_image};
    if (!replica_disk.empty()) args.insert(args.end(), {"--disk", replica_disk});
    if (!vm.config.tap.empty()) args.insert(args.end(), {"--tap", vm.config.tap});
    // The secondary logs as the primary does, and its events go to the same file.
    if (o.ops.log_json) args.push_back("--log-json");
    if (!o.ops.event_file.empty()) args.insert(args.end(), {"--event-file", o.ops.event_file});
    args.insert(args.end(), {"--vm-name", o.ops.vm_or(vm.config.app)});
    const std::string log = workdir + "/secondary.log";
    pid_t child = fork();
    if (child < 0) throw SysError("fork");
    if (child == 0) {
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd >= 0) dup2(fd, 2);
      std::vector<char*> cargs;
      for (auto& a : args) cargs.push_back(a.data());
      cargs.push_back(nullptr);
      execv(cargs[0], cargs.data());
      _exit(127);
    }
    PrintSummary("protect: secondary pid %d (log %s)\n", int(child), log.c_str());
    p.accept_secondary();
    int guest = RunUntilDone([&] { return p.run(); }, [&] { p.stop(); });
    primary::PrimaryReport r = p.report();
    PrintSummary("protect: the primary ended %s; replica lag %s; outputs held %s\n",
                 std::string(primary::ProtectionName(r.protection)).c_str(), Percentiles(r.streamer.lag_ns).c_str(),
                 Percentiles(r.gate.hold_ns).c_str());
    int status = 0;
    for (int i = 0; i < 100 && waitpid(child, &status, WNOHANG) == 0; ++i) usleep(100000);
    if (waitpid(child, &status, WNOHANG) == 0) {
      kill(child, SIGTERM);
      waitpid(child, &status, 0);
    }
    PrintSummary("protect: the secondary exited with %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return guest < 0 ? 0 : guest;
  } catch (const Error& e) {
    std::cerr << "ftvm protect: " << e.what() << "\n";
    return kExitVmmError;
  }
}

}  // namespace ftvm::cli
