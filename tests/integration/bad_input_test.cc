// Bad input to `ftvm run`: each case is a one-line error naming the problem, a
// non-zero exit code, and no crash (no signal, no core).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
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

TEST(BadInput, ImageStreaming) {
  const std::string local = ScratchPath("stream.img");
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "disk", "--image-from", "nohost", "--disk", local},
                     "--image-from 'nohost' names no image (want HOST:PORT/NAME)");
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "disk", "--image-from", "127.0.0.1:1/mail"},
                     "--image-from needs --disk");
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "disk", "--image-from", "127.0.0.1:1/mail", "--disk",
                      local},
                     "image server 127.0.0.1:1: tcp connect to 127.0.0.1:1: Connection refused");
  // A file that is not a partial copy is never overwritten by a stream.
  const std::string existing = WriteFile("existing.img", "mine");
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "disk", "--image-from", "127.0.0.1:1/mail", "--disk",
                      existing},
                     "is not a partial copy of a streamed image");
  EXPECT_EQ(ReadFile(existing), "mine");
  const std::string dir = ScratchPath("images");
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  ExpectCleanFailure({"serve-image", "--listen", "127.0.0.1:0", "--dir", "/nonexistent/images"},
                     "image directory /nonexistent/images: No such file or directory");
  ExpectCleanFailure({"serve-image", "--listen", "127.0.0.1:0", "--dir", dir, "--block-kib", "3"}, "--block-kib");
  const std::string port = std::to_string(24000 + getpid() % 20000);
  Process server = Process::Start({FtvmBinary(), "serve-image", "--listen", "127.0.0.1:" + port, "--dir", dir}, "srv");
  ASSERT_TRUE(WaitForFileContains(server.stderr_path(), "listening", seconds(10))) << server.Stderr();
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "disk", "--image-from", "127.0.0.1:" + port + "/nosuch",
                      "--disk", local},
                     "refused image 'nosuch': no image named 'nosuch' on this server");
  EXPECT_NE(access(local.c_str(), F_OK), 0) << "nothing created for an image that is not there";
}

// `ftvm move-disk --to tcp:...` refuses what cannot work, naming it, and the VM runs
// on with its own disk.
TEST(BadInput, MoveDiskToADiskServer) {
  const std::string disk = ScratchPath("remote-src.img"), control = ScratchPath("remote.control");
  {
    std::ofstream f(disk, std::ios::binary);
  }
  ASSERT_EQ(truncate(disk.c_str(), 8 << 20), 0);
  Process vm = Process::Start({FtvmBinary(), "run", "--guest", GuestImage(), "--app", "hang", "--arg", "beat_ms=100", "--arg",
                               "hang_after_ms=600000", "--disk", disk, "--control", control},
                              "vm");
  ASSERT_TRUE(WaitForFileContains(vm.stderr_path(), "control.listening", seconds(60))) << vm.Stderr();
  auto move = [&](const std::string& to, const std::string& expected, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"move-disk", "--control", control, "--to", to};
    args.insert(args.end(), extra.begin(), extra.end());
    ExpectCleanFailure(args, expected);
  };
  move("tcp:nohost", "no port");
  move("tcp:127.0.0.1:1", "copying to tcp:127.0.0.1:1: ");
  move("tcp:127.0.0.1:1", "--timeout-s must be in (0, 3600]", {"--timeout-s", "0"});
  ExpectCleanFailure({"disk-server", "--listen", "tcp:127.0.0.1:0", "--dir", "/nonexistent/a/b"}, "/nonexistent/a/b");
  // A server holding an image of another size.
  const std::string dir = ScratchPath("remote-other");
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  {
    std::ofstream f(dir + "/disk.img", std::ios::binary);
  }
  ASSERT_EQ(truncate((dir + "/disk.img").c_str(), 4 << 20), 0);
  const std::string addr = "tcp:127.0.0.1:" + std::to_string(24000 + (getpid() + 7) % 20000);
  Process server = Process::Start({FtvmBinary(), "disk-server", "--listen", addr, "--dir", dir}, "server");
  ASSERT_TRUE(WaitForFileContains(server.stderr_path(), "listening", seconds(10))) << server.Stderr();
  move(addr, "has 4194304 bytes, but the source's disk has 8388608");
  // The VM is still running on its own disk.
  ProcessResult st = RunProcess({FtvmBinary(), "status", "--control", control}, seconds(10), "status");
  EXPECT_NE(st.out.find("disk                   " + disk), std::string::npos) << st.out;
  vm.Signal(SIGTERM);
  EXPECT_EQ(vm.Wait(seconds(30)).exit_code, 0) << vm.Stderr();
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(seconds(10)).exit_code, 0);
}

TEST(BadInput, UsageErrors) {
  ExpectCleanFailure({"run", "--app", "compute"}, "guest");
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "compute", "--backend", "vmware"}, "--backend 'vmware'");
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "compute", "--mem", "lots"}, "mem");
  ExpectCleanFailure({"frobnicate"}, "unknown command 'frobnicate'");
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "hello", "--metrics", "127.0.0.1:99999"},
                     "metrics address '127.0.0.1:99999' is not HOST:PORT");
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "hello", "--metrics", "127.0.0.1:0", "--peer-metrics",
                      "peer-host"},
                     "--peer-metrics 'peer-host' is not HOST:PORT");
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "hello", "--dashboard-actions"},
                     "--dashboard-actions needs --metrics");
  ExpectCleanFailure({"failover-test"}, "control");
  ExpectCleanFailure({"switchover", "--control", "/nonexistent/vmm.sock"}, "/nonexistent/vmm.sock");
}


// ftvm ha-agent refuses a cluster it cannot run, naming the file and the key.
TEST(BadInput, HaAgentClusterFiles) {
  auto cluster_with = [](const std::string& tag, const std::string& vm_file) {
    const std::string dir = ScratchPath(tag);
    mkdir(dir.c_str(), 0755);
    mkdir((dir + "/vms").c_str(), 0755);
    std::ofstream(dir + "/vms/web.toml") << vm_file;
    return dir;
  };
  const std::string head = "guest = \"" + GuestImage() + "\"\napp = \"mailstore\"\ndisk = \"/tmp/web.img\"\n";
  auto agent = [](const std::string& cluster, const std::string& peers) {
    return std::vector<std::string>{"ha-agent", "--name", "a", "--cluster", cluster, "--listen", "127.0.0.1:17400",
                                    "--data", ScratchPath("ha-data"), "--peers", peers};
  };
  std::string c = cluster_with("ha-bad1", head + "[ha]\nhome = \"a\"\nreplica = \"b\"\nreplica_port = 7501\npriority = \"high\"\n");
  ExpectCleanFailure(agent(c, "b=127.0.0.2:7400"), "web.toml:8: key 'ha.priority': must be an integer");
  c = cluster_with("ha-bad2", head + "[ha]\nhome = \"a\"\nreplica = \"x\"\nreplica_port = 7501\nmem_mib = 64\n");
  ExpectCleanFailure(agent(c, "b=127.0.0.2:7400"), "key 'ha.replica': host 'x' is neither this host (a) nor one of its --peers");
  c = cluster_with("ha-bad3", head + "[ha]\nhome = \"a\"\nreplica = \"b\"\nreplica_port = 7501\nmem_mib = 64\nspeed = 3\n");
  ExpectCleanFailure(agent(c, "b=127.0.0.2:7400"), "key 'ha.speed': unknown key");
  c = cluster_with("ha-bad4", head + "mem = \"lots\"\n[ha]\nhome = \"a\"\nreplica = \"b\"\nreplica_port = 7501\nmem_mib = 64\n");
  ExpectCleanFailure(agent(c, "b=127.0.0.2:7400"), "web.toml:4: key 'mem'");
  // The run's mem stands in for a missing ha.mem_mib, in the same range.
  c = cluster_with("ha-bad6", head + "mem = 4000000\n[ha]\nhome = \"a\"\nreplica = \"b\"\nreplica_port = 7501\n");
  ExpectCleanFailure(agent(c, "b=127.0.0.2:7400"), "web.toml:4: key 'mem': must be an integer in 1..1048576");
  c = cluster_with("ha-bad5", head + "[ha]\nhome = \"a\"\nreplica = \"b\"\nreplica_port = 7501\nmem_mib = 64\n");
  ExpectCleanFailure(agent(c, "b=127.0.0.2"), "--peers: 'b=127.0.0.2' is not NAME=IP:PORT");
  ExpectCleanFailure(agent(c, "b=nowhere:7400"), "--peers: 'nowhere' in 'b=nowhere:7400' is not an IPv4 address");
  // --dr-sync only with a DR target.
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "compute", "--dr-sync"}, "--dr-sync needs --dr-target");
}

// DR checkpoints: only with a DR target and a sane interval; resuming needs a
// replica (bad checkpoint files: tests/integration/storage_test.cc).
TEST(BadInput, DrCheckpointOptions) {
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "compute", "--dr-checkpoint-s", "5"},
                     "--dr-checkpoint-s needs --dr-target");
  ExpectCleanFailure({"run", "--guest", GuestImage(), "--app", "compute", "--dr-target", "tcp:127.0.0.1:1",
                      "--dr-checkpoint-s", "-1"},
                     "--dr-checkpoint-s must be 0..86400");
  const std::string empty = ScratchPath("dr-empty");
  ASSERT_EQ(mkdir(empty.c_str(), 0755), 0);
  ExpectCleanFailure({"dr-start", "--dir", empty, "--from-checkpoint", "--guest", GuestImage(), "--app", "mailstore"},
                     "DR replica state " + empty + "/state: No such file or directory");
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

// An agent that cannot write its lease at start (the cluster's hosts/ read-only, in
// a mount namespace of its own) says so and starts nothing.
TEST(BadInput, HaAgentWithoutItsLease) {
  const std::string cluster = ScratchPath("ro-cluster"), hosts = cluster + "/hosts";
  ASSERT_EQ(mkdir(cluster.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(hosts.c_str(), 0755), 0);
  ProcessResult r = RunProcess({"unshare", "--mount", "--propagation", "private", "sh", "-c",
                                "mount --bind " + hosts + " " + hosts + " && mount -o remount,bind,ro " + hosts +
                                    " && exec " + FtvmBinary() + " ha-agent --name a --cluster " + cluster +
                                    " --listen 127.0.0.1:7999 --data " + ScratchPath("ro-data")},
                               seconds(60));
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("ftvm ha-agent: cannot write this host's lease " + hosts + "/a.lease"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("Read-only file system"), std::string::npos) << r.err;
}

// A guest app's own arguments are checked by the guest: it says which on its
// console and exits with 2 (bad setup), which `ftvm run` passes on.
TEST(BadInput, HangAppMode) {
  const std::string console = ScratchPath("hang-mode.console");
  ProcessResult r = RunProcess({FtvmBinary(), "run", "--guest", GuestImage(), "--app", "hang", "--arg", "mode=sideways",
                                "--console", console},
                               seconds(60));
  ASSERT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(ReadFile(console).find("hang: bad mode=sideways (want app or kernel)"), std::string::npos)
      << ReadFile(console);
}

}  // namespace
}  // namespace ftvm::itest
