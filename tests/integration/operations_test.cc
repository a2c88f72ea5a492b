// Operating a protected VM with the real `ftvm` binary: `ftvm status` on a primary
// and a secondary (role, protection state, counters), the secondary's status and the
// event file after the primary is killed, JSON log lines with the VM's name and
// role, and a VM started from a configuration file. No timing is asserted.
#include <gtest/gtest.h>
#include <signal.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "tests/support/harness.h"

namespace ftvm::itest {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// `ftvm status --json` of the VMM at `control` ("" when it does not answer).
std::string StatusJson(const std::string& control) {
  ProcessResult r = RunProcess({FtvmBinary(), "status", "--control", control, "--json"}, seconds(20), "status");
  return r.exit_code == 0 ? r.out : "";
}

// Polls the status until it contains `needle`; returns the last status.
std::string WaitForStatus(const std::string& control, const std::string& needle, seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string status;
  while (std::chrono::steady_clock::now() < deadline) {
    status = StatusJson(control);
    if (status.find(needle) != std::string::npos) return status;
    std::this_thread::sleep_for(milliseconds(200));
  }
  return status;
}

// The number after "key": in a JSON object (protobuf prints 64-bit integers as strings).
double NumberIn(const std::string& json, const std::string& key) {
  const size_t at = json.find("\"" + key + "\":");
  if (at == std::string::npos) return -1;
  size_t from = at + key.size() + 3;
  if (json[from] == '"') ++from;
  return std::stod(json.substr(from));
}

// `ftvm primary` on `channel` with a guest that runs until it is stopped (timer
// ticks, each an epoch checkpoint), then `extra`.
std::vector<std::string> PrimaryArgs(const std::string& channel, const std::string& arbiter,
                                     const std::vector<std::string>& extra) {
  std::vector<std::string> args = {FtvmBinary(), "primary", "--listen", channel, "--arbiter", arbiter,
                                   "--guest", GuestImage(), "--app", "timers", "--arg", "ticks=1000000",
                                   "--arg", "period_us=5000", "--console", ScratchPath("primary.console")};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

std::vector<std::string> SecondaryArgs(const std::string& channel, const std::string& arbiter,
                                       const std::vector<std::string>& extra) {
  std::vector<std::string> args = {FtvmBinary(), "secondary", "--connect", channel, "--arbiter", arbiter,
                                   "--console", ScratchPath("secondary.console")};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

std::string NewArbiter() {
  const std::string dir = ScratchPath("arbiter");
  EXPECT_EQ(mkdir(dir.c_str(), 0755), 0) << dir;
  return dir;
}

TEST(Operations, StatusOfAPairAndOfItsSurvivorAndTheEventFile) {
  const std::string arbiter = NewArbiter();
  const std::string channel = "shm:" + ScratchPath("channel.sock");
  const std::string primary_control = ScratchPath("primary.control"), secondary_control = ScratchPath("secondary.control");
  const std::string events = ScratchPath("events.jsonl");
  Process primary = Process::Start(PrimaryArgs(channel, arbiter, {"--name", "a", "--control", primary_control,
                                                                  "--event-file", events, "--log-json", "--vm-name", "vm7"}),
                                   "ops-primary");
  Process secondary = Process::Start(
      SecondaryArgs(channel, arbiter, {"--name", "b", "--control", secondary_control, "--event-file", events}),
      "ops-secondary");
  std::string p = WaitForStatus(primary_control, "\"state\":\"protected\"", seconds(60));
  ASSERT_NE(p.find("\"state\":\"protected\""), std::string::npos) << p << primary.Stderr();
  EXPECT_NE(p.find("\"role\":\"primary\""), std::string::npos) << p;
  EXPECT_NE(p.find("\"vm\":\"vm7\""), std::string::npos) << p;
  EXPECT_NE(p.find("\"host\":\"a\""), std::string::npos) << p;
  EXPECT_NE(p.find("\"peer\":\"b\""), std::string::npos) << p;
  std::string s = WaitForStatus(secondary_control, "\"state\":\"protected\"", seconds(60));
  ASSERT_NE(s.find("\"state\":\"protected\""), std::string::npos) << s << secondary.Stderr();
  EXPECT_NE(s.find("\"role\":\"secondary\""), std::string::npos) << s;
  EXPECT_NE(s.find("\"vm\":\"timers\""), std::string::npos) << s;  // no --vm-name: the app
  EXPECT_NE(s.find("\"peer\":\"a\""), std::string::npos) << s;
  // The log moves and the replica checks the primary's state: wait until the
  // counters say so (they only grow).
  p = WaitForStatus(primary_control, "\"verifications\":\"", seconds(60));
  for (int i = 0; i < 300 && (NumberIn(p, "verifications") < 1 || NumberIn(p, "log_replayed") < 1); ++i) {
    std::this_thread::sleep_for(milliseconds(100));
    p = StatusJson(primary_control);
  }
  EXPECT_GE(NumberIn(p, "verifications"), 1) << p;
  EXPECT_GE(NumberIn(p, "checkpoints"), 1) << p;
  EXPECT_GE(NumberIn(p, "log_replayed"), 1) << p;
  EXPECT_GT(NumberIn(p, "log_bytes_per_s"), 0) << p;
  // The table is the same status for people.
  ProcessResult table = RunProcess({FtvmBinary(), "status", "--control", primary_control}, seconds(20), "status-table");
  EXPECT_EQ(table.exit_code, 0) << table.err;
  EXPECT_NE(table.out.find("state                  protected"), std::string::npos) << table.out;

  // --log-json: every line of the primary's log is a JSON object with the VM's name
  // and the role, its summary lines ("primary: listening on ...") too.
  {
    std::istringstream lines(primary.Stderr());
    std::string line;
    int json_lines = 0;
    while (std::getline(lines, line)) {
      if (line.empty()) continue;
      EXPECT_EQ(line.front(), '{') << line;
      EXPECT_EQ(line.back(), '}') << line;
      EXPECT_NE(line.find("\"vm\":\"vm7\",\"role\":\"primary\""), std::string::npos) << line;
      ++json_lines;
    }
    EXPECT_GT(json_lines, 3);
    EXPECT_NE(primary.Stderr().find("\"event\":\"summary\",\"vm\":\"vm7\",\"role\":\"primary\",\"text\":\"primary: "
                                    "listening on"),
              std::string::npos) << primary.Stderr();
  }

  primary.Signal(SIGKILL);
  s = WaitForStatus(secondary_control, "\"state\":\"live\"", seconds(60));
  ASSERT_NE(s.find("\"state\":\"live\""), std::string::npos) << s << secondary.Stderr();
  EXPECT_NE(s.find("\"last_failover\":\"took over at position"), std::string::npos) << s;
  EXPECT_GT(NumberIn(s, "failover_downtime_ms"), 0) << s;
  EXPECT_GT(NumberIn(s, "failover_takeover_ms"), 0) << s;
  EXPECT_EQ(NumberIn(s, "generation"), 2) << s;

  // Both processes appended their events to the one file, one JSON object a line.
  const std::string ev = ReadFile(events);
  EXPECT_NE(ev.find("\"event\":\"primary.protected\",\"vm\":\"vm7\",\"role\":\"primary\""), std::string::npos) << ev;
  EXPECT_NE(ev.find("\"event\":\"secondary.primary_lost\""), std::string::npos) << ev;
  const size_t live = ev.find("\"event\":\"secondary.LIVE\",\"vm\":\"timers\",\"role\":\"secondary\"");
  ASSERT_NE(live, std::string::npos) << ev;
  EXPECT_NE(ev.find("\"downtime_ms\":", live), std::string::npos) << ev;

  secondary.Signal(SIGTERM);
  EXPECT_EQ(secondary.Wait(seconds(60)).exit_code, 0) << secondary.Stderr();
}

TEST(Operations, APrimaryThatLosesItsSecondarySaysSo) {
  const std::string arbiter = NewArbiter();
  const std::string channel = "shm:" + ScratchPath("channel.sock");
  const std::string control = ScratchPath("primary.control"), events = ScratchPath("events.jsonl");
  Process primary =
      Process::Start(PrimaryArgs(channel, arbiter, {"--control", control, "--event-file", events}), "lost-primary");
  Process secondary = Process::Start(SecondaryArgs(channel, arbiter, {}), "lost-secondary");
  std::string p = WaitForStatus(control, "\"state\":\"protected\"", seconds(60));
  ASSERT_NE(p.find("\"state\":\"protected\""), std::string::npos) << p << primary.Stderr();
  secondary.Signal(SIGKILL);
  p = WaitForStatus(control, "\"state\":\"unprotected\"", seconds(60));
  ASSERT_NE(p.find("\"state\":\"unprotected\""), std::string::npos) << p << primary.Stderr();
  EXPECT_EQ(p.find("\"last_failover\":\"\""), std::string::npos) << p;  // says what happened
  EXPECT_EQ(NumberIn(p, "generation"), 2) << p;  // it claimed the next generation
  const std::string ev = ReadFile(events);
  EXPECT_NE(ev.find("\"event\":\"primary.secondary_lost\""), std::string::npos) << ev;
  EXPECT_NE(ev.find("\"event\":\"primary.UNPROTECTED\""), std::string::npos) << ev;
  // Text logs (no --log-json) carry the VM's name and the role too.
  EXPECT_NE(primary.Stderr().find("primary.secondary_lost"), std::string::npos);
  EXPECT_NE(primary.Stderr().find("vm=timers role=primary"), std::string::npos) << primary.Stderr();
  primary.Signal(SIGTERM);
  primary.Wait(seconds(60));
}

// GET `path` from the HTTP server at HOST:PORT; the whole response ("" when it
// cannot connect).
std::string HttpGet(const std::string& address, const std::string& path) {
  const size_t colon = address.rfind(':');
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::stoi(address.substr(colon + 1))));
  if (inet_pton(AF_INET, address.substr(0, colon).c_str(), &sa.sin_addr) != 1) return "";
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
    const std::string req = "GET " + path + " HTTP/1.1\r\nHost: " + address + "\r\nConnection: close\r\n\r\n";
    if (write(fd, req.data(), req.size()) == ssize_t(req.size())) {
      char buf[4096];
      for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, size_t(n));
    }
  }
  close(fd);
  return out;
}

// Prometheus metrics over HTTP (--metrics): the pair's state as one series per state,
// log counters, and the output-hold histogram, whose buckets only grow; after the
// secondary is lost the state series moves. Other paths get 404.
TEST(Operations, MetricsOverHttpFollowThePairsState) {
  const std::string arbiter = NewArbiter();
  const std::string channel = "shm:" + ScratchPath("channel.sock");
  Process primary = Process::Start(PrimaryArgs(channel, arbiter, {"--metrics", "127.0.0.1:0", "--vm-name", "m1"}),
                                   "metrics-primary");
  Process secondary = Process::Start(SecondaryArgs(channel, arbiter, {}), "metrics-secondary");
  ASSERT_TRUE(WaitForFileContains(primary.stderr_path(), "metrics.listening", seconds(60))) << primary.Stderr();
  std::smatch m;
  const std::string err = primary.Stderr();
  ASSERT_TRUE(std::regex_search(err, m, std::regex("metrics.listening address=(\\S+)"))) << err;
  const std::string address = m[1];
  const std::string protected_line = "ftvm_state{vm=\"m1\",role=\"primary\",host=\"primary\",state=\"protected\"} 1";
  std::string page;
  for (int i = 0; i < 300 && page.find(protected_line) == std::string::npos; ++i) {
    std::this_thread::sleep_for(milliseconds(200));
    page = HttpGet(address, "/metrics");
  }
  ASSERT_NE(page.find("HTTP/1.1 200"), std::string::npos) << page;
  ASSERT_NE(page.find(protected_line), std::string::npos) << page;
  EXPECT_NE(page.find("text/plain; version=0.0.4"), std::string::npos) << page;
  EXPECT_NE(page.find("# TYPE ftvm_output_hold_seconds histogram"), std::string::npos) << page;
  EXPECT_NE(page.find("ftvm_output_hold_seconds_bucket{vm=\"m1\",role=\"primary\",host=\"primary\",le=\"+Inf\"}"),
            std::string::npos) << page;
  // Cumulative buckets never decrease.
  double last = -1;
  std::istringstream lines(page);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("ftvm_output_hold_seconds_bucket", 0) != 0) continue;
    const double v = std::stod(line.substr(line.rfind(' ') + 1));
    EXPECT_GE(v, last) << line;
    last = v;
  }
  EXPECT_GE(last, 0);
  EXPECT_NE(HttpGet(address, "/nothing").find("HTTP/1.1 404"), std::string::npos);
  secondary.Signal(SIGKILL);
  const std::string unprotected_line = "state=\"unprotected\"} 1";
  for (int i = 0; i < 300 && page.find(unprotected_line) == std::string::npos; ++i) {
    std::this_thread::sleep_for(milliseconds(200));
    page = HttpGet(address, "/metrics");
  }
  EXPECT_NE(page.find(unprotected_line), std::string::npos) << page;
  EXPECT_NE(page.find("state=\"protected\"} 0"), std::string::npos) << page;
  primary.Signal(SIGTERM);
  primary.Wait(seconds(60));
}

TEST(Operations, ASurvivorProtectedAgainShowsItsNewSecondary) {
  const std::string arbiter = NewArbiter();
  const std::string first = "shm:" + ScratchPath("first.sock"), second = "shm:" + ScratchPath("second.sock");
  const std::string control = ScratchPath("survivor.control");
  Process primary = Process::Start(PrimaryArgs(first, arbiter, {"--name", "a"}), "re-a");
  Process survivor = Process::Start(
      SecondaryArgs(first, arbiter, {"--name", "b", "--listen", second, "--control", control}), "re-b");
  std::string s = WaitForStatus(control, "\"state\":\"protected\"", seconds(60));
  ASSERT_NE(s.find("\"state\":\"protected\""), std::string::npos) << s << survivor.Stderr();
  primary.Signal(SIGKILL);
  s = WaitForStatus(control, "\"state\":\"live\"", seconds(60));
  ASSERT_NE(s.find("\"state\":\"live\""), std::string::npos) << s << survivor.Stderr();
  Process third = Process::Start(SecondaryArgs(second, arbiter, {"--name", "c"}), "re-c");
  s = WaitForStatus(control, "\"peer\":\"c\"", seconds(60));
  EXPECT_NE(s.find("\"state\":\"protected\""), std::string::npos) << s << survivor.Stderr();
  EXPECT_NE(s.find("\"last_failover\":\"took over"), std::string::npos) << s;  // still says what happened
  EXPECT_GT(NumberIn(s, "failover_downtime_ms"), 0) << s;
  survivor.Signal(SIGTERM);
  survivor.Wait(seconds(60));
  third.Wait(seconds(60));
}

TEST(Operations, AVmFromAConfigFileAndItsStatus) {
  const std::string control = ScratchPath("run.control");
  const std::string config = ScratchPath("vm.toml");
  std::ofstream(config) << "# one VM\n"
                        << "guest = \"" << GuestImage() << "\"\n"
                        << "app = \"timers\"\n"
                        << "arg = [\"ticks=1000000\", \"period_us=5000\"]\n"
                        << "\n[run]\n"
                        << "vm-name = \"from-file\"\n"
                        << "control = \"" << control << "\"\n"
                        << "console = \"" << ScratchPath("run.console") << "\"\n"
                        << "[primary]\nlisten = \"tcp:127.0.0.1:7000\"\narbiter = \"/tmp\"\n";
  ProcessResult check = RunProcess({FtvmBinary(), "config", "check", config}, seconds(20), "check");
  EXPECT_EQ(check.exit_code, 0) << check.err;
  EXPECT_NE(check.out.find("OK (run, primary)"), std::string::npos) << check.out;
  Process vm = Process::Start({FtvmBinary(), "run", "--config", config, "--vm-name", "from-cli"}, "ops-run");
  const std::string s = WaitForStatus(control, "\"role\":\"run\"", seconds(30));
  EXPECT_NE(s.find("\"state\":\"unprotected\""), std::string::npos) << s << vm.Stderr();
  EXPECT_NE(s.find("\"vm\":\"from-cli\""), std::string::npos) << s;  // the command line over the file
  vm.Signal(SIGTERM);
  vm.Wait(seconds(30));
}

TEST(Operations, ConfigCheckNamesEveryBadKeyAndItsLine) {
  const std::string config = ScratchPath("bad.toml");
  std::ofstream(config) << "guest = \"/no/such/guest.elf\"\n"
                        << "app = \"timers\"\n"
                        << "mem = \"lots\"\n"
                        << "colour = \"blue\"\n"
                        << "[secondary]\n"
                        << "connect = \"pigeon:7\"\n"
                        << "arbiter = \"/tmp\"\n"
                        << "no-verify = 1\n";
  ProcessResult r = RunProcess({FtvmBinary(), "config", "check", config}, seconds(20), "check-bad");
  EXPECT_EQ(r.exit_code, 1);
  for (const char* expected : {":1: key 'guest': the guest image /no/such/guest.elf is not there",
                               ":3: key 'mem': bad value", ":4: key 'colour': unknown key",
                               ":6: key 'secondary.connect': not a channel address",
                               ":8: key 'secondary.no-verify': is an integer; it is a switch"})
    EXPECT_NE(r.err.find(expected), std::string::npos) << expected << "\n" << r.err;
}

}  // namespace
}  // namespace ftvm::itest
