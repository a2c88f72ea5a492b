// Guest health: the heartbeat device, Machine::reset_guest and the health monitor,
// with a tiny ring-0 guest (tests/vmm/guests/beat_hang.S) that prints a line per
// boot, beats once and hangs.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "vmm/abi/ftvm_abi.h"
#include "vmm/devices/health.h"
#include "vmm/devices/irq_controller.h"
#include "vmm/devices/timer.h"
#include "vmm/health_monitor.h"
#include "vmm/machine.h"

namespace ftvm::vmm {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

size_t Boots(const std::string& console) { return size_t(std::count(console.begin(), console.end(), 'B')); }

// Polls `done` for up to a minute (the software CPU is slow on a loaded host).
bool WaitFor(const std::function<bool()>& done) {
  for (int i = 0; i < 6000; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

VmConfig BeatHangConfig(const std::string& tag) {
  VmConfig c;
  c.guest_image = FTVM_TEST_GUEST_BEAT_HANG;
  c.app = "beat_hang";
  c.mem_mib = 16;
  c.backend = BackendKind::kEmulated;
  c.console_path = std::string(testing::TempDir()) + "/ftvm_health_" + tag + "_" + std::to_string(getpid());
  unlink(c.console_path.c_str());
  return c;
}

// Runs the machine on its own thread; stops and joins it on scope exit.
struct Running {
  explicit Running(Machine& m) : m(m), thread([this] { code = this->m.run(); }) {}
  ~Running() { finish(); }
  int finish() {
    if (thread.joinable()) {
      m.stop();
      thread.join();
    }
    return code;
  }
  Machine& m;
  int code = 0;
  std::thread thread;
};

TEST(GuestReset, TheGuestBootsAgainWithThePositionCountingOn) {
  auto clock = MakeSystemClock();
  auto random = MakeSystemRandom();
  VmConfig c = BeatHangConfig("reset");
  Machine m(c, *clock, *random);
  Running run(m);
  ASSERT_TRUE(WaitFor([&] { return m.health().beats() == 1; })) << Slurp(c.console_path);
  EXPECT_EQ(Slurp(c.console_path), "B1\n");
  uint64_t before = 0, after = 0;
  ASSERT_TRUE(m.run_at_boundary([&] {
    before = m.position();
    m.reset_guest("test");
    after = m.position();
  }));
  EXPECT_EQ(after, before);  // the reset itself is no exit
  EXPECT_EQ(m.guest_resets(), 1u);
  // The second boot prints again and beats again (the reset forgot the first beat).
  ASSERT_TRUE(WaitFor([&] { return Boots(Slurp(c.console_path)) == 2 && m.health().beats() == 1; }))
      << Slurp(c.console_path);
  // "B1" again: the boot counter in RAM went back to the image's 0.
  EXPECT_EQ(Slurp(c.console_path), "B1\nB1\n");
  uint64_t now = 0;
  ASSERT_TRUE(m.run_at_boundary([&] { now = m.position(); }));
  EXPECT_EQ(now, before + 4);  // three putc and the beat: counted on from before the reset
  EXPECT_EQ(run.finish(), -1);
  unlink(c.console_path.c_str());
}

TEST(HealthMonitor, ResetsAGuestThatStopsBeating) {
  auto clock = MakeSystemClock();
  auto random = MakeSystemRandom();
  VmConfig c = BeatHangConfig("monitor");
  Machine m(c, *clock, *random);
  HealthMonitor health(m, {.grace_ns = 200'000'000, .action = HealthAction::kReset});
  Running run(m);
  // Each boot beats once and hangs: the monitor resets it again and again.
  ASSERT_TRUE(WaitFor([&] { return m.guest_resets() >= 2 && Boots(Slurp(c.console_path)) >= 3; }))
      << "resets " << m.guest_resets() << ", console: " << Slurp(c.console_path);
  const HealthStatus s = health.status();
  EXPECT_TRUE(s.enabled);
  EXPECT_GE(s.hangs, 2u);
  EXPECT_GE(s.resets, 2u);
  health.stop();
  EXPECT_EQ(run.finish(), -1);
  EXPECT_FALSE(health.restart_requested());
  unlink(c.console_path.c_str());
}

TEST(HealthMonitor, RestartStopsTheVmForItsSupervisor) {
  auto clock = MakeSystemClock();
  auto random = MakeSystemRandom();
  VmConfig c = BeatHangConfig("restart");
  Machine m(c, *clock, *random);
  HealthMonitor health(m, {.grace_ns = 100'000'000, .action = HealthAction::kRestart});
  Running run(m);
  ASSERT_TRUE(WaitFor([&] { return health.restart_requested(); }));
  run.thread.join();  // stopped by the monitor, not by the test
  EXPECT_EQ(run.code, -1);
  EXPECT_EQ(m.guest_resets(), 0u);
  EXPECT_EQ(health.status().hangs, 1u);
  EXPECT_EQ(Slurp(c.console_path), "B1\n");
  unlink(c.console_path.c_str());
}

TEST(HealthMonitor, NeverJudgesAGuestThatHasNotBeaten) {
  // Not run: the guest never beats, however long the monitor looks.
  auto clock = MakeSystemClock();
  auto random = MakeSystemRandom();
  VmConfig c = BeatHangConfig("silent");
  Machine m(c, *clock, *random);
  HealthMonitor health(m, {.grace_ns = 20'000'000, .action = HealthAction::kRestart});
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(health.status().beats, 0u);
  EXPECT_EQ(health.status().hangs, 0u);
  EXPECT_FALSE(health.restart_requested());
}

TEST(HealthMonitor, OffWithoutAGracePeriod) {
  auto clock = MakeSystemClock();
  auto random = MakeSystemRandom();
  Machine m(BeatHangConfig("off"), *clock, *random);
  HealthMonitor health(m, {});
  EXPECT_FALSE(health.status().enabled);
}

TEST(HealthAction, Parses) {
  EXPECT_EQ(ParseHealthAction("reset"), HealthAction::kReset);
  EXPECT_EQ(ParseHealthAction("restart"), HealthAction::kRestart);
  EXPECT_FALSE(ParseHealthAction("reboot").has_value());
  EXPECT_EQ(HealthActionName(HealthAction::kRestart), "restart");
}

TEST(HealthDevice, CountsBeatsUntilReset) {
  auto clock = MakeSystemClock();
  HealthDevice h(*clock);
  EXPECT_EQ(h.beats(), 0u);
  h.mmio_write(FTVM_HEALTH_HEARTBEAT, 8, 7);
  h.mmio_write(0x10, 8, 9);  // not a register: ignored
  EXPECT_EQ(h.beats(), 1u);
  EXPECT_EQ(h.last_value(), 7u);
  EXPECT_NE(h.last_beat_ns(), 0u);
  EXPECT_EQ(h.mmio_read(FTVM_HEALTH_HEARTBEAT, 8), 0u);  // nothing to read back: no input
  h.reset();
  EXPECT_EQ(h.beats(), 0u);
  EXPECT_EQ(h.last_beat_ns(), 0u);
}

TEST(DeviceReset, TimerAndInterruptControllerForgetTheGuest) {
  LiveDeviceIo live_io;
  InterruptController irq([] { return false; }, live_io);
  Timer t(irq, live_io);
  t.mmio_write(FTVM_TIMER_ARM_NS, 8, 1000000);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  t.host_ready();
  t.poll();
  ASSERT_EQ(t.fired(), 1u);
  irq.mmio_write(FTVM_IRQ_MASK, 4, 0x6);
  irq.delivered(FTVM_IRQ_VECTOR_BASE + FTVM_IRQ_TIMER);
  irq.raise(1);
  t.mmio_write(FTVM_TIMER_ARM_NS, 8, 1000000);  // armed again when the reset comes
  t.reset();
  irq.reset();
  EXPECT_FALSE(t.armed());
  EXPECT_EQ(t.fired(), 0u);
  EXPECT_EQ(irq.pending(), 0u);
  EXPECT_EQ(irq.mask(), 0u);
  EXPECT_EQ(irq.delivered_count(), 0u);
  // The host timer was disarmed too: nothing expires later.
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  t.host_ready();
  t.poll();
  EXPECT_EQ(t.fired(), 0u);
  EXPECT_EQ(irq.pending(), 0u);
}

}  // namespace
}  // namespace ftvm::vmm
