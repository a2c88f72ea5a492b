// The demo workload end to end: a mail-store guest on a tap inside a network
// namespace, driven by the real `ftvm mail` client from the same namespace.
// Delivers, fetches, restarts the VM from the same disk and fetches again.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>

#include "tests/support/harness.h"

namespace ftvm::itest {
namespace {

using std::chrono::seconds;

constexpr const char* kTap = "ftvmt0";
constexpr const char* kGuestIp = "10.0.0.2";

class MailStoreTest : public testing::Test {
 protected:
  void SetUp() override {
    ns_.AddTap(kTap, "10.0.0.1/24");
    disk_ = ScratchPath("mail.img");
    FILE* f = std::fopen(disk_.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
    ASSERT_EQ(truncate(disk_.c_str(), 32 << 20), 0);
  }
  void TearDown() override { unlink(disk_.c_str()); }

  // Boots the store and waits for its ready line; returns the console path.
  std::string Boot(std::optional<Process>& vm) {
    std::string console = ScratchPath("console.txt");
    vm.emplace(Process::Start(ns_.Wrap({FtvmBinary(), "run", "--guest", GuestImage(), "--app", "mailstore",
                                        "--disk", disk_, "--tap", kTap, "--ip", std::string(kGuestIp) + "/24",
                                        "--console", console}),
                              "mailstore-vm"));
    bool ready = WaitForFileContains(console, "mailstore: ready", seconds(90));
    EXPECT_TRUE(ready) << "console:\n" << ReadFile(console) << "\nstderr:\n" << vm->Stderr();
    return console;
  }

  ProcessResult Mail(std::vector<std::string> args) {
    std::vector<std::string> argv = {FtvmBinary(), "mail"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--to", kGuestIp, "--timeout-ms", "2000", "--retries", "5"});
    return RunProcess(ns_.Wrap(argv), seconds(60), "mail");
  }

  void StopVm(std::optional<Process>& vm) {
    vm->Signal(SIGTERM);
    ProcessResult r = vm->Wait(seconds(30));
    EXPECT_FALSE(r.timed_out) << "the VM must stop on SIGTERM";
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }

  NetNamespace ns_{"mail"};
  std::string disk_;
};

TEST_F(MailStoreTest, DeliverFetchRestartFetchAgain) {
  std::optional<Process> vm;
  std::string console = Boot(vm);
  ASSERT_TRUE(vm->Running());

  // The guest answers ARP and ICMP echo on its own stack.
  ProcessResult ping = RunProcess(ns_.Wrap({"ping", "-c", "2", "-W", "5", kGuestIp}), seconds(30), "ping");
  EXPECT_EQ(ping.exit_code, 0) << ping.out << ping.err;
  EXPECT_EQ(Mail({"ping"}).exit_code, 0);

  ProcessResult d1 = Mail({"deliver", "--id", "m1", "--mailbox", "alice", "--body", "hello alice"});
  ASSERT_EQ(d1.exit_code, 0) << d1.err;
  EXPECT_EQ(d1.out, "OK m1\n");
  ASSERT_EQ(Mail({"deliver", "--id", "m2", "--mailbox", "alice", "--body", "second note"}).exit_code, 0);
  ASSERT_EQ(Mail({"deliver", "--id", "m3", "--mailbox", "bob", "--body", "for bob"}).exit_code, 0);
  // A retried delivery is recognised, not stored twice.
  ProcessResult dup = Mail({"deliver", "--id", "m1", "--mailbox", "alice", "--body", "hello alice"});
  EXPECT_EQ(dup.exit_code, 0);
  EXPECT_EQ(dup.out, "DUP m1\n");

  EXPECT_EQ(Mail({"count", "--mailbox", "alice"}).out, "2\n");
  EXPECT_EQ(Mail({"count", "--mailbox", "bob"}).out, "1\n");
  EXPECT_EQ(Mail({"count", "--mailbox", "carol"}).out, "0\n");
  EXPECT_EQ(Mail({"fetch", "--mailbox", "alice", "--index", "1"}).out, "second note");
  EXPECT_NE(Mail({"fetch", "--mailbox", "alice", "--index", "5"}).exit_code, 0);

  StopVm(vm);

  // Same disk, new VM: everything acknowledged is still there.
  std::string console2 = Boot(vm);
  EXPECT_NE(ReadFile(console2).find("messages=3"), std::string::npos) << ReadFile(console2);
  EXPECT_EQ(Mail({"fetch", "--mailbox", "alice", "--index", "0"}).out, "hello alice");
  EXPECT_EQ(Mail({"fetch", "--mailbox", "bob", "--index", "0"}).out, "for bob");
  EXPECT_EQ(Mail({"count", "--mailbox", "alice"}).out, "2\n");
  EXPECT_EQ(Mail({"deliver", "--id", "m2", "--mailbox", "alice", "--body", "second note"}).out, "DUP m2\n");
  StopVm(vm);
}

TEST_F(MailStoreTest, LoadCompletesWithoutLoss) {
  std::optional<Process> vm;
  Boot(vm);
  ProcessResult r = Mail({"load", "--rate", "50", "--duration", "3", "--window", "8", "--mailboxes", "4"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("timeouts"), std::string::npos) << r.out;
  StopVm(vm);
}

}  // namespace
}  // namespace ftvm::itest
