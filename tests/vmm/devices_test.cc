// Register semantics of the VMM's own small devices (virtio is tested in devices/).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "vmm/abi/ftvm_abi.h"
#include "vmm/devices/clock_device.h"
#include "vmm/devices/console.h"
#include "vmm/devices/irq_controller.h"
#include "vmm/devices/power.h"
#include "vmm/devices/rng.h"
#include "vmm/devices/timer.h"

namespace ftvm::vmm {
namespace {

LiveDeviceIo live_io;  // these tests drive devices directly, as a live VM does

class ManualClock : public Clock {
 public:
  uint64_t monotonic_ns() override { return mono; }
  uint64_t wall_ns() override { return wall; }
  uint64_t mono = 1000, wall = 1700000000000000000ull;
};

class CountingRandom : public RandomSource {
 public:
  bool fill(std::span<uint8_t> out) override {
    for (auto& b : out) b = next++;
    return true;
  }
  uint8_t next = 1;
};

std::string TempPath(const char* tag) {
  return std::string(testing::TempDir()) + "/ftvm_" + tag + "_" + std::to_string(getpid());
}

std::string Slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(ClockDevice, CountsFromVmStartAndPassesWallTime) {
  ManualClock clock;
  ClockDevice dev(clock, live_io);
  clock.mono = 1500;
  EXPECT_EQ(dev.mmio_read(FTVM_CLOCK_MONO_NS, 8), 500u);
  EXPECT_EQ(dev.mmio_read(FTVM_CLOCK_WALL_NS, 8), clock.wall);
  EXPECT_EQ(dev.mmio_read(0x40, 8), 0u);
}

TEST(Console, WritesCharsAndIovecs) {
  GuestMemory mem = GuestMemory::Create(1 << 20);
  std::string path = TempPath("console");
  {
    Console con(mem, -1, Console::OpenOutput(path));
    con.mmio_write(FTVM_CONSOLE_PUTC, 1, 'A');
    con.port_write(FTVM_PORT_CONSOLE, 1, 'B');
    mem.write(0x5000, "hello\n", 6);
    mem.write_obj(0x4000, ftvm_iovec{0x5000, 6});
    con.mmio_write(FTVM_CONSOLE_WRITE_IOV, 8, 0x4000);
    // A descriptor pointing outside RAM is rejected, not followed.
    mem.write_obj(0x4000, ftvm_iovec{(1 << 20) - 2, 6});
    con.mmio_write(FTVM_CONSOLE_WRITE_IOV, 8, 0x4000);
    con.mmio_write(FTVM_CONSOLE_WRITE_IOV, 8, ~0ull);
    EXPECT_EQ(con.bytes_written(), 8u);
  }
  EXPECT_EQ(Slurp(path), "ABhello\n");
  unlink(path.c_str());
}

TEST(Console, OpenOutputNamesTheFile) {
  try {
    Console::OpenOutput("/nonexistent-dir/console.txt");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("console output /nonexistent-dir/console.txt"), std::string::npos);
  }
}

TEST(Rng, ReadsAndFillsFromTheSource) {
  GuestMemory mem = GuestMemory::Create(1 << 20);
  CountingRandom src;
  Rng rng(mem, src, live_io);
  EXPECT_EQ(rng.mmio_read(FTVM_RNG_DATA, 8), 0x0807060504030201ull);
  mem.write_obj(0x1000, ftvm_iovec{0x2000, 4});
  rng.mmio_write(FTVM_RNG_FILL_IOV, 8, 0x1000);
  uint8_t got[5] = {};
  mem.read(0x2000, got, 5);
  EXPECT_EQ(got[0], 9);
  EXPECT_EQ(got[3], 12);
  EXPECT_EQ(got[4], 0);  // exactly len bytes
  // Oversized request is refused.
  mem.write_obj(0x1000, ftvm_iovec{0x2000, FTVM_RNG_MAX_FILL + 1});
  rng.mmio_write(FTVM_RNG_FILL_IOV, 8, 0x1000);
  EXPECT_EQ(src.next, 13);
}

TEST(Power, FirstExitCodeWins) {
  Power p;
  EXPECT_FALSE(p.exit_code());
  p.mmio_write(FTVM_POWER_OFF, 4, 0x103);
  p.port_write(FTVM_PORT_POWER, 1, 9);
  ASSERT_TRUE(p.exit_code());
  EXPECT_EQ(*p.exit_code(), 3);
}

TEST(InterruptController, PendingMaskAckAndPriority) {
  int waits = 0;
  InterruptController irq([&] { ++waits; return false; }, live_io);
  EXPECT_FALSE(irq.next_vector());
  irq.raise(5);
  irq.raise(2);
  irq.raise(2);  // coalesces
  irq.raise(40);  // out of range: ignored
  EXPECT_EQ(irq.mmio_read(FTVM_IRQ_PENDING, 4), (1u << 5) | (1u << 2));
  EXPECT_EQ(irq.next_vector(), FTVM_IRQ_VECTOR_BASE + 2);
  irq.mmio_write(FTVM_IRQ_MASK, 4, 1u << 2);
  EXPECT_EQ(irq.next_vector(), FTVM_IRQ_VECTOR_BASE + 5);
  irq.delivered(uint8_t(FTVM_IRQ_VECTOR_BASE + 5));
  EXPECT_EQ(irq.delivered_count(), 1u);
  EXPECT_FALSE(irq.next_vector());  // line 2 pending but masked
  EXPECT_EQ(irq.mmio_read(FTVM_IRQ_PENDING, 4), 1u << 2);
  irq.mmio_write(FTVM_IRQ_ACK, 4, 1u << 2);
  EXPECT_EQ(irq.mmio_read(FTVM_IRQ_PENDING, 4), 0u);
  // WAIT with nothing pending asks the machine to wait; a stopping machine ends it.
  irq.mmio_read(FTVM_IRQ_WAIT, 4);
  EXPECT_EQ(waits, 1);
}

TEST(InterruptController, WaitReturnsOnceALineIsRaised) {
  InterruptController* self = nullptr;
  int waits = 0;
  InterruptController irq([&] {
    if (++waits == 3) self->raise(FTVM_IRQ_TIMER);
    return true;
  }, live_io);
  self = &irq;
  EXPECT_EQ(irq.mmio_read(FTVM_IRQ_WAIT, 4), 1u << FTVM_IRQ_TIMER);
  EXPECT_EQ(waits, 3);
}

TEST(InterruptController, WaitIfSkipsTheWaitWhenAnInterruptCameSince) {
  int waits = 0;
  InterruptController* self = nullptr;
  InterruptController irq([&] {
    ++waits;
    self->raise(FTVM_IRQ_TIMER);
    return true;
  }, live_io);
  self = &irq;
  irq.raise(FTVM_IRQ_TIMER);
  irq.delivered(uint8_t(FTVM_IRQ_VECTOR_BASE + FTVM_IRQ_TIMER));  // delivered_ = 1
  // The guest saw 0 interrupts when it last looked: one came since, no waiting.
  irq.mmio_write(FTVM_IRQ_WAIT_IF, 8, 0);
  EXPECT_EQ(waits, 0);
  // The guest is up to date: it waits until a line is pending.
  irq.mmio_write(FTVM_IRQ_WAIT_IF, 8, 1);
  EXPECT_EQ(waits, 1);
  EXPECT_TRUE(irq.has_deliverable());
}

TEST(Timer, OneShotRaisesTheTimerLineOnce) {
  InterruptController irq([] { return false; }, live_io);
  Timer t(irq, live_io);
  // 300 ms: the wake-up below must come before expiry even on a loaded host (a
  // 1 ms timer expired first when CI's other tests held both cores).
  t.mmio_write(FTVM_TIMER_ARM_NS, 8, 300000000);
  t.host_ready();  // a spurious wake-up before expiry changes nothing
  t.poll();
  EXPECT_EQ(t.mmio_read(FTVM_TIMER_FIRED, 8), 0u);
  std::this_thread::sleep_for(std::chrono::milliseconds(320));
  t.poll();  // expired, but the machine has not reported the timerfd ready yet
  EXPECT_EQ(t.fired(), 0u);
  t.host_ready();
  t.poll();
  t.poll();
  EXPECT_EQ(t.mmio_read(FTVM_TIMER_FIRED, 8), 1u);
  EXPECT_EQ(irq.next_vector(), FTVM_IRQ_VECTOR_BASE + FTVM_IRQ_TIMER);
  // Cancel: arming then writing 0 never fires.
  t.mmio_write(FTVM_TIMER_ARM_NS, 8, 1000000);
  t.mmio_write(FTVM_TIMER_ARM_NS, 8, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(3));
  t.host_ready();
  t.poll();
  EXPECT_EQ(t.fired(), 1u);
}

}  // namespace
}  // namespace ftvm::vmm
