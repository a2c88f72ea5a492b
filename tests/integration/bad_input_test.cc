// Bad input to `ftvm run`: each case is a one-line error naming the problem, a
// non-zero exit code, and no crash (no signal, no core).
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "tests/support/harness.h"

namespace ftvm::itest {
namespace {

using std::chrono::seconds;

struct Case {
  std::vector<std::string> args;
  std::string expected;  // substring of the one error line
};

void ExpectCleanFailure(const std::vector<std::string>& args, const std::string& expected) {
  std::vector<std::string> argv = {FtvmBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  ProcessResult r = RunProcess(argv, seconds(60));
  ASSERT_FALSE(r.timed_out);
  EXPECT_GT(r.exit_code, 0) << "must exit non-zero, not die by a signal";
  EXPECT_NE(r.err.find(expected), std::string::npos) << r.err;
  // Exactly one line from the command itself (log lines carry a level word).
  int own_lines = 0;
  size_t pos = 0;
  while (pos < r.err.size()) {
    size_t end = r.err.find('\n', pos);
    std::string line = r.err.substr(pos, end - pos);
    if (line.rfind("ftvm", 0) == 0) ++own_lines;
    pos = end == std::string::npos ? r.err.size() : end + 1;
  }
  EXPECT_EQ(own_lines, 1) << r.err;
}

std::string WriteFile(const std::string& tag, const std::string& bytes) {
  std::string p = ScratchPath(tag);
  std::ofstream(p, std::ios::binary) << bytes;
  return p;
}

TEST(BadInput, NonElfImage) {
  std::string p = WriteFile("notelf", "#!/bin/sh\necho hi\n");
  ExpectCleanFailure({"run", "--guest", p, "--app", "compute"}, "not an ELF file");
}

TEST(BadInput, TruncatedImage) {
  std::string full = ReadFile(GuestImage());
  std::string p = WriteFile("trunc", full.substr(0, 200));
  ExpectCleanFailure({"run", "--guest", p, "--app", "compute"}, "truncated");
}

TEST(BadInput, MissingImage) {
  ExpectCleanFailure({"run", "--guest", "/nonexistent/guest.elf", "--app", "compute"},
                     "guest image /nonexistent/guest.elf: No such file or directory");
}

TEST(BadInput, MissingDisk) {
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "disk", "--disk", "/nonexistent/disk.img"},
                     "/nonexistent/disk.img");
}

TEST(BadInput, TooLittleMemory) {
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "compute", "--mem", "4"}, "--mem 4 MiB is too little");
  // Checked before any memory is reserved: the error names the flag, not mmap.
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "compute", "--mem", "100000000"},
                     "--mem 100000000 MiB is too much");
}

TEST(BadInput, TapThatCannotBeOpened) {
  // "lo" exists and is not a tap: the kernel refuses to attach a tap queue to it.
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "mailstore", "--tap", "lo"}, "tap lo");
}

TEST(BadInput, KvmRequestedWithoutKvm) {
  if (access("/dev/kvm", F_OK) == 0) GTEST_SKIP() << "/dev/kvm exists on this host";
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "compute", "--backend", "kvm"}, "/dev/kvm not found");
}

TEST(BadInput, UsageErrors) {
  ExpectCleanFailure({"run", "--app", "compute"}, "guest");
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "compute", "--backend", "vmware"}, "--backend 'vmware'");
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "compute", "--mem", "lots"}, "mem");
  ExpectCleanFailure({"frobnicate"}, "unknown command 'frobnicate'");
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "hello", "--metrics", "127.0.0.1:99999"},
                     "metrics address '127.0.0.1:99999' is not HOST:PORT");
}

TEST(BadInput, HealthOptions) {
  const std::vector<std::string> vm = {"--guest", GuestImage(), "--app", "hello"};
  auto with = [&](std::string cmd, std::vector<std::string> extra) {
    std::vector<std::string> args = {std::move(cmd)};
    args.insert(args.end(), vm.begin(), vm.end());
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  ExpectCleanFailure(with("run", {"--health-grace-ms=-5"}),
                     "--health-grace-ms '-5' is not a number of milliseconds");
  ExpectCleanFailure(with("run", {"--health-grace-ms", "-5"}), "--health-grace-ms '-5' is not a number of milliseconds");
  ExpectCleanFailure(with("run", {"--health-grace-ms", "soon"}), "--health-grace-ms 'soon' is not a number");
  ExpectCleanFailure(with("run", {"--health-grace-ms", "1000", "--health-action", "reboot"}),
                     "--health-action 'reboot' is not one of reset, restart");
  ExpectCleanFailure(with("primary", {"--listen", "tcp:127.0.0.1:0", "--arbiter", "/tmp", "--health-action", "panic"}),
                     "--health-action 'panic' is not one of reset, restart");
}

}  // namespace
}  // namespace ftvm::itest
