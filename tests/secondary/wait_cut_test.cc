// A VMM task (a migration round, a snapshot) that needs a boundary while the guest
// idles: the machine ends the guest's wait instead of waiting for its next
// interrupt, the recorder logs the cut, and the replica ends its wait at the same
// place. Real software CPU, real log file, real replica.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include "common/clock.h"
#include "eventlog/reader.h"
#include "eventlog/writer.h"
#include "primary/log_header.h"
#include "primary/recorder.h"
#include "secondary/record_source.h"
#include "secondary/replayer.h"
#include "vmm/machine.h"

namespace ftvm {
namespace {

using namespace std::chrono_literals;

std::string Slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool WaitForConsole(const std::string& path, const std::string& want) {
  for (int i = 0; i < 3000; ++i) {
    if (Slurp(path) == want) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

TEST(WaitCut, ATaskEndsAnIdleWaitAndTheReplicaEndsItThereToo) {
  const std::string dir = testing::TempDir() + "/ftvm_wait_cut_" + std::to_string(getpid());
  const std::string log_path = dir + ".log", console = dir + ".console", replica_console = dir + ".replica";
  vmm::VmConfig c;
  c.guest_image = FTVM_TEST_GUEST_IDLE_THEN_COMPUTE;
  c.app = "idle_then_compute";
  c.mem_mib = 16;
  c.backend = vmm::BackendKind::kEmulated;
  c.console_path = console;
  c.mode = vmm::ExecutionMode::kRecord;
  auto clock = MakeSystemClock();
  auto random = MakeSystemRandom();
  primary::RecorderStats recorded;
  {
    vmm::Machine m(c, *clock, *random);
    primary::RecorderOptions ro;
    ro.checkpoint_after_ns = 1'000'000;  // a host event waiting 1 ms for an exit forces a checkpoint
    primary::Recorder recorder(m, ro);
    eventlog::WriterOptions wo;
    wo.overwrite = true;
    eventlog::LogWriter writer = eventlog::LogWriter::Create(log_path, recorder.header(), wo);
    recorder.attach(&writer);
    m.set_hooks(&recorder);
    std::future<int> ran = std::async(std::launch::async, [&] { return m.run(); });
    // Its third exit (after arming the timer and printing 'w') is the wait: once the
    // machine counted it, a task ends that wait, whether the vCPU sleeps already or
    // is on its way there.
    for (int i = 0; i < 3000 && m.stats().mmio_exits < 3; ++i) std::this_thread::sleep_for(10ms);
    ASSERT_EQ(m.stats().mmio_exits, 3u) << "the guest never started idling: " << Slurp(console);

    // Its timer fires in 60 s: a task that ran now ended the wait.
    uint64_t interrupts_at_task = UINT64_MAX;
    std::future<bool> idle_task = std::async(std::launch::async, [&] {
      return m.run_at_boundary([&] { interrupts_at_task = m.stats().interrupts; });
    });
    ASSERT_EQ(idle_task.wait_for(30s), std::future_status::ready) << "the task waited for the guest's timer";
    EXPECT_TRUE(idle_task.get());
    EXPECT_EQ(interrupts_at_task, 0u);
    EXPECT_EQ(m.stats().wait_cuts, 1u);

    // Now it computes without exits: a task reaches it by a kick, and leaves no
    // host event behind for which the recorder would force an epoch checkpoint.
    ASSERT_TRUE(WaitForConsole(console, "wc"));
    EXPECT_TRUE(m.run_at_boundary([] {}));
    EXPECT_EQ(m.host_events_waiting_since_ns(), 0u) << "the task left a host event for the next exit";
    ASSERT_EQ(ran.wait_for(60s), std::future_status::ready) << "the guest never powered off";
    EXPECT_EQ(ran.get(), 42) << "the guest saw a timer tick, or the wait never ended";
    recorded = recorder.stats();
    EXPECT_EQ(recorded.wait_cuts, 1u);
    EXPECT_EQ(recorded.checkpoints, 0u) << "a task left a host event pending";
    EXPECT_EQ(recorded.interrupts, 0u);
    ASSERT_TRUE(recorder.error().empty()) << recorder.error();
  }

  eventlog::LogReader reader = eventlog::LogReader::OpenFile(log_path);
  vmm::VmConfig rc = primary::ReplicaConfig(reader.header(), "", "", replica_console);
  vmm::Machine replica(rc, *clock, *random);
  secondary::FileSource source(reader);
  secondary::Replayer replayer(replica, source, secondary::ReplayOptions{});
  replica.set_hooks(&replayer);
  EXPECT_EQ(replica.run(), 42);
  EXPECT_EQ(replayer.outcome(), secondary::ReplayOutcome::kIdentical) << replayer.message();
  EXPECT_EQ(replayer.stats().wait_cuts, 1u);
  EXPECT_EQ(Slurp(replica_console), "wc");
  unlink(log_path.c_str());
  unlink(console.c_str());
  unlink(replica_console.c_str());
}

}  // namespace
}  // namespace ftvm
