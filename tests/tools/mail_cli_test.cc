// `ftvm mail ...` (MailMain): exit codes and the one-line messages for bad command
// lines, and end-to-end subcommands against the in-test store.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "tests/tools/mail_test_server.h"
#include "tools/ftvm/mail_client.h"

namespace ftvm {
namespace {

using mail::mailtest::Action;
using mail::mailtest::TestMailServer;

// Redirects fds 1 and 2 into memfds for the lifetime of the object.
class CaptureStdio {
 public:
  CaptureStdio() {
    Flush();
    for (int i = 0; i < 2; ++i) {
      mem_[i].reset(::memfd_create(i == 0 ? "stdout" : "stderr", MFD_CLOEXEC));
      saved_[i].reset(::dup(i + 1));
      ::dup2(mem_[i].get(), i + 1);
    }
  }
  ~CaptureStdio() { Restore(); }
  CaptureStdio(const CaptureStdio&) = delete;
  CaptureStdio& operator=(const CaptureStdio&) = delete;

  // Stops capturing; returns {stdout, stderr}.
  std::pair<std::string, std::string> Finish() {
    Restore();
    return {Read(0), Read(1)};
  }

 private:
  static void Flush() {
    std::cout.flush();
    std::cerr.flush();
    std::fflush(stdout);
    std::fflush(stderr);
  }
  void Restore() {
    if (!saved_[0]) return;
    Flush();
    for (int i = 0; i < 2; ++i) {
      ::dup2(saved_[i].get(), i + 1);
      saved_[i].reset();
    }
  }
  std::string Read(int i) {
    std::string out;
    char buf[4096];
    ::lseek(mem_[i].get(), 0, SEEK_SET);
    for (ssize_t n; (n = ::read(mem_[i].get(), buf, sizeof buf)) > 0;) out.append(buf, size_t(n));
    return out;
  }
  UniqueFd mem_[2];
  UniqueFd saved_[2];
};

struct Outcome {
  int code;
  std::string out;
  std::string err;
};

Outcome RunMail(std::vector<std::string> args) {
  args.insert(args.begin(), "mail");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  CaptureStdio cap;
  int code = MailMain(int(args.size()), argv.data());
  auto [out, err] = cap.Finish();
  return {code, out, err};
}

// Usage errors: exit 2 and exactly one stderr line containing `needle`.
void ExpectUsageError(std::vector<std::string> args, const std::string& needle) {
  Outcome o = RunMail(args);
  EXPECT_EQ(o.code, 2) << o.err;
  EXPECT_NE(o.err.find(needle), std::string::npos) << "stderr: " << o.err;
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
  EXPECT_EQ(o.out, "");
}

TEST(MailCli, UnknownOrMissingSubcommand) {
  ExpectUsageError({"frobnicate"}, "unknown subcommand 'frobnicate'");
  ExpectUsageError({}, "missing subcommand");
}

TEST(MailCli, MissingRequiredOptions) {
  ExpectUsageError({"ping"}, "'--to' is required");
  ExpectUsageError({"count", "--to", "127.0.0.1"}, "'--mailbox' is required");
  ExpectUsageError({"deliver", "--to", "127.0.0.1", "--mailbox", "b", "--body", "x"},
                   "'--id' is required");
  ExpectUsageError({"deliver", "--to", "127.0.0.1", "--id", "i", "--mailbox", "b"},
                   "exactly one of --body or --body-file");
}

TEST(MailCli, BadAddressOrPort) {
  ExpectUsageError({"ping", "--to", "127.0.0.1:99999"}, "bad port '99999'");
  ExpectUsageError({"ping", "--to", "127.0.0.1:abc"}, "bad port 'abc'");
  ExpectUsageError({"ping", "--to", "localhost"}, "bad IPv4 address 'localhost'");
}

TEST(MailCli, BadValues) {
  ExpectUsageError({"ping", "--to", "127.0.0.1", "--timeout-ms", "abc"}, "timeout-ms");
  ExpectUsageError({"ping", "--to", "127.0.0.1", "--retries", "-1"}, "--retries -1 out of range");
  ExpectUsageError({"ping", "--to", "127.0.0.1", "--timeout-ms", "0"}, "--timeout-ms 0");
  ExpectUsageError({"fetch", "--to", "127.0.0.1", "--mailbox", "b", "--index", "-3"},
                   "--index -3 out of range");
  ExpectUsageError({"load", "--to", "127.0.0.1", "--rate", "0"}, "rate must be > 0");
  ExpectUsageError({"load", "--to", "127.0.0.1", "--window", "0"}, "--window 0 out of range");
  ExpectUsageError({"load", "--to", "127.0.0.1", "--mix", "1:2"}, "bad --mix '1:2'");
  ExpectUsageError({"load", "--to", "127.0.0.1", "--body-size", "5000"}, "--body-size 5000");
  ExpectUsageError({"ping", "--to", "127.0.0.1", "--bogus"}, "--bogus");
  ExpectUsageError({"ping", "--to", "127.0.0.1", "stray"}, "stray");
}

TEST(MailCli, ProtocolLimits) {
  ExpectUsageError({"deliver", "--to", "127.0.0.1", "--id", "i", "--mailbox", "b", "--body",
                    std::string(FTVM_MAIL_MAX_BODY + 1, 'x')},
                   "FTVM_MAIL_MAX_BODY");
  ExpectUsageError({"count", "--to", "127.0.0.1", "--mailbox",
                    std::string(FTVM_MAIL_MAX_MAILBOX + 1, 'b')},
                   "FTVM_MAIL_MAX_MAILBOX");
  ExpectUsageError({"deliver", "--to", "127.0.0.1", "--id", std::string(FTVM_MAIL_MAX_MSGID + 1, 'i'),
                    "--mailbox", "b", "--body", "x"},
                   "FTVM_MAIL_MAX_MSGID");

  std::string path = ::testing::TempDir() + "/mail_cli_big_body";
  std::ofstream(path) << std::string(FTVM_MAIL_MAX_BODY + 1, 'x');
  ExpectUsageError({"deliver", "--to", "127.0.0.1", "--id", "i", "--mailbox", "b",
                    "--body-file", path},
                   "FTVM_MAIL_MAX_BODY");
  ExpectUsageError({"deliver", "--to", "127.0.0.1", "--id", "i", "--mailbox", "b",
                    "--body-file", path + ".missing"},
                   "cannot read --body-file");
  std::remove(path.c_str());
}

TEST(MailCli, HelpExitsZero) {
  Outcome o = RunMail({"--help"});
  EXPECT_EQ(o.code, 0);
  EXPECT_NE(o.out.find("usage: ftvm mail"), std::string::npos);
  o = RunMail({"load", "--help"});
  EXPECT_EQ(o.code, 0);
  EXPECT_NE(o.out.find("--window"), std::string::npos);
}

TEST(MailCli, SubcommandsEndToEnd) {
  TestMailServer server;
  const std::string to = server.to();

  Outcome o = RunMail({"ping", "--to", to});
  EXPECT_EQ(o.code, 0) << o.err;
  EXPECT_NE(o.out.find("PONG"), std::string::npos);

  o = RunMail({"deliver", "--to", to, "--id", "m1", "--mailbox", "inbox", "--body", "hi there"});
  EXPECT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(o.out, "OK m1\n");

  o = RunMail({"deliver", "--to", to, "--id", "m1", "--mailbox", "inbox", "--body", "hi there"});
  EXPECT_EQ(o.code, 0) << o.err;  // already stored counts as delivered
  EXPECT_EQ(o.out, "DUP m1\n");

  std::string path = ::testing::TempDir() + "/mail_cli_body";
  std::ofstream(path, std::ios::binary) << "line1\nline2\n";
  o = RunMail({"deliver", "--to", to, "--id", "m2", "--mailbox", "inbox", "--body-file", path});
  EXPECT_EQ(o.code, 0) << o.err;
  std::remove(path.c_str());

  o = RunMail({"count", "--to", to, "--mailbox", "inbox"});
  EXPECT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(o.out, "2\n");

  o = RunMail({"fetch", "--to", to, "--mailbox", "inbox"});
  EXPECT_EQ(o.code, 0) << o.err;
  EXPECT_EQ(o.out, "hi there");
  o = RunMail({"fetch", "--to", to, "--mailbox", "inbox", "--index", "1"});
  EXPECT_EQ(o.out, "line1\nline2\n");

  o = RunMail({"fetch", "--to", to, "--mailbox", "inbox", "--index", "9"});
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.err.find("no message at index 9 in mailbox 'inbox'"), std::string::npos) << o.err;
}

TEST(MailCli, TimeoutIsFailedRequest) {
  TestMailServer server([](size_t) { return Action::kSilent; });
  Outcome o = RunMail({"ping", "--to", server.to(), "--timeout-ms", "20", "--retries", "1"});
  EXPECT_EQ(o.code, 1);
  EXPECT_NE(o.err.find("no reply from " + server.to() + " after 2 attempts"), std::string::npos)
      << o.err;
  EXPECT_EQ(server.received().size(), 2u);
}

TEST(MailCli, LoadPrintsReport) {
  TestMailServer server;
  Outcome o = RunMail({"load", "--to", server.to(), "--rate", "1000", "--duration", "0.2",
                   "--mailboxes", "2", "--window", "8", "--body-size", "64", "--mix", "1:1:1"});
  EXPECT_EQ(o.code, 0) << o.err;
  for (const char* row : {"sent", "completed", "timeouts", "retries", "throughput_rps",
                          "latency_p50_us", "latency_p90_us", "latency_p99_us",
                          "latency_max_us"})
    EXPECT_NE(o.out.find(row), std::string::npos) << row << "\n" << o.out;
  EXPECT_NE(o.out.find("completed                 200"), std::string::npos) << o.out;
}

}  // namespace
}  // namespace ftvm
