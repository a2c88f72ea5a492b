// Image streaming with real processes: `ftvm serve-image` holds a mail-store disk
// whose journal has many messages (written on the host with the guest's own journal
// code), and `ftvm run --image-from` boots the store from it before it is local,
// in a network namespace with a tap, queried by the real `ftvm mail` client.
//   - The store answers (a stored message is fetched, a new one delivered) while
//     the server's background copy is throttled and the copy is not complete; then
//     the copy completes, and the local file is the image except where the guest
//     wrote. A second boot, with the profile the first left on the server, fetches
//     fewer blocks on demand than the first.
//   - The server killed during the boot and started again within --image-timeout-s:
//     the client reconnects, asks again for what the guest waits for, and the store
//     boots; killed again while the store serves and the copy runs, the store goes
//     on answering meanwhile; started again, the copy completes equal to the image
//     (but for what the guest wrote).
//   - The server killed mid-stream and not back in time stops the VM: "image server
//     lost ... VM lost", exit non-zero; so does a server back with another image.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdio>
#include <regex>
#include <thread>

#include "tests/support/harness.h"
#include "tests/support/mail_disk.h"

namespace ftvm::itest {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr const char* kTap = "ftvmim0";
constexpr const char* kGuestIp = "10.0.0.2";
constexpr uint64_t kDiskBytes = 4u << 20;
constexpr uint64_t kBlock = 64u << 10;  // serve-image's default block
constexpr uint64_t kMessages = 2000;
constexpr size_t kBodyBytes = 896;  // with its 128-byte header, 2 sectors a record: a 2 MiB journal

struct StreamCounts {
  long on_demand = -1, prefetched = -1, blocks_read = -1, blocks = -1;
};

StreamCounts ParseComplete(const std::string& log) {
  std::smatch m;
  StreamCounts c;
  static const std::regex re(
      R"(image_stream\.complete .*blocks=([0-9]+) on_demand=([0-9]+) prefetched=([0-9]+) .*blocks_read=([0-9]+))");
  if (std::regex_search(log, m, re)) {
    c.blocks = std::stol(m[1]);
    c.on_demand = std::stol(m[2]);
    c.prefetched = std::stol(m[3]);
    c.blocks_read = std::stol(m[4]);
  }
  return c;
}

class ImageStreamTest : public testing::Test {
 protected:
  void SetUp() override {
    ns_.AddTap(kTap, "10.0.0.1/24");
    dir_ = ScratchPath("images");
    ASSERT_EQ(mkdir(dir_.c_str(), 0755), 0);
    next_sector_ = MakeMailDisk(dir_ + "/mail", kDiskBytes, kMessages, "box", kBodyBytes);
    port_ = std::to_string(21000 + getpid() % 20000);
  }

  Process StartServer(const std::string& rate_mib) {
    Process p = Process::Start(ns_.Wrap({FtvmBinary(), "serve-image", "--listen", "127.0.0.1:" + port_, "--dir", dir_,
                                         "--rate-mib", rate_mib}),
                               "serve-image");
    EXPECT_TRUE(WaitForFileContains(p.stderr_path(), "listening", seconds(10))) << p.Stderr();
    return p;
  }

  Process StartVm(const std::string& local, const std::string& console) {
    return Process::Start(ns_.Wrap({FtvmBinary(), "run", "--guest", GuestImage(), "--app", "mailstore",
                                    "--image-from", "127.0.0.1:" + port_ + "/mail", "--disk", local, "--tap", kTap,
                                    "--ip", std::string(kGuestIp) + "/24", "--console", console}),
                          "vm");
  }

  Process Boot(const std::string& local, const std::string& console) {
    Process vm = StartVm(local, console);
    EXPECT_TRUE(WaitForFileContains(console, "mailstore: ready", seconds(120)))
        << ReadFile(console) << "\nstderr:\n" << vm.Stderr();
    return vm;
  }

  ProcessResult Mail(std::vector<std::string> args) {
    std::vector<std::string> argv = {FtvmBinary(), "mail"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--to", kGuestIp, "--timeout-ms", "2000", "--retries", "5"});
    return RunProcess(ns_.Wrap(argv), seconds(60), "mail");
  }

  // The local copy is the image, but for the blocks the delivery wrote.
  void ExpectImageButTheDelivery(const std::string& local) {
    const std::string image = ReadFile(dir_ + "/mail"), copy = ReadFile(local);
    ASSERT_EQ(copy.size(), image.size());
    const uint64_t written_from = next_sector_ * 512 / kBlock, written_to = (next_sector_ * 512 + 4096) / kBlock;
    int differing = 0;
    for (uint64_t b = 0; b < kDiskBytes / kBlock; ++b) {
      if (image.compare(b * kBlock, kBlock, copy, b * kBlock, kBlock) == 0) continue;
      ++differing;
      EXPECT_TRUE(b >= written_from && b <= written_to) << "block " << b << " differs from the image, and the guest "
                                                           "did not write it";
    }
    EXPECT_GE(differing, 1) << "the delivery reached the local copy";
  }

  NetNamespace ns_{"image"};
  std::string dir_, port_;
  uint64_t next_sector_ = 0;
};

TEST_F(ImageStreamTest, MailStoreServesBeforeItsImageIsLocalAndASecondBootUsesTheProfile) {
  // 4 MiB at 0.1 MiB/s: the background copy takes ~40 s, far longer than the boot,
  // and it would bring the 2 MiB journal (the image's first blocks, which it sends
  // first) only after ~20 s, so the boot reads it on demand even where the VMM runs
  // slowly (under the sanitizers it took 10 s to boot).
  Process server = StartServer("0.1");
  const std::string local = ScratchPath("local1.img");
  const std::string console = ScratchPath("console1.txt");
  const auto t0 = std::chrono::steady_clock::now();
  Process vm = Boot(local, console);
  const double boot_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(vm.Running()) << vm.Stderr();
  EXPECT_NE(ReadFile(console).find("messages=" + std::to_string(kMessages)), std::string::npos) << ReadFile(console);

  // Served while the copy runs: a stored message (from the journal's end), a count,
  // a new delivery (a write over blocks that may not be local yet).
  EXPECT_EQ(vm.Stderr().find("image_stream.complete"), std::string::npos) << "the copy finished before the test could "
                                                                              "query the store: throttle it more";
  ProcessResult f = Mail({"fetch", "--mailbox", "box", "--index", std::to_string(kMessages - 1)});
  EXPECT_EQ(f.exit_code, 0) << f.err;
  EXPECT_EQ(f.out, MailBody(kMessages - 1, kBodyBytes));
  EXPECT_EQ(Mail({"count", "--mailbox", "box"}).out, std::to_string(kMessages) + "\n");
  ProcessResult d = Mail({"deliver", "--id", "new1", "--mailbox", "fresh", "--body", "streamed"});
  EXPECT_EQ(d.out, "OK new1\n") << d.err;
  const bool answered_before_complete = vm.Stderr().find("image_stream.complete") == std::string::npos;
  EXPECT_TRUE(answered_before_complete) << "the store must answer before its image is local";

  ASSERT_TRUE(WaitForFileContains(vm.stderr_path(), "image_stream.complete", seconds(120))) << vm.Stderr();
  const StreamCounts first = ParseComplete(vm.Stderr());
  ASSERT_GE(first.on_demand, 0) << vm.Stderr();
  EXPECT_EQ(first.on_demand + first.prefetched, first.blocks - 0) << "every block fetched once (none written whole)";
  EXPECT_GT(first.on_demand, 0) << "a throttled copy leaves the boot reading blocks on demand";
  // The local file alone from here on.
  EXPECT_EQ(Mail({"fetch", "--mailbox", "fresh", "--index", "0"}).out, "streamed");
  vm.Signal(SIGTERM);
  ProcessResult r = vm.Wait(seconds(30));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("image stream: "), std::string::npos) << r.err;

  ExpectImageButTheDelivery(local);

  // Second boot, fresh local copy: the server has the first boot's profile.
  ASSERT_EQ(access((dir_ + "/mail.profile").c_str(), F_OK), 0) << server.Stderr();
  const std::string local2 = ScratchPath("local2.img");
  Process vm2 = Boot(local2, ScratchPath("console2.txt"));
  EXPECT_EQ(Mail({"fetch", "--mailbox", "box", "--index", "7"}).out, MailBody(7, kBodyBytes));
  // Its boot is over: what it fetched on demand is in the summary at exit (the
  // background copy need not finish).
  vm2.Signal(SIGTERM);
  ProcessResult r2 = vm2.Wait(seconds(30));
  EXPECT_EQ(r2.exit_code, 0) << r2.err;
  StreamCounts second;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r2.err, m, std::regex(R"(fetched on demand ([0-9]+), prefetched ([0-9]+).* read ([0-9]+) distinct)"))) << r2.err;
  second.on_demand = std::stol(m[1]);
  second.prefetched = std::stol(m[2]);
  second.blocks_read = std::stol(m[3]);
  std::printf("image stream: boot %.1f s; first boot %ld blocks on demand, %ld prefetched, %ld read; second boot with "
              "the profile %ld on demand, %ld prefetched, %ld read\n",
              boot_s, first.on_demand, first.prefetched, first.blocks_read, second.on_demand, second.prefetched,
              second.blocks_read);
  EXPECT_LT(second.on_demand, first.on_demand) << r2.err;
  EXPECT_GE(second.blocks_read, 32) << "the boot read the whole journal";
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(seconds(10)).exit_code, 0);
}

TEST_F(ImageStreamTest, ServerKilledMidStreamStopsTheVm) {
  // So slow the copy cannot finish while the test runs.
  Process server = StartServer("0.05");
  Process vm = Boot(ScratchPath("local-lost.img"), ScratchPath("console-lost.txt"));
  ASSERT_TRUE(vm.Running()) << vm.Stderr();
  server.Signal(SIGKILL);
  ProcessResult r = vm.Wait(seconds(60));
  EXPECT_FALSE(r.timed_out) << "the VM must stop when its image server is lost";
  EXPECT_GT(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("image server lost"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("VM lost"), std::string::npos) << r.err;
}

TEST_F(ImageStreamTest, ServerBackWithinTheTimeoutResumesTheCopyAndTheVmRunsOn) {
  Process server = StartServer("0.05");  // the boot reads its journal on demand
  const std::string local = ScratchPath("local-back.img"), console = ScratchPath("console-back.txt");
  Process vm = StartVm(local, console);
  ASSERT_TRUE(WaitForFileContains(vm.stderr_path(), "image_stream.connected", seconds(30))) << vm.Stderr();
  // Killed while the boot is still reading (the journal is 32 blocks; at most a
  // few came ahead of need).
  std::this_thread::sleep_for(milliseconds(500));
  server.Signal(SIGKILL);
  server.Wait(seconds(10));
  const bool ready_before_kill = ReadFile(console).find("mailstore: ready") != std::string::npos;
  std::this_thread::sleep_for(seconds(2));
  ASSERT_TRUE(vm.Running()) << "the VM waits for its server to come back\n" << vm.Stderr();
  EXPECT_EQ(vm.Stderr().find("VM lost"), std::string::npos) << vm.Stderr();
  Process server2 = StartServer("0.1");  // slow: the copy is still running once the store is up
  ASSERT_TRUE(WaitForFileContains(vm.stderr_path(), "image_stream.reconnected", seconds(20))) << vm.Stderr();
  ASSERT_TRUE(WaitForFileContains(console, "mailstore: ready", seconds(120))) << ReadFile(console) << vm.Stderr();
  EXPECT_NE(ReadFile(console).find("messages=" + std::to_string(kMessages)), std::string::npos) << ReadFile(console);
  std::smatch m;
  const std::string err = vm.Stderr();
  ASSERT_TRUE(std::regex_search(err, m, std::regex(R"(image_stream\.reconnected .*asked_again=([0-9]+))"))) << err;
  std::printf("image stream: reconnected; %s blocks the guest was waiting for asked again (boot %s at the kill)\n",
              m[1].str().c_str(), ready_before_kill ? "over" : "still reading");
  if (!ready_before_kill) {
    EXPECT_GT(std::stol(m[1]), 0) << "the boot was reading: a demanded block was outstanding";
  }

  // The store serving, the copy running: the server goes away again, and the store
  // keeps answering from what it holds meanwhile.
  ASSERT_EQ(vm.Stderr().find("image_stream.complete"), std::string::npos) << "the copy finished: throttle it more";
  server2.Signal(SIGKILL);
  server2.Wait(seconds(10));
  auto count = [&](const std::string& needle) { return CountOf(vm.Stderr(), needle); };
  for (int i = 0; i < 200 && count("image_stream.disconnected") < 2; ++i) std::this_thread::sleep_for(milliseconds(100));
  ASSERT_EQ(count("image_stream.disconnected"), 2u) << vm.Stderr();
  EXPECT_EQ(Mail({"fetch", "--mailbox", "box", "--index", std::to_string(kMessages - 1)}).out,
            MailBody(kMessages - 1, kBodyBytes));
  EXPECT_EQ(Mail({"count", "--mailbox", "box"}).out, std::to_string(kMessages) + "\n");
  EXPECT_EQ(count("image_stream.reconnected"), 1u) << "the store answered while its server was away\n" << vm.Stderr();
  Process server3 = StartServer("0");
  ProcessResult d = Mail({"deliver", "--id", "new1", "--mailbox", "fresh", "--body", "streamed"});
  EXPECT_EQ(d.out, "OK new1\n") << d.err;
  ASSERT_TRUE(WaitForFileContains(vm.stderr_path(), "image_stream.complete", seconds(120))) << vm.Stderr();
  EXPECT_NE(vm.Stderr().find("reconnects=2"), std::string::npos) << vm.Stderr();
  EXPECT_EQ(vm.Stderr().find("VM lost"), std::string::npos) << vm.Stderr();
  vm.Signal(SIGTERM);
  ProcessResult r = vm.Wait(seconds(30));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  ExpectImageButTheDelivery(local);
  server3.Signal(SIGTERM);
  EXPECT_EQ(server3.Wait(seconds(10)).exit_code, 0);
}

TEST_F(ImageStreamTest, ServerBackWithAnotherImageIsRefusedAndTheVmStops) {
  Process server = StartServer("0.05");
  Process vm = Boot(ScratchPath("local-other.img"), ScratchPath("console-other.txt"));
  ASSERT_TRUE(vm.Running()) << vm.Stderr();
  server.Signal(SIGKILL);
  server.Wait(seconds(10));
  // The image changes while its server is away (a new version: its id changes).
  ASSERT_EQ(utimes((dir_ + "/mail").c_str(), nullptr), 0);
  Process server2 = StartServer("0.05");
  ProcessResult r = vm.Wait(seconds(60));
  EXPECT_FALSE(r.timed_out) << "the VM must stop when its server comes back with another image";
  EXPECT_EQ(r.exit_code, 125) << r.err;
  EXPECT_NE(r.err.find("came back with another image"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("VM lost"), std::string::npos) << r.err;
  server2.Signal(SIGTERM);
  server2.Wait(seconds(10));
}

}  // namespace
}  // namespace ftvm::itest
