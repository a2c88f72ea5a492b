#include "tools/ftvm/drill.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "common/command.h"
#include "common/error.h"
#include "common/log.h"
#include "common/netns.h"
#include "common/unique_fd.h"
#include "tools/ftvm/link_relay.h"
#include "tools/ftvm/mail_client.h"

namespace ftvm::drill {
namespace {

using Clock = std::chrono::steady_clock;

uint64_t NowNs() {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A child process with stdout/stderr in files; SIGKILLed and reaped if still running
// when destroyed.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::string& out, const std::string& err) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_ = fork();
    if (pid_ < 0) throw SysError("fork");
    if (pid_ == 0) {
      int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (o < 0 || e < 0) _exit(126);
      dup2(o, 1);
      dup2(e, 2);
      // The drill follows the pair through its info lines, whatever level the
      // operator asked the drill itself for.
      setenv("FTVM_LOG", "info", 1);
      execvp(args[0], args.data());
      _exit(127);
    }
  }
  ~Child() {
    if (pid_ > 0 && !status_) {
      kill(pid_, SIGKILL);
      int st;
      waitpid(pid_, &st, 0);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  void signal(int sig) {
    if (!status_) kill(pid_, sig);
  }
  bool running() {
    poll();
    return !status_;
  }
  // Exit code (128+signal when killed), or nullopt if still running after `ms`.
  std::optional<int> wait(int ms) {
    const uint64_t deadline = NowNs() + uint64_t(ms) * 1000000;
    for (;;) {
      poll();
      if (status_) return *status_;
      if (NowNs() >= deadline) return std::nullopt;
      usleep(5000);
    }
  }

 private:
  void poll() {
    if (status_ || pid_ <= 0) return;
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) == pid_) status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// For a failed round's message: how a process stands, and the last lines of its
// stderr, with runs of one repeated line (a DPDK driver retrying) shown once.
std::string Describe(const std::string& name, Child& child, const std::string& err_path, size_t lines = 8) {
  std::string state = "running";
  if (std::optional<int> code = child.wait(0)) {
    state = *code > 128 ? "killed by signal " + std::to_string(*code - 128) : "exited with " + std::to_string(*code);
  }
  std::vector<std::pair<std::string, int>> kept;  // line, times in a row
  std::istringstream in(ReadAll(err_path));
  for (std::string line; std::getline(in, line);) {
    if (!kept.empty() && kept.back().first == line) {
      ++kept.back().second;
    } else {
      kept.emplace_back(line, 1);
    }
  }
  std::string out = "\n  " + name + " (" + state + "), the end of its stderr:";
  for (size_t i = kept.size() > lines ? kept.size() - lines : 0; i < kept.size(); ++i) {
    out += "\n    " + kept[i].first.substr(0, 400);
    if (kept[i].second > 1) out += "  [x" + std::to_string(kept[i].second) + "]";
  }
  return out;
}

void MustRun(const std::vector<std::string>& argv) {
  try {
    RunCommandOrThrow(argv);
  } catch (const Error& e) {
    throw Error(std::string("drill setup: ") + e.what());
  }
}

// Host A, host B, the client and the LAN that joins them (see drill.h). For the
// dpdk-af_packet channel also a cable of its own between A and B for the logging
// channel (interface ftlog0 on each, MTU 9000), as VMware FT has a NIC of its own for
// it; for dpdk-tap, taps ftlog0..2 on each host's bridge, so that the channel crosses
// the LAN (one tap per channel: a second process on a multi-queue tap would get a
// share of the first one's frames).
class DrillNet {
 public:
  DrillNet(std::string prefix, const std::string& channel) : p_(std::move(prefix)) {
    Down();
    for (const char* n : {"lan", "a", "b", "c"}) {
      MustRun({"ip", "netns", "add", ns(n)});
      MustRun({"ip", "-n", ns(n), "link", "set", "lo", "up"});
    }
    MustRun({"ip", "-n", ns("lan"), "link", "add", "br0", "type", "bridge"});
    MustRun({"ip", "-n", ns("lan"), "link", "set", "br0", "up"});
    for (const char* h : {"a", "b", "c"}) {
      const std::string port = std::string("p") + h;
      MustRun({"ip", "link", "add", "lan0", "netns", ns(h), "type", "veth", "peer", "name", port, "netns", ns("lan")});
      MustRun({"ip", "-n", ns("lan"), "link", "set", port, "master", "br0"});
      MustRun({"ip", "-n", ns("lan"), "link", "set", port, "up"});
    }
    int i = 1;
    for (const char* h : {"a", "b"}) {
      MustRun({"ip", "-n", ns(h), "link", "add", "brh", "type", "bridge"});
      MustRun({"ip", "-n", ns(h), "link", "set", "lan0", "master", "brh"});
      MustRun({"ip", "-n", ns(h), "tuntap", "add", "dev", "vmtap", "mode", "tap"});
      MustRun({"ip", "-n", ns(h), "link", "set", "vmtap", "master", "brh"});
      MustRun({"ip", "-n", ns(h), "addr", "add", host_ip(i) + "/24", "dev", "brh"});
      for (const char* d : {"brh", "lan0", "vmtap"}) MustRun({"ip", "-n", ns(h), "link", "set", d, "up"});
      ++i;
    }
    MustRun({"ip", "-n", ns("c"), "addr", "add", "10.0.0.10/24", "dev", "lan0"});
    // The witness both hosts check before taking the VM (failover/witness.h).
    MustRun({"ip", "-n", ns("c"), "addr", "add", kWitness + std::string("/24"), "dev", "lan0"});
    MustRun({"ip", "-n", ns("c"), "link", "set", "lan0", "up"});
    if (channel == "dpdk-af_packet") {
      log_link_.emplace(netns::VethPair::End{ns("a"), kLoggingLink, ""}, netns::VethPair::End{ns("b"), kLoggingLink, ""});
    }
    for (const char* h : {"a", "b"}) {
      for (int i = 0; channel == "dpdk-tap" && i < 3; ++i) {
        const std::string tap = LoggingTap(i);
        MustRun({"ip", "-n", ns(h), "tuntap", "add", "dev", tap, "mode", "tap", "multi_queue"});
        MustRun({"ip", "-n", ns(h), "link", "set", tap, "master", "brh"});
        MustRun({"ip", "-n", ns(h), "link", "set", tap, "up"});
      }
    }
  }
  ~DrillNet() {
    log_link_.reset();
    Down();
  }

  std::string ns(const std::string& n) const { return p_ + "-" + n; }
  static std::string host_ip(int i) { return "192.168.77." + std::to_string(i); }
  static constexpr const char* kWitness = "192.168.77.100";
  static constexpr const char* kLoggingLink = "ftlog0";
  static std::string LoggingTap(int number) { return "ftlog" + std::to_string(number); }
  // Pulls the host's cables: its LAN link and its logging link.
  void CutLink(const char* host) {
    MustRun({"ip", "-n", ns(host), "link", "set", "lan0", "down"});
    if (log_link_) MustRun({"ip", "-n", ns(host), "link", "set", kLoggingLink, "down"});
  }

 private:
  void Down() {
    for (const char* n : {"lan", "a", "b", "c"}) {
      Child c({"ip", "netns", "del", ns(n)}, "/dev/null", "/dev/null");
      c.wait(10000);
    }
  }
  std::string p_;
  std::optional<netns::VethPair> log_link_;
};

struct Delivery {
  std::string msgid, mailbox, body;
  bool acked = false;
};

// The client: workers delivering (and fetching) with exactly-once retries.
class Load {
 public:
  Load(const std::string& netns, int round, int workers, double rate, uint64_t seed)
      : netns_(netns), round_(round), rate_(rate), seed_(seed), workers_(size_t(workers)) {}
  ~Load() { stop(); }  // a round that ends early (an error) still joins its workers
  Load(const Load&) = delete;
  Load& operator=(const Load&) = delete;

  void start() {
    for (size_t w = 0; w < workers_.size(); ++w) threads_.emplace_back([this, w] { Worker(w); });
  }
  void stop() {
    stop_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  // Marks the fault: counts requests outstanding now; replies from now on (after a
  // guard for frames already on their way) measure recovery.
  uint64_t fault(uint64_t at_ns) {
    first_after_ = 0;
    fault_ns_ = at_ns;
    uint64_t busy = 0;
    for (auto& w : workers_) busy += w.busy.load() ? 1 : 0;
    return busy;
  }
  uint64_t first_reply_after_fault_ns() const { return first_after_.load(); }
  uint64_t completed() const {
    uint64_t n = 0;
    for (const auto& w : workers_) n += w.completed;
    return n;
  }
  uint64_t timeouts() const {
    uint64_t n = 0;
    for (const auto& w : workers_) n += w.timeouts;
    return n;
  }
  std::vector<Delivery> deliveries() const {
    std::vector<Delivery> all;
    for (const auto& w : workers_) all.insert(all.end(), w.log.begin(), w.log.end());
    return all;
  }
  std::string error() const {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }

 private:
  struct WorkerState {
    std::atomic<bool> busy{false};
    uint64_t completed = 0, timeouts = 0;
    std::vector<Delivery> log;
  };

  void Worker(size_t w) {
    try {
      netns::Enter(netns_);
      mail::ClientOptions co;
      co.timeout_ms = 30;
      co.retries = 200;  // 6 s: longer than any failover
      mail::MailClient client(mail::ParseEndpoint("10.0.0.2"), co);
      std::mt19937_64 rng(seed_ * 1000 + w);
      WorkerState& me = workers_[w];
      const double per_worker = rate_ / double(workers_.size());
      const uint64_t gap_ns = per_worker > 0 ? uint64_t(1e9 / per_worker) : 1000000;
      uint64_t next = NowNs();
      for (uint64_t seq = 0; !stop_; ++seq) {
        const uint64_t now = NowNs();
        if (now < next) usleep(unsigned((next - now) / 1000));
        next += gap_ns;
        me.busy = true;
        mail::MailResult r;
        const bool deliver = rng() % 10 < 7 || me.log.empty();
        if (deliver) {
          Delivery d;
          d.msgid = "r" + std::to_string(round_) + "w" + std::to_string(w) + "n" + std::to_string(seq);
          d.mailbox = "box" + std::to_string(rng() % 8);
          d.body = "round " + std::to_string(round_) + " worker " + std::to_string(w) + " message " +
                   std::to_string(seq) + " " + std::string(40 + rng() % 60, char('a' + rng() % 26));
          r = client.deliver(d.msgid, d.mailbox, d.body);
          d.acked = r.status == mail::MailStatus::kOk || r.status == mail::MailStatus::kDuplicate;
          me.log.push_back(std::move(d));
        } else {
          r = client.count("box" + std::to_string(rng() % 8));
        }
        me.busy = false;
        const uint64_t done = NowNs();
        if (r.status == mail::MailStatus::kTimeout) {
          ++me.timeouts;
          continue;
        }
        ++me.completed;
        const uint64_t f = fault_ns_.load();
        // Frames the dead side had already released may still arrive for a moment.
        if (f != 0 && done > f + 2'000'000) {
          uint64_t prev = first_after_.load();
          while ((prev == 0 || done < prev) && !first_after_.compare_exchange_weak(prev, done)) {
          }
        }
      }
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(mu_);
      if (error_.empty()) error_ = e.what();
    }
  }

  std::string netns_;
  int round_;
  double rate_;
  uint64_t seed_;
  std::vector<WorkerState> workers_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> fault_ns_{0};
  std::atomic<uint64_t> first_after_{0};
  mutable std::mutex mu_;
  std::string error_;
};

// Reads every mailbox back and checks it against the ledger.
void Verify(const std::string& netns, const std::vector<Delivery>& ledger, RoundReport& r) {
  std::string problem;
  std::thread t([&] {
    try {
      netns::Enter(netns);
      mail::ClientOptions co;
      co.timeout_ms = 100;
      co.retries = 30;
      mail::MailClient client(mail::ParseEndpoint("10.0.0.2"), co);
      std::map<std::string, const Delivery*> by_id;
      for (const Delivery& d : ledger) by_id[d.msgid] = &d;
      std::map<std::string, int> seen;
      for (int b = 0; b < 8; ++b) {
        const std::string box = "box" + std::to_string(b);
        mail::MailResult c = client.count(box);
        if (!c.ok()) {
          problem = "cannot count " + box + " after the fault: " + mail::StatusName(c.status) + " " + c.error;
          return;
        }
        for (uint64_t i = 0; i < c.count; ++i) {
          mail::MailResult m = client.fetch(box, i);
          if (!m.ok()) {
            problem = "cannot fetch " + box + "[" + std::to_string(i) + "]: " + mail::StatusName(m.status);
            return;
          }
          ++seen[m.msgid];
          auto it = by_id.find(m.msgid);
          if (it == by_id.end() || it->second->body != m.body || it->second->mailbox != box) ++r.unexpected;
        }
      }
      for (const auto& [id, n] : seen)
        if (n > 1) r.duplicates += uint64_t(n - 1);
      for (const Delivery& d : ledger) {
        if (!d.acked) continue;
        ++r.acked;
        if (!seen.count(d.msgid)) ++r.lost;
      }
    } catch (const std::exception& e) {
      problem = std::string("verifying the mailboxes: ") + e.what();
    }
  });
  t.join();
  r.contents_match = problem.empty() && r.lost == 0 && r.duplicates == 0 && r.unexpected == 0;
  if (!problem.empty() && r.problem.empty()) r.problem = problem;
}

bool Interrupted(const DrillOptions& o) { return o.interrupted != nullptr && o.interrupted->load(); }

// Sleeps `seconds`, or throws once the drill is interrupted (the round's objects
// then clean up as they go).
void Pause(const DrillOptions& o, double seconds) {
  const uint64_t until = NowNs() + uint64_t(seconds * 1e9);
  for (uint64_t now = NowNs(); now < until; now = NowNs()) {
    if (Interrupted(o)) throw Error("the drill was interrupted");
    usleep(unsigned(std::min<uint64_t>(until - now, 20000000) / 1000));
  }
}

// Waits up to `ms` for cond(); gives up early once `hopeless()` says it cannot come.
bool WaitFor(const std::function<bool()>& cond, int ms, const std::function<bool()>& hopeless = {}) {
  const uint64_t deadline = NowNs() + uint64_t(ms) * 1000000;
  while (NowNs() < deadline) {
    if (cond()) return true;
    if (hopeless && hopeless()) break;
    usleep(10000);
  }
  return cond();
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// Where host `host` (1: A, 2: B) listens for the logging channel, and where the
// other host connects: the pair's channel is number 0, re-protection's 1 and 2. tcp
// runs over the hosts' LAN, and so does dpdk-tap (a tap per channel on each host's
// bridge); dpdk-af_packet over their logging link, where one interface serves one
// channel at a time (host B listens for its new secondary after its channel to the
// dead primary is gone); the others are set up through a Unix socket, which both
// "hosts" (namespaces of this machine) see (dpdk: net_memif's control socket).
std::string ChannelAddress(const std::string& channel, const std::string& dir, int host, int number) {
  const std::string sock = dir + "/channel" + std::to_string(number) + ".sock";
  if (channel == "tcp") return "tcp:" + DrillNet::host_ip(host) + ":" + std::to_string(7000 + number);
  if (channel == "dpdk") return "dpdk:memif:" + sock + ";abstract=no";
  if (channel == "dpdk-af_packet") return std::string("dpdk:af_packet:") + DrillNet::kLoggingLink;
  if (channel == "dpdk-tap") return "dpdk:tap:" + DrillNet::LoggingTap(number);
  return channel + ":" + sock;
}

// A file system of its own for host B's disk (a tmpfs of `bytes`), for the disk-full
// fault: fill() takes all the space left, so that the secondary's next write to a
// block its image has not held before fails with ENOSPC. Unmounted when destroyed.
class SmallFilesystem {
 public:
  SmallFilesystem(std::string dir, uint64_t bytes) : dir_(std::move(dir)) {
    mkdir(dir_.c_str(), 0755);
    const std::string size = "size=" + std::to_string(bytes);
    if (mount("ftvm-drill", dir_.c_str(), "tmpfs", 0, size.c_str()) != 0)
      throw SysError("drill: mounting a " + std::to_string(bytes >> 20) + " MiB tmpfs on " + dir_);
  }
  ~SmallFilesystem() { umount2(dir_.c_str(), MNT_DETACH); }
  SmallFilesystem(const SmallFilesystem&) = delete;
  SmallFilesystem& operator=(const SmallFilesystem&) = delete;

  // Takes the space left: at once if the file system lets a file reserve all of it,
  // else by writing until it is full (ENOSPC is the point).
  void fill() {
    struct statvfs st{};
    if (statvfs(dir_.c_str(), &st) != 0) throw SysError("drill: statvfs " + dir_);
    UniqueFd fd(open((dir_ + "/filler").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
    if (!fd) throw SysError("drill: a filler file in " + dir_);
    const off_t left = off_t(st.f_bavail) * off_t(st.f_frsize);
    if (left > 0 && posix_fallocate(fd.get(), 0, left) == 0) return;
    const std::vector<char> block(1 << 20, 'x');
    for (off_t at = 0;;) {
      const ssize_t n = pwrite(fd.get(), block.data(), block.size(), at);
      if (n > 0) {
        at += n;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno != ENOSPC) throw SysError("drill: filling " + dir_);
      return;
    }
  }

 private:
  std::string dir_;
};

// Drops `percent` of the logging channel's packets between host `netns` and
// `peer_ip`:`port` (both ways, chosen at random per packet) while it exists: real
// loss, which the kernel's TCP then retransmits. nftables rules in that namespace.
class PacketLoss {
 public:
  PacketLoss(std::string netns, const std::string& peer_ip, int port, double percent) : netns_(std::move(netns)) {
    const int per_mille = int(percent * 10 + 0.5);
    const std::string p = std::to_string(port), n = std::to_string(per_mille);
    const std::string rules =
        "table inet ftvm_drill_loss {\n"
        "  chain in {\n"
        "    type filter hook input priority 0; policy accept;\n"
        "    ip saddr " + peer_ip + " tcp sport " + p + " numgen random mod 1000 < " + n + " counter drop\n"
        "    ip saddr " + peer_ip + " tcp dport " + p + " numgen random mod 1000 < " + n + " counter drop\n"
        "  }\n"
        "  chain out {\n"
        "    type filter hook output priority 0; policy accept;\n"
        "    ip daddr " + peer_ip + " tcp dport " + p + " numgen random mod 1000 < " + n + " counter drop\n"
        "    ip daddr " + peer_ip + " tcp sport " + p + " numgen random mod 1000 < " + n + " counter drop\n"
        "  }\n"
        "}\n";
    const std::string file = "/tmp/ftvm-drill-loss-" + netns_ + ".nft";
    {
      std::ofstream f(file);
      f << rules;
      if (!f) throw SysError("drill: writing " + file);
    }
    Nft({"-f", file});
    unlink(file.c_str());
  }
  ~PacketLoss() {
    try {
      Nft({"delete", "table", "inet", "ftvm_drill_loss"});
    } catch (const std::exception& e) {
      log::warn("drill.loss_rules_left", {{"netns", netns_}, {"error", e.what()}});
    }
  }
  PacketLoss(const PacketLoss&) = delete;
  PacketLoss& operator=(const PacketLoss&) = delete;

  // Packets dropped so far, both ways (the rules' counters).
  uint64_t dropped() {
    std::istringstream in(Nft({"list", "table", "inet", "ftvm_drill_loss"}));
    uint64_t total = 0;
    for (std::string word; in >> word;) {
      if (word != "packets") continue;
      uint64_t n = 0;
      if (in >> n) total += n;
    }
    return total;
  }

 private:
  // `nft ARGS` in the namespace: what it printed; throws with it when it fails.
  std::string Nft(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"ip", "netns", "exec", netns_, "nft"};
    argv.insert(argv.end(), args.begin(), args.end());
    try {
      return RunCommandOrThrow(argv);
    } catch (const Error& e) {
      throw Error(std::string("drill: ") + e.what() + " (is the nftables package installed?)");
    }
  }

  std::string netns_;
};

RoundReport RunRound(const DrillOptions& o, int round, const FaultPlan& plan, std::mt19937_64& rng) {
  RoundReport r;
  r.round = round;
  const Fault fault = plan.fault;
  r.fault = fault;
  const std::string dir = o.workdir + "/round" + std::to_string(round);
  mkdir(dir.c_str(), 0755);
  const std::string arbiter = dir + "/arbiter";
  mkdir(arbiter.c_str(), 0755);
  std::optional<SmallFilesystem> host_b_fs;  // disk-full: host B's disk lives there
  if (fault == Fault::kSecondaryDiskFull) host_b_fs.emplace(dir + "/hostb", 64u << 20);
  const std::string disk_a = dir + "/diskA.img", disk_b = dir + (host_b_fs ? "/hostb/diskB.img" : "/diskB.img");
  for (const std::string& d : {disk_a, disk_b}) {
    UniqueFd fd(open(d.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644));
    if (!fd || ftruncate(fd.get(), 32 << 20) != 0) throw SysError("drill: disk image " + d);
  }
  DrillNet net("fdr" + std::to_string(getpid() % 100000), o.channel);
  const std::string address = ChannelAddress(o.channel, dir, 1, 0);
  // slow-link and corrupt-log: host B reaches the primary through a relay on host B
  // that plays the faulty link.
  std::unique_ptr<LinkRelay> relay;
  if (IsLinkFault(fault) && o.channel != "tcp") throw Error(std::string("drill: fault ") + std::string(FaultName(fault)) + " needs --channel tcp");
  if (fault == Fault::kSlowLink || fault == Fault::kCorruptLog)
    relay = std::make_unique<LinkRelay>(net.ns("b"), 7100, DrillNet::host_ip(1), 7000);
  const std::string b_connects_to = relay ? "tcp:127.0.0.1:7100" : address;
  std::optional<PacketLoss> loss;
  std::vector<std::string> pargs = {"ip", "netns", "exec", net.ns("a"), o.ftvm, "primary", "--listen", address,
                                    "--arbiter", arbiter, "--name", "hostA", "--guest", o.guest, "--app",
                                    "mailstore", "--disk", disk_a, "--tap", "vmtap", "--ip",
                                    "10.0.0.2/24", "--console", dir + "/primary.console", "--witness",
                                    DrillNet::kWitness};
  for (const std::string& a : Split(o.extra_primary_args)) pargs.push_back(a);
  if (fault == Fault::kMigrate) pargs.insert(pargs.end(), {"--wait-secondary-s", "0"});  // runs alone
  Child primary(pargs, dir + "/primary.out", dir + "/primary.err");
  const std::string reprotect_address = ChannelAddress(o.channel, dir, 2, 1);
  // Host B: a secondary from the start; for a migration, `ftvm migrate` at the fault.
  const bool migrate = fault == Fault::kMigrate;
  auto start_b = [&] {
    std::vector<std::string> args = {"ip", "netns", "exec", net.ns("b"), o.ftvm, migrate ? "migrate" : "secondary",
                                     migrate ? "--from" : "--connect", b_connects_to, "--arbiter", arbiter, "--name", "hostB",
                                     "--disk", disk_b, "--tap", "vmtap", "--console",
                                     dir + "/secondary.console", "--witness", DrillNet::kWitness, "--listen",
                                     reprotect_address};
    if (migrate && o.postcopy) args.push_back("--postcopy");
    return std::make_unique<Child>(args, dir + "/secondary.out", dir + "/secondary.err");
  };
  std::unique_ptr<Child> secondary = migrate ? nullptr : start_b();
  std::unique_ptr<Child> third;  // --reprotect: host A back, as the survivor's new secondary
  auto start_third = [&] {
    // A standby gets a disk of its own (host A's VM still runs on diskA.img until
    // the fault); host A coming back brings the disk it had.
    return std::make_unique<Child>(
        std::vector<std::string>{"ip", "netns", "exec", net.ns("a"), o.ftvm, "secondary", "--connect",
                                 reprotect_address, "--arbiter", arbiter, "--name", "hostA2", "--disk",
                                 dir + (o.standby ? "/diskA2.img" : "/diskA.img"), "--tap", "vmtap", "--console",
                                 dir + "/third.console", "--witness", DrillNet::kWitness, "--listen",
                                 ChannelAddress(o.channel, dir, 1, 2), "--connect-timeout-s", "600"},
        dir + "/third.out", dir + "/third.err");
  };
  auto fail = [&](const std::string& why) {
    if (Interrupted(o)) throw Error("the drill was interrupted");
    r.problem = why;
    return r;
  };
  // Gives up at once when the drill is interrupted.
  auto wait_for = [&](const std::function<bool()>& cond, int ms, const std::function<bool()>& hopeless = {}) {
    return WaitFor(cond, ms, [&] { return Interrupted(o) || (hopeless && hopeless()); });
  };
  if (!wait_for([&] {
        return ReadAll(dir + "/primary.err").find(migrate ? "primary.unprotected" : "primary.protected") !=
               std::string::npos;
      }, 60000))
    return fail("the pair did not form:" + Describe("primary", primary, dir + "/primary.err") +
                (secondary ? Describe("secondary", *secondary, dir + "/secondary.err") : ""));
  if (!wait_for([&] { return ReadAll(dir + "/primary.console").find("mailstore: ready") != std::string::npos; }, 60000))
    return fail("the mail store did not start");

  Load load(net.ns("c"), round, o.workers, o.rate, rng());
  const uint64_t t0 = NowNs();
  if (o.reprotect && o.standby) third = start_third();  // waits for a survivor to join
  load.start();
  std::uniform_real_distribution<double> when(o.min_before_s, o.max_before_s);
  r.fault_at_s = when(rng);
  Pause(o, r.fault_at_s);
  switch (fault) {
    case Fault::kKillPrimary: primary.signal(SIGKILL); break;
    case Fault::kKillSecondary: secondary->signal(SIGKILL); break;
    case Fault::kCutPrimaryLink: net.CutLink("a"); break;  // takes an `ip` command: ~10 ms
    case Fault::kMigrate: secondary = start_b(); break;   // the VM moves to host B, under load
    case Fault::kStopPrimary: primary.signal(SIGSTOP); break;
    case Fault::kStopSecondary: secondary->signal(SIGSTOP); break;
    case Fault::kSecondaryDiskFull: host_b_fs->fill(); break;
    case Fault::kArbiterAway:
      if (rename(arbiter.c_str(), (arbiter + ".away").c_str()) != 0) throw SysError("drill: moving the arbiter away");
      primary.signal(SIGKILL);
      break;
    case Fault::kSlowLink: relay->set_delay_ms(o.link_delay_ms); break;
    case Fault::kLossyLink: loss.emplace(net.ns("b"), DrillNet::host_ip(1), 7000, o.link_loss_percent); break;
    case Fault::kCorruptLog: relay->corrupt_next(rng()); break;
  }
  // The fault has happened once the call returned: count from here.
  const uint64_t fault_ns = NowNs();
  r.in_flight = load.fault(fault_ns);
  // A stop or an outage (plan.stop_s): then the stalled host, or the arbiter, is back.
  if (plan.stop_s > 0) {
    r.stop_ms = 1000 * plan.stop_s;
    Pause(o, r.stop_ms / 1000);
    if (fault == Fault::kArbiterAway) {
      if (rename((arbiter + ".away").c_str(), arbiter.c_str()) != 0) throw SysError("drill: bringing the arbiter back");
    } else if (fault == Fault::kSlowLink) {
      relay->set_delay_ms(0);
    } else if (fault == Fault::kLossyLink) {
      log::info("drill.link_loss_ended", {{"dropped_packets", loss->dropped()}, {"ms", r.stop_ms}});
      loss.reset();
    } else {
      (fault == Fault::kStopPrimary ? primary : *secondary).signal(SIGCONT);
    }
  }
  // A migration is done when the source has handed the VM over and stopped.
  if (migrate && !primary.wait(60000)) {
    load.stop();
    return fail("the VM did not move:" + Describe("source", primary, dir + "/primary.err") +
                Describe("destination", *secondary, dir + "/secondary.err"));
  }
  Pause(o, o.after_s);
  if (uint64_t first = load.first_reply_after_fault_ns(); first != 0) r.recovery_ms = double(first - fault_ns) / 1e6;
  if (o.reprotect && fault == Fault::kKillPrimary) {
    // Host A comes back and joins the running VM on B as its secondary, with the
    // disk it had: only the blocks that differ from B's travel. (A standby has been
    // waiting since before the fault, and joins by itself.)
    const uint64_t t1 = o.standby ? fault_ns : NowNs();
    if (!third) third = start_third();
    // A survivor that died (it must not) ends the wait at once.
    if (!wait_for([&] { return ReadAll(dir + "/secondary.err").find("primary.reprotected") != std::string::npos; },
                 60000, [&] { return !secondary->running(); })) {
      load.stop();
      return fail("the survivor was not protected again:" + Describe("survivor", *secondary, dir + "/secondary.err") +
                  Describe("newcomer", *third, dir + "/third.err"));
    }
    r.reprotect_ms = double(NowNs() - t1) / 1e6;
    Pause(o, o.after_s);
    const uint64_t second_fault = NowNs();
    load.fault(second_fault);
    secondary->signal(SIGKILL);
    Pause(o, o.after_s);
    if (uint64_t first = load.first_reply_after_fault_ns(); first != 0)
      r.recovery2_ms = double(first - second_fault) / 1e6;
  }
  load.stop();
  (void)t0;
  if (!load.error().empty()) return fail("client: " + load.error());
  r.requests = load.completed();
  r.client_timeouts = load.timeouts();

  // Who serves now: exactly one.
  const std::string perr = ReadAll(dir + "/primary.err"), serr = ReadAll(dir + "/secondary.err");
  switch (fault) {
    case Fault::kArbiterAway:
    case Fault::kKillPrimary:
      if (third) {
        r.survivor = "host A again";
        r.one_live = !primary.running() && !secondary->running() && third->running() &&
                     ReadAll(dir + "/third.err").find("secondary.LIVE") != std::string::npos;
      } else {
        r.survivor = "secondary";
        r.one_live = !primary.running() && secondary->running() && serr.find("secondary.LIVE") != std::string::npos;
      }
      break;
    case Fault::kKillSecondary:
      r.survivor = "primary";
      r.one_live = primary.running() && !secondary->running() && perr.find("primary.UNPROTECTED") != std::string::npos;
      break;
    case Fault::kMigrate: {
      std::optional<int> code = primary.wait(5000);
      r.survivor = "host B (migrated)";
      r.one_live = code == 4 && secondary->running() && perr.find("primary.handed_over") != std::string::npos &&
                   serr.find("secondary.LIVE") != std::string::npos;
      break;
    }
    case Fault::kCutPrimaryLink: {
      // The cut-off primary must give up its VM (it lost the arbiter).
      std::optional<int> code = primary.wait(5000);
      r.survivor = "secondary";
      r.one_live = code == 4 && secondary->running() &&
                   ReadAll(dir + "/secondary.err").find("secondary.LIVE") != std::string::npos;
      break;
    }
    case Fault::kSecondaryDiskFull: {
      // The primary goes on alone; the secondary stopped with the reason (no crash,
      // no takeover).
      std::optional<int> code = secondary->wait(10000);
      const std::string why = ReadAll(dir + "/secondary.err");
      r.survivor = "primary";
      r.one_live = primary.running() && code && *code < 128 && why.find("secondary.LIVE") == std::string::npos &&
                   why.find("No space left on device") != std::string::npos;
      if (!r.one_live)
        r.problem = "after host B's disk filled up:" + Describe("primary", primary, dir + "/primary.err") +
                    Describe("secondary", *secondary, dir + "/secondary.err");
      break;
    }
    case Fault::kCorruptLog: {
      // The secondary found the damage and stopped on it, without a takeover; the
      // primary runs on alone.
      std::optional<int> code = secondary->wait(10000);
      r.survivor = "primary";
      r.one_live = relay->corrupted() && primary.running() && code && *code < 128 &&
                   serr.find("secondary.LIVE") == std::string::npos &&
                   ReadAll(dir + "/secondary.err").find("secondary.bad_stream") != std::string::npos &&
                   ReadAll(dir + "/primary.err").find("primary.UNPROTECTED") != std::string::npos;
      if (!r.one_live)
        r.problem = std::string("after a bit flipped in the log stream") + (relay->corrupted() ? "" : " (it never was)") +
                    ":" + Describe("primary", primary, dir + "/primary.err") +
                    Describe("secondary", *secondary, dir + "/secondary.err");
      break;
    }
    case Fault::kStopPrimary:
    case Fault::kStopSecondary:
    case Fault::kSlowLink:
    case Fault::kLossyLink: {
      // Either may serve now (a long stop of the primary is a failover), but exactly
      // one: a secondary that went live means the primary gave the VM up (exit 4),
      // and the one that does not serve either replicates still or stood down (exit
      // 4); nothing else, no crash. A slow or lossy link is the same question: it may
      // look like a stalled peer to either side.
      const bool secondary_live = serr.find("secondary.LIVE") != std::string::npos;
      r.failover = secondary_live;
      Child& live = secondary_live ? *secondary : primary;
      Child& other = secondary_live ? primary : *secondary;
      std::optional<int> other_code = other.wait(secondary_live ? 5000 : 0);
      r.survivor = secondary_live ? "secondary" : "primary";
      r.one_live = live.running() && (!other_code || *other_code == 4) && (!secondary_live || other_code == 4);
      if (!r.one_live) {
        r.problem = "after " + std::string(FaultName(fault)) + " for " + std::to_string(int(r.stop_ms)) +
                    " ms, not exactly one live VM:" +
                    Describe("primary", primary, dir + "/primary.err") +
                    Describe("secondary", *secondary, dir + "/secondary.err");
      }
      break;
    }
  }
  if (fault == Fault::kKillPrimary || fault == Fault::kCutPrimaryLink || fault == Fault::kMigrate ||
      fault == Fault::kArbiterAway)
    r.failover = true;
  Verify(net.ns("c"), load.deliveries(), r);
  if (r.problem.empty()) {
    if (!r.one_live) r.problem = "not exactly one live VM after the fault (see " + dir + ")";
    else if (r.lost > 0) r.problem = std::to_string(r.lost) + " acknowledged messages lost";
    else if (r.duplicates > 0) r.problem = std::to_string(r.duplicates) + " duplicate messages";
    else if (r.unexpected > 0) r.problem = std::to_string(r.unexpected) + " unexpected messages";
    else if (r.recovery_ms < 0) r.problem = "no request was answered after the fault";
    else if (third && r.recovery2_ms < 0) r.problem = "no request was answered after the second fault";
  }
  primary.signal(SIGTERM);
  secondary->signal(SIGTERM);
  if (third) third->signal(SIGTERM);
  primary.wait(10000);
  secondary->wait(10000);
  if (third) third->wait(10000);
  if (!o.keep && r.ok()) {
    for (const std::string& f : {disk_a, disk_b}) unlink(f.c_str());
  }
  return r;
}

}  // namespace

std::string_view FaultName(Fault f) {
  switch (f) {
    case Fault::kKillPrimary: return "kill-primary";
    case Fault::kKillSecondary: return "kill-secondary";
    case Fault::kCutPrimaryLink: return "cut-link";
    case Fault::kMigrate: return "migrate";
    case Fault::kStopPrimary: return "stop-primary";
    case Fault::kStopSecondary: return "stop-secondary";
    case Fault::kArbiterAway: return "arbiter-away";
    case Fault::kSecondaryDiskFull: return "secondary-disk-full";
    case Fault::kSlowLink: return "slow-link";
    case Fault::kLossyLink: return "lossy-link";
    case Fault::kCorruptLog: return "corrupt-log";
  }
  return "?";
}

bool ParseFault(std::string_view text, Fault& out) {
  for (Fault f : {Fault::kKillPrimary, Fault::kKillSecondary, Fault::kCutPrimaryLink, Fault::kMigrate,
                  Fault::kStopPrimary, Fault::kStopSecondary, Fault::kArbiterAway, Fault::kSecondaryDiskFull,
                  Fault::kSlowLink, Fault::kLossyLink, Fault::kCorruptLog}) {
    if (text == FaultName(f)) {
      out = f;
      return true;
    }
  }
  return false;
}

bool IsLinkFault(Fault f) { return f == Fault::kSlowLink || f == Fault::kLossyLink || f == Fault::kCorruptLog; }

bool ChannelGoesOverALink(const std::string& channel) {
  return channel == "tcp" || channel == "dpdk-af_packet" || channel == "dpdk-tap";
}

std::vector<FaultPlan> ChaosFaults(const DrillOptions& o) {
  std::vector<FaultPlan> f = {{Fault::kKillPrimary},
                              {Fault::kKillSecondary},
                              {Fault::kStopPrimary, o.short_stop_s},
                              {Fault::kStopPrimary, o.long_stop_s},
                              {Fault::kStopSecondary, o.short_stop_s},
                              {Fault::kStopSecondary, o.long_stop_s},
                              {Fault::kArbiterAway, o.long_stop_s},
                              {Fault::kSecondaryDiskFull}};
  if (ChannelGoesOverALink(o.channel)) f.push_back({Fault::kCutPrimaryLink});
  if (o.channel == "tcp") {
    f.push_back({Fault::kSlowLink, o.long_stop_s});
    f.push_back({Fault::kLossyLink, o.long_stop_s});
    f.push_back({Fault::kCorruptLog});
  }
  return f;
}

DrillReport RunDrill(const DrillOptions& options) {
  if (geteuid() != 0) throw Error("ftvm drill needs root (network namespaces and taps)");
  if (access(options.ftvm.c_str(), X_OK) != 0) throw SysError("ftvm binary " + options.ftvm);
  if (access(options.guest.c_str(), R_OK) != 0) throw SysError("guest image " + options.guest);
  mkdir(options.workdir.c_str(), 0755);
  DrillReport report;
  report.seed = options.seed != 0 ? options.seed : NowNs();
  std::mt19937_64 rng(report.seed);
  const bool stop = options.fault == Fault::kStopPrimary || options.fault == Fault::kStopSecondary ||
                    options.fault == Fault::kSlowLink || options.fault == Fault::kLossyLink;
  const FaultPlan fixed{options.fault, stop || options.fault == Fault::kArbiterAway ? options.long_stop_s : 0};
  std::vector<FaultPlan> bag;  // chaos: what is left of the current shuffled set
  for (int i = 1; i <= options.rounds && !Interrupted(options); ++i) {
    if (options.random_fault && bag.empty()) {
      bag = ChaosFaults(options);
      std::shuffle(bag.begin(), bag.end(), rng);
    }
    const FaultPlan plan = options.random_fault ? bag.back() : fixed;
    if (options.random_fault) bag.pop_back();
    RoundReport r;
    try {
      r = RunRound(options, i, plan, rng);
    } catch (const std::exception& e) {
      // A round that could not be run (a command or the file system refused) is a
      // failed round with the reason; the next rounds still run.
      r = RoundReport{};
      r.round = i;
      r.fault = plan.fault;
      r.problem = std::string("the round could not run: ") + e.what();
    }
    log::info("drill.round", {{"round", i},
                              {"fault", FaultName(r.fault)},
                              {"recovery_ms", r.recovery_ms},
                              {"lost", r.lost},
                              {"duplicates", r.duplicates},
                              {"ok", r.ok()},
                              {"problem", r.problem.empty() ? "-" : r.problem}});
    if (options.on_round) options.on_round(r);
    report.rounds.push_back(std::move(r));
  }
  return report;
}

}  // namespace ftvm::drill
