// vCPU state and whole-machine checkpoints on the software CPU, with the minimal
// test guest (tests/vmm/guests/minimal.S): the emulated backend's regs(),
// save_state() and restore_state() before run() and after it returned, and at every
// boundary of a recorded run; Machine::save_devices/restore_devices; and the
// checkpoint helpers (CaptureCheckpoint, CheckpointLoader, DeviceStateBytes).
#include "vmm/checkpoint.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "vmm/machine.h"
#include "vmm/snapshot.pb.h"

namespace ftvm::vmm {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// One minimal-guest machine on the software CPU, with its own console file.
class TestVm {
 public:
  explicit TestVm(ExecutionMode mode = ExecutionMode::kLive) {
    static std::atomic<int> counter{0};
    config_.guest_image = FTVM_TEST_GUEST_MINIMAL;
    config_.app = "minimal";
    config_.mem_mib = 16;
    config_.backend = BackendKind::kEmulated;
    config_.mode = mode;
    config_.console_path = std::string(::testing::TempDir()) + "/ftvm_checkpoint_console_" +
                           std::to_string(getpid()) + "_" + std::to_string(counter++);
    machine_ = std::make_unique<Machine>(config_, *clock_, *random_);
  }
  ~TestVm() {
    machine_.reset();
    unlink(config_.console_path.c_str());
  }
  Machine& m() { return *machine_; }
  CpuBackend& cpu() { return machine_->backend(); }
  std::string console() const { return Slurp(config_.console_path); }

  // Runs with a watchdog: a guest that went astray is stopped after `limit`.
  int RunWithWatchdog(std::chrono::seconds limit = std::chrono::seconds(10)) {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    std::thread watchdog([&] {
      std::unique_lock<std::mutex> lock(mu);
      if (!cv.wait_for(lock, limit, [&] { return done; })) machine_->stop();
    });
    int code = -2;
    try {
      code = machine_->run();
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(mu);
        done = true;
      }
      cv.notify_all();
      watchdog.join();
      throw;
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
    }
    cv.notify_all();
    watchdog.join();
    return code;
  }

 private:
  std::unique_ptr<Clock> clock_ = MakeSystemClock();
  std::unique_ptr<RandomSource> random_ = MakeSystemRandom();
  VmConfig config_;
  std::unique_ptr<Machine> machine_;
};

std::string RegsDiff(const VcpuRegs& got, const VcpuRegs& want) {
  return VcpuRegs::first_difference(got, want);
}

std::span<const uint8_t> Bytes(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

// ---- Emulated backend state --------------------------------------------------

TEST(EmulatedBackendState, RegsBeforeRunAreTheLoadersLongModeEntry) {
  TestVm vm;
  const VcpuRegs r = vm.cpu().regs();
  EXPECT_GE(r.rip, 0x100000u) << "the image is linked at 1 MiB";
  EXPECT_LT(r.rip, 0x200000u);
  EXPECT_NE(r.cr0 & (1ull << 31), 0u) << "paging on";
  EXPECT_NE(r.cr0 & 1, 0u) << "protected mode";
  EXPECT_NE(r.cr4 & (1ull << 5), 0u) << "PAE";
  EXPECT_EQ(r.efer & 0x500, 0x500u) << "LME and LMA";
  EXPECT_NE(r.cr3, 0u);
  EXPECT_NE(r.selector[0], 0u) << "a code selector";
  EXPECT_NE(r.gdt_limit, 0u);
  EXPECT_EQ(r.rflags & 0x2, 0x2u);
  // regs() is a pure read.
  EXPECT_EQ(RegsDiff(vm.cpu().regs(), r), "");
}

TEST(EmulatedBackendState, StateBeforeAndAfterRunRestoresOnAnotherMachine) {
  TestVm a;
  const VcpuRegs boot_regs = a.cpu().regs();
  const std::vector<uint8_t> boot_state = a.cpu().save_state();
  EXPECT_EQ(RegsDiff(a.cpu().regs(), boot_regs), "") << "save_state() changed the registers";
  ASSERT_EQ(a.RunWithWatchdog(), 42);
  ASSERT_EQ(a.console(), "PMok\n");
  const VcpuRegs end_regs = a.cpu().regs();
  const std::vector<uint8_t> end_state = a.cpu().save_state();
  EXPECT_NE(RegsDiff(end_regs, boot_regs), "") << "the guest ran: its registers moved";
  EXPECT_EQ(end_regs.gpr[VcpuRegs::kRsi], 0xd0005000u) << "the power-off slot the guest wrote last";

  TestVm b;
  b.cpu().restore_state(end_state);
  EXPECT_EQ(RegsDiff(b.cpu().regs(), end_regs), "") << "state saved after run()";
  EXPECT_EQ(b.cpu().guest_rip(), end_regs.rip);
  // And back to the boot state saved before run(): it must boot the guest again.
  b.cpu().restore_state(boot_state);
  ASSERT_EQ(RegsDiff(b.cpu().regs(), boot_regs), "") << "state saved before run()";
  EXPECT_EQ(b.RunWithWatchdog(), 42);
  EXPECT_EQ(b.console(), "PMok\n");
}

TEST(EmulatedBackendState, RestoreRejectsForeignBytesAndKeepsTheState) {
  TestVm vm;
  const VcpuRegs before = vm.cpu().regs();
  const std::vector<uint8_t> good = vm.cpu().save_state();
  auto message = [&](std::vector<uint8_t> bytes) -> std::string {
    try {
      vm.cpu().restore_state(bytes);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no exception)";
  };
  const std::string expected_size = "(expected " + std::to_string(good.size()) + ")";
  const std::string empty = message({});
  EXPECT_NE(empty.find("software CPU: saved state of 0 bytes is not a context of this ftvm build"), std::string::npos)
      << empty;
  EXPECT_NE(empty.find(expected_size), std::string::npos) << empty;
  std::vector<uint8_t> garbage(good.size());
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = uint8_t(i * 131 + 7);
  EXPECT_NE(message(garbage).find("is not a context of this ftvm build"), std::string::npos) << "right size, no magic";
  std::vector<uint8_t> truncated(good.begin(), good.end() - 1);
  EXPECT_NE(message(truncated).find("is not a context"), std::string::npos);
  std::vector<uint8_t> longer = good;
  longer.push_back(0);
  EXPECT_NE(message(longer).find("is not a context"), std::string::npos);
  std::vector<uint8_t> other_magic = good;
  other_magic[0] ^= 1;
  EXPECT_NE(message(other_magic).find("is not a context"), std::string::npos);
  EXPECT_EQ(RegsDiff(vm.cpu().regs(), before), "") << "a rejected state must leave the CPU as it was";
}

// Recording hooks that pass inputs through and, at every boundary, check that the
// vCPU state survives save_state/restore_state: into an idle probe machine (its
// regs() must equal the running one's) and, when `self_restore`, back into the
// running machine itself (the guest must still finish correctly).
class RoundTripHooks final : public ExecutionHooks {
 public:
  RoundTripHooks(CpuBackend& probe, bool self_restore) : probe_(probe), self_restore_(self_restore) {}

  bool replaying() const override { return false; }
  uint64_t input_value(InputKind, uint64_t live) override { return live; }
  bool input_bytes(InputKind, std::span<uint8_t> out, RandomSource& live) override { return live.fill(out); }
  void timer_expired() override {}
  void frame_received(std::span<const uint8_t>) override {}
  int disk_request_done(uint16_t, int host_error) override { return host_error; }
  void disk_batch_done(uint16_t, uint16_t) override {}
  uint64_t output_mark(OutputStream, uint64_t) override { return 0; }
  bool output_released(uint64_t) override { return true; }
  bool transmit_frame(std::span<const iovec>, uint64_t) override { return true; }

  void started(Machine&) override {}
  void after_exit(Machine&, bool) override {}
  bool apply_device_events(Machine&, bool) override { return false; }
  bool boundary(Machine& m, bool) override {
    ++boundaries;
    if (after_injection_) ++boundaries_after_injection;
    const VcpuRegs regs = m.backend().regs();
    const std::vector<uint8_t> state = m.backend().save_state();
    probe_.restore_state(state);
    const std::string diff = RegsDiff(probe_.regs(), regs);
    if (!diff.empty() && first_mismatch.empty())
      first_mismatch = diff + (after_injection_ ? " (right after an injection)" : "") + " at boundary " +
                       std::to_string(boundaries);
    if (self_restore_ && diff.empty()) {
      m.backend().restore_state(state);
      const std::string self = RegsDiff(m.backend().regs(), regs);
      if (!self.empty() && first_mismatch.empty()) first_mismatch = "self: " + self;
    }
    after_injection_ = false;
    return false;
  }
  void vector_injected(Machine&, uint8_t) override {
    ++injections;
    after_injection_ = true;
  }
  void finished(Machine&, bool, bool completed) override { this->completed = completed; }

  int boundaries = 0;
  int boundaries_after_injection = 0;
  int injections = 0;
  bool completed = false;
  std::string first_mismatch;

 private:
  CpuBackend& probe_;
  bool self_restore_;
  bool after_injection_ = false;
};

void RecordedRunRoundTrips(bool self_restore) {
  TestVm probe;
  TestVm vm(ExecutionMode::kRecord);
  RoundTripHooks hooks(probe.cpu(), self_restore);
  vm.m().set_hooks(&hooks);
  const int code = vm.RunWithWatchdog();
  EXPECT_EQ(hooks.first_mismatch, "") << "save_state/restore_state lost vCPU state";
  EXPECT_EQ(code, 42) << "-1: the watchdog had to stop a guest that went astray";
  EXPECT_EQ(vm.console(), "PMok\n");
  EXPECT_TRUE(hooks.completed);
  EXPECT_EQ(hooks.injections, 1);
  EXPECT_GE(hooks.boundaries_after_injection, 1) << "the handler's first instruction is offered as a boundary";
  EXPECT_GE(hooks.boundaries, 5);
}

TEST(EmulatedBackendState, EveryBoundaryOfARecordedRunRoundTripsToAProbe) { RecordedRunRoundTrips(false); }

TEST(EmulatedBackendState, RestoringTheSavedStateAtEveryBoundaryChangesNothing) { RecordedRunRoundTrips(true); }

// ---- Machine device state ------------------------------------------------------

snapshot::Devices DevicesOf(const Machine& m) {
  snapshot::Devices d;
  m.save_devices(d);
  return d;
}

TEST(MachineDevices, SaveNamesEveryStatefulDeviceInSlotOrder) {
  TestVm vm;
  ASSERT_EQ(vm.RunWithWatchdog(), 42);
  const snapshot::Devices d = DevicesOf(vm.m());
  ASSERT_EQ(d.devices_size(), 4);  // clock and rng have no state; no disk, no NIC
  EXPECT_EQ(d.devices(0).name(), "console");
  EXPECT_EQ(d.devices(1).name(), "timer");
  EXPECT_EQ(d.devices(2).name(), "irq");
  EXPECT_EQ(d.devices(3).name(), "power");
  EXPECT_EQ(d.devices(0).console().bytes(), 5u);  // "PMok\n"
  EXPECT_EQ(d.devices(1).timer().fired(), 1u);
  EXPECT_FALSE(d.devices(1).timer().armed());
  EXPECT_EQ(d.devices(2).irq().delivered(), 1u);
  EXPECT_TRUE(d.devices(3).power().off());
  EXPECT_EQ(d.devices(3).power().exit_code(), 42);
  EXPECT_EQ(DeviceStateBytes(vm.m()), d.SerializeAsString());
  EXPECT_EQ(DeviceStateBytes(vm.m()), DeviceStateBytes(vm.m()));
}

TEST(MachineDevices, RestoreMakesAnotherMachinesDevicesEqual) {
  TestVm a;
  ASSERT_EQ(a.RunWithWatchdog(), 42);
  TestVm b;
  ASSERT_NE(DeviceStateBytes(b.m()), DeviceStateBytes(a.m()));
  b.m().restore_devices(DevicesOf(a.m()));
  EXPECT_EQ(DeviceStateBytes(b.m()), DeviceStateBytes(a.m()));
  // A restored power-off state ends the restored machine's run at once.
  EXPECT_EQ(b.RunWithWatchdog(), 42);
  EXPECT_EQ(b.console(), "") << "it never ran a guest instruction that prints";
}

TEST(MachineDevices, RestoreRejectsStateOfAnotherMachine) {
  TestVm a;
  const snapshot::Devices good = DevicesOf(a.m());
  auto message = [&](const snapshot::Devices& d) -> std::string {
    try {
      a.m().restore_devices(d);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no exception)";
  };
  snapshot::Devices missing = good;
  missing.mutable_devices()->RemoveLast();
  EXPECT_EQ(message(missing), "snapshot has no state for device 'power'");
  snapshot::Devices extra = good;
  *extra.add_devices() = good.devices(0);
  extra.mutable_devices(4)->set_name("virtio-blk");
  EXPECT_EQ(message(extra), "snapshot describes 5 devices, this VM has 4");
  snapshot::Devices swapped = good;
  swapped.mutable_devices(1)->set_name("console");  // a console's state under "timer"'s name...
  swapped.mutable_devices(0)->set_name("timer");    // ...and the other way round
  EXPECT_NE(message(swapped).find("holds another device's state"), std::string::npos);
}

// ---- Checkpoints -----------------------------------------------------------------

PageBitmap AllPages(const Machine& m) {
  PageBitmap b(const_cast<Machine&>(m).memory().size() / kPageSize);
  b.set_range(0, const_cast<Machine&>(m).memory().size());
  return b;
}

TEST(Checkpoint, CapturedPartsCarryTheStateAndThePages) {
  TestVm vm;
  ASSERT_EQ(vm.RunWithWatchdog(), 42);
  PageBitmap pages(vm.m().memory().size() / kPageSize);
  for (uint64_t p : {256u, 257u, 258u, 300u, 4095u}) pages.set(p);
  const std::vector<std::string> parts = CaptureCheckpoint(vm.m(), pages, 2 * kPageSize);
  ASSERT_EQ(parts.size(), 3u);  // 2 + 2 + 1 pages
  std::vector<std::pair<uint64_t, uint64_t>> runs;  // (gpa, pages)
  for (size_t i = 0; i < parts.size(); ++i) {
    snapshot::Checkpoint c;
    ASSERT_TRUE(c.ParseFromString(parts[i]));
    EXPECT_EQ(c.part(), i);
    EXPECT_EQ(c.parts(), 3u);
    EXPECT_EQ(c.position(), vm.m().position());
    EXPECT_EQ(c.has_vcpu(), i == 0) << "vcpu travels in part 0";
    EXPECT_EQ(c.has_devices(), i == 0) << "devices travel in part 0";
    for (const snapshot::MemoryRun& r : c.memory()) {
      ASSERT_EQ(r.data().size() % kPageSize, 0u);
      EXPECT_EQ(std::memcmp(r.data().data(), vm.m().memory().ptr(r.gpa(), r.data().size()), r.data().size()), 0);
      runs.emplace_back(r.gpa(), r.data().size() / kPageSize);
    }
    if (i == 0) {
      EXPECT_EQ(c.dirty_pages(), 5u);
      EXPECT_EQ(c.vcpu().backend(), "emulated");
      EXPECT_TRUE(c.vcpu().regs().empty()) << "the native state carries the registers";
      EXPECT_EQ(c.vcpu().native().size(), vm.cpu().save_state().size());
      EXPECT_EQ(c.devices().SerializeAsString(), DeviceStateBytes(vm.m()));
    }
  }
  EXPECT_EQ(runs, (std::vector<std::pair<uint64_t, uint64_t>>{
                      {256 * kPageSize, 2}, {258 * kPageSize, 1}, {300 * kPageSize, 1}, {4095 * kPageSize, 1}}));
  // Nothing dirty: one part with the vCPU and devices alone.
  const auto bare = CaptureCheckpoint(vm.m(), PageBitmap(pages.pages()));
  ASSERT_EQ(bare.size(), 1u);
  snapshot::Checkpoint c;
  ASSERT_TRUE(c.ParseFromString(bare[0]));
  EXPECT_EQ(c.memory_size(), 0);
  EXPECT_EQ(c.dirty_pages(), 0u);
  EXPECT_EQ(c.parts(), 1u);
}

TEST(Checkpoint, LoaderMakesAnotherMachineIdentical) {
  TestVm a, b;
  ASSERT_EQ(a.RunWithWatchdog(), 42);
  ASSERT_EQ(b.RunWithWatchdog(), 42);
  ASSERT_EQ(a.m().position(), b.m().position()) << "the minimal guest makes the same exits every run";
  // Make b differ from a everywhere a checkpoint reaches: memory, devices, vCPU.
  GuestMemory& mb = b.m().memory();
  // (Pages in the first 2 MiB; LoaderLeavesPageTableAccessedBitsAlone covers pages
  // beyond, which the guest never touched.)
  for (uint64_t p : {0u, 1u, 300u, 511u}) std::memset(mb.ptr(p * kPageSize + 100, 8), 0xcc, 8);
  snapshot::Devices dev = DevicesOf(b.m());
  dev.mutable_devices(0)->mutable_console()->set_bytes(12345);
  dev.mutable_devices(2)->mutable_irq()->set_mask(0xf0);
  b.m().restore_devices(dev);
  TestVm boot;
  b.cpu().restore_state(boot.cpu().save_state());
  ASSERT_NE(RegsDiff(b.cpu().regs(), a.cpu().regs()), "");

  uint64_t differing = 0;
  GuestMemory& ma = a.m().memory();
  for (uint64_t off = 0; off < ma.size(); off += kPageSize)
    differing += std::memcmp(ma.ptr(off, kPageSize), mb.ptr(off, kPageSize), kPageSize) != 0;
  ASSERT_GE(differing, 4u);

  const std::vector<std::string> parts = CaptureCheckpoint(a.m(), AllPages(a.m()), 1u << 20);
  ASSERT_EQ(parts.size(), 16u);  // 16 MiB in 1 MiB parts
  CheckpointLoader loader;
  for (size_t i = 0; i < parts.size(); ++i) {
    const bool done = loader.add(b.m(), Bytes(parts[i]));
    EXPECT_EQ(done, i + 1 == parts.size()) << "part " << i;
    EXPECT_EQ(loader.in_progress(), i + 1 != parts.size()) << "part " << i;
  }
  EXPECT_EQ(loader.pages_applied(), ma.size() / kPageSize);
  EXPECT_EQ(loader.pages_changed(), differing);
  EXPECT_EQ(std::memcmp(ma.host_base(), mb.host_base(), ma.size()), 0);
  EXPECT_EQ(DeviceStateBytes(b.m()), DeviceStateBytes(a.m()));
  EXPECT_EQ(RegsDiff(b.cpu().regs(), a.cpu().regs()), "");
  // Applying the same checkpoint again changes no page.
  for (const std::string& p : parts) loader.add(b.m(), Bytes(p));
  EXPECT_EQ(loader.pages_changed(), differing);
}

// Applying a checkpoint must not touch guest RAM beyond the pages it carries. (It
// once dropped translated code per page with uc_ctl_remove_cache, which walks the
// guest's page tables like an access and set Accessed bits the primary's guest never
// set: the replica's RAM differed in its page tables.)
TEST(Checkpoint, LoaderLeavesPageTableAccessedBitsAlone) {
  TestVm a, b;
  ASSERT_EQ(a.RunWithWatchdog(), 42);
  ASSERT_EQ(b.RunWithWatchdog(), 42);
  std::memset(b.m().memory().ptr(700 * kPageSize, 8), 0xcc, 8);  // 2.7 MiB: never touched by the guest
  const auto parts = CaptureCheckpoint(a.m(), AllPages(a.m()));
  CheckpointLoader loader;
  ASSERT_TRUE(loader.add(b.m(), Bytes(parts[0])));
  EXPECT_EQ(loader.pages_changed(), 1u);
  GuestMemory& ma = a.m().memory();
  GuestMemory& mb = b.m().memory();
  for (uint64_t off = 0; off < ma.size(); off += 8)
    EXPECT_EQ(*reinterpret_cast<uint64_t*>(mb.ptr(off, 8)), *reinterpret_cast<uint64_t*>(ma.ptr(off, 8)))
        << "guest physical address " << std::hex << off;
}

TEST(Checkpoint, BootCheckpointAppliedBeforeRunBootsTheGuest) {
  // Position 0 on both sides: a's boot state, with its RAM, onto b whose RAM and
  // vCPU were disturbed; b must then boot the guest to its normal end.
  TestVm a, b;
  TestVm done;
  ASSERT_EQ(done.RunWithWatchdog(), 42);
  b.cpu().restore_state(done.cpu().save_state());
  std::memset(b.m().memory().ptr(0x100000, kPageSize), 0xf4, kPageSize);  // the code page: HLTs
  const auto parts = CaptureCheckpoint(a.m(), AllPages(a.m()));
  ASSERT_EQ(parts.size(), 1u);
  CheckpointLoader loader;
  ASSERT_TRUE(loader.add(b.m(), Bytes(parts[0])));
  EXPECT_EQ(loader.pages_changed(), 1u);
  ASSERT_EQ(RegsDiff(b.cpu().regs(), a.cpu().regs()), "");
  EXPECT_EQ(b.RunWithWatchdog(), 42);
  EXPECT_EQ(b.console(), "PMok\n");
}

TEST(Checkpoint, LoaderNamesWhatIsWrong) {
  TestVm a;
  ASSERT_EQ(a.RunWithWatchdog(), 42);
  TestVm fresh;  // position 0
  const auto parts = CaptureCheckpoint(a.m(), AllPages(a.m()), 8u << 20);
  ASSERT_EQ(parts.size(), 2u);
  auto message = [](Machine& m, const std::vector<std::string>& payloads) -> std::string {
    CheckpointLoader loader;
    try {
      for (const std::string& p : payloads) loader.add(m, Bytes(p));
    } catch (const Error& e) {
      return e.what();
    }
    return "(no exception)";
  };
  auto edit = [](const std::string& part, auto change) {
    snapshot::Checkpoint c;
    EXPECT_TRUE(c.ParseFromString(part));
    change(c);
    return c.SerializeAsString();
  };
  const std::string pos = std::to_string(a.m().position());
  EXPECT_EQ(message(a.m(), {"\xff\xff\xff garbage"}), "checkpoint record does not parse as a snapshot");
  EXPECT_EQ(message(fresh.m(), {parts[0]}), "checkpoint for position " + pos + " arrived at position 0");
  EXPECT_EQ(message(a.m(), {parts[1]}), "checkpoint part 1 where part 0 was due");
  EXPECT_EQ(message(a.m(), {parts[0], parts[0]}), "checkpoint part 0 where part 1 was due");
  EXPECT_EQ(message(a.m(), {edit(parts[0], [](auto& c) { c.set_parts(0); })}), "checkpoint part 0 of 0");
  EXPECT_EQ(message(a.m(), {edit(parts[0], [](auto& c) { c.set_part(5); })}), "checkpoint part 5 of 2");
  EXPECT_EQ(message(a.m(), {parts[0], edit(parts[1], [](auto& c) { c.set_parts(3); })}),
            "checkpoint parts disagree on their count");
  EXPECT_EQ(message(a.m(), {edit(parts[0], [](auto& c) { c.mutable_vcpu()->set_backend("kvm"); })}),
            "checkpoint taken on the kvm backend cannot be restored on emulated");
  const std::string misaligned = edit(parts[0], [](auto& c) { c.mutable_memory(0)->set_gpa(100); });
  EXPECT_NE(message(a.m(), {misaligned}).find("is not whole pages inside guest RAM"), std::string::npos);
  const std::string outside =
      edit(parts[1], [&](auto& c) { c.mutable_memory(0)->set_gpa(a.m().memory().size() - kPageSize); });
  EXPECT_NE(message(a.m(), {parts[0], outside}).find("is not whole pages inside guest RAM"), std::string::npos);
  const std::string torn = edit(parts[0], [](auto& c) { c.mutable_memory(0)->mutable_data()->resize(100); });
  EXPECT_NE(message(a.m(), {torn}).find("is not whole pages inside guest RAM"), std::string::npos);
  const std::string bad_native = edit(parts[0], [](auto& c) { c.mutable_vcpu()->set_native("nope"); });
  EXPECT_NE(message(a.m(), {bad_native, parts[1]}).find("software CPU: saved state of 4 bytes"), std::string::npos);
  snapshot::Checkpoint one_device;
  ASSERT_TRUE(one_device.ParseFromString(parts[0]));
  one_device.mutable_devices()->mutable_devices()->RemoveLast();
  EXPECT_EQ(message(a.m(), {one_device.SerializeAsString(), parts[1]}),
            "snapshot has no state for device 'power'");
}

}  // namespace
}  // namespace ftvm::vmm
