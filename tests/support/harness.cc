#include "tests/support/harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

namespace ftvm::itest {
namespace {

std::string EnvOrDie(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') throw std::runtime_error(std::string("environment variable ") + name + " is not set (run through meson test)");
  return v;
}

}  // namespace

std::string FtvmBinary() { return EnvOrDie("FTVM_BIN"); }
std::string GuestImage() { return EnvOrDie("FTVM_GUEST"); }

std::string ScratchPath(const std::string& tag) {
  static int counter = 0;  // test-process-local uniqueness; tests run sequentially
  const char* tmp = std::getenv("TMPDIR");
  return std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/ftvm_it_" + std::to_string(getpid()) + "_" +
         std::to_string(counter++) + "_" + tag;
}

size_t CountOf(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Process Process::Start(const std::vector<std::string>& argv, const std::string& tag) {
  std::string out = ScratchPath(tag + ".out"), err = ScratchPath(tag + ".err");
  // Everything the child needs is prepared before fork(): after it, only
  // async-signal-safe calls.
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int n = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (o < 0 || e < 0 || n < 0) _exit(127);
    dup2(n, 0);
    dup2(o, 1);
    dup2(e, 2);
    setpgid(0, 0);
    execvp(args[0], args.data());
    dprintf(2, "exec %s: %s\n", args[0], strerror(errno));
    _exit(127);
  }
  return Process(pid, out, err);
}

Process::Process(Process&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      status_(other.status_),
      out_path_(std::move(other.out_path_)),
      err_path_(std::move(other.err_path_)) {}

Process::~Process() {
  if (pid_ > 0 && !status_) {
    kill(-pid_, SIGKILL);
    kill(pid_, SIGKILL);
    int st;
    waitpid(pid_, &st, 0);
  }
}

bool Process::Running() {
  if (status_) return false;
  int st;
  if (waitpid(pid_, &st, WNOHANG) == pid_) {
    status_ = st;
    return false;
  }
  return true;
}

void Process::Signal(int sig) {
  if (!status_) kill(pid_, sig);
}

ProcessResult Process::Wait(std::chrono::milliseconds timeout) {
  ProcessResult r;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (Running()) {
    if (std::chrono::steady_clock::now() >= deadline) {
      kill(-pid_, SIGKILL);
      kill(pid_, SIGKILL);
      int st;
      waitpid(pid_, &st, 0);
      status_ = st;
      r.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!r.timed_out && WIFEXITED(*status_)) r.exit_code = WEXITSTATUS(*status_);
  r.out = Stdout();
  r.err = Stderr();
  return r;
}

ProcessResult RunProcess(const std::vector<std::string>& argv, std::chrono::milliseconds timeout, const std::string& tag) {
  return Process::Start(argv, tag).Wait(timeout);
}

bool WaitForFileContains(const std::string& path, const std::string& needle, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (ReadFile(path).find(needle) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return ReadFile(path).find(needle) != std::string::npos;
}

void NetNamespace::AddTap(const std::string& ifname, const std::string& cidr) {
  netns::Ip({"-n", name(), "tuntap", "add", "dev", ifname, "mode", "tap"});
  netns::Ip({"-n", name(), "addr", "add", cidr, "dev", ifname});
  netns::Ip({"-n", name(), "link", "set", ifname, "up"});
}

std::vector<DrillRound> ReadDrillRounds(const std::string& json_path) {
  std::vector<DrillRound> rounds;
  std::istringstream in(ReadFile(json_path));
  for (std::string line; std::getline(in, line);) {
    auto num = [&](const char* key) {
      std::smatch m;
      return std::regex_search(line, m, std::regex(std::string("\"") + key + "\":(-?[0-9.e+]+)")) ? std::stod(m[1])
                                                                                                   : -1;
    };
    auto flag = [&](const char* key) { return line.find(std::string("\"") + key + "\":true") != std::string::npos; };
    DrillRound r;
    std::smatch m;
    if (std::regex_search(line, m, std::regex("\"fault\":\"([^\"]*)\""))) r.fault = m[1];
    r.ok = flag("ok");
    r.contents_match = flag("contents_match");
    r.one_live = flag("one_live");
    r.failover = flag("failover");
    r.lost = long(num("lost"));
    r.duplicates = long(num("duplicates"));
    r.acked = long(num("acked"));
    r.recovery_ms = num("recovery_ms");
    r.stop_ms = num("stop_ms");
    rounds.push_back(r);
  }
  return rounds;
}

std::string StatusJson(const std::string& control) {
  ProcessResult r =
      RunProcess({FtvmBinary(), "status", "--control", control, "--json"}, std::chrono::seconds(20), "status");
  return r.exit_code == 0 ? r.out : "";
}

double NumberIn(const std::string& json, const std::string& key) {
  const size_t at = json.find("\"" + key + "\":");
  if (at == std::string::npos) return -1;
  size_t from = at + key.size() + 3;
  if (json[from] == '"') ++from;
  return std::stod(json.substr(from));
}

std::string HttpRequest(const std::string& address, const std::string& method, const std::string& path) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return "";
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  if (inet_pton(AF_INET, address.substr(0, colon).c_str(), &sa.sin_addr) != 1) return "";
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
    const std::string req = method + " " + path + " HTTP/1.1\r\nHost: " + address +
                            "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    if (write(fd, req.data(), req.size()) == ssize_t(req.size())) {
      char buf[4096];
      for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, size_t(n));
    }
  }
  close(fd);
  return out;
}

}  // namespace ftvm::itest
