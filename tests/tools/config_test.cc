// The configuration file (tools/ftvm/config.h): the options it gives a command, the
// command line overriding it, and errors that name the key and the line.
#include "tools/ftvm/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "common/error.h"
#include "tools/ftvm/commands.h"
#include "tools/ftvm/vm_runner.h"

namespace ftvm::cli {
namespace {

namespace po = boost::program_options;

class ConfigTest : public testing::Test {
 protected:
  std::string Write(const std::string& text) {
    std::ofstream(path_) << text;
    return path_;
  }
  // The error LoadConfig gives for `text` as the options of `command`.
  std::string ErrorOf(const std::string& text, const std::string& command = "primary") {
    std::unique_ptr<CommandOptions> options = MakeCommandOptions(command);
    const po::options_description desc = options->describe();
    try {
      (void)LoadConfig(Write(text), command, desc);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  void TearDown() override { ::unlink(path_.c_str()); }
  std::string path_ = testing::TempDir() + "ftvm-config-" + std::to_string(getpid()) + ".toml";
  const std::string guest_ = "/proc/self/exe";  // some file that exists
};

TEST_F(ConfigTest, AnUnknownKeyIsNamedWithItsLine) {
  const std::string e = ErrorOf("app = \"timers\"\n\ncolour = \"blue\"\n[primary]\nlisten = \"tcp:127.0.0.1:1\"\nbogus = 3\n");
  EXPECT_NE(e.find(":3: key 'colour': unknown key"), std::string::npos) << e;
  EXPECT_NE(e.find(":6: key 'primary.bogus': unknown key: ftvm primary has no --bogus"), std::string::npos) << e;
  EXPECT_NE(ErrorOf("[secondry]\nconnect = \"tcp:h:1\"\n").find(":1: key 'secondry': unknown table"), std::string::npos);
}

// A VM file of ftvm ha-agent (ha_agent.h) is also a configuration file of `ftvm run`:
// its [ha] table is the agent's, which checks it (and names its keys) itself.
TEST_F(ConfigTest, TheHaTableIsLeftToTheHaAgent) {
  EXPECT_EQ(ErrorOf("app = \"mailstore\"\n[ha]\nhome = \"a\"\nreplica = \"b\"\n", "run"), "");
  const std::string e = ErrorOf("app = \"mailstore\"\nspeed = 3\n[ha]\nhome = \"a\"\n", "run");
  EXPECT_NE(e.find(":2: key 'speed': unknown key"), std::string::npos) << e;
}

TEST_F(ConfigTest, AWrongTypeIsNamedWithItsLine) {
  std::string e = ErrorOf("app = \"timers\"\nmem = \"lots\"\n");
  EXPECT_NE(e.find(":2: key 'mem': bad value"), std::string::npos) << e;
  EXPECT_NE(e.find("option 'mem'"), std::string::npos) << e;
  e = ErrorOf("strict = \"yes\"\n");
  EXPECT_NE(e.find(":1: key 'strict': is a string; it is a switch"), std::string::npos) << e;
  e = ErrorOf("app = [\"a\", \"b\"]\n");
  EXPECT_NE(e.find(":1: key 'app': is a list; it takes one value"), std::string::npos) << e;
  e = ErrorOf("app = \"timers\"\nmem = \n");
  EXPECT_NE(e.find(":2: not TOML"), std::string::npos) << e;
}

TEST_F(ConfigTest, BadValuesAreExplained) {
  std::string e = ErrorOf("guest = \"/no/such/guest.elf\"\n");
  EXPECT_NE(e.find(":1: key 'guest': the guest image /no/such/guest.elf is not there"), std::string::npos) << e;
  e = ErrorOf("[primary]\nlisten = \"pigeon:1\"\n");
  EXPECT_NE(e.find(":2: key 'primary.listen': not a channel address"), std::string::npos) << e;
  // A key another command has is no error at the top level: `connect` is the
  // secondary's.
  EXPECT_EQ(ErrorOf("app = \"timers\"\nconnect = \"tcp:127.0.0.1:7000\"\n"), "");
}

TEST_F(ConfigTest, TheCommandLineOverridesTheFileAndTheCommandsTableTheTopLevel) {
  Write("guest = \"" + guest_ + "\"\napp = \"timers\"\nmem = 128\narg = [\"ticks=5\", \"period_us=100\"]\n"
        "[run]\nmem = 96\nconsole = \"/tmp/c\"\n[primary]\nlisten = \"tcp:127.0.0.1:0\"\nmem = 1\n");
  VmOptions vm;
  po::options_description desc;
  desc.add(vm.describe());
  std::vector<std::string> args = {"run", "--config", path_, "--app", "compute"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  ASSERT_FALSE(ParseCommandLine(int(argv.size()), argv.data(), desc, "run", "", "run").has_value());
  ASSERT_EQ(vm.apply(), "");
  EXPECT_EQ(vm.config.app, "compute");     // the command line over the file
  EXPECT_EQ(vm.config.mem_mib, 96u);       // [run] over the top level; [primary] is not run's
  EXPECT_EQ(vm.config.guest_image, guest_);
  EXPECT_EQ(vm.config.console_path, "/tmp/c");
  EXPECT_EQ(vm.config.app_args, (std::vector<std::string>{"ticks=5", "period_us=100"}));
}

TEST_F(ConfigTest, HealthKeysConfigureTheMonitor) {
  Write("guest = \"" + guest_ + "\"\napp = \"mailstore\"\nhealth-grace-ms = 1500\n[primary]\nhealth-action = \"restart\"\n");
  for (const std::string command : {"run", "primary"}) {
    HealthCliOptions health;
    po::options_description desc;
    desc.add(health.describe());
    std::vector<std::string> args = {command, "--config", path_};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    ASSERT_FALSE(ParseCommandLine(int(argv.size()), argv.data(), desc, command, "", command).has_value()) << command;
    ASSERT_EQ(health.apply(), "") << command;
    EXPECT_EQ(health.options.grace_ns, 1'500'000'000u) << command;
    EXPECT_EQ(health.options.action, command == "run" ? vmm::HealthAction::kReset : vmm::HealthAction::kRestart);
  }
  EXPECT_EQ(ErrorOf("health-grace-ms = 1500\nhealth-action = \"reset\"\n", "run"), "");
  HealthCliOptions bad;
  bad.grace_ms = "-5";
  EXPECT_NE(bad.apply().find("--health-grace-ms '-5' is not a number of milliseconds"), std::string::npos);
  bad.grace_ms = "99999999999999999999";
  EXPECT_NE(bad.apply().find("is not a number of milliseconds"), std::string::npos);
  bad.grace_ms = "0";
  EXPECT_EQ(bad.apply(), "");
  EXPECT_EQ(bad.options.grace_ns, 0u);  // 0: off
  bad.action = "reboot";
  EXPECT_EQ(bad.apply(), "--health-action 'reboot' is not one of reset, restart");
}

TEST_F(ConfigTest, ACommandLineWithABadConfigIsABadCommandLine) {
  Write("app = \"timers\"\nmem = -1.5\n");
  VmOptions vm;
  po::options_description desc;
  desc.add(vm.describe());
  std::vector<std::string> args = {"run", "--config", path_, "--guest", guest_};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  EXPECT_EQ(ParseCommandLine(int(argv.size()), argv.data(), desc, "run", "", "run"), std::optional<int>(kExitUsage));
}

}  // namespace
}  // namespace ftvm::cli
