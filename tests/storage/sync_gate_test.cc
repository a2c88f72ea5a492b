// Synchronous DR's gate (storage/sync_gate.h) with a real mirror: a write's report is
// held until the target durably holds it (and the mirror's acknowledgement wakes the
// VM); with no target, the report is released after the timeout and the gate says it
// went asynchronous; it turns synchronous again once the target holds every write.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "common/clock.h"
#include "storage/disk_mirror.h"
#include "storage/dr_replica.h"
#include "storage/sync_gate.h"
#include "tests/storage/test_util.h"

namespace ftvm::storage {
namespace {

using namespace std::chrono_literals;
using testutil::FakeDisk;
using testutil::MakeImage;
using testutil::ScratchDir;

constexpr uint64_t kDisk = 1u << 20;

MirrorOptions Options(const std::string& image, std::function<void()> on_durable) {
  MirrorOptions o;
  o.disk_path = image;
  o.report = 0ns;
  o.heartbeat = 10ms;
  o.retry = 50ms;
  o.on_durable = std::move(on_durable);
  return o;
}

// Polls like the VM does when woken: true once `mark` is released.
bool ReleasedWithin(SyncDrGate& gate, uint64_t mark, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (gate.output_released(mark)) return true;
    std::this_thread::sleep_for(2ms);
  }
  return false;
}

TEST(SyncDrGate, HoldsAWriteUntilTheTargetHasItDurably) {
  const std::string dir = ScratchDir("sync");
  const std::string src = dir + "/src.img";
  MakeImage(src, kDisk);
  auto clock = MakeSystemClock();
  std::atomic<int> wakes{0};
  SyncDrGate* gate_ptr = nullptr;
  DiskMirror m(MakeLocalTarget(dir + "/dst.img"), Options(src, [&] {
                 if (gate_ptr) gate_ptr->durable_advanced();
               }), *clock);
  SyncDrGate gate(m, 30s, *clock, [&] { ++wakes; });
  gate_ptr = &gate;
  FakeDisk disk(src, m);
  m.start();
  ASSERT_TRUE(m.wait_synced(20s)) << m.status().last_error;
  for (int i = 0; i < 20; ++i) {
    disk.write(uint64_t(i) * 4096, std::vector<uint8_t>(4096, uint8_t(i + 1)));
    const uint64_t mark = gate.output_mark(vmm::OutputStream::kDiskWrites, 0);
    EXPECT_EQ(mark, m.status().head_seq);
    ASSERT_TRUE(ReleasedWithin(gate, mark, 10s)) << "write " << i;
    EXPECT_GE(m.status().durable_seq, mark) << "released before the target held it durably";
  }
  EXPECT_FALSE(gate.degraded());
  EXPECT_EQ(gate.output_mark(vmm::OutputStream::kFrames, 0), 0u) << "frames are not held";
  EXPECT_TRUE(gate.output_released(0));
  m.stop();
  gate_ptr = nullptr;
}

TEST(SyncDrGate, GoesAsynchronousAfterTheTimeoutAndBackWhenTheTargetHoldsEverything) {
  const std::string dir = ScratchDir("sync-lost");
  const std::string src = dir + "/src.img";
  MakeImage(src, kDisk);
  auto clock = MakeSystemClock();
  // No replica listens yet: nothing can be confirmed.
  const std::string addr = "tcp:127.0.0.1:" + std::to_string(30000 + getpid() % 20000);
  SyncDrGate* gate_ptr = nullptr;
  DiskMirror m(MakeChannelTarget(addr), Options(src, [&] {
                 if (gate_ptr) gate_ptr->durable_advanced();
               }), *clock);
  std::atomic<int> wakes{0};
  SyncDrGate gate(m, 300ms, *clock, [&] { ++wakes; });
  gate_ptr = &gate;
  FakeDisk disk(src, m);
  m.start();
  disk.write(0, std::vector<uint8_t>(4096, 7));
  const uint64_t mark = gate.output_mark(vmm::OutputStream::kDiskWrites, 0);
  EXPECT_FALSE(gate.output_released(mark)) << "held while the target does not have it";
  std::this_thread::sleep_for(150ms);
  EXPECT_FALSE(gate.output_released(mark)) << "still within the timeout";
  EXPECT_GT(wakes.load(), 0) << "the watchdog wakes the VM so that the timeout is seen";
  ASSERT_TRUE(ReleasedWithin(gate, mark, 5s));
  EXPECT_TRUE(gate.degraded());
  disk.write(4096, std::vector<uint8_t>(4096, 8));
  EXPECT_TRUE(gate.output_released(gate.output_mark(vmm::OutputStream::kDiskWrites, 0))) << "asynchronous now";

  // The replica comes up: the mirror catches up and the gate is synchronous again.
  ReplicaOptions ro;
  ro.listen = addr;
  ro.dir = dir + "/replica";
  ro.report = 0ns;
  DrReplica replica(ro, *clock);
  std::thread serve([&] { replica.run(); });
  bool resumed = false;
  for (int i = 0; i < 300 && !resumed; ++i) {
    std::this_thread::sleep_for(50ms);
    resumed = !gate.degraded();
  }
  EXPECT_TRUE(resumed) << m.status().last_error;
  disk.write(8192, std::vector<uint8_t>(4096, 9));
  const uint64_t mark2 = gate.output_mark(vmm::OutputStream::kDiskWrites, 0);
  EXPECT_TRUE(ReleasedWithin(gate, mark2, 10s));
  EXPECT_GE(m.status().durable_seq, mark2);
  m.stop();
  gate_ptr = nullptr;
  replica.stop();
  serve.join();
}

}  // namespace
}  // namespace ftvm::storage
