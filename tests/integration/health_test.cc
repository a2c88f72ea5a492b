// Guest health with the real `ftvm` binary and the real guest kit: a mail store
// that hangs (hang_after_ms) is reset by `ftvm run --health-grace-ms` and serves
// its journal again; a kernel hung at ring 0 with interrupts off is reset too,
// and the VMM answers `ftvm status` meanwhile; --health-action restart exits with 124; and on a protected
// pair the primary resets the hung guest as a logged event, the secondary stays
// protected (no failover) and keeps verifying the replica after the reset. No
// timing is asserted: every wait is for an observable state, with a generous bound.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <thread>

#include "tests/support/harness.h"

namespace ftvm::itest {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Polls `path` until `needle` occurs `times` times or `timeout` passes.
bool WaitForCount(const std::string& path, const std::string& needle, size_t times, seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (CountOf(ReadFile(path), needle) >= times) return true;
    std::this_thread::sleep_for(milliseconds(100));
  }
  return CountOf(ReadFile(path), needle) >= times;
}

// Polls the status until `key` is at least `value`; returns the last status.
std::string WaitForNumber(const std::string& control, const std::string& key, double value, seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string status;
  while (std::chrono::steady_clock::now() < deadline) {
    status = StatusJson(control);
    if (NumberIn(status, key) >= value) return status;
    std::this_thread::sleep_for(milliseconds(200));
  }
  return status;
}

constexpr const char* kTap = "ftvmh0";
constexpr const char* kGuestIp = "10.0.0.2";

TEST(Health, HungMailStoreIsResetAndServesItsJournalAgain) {
  NetNamespace ns("health");
  ns.AddTap(kTap, "10.0.0.1/24");
  const std::string disk = ScratchPath("mail.img");
  {
    FILE* f = std::fopen(disk.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
    ASSERT_EQ(truncate(disk.c_str(), 32 << 20), 0);
  }
  const std::string console = ScratchPath("console.txt"), events = ScratchPath("events.jsonl"),
                    control = ScratchPath("control");
  // Every boot serves for 10 s, then hangs; 1.5 s of silence gets it reset. A
  // client request that lands in a hang is retried into the next boot.
  Process vm = Process::Start(
      ns.Wrap({FtvmBinary(), "run", "--guest", GuestImage(), "--app", "mailstore", "--disk", disk, "--tap", kTap,
               "--ip", std::string(kGuestIp) + "/24", "--console", console, "--arg", "beat_ms=250", "--arg",
               "hang_after_ms=10000", "--health-grace-ms", "1500", "--event-file", events, "--control", control}),
      "health-mailstore");
  ASSERT_TRUE(WaitForFileContains(console, "mailstore: ready", seconds(90))) << ReadFile(console) << vm.Stderr();
  auto mail = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {FtvmBinary(), "mail"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--to", kGuestIp, "--timeout-ms", "2000", "--retries", "10"});
    return RunProcess(ns.Wrap(argv), seconds(90), "mail");
  };
  ProcessResult d = mail({"deliver", "--id", "before-hang", "--mailbox", "alice", "--body", "kept across the reset"});
  ASSERT_EQ(d.exit_code, 0) << d.out << d.err;

  // The hang, noticed and reset; the guest boots again from the same disk.
  ASSERT_TRUE(WaitForFileContains(console, "mailstore: hanging now", seconds(90))) << ReadFile(console);
  ASSERT_TRUE(WaitForCount(console, "mailstore: ready", 2, seconds(120))) << ReadFile(console) << vm.Stderr();
  const std::string ev = ReadFile(events);
  EXPECT_NE(ev.find("\"event\":\"health.guest-hung\""), std::string::npos) << ev;
  EXPECT_NE(ev.find("\"event\":\"vm.guest-reset\""), std::string::npos) << ev;
  EXPECT_NE(vm.Stderr().find("WARN health.guest-hung"), std::string::npos) << vm.Stderr();
  // The rebooted store recovered its journal and answers with what it held.
  const std::string after = ReadFile(console).substr(ReadFile(console).find("mailstore: hanging now"));
  EXPECT_NE(after.find("journal recovered"), std::string::npos) << after;
  ProcessResult f = mail({"fetch", "--mailbox", "alice", "--index", "0"});
  EXPECT_EQ(f.exit_code, 0) << f.err;
  EXPECT_EQ(f.out, "kept across the reset");

  const std::string status = WaitForNumber(control, "health_resets", 1, seconds(30));
  EXPECT_GE(NumberIn(status, "health_resets"), 1) << status;
  EXPECT_GE(NumberIn(status, "health_hangs"), 1) << status;
  vm.Signal(SIGTERM);
  ProcessResult r = vm.Wait(seconds(60));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  unlink(disk.c_str());
}

TEST(Health, RestartActionExitsForTheSupervisor) {
  const std::string console = ScratchPath("console.txt"), events = ScratchPath("events.jsonl");
  ProcessResult r = RunProcess({FtvmBinary(), "run", "--guest", GuestImage(), "--app", "hang", "--arg", "beat_ms=100",
                                "--arg", "hang_after_ms=300", "--console", console, "--health-grace-ms", "500",
                                "--health-action", "restart", "--event-file", events},
                               seconds(120), "health-restart");
  ASSERT_FALSE(r.timed_out) << ReadFile(console) << r.err;
  EXPECT_EQ(r.exit_code, 124) << r.err;
  EXPECT_NE(ReadFile(console).find("hang: hanging now"), std::string::npos) << ReadFile(console);
  const std::string ev = ReadFile(events);
  EXPECT_NE(ev.find("\"event\":\"health.guest-hung\""), std::string::npos) << ev;
  EXPECT_NE(ev.find("\"event\":\"health.guest-restart\""), std::string::npos) << ev;
  EXPECT_EQ(ev.find("guest-reset"), std::string::npos) << ev;
}

// A hung kernel: the hang app traps into the guest kernel, which spins at ring 0
// with interrupts off (no exit, no interrupt taken). The VMM must still notice it,
// answer `ftvm status` during the hang, reset the guest, and stop on SIGTERM in a
// later hang.
TEST(Health, HungKernelWithInterruptsOffIsResetAndTheVmmStaysResponsive) {
  const std::string console = ScratchPath("console.txt"), events = ScratchPath("events.jsonl"),
                    control = ScratchPath("control");
  Process vm = Process::Start({FtvmBinary(), "run", "--guest", GuestImage(), "--app", "hang", "--arg", "beat_ms=100",
                               "--arg", "hang_after_ms=500", "--arg", "mode=kernel", "--console", console,
                               "--health-grace-ms", "3000", "--event-file", events, "--control", control},
                              "health-kernel");
  ASSERT_TRUE(WaitForFileContains(console, "hang: hanging the kernel now", seconds(90))) << ReadFile(console)
                                                                                         << vm.Stderr();
  // Hung, not yet reset (3 s of grace): the control socket answers meanwhile.
  const std::string during = StatusJson(control);
  ASSERT_FALSE(during.empty()) << "ftvm status got no answer during the kernel hang\n" << vm.Stderr();
  EXPECT_GE(NumberIn(during, "health_beats"), 1) << during;
  // Reset, booted again (its banner twice), hung again.
  ASSERT_TRUE(WaitForCount(console, "hang: hanging the kernel now", 2, seconds(120))) << ReadFile(console)
                                                                                      << vm.Stderr();
  const std::string ev = ReadFile(events);
  EXPECT_NE(ev.find("\"event\":\"health.guest-hung\""), std::string::npos) << ev;
  EXPECT_NE(ev.find("\"event\":\"vm.guest-reset\""), std::string::npos) << ev;
  EXPECT_EQ(CountOf(ReadFile(console), "hang: beating every 100 ms, hanging the kernel"), 2u) << ReadFile(console);
  EXPECT_EQ(ReadFile(console).find("guest exception"), std::string::npos) << "the int3 was taken as a breakpoint\n"
                                                                          << ReadFile(console);
  const std::string status = WaitForNumber(control, "health_resets", 1, seconds(30));
  EXPECT_GE(NumberIn(status, "health_resets"), 1) << status;
  // A VMM whose guest spins at ring 0 with interrupts off still stops when told.
  vm.Signal(SIGTERM);
  ProcessResult r = vm.Wait(seconds(60));
  EXPECT_FALSE(r.timed_out) << r.err;
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(Health, GuestWithoutHeartbeatIsNeverJudged) {
  // The timers app never beats: with a tiny grace period it still runs to its end.
  ProcessResult r = RunProcess({FtvmBinary(), "run", "--guest", GuestImage(), "--app", "timers", "--arg", "ticks=20",
                                "--arg", "period_us=20000", "--health-grace-ms", "1", "--console",
                                ScratchPath("console.txt")},
                               seconds(120), "health-silent");
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("guest-hung"), std::string::npos) << r.err;
}

TEST(Health, ProtectedPairResetsInLockstepWithoutFailover) {
  const std::string arbiter = ScratchPath("arbiter");
  ASSERT_EQ(mkdir(arbiter.c_str(), 0755), 0);
  const std::string port = std::to_string(20000 + getpid() % 20000);
  const std::string channel = "tcp:127.0.0.1:" + port;
  const std::string pc = ScratchPath("primary.control"), sc = ScratchPath("secondary.control");
  const std::string events = ScratchPath("events.jsonl");
  const std::string pcon = ScratchPath("primary.console"), scon = ScratchPath("secondary.console");
  // The guest beats every 100 ms and hangs 1.5 s after each boot; 1 s of silence
  // gets it reset. The pair's own heartbeats (100 ms, lost after 2 s) go on.
  Process primary = Process::Start(
      {FtvmBinary(), "primary", "--listen", channel, "--arbiter", arbiter, "--name", "a", "--guest", GuestImage(),
       "--app", "hang", "--arg", "beat_ms=100", "--arg", "hang_after_ms=1500", "--console", pcon,
       "--health-grace-ms", "1000", "--control", pc, "--event-file", events, "--verify-interval-ms", "20"},
      "health-primary");
  Process secondary = Process::Start({FtvmBinary(), "secondary", "--connect", channel, "--arbiter", arbiter, "--name",
                                      "b", "--console", scon, "--control", sc, "--event-file", events},
                                     "health-secondary");
  // Two resets on the primary, each replayed by the replica at the same position.
  std::string p = WaitForNumber(pc, "health_resets", 2, seconds(240));
  ASSERT_GE(NumberIn(p, "health_resets"), 2) << p << "\n" << primary.Stderr() << "\n" << ReadFile(pcon);
  EXPECT_NE(p.find("\"state\":\"protected\""), std::string::npos) << p;
  std::string s = StatusJson(sc);
  EXPECT_NE(s.find("\"state\":\"protected\""), std::string::npos) << s << secondary.Stderr();
  EXPECT_NE(s.find("\"last_divergence\":\"\""), std::string::npos) << s;  // none
  // Verification goes on after the resets: the replica's state digests still
  // match the primary's (a divergence would have ended the secondary).
  const double verified = NumberIn(s, "verifications");
  s = WaitForNumber(sc, "verifications", verified + 3, seconds(120));
  EXPECT_GE(NumberIn(s, "verifications"), verified + 3) << s;
  EXPECT_NE(s.find("\"state\":\"protected\""), std::string::npos) << s << secondary.Stderr();
  // The replica's console shows the same boots: it reset too.
  EXPECT_GE(CountOf(ReadFile(scon), "hang: beating every"), 2u) << ReadFile(scon);

  const std::string ev = ReadFile(events);
  EXPECT_NE(ev.find("\"event\":\"health.guest-hung\",\"vm\":\"hang\",\"role\":\"primary\""), std::string::npos) << ev;
  EXPECT_NE(ev.find("\"event\":\"vm.guest-reset\",\"vm\":\"hang\",\"role\":\"primary\""), std::string::npos) << ev;
  EXPECT_NE(ev.find("\"event\":\"vm.guest-reset\",\"vm\":\"hang\",\"role\":\"secondary\""), std::string::npos) << ev;
  EXPECT_EQ(ev.find("primary_lost"), std::string::npos) << ev;
  EXPECT_EQ(ev.find("secondary.LIVE"), std::string::npos) << ev;

  // A clean stop: the primary ends its log, and the replica ends identical to it.
  primary.Signal(SIGTERM);
  ProcessResult pr = primary.Wait(seconds(60));
  EXPECT_EQ(pr.exit_code, 0) << pr.err;
  ProcessResult sr = secondary.Wait(seconds(60));
  EXPECT_EQ(sr.exit_code, 0) << sr.err;
}

}  // namespace
}  // namespace ftvm::itest
