#include "common/netns.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "common/command.h"
#include "common/error.h"
#include "common/unique_fd.h"

namespace ftvm::netns {
namespace {

// Best effort, for clean-up paths that must not throw.
void IpQuiet(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"ip"};
  argv.insert(argv.end(), args.begin(), args.end());
  try {
    RunCommand(argv);
  } catch (const Error&) {
    // Nothing to clean up if `ip` itself cannot run.
  }
}

// Namespaces named PREFIX-PID whose process is gone.
void DeleteStale(const std::string& prefix) {
  DIR* dir = ::opendir("/var/run/netns");
  if (dir == nullptr) return;
  std::vector<std::string> stale;
  while (const dirent* e = ::readdir(dir)) {
    const std::string name = e->d_name;
    if (!name.starts_with(prefix + "-")) continue;
    const std::string tail = name.substr(prefix.size() + 1);
    if (tail.empty() || tail.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::atol(tail.c_str()));
    if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) stale.push_back(name);
  }
  ::closedir(dir);
  for (const auto& n : stale) IpQuiet({"netns", "del", n});
}

}  // namespace

void Ip(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"ip"};
  argv.insert(argv.end(), args.begin(), args.end());
  RunCommandOrThrow(argv);
}

void Enter(const std::string& name) {
  UniqueFd fd(::open(("/var/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw SysError("network namespace " + name);
  if (::setns(fd.get(), CLONE_NEWNET) != 0) throw SysError("entering network namespace " + name);
}

Namespace::Namespace(const std::string& prefix) : name_(prefix + "-" + std::to_string(::getpid())) {
  DeleteStale(prefix);
  IpQuiet({"netns", "del", name_});  // ours from an earlier object that could not delete it
  Ip({"netns", "add", name_});
  try {
    Ip({"-n", name_, "link", "set", "lo", "up"});
  } catch (...) {
    IpQuiet({"netns", "del", name_});
    throw;
  }
}

Namespace::~Namespace() { IpQuiet({"netns", "del", name_}); }

std::vector<std::string> Namespace::wrap(const std::vector<std::string>& argv) const {
  std::vector<std::string> out = {"ip", "netns", "exec", name_};
  out.insert(out.end(), argv.begin(), argv.end());
  return out;
}

VethPair::VethPair(End a, End b, unsigned mtu) : a_(std::move(a)), b_(std::move(b)) {
  const std::string m = std::to_string(mtu);
  Ip({"link", "add", a_.ifname, "netns", a_.netns, "mtu", m, "type", "veth", "peer", "name", b_.ifname, "netns",
      b_.netns, "mtu", m});
  try {
    for (const End* e : {&a_, &b_}) {
      if (!e->cidr.empty()) Ip({"-n", e->netns, "addr", "add", e->cidr, "dev", e->ifname});
      Ip({"-n", e->netns, "link", "set", e->ifname, "up"});
    }
  } catch (...) {
    IpQuiet({"-n", a_.netns, "link", "del", a_.ifname});
    throw;
  }
}

VethPair::~VethPair() { IpQuiet({"-n", a_.netns, "link", "del", a_.ifname}); }

}  // namespace ftvm::netns
