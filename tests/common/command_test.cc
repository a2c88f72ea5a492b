// Running helper programs (common/command.h): exit status, both outputs kept apart,
// no deadlock when a command fills both pipes, and errors that quote the command.
#include "common/command.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace ftvm {
namespace {

TEST(RunCommand, KeepsStatusAndBothOutputs) {
  const CommandResult r = RunCommand({"sh", "-c", "echo to-out; echo to-err >&2; exit 3"});
  EXPECT_EQ(r.status, 3);
  EXPECT_EQ(r.out, "to-out\n");
  EXPECT_EQ(r.err, "to-err\n");
}

TEST(RunCommand, ReadsLargeOutputsOnBothPipesWithoutBlocking) {
  // 1 MiB on each pipe, written alternately: far more than a pipe buffer holds.
  const CommandResult r = RunCommand(
      {"sh", "-c", "for i in $(seq 1 16); do head -c 65536 /dev/zero; head -c 65536 /dev/zero >&2; done"});
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.out.size(), 1u << 20);
  EXPECT_EQ(r.err.size(), 1u << 20);
}

TEST(RunCommand, ReportsAKillingSignal) {
  EXPECT_EQ(RunCommand({"sh", "-c", "kill -9 $$"}).status, 128 + 9);
}

TEST(RunCommand, StdinIsEmpty) {
  // cat would wait for ever on an inherited terminal or pipe.
  const CommandResult r = RunCommand({"cat"});
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.out, "");
}

TEST(RunCommand, AProgramThatIsNotThereIsNamed) {
  try {
    RunCommand({"ftvm-no-such-program", "x"});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot run ftvm-no-such-program"), std::string::npos) << e.what();
  }
}

TEST(RunCommandOrThrow, QuotesTheCommandItsStatusAndStderr) {
  EXPECT_EQ(RunCommandOrThrow({"sh", "-c", "printf ok"}), "ok");
  try {
    RunCommandOrThrow({"sh", "-c", "echo 'no such device' >&2; exit 2"});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "`sh -c echo 'no such device' >&2; exit 2` failed (exit 2): no such device");
  }
}

}  // namespace
}  // namespace ftvm
