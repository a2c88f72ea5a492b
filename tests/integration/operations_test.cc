// Operating a protected VM with the real `ftvm` binary: `ftvm status` on a primary
// and a secondary (role, protection state, counters), the secondary's status and the
// event file after the primary is killed, JSON log lines with the VM's name and
// role, a VM started from a configuration file, metrics over HTTP, and the
// dashboard's HTTP side (its page, /api/status, a drill and a switchover; the page
// in a browser is dashboard_browser_test.py). No timing is asserted.
#include <gtest/gtest.h>
#include <signal.h>
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

std::string HttpGet(const std::string& address, const std::string& path) {
  return HttpRequest(address, "GET", path);
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

// The address a VMM's --metrics server logged it listens on ("" when it did not).
std::string MetricsAddress(const Process& p) {
  if (!WaitForFileContains(p.stderr_path(), "metrics.listening", seconds(60))) return "";
  std::smatch m;
  const std::string err = p.Stderr();
  return std::regex_search(err, m, std::regex("metrics.listening address=(\\S+)")) ? std::string(m[1]) : "";
}

// Polls GET /api/status at `address` until it contains `needle`; the last answer.
std::string WaitForApiStatus(const std::string& address, const std::string& needle, seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string status;
  while (std::chrono::steady_clock::now() < deadline) {
    status = HttpGet(address, "/api/status");
    if (status.find(needle) != std::string::npos) return status;
    std::this_thread::sleep_for(milliseconds(200));
  }
  return status;
}

// The dashboard (GET / of --metrics): the page, self-contained; the status as JSON
// with the pair's fields, readable from the peer's page (CORS); and without
// --dashboard-actions the buttons' POSTs are refused and change nothing.
TEST(Operations, TheDashboardShowsThePairAndRefusesActionsWithoutTheFlag) {
  const std::string arbiter = NewArbiter();
  const std::string channel = "shm:" + ScratchPath("channel.sock");
  Process primary = Process::Start(
      PrimaryArgs(channel, arbiter, {"--name", "a", "--vm-name", "d1", "--metrics", "127.0.0.1:0", "--peer-metrics",
                                     "127.0.0.1:9"}),
      "dash-primary");
  Process secondary = Process::Start(SecondaryArgs(channel, arbiter, {"--name", "b", "--metrics", "127.0.0.1:0"}),
                                     "dash-secondary");
  const std::string p = MetricsAddress(primary), s = MetricsAddress(secondary);
  ASSERT_FALSE(p.empty()) << primary.Stderr();
  ASSERT_FALSE(s.empty()) << secondary.Stderr();
  std::string ps = WaitForApiStatus(p, "\"state\":\"protected\"", seconds(60));
  ASSERT_NE(ps.find("\"state\":\"protected\""), std::string::npos) << ps << primary.Stderr();
  EXPECT_NE(ps.find("HTTP/1.1 200"), std::string::npos) << ps;
  EXPECT_NE(ps.find("Content-Type: application/json"), std::string::npos) << ps;
  EXPECT_NE(ps.find("Access-Control-Allow-Origin: *"), std::string::npos) << ps;
  for (const char* field : {"\"role\":\"primary\"", "\"host\":\"a\"", "\"peer\":\"b\"", "\"vm\":\"d1\"",
                            "\"runs_vm\":true", "\"dashboard_actions\":false", "\"peer_metrics\":\"127.0.0.1:9\"",
                            "\"generation\":\"1\"", "\"lag_us\":", "\"hold_p99_us\":", "\"log_bytes_per_s\":",
                            "\"last_failover\":\"\""})
    EXPECT_NE(ps.find(field), std::string::npos) << field << "\n" << ps;
  EXPECT_NE(ps.find("\"metrics\":\"" + p + "\""), std::string::npos) << ps;
  const std::string ss = WaitForApiStatus(s, "\"state\":\"protected\"", seconds(60));
  EXPECT_NE(ss.find("\"role\":\"secondary\""), std::string::npos) << ss;
  EXPECT_NE(ss.find("\"runs_vm\":false"), std::string::npos) << ss;
  EXPECT_NE(ss.find("\"peer\":\"a\""), std::string::npos) << ss;

  // The page: one self-contained HTML document (nothing fetched from elsewhere).
  const std::string page = HttpGet(p, "/");
  EXPECT_NE(page.find("HTTP/1.1 200"), std::string::npos) << page.substr(0, 300);
  EXPECT_NE(page.find("Content-Type: text/html"), std::string::npos) << page.substr(0, 300);
  for (const char* part : {"<!DOCTYPE html>", "id=\"pair-state\"", "id=\"lag-plot\"", "id=\"bw-plot\"",
                           "id=\"drill\"", "id=\"migrate\"", "/api/status", "</html>"})
    EXPECT_NE(page.find(part), std::string::npos) << part;
  EXPECT_EQ(page.find("src=\"http"), std::string::npos);
  EXPECT_EQ(page.find("href=\"http"), std::string::npos);

  // Without --dashboard-actions: refused, and the pair stays as it is.
  for (const char* path : {"/api/drill", "/api/migrate"}) {
    const std::string r = HttpRequest(p, "POST", path);
    EXPECT_NE(r.find("HTTP/1.1 403"), std::string::npos) << path << "\n" << r;
    EXPECT_NE(r.find("--dashboard-actions"), std::string::npos) << r;
  }
  EXPECT_NE(HttpRequest(p, "GET", "/api/drill").find("HTTP/1.1 405"), std::string::npos);
  std::this_thread::sleep_for(milliseconds(500));
  EXPECT_TRUE(primary.Running());
  ps = HttpGet(p, "/api/status");
  EXPECT_NE(ps.find("\"state\":\"protected\""), std::string::npos) << ps;
  primary.Signal(SIGTERM);
  EXPECT_EQ(primary.Wait(seconds(60)).exit_code, 0) << primary.Stderr();
  secondary.Wait(seconds(60));
}

// A failover drill from the dashboard's endpoint (--dashboard-actions): refused by
// the secondary (it does not run the VM), accepted by the primary, which ends at
// once (exit 6) as if its host died; the secondary takes over.
TEST(Operations, ADrillFromTheDashboardFailsThePairOver) {
  const std::string arbiter = NewArbiter();
  const std::string channel = "shm:" + ScratchPath("channel.sock");
  const std::string pc = ScratchPath("primary.control"), sc = ScratchPath("secondary.control");
  Process primary = Process::Start(
      PrimaryArgs(channel, arbiter, {"--name", "a", "--metrics", "127.0.0.1:0", "--dashboard-actions", "--control", pc}),
      "drill-primary");
  Process secondary = Process::Start(
      SecondaryArgs(channel, arbiter,
                    {"--name", "b", "--metrics", "127.0.0.1:0", "--dashboard-actions", "--control", sc}),
      "drill-secondary");
  const std::string p = MetricsAddress(primary), s = MetricsAddress(secondary);
  ASSERT_FALSE(p.empty()) << primary.Stderr();
  ASSERT_FALSE(s.empty()) << secondary.Stderr();
  std::string ps = WaitForApiStatus(p, "\"state\":\"protected\"", seconds(60));
  ASSERT_NE(ps.find("\"state\":\"protected\""), std::string::npos) << ps << primary.Stderr();
  EXPECT_NE(ps.find("\"dashboard_actions\":true"), std::string::npos) << ps;
  std::string ss = WaitForApiStatus(s, "\"state\":\"protected\"", seconds(60));
  ASSERT_NE(ss.find("\"state\":\"protected\""), std::string::npos) << ss << secondary.Stderr();

  // The secondary runs no VM: no drill there, by HTTP or the control socket.
  const std::string refused = HttpRequest(s, "POST", "/api/drill");
  EXPECT_NE(refused.find("HTTP/1.1 409"), std::string::npos) << refused;
  EXPECT_NE(refused.find("does not run a protected VM"), std::string::npos) << refused;
  ProcessResult cli = RunProcess({FtvmBinary(), "failover-test", "--control", sc}, seconds(20), "drill-cli");
  EXPECT_EQ(cli.exit_code, 1);
  EXPECT_NE(cli.err.find("does not run a protected VM"), std::string::npos) << cli.err;
  EXPECT_TRUE(secondary.Running());

  const std::string accepted = HttpRequest(p, "POST", "/api/drill");
  EXPECT_NE(accepted.find("HTTP/1.1 200"), std::string::npos) << accepted;
  EXPECT_NE(accepted.find("\"message\":\"failover drill: a ends now"), std::string::npos) << accepted;
  const ProcessResult ended = primary.Wait(seconds(30));
  EXPECT_EQ(ended.exit_code, 6) << ended.err;
  EXPECT_NE(ended.err.find("failover_drill"), std::string::npos) << ended.err;
  EXPECT_EQ(ended.err.find("primary: log "), std::string::npos) << ended.err;  // no final summary: it just ended

  ss = WaitForApiStatus(s, "\"state\":\"live\"", seconds(60));
  ASSERT_NE(ss.find("\"state\":\"live\""), std::string::npos) << ss << secondary.Stderr();
  EXPECT_NE(ss.find("\"runs_vm\":true"), std::string::npos) << ss;
  EXPECT_NE(ss.find("\"last_failover\":\"took over at position"), std::string::npos) << ss;
  const size_t body = ss.find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos);
  EXPECT_GT(NumberIn(ss.substr(body + 4), "failover_downtime_ms"), 0) << ss;
  EXPECT_EQ(NumberIn(ss.substr(body + 4), "generation"), 2) << ss;
  EXPECT_EQ(HttpGet(p, "/api/status"), "");  // the old primary is gone
  secondary.Signal(SIGTERM);
  EXPECT_EQ(secondary.Wait(seconds(60)).exit_code, 0) << secondary.Stderr();
}

// A planned switchover (ftvm switchover, the dashboard's Migrate): refused by the
// secondary; on the primary, the VM moves to the secondary, which runs it at once
// in the next arbiter generation, and the primary stops (exit 4).
TEST(Operations, ASwitchoverHandsTheVmToTheSecondary) {
  const std::string arbiter = NewArbiter();
  const std::string channel = "shm:" + ScratchPath("channel.sock");
  const std::string pc = ScratchPath("primary.control"), sc = ScratchPath("secondary.control");
  Process primary = Process::Start(PrimaryArgs(channel, arbiter, {"--name", "a", "--control", pc}), "switch-primary");
  Process secondary =
      Process::Start(SecondaryArgs(channel, arbiter, {"--name", "b", "--control", sc}), "switch-secondary");
  std::string s = WaitForStatus(sc, "\"state\":\"protected\"", seconds(60));
  ASSERT_NE(s.find("\"state\":\"protected\""), std::string::npos) << s << secondary.Stderr();
  ASSERT_NE(WaitForStatus(pc, "\"state\":\"protected\"", seconds(60)).find("protected"), std::string::npos);
  ProcessResult refused = RunProcess({FtvmBinary(), "switchover", "--control", sc}, seconds(20), "switch-refused");
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("not supported by this 'secondary' VMM"), std::string::npos) << refused.err;
  ProcessResult started = RunProcess({FtvmBinary(), "switchover", "--control", pc}, seconds(20), "switch");
  EXPECT_EQ(started.exit_code, 0) << started.err;
  EXPECT_NE(started.out.find("switchover:"), std::string::npos) << started.out;
  const ProcessResult ended = primary.Wait(seconds(60));
  EXPECT_EQ(ended.exit_code, 4) << ended.err;
  EXPECT_NE(ended.err.find("handed the VM over"), std::string::npos) << ended.err;
  s = WaitForStatus(sc, "\"state\":\"live\"", seconds(60));
  ASSERT_NE(s.find("\"state\":\"live\""), std::string::npos) << s << secondary.Stderr();
  EXPECT_NE(s.find("\"last_failover\":\"the primary handed the VM over"), std::string::npos) << s;
  EXPECT_EQ(NumberIn(s, "generation"), 2) << s;
  secondary.Signal(SIGTERM);
  EXPECT_EQ(secondary.Wait(seconds(60)).exit_code, 0) << secondary.Stderr();
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
                        << "no-verify = 1\n"
                        << "peer-metrics = \"nowhere\"\n";
  ProcessResult r = RunProcess({FtvmBinary(), "config", "check", config}, seconds(20), "check-bad");
  EXPECT_EQ(r.exit_code, 1);
  for (const char* expected : {":1: key 'guest': the guest image /no/such/guest.elf is not there",
                               ":3: key 'mem': bad value", ":4: key 'colour': unknown key",
                               ":6: key 'secondary.connect': not a channel address",
                               ":8: key 'secondary.no-verify': is an integer; it is a switch",
                               ":9: key 'secondary.peer-metrics': 'nowhere' is not HOST:PORT"})
    EXPECT_NE(r.err.find(expected), std::string::npos) << expected << "\n" << r.err;
}

}  // namespace
}  // namespace ftvm::itest
