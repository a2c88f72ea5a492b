// The protected pair end to end, with real processes, namespaces, taps and channels:
// the pull-the-plug drill (SIGKILL of the primary at random moments under load),
// the secondary killed instead, the primary's link cut, strict outputs, a slow
// replica, a secondary joining a running VM, migration and re-protection, each over
// every logging channel that runs here (TCP, shared memory, the RDMA ring protocol
// over shared memory, DPDK on net_memif and on net_af_packet); and what a pair does
// with bad peers: one that never answers the handshake, one that speaks another
// protocol version, a log stream with a damaged record.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "common/netns.h"
#include "eventlog/reader.h"
#include "primary/protocol.h"
#include "tests/support/harness.h"
#include "transport/channel.h"

namespace ftvm::itest {
namespace {

using std::chrono::seconds;

// A sparse file of `bytes` (a blank disk image).
void MakeBlankDisk(const std::string& path, off_t bytes) {
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(ftruncate(fd, bytes), 0) << path;
  close(fd);
}

// The logging channels a pair can use on this machine; every lockstep test below
// runs over each of them. `drill` is the channel as `ftvm drill --channel` names it,
// `kind` as the channel reports itself (Channel::kind(), in the secondary's
// "secondary.replicating" line).
struct ChannelCase {
  const char* test_name;  // the test's name suffix
  const char* drill;
  const char* kind;
  // Its frames travel over the link between the hosts, so a cut link cuts the
  // channel. Shared memory and net_memif join two processes of one machine: cutting
  // host A's cables leaves them up (see CutLinkLeavesExactlyOneLiveVm).
  bool over_the_link;
  int kill_primary_rounds;
};

const ChannelCase kChannels[] = {
    // TCP, the default channel, gets the ten-round pull-the-plug soak; the others two.
    {"tcp", "tcp", "tcp", true, 10},
    {"shm", "shm", "shm", false, 2},
    // The RDMA channel's ring and credit protocol over its shared-memory stand-in for
    // one-sided writes (there is no RDMA device here).
    {"rdma_shm", "rdma+shm", "rdma+shm", false, 2},
    // DPDK, raw Ethernet frames: net_memif between the hosts' processes,
    // net_af_packet on a link of its own between the hosts, and net_tap on a tap on
    // each host's bridge (over the LAN, in the drill).
    {"dpdk_memif", "dpdk", "dpdk", false, 2},
    {"dpdk_af_packet", "dpdk-af_packet", "dpdk", true, 2},
    {"dpdk_tap", "dpdk-tap", "dpdk", true, 2},
};

std::string ChannelTestName(const testing::TestParamInfo<ChannelCase>& info) { return info.param.test_name; }
// How gtest names the parameter in a failure.
void PrintTo(const ChannelCase& c, std::ostream* os) { *os << c.drill; }

// Host A and host B of one test: two network namespaces joined by a veth pair
// (10.77.0.1 and 10.77.0.2, interface ftlink0 on both), and the channel between
// them: the primary listens on A, the secondary (or `ftvm migrate`) connects from B.
// For net_tap each host also has a tap, ftlog0, on a bridge with its end of the link.
class TwoHosts {
 public:
  explicit TwoHosts(const ChannelCase& c)
      : a_("ftvm-pair-a"), b_("ftvm-pair-b"),
        link_({a_.name(), "ftlink0", "10.77.0.1/24"}, {b_.name(), "ftlink0", "10.77.0.2/24"}) {
    const std::string channel = c.drill, sock = ScratchPath("channel.sock");
    if (channel == "tcp") {
      address_ = "tcp:10.77.0.1:7000";
    } else if (channel == "dpdk") {
      address_ = "dpdk:memif:" + sock + ";abstract=no";  // a socket file: both namespaces see it
    } else if (channel == "dpdk-af_packet") {
      address_ = "dpdk:af_packet:ftlink0";  // each side names its own end
    } else if (channel == "dpdk-tap") {
      for (const netns::Namespace* host : {&a_, &b_}) {
        const std::string& ns = host->name();
        netns::Ip({"-n", ns, "link", "add", "br0", "type", "bridge"});
        netns::Ip({"-n", ns, "tuntap", "add", "dev", "ftlog0", "mode", "tap", "multi_queue"});
        for (const char* port : {"ftlink0", "ftlog0"}) netns::Ip({"-n", ns, "link", "set", port, "master", "br0"});
        for (const char* dev : {"br0", "ftlog0"}) netns::Ip({"-n", ns, "link", "set", dev, "up"});
      }
      address_ = "dpdk:tap:ftlog0";
    } else {
      address_ = channel + ":" + sock;
    }
  }
  // Where the primary listens and the secondary connects (the same text on both).
  const std::string& address() const { return address_; }
  std::vector<std::string> on_a(const std::vector<std::string>& argv) const { return a_.wrap(argv); }
  std::vector<std::string> on_b(const std::vector<std::string>& argv) const { return b_.wrap(argv); }

 private:
  netns::Namespace a_, b_;
  netns::VethPair link_;
  std::string address_;
};

class PairOverChannel : public testing::TestWithParam<ChannelCase> {
 protected:
  // The secondary (or migration target) said it replicates over this channel.
  void ExpectChannel(const std::string& secondary_err) {
    EXPECT_NE(secondary_err.find(std::string("channel=") + GetParam().kind), std::string::npos)
        << "not over " << GetParam().kind << ": " << secondary_err;
  }

  // Runs `ftvm drill` over this channel and checks every round kept every
  // acknowledged message exactly once with exactly one live VM, over this channel.
  void Drill(const std::vector<std::string>& args, int rounds) {
    const std::string json = ScratchPath("drill.json"), workdir = ScratchPath("drill");
    std::vector<std::string> argv = {FtvmBinary(), "drill", "--guest", GuestImage(), "--rounds", std::to_string(rounds),
                                     "--json", json, "--workdir", workdir, "--channel", GetParam().drill};
    argv.insert(argv.end(), args.begin(), args.end());
    ProcessResult r = RunProcess(argv, seconds(120 + 30 * rounds), "drill");
    ASSERT_FALSE(r.timed_out);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    std::vector<DrillRound> got = ReadDrillRounds(json);
    ASSERT_EQ(got.size(), size_t(rounds)) << r.out;
    for (size_t i = 0; i < got.size(); ++i) {
      SCOPED_TRACE("round " + std::to_string(i + 1) + "\n" + r.out);
      EXPECT_TRUE(got[i].ok);
      EXPECT_EQ(got[i].lost, 0);
      EXPECT_EQ(got[i].duplicates, 0);
      EXPECT_TRUE(got[i].contents_match);
      EXPECT_TRUE(got[i].one_live);
      EXPECT_GT(got[i].acked, 0) << "the clients must have stored mail before the fault";
      EXPECT_GE(got[i].recovery_ms, 0) << "some request must be answered after the fault";
      ExpectChannel(ReadFile(workdir + "/round" + std::to_string(i + 1) + "/secondary.err"));
    }
  }
};

TEST_P(PairOverChannel, PrimaryKilledUnderLoad) {
  Drill({"--fault", "kill-primary"}, GetParam().kill_primary_rounds);
}

TEST_P(PairOverChannel, SecondaryKilledThePrimaryKeepsServing) { Drill({"--fault", "kill-secondary"}, 2); }

// Also in strict output mode: frames and disk reports wait until the replica has
// replayed to them and produced the same output.
TEST_P(PairOverChannel, PrimaryKilledWithStrictOutputs) {
  Drill({"--fault", "kill-primary", "--primary-args", "--strict"}, 2);
}

// Restart-safe: after a failover host A comes back empty, joins the VM that now runs
// on B as its secondary (disk and a checkpoint of the running VM), and when B dies
// too, A has every message again. Re-protection uses the same kind of channel.
TEST_P(PairOverChannel, SurvivorIsProtectedAgainAndSurvivesASecondFailover) {
  Drill({"--fault", "kill-primary", "--reprotect"}, 2);
}
// A standby that waits from the start re-protects the survivor by itself.
TEST_P(PairOverChannel, StandbyReprotectsTheSurvivorByItself) {
  Drill({"--fault", "kill-primary", "--reprotect", "--standby"}, 1);
}

// The mail store moves to host B while clients deliver mail: every acknowledged
// message is there exactly once afterwards, and only host B runs the VM.
TEST_P(PairOverChannel, MailStoreMigratesUnderLoadLosingNothing) { Drill({"--fault", "migrate"}, 2); }

// Host A's cables cut (its LAN link, and its logging link where it has one): the
// secondary takes over, the cut-off primary gives the VM up. Only for channels that
// go over a link: over shared memory or net_memif (two processes of one machine) the
// channel would stay up, so nobody would take over the VM cut off from its clients
// (`ftvm drill` refuses that combination).
class PairOverLinkChannel : public PairOverChannel {};
TEST_P(PairOverLinkChannel, CutLinkLeavesExactlyOneLiveVm) { Drill({"--fault", "cut-link"}, 2); }

// Strict mode end to end without a fault: every disk write the guest is told about
// was first reproduced by the replica (an OutputCheck it passed), and both disks
// end identical.
TEST_P(PairOverChannel, StrictOutputsAreCheckedOneByOne) {
  TwoHosts hosts(GetParam());
  const std::string arbiter = ScratchPath("arbiter");
  ASSERT_EQ(mkdir(arbiter.c_str(), 0755), 0);
  const std::string disk = ScratchPath("strict-primary.img"), replica = ScratchPath("strict-replica.img");
  for (const std::string& f : {disk, replica}) MakeBlankDisk(f, 16 << 20);
  Process p = Process::Start(hosts.on_a({FtvmBinary(), "primary", "--listen", hosts.address(), "--arbiter", arbiter,
                                         "--strict", "--guest", GuestImage(), "--app", "disk", "--disk", disk, "--arg",
                                         "ops=80"}),
                             "strict-primary");
  Process s = Process::Start(hosts.on_b({FtvmBinary(), "secondary", "--connect", hosts.address(), "--arbiter", arbiter,
                                         "--disk", replica, "--console", ScratchPath("strict.console")}),
                             "strict-secondary");
  ProcessResult pr = p.Wait(seconds(120));
  ProcessResult sr = s.Wait(seconds(60));
  ASSERT_EQ(pr.exit_code, 0) << pr.err;
  EXPECT_NE(pr.err.find("primary: protected"), std::string::npos) << pr.err;
  EXPECT_EQ(sr.exit_code, 0) << sr.err;
  EXPECT_NE(sr.err.find("replica identical"), std::string::npos) << sr.err;
  ExpectChannel(sr.err);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(sr.err, m, std::regex("(\\d+) output checks"))) << sr.err;
  EXPECT_GE(std::stoul(m[1]), 30u) << sr.err;
  EXPECT_TRUE(ReadFile(disk) == ReadFile(replica)) << "the replica's disk differs";
}

// Flow control: a replica that falls behind (its process stopped for a while, less
// than the failure timeout) slows the primary down; nothing is dropped, nobody fails
// over, and the replica still ends identical. By the unreplayed log's size, and by its
// age (what bounds a failover's catch-up).
class SlowReplica : public PairOverChannel {
 protected:
  void Run(const std::vector<std::string>& bound) {
    TwoHosts hosts(GetParam());
    const std::string arbiter = ScratchPath("arbiter");
    ASSERT_EQ(mkdir(arbiter.c_str(), 0755), 0);
    std::vector<std::string> argv = {FtvmBinary(), "primary", "--listen", hosts.address(), "--arbiter", arbiter};
    argv.insert(argv.end(), bound.begin(), bound.end());
    for (const char* a : {"--failure-timeout-ms", "2000", "--app", "timers", "--arg", "ticks=600", "--arg",
                          "period_us=2000"})
      argv.push_back(a);
    argv.insert(argv.end(), {"--guest", GuestImage()});
    Process p = Process::Start(hosts.on_a(argv), "fc-primary");
    Process s = Process::Start(hosts.on_b({FtvmBinary(), "secondary", "--connect", hosts.address(), "--arbiter",
                                           arbiter, "--console", ScratchPath("fc.console")}),
                               "fc-secondary");
    // Stop the replica three times for 300 ms while the primary runs.
    ASSERT_TRUE(WaitForFileContains(s.stderr_path(), "secondary.replicating", seconds(30))) << s.Stderr();
    usleep(300000);
    for (int i = 0; i < 3 && p.Running(); ++i) {
      s.Signal(SIGSTOP);
      usleep(300000);
      s.Signal(SIGCONT);
      usleep(200000);
    }
    ProcessResult pr = p.Wait(seconds(120));
    ProcessResult sr = s.Wait(seconds(60));
    ASSERT_EQ(pr.exit_code, 0) << pr.err;
    EXPECT_NE(pr.err.find("primary: protected"), std::string::npos) << "no failover may happen: " << pr.err;
    const std::string waits = [&] {
      std::smatch m;
      return std::regex_search(pr.err, m, std::regex("flow-control waits (\\d+)")) ? std::string(m[1]) : "";
    }();
    ASSERT_FALSE(waits.empty()) << pr.err;
    EXPECT_GT(std::stoul(waits), 0u) << "the primary must have waited for the stopped replica";
    EXPECT_EQ(sr.exit_code, 0) << sr.err;
    EXPECT_NE(sr.err.find("replica identical"), std::string::npos) << sr.err;
    ExpectChannel(sr.err);
  }
};
TEST_P(SlowReplica, SlowsThePrimaryDownAndLosesNothing) { Run({"--max-lag-kib", "4", "--max-lag-ms", "0"}); }
TEST_P(SlowReplica, LagInTimeIsBoundedToo) { Run({"--max-lag-ms", "50"}); }

// A secondary that joins a VM already running gets its memory (and disk) copied
// live: the VM keeps writing memory during the copy, pauses only for the pages it
// wrote in the last round, and the replica then replays to the end identical.
// `primary_args` may make the copy impossible to converge: then the VM runs on,
// unprotected and undisturbed, and the secondary reports why it got no VM.
class LiveAttach : public PairOverChannel {
 protected:
  struct Result {
    ProcessResult primary, secondary;
  };
  Result AttachToARunningVm(const std::vector<std::string>& primary_args) {
    TwoHosts hosts(GetParam());
    const std::string arbiter = ScratchPath("arbiter");
    EXPECT_EQ(mkdir(arbiter.c_str(), 0755), 0);
    const std::string disk = ScratchPath("live-primary.img");
    MakeBlankDisk(disk, 16 << 20);
    std::vector<std::string> argv = {FtvmBinary(), "primary", "--listen", hosts.address(), "--arbiter", arbiter,
                                     "--wait-secondary-s", "0", "--guest", GuestImage(), "--disk", disk, "--app",
                                     "dirty", "--arg", "mib=8", "--arg", "mib_per_s=8", "--arg", "seconds=3"};
    argv.insert(argv.end(), primary_args.begin(), primary_args.end());
    Process p = Process::Start(hosts.on_a(argv), "live-primary");
    // The VM runs unprotected for a while, then a secondary arrives.
    EXPECT_TRUE(WaitForFileContains(p.stderr_path(), "primary.unprotected", seconds(30))) << p.Stderr();
    usleep(500000);
    // ftvm protect --attach: a secondary for a VM that runs already.
    Process s = Process::Start(hosts.on_b({FtvmBinary(), "protect", "--attach", hosts.address(), "--arbiter", arbiter,
                                           "--disk", ScratchPath("live-replica.img"), "--console",
                                           ScratchPath("live.console")}),
                               "live-secondary");
    Result r;
    r.primary = p.Wait(seconds(180));
    r.secondary = s.Wait(seconds(60));
    return r;
  }
};

TEST_P(LiveAttach, SecondaryJoinsARunningVmByALiveCopy) {
  Result r = AttachToARunningVm({});
  ASSERT_EQ(r.primary.exit_code, 0) << r.primary.err;
  EXPECT_NE(r.primary.out.find("dirty: mib=8"), std::string::npos) << r.primary.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.primary.err, m, std::regex("last live copy: (\\d+) rounds"))) << r.primary.err;
  EXPECT_GE(std::stoul(m[1]), 1u);
  EXPECT_NE(r.primary.err.find("primary: protected"), std::string::npos) << r.primary.err;
  EXPECT_EQ(r.secondary.exit_code, 0) << r.secondary.err;
  EXPECT_NE(r.secondary.err.find("secondary.state_received"), std::string::npos) << r.secondary.err;
  EXPECT_NE(r.secondary.err.find("replica identical"), std::string::npos) << r.secondary.err;
  ExpectChannel(r.secondary.err);
}

TEST_P(LiveAttach, CopyThatCannotConvergeLeavesTheVmRunning) {
  Result r = AttachToARunningVm(
      {"--pause-target-ms", "0", "--max-pause-ms", "0", "--max-rounds", "2", "--max-throttle", "0"});
  ASSERT_EQ(r.primary.exit_code, 0) << r.primary.err;
  EXPECT_NE(r.primary.out.find("dirty: mib=8"), std::string::npos) << r.primary.out;
  EXPECT_NE(r.primary.err.find("does not converge"), std::string::npos) << r.primary.err;
  EXPECT_EQ(r.primary.err.find("primary: protected"), std::string::npos) << r.primary.err;
  EXPECT_NE(r.secondary.exit_code, 0) << r.secondary.err;
  EXPECT_NE(r.secondary.err.find("live copy from"), std::string::npos) << r.secondary.err;
}

// A destination that cannot give the VM its memory (here: a memory cgroup that
// allows it less) says so before anything is copied, and the source runs on.
TEST(Pair, DestinationWithTooLittleMemoryRefusesAndTheVmRunsOn) {
  std::string own;
  {
    std::istringstream in(ReadFile("/proc/self/cgroup"));
    for (std::string line; std::getline(in, line);)
      if (line.find(":memory:") != std::string::npos) own = line.substr(line.find(":memory:") + 8);
  }
  std::string cgroup = "/sys/fs/cgroup/memory" + (own == "/" ? "" : own) + "/ftvm-test-" + std::to_string(getpid());
  if (own.empty()) cgroup = "/sys/fs/cgroup/ftvm-test-" + std::to_string(getpid());  // cgroup v2
  ASSERT_EQ(mkdir(cgroup.c_str(), 0755), 0) << cgroup << ": " << strerror(errno);
  const bool v2 = own.empty();
  {
    std::ofstream limit(cgroup + (v2 ? "/memory.max" : "/memory.limit_in_bytes"));
    limit << (128 << 20);
  }
  const std::string arbiter = ScratchPath("arbiter");
  ASSERT_EQ(mkdir(arbiter.c_str(), 0755), 0);
  const std::string sock = ScratchPath("small.sock");
  Process p = Process::Start({FtvmBinary(), "primary", "--listen", "shm:" + sock, "--arbiter", arbiter,
                              "--wait-secondary-s", "0", "--guest", GuestImage(), "--mem", "512", "--app", "dirty",
                              "--arg", "mib=8", "--arg", "mib_per_s=8", "--arg", "seconds=2"},
                             "small-source");
  ASSERT_TRUE(WaitForFileContains(p.stderr_path(), "primary.unprotected", seconds(30))) << ReadFile(p.stderr_path());
  ProcessResult m = RunProcess({"sh", "-c", "echo $$ > " + cgroup + "/cgroup.procs && exec \"$0\" \"$@\"",
                                FtvmBinary(), "migrate", "--from", "shm:" + sock, "--arbiter", arbiter},
                               seconds(60), "small-dest");
  ProcessResult pr = p.Wait(seconds(60));
  rmdir(cgroup.c_str());
  EXPECT_EQ(m.exit_code, 125) << m.err;
  EXPECT_NE(m.err.find("MiB of memory available (under the limit in " + cgroup), std::string::npos) << m.err;
  EXPECT_NE(m.err.find("the VM needs 512 MiB"), std::string::npos) << m.err;
  EXPECT_EQ(pr.exit_code, 0) << pr.err;
  EXPECT_NE(pr.out.find("dirty: mib=8"), std::string::npos) << "the source ran its VM to the end: " << pr.out;
  EXPECT_NE(pr.err.find("the secondary refused"), std::string::npos) << pr.err;
}

// A secondary that comes back after an outage with the disk it had: only the blocks
// that changed meanwhile are sent (the primary compares block hashes), and the
// replica still ends identical, disk included. The VM works ~7 s on an idle host
// (8000 operations, 2.3 s, ended before a DPDK newcomer had joined), within 1024
// blocks of the 4096, so that fewer than half can differ.
class Resync : public PairOverChannel {};
TEST_P(Resync, SecondaryBackAfterAnOutageGetsOnlyTheBlocksThatChanged) {
  TwoHosts hosts(GetParam());
  const std::string arbiter = ScratchPath("arbiter");
  ASSERT_EQ(mkdir(arbiter.c_str(), 0755), 0);
  const std::string disk = ScratchPath("resync-primary.img"), replica = ScratchPath("resync-replica.img");
  MakeBlankDisk(disk, 16 << 20);
  Process p = Process::Start(hosts.on_a({FtvmBinary(), "primary", "--listen", hosts.address(), "--arbiter", arbiter,
                                         "--wait-secondary-s", "0", "--guest", GuestImage(), "--disk", disk, "--app",
                                         "disk", "--arg", "ops=24000", "--arg", "seed=3"}),
                             "resync-primary");
  ASSERT_TRUE(WaitForFileContains(p.stderr_path(), "primary.unprotected", seconds(30))) << p.Stderr();
  auto secondary = [&](const char* tag) {
    return Process::Start(hosts.on_b({FtvmBinary(), "secondary", "--connect", hosts.address(), "--arbiter", arbiter,
                                      "--disk", replica, "--console", ScratchPath(std::string(tag) + ".console")}),
                          tag);
  };
  {
    Process first = secondary("resync-first");
    ASSERT_TRUE(WaitForFileContains(first.stderr_path(), "secondary.replicating", seconds(30))) << first.Stderr();
    usleep(500000);
    first.Signal(SIGKILL);  // the outage; the VM goes on writing its disk
    first.Wait(seconds(10));
  }
  ASSERT_TRUE(WaitForFileContains(p.stderr_path(), "primary.UNPROTECTED", seconds(30))) << p.Stderr();
  usleep(300000);
  Process second = secondary("resync-second");
  ProcessResult pr = p.Wait(seconds(180));
  ProcessResult sr = second.Wait(seconds(60));
  ASSERT_EQ(pr.exit_code, 0) << pr.err;
  ASSERT_EQ(sr.exit_code, 0) << sr.err << "\nthe primary's stderr:\n" << pr.err;
  EXPECT_NE(sr.err.find("replica identical"), std::string::npos) << sr.err;
  ExpectChannel(sr.err);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(pr.err, m, std::regex("disk resync: (\\d+) of (\\d+) blocks differed"))) << pr.err;
  const unsigned long differ = std::stoul(m[1]), blocks = std::stoul(m[2]);
  EXPECT_EQ(blocks, 4096u);
  EXPECT_GT(differ, 0u) << "the VM wrote its disk during the outage";
  EXPECT_LT(differ, blocks / 2) << "a resync sends what changed, not the disk";
  EXPECT_TRUE(ReadFile(disk) == ReadFile(replica)) << "the replica's disk differs";
}

// ftvm migrate: a VM moves to another VMM while it runs (memory and disk copied
// live, then a handover), and its results are those of a run that never moved.
// `from_start`: the destination joins as the source's first secondary instead (it
// boots from the image with a copy of the initial disk, replays, and asks for the
// VM once it has caught up). `postcopy`: the VM moves before its memory, which
// follows while it runs on the destination. `timing_from`: the result line's words
// from this one on depend on timing (the `timers` app counts work done between
// ticks), and are not compared.
enum class Move { kLive, kFromStart, kPostcopy };
void MigrateAndCompare(const ChannelCase& channel, const std::vector<std::string>& app, Move how = Move::kLive,
                       const std::string& timing_from = "") {
  const bool from_start = how == Move::kFromStart;
  const std::string arbiter = ScratchPath("arbiter");
  ASSERT_EQ(mkdir(arbiter.c_str(), 0755), 0);
  const std::string disk = ScratchPath("mig-source.img"), baseline_disk = ScratchPath("mig-baseline.img");
  for (const std::string& f : {disk, baseline_disk}) MakeBlankDisk(f, 16 << 20);
  std::vector<std::string> run = {FtvmBinary(), "run", "--guest", GuestImage(), "--disk", baseline_disk};
  run.insert(run.end(), app.begin(), app.end());
  ProcessResult baseline = RunProcess(run, seconds(120), "mig-baseline");
  ASSERT_EQ(baseline.exit_code, 0) << baseline.err;
  ASSERT_FALSE(baseline.out.empty());

  TwoHosts hosts(channel);
  std::vector<std::string> argv = {FtvmBinary(), "primary", "--listen", hosts.address(), "--arbiter", arbiter,
                                   "--guest", GuestImage(), "--disk", disk};
  if (!from_start) argv.insert(argv.end(), {"--wait-secondary-s", "0"});
  argv.insert(argv.end(), app.begin(), app.end());
  const std::string console = ScratchPath("mig.console"), moved_disk = ScratchPath("mig-dest.img");
  if (from_start) MakeBlankDisk(moved_disk, 16 << 20);  // a copy of the source's initial disk
  Process p = Process::Start(hosts.on_a(argv), "mig-source");
  if (!from_start) {
    ASSERT_TRUE(WaitForFileContains(p.stderr_path(), "primary.unprotected", seconds(30))) << p.Stderr();
    usleep(300000);  // the VM has been running for a while
  }
  std::vector<std::string> migrate = {FtvmBinary(), "migrate", "--from", hosts.address(), "--arbiter", arbiter,
                                      "--disk", moved_disk, "--console", console};
  if (how == Move::kPostcopy) migrate.push_back("--postcopy");
  ProcessResult m = RunProcess(hosts.on_b(migrate), seconds(180), "mig-dest");
  ProcessResult pr = p.Wait(seconds(60));
  EXPECT_EQ(pr.exit_code, 4) << "the source stops once the VM runs elsewhere: " << pr.err;
  EXPECT_NE(pr.err.find("handed the VM over"), std::string::npos) << pr.err;
  ASSERT_EQ(m.exit_code, 0) << m.err;
  EXPECT_NE(m.err.find("migrate: the VM ran here"), std::string::npos) << m.err;
  EXPECT_NE(m.err.find(std::string("channel=") + channel.kind), std::string::npos) << m.err;
  if (how == Move::kPostcopy) {
    // Every page arrived after the switch, and what arrived is the memory the VM left.
    std::smatch pc;
    ASSERT_TRUE(std::regex_search(m.err, pc, std::regex("post-copy: (\\d+) of (\\d+) pages arrived"))) << m.err;
    EXPECT_EQ(pc[1], pc[2]);
    EXPECT_EQ(std::stoul(pc[2]), 64u << 8) << "64 MiB of 4 KiB pages";
    EXPECT_NE(m.err.find("memory=verified"), std::string::npos) << m.err;
    EXPECT_NE(pr.err.find("primary.postcopy_done"), std::string::npos) << pr.err;
  }
  // The source printed its part before the move, the destination the rest: the
  // result line comes from the destination and equals the unmoved run's.
  auto deterministic = [&](const std::string& out) {
    return timing_from.empty() ? out : out.substr(0, out.find(timing_from));
  };
  EXPECT_EQ(deterministic(ReadFile(console)), deterministic(baseline.out)) << "source printed: " << pr.out;
  EXPECT_FALSE(ReadFile(console).empty());
  EXPECT_TRUE(ReadFile(moved_disk) == ReadFile(baseline_disk)) << "the moved VM's disk differs from the unmoved run's";
}

class Migrate : public PairOverChannel {};

// The VM writes for 4 s: the move must end before it does, and on a busy host a DPDK
// destination's start and a copy over net_tap (~30 MiB/s) took longer than the 2 s
// this once gave it (the VM ended during its copy).
TEST_P(Migrate, AVmWritingMemory) {
  MigrateAndCompare(GetParam(), {"--app", "dirty", "--arg", "mib=16", "--arg", "mib_per_s=16", "--arg", "seconds=4"});
}
// The VM runs about 2.5 s here, long enough for the destination to start (a DPDK
// destination's EAL and tap take most of a second on a loaded host).
TEST_P(Migrate, AVmWritingItsDisk) {
  MigrateAndCompare(GetParam(), {"--app", "disk", "--arg", "ops=8000", "--arg", "seed=5"});
}
TEST_P(Migrate, ByReplayingFromTheStart) {
  MigrateAndCompare(GetParam(), {"--app", "dirty", "--arg", "mib=16", "--arg", "mib_per_s=16", "--arg", "seconds=2"},
                    Move::kFromStart);
}
// Post-copy: the VM runs on the destination first, fetching each page it touches
// from the source, which pushes the rest meanwhile; its disk went before.
TEST_P(Migrate, AVmWritingItsDiskByPostcopy) {
  MigrateAndCompare(GetParam(), {"--app", "disk", "--arg", "ops=8000", "--arg", "seed=5"}, Move::kPostcopy);
}
// The mail store moves by post-copy under load, and the destination protects it
// again once all its memory has arrived (the drill's host B listens for a secondary).
TEST_P(PairOverChannel, MailStoreMovesByPostcopyUnderLoadLosingNothing) {
  Drill({"--fault", "migrate", "--postcopy"}, 1);
}

// Over one channel (shared memory), the same move while the guest writes its memory
// slowly, about as fast as the copy goes, and faster (the copy throttles it), by
// pre-copy and by post-copy.
const ChannelCase& Shm() { return kChannels[1]; }
class MigrateAtDirtyRate : public testing::TestWithParam<std::tuple<int, Move>> {};
TEST_P(MigrateAtDirtyRate, ResultsEqualAnUnmovedRun) {
  const auto [rate, how] = GetParam();
  MigrateAndCompare(Shm(), {"--app", "dirty", "--arg", "mib=32", "--arg", "mib_per_s=" + std::to_string(rate), "--arg",
                            "seconds=2"},
                    how);
}
INSTANTIATE_TEST_SUITE_P(Pair, MigrateAtDirtyRate,
                         testing::Combine(testing::Values(4, 64, 512), testing::Values(Move::kLive, Move::kPostcopy)),
                         [](const testing::TestParamInfo<std::tuple<int, Move>>& info) {
                           return std::to_string(std::get<0>(info.param)) + "MiBps" +
                                  (std::get<1>(info.param) == Move::kPostcopy ? "Postcopy" : "Precopy");
                         });

// The other guest-kit apps move too, each with the results of a run that never
// moved: a guest computing without a single exit yet, one taking timer interrupts.
// (`exits` prints its own timing, which no two runs share.)
struct AppMove {
  const char* name;
  std::vector<std::string> args;
  Move how;
  const char* timing_from = "";
};
class MigrateEachApp : public testing::TestWithParam<AppMove> {};
TEST_P(MigrateEachApp, ResultsEqualAnUnmovedRun) {
  MigrateAndCompare(Shm(), GetParam().args, GetParam().how, GetParam().timing_from);
}
INSTANTIATE_TEST_SUITE_P(
    Pair, MigrateEachApp,
    testing::Values(AppMove{"compute", {"--app", "compute", "--arg", "iters=12000000"}, Move::kLive},
                    AppMove{"timersPostcopy", {"--app", "timers", "--arg", "ticks=300", "--arg", "period_us=5000"},
                            Move::kPostcopy, " chunks="}),
    [](const testing::TestParamInfo<AppMove>& info) { return std::string(info.param.name); });

// A protected VM moves too: its secondary is released (it stops, saying why), the
// VM runs on at the destination with the results of a run that never moved, and a
// plain secondary that comes meanwhile is told the VM has one already.
TEST(Pair, MigrateAProtectedVm) {
  const std::string arbiter = ScratchPath("arbiter");
  ASSERT_EQ(mkdir(arbiter.c_str(), 0755), 0);
  const std::string sock = ScratchPath("prot.sock"), console = ScratchPath("prot.console");
  const std::vector<std::string> app = {"--app", "dirty", "--arg", "mib=16", "--arg", "mib_per_s=16", "--arg",
                                        "seconds=3"};
  std::vector<std::string> run = {FtvmBinary(), "run", "--guest", GuestImage()};
  run.insert(run.end(), app.begin(), app.end());
  ProcessResult baseline = RunProcess(run, seconds(120), "prot-baseline");
  ASSERT_EQ(baseline.exit_code, 0) << baseline.err;
  std::vector<std::string> argv = {FtvmBinary(), "primary", "--listen", "shm:" + sock, "--arbiter", arbiter,
                                   "--guest", GuestImage()};
  argv.insert(argv.end(), app.begin(), app.end());
  Process p = Process::Start(argv, "prot-primary");
  Process s = Process::Start({FtvmBinary(), "secondary", "--connect", "shm:" + sock, "--arbiter", arbiter, "--console",
                              ScratchPath("prot-secondary.console")},
                             "prot-secondary");
  ASSERT_TRUE(WaitForFileContains(p.stderr_path(), "primary.protected", seconds(30))) << ReadFile(p.stderr_path());
  usleep(300000);
  ProcessResult other = RunProcess({FtvmBinary(), "secondary", "--connect", "shm:" + sock, "--arbiter", arbiter},
                                   seconds(60), "prot-other");
  EXPECT_NE(other.exit_code, 0);
  EXPECT_NE(other.err.find("protected by secondary already"), std::string::npos) << other.err;
  ProcessResult m = RunProcess({FtvmBinary(), "migrate", "--from", "shm:" + sock, "--arbiter", arbiter, "--console",
                                console},
                               seconds(180), "prot-dest");
  ProcessResult pr = p.Wait(seconds(60));
  ProcessResult sr = s.Wait(seconds(60));
  ASSERT_EQ(m.exit_code, 0) << m.err << "\nsource:\n" << pr.err << "\nold secondary:\n" << sr.err;
  EXPECT_EQ(ReadFile(console), baseline.out);
  EXPECT_EQ(pr.exit_code, 4) << pr.err;
  EXPECT_NE(pr.err.find("primary.releasing_secondary"), std::string::npos) << pr.err;
  EXPECT_EQ(sr.exit_code, 0) << sr.err;
  EXPECT_NE(sr.err.find("released by the primary: the VM moves to"), std::string::npos) << sr.err;
}

// The source dies while the destination still misses pages: the VM is lost, and the
// destination says so (exit 5) instead of running on with memory it never got.
TEST(Pair, PostcopyWithTheSourceLostIsTheVmLostNotCorrupted) {
  const std::string arbiter = ScratchPath("arbiter");
  ASSERT_EQ(mkdir(arbiter.c_str(), 0755), 0);
  const std::string sock = ScratchPath("pc.sock"), console = ScratchPath("pc.console");
  // 192 MiB written by the guest: post-copy takes a while to push it.
  Process p = Process::Start({FtvmBinary(), "primary", "--listen", "shm:" + sock, "--arbiter", arbiter,
                              "--wait-secondary-s", "0", "--guest", GuestImage(), "--mem", "256", "--app", "dirty",
                              "--arg", "mib=192", "--arg", "mib_per_s=400", "--arg", "seconds=30"},
                             "pc-source");
  ASSERT_TRUE(WaitForFileContains(p.stderr_path(), "primary.unprotected", seconds(30))) << ReadFile(p.stderr_path());
  usleep(1000000);  // the guest has written its memory
  Process m = Process::Start({FtvmBinary(), "migrate", "--from", "shm:" + sock, "--arbiter", arbiter, "--console",
                              console, "--postcopy"},
                             "pc-dest");
  ASSERT_TRUE(WaitForFileContains(p.stderr_path(), "primary.postcopy ", seconds(60))) << ReadFile(p.stderr_path());
  p.Signal(SIGKILL);
  p.Wait(seconds(10));
  ProcessResult r = m.Wait(seconds(60));
  ASSERT_FALSE(r.timed_out) << "a destination missing pages must not hang: " << r.err;
  EXPECT_EQ(r.exit_code, 5) << r.err;
  EXPECT_NE(r.err.find("THE VM IS LOST"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("pages missing"), std::string::npos) << r.err;
  EXPECT_EQ(ReadFile(console).find("dirty: mib=192"), std::string::npos) << "the lost VM must not finish its run";
}

INSTANTIATE_TEST_SUITE_P(Channels, PairOverChannel, testing::ValuesIn(kChannels), ChannelTestName);
INSTANTIATE_TEST_SUITE_P(Channels, SlowReplica, testing::ValuesIn(kChannels), ChannelTestName);
INSTANTIATE_TEST_SUITE_P(Channels, LiveAttach, testing::ValuesIn(kChannels), ChannelTestName);
INSTANTIATE_TEST_SUITE_P(Channels, Migrate, testing::ValuesIn(kChannels), ChannelTestName);
INSTANTIATE_TEST_SUITE_P(Channels, Resync, testing::ValuesIn(kChannels), ChannelTestName);
INSTANTIATE_TEST_SUITE_P(LinkChannels, PairOverLinkChannel,
                         testing::ValuesIn([] {
                           std::vector<ChannelCase> v;
                           for (const ChannelCase& c : kChannels)
                             if (c.over_the_link) v.push_back(c);
                           return v;
                         }()),
                         ChannelTestName);

// A primary whose would-be secondary misbehaves keeps its VM, unprotected.
class PrimaryWithBadPeer : public testing::Test {
 protected:
  void SetUp() override {
    arbiter_ = ScratchPath("arbiter");
    ASSERT_EQ(mkdir(arbiter_.c_str(), 0755), 0);
    sock_ = ScratchPath("p.sock");
  }
  Process StartPrimary() {
    return Process::Start({FtvmBinary(), "primary", "--listen", "shm:" + sock_, "--arbiter", arbiter_,
                           "--handshake-timeout-s", "1", "--guest", GuestImage(), "--app", "timers", "--arg",
                           "ticks=30", "--arg", "period_us=2000"},
                          "primary");
  }
  std::unique_ptr<transport::Channel> ConnectAsSecondary() {
    for (int i = 0; i < 200; ++i) {
      try {
        return transport::Connect("shm:" + sock_, seconds(5));
      } catch (const std::exception&) {
        usleep(50000);
      }
    }
    ADD_FAILURE() << "the primary never listened";
    return nullptr;
  }
  // The primary ran its guest to the end anyway, and said it was unprotected.
  void ExpectUnprotectedRun(Process& p, const std::string& why) {
    ProcessResult r = p.Wait(seconds(120));
    ASSERT_FALSE(r.timed_out);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("ticks=30 fired=30"), std::string::npos) << r.out;
    EXPECT_NE(r.err.find("primary.unprotected"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(why), std::string::npos) << r.err;
  }
  std::string arbiter_, sock_;
};

TEST_F(PrimaryWithBadPeer, PeerThatNeverAnswersTheHandshake) {
  Process p = StartPrimary();
  auto ch = ConnectAsSecondary();
  ASSERT_TRUE(ch);
  transport::Message hello;
  ASSERT_TRUE(ch->recv(hello, seconds(30)).is_message());
  EXPECT_EQ(hello.type(), replication::kHello);
  // ... and say nothing.
  ExpectUnprotectedRun(p, "did not answer the hello");
}

// ftvm protect --attach is for a VM that runs already; one that waits for its first
// secondary gets a plain `ftvm secondary`.
TEST_F(PrimaryWithBadPeer, AttachToAVmThatHasNotStartedIsRefused) {
  Process p = StartPrimary();
  ProcessResult a = RunProcess({FtvmBinary(), "protect", "--attach", "shm:" + sock_, "--arbiter", arbiter_},
                               seconds(60), "attach");
  EXPECT_EQ(a.exit_code, 125) << a.err;
  EXPECT_NE(a.err.find("has not started yet"), std::string::npos) << a.err;
  ExpectUnprotectedRun(p, "has not started yet");
}

TEST_F(PrimaryWithBadPeer, SecondaryOfAnotherProtocolVersion) {
  Process p = StartPrimary();
  auto ch = ConnectAsSecondary();
  ASSERT_TRUE(ch);
  transport::Message hello;
  ASSERT_TRUE(ch->recv(hello, seconds(30)).is_message());
  replication::HelloReply reply;
  reply.set_protocol_version(replication::kProtocolVersion + 98);
  reply.set_accepted(true);
  const std::string bytes = reply.SerializeAsString();
  ASSERT_TRUE(ch->send(replication::kHelloReply, {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()},
                       seconds(5))
                  .ok());
  ExpectUnprotectedRun(p, "speaks replication protocol " + std::to_string(replication::kProtocolVersion + 98));
}

// A secondary facing a bad primary refuses clearly and never takes over.
class SecondaryWithBadPeer : public testing::Test {
 protected:
  void SetUp() override {
    arbiter_ = ScratchPath("arbiter");
    ASSERT_EQ(mkdir(arbiter_.c_str(), 0755), 0);
    listener_ = transport::Listen("shm:" + ScratchPath("s.sock"));
  }
  Process StartSecondary() {
    return Process::Start({FtvmBinary(), "secondary", "--connect", listener_->address(), "--arbiter", arbiter_},
                          "secondary");
  }
  // A real recording's header and records, to speak to the secondary with.
  void Recording(std::vector<uint8_t>& header, std::vector<uint8_t>& records) {
    const std::string log = ScratchPath("r.ftlog");
    ProcessResult r = RunProcess({FtvmBinary(), "record", "--log", log, "--guest", GuestImage(), "--app", "timers",
                                  "--arg", "ticks=10", "--arg", "period_us=1500"},
                                 seconds(120), "record");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string bytes = ReadFile(log);
    eventlog::LogReader reader = eventlog::LogReader::OpenFile(log);
    const size_t header_size = reader.first_record_offset();
    header.assign(bytes.begin(), bytes.begin() + long(header_size));
    records.assign(bytes.begin() + long(header_size), bytes.end());
  }
  void SendHello(transport::Channel& ch, uint32_t version, const std::vector<uint8_t>& header) {
    replication::Hello hello;
    hello.set_protocol_version(version);
    hello.set_log_header(header.data(), header.size());
    hello.set_generation(1);
    hello.set_heartbeat_interval_ns(10'000'000);
    hello.set_failure_timeout_ns(300'000'000);
    const std::string b = hello.SerializeAsString();
    ASSERT_TRUE(ch.send(replication::kHello, {reinterpret_cast<const uint8_t*>(b.data()), b.size()}, seconds(5)).ok());
  }
  std::string arbiter_;
  std::unique_ptr<transport::Listener> listener_;
};

TEST_F(SecondaryWithBadPeer, PrimaryOfAnotherProtocolVersion) {
  std::vector<uint8_t> header, records;
  Recording(header, records);
  Process s = StartSecondary();
  auto ch = listener_->accept(seconds(30));
  ASSERT_TRUE(ch);
  SendHello(*ch, replication::kProtocolVersion + 41, header);
  transport::Message reply;
  ASSERT_TRUE(ch->recv(reply, seconds(30)).is_message());
  replication::HelloReply hr;
  ASSERT_TRUE(hr.ParseFromArray(reply.payload().data(), int(reply.size())));
  EXPECT_FALSE(hr.accepted());
  EXPECT_NE(hr.reason().find("replication protocol " + std::to_string(replication::kProtocolVersion + 41)),
            std::string::npos)
      << hr.reason();
  ProcessResult r = s.Wait(seconds(30));
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_NE(r.err.find("replication protocol"), std::string::npos) << r.err;
}

TEST_F(SecondaryWithBadPeer, DamagedRecordInTheStreamIsNeverReplayedOrTakenOver) {
  std::vector<uint8_t> header, records;
  Recording(header, records);
  Process s = StartSecondary();
  auto ch = listener_->accept(seconds(30));
  ASSERT_TRUE(ch);
  SendHello(*ch, replication::kProtocolVersion, header);
  transport::Message reply;
  ASSERT_TRUE(ch->recv(reply, seconds(60)).is_message());
  replication::HelloReply hr;
  ASSERT_TRUE(hr.ParseFromArray(reply.payload().data(), int(reply.size())));
  ASSERT_TRUE(hr.accepted()) << hr.reason();
  // The records as the primary sent them, one byte flipped inside the third one (in
  // its CRC: any other byte could make its header unreadable rather than wrong).
  std::vector<uint8_t> whole = header;
  whole.insert(whole.end(), records.begin(), records.end());
  eventlog::LogReader reader = eventlog::LogReader::OpenBuffer(whole);
  eventlog::Record rec;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(reader.next(rec).is_record());
  const size_t third = rec.offset - header.size();
  std::vector<uint8_t> damaged = records;
  damaged[third + rec.stored_bytes - 1] ^= 0x10;
  auto head = replication::EncodeLogDataHeader({header.size(), 1u << 30});
  const std::span<const uint8_t> parts[] = {head, damaged};
  ASSERT_TRUE(ch->send(replication::kLogData, parts, seconds(5)).ok());
  ProcessResult r = s.Wait(seconds(60));
  EXPECT_EQ(r.exit_code, 125) << r.err;
  EXPECT_NE(r.err.find("bad CRC at offset " + std::to_string(header.size() + third)), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("secondary.LIVE"), std::string::npos) << "a replica fed a damaged log must not take over";
  ch.reset();
}

}  // namespace
}  // namespace ftvm::itest
