#include "common/netns.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "common/error.h"
#include "common/unique_fd.h"

extern char** environ;

namespace ftvm::netns {
namespace {

std::string Quote(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

// Runs argv[0] (found on PATH) and returns its exit status (-1: did not run) with what
// it wrote on stderr.
int Run(const std::vector<std::string>& argv, std::string& err) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw SysError("pipe for `" + Quote(argv) + "`");
  UniqueFd read_end(fds[0]), write_end(fds[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  write_end.reset();
  if (rc != 0) {
    err = std::string("cannot run ") + args[0] + ": " + std::strerror(rc);
    return -1;
  }
  char buf[512];
  for (ssize_t n; (n = ::read(read_end.get(), buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    err.append(buf, size_t(n));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Best effort, for clean-up paths that must not throw.
void IpQuiet(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"ip"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string ignored;
  try {
    Run(argv, ignored);
  } catch (const Error&) {
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
  std::string err;
  const int code = Run(argv, err);
  if (code != 0) {
    while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
    throw Error("`" + Quote(argv) + "` failed" + (code > 0 ? " (exit " + std::to_string(code) + ")" : "") + ": " + err);
  }
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
