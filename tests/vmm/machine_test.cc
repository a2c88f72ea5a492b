// The whole machine on real backends, with a tiny ring-0 guest (tests/vmm/guests).
#include "vmm/machine.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "common/error.h"

namespace ftvm::vmm {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

VmConfig MinimalConfig(BackendKind backend) {
  VmConfig c;
  c.guest_image = FTVM_TEST_GUEST_MINIMAL;
  c.app = "minimal";
  c.mem_mib = 16;
  c.backend = backend;
  c.console_path = std::string(testing::TempDir()) + "/ftvm_machine_console_" + std::to_string(getpid());
  return c;
}

std::string ConfigError(const VmConfig& c) {
  try {
    ValidateConfig(c);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void BootMinimal(BackendKind backend) {
  auto clock = MakeSystemClock();
  auto random = MakeSystemRandom();
  VmConfig c = MinimalConfig(backend);
  Machine m(c, *clock, *random);
  EXPECT_EQ(m.run(), 42);
  EXPECT_EQ(Slurp(c.console_path), "PMok\n");
  MachineStats s = m.stats();
  EXPECT_EQ(s.interrupts, 1u);      // exactly the one timer tick
  EXPECT_EQ(s.pio_exits, 1u);       // the port-console 'P'
  EXPECT_GE(s.mmio_exits, 7u);      // putc, iov, 2 clock, arm, wait, fired, power
  EXPECT_GT(s.boot_to_first_output_ns, 0u);
  unlink(c.console_path.c_str());
}

TEST(Machine, BootsMinimalGuestOnSoftwareCpu) { BootMinimal(BackendKind::kEmulated); }

TEST(Machine, BootsMinimalGuestOnKvm) {
  if (access("/dev/kvm", F_OK) != 0) {
    // Not a pass: no host KVM here (see README, "Limits"); tests/kvm covers it nested.
    GTEST_SKIP() << "/dev/kvm is absent on this host; tests/kvm runs this guest on nested KVM instead";
  }
  BootMinimal(BackendKind::kKvm);
}

TEST(Machine, KvmBackendNamesMissingDevKvm) {
  if (access("/dev/kvm", F_OK) == 0) GTEST_SKIP() << "/dev/kvm exists here";
  GuestMemory mem = GuestMemory::Create(16 << 20);
  try {
    MakeKvmBackend(mem);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/dev/kvm not found"), std::string::npos);
  }
}

TEST(Machine, StopFromAnotherThreadEndsAWaitingGuest) {
  // The minimal guest waits for its 1 ms timer; a stop while it runs must end run().
  auto clock = MakeSystemClock();
  auto random = MakeSystemRandom();
  VmConfig c = MinimalConfig(BackendKind::kEmulated);
  Machine m(c, *clock, *random);
  m.stop();
  EXPECT_EQ(m.run(), -1);
  unlink(c.console_path.c_str());
}

TEST(VmConfigCheck, NamesTheBadField) {
  VmConfig c = MinimalConfig(BackendKind::kEmulated);
  EXPECT_EQ(ConfigError(c), "");
  c.mem_mib = 8;
  EXPECT_NE(ConfigError(c).find("--mem 8 MiB is too little"), std::string::npos);
  c.mem_mib = 8192;
  EXPECT_NE(ConfigError(c).find("--mem 8192 MiB is too much"), std::string::npos);
  c = MinimalConfig(BackendKind::kEmulated);
  c.app = "";
  EXPECT_NE(ConfigError(c).find("no guest app"), std::string::npos);
  c = MinimalConfig(BackendKind::kEmulated);
  c.app_args = {"novalue"};
  EXPECT_NE(ConfigError(c).find("'novalue' is not of the form key=value"), std::string::npos);
  c = MinimalConfig(BackendKind::kEmulated);
  c.tap = "tap0";
  c.ip = "10.0.0.300/24";
  EXPECT_NE(ConfigError(c).find("--ip '10.0.0.300/24'"), std::string::npos);
  c.ip = "10.0.0.2/24";
  c.mac = "52:54:00:12:34";
  EXPECT_NE(ConfigError(c).find("MAC address '52:54:00:12:34'"), std::string::npos);
  c.mac = "+2:54:00:12:34:56";
  EXPECT_NE(ConfigError(c).find("MAC address '+2:54:00:12:34:56'"), std::string::npos);
  c.mac = "01:00:5e:00:00:01";
  EXPECT_NE(ConfigError(c).find("multicast"), std::string::npos);
  c.mac = "52:54:00:12:34:56";
  c.tap = "a-very-long-tap-name";
  EXPECT_NE(ConfigError(c).find("longer than 15"), std::string::npos);
}

TEST(VmConfigCheck, GuestCommandLineCarriesNetworkAndArgs) {
  VmConfig c = MinimalConfig(BackendKind::kEmulated);
  c.app = "mailstore";
  c.tap = "tap0";
  c.gateway = "10.0.0.1";
  c.app_args = {"x=1"};
  EXPECT_EQ(GuestCommandLine(c), "app=mailstore ip=10.0.0.2/24 gw=10.0.0.1 x=1");
}

TEST(Machine, ConstructorRejectsBadImageBeforeTouchingKvm) {
  auto clock = MakeSystemClock();
  auto random = MakeSystemRandom();
  VmConfig c = MinimalConfig(BackendKind::kKvm);
  c.guest_image = "/nonexistent.elf";
  try {
    Machine m(c, *clock, *random);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("guest image /nonexistent.elf"), std::string::npos);
  }
}

}  // namespace
}  // namespace ftvm::vmm
