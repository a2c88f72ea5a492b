// Harness for integration tests and benchmarks: real processes (the ftvm binary), real network
// namespaces and tap devices. Everything is RAII so a failing test leaves nothing
// running and no namespace behind.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "common/netns.h"

namespace ftvm::itest {

// Paths handed in by meson (environment FTVM_BIN, FTVM_GUEST).
std::string FtvmBinary();
std::string GuestImage();
// A fresh per-test scratch path under the test temp dir.
std::string ScratchPath(const std::string& tag);
std::string ReadFile(const std::string& path);
// How many times `needle` occurs in `text` (e.g. an event's lines in a log).
size_t CountOf(const std::string& text, const std::string& needle);

struct ProcessResult {
  int exit_code = -1;  // -1 when killed by a signal or timed out
  bool timed_out = false;
  std::string out;     // stdout
  std::string err;     // stderr
};

// A child process with stdout/stderr captured to files; killed (SIGKILL) and reaped
// on destruction if still running.
class Process {
 public:
  static Process Start(const std::vector<std::string>& argv, const std::string& tag);
  Process(Process&& other) noexcept;
  Process& operator=(Process&&) = delete;
  ~Process();

  // Waits up to `timeout`; on time-out kills the child and marks the result.
  ProcessResult Wait(std::chrono::milliseconds timeout);
  void Signal(int sig);
  bool Running();
  std::string Stdout() const { return ReadFile(out_path_); }
  std::string Stderr() const { return ReadFile(err_path_); }
  const std::string& stderr_path() const { return err_path_; }
  pid_t pid() const { return pid_; }

 private:
  Process(pid_t pid, std::string out, std::string err) : pid_(pid), out_path_(std::move(out)), err_path_(std::move(err)) {}
  pid_t pid_ = -1;
  std::optional<int> status_;
  std::string out_path_, err_path_;
};

ProcessResult RunProcess(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                  const std::string& tag = "run");

// Polls `path` until it contains `needle` or `timeout` passes.
bool WaitForFileContains(const std::string& path, const std::string& needle, std::chrono::milliseconds timeout);

// `ftvm status --json` of the VMM at control socket `control` ("" when it does not
// answer).
std::string StatusJson(const std::string& control);
// The number after "key": in a JSON object (protobuf prints 64-bit integers as
// strings, so a quoted number counts too); -1 when the key is absent.
double NumberIn(const std::string& json, const std::string& key);

// One HTTP/1.1 request (`method` GET, POST, ...; empty body) to the server at
// IPv4 HOST:PORT; the whole response, status line and headers included ("" when
// it cannot connect).
std::string HttpRequest(const std::string& address, const std::string& method, const std::string& path);

// One round of `ftvm drill --json FILE` (a JSON object per line; missing numbers -1).
struct DrillRound {
  std::string fault;  // "kill-primary", ...
  bool ok = false, contents_match = false, one_live = false, failover = false;
  long lost = -1, duplicates = -1, acked = 0;
  double recovery_ms = -1, stop_ms = -1;
};
std::vector<DrillRound> ReadDrillRounds(const std::string& json_path);

// A network namespace ("a host", common/netns.h) that can hold tap devices whose host
// side has an address. Commands run inside it through `ip netns exec`.
class NetNamespace {
 public:
  explicit NetNamespace(const std::string& tag) : ns_("ftvm-" + tag) {}

  const std::string& name() const { return ns_.name(); }
  // Creates a persistent tap `ifname` inside the namespace with `cidr` on it, up.
  void AddTap(const std::string& ifname, const std::string& cidr);
  std::vector<std::string> Wrap(const std::vector<std::string>& argv) const { return ns_.wrap(argv); }

 private:
  netns::Namespace ns_;
};

}  // namespace ftvm::itest
