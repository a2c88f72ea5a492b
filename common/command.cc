#include "common/command.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include "common/error.h"
#include "common/unique_fd.h"

extern char** environ;

namespace ftvm {
namespace {

struct Pipe {
  UniqueFd read_end, write_end;
};

Pipe MakePipe(const std::string& what) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw SysError("pipe for " + what);
  return Pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
}

// Reads both pipes to their ends at once: a command that fills one pipe while we
// wait on the other would otherwise block for good.
void Drain(UniqueFd& out_fd, std::string& out, UniqueFd& err_fd, std::string& err) {
  while (out_fd || err_fd) {
    pollfd p[2];
    nfds_t n = 0;
    if (out_fd) p[n++] = {out_fd.get(), POLLIN, 0};
    if (err_fd) p[n++] = {err_fd.get(), POLLIN, 0};
    if (::poll(p, n, -1) < 0) {
      if (errno == EINTR) continue;
      throw SysError("poll on a command's output");
    }
    for (nfds_t i = 0; i < n; ++i) {
      if (p[i].revents == 0) continue;
      const bool is_out = out_fd && p[i].fd == out_fd.get();
      char buf[4096];
      const ssize_t got = ::read(p[i].fd, buf, sizeof buf);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        (is_out ? out_fd : err_fd).reset();
        continue;
      }
      (is_out ? out : err).append(buf, size_t(got));
    }
  }
}

}  // namespace

std::string CommandLine(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

CommandResult RunCommand(const std::vector<std::string>& argv) {
  if (argv.empty()) throw Error("RunCommand: no command");
  const std::string line = "`" + CommandLine(argv) + "`";
  Pipe out = MakePipe(line), err = MakePipe(line);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out.write_end.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, err.write_end.get(), 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  out.write_end.reset();
  err.write_end.reset();
  if (rc != 0) throw Error("cannot run " + argv[0] + ": " + std::strerror(rc));
  CommandResult r;
  try {
    Drain(out.read_end, r.out, err.read_end, r.err);
  } catch (...) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    throw;
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw SysError("waiting for " + line);
  }
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::string RunCommandOrThrow(const std::vector<std::string>& argv) {
  CommandResult r = RunCommand(argv);
  if (r.status != 0) {
    while (!r.err.empty() && (r.err.back() == '\n' || r.err.back() == ' ')) r.err.pop_back();
    throw Error("`" + CommandLine(argv) + "` failed (exit " + std::to_string(r.status) + ")" +
                (r.err.empty() ? "" : ": " + r.err));
  }
  return r.out;
}

}  // namespace ftvm
