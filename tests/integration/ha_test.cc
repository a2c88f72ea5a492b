// HA restart (ftvm ha-agent) with real processes: three hosts (network namespaces on
// a LAN bridge), an agent on each, a shared cluster directory. Host A is home of
// two mail stores (mail1 replicated to B, mail2 to C) and of a small third VM
// (mail3, replicated to C, lowest priority). Clients deliver mail to both stores
// with a ledger; then A's agent is killed with SIGKILL (its VMs die with it). Both
// stores must come back, on B and C, with every acknowledged delivery; C, which has
// memory for one VM only, restarts mail2 (priority 5) and skips mail3 (priority 1)
// with a clear line.
#include <gtest/gtest.h>
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <thread>

#include "common/netns.h"
#include "common/unique_fd.h"
#include "tests/support/harness.h"
#include "tests/support/mail_deliverer.h"

namespace ftvm::itest {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Hosts a, b, c and a client, joined by a bridge in a LAN namespace. Each host has a
// bridge of its own joining its LAN link and the taps its VMs may use (ha1, ha2,
// ha3): a VM keeps its address wherever it runs. The bridges do not learn (ageing
// 0): a VM restarted on another host is reached at once, without waiting for a
// stale forwarding entry to age out.
class ClusterNet {
 public:
  ClusterNet() {
    netns::Ip({"-n", lan_.name(), "link", "add", "br0", "type", "bridge", "ageing_time", "0"});
    netns::Ip({"-n", lan_.name(), "link", "set", "br0", "up"});
    int i = 1;
    for (auto& [name, ns] : hosts_) {
      Plug(ns->name(), "p" + name);
      netns::Ip({"-n", ns->name(), "link", "add", "brh", "type", "bridge", "ageing_time", "0"});
      netns::Ip({"-n", ns->name(), "link", "set", "lan0", "master", "brh"});
      for (const char* tap : {"ha1", "ha2", "ha3"}) {
        netns::Ip({"-n", ns->name(), "tuntap", "add", "dev", tap, "mode", "tap"});
        netns::Ip({"-n", ns->name(), "link", "set", tap, "master", "brh"});
        netns::Ip({"-n", ns->name(), "link", "set", tap, "up"});
      }
      netns::Ip({"-n", ns->name(), "addr", "add", HostIp(i++) + "/24", "dev", "brh"});
      netns::Ip({"-n", ns->name(), "link", "set", "brh", "up"});
    }
    Plug(client_.name(), "pcl");
    netns::Ip({"-n", client_.name(), "addr", "add", "10.0.0.10/24", "dev", "lan0"});
  }
  static std::string HostIp(int i) { return "192.168.78." + std::to_string(i); }
  const netns::Namespace& host(const std::string& h) const { return *hosts_.at(h); }
  const netns::Namespace& client() const { return client_; }

 private:
  // A cable from `ns` (its lan0, up) to the LAN bridge (port `port`).
  void Plug(const std::string& ns, const std::string& port) {
    netns::Ip({"link", "add", "lan0", "netns", ns, "type", "veth", "peer", "name", port, "netns", lan_.name()});
    netns::Ip({"-n", lan_.name(), "link", "set", port, "master", "br0"});
    netns::Ip({"-n", lan_.name(), "link", "set", port, "up"});
    netns::Ip({"-n", ns, "link", "set", "lan0", "up"});
  }

  netns::Namespace lan_{"ftha-lan"};
  std::map<std::string, std::unique_ptr<netns::Namespace>> hosts_ = [] {
    std::map<std::string, std::unique_ptr<netns::Namespace>> m;
    for (const char* h : {"a", "b", "c"}) m[h] = std::make_unique<netns::Namespace>(std::string("ftha-") + h);
    return m;
  }();
  netns::Namespace client_{"ftha-cl"};
};

void MakeBlankDisk(const std::string& path, off_t bytes) {
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(ftruncate(fd, bytes), 0) << path;
  close(fd);
}

// Processes whose command line contains `needle` (a VM still running somewhere).
int ProcessesWith(const std::string& needle) {
  int n = 0;
  DIR* d = opendir("/proc");
  while (dirent* e = d ? readdir(d) : nullptr) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::string cmd = ReadFile(std::string("/proc/") + e->d_name + "/cmdline");
    for (char& c : cmd)
      if (c == '\0') c = ' ';
    if (cmd.find(needle) != std::string::npos && cmd.find("ftvm") != std::string::npos) ++n;
  }
  if (d) closedir(d);
  return n;
}

// From now until the store at `ip` answers a ping (from the client namespace, in
// a thread of its own): the wall time of the first answer, 0 if none in `limit`.
class FirstReply {
 public:
  FirstReply(std::string netns, std::string ip, std::chrono::seconds limit)
      : thread_([this, netns = std::move(netns), ip = std::move(ip), limit] {
          try {
            UniqueFd fd(open(("/var/run/netns/" + netns).c_str(), O_RDONLY | O_CLOEXEC));
            if (!fd || setns(fd.get(), CLONE_NEWNET) != 0) return;
            mail::ClientOptions co;
            co.timeout_ms = 20;
            co.retries = 1;
            mail::MailClient client(mail::ParseEndpoint(ip), co);
            const uint64_t end = Deliverer::WallNs() + uint64_t(limit.count()) * 1000000000ull;
            while (Deliverer::WallNs() < end && !stop_) {
              if (client.ping().status == mail::MailStatus::kOk) {
                at_ = Deliverer::WallNs();
                return;
              }
            }
          } catch (const std::exception&) {
          }
        }) {}
  ~FirstReply() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  uint64_t wait() {
    if (thread_.joinable()) thread_.join();
    return at_;
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> at_{0};
  std::thread thread_;
};

class HaTest : public testing::Test {
 protected:
  void WriteVm(const std::string& name, const std::string& app, const std::string& tap, const std::string& ip,
               const std::string& mac, const std::string& replica, int port, int priority, const std::string& extra = "") {
    const std::string disk = disks_[name] = ScratchPath("ha-" + name + ".img");
    MakeBlankDisk(disk, 16 << 20);
    std::ofstream f(cluster_ + "/vms/" + name + ".toml");
    f << "guest = \"" << GuestImage() << "\"\napp = \"" << app << "\"\ndisk = \"" << disk << "\"\ntap = \"" << tap
      << "\"\nip = \"" << ip << "/24\"\nmac = \"" << mac << "\"\n" << extra << "\n[ha]\nhome = \"a\"\nreplica = \"" << replica
      << "\"\nreplica_port = " << port << "\npriority = " << priority << "\nmem_mib = 64\n";
  }

  // `own_mounts`: the agent runs in a mount namespace of its own (private
  // propagation), where the test can take the cluster directory away from it alone.
  Process StartAgent(const std::string& host, int index, const std::string& mem_mib, bool own_mounts = false) {
    std::string peers;
    int i = 1;
    for (const char* h : {"a", "b", "c"}) {
      if (host != h) peers += std::string(peers.empty() ? "" : ",") + h + "=" + ClusterNet::HostIp(i) + ":7400";
      ++i;
    }
    const std::string data = ScratchPath("ha-data-" + host);
    data_[host] = data;
    std::vector<std::string> argv = {FtvmBinary(), "ha-agent", "--name", host, "--cluster", cluster_,
                                     "--listen", ClusterNet::HostIp(index) + ":7400", "--peers", peers,
                                     "--data", data, "--mem-mib", mem_mib, "--heartbeat-ms", "100",
                                     "--failure-timeout-ms", "1000"};
    // unshare execs the agent: the process's pid is the agent's.
    if (own_mounts) argv.insert(argv.begin(), {"unshare", "--mount", "--propagation", "private"});
    Process p = Process::Start(net_.host(host).wrap(argv), "agent-" + host);
    EXPECT_TRUE(WaitForFileContains(p.stderr_path(), "up,", seconds(20))) << p.Stderr();
    return p;
  }

  ProcessResult Mail(const std::string& ip, std::vector<std::string> args) {
    std::vector<std::string> argv = {FtvmBinary(), "mail"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--to", ip, "--timeout-ms", "2000", "--retries", "5"});
    return RunProcess(net_.client().wrap(argv), seconds(60), "mail");
  }

  // Every acknowledged delivery to `box` at `ip` is there, in order.
  void ExpectLedger(const std::string& ip, const std::string& box, size_t acked, uint64_t attempted) {
    ProcessResult c = Mail(ip, {"count", "--mailbox", box});
    ASSERT_EQ(c.exit_code, 0) << c.err;
    const uint64_t count = std::stoull(c.out);
    std::printf("ha: %s: %zu acknowledged, %llu stored, %llu attempted\n", box.c_str(), acked,
                static_cast<unsigned long long>(count), static_cast<unsigned long long>(attempted));
    EXPECT_GE(count, acked) << "an acknowledged delivery to " << box << " is lost";
    EXPECT_LE(count, attempted);
    for (uint64_t i : {uint64_t(0), count / 2, count - 1}) {
      if (count == 0) break;
      ProcessResult r = Mail(ip, {"fetch", "--mailbox", box, "--index", std::to_string(i)});
      EXPECT_EQ(r.out, "body-" + std::to_string(i)) << box << " message " << i << " of " << count;
    }
  }

  ClusterNet net_;
  std::string cluster_ = ScratchPath("ha-cluster");
  std::map<std::string, std::string> data_;
  std::map<std::string, std::string> disks_;  // each VM's image on its home host
};

TEST_F(HaTest, KilledHostsVmsRestartOnTheirReplicaHostsWithTheirAcknowledgedMail) {
  for (const char* d : {"", "/vms"}) ASSERT_EQ(mkdir((cluster_ + d).c_str(), 0755), 0);
  WriteVm("mail1", "mailstore", "ha1", "10.0.0.21", "52:54:00:00:78:21", "b", 7501, 10);
  WriteVm("mail2", "mailstore", "ha2", "10.0.0.22", "52:54:00:00:78:22", "c", 7502, 5);
  // Small and short-lived: it writes a few blocks and powers off; only its place in
  // the restart order matters.
  WriteVm("mail3", "disk", "ha3", "10.0.0.23", "52:54:00:00:78:23", "c", 7503, 1, "arg = [\"ops=4\"]");

  Process b = StartAgent("b", 2, "512");
  Process c = StartAgent("c", 3, "100");  // room for one 64 MiB VM
  Process a = StartAgent("a", 1, "512");
  for (const char* vm : {"mail1", "mail2"}) {
    ASSERT_TRUE(WaitForFileContains(data_["a"] + "/" + vm + ".console", "mailstore: ready", seconds(120)))
        << vm << " did not start on a:\n" << a.Stderr() << ReadFile(data_["a"] + "/" + vm + ".log");
    ASSERT_TRUE(WaitForFileContains(data_["a"] + "/" + vm + ".log", "dr.caught_up", seconds(60)))
        << ReadFile(data_["a"] + "/" + vm + ".log");
  }
  EXPECT_NE(ReadFile(data_["a"] + "/mail1.log").find("dr.sync"), std::string::npos) << "the VMs mirror synchronously";

  Deliverer load1(net_.client().name(), "10.0.0.21", "ha1"), load2(net_.client().name(), "10.0.0.22", "ha2");
  load1.start();
  load2.start();
  std::this_thread::sleep_for(seconds(3));
  const uint64_t killed_at = Deliverer::WallNs();
  a.Signal(SIGKILL);  // host A dies; its VMs die with it (PR_SET_PDEATHSIG)
  a.Wait(seconds(10));
  // Once the old mail1 is gone (a few ms), any answer comes from the restarted one.
  for (int i = 0; i < 500 && ProcessesWith(disks_["mail1"]) != 0; ++i) std::this_thread::sleep_for(milliseconds(10));
  ASSERT_EQ(ProcessesWith(disks_["mail1"]), 0) << "mail1 outlived its host";
  FirstReply first_reply(net_.client().name(), "10.0.0.21", seconds(150));
  load1.stop();
  load2.stop();
  ASSERT_GT(load1.acked().size(), 2u) << load1.error();
  ASSERT_GT(load2.acked().size(), 2u) << load2.error();
  // The old host cannot still run them.
  std::this_thread::sleep_for(milliseconds(500));
  EXPECT_EQ(ProcessesWith(disks_["mail1"]), 0) << "a VM of the dead host still runs";
  EXPECT_EQ(ProcessesWith(disks_["mail2"]), 0) << "a VM of the dead host still runs";

  ASSERT_TRUE(WaitForFileContains(data_["b"] + "/mail1.console", "mailstore: ready", seconds(120)))
      << b.Stderr() << ReadFile(data_["b"] + "/mail1.log");
  ASSERT_TRUE(WaitForFileContains(data_["c"] + "/mail2.console", "mailstore: ready", seconds(120)))
      << c.Stderr() << ReadFile(data_["c"] + "/mail2.log");
  const uint64_t replied_at = first_reply.wait();
  ASSERT_NE(replied_at, 0u) << "the restarted mail1 never answered a ping";
  // The bench (bench/ha.sh) reads this line.
  std::printf("ha: host death -> first reply from restarted mail1: %.0f ms\n", double(replied_at - killed_at) / 1e6);

  // The agent's restart event, with its detection time (for bench/ha.sh).
  const std::string b_err = b.Stderr();
  const size_t ev = b_err.find("ha.restart");
  ASSERT_NE(ev, std::string::npos) << b_err;
  std::printf("ha: %s\n", b_err.substr(ev, b_err.find('\n', ev) - ev).c_str());
  EXPECT_NE(b.Stderr().find("host a is dead"), std::string::npos) << b.Stderr();
  EXPECT_NE(b.Stderr().find("restarting mail1"), std::string::npos) << b.Stderr();
  EXPECT_NE(c.Stderr().find("restarting mail2"), std::string::npos) << c.Stderr();
  // Priority and placement: C had room for one; mail2 (priority 5) went first.
  EXPECT_NE(c.Stderr().find("NOT restarting mail3 here: it needs 64 MiB, this host has 36 MiB free"), std::string::npos)
      << c.Stderr();
  EXPECT_EQ(c.Stderr().find("ha-agent c: restarting mail3"), std::string::npos) << c.Stderr();
  EXPECT_EQ(b.Stderr().find("ha-agent b: restarting mail2"), std::string::npos) << "only the replica host restarts a VM";
  // The arbiter: generation 2 of each restarted VM, held by its new host.
  EXPECT_EQ(ReadFile(cluster_ + "/arbiter/mail1/generation-2"), "b\n");
  EXPECT_EQ(ReadFile(cluster_ + "/arbiter/mail2/generation-2"), "c\n");

  ExpectLedger("10.0.0.21", "ha1", load1.acked().size(), load1.attempted());
  ExpectLedger("10.0.0.22", "ha2", load2.acked().size(), load2.attempted());

  // Host A comes back: its VMs run elsewhere now, so it must not start them.
  Process a2 = StartAgent("a", 1, "512");
  EXPECT_TRUE(WaitForFileContains(a2.stderr_path(), "not starting mail1: generation 2 is held by b", seconds(10)))
      << a2.Stderr();
  EXPECT_TRUE(WaitForFileContains(b.stderr_path(), "host a is back", seconds(10))) << b.Stderr();
  for (Process* p : {&a2, &b, &c}) {
    p->Signal(SIGTERM);
    EXPECT_EQ(p->Wait(seconds(30)).exit_code, 0);
  }
}


// The lease rule, without VMs: a host cut off the network that still renews its lease
// (the cluster directory) is isolated, not dead, so nobody takes its VMs; once it
// stops renewing (its agent killed) it is declared dead.
TEST_F(HaTest, AnIsolatedHostThatRenewsItsLeaseIsNotDeclaredDead) {
  for (const char* d : {"", "/vms"}) ASSERT_EQ(mkdir((cluster_ + d).c_str(), 0755), 0);
  Process b = StartAgent("b", 2, "512");
  Process c = StartAgent("c", 3, "512");
  Process a = StartAgent("a", 1, "512");
  std::this_thread::sleep_for(milliseconds(500));  // everyone heard everyone
  netns::Ip({"-n", net_.host("a").name(), "link", "set", "lan0", "down"});
  std::this_thread::sleep_for(seconds(3));  // three failure timeouts of silence
  EXPECT_EQ(b.Stderr().find("host a is dead"), std::string::npos) << b.Stderr();
  EXPECT_EQ(c.Stderr().find("host a is dead"), std::string::npos) << c.Stderr();
  a.Signal(SIGKILL);  // now its lease goes stale too
  a.Wait(seconds(10));
  EXPECT_TRUE(WaitForFileContains(b.stderr_path(), "host a is dead", seconds(10))) << b.Stderr();
  EXPECT_TRUE(WaitForFileContains(c.stderr_path(), "host a is dead", seconds(10))) << c.Stderr();
  for (Process* p : {&b, &c}) {
    p->Signal(SIGTERM);
    EXPECT_EQ(p->Wait(seconds(30)).exit_code, 0);
  }
}
// Seconds since midnight UTC of the log line (text format: "HH:MM:SS.micros LEVEL
// event ...") that carries `event` in `text`; -1 when there is none.
double LineTime(const std::string& text, const std::string& event) {
  const size_t at = text.find(" " + event + " ");
  if (at == std::string::npos) return -1;
  const size_t bol = text.rfind('\n', at);
  const std::string line = text.substr(bol == std::string::npos ? 0 : bol + 1, 15);
  int h = 0, m = 0;
  double sec = 0;
  if (std::sscanf(line.c_str(), "%d:%d:%lf", &h, &m, &sec) != 3) return -1;
  return h * 3600.0 + m * 60.0 + sec;
}

// Self-fencing: host A's agent runs in a mount namespace of its own, where the
// cluster directory's hosts/ is then remounted read-only (A's path to the shared
// storage fails; its network does not, so it could go on beating). A must kill its
// VM before its lease expires and fall silent; B then declares A dead and restarts
// mail1 from its replica with every acknowledged delivery. A's storage comes back
// right after the fence (a short outage): A stays silent until B has taken it for
// dead, then renews its lease again and starts nothing.
TEST_F(HaTest, AHostThatCannotRenewItsLeaseFencesItselfAndTheReplicaHostRestartsItsVm) {
  for (const char* d : {"", "/vms"}) ASSERT_EQ(mkdir((cluster_ + d).c_str(), 0755), 0);
  WriteVm("mail1", "mailstore", "ha1", "10.0.0.21", "52:54:00:00:78:21", "b", 7501, 10);
  Process b = StartAgent("b", 2, "512");
  Process a = StartAgent("a", 1, "512", /*own_mounts=*/true);
  ASSERT_TRUE(WaitForFileContains(data_["a"] + "/mail1.console", "mailstore: ready", seconds(120)))
      << a.Stderr() << ReadFile(data_["a"] + "/mail1.log");
  ASSERT_TRUE(WaitForFileContains(data_["a"] + "/mail1.log", "dr.caught_up", seconds(60)))
      << ReadFile(data_["a"] + "/mail1.log");
  ASSERT_EQ(ProcessesWith(disks_["mail1"]), 1);

  Deliverer load1(net_.client().name(), "10.0.0.21", "ha1");
  load1.start();
  std::this_thread::sleep_for(seconds(3));
  // A's view of hosts/ turns read-only; everyone else's (this test's, B's) stays.
  const std::string hosts = cluster_ + "/hosts", pid = std::to_string(a.pid());
  ProcessResult ro = RunProcess({"nsenter", "-t", pid, "-m", "--", "sh", "-c",
                                 "mount --bind " + hosts + " " + hosts + " && mount -o remount,bind,ro " + hosts},
                                seconds(10), "remount-ro");
  ASSERT_EQ(ro.exit_code, 0) << ro.err;
  ASSERT_TRUE(WaitForFileContains(a.stderr_path(), "ha.self_fence", seconds(10))) << a.Stderr();
  // The event is logged once the VM has been reaped.
  EXPECT_EQ(ProcessesWith(disks_["mail1"]), 0) << "mail1 runs on after its host fenced itself";
  EXPECT_NE(a.Stderr().find("killing this host's 1 VMs (self-fencing)"), std::string::npos) << a.Stderr();
  EXPECT_NE(a.Stderr().find("Read-only file system"), std::string::npos) << a.Stderr();
  EXPECT_TRUE(a.Running()) << "the agent itself stays up";
  // A short outage: A's storage is back at once. A must stay silent until B has
  // taken it for dead, or nobody would restart the VM it killed.
  ProcessResult rw = RunProcess({"nsenter", "-t", pid, "-m", "--", "umount", hosts}, seconds(10), "remount-rw");
  ASSERT_EQ(rw.exit_code, 0) << rw.err;

  ASSERT_TRUE(WaitForFileContains(b.stderr_path(), "host a is dead", seconds(20))) << b.Stderr();
  // Exactly one copy: A had fenced before B could take it for dead.
  const double fenced_at = LineTime(a.Stderr(), "ha.self_fence"), dead_at = LineTime(b.Stderr(), "ha.host_dead");
  ASSERT_GE(fenced_at, 0) << a.Stderr();
  ASSERT_GE(dead_at, 0) << b.Stderr();
  EXPECT_LT(std::fmod(dead_at - fenced_at + 86400, 86400), 43200) << "B declared A dead before A fenced itself\n"
                                                                    << a.Stderr() << b.Stderr();
  for (const auto& [text, event] : {std::pair{a.Stderr(), "ha.self_fence"}, std::pair{b.Stderr(), "ha.host_dead"}}) {
    const size_t at = text.find(event);
    std::printf("ha: %s\n", text.substr(at, text.find('\n', at) - at).c_str());
  }
  load1.stop();
  ASSERT_GT(load1.acked().size(), 2u) << load1.error();
  ASSERT_TRUE(WaitForFileContains(data_["b"] + "/mail1.console", "mailstore: ready", seconds(120)))
      << b.Stderr() << ReadFile(data_["b"] + "/mail1.log");
  EXPECT_EQ(ReadFile(cluster_ + "/arbiter/mail1/generation-2"), "b\n");
  ExpectLedger("10.0.0.21", "ha1", load1.acked().size(), load1.attempted());

  // After that A renews and beats again, and starts nothing.
  EXPECT_TRUE(WaitForFileContains(a.stderr_path(), "the lease is renewed again", seconds(10))) << a.Stderr();
  const double renewed_at = LineTime(a.Stderr(), "ha.lease_renewed");
  ASSERT_GE(renewed_at, 0) << a.Stderr();
  EXPECT_LT(std::fmod(renewed_at - dead_at + 86400, 86400), 43200) << "A renewed its lease before B took it for dead\n"
                                                                      << a.Stderr() << b.Stderr();
  EXPECT_TRUE(WaitForFileContains(b.stderr_path(), "host a is back", seconds(10))) << b.Stderr();
  EXPECT_EQ(ProcessesWith(disks_["mail1"]), 0) << "A started mail1 again although B holds it";
  for (Process* p : {&a, &b}) {
    p->Signal(SIGTERM);
    EXPECT_EQ(p->Wait(seconds(30)).exit_code, 0);
  }
}

}  // namespace
}  // namespace ftvm::itest
