// Structured logging (common/log.h): text and JSON lines with the VM's name and role,
// and operator events appended to the event file.
#include "common/log.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include "common/error.h"
#include "tests/support/harness.h"

namespace ftvm::log {
namespace {

// Captures what the logger writes on stderr while it lives.
class CapturedStderr {
 public:
  CapturedStderr() : path_(testing::TempDir() + "ftvm-log-" + std::to_string(getpid()) + ".err") {
    std::fflush(stderr);
    saved_ = ::dup(2);
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ::dup2(fd, 2);
    ::close(fd);
  }
  ~CapturedStderr() { Restore(); ::unlink(path_.c_str()); }
  std::string Text() {
    Restore();
    return itest::ReadFile(path_);
  }

 private:
  void Restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    saved_ = -1;
  }
  std::string path_;
  int saved_ = -1;
};

class LogTest : public testing::Test {
 protected:
  void TearDown() override {
    configure(Settings{});
    ::unlink(events_.c_str());
  }
  std::string events_ = testing::TempDir() + "ftvm-log-" + std::to_string(getpid()) + ".events";
};

TEST_F(LogTest, JsonLinesCarryTheVmAndTheRoleAndKeepNumbersNumbers) {
  configure({.json = true, .vm = "vm7", .role = "primary", .event_file = ""});
  CapturedStderr err;
  error("test.event", {{"text", "a \"quoted\"\nline"}, {"count", 42}, {"ms", 1.5}});
  const std::string line = err.Text();
  EXPECT_EQ(line.front(), '{') << line;
  EXPECT_EQ(line.substr(line.size() - 2), "}\n") << line;
  EXPECT_NE(line.find("\"level\":\"error\",\"event\":\"test.event\",\"vm\":\"vm7\",\"role\":\"primary\""),
            std::string::npos) << line;
  EXPECT_NE(line.find("\"text\":\"a \\\"quoted\\\"\\nline\""), std::string::npos) << line;
  EXPECT_NE(line.find("\"count\":42"), std::string::npos) << line;
  EXPECT_NE(line.find("\"ms\":1.5"), std::string::npos) << line;
}

TEST_F(LogTest, TextLinesCarryTheVmAndTheRole) {
  configure({.json = false, .vm = "vm7", .role = "secondary", .event_file = ""});
  CapturedStderr err;
  error("test.event", {{"k", "v"}});
  EXPECT_NE(err.Text().find("ERROR test.event k=v vm=vm7 role=secondary\n"), std::string::npos);
}

TEST_F(LogTest, OperatorEventsGoToTheEventFileAsJsonLines) {
  configure({.json = false, .vm = "vm7", .role = "secondary", .event_file = events_});
  {
    CapturedStderr err;
    event(Level::kError, "secondary.LIVE", {{"downtime_ms", 12.5}});
    error("not.an.event");
    EXPECT_NE(err.Text().find("ERROR secondary.LIVE downtime_ms="), std::string::npos);  // logged as usual too
  }
  const std::string lines = itest::ReadFile(events_);
  EXPECT_NE(lines.find("\"event\":\"secondary.LIVE\",\"vm\":\"vm7\",\"role\":\"secondary\",\"downtime_ms\":12.5"),
            std::string::npos) << lines;
  EXPECT_EQ(lines.find("not.an.event"), std::string::npos) << lines;
  EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 1) << lines;
}

TEST_F(LogTest, SummaryLinesArePlainOrJson) {
  {
    CapturedStderr err;
    summary("primary: log 10 bytes\n");
    EXPECT_EQ(err.Text(), "primary: log 10 bytes\n");
  }
  configure({.json = true, .vm = "vm7", .role = "primary", .event_file = ""});
  CapturedStderr err;
  summary("primary: log 10 bytes\n");
  EXPECT_NE(err.Text().find("\"event\":\"summary\",\"vm\":\"vm7\",\"role\":\"primary\",\"text\":\"primary: log 10 bytes\"}\n"),
            std::string::npos);
}

TEST_F(LogTest, AnEventFileThatCannotBeOpenedIsAnError) {
  EXPECT_THROW(configure({.json = false, .vm = "", .role = "", .event_file = "/no/such/dir/events"}), Error);
}

}  // namespace
}  // namespace ftvm::log
