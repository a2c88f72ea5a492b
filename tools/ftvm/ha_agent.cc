#include "tools/ftvm/ha_agent.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <toml++/toml.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "failover/arbiter.h"
#include "failover/liveness.h"
#include "tools/ftvm/commands.h"
#include "tools/ftvm/config.h"
#include "tools/ftvm/ha_wire.h"
#include "tools/ftvm/vm_runner.h"

namespace ftvm::cli {
namespace po = boost::program_options;

namespace {

std::string At(const std::string& file, const toml::node& n, const std::string& key) {
  return file + ":" + std::to_string(n.source().begin.line) + ": key '" + key + "': ";
}

std::string Stem(const std::string& path) {
  std::string base = path.substr(path.find_last_of('/') + 1);
  const size_t dot = base.rfind('.');
  return dot == std::string::npos ? base : base.substr(0, dot);
}

std::string SelfExe() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw SysError("readlink /proc/self/exe");
  return std::string(buf, size_t(n));
}

}  // namespace

HaVm LoadHaVm(const std::string& file) {
  if (::access(file.c_str(), R_OK) != 0) throw SysError("VM file " + file);
  toml::table table;
  try {
    table = toml::parse_file(file);
  } catch (const toml::parse_error& e) {
    throw Error(file + ":" + std::to_string(e.source().begin.line) + ": not TOML: " + std::string(e.description()));
  }
  HaVm vm;
  vm.file = file;
  vm.name = Stem(file);
  DecodeHaTable(table, file, vm);
  // The rest is `ftvm run`'s: checked as `ftvm run --config FILE` would (its errors
  // name the line and key).
  std::unique_ptr<CommandOptions> run = MakeCommandOptions("run");
  const po::options_description run_desc = run->describe();
  (void)LoadConfig(file, "run", run_desc);
  for (auto&& [k, n] : table) {
    const std::string key(k.str());
    if (key == "ha") continue;
    if (!n.is_table() && run_desc.find_nothrow(key, false) == nullptr)
      throw Error(At(file, n, key) + "unknown key: ftvm run has no --" + key + " (the VM runs as ftvm run / dr-start)");
    if (n.is_table())
      throw Error(At(file, n, key) + "ftvm ha-agent reads `ftvm run` options at the top level only (no [" + key + "] table)");
    if (key == "disk") {
      vm.disk = n.value_or(std::string());
      continue;
    }
    // The agent names these itself: where the console goes, the DR target.
    if (key == "console" || key == "dr-target" || key == "dr-sync")
      throw Error(At(file, n, key) + "is set by ftvm ha-agent (the console goes to its --data directory, the disk is "
                                     "mirrored synchronously to the [ha] replica host)");
    auto token = [&](const toml::node& v) -> std::string {
      if (auto s = v.as_string()) return s->get();
      if (auto i = v.as_integer()) return std::to_string(i->get());
      if (auto f = v.as_floating_point()) return std::to_string(f->get());
      throw Error(At(file, v, key) + "has a value ftvm ha-agent cannot pass on");
    };
    if (const auto* b = n.as_boolean()) {
      if (b->get()) vm.run_args.push_back("--" + key);
    } else if (const auto* a = n.as_array()) {
      for (const toml::node& e : *a) vm.run_args.insert(vm.run_args.end(), {"--" + key, token(e)});
    } else {
      vm.run_args.insert(vm.run_args.end(), {"--" + key, token(n)});
    }
  }
  if (vm.disk.empty()) throw Error(file + ": key 'disk' is missing: HA restart needs the VM's disk (it is replicated)");
  return vm;
}

std::vector<HaPeer> ParseHaPeers(const std::string& list) {
  std::vector<HaPeer> out;
  size_t at = 0;
  while (at < list.size()) {
    size_t end = list.find(',', at);
    if (end == std::string::npos) end = list.size();
    const std::string item = list.substr(at, end - at);
    at = end + 1;
    const size_t eq = item.find('='), colon = item.rfind(':');
    if (eq == std::string::npos || eq == 0 || colon == std::string::npos || colon < eq)
      throw Error("--peers: '" + item + "' is not NAME=IP:PORT");
    HaPeer p;
    p.name = item.substr(0, eq);
    p.ip = item.substr(eq + 1, colon - eq - 1);
    in_addr a{};
    if (inet_pton(AF_INET, p.ip.c_str(), &a) != 1) throw Error("--peers: '" + p.ip + "' in '" + item + "' is not an IPv4 address");
    const std::string port = item.substr(colon + 1);
    if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos || std::stoul(port) == 0 ||
        std::stoul(port) > 65535)
      throw Error("--peers: '" + port + "' in '" + item + "' is not a port");
    p.port = unsigned(std::stoul(port));
    for (const HaPeer& q : out)
      if (q.name == p.name) throw Error("--peers: host '" + p.name + "' is named twice");
    out.push_back(p);
  }
  return out;
}

namespace {

struct AgentOptions {
  std::string name, cluster, listen, peers, data;
  uint64_t mem_mib = 1024;
  double heartbeat_ms = 100, failure_timeout_ms = 1000, lease_timeout_ms = 0;
  double sync_timeout_s = 3;
};

sockaddr_in Addr(const std::string& ip, unsigned port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
  return a;
}

class Agent {
 public:
  Agent(AgentOptions o, Clock& clock) : o_(std::move(o)), clock_(clock), self_exe_(SelfExe()) {
    if (o_.lease_timeout_ms <= 0) o_.lease_timeout_ms = o_.failure_timeout_ms;
    std::vector<HaPeer> me;
    try {
      me = ParseHaPeers(o_.name + "=" + o_.listen);
    } catch (const Error&) {
      throw Error("--listen '" + o_.listen + "' is not IPv4:PORT");
    }
    my_ip_ = me[0].ip;
    for (const HaPeer& p : ParseHaPeers(o_.peers)) {
      if (p.name == o_.name) throw Error("--peers names this host '" + o_.name + "'");
      failover::LivenessOptions lo;
      lo.heartbeat_interval_ns = uint64_t(o_.heartbeat_ms * 1e6);
      lo.failure_timeout_ns = uint64_t(o_.failure_timeout_ms * 1e6);
      peers_.emplace(p.name, std::make_unique<Peer>(p, clock_, lo));
    }
    for (const char* sub : {"", "/vms", "/hosts", "/arbiter"}) {
      const std::string d = o_.cluster + sub;
      if (::mkdir(d.c_str(), 0755) != 0 && errno != EEXIST) throw SysError("cluster directory " + d);
    }
    if (::mkdir(o_.data.c_str(), 0755) != 0 && errno != EEXIST) throw SysError("--data " + o_.data);
    LoadVms();
    fd_ = UniqueFd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd_) throw SysError("UDP socket");
    const sockaddr_in a = Addr(my_ip_, me[0].port);
    if (::bind(fd_.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) throw SysError("binding " + o_.listen);
  }

  int run() {
    lease_renewed_ns_ = clock_.monotonic_ns();  // nothing to fence yet: no VM runs
    (void)RenewLease();
    if (lease_failing_) throw Error("cannot write this host's lease " + LeasePath(o_.name) + " (see the line above)");
    StartReplicas();
    StartHomeVms();
    std::fprintf(stderr, "ha-agent %s: up, %zu peers, %zu VMs in %s, %llu MiB for VMs\n", o_.name.c_str(), peers_.size(),
                 vms_.size(), o_.cluster.c_str(), static_cast<unsigned long long>(o_.mem_mib));
    uint64_t next_beat = 0;
    while (!stopping_) {
      const uint64_t now = clock_.monotonic_ns();
      if (now >= next_beat) {
        // A host beats only while it holds its lease: one that has fenced itself
        // falls silent, so the others restart its VMs once its lease has expired.
        if (RenewLease()) Beat();
        Reap();
        CheckPeers();
        next_beat = now + uint64_t(o_.heartbeat_ms * 1e6);
      } else if (now >= NextSilenceExpiry(now) || now >= lease_recheck_ns_) {
        CheckPeers();  // at the moment a peer's silence or lease passes its timeout
      }
      pollfd p{fd_.get(), POLLIN, 0};
      const uint64_t wake = std::min({next_beat, NextSilenceExpiry(clock_.monotonic_ns()), lease_recheck_ns_});
      const int wait_ms = int(std::max<uint64_t>(1, (wake - std::min(wake, clock_.monotonic_ns()) + 999999) / 1000000));
      if (::poll(&p, 1, wait_ms) > 0) Receive();
    }
    StopAll();
    return 0;
  }
  void stop() { stopping_ = true; }

 private:
  struct Peer {
    Peer(HaPeer p, Clock& c, const failover::LivenessOptions& lo) : info(std::move(p)), liveness(c, lo) {}
    HaPeer info;
    failover::PeerLiveness liveness;
    bool heard_once = false;
    bool dead = false;
  };
  struct Child {
    pid_t pid = -1;
    bool vm = false;  // a VM (else a replica)
    uint64_t mem_mib = 0;
    std::string log;
  };

  void LoadVms() {
    const std::string dir = o_.cluster + "/vms";
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) throw SysError("cluster directory " + dir);
    std::vector<std::string> files;
    while (dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n.size() > 5 && n.substr(n.size() - 5) == ".toml") files.push_back(dir + "/" + n);
    }
    ::closedir(d);
    std::sort(files.begin(), files.end());
    for (const std::string& f : files) {
      HaVm vm = LoadHaVm(f);
      const std::pair<const char*, std::string> hosts[] = {{"ha.home", vm.home}, {"ha.replica", vm.replica}};
      for (const auto& [key, host] : hosts)
        if (host != o_.name && !peers_.count(host))
          throw Error(f + ": key '" + key + "': host '" + host + "' is neither this host (" + o_.name +
                      ") nor one of its --peers");
      vms_.push_back(std::move(vm));
    }
  }

  std::string HostIp(const std::string& host) const {
    return host == o_.name ? my_ip_ : peers_.at(host)->info.ip;
  }
  std::string ReplicaAddress(const HaVm& vm) const {
    return "tcp:" + HostIp(vm.replica) + ":" + std::to_string(vm.replica_port);
  }
  std::string ReplicaDir(const HaVm& vm) const { return o_.data + "/" + vm.name + ".replica"; }

  std::unique_ptr<failover::Arbiter> ArbiterOf(const HaVm& vm) {
    const std::string d = o_.cluster + "/arbiter/" + vm.name;
    if (::mkdir(d.c_str(), 0755) != 0 && errno != EEXIST) throw SysError("arbiter directory " + d);
    return failover::MakeDirectoryArbiter(d);
  }
  // Who holds the VM's newest generation ("" when none was ever claimed).
  std::string Holder(failover::Arbiter& a, uint64_t& generation) {
    generation = a.current_generation();
    if (generation == 0) return "";
    std::string holder;
    (void)a.try_claim(generation, o_.name, &holder);  // it exists: answers who has it
    return holder;
  }

  pid_t Spawn(const std::vector<std::string>& args, const std::string& log) {
    const pid_t parent = ::getpid();
    const pid_t child = ::fork();
    if (child < 0) throw SysError("fork");
    if (child == 0) {
      // The agent is the host: what it runs dies with it.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) _exit(1);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      std::vector<char*> argv;
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      _exit(127);
    }
    return child;
  }

  void StartReplica(const HaVm& vm) {
    Child c;
    c.log = o_.data + "/" + vm.name + ".replica.log";
    c.pid = Spawn({self_exe_, "dr-replica", "--listen", ReplicaAddress(vm), "--dir", ReplicaDir(vm)}, c.log);
    log::info("ha.replica_started", {{"vm", vm.name}, {"listen", ReplicaAddress(vm)}, {"pid", int64_t(c.pid)}});
    replicas_[vm.name] = c;
  }
  void StartReplicas() {
    for (const HaVm& vm : vms_)
      if (vm.replica == o_.name) StartReplica(vm);
  }

  std::vector<std::string> VmArgs(const HaVm& vm) const {
    std::vector<std::string> a = vm.run_args;
    a.insert(a.end(), {"--console", o_.data + "/" + vm.name + ".console"});
    return a;
  }

  void StartHomeVms() {
    for (const HaVm& vm : vms_) {
      if (vm.home != o_.name) continue;
      auto arbiter = ArbiterOf(vm);
      uint64_t gen = 0;
      const std::string holder = Holder(*arbiter, gen);
      if (gen == 0) {
        std::string other;
        if (!arbiter->try_claim(1, o_.name, &other)) {
          log::warn("ha.not_started", {{"vm", vm.name}, {"reason", "generation 1 is held by " + other}});
          continue;
        }
        gen = 1;
      } else if (holder != o_.name) {
        // Restarted elsewhere while this host was away: it is not ours any more.
        log::warn("ha.not_started", {{"vm", vm.name}, {"generation", gen}, {"holder", holder}});
        std::fprintf(stderr, "ha-agent %s: not starting %s: generation %llu is held by %s\n", o_.name.c_str(),
                     vm.name.c_str(), static_cast<unsigned long long>(gen), holder.c_str());
        continue;
      }
      std::vector<std::string> args = {self_exe_, "run", "--disk", vm.disk};
      for (const std::string& s : VmArgs(vm)) args.push_back(s);
      args.insert(args.end(), {"--dr-target", ReplicaAddress(vm), "--dr-sync", "--dr-sync-timeout-s",
                               std::to_string(o_.sync_timeout_s)});
      StartVm(vm, args, gen, "home");
    }
  }

  void StartVm(const HaVm& vm, const std::vector<std::string>& args, uint64_t gen, const char* why) {
    Child c;
    c.vm = true;
    c.mem_mib = vm.mem_mib;
    c.log = o_.data + "/" + vm.name + ".log";
    c.pid = Spawn(args, c.log);
    vms_running_[vm.name] = c;
    log::info("ha.vm_started", {{"vm", vm.name}, {"generation", gen}, {"as", why}, {"pid", int64_t(c.pid)}});
    std::fprintf(stderr, "ha-agent %s: started %s (%s, generation %llu, pid %d, log %s)\n", o_.name.c_str(),
                 vm.name.c_str(), why, static_cast<unsigned long long>(gen), int(c.pid), c.log.c_str());
  }

  uint64_t UsedMib() const {
    uint64_t used = 0;
    for (const auto& [n, c] : vms_running_) used += c.mem_mib;
    return used;
  }

  void Beat() {
    const std::string msg = EncodeHaHeartbeat(o_.name);
    for (auto& [name, p] : peers_) {
      const sockaddr_in a = Addr(p->info.ip, p->info.port);
      // A peer that cannot be reached is what the silence detects; nothing to do here.
      (void)::sendto(fd_.get(), msg.data(), msg.size(), MSG_DONTWAIT, reinterpret_cast<const sockaddr*>(&a), sizeof a);
    }
  }

  void Receive() {
    char buf[256];
    for (;;) {
      const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n <= 0) return;
      std::string host;
      if (!DecodeHaHeartbeat(std::string_view(buf, size_t(n)), host)) continue;
      auto it = peers_.find(host);
      if (it == peers_.end()) {
        // A host this one does not know (a missing --peers entry): said once per name.
        if (unknown_.insert(host).second)
          log::warn("ha.unknown_peer", {{"name", host}, {"hint", "add it to --peers, or it is not part of this cluster"}});
        continue;
      }
      Peer& p = *it->second;
      p.liveness.heard();
      p.heard_once = true;
      if (p.dead) {
        p.dead = false;
        log::event(log::Level::kWarn, "ha.host_back", {{"host", p.info.name}});
        std::fprintf(stderr, "ha-agent %s: host %s is back\n", o_.name.c_str(), p.info.name.c_str());
      }
    }
  }

  std::string LeasePath(const std::string& host) const { return o_.cluster + "/hosts/" + host + ".lease"; }

  // Renews this host's lease; false while it cannot, and once it has not for half
  // the lease timeout it fences itself: its VMs are killed (and reaped) before the
  // others may take this host for dead (lease timeout), so no VM ever runs twice.
  bool RenewLease() {
    // A host that fenced itself stays silent, its lease unrenewed, until its peers
    // have surely declared it dead (lease timeout, then the failure timeout of
    // silence) and restarted its VMs: came back sooner, after a short storage
    // outage, it would be alive to them with its VMs killed, and nobody would
    // restart them. (It never restarts them itself: a peer may be doing so.)
    if (fenced_ && clock_.monotonic_ns() < fenced_until_ns_) return false;
    const std::string path = LeasePath(o_.name), tmp = path + ".tmp";
    const std::string text = FormatHaLease(clock_.wall_ns());
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    const bool ok = fd && ::write(fd.get(), text.data(), text.size()) == ssize_t(text.size()) &&
                    ::rename(tmp.c_str(), path.c_str()) == 0;
    const int error = errno;
    const uint64_t now = clock_.monotonic_ns();
    if (ok) {
      lease_renewed_ns_ = now;
      if (lease_failing_) {
        lease_failing_ = false;
        log::event(log::Level::kWarn, "ha.lease_renewed", {{"host", o_.name}, {"fenced", fenced_ ? "yes" : "no"}});
        std::fprintf(stderr, "ha-agent %s: the lease is renewed again%s\n", o_.name.c_str(),
                     fenced_ ? "; the VMs it fenced stay stopped (their replica hosts restart them)" : "");
        fenced_ = false;
      }
      return true;
    }
    if (!lease_failing_) {  // said once per outage, not every heartbeat
      lease_failing_ = true;
      log::error("ha.lease_not_renewed", {{"path", path}, {"error", std::strerror(error)}});
    }
    if (!fenced_ && now - lease_renewed_ns_ > uint64_t(o_.lease_timeout_ms * 1e6 / 2)) Fence(error);
    return !fenced_;
  }

  void Fence(int error) {
    fenced_ = true;
    const uint64_t now = clock_.monotonic_ns();
    fenced_until_ns_ = lease_renewed_ns_ + uint64_t((o_.lease_timeout_ms + o_.failure_timeout_ms + 2 * o_.heartbeat_ms) * 1e6);
    const double age_ms = double(now - lease_renewed_ns_) / 1e6;
    std::fprintf(stderr, "ha-agent %s: cannot renew the lease (%s) for %.0f ms: killing this host's %zu VMs "
                 "(self-fencing) and falling silent\n", o_.name.c_str(), std::strerror(error), age_ms,
                 vms_running_.size());
    for (auto& [n, c] : vms_running_) ::kill(c.pid, SIGKILL);
    // Reaped here, not at the next Reap(): the event says they are gone.
    for (auto& [n, c] : vms_running_) {
      int st = 0;
      ::waitpid(c.pid, &st, 0);
    }
    std::string names;
    for (auto& [n, c] : vms_running_) names += (names.empty() ? "" : ",") + n;
    log::event(log::Level::kError, "ha.self_fence",
               {{"host", o_.name}, {"vms", uint64_t(vms_running_.size())}, {"killed", names}, {"lease_age_ms", age_ms}});
    vms_running_.clear();
  }

  // The lease's age in ms (-1: no lease).
  double LeaseAgeMs(const std::string& host) {
    UniqueFd fd(::open(LeasePath(host).c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return -1;
    char buf[64];  // a lease is at most 21 bytes: more is no lease
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    uint64_t wall = 0;
    if (n <= 0 || !ParseHaLease(std::string_view(buf, size_t(n)), wall)) return -1;
    const uint64_t now = clock_.wall_ns();
    return now > wall ? double(now - wall) / 1e6 : 0;
  }

  void Reap() {
    auto reap = [&](std::map<std::string, Child>& m, const char* what) {
      for (auto it = m.begin(); it != m.end();) {
        int st = 0;
        if (::waitpid(it->second.pid, &st, WNOHANG) == it->second.pid) {
          log::warn("ha.child_exited", {{"what", what}, {"vm", it->first},
                                        {"status", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st)},
                                        {"log", it->second.log}});
          it = m.erase(it);
        } else {
          ++it;
        }
      }
    };
    reap(vms_running_, "vm");
    reap(replicas_, "replica");
  }

  // When the first live peer's silence will pass the failure timeout (UINT64_MAX:
  // none): checked then, not at the next heartbeat tick, which would add up to a
  // heartbeat interval to the detection. A peer already past it but with a fresh
  // lease (isolated) is looked at every heartbeat as before.
  uint64_t NextSilenceExpiry(uint64_t now) const {
    uint64_t next = UINT64_MAX;
    for (const auto& [name, p] : peers_) {
      if (p->dead) continue;
      const uint64_t silent = p->liveness.silent_ns(), timeout = p->liveness.options().failure_timeout_ns;
      if (silent <= timeout) next = std::min(next, now + (timeout - silent) + 1000000);
    }
    return next;
  }

  void CheckPeers() {
    lease_recheck_ns_ = UINT64_MAX;
    for (auto& [name, p] : peers_) {
      if (p->dead || !p->liveness.expired()) continue;
      const double lease_age = LeaseAgeMs(name);
      if (!p->heard_once && lease_age < 0) continue;  // never came up: nothing of it runs
      if (lease_age >= 0 && lease_age < o_.lease_timeout_ms) {
        // Isolated, but alive: keeps its VMs. Looked at again when that lease would
        // expire (its last renewal may have come a heartbeat after its last beat).
        lease_recheck_ns_ = std::min(lease_recheck_ns_, clock_.monotonic_ns() +
                                                            uint64_t((o_.lease_timeout_ms - lease_age + 1) * 1e6));
        continue;
      }
      p->dead = true;
      const double silent_ms = double(p->liveness.silent_ns()) / 1e6;
      log::event(log::Level::kError, "ha.host_dead", {{"host", name}, {"silent_ms", silent_ms}, {"lease_age_ms", lease_age}});
      std::fprintf(stderr, "ha-agent %s: host %s is dead (silent %.0f ms, lease %.0f ms old)\n", o_.name.c_str(),
                   name.c_str(), silent_ms, lease_age);
      RestartVmsOf(name, silent_ms);
    }
  }

  void RestartVmsOf(const std::string& dead, double silent_ms) {
    std::vector<const HaVm*> mine;
    for (const HaVm& vm : vms_)
      if (vm.replica == o_.name) mine.push_back(&vm);
    // Highest priority first; equal ones by name, so every host takes them alike.
    std::stable_sort(mine.begin(), mine.end(), [](const HaVm* a, const HaVm* b) { return a->priority > b->priority; });
    for (const HaVm* vm : mine) {
      const uint64_t t0 = clock_.monotonic_ns();
      try {
        auto arbiter = ArbiterOf(*vm);
        uint64_t gen = 0;
        const std::string holder = Holder(*arbiter, gen);
        if (holder != dead) continue;  // not running there
        const uint64_t free_mib = o_.mem_mib > UsedMib() ? o_.mem_mib - UsedMib() : 0;
        if (vm->mem_mib > free_mib) {
          log::event(log::Level::kError, "ha.placement_skipped",
                     {{"vm", vm->name}, {"host", o_.name}, {"needs_mib", vm->mem_mib}, {"free_mib", free_mib}});
          std::fprintf(stderr, "ha-agent %s: NOT restarting %s here: it needs %llu MiB, this host has %llu MiB free\n",
                       o_.name.c_str(), vm->name.c_str(), static_cast<unsigned long long>(vm->mem_mib),
                       static_cast<unsigned long long>(free_mib));
          continue;
        }
        std::string other;
        if (!arbiter->try_claim(gen + 1, o_.name, &other)) {
          log::warn("ha.restart_lost", {{"vm", vm->name}, {"generation", gen + 1}, {"holder", other}});
          continue;
        }
        // The replica's process lets go of its image; the VM starts from it.
        auto it = replicas_.find(vm->name);
        if (it != replicas_.end()) {
          ::kill(it->second.pid, SIGTERM);
          int st = 0;
          // Up to 2 s, looked at every 2 ms: the restart waits for this.
          for (int i = 0; i < 1000 && ::waitpid(it->second.pid, &st, WNOHANG) == 0; ++i) ::usleep(2000);
          if (::waitpid(it->second.pid, &st, WNOHANG) == 0) {
            ::kill(it->second.pid, SIGKILL);
            ::waitpid(it->second.pid, &st, 0);
          }
          replicas_.erase(it);
        }
        const uint64_t t1 = clock_.monotonic_ns();
        std::vector<std::string> args = {self_exe_, "dr-start", "--dir", ReplicaDir(*vm)};
        for (const std::string& s : VmArgs(*vm)) args.push_back(s);
        std::fprintf(stderr, "ha-agent %s: restarting %s (priority %d) from %s, generation %llu\n", o_.name.c_str(),
                     vm->name.c_str(), vm->priority, ReplicaDir(*vm).c_str(), static_cast<unsigned long long>(gen + 1));
        StartVm(*vm, args, gen + 1, "restart");
        log::event(log::Level::kWarn, "ha.restart",
                   {{"vm", vm->name}, {"from", dead}, {"on", o_.name}, {"generation", gen + 1},
                    {"priority", vm->priority}, {"detect_ms", silent_ms},
                    {"replica_stop_ms", double(t1 - t0) / 1e6}});
      } catch (const Error& e) {
        log::error("ha.restart_failed", {{"vm", vm->name}, {"error", e.what()}});
        std::fprintf(stderr, "ha-agent %s: restarting %s failed: %s\n", o_.name.c_str(), vm->name.c_str(), e.what());
      }
    }
  }

  void StopAll() {
    for (auto* m : {&vms_running_, &replicas_})
      for (auto& [n, c] : *m) ::kill(c.pid, SIGTERM);
    for (auto* m : {&vms_running_, &replicas_})
      for (auto& [n, c] : *m) {
        int st = 0;
        ::waitpid(c.pid, &st, 0);
      }
  }

  AgentOptions o_;
  Clock& clock_;
  std::string self_exe_;
  std::string my_ip_;
  std::map<std::string, std::unique_ptr<Peer>> peers_;
  std::vector<HaVm> vms_;
  std::map<std::string, Child> vms_running_;
  std::map<std::string, Child> replicas_;
  std::set<std::string> unknown_;  // heartbeat senders not in --peers, already reported
  UniqueFd fd_;
  uint64_t lease_renewed_ns_ = 0;
  uint64_t lease_recheck_ns_ = UINT64_MAX;  // when a silent peer's lease expires
  bool lease_failing_ = false;  // the last renewal failed
  bool fenced_ = false;         // and this host has fenced itself since (silent, no VMs)
  uint64_t fenced_until_ns_ = 0;  // silent until then, even if the lease could be renewed
  std::atomic<bool> stopping_{false};
};

}  // namespace

int HaAgentMain(int argc, char** argv) {
  BlockStopSignals();
  AgentOptions o;
  po::options_description desc("ftvm ha-agent options");
  desc.add_options()
      ("help,h", "show this help")
      ("name", po::value(&o.name)->required(), "this host's name (the [ha] home/replica of the VM files)")
      ("cluster", po::value(&o.cluster)->required(), "the cluster directory all hosts see (vms/, hosts/, arbiter/)")
      ("listen", po::value(&o.listen)->required(), "IP:PORT for the heartbeats (UDP)")
      ("peers", po::value(&o.peers)->default_value(""), "the other hosts: NAME=IP:PORT,...")
      ("data", po::value(&o.data)->required(), "this host's directory for replicas, consoles and logs")
      ("mem-mib", po::value(&o.mem_mib)->default_value(o.mem_mib), "memory for VMs on this host (restart placement)")
      ("heartbeat-ms", po::value(&o.heartbeat_ms)->default_value(o.heartbeat_ms), "heartbeat and lease renewal interval")
      ("failure-timeout-ms", po::value(&o.failure_timeout_ms)->default_value(o.failure_timeout_ms),
       "a host silent this long (and with an expired lease) is dead")
      ("lease-timeout-ms", po::value(&o.lease_timeout_ms)->default_value(0),
       "a lease older than this has expired (0: the failure timeout); a host that cannot renew its lease for half "
       "of it kills its own VMs")
      ("dr-sync-timeout-s", po::value(&o.sync_timeout_s)->default_value(o.sync_timeout_s),
       "the VMs' --dr-sync-timeout-s");
  if (auto code = ParseCommandLine(argc, argv, desc, "ha-agent",
                                   "usage: ftvm ha-agent --name HOST --cluster DIR --listen IP:PORT --data DIR "
                                   "[--peers NAME=IP:PORT,...]\n"))
    return *code;
  if (!(o.heartbeat_ms > 0) || !(o.failure_timeout_ms > o.heartbeat_ms) || o.lease_timeout_ms < 0) {
    std::cerr << "ftvm ha-agent: --heartbeat-ms must be positive and less than --failure-timeout-ms\n";
    return kExitUsage;
  }
  try {
    auto clock = MakeSystemClock();
    Agent agent(o, *clock);
    return RunUntilDone([&] { return agent.run(); }, [&] { agent.stop(); });
  } catch (const Error& e) {
    std::cerr << "ftvm ha-agent: " << e.what() << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "ftvm ha-agent: internal error: " << e.what() << "\n";
    return kExitVmmError;
  }
}

}  // namespace ftvm::cli
