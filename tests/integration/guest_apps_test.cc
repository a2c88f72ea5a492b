// Boots every guest-kit app in a real `ftvm run` process and checks what it printed.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <regex>

#include "guest/apps/compute_core.h"
#include "tests/support/harness.h"

namespace ftvm::itest {
namespace {

using std::chrono::seconds;

std::vector<std::string> RunArgs(const std::string& app, std::vector<std::string> extra = {}) {
  std::vector<std::string> argv = {FtvmBinary(), "run", "--guest", GuestImage(), "--app", app};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

std::string Capture(const std::string& text, const std::string& pattern) {
  std::smatch m;
  if (std::regex_search(text, m, std::regex(pattern)) && m.size() > 1) return m[1];
  return "";
}

TEST(GuestApps, ComputeMatchesTheSameCodeOnTheHost) {
  ProcessResult r = RunProcess(RunArgs("compute", {"--arg", "iters=2000000"}), seconds(120));
  ASSERT_FALSE(r.timed_out);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  char expected[64];
  std::snprintf(expected, sizeof expected, "compute: iters=2000000 checksum=0x%016" PRIx64 "\n",
                ftvm_compute(2000000));
  EXPECT_NE(r.out.find(expected), std::string::npos) << r.out;
}

TEST(GuestApps, TimersCountEveryTick) {
  ProcessResult r = RunProcess(RunArgs("timers", {"--arg", "ticks=20", "--arg", "period_us=2000"}), seconds(120));
  ASSERT_FALSE(r.timed_out);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(Capture(r.out, "ticks=(\\d+)"), "20") << r.out;
  // The device's own count agrees with the interrupts the guest saw.
  EXPECT_EQ(Capture(r.out, "fired=(\\d+)"), "20") << r.out;
  // The VMM injected at least those 20 interrupts.
  std::string injected = Capture(r.err, "interrupts=(\\d+)");
  ASSERT_FALSE(injected.empty()) << r.err;
  EXPECT_GE(std::stoul(injected), 20u);
}

TEST(GuestApps, DirtyWritesPages) {
  ProcessResult r = RunProcess(RunArgs("dirty", {"--mem", "64", "--arg", "mib=8", "--arg", "mib_per_s=16", "--arg", "seconds=1"}),
                        seconds(120));
  ASSERT_FALSE(r.timed_out);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  std::string pages = Capture(r.out, "pages_written=(\\d+)");
  ASSERT_FALSE(pages.empty()) << r.out;
  EXPECT_GE(std::stoul(pages), 16u * 256 / 2) << "at least half the requested rate";
}

TEST(GuestApps, DiskVerifiesEveryBlock) {
  std::string disk = ScratchPath("disk.img");
  ASSERT_EQ(truncate(disk.c_str(), 16 << 20) == 0 || [&] {
    FILE* f = std::fopen(disk.c_str(), "w");
    if (f) std::fclose(f);
    return truncate(disk.c_str(), 16 << 20) == 0;
  }(), true);
  ProcessResult r = RunProcess(RunArgs("disk", {"--disk", disk, "--arg", "ops=100", "--arg", "seed=7"}), seconds(120));
  ASSERT_FALSE(r.timed_out);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(Capture(r.out, "errors=(\\d+)"), "0") << r.out;
  EXPECT_EQ(Capture(r.out, "ops=(\\d+)"), "100") << r.out;
  EXPECT_NE(Capture(r.out, "verified=(\\d+)"), "0") << r.out;
  // The blocks really reached the image file.
  std::string bytes = ReadFile(disk);
  EXPECT_NE(bytes.find_first_not_of('\0'), std::string::npos);
  unlink(disk.c_str());
}

TEST(GuestApps, GuestExceptionIsReportedWithRip) {
  ProcessResult r = RunProcess(RunArgs("crash"), seconds(60));
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0xa0 + 6) << "the kit's exit code for #UD";
  EXPECT_NE(r.out.find("guest exception #"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rip=0x"), std::string::npos) << r.out;
}

TEST(GuestApps, PageFaultReportNamesTheAddress) {
  ProcessResult r = RunProcess(RunArgs("crash", {"--arg", "kind=pf"}), seconds(60));
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0xa0 + 14);
  EXPECT_NE(r.out.find("guest exception #14 (page fault)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("cr2=0x7ffffffff000"), std::string::npos) << r.out;
}

// A blank sparse disk image of `bytes`.
std::string BlankDisk(const std::string& tag, off_t bytes) {
  const std::string path = ScratchPath(tag);
  FILE* f = std::fopen(path.c_str(), "w");
  if (f != nullptr) std::fclose(f);
  EXPECT_EQ(truncate(path.c_str(), bytes), 0) << path;
  return path;
}

// A guest that misbehaves on purpose (bad virtio descriptors, wild MMIO, an
// interrupt storm) hurts only itself: the device refuses each bad request with a
// reason, works again after the guest resets it, and the VMM runs the VM to its end.
TEST(GuestApps, HostileGuestHurtsOnlyItself) {
  ProcessResult r =
      RunProcess(RunArgs("hostile", {"--disk", BlankDisk("hostile.img", 16 << 20)}), seconds(120));
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("hostile: survived 8 attacks, 0 failed"), std::string::npos) << r.out;
  for (const char* reason : {"is outside guest RAM", "loops back to descriptor", "links to 23 >= queue size 16",
                             "is 1000 ahead of the device", "avail ring head 19 >= queue size 16"})
    EXPECT_NE(r.err.find(reason), std::string::npos) << reason << "\n" << r.err;
}

// The same guest protected: neither VMM suffers, and the replica, which replays
// the device giving up six times, ends identical.
TEST(GuestApps, HostileGuestProtectedLeavesBothVmmsStandingAndTheReplicaIdentical) {
  const std::string workdir = ScratchPath("hostile-pair");
  ProcessResult r = RunProcess({FtvmBinary(), "protect", "--guest", GuestImage(), "--app", "hostile", "--disk",
                                BlankDisk("hostile-pair.img", 16 << 20), "--workdir", workdir},
                               seconds(180));
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("hostile: survived 8 attacks, 0 failed"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("the secondary exited with 0"), std::string::npos) << r.err;
  EXPECT_NE(ReadFile(workdir + "/secondary.log").find("replica identical"), std::string::npos)
      << ReadFile(workdir + "/secondary.log");
}

TEST(GuestApps, BadAppArgumentIsRefusedNotDefaulted) {
  ProcessResult r = RunProcess(RunArgs("mailstore", {"--arg", "max_messages=lots"}), seconds(60));
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE(r.out.find("bad max_messages="), std::string::npos) << r.out;
}

TEST(GuestApps, UnknownAppFailsClearly) {
  ProcessResult r = RunProcess(RunArgs("no-such-app"), seconds(60));
  ASSERT_FALSE(r.timed_out);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.out.find("no-such-app"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace ftvm::itest
