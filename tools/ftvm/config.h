// One configuration file per protected VM, in TOML. Its keys are the long names of
// the options of the ftvm command that reads it (`mem = 256` is `--mem 256`,
// `strict = true` is `--strict`, `arg = ["ticks=5"]` is `--arg ticks=5`), so each
// option is defined once, by its command (CommandOptions), for both. Keys at the top
// level apply to each command that has that option; keys in a [run], [primary],
// [secondary] or [protect] table to that command only. Options on the command line
// override the file.
#pragma once

#include <boost/program_options.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ftvm::cli {

// A command's options: the variables they are bound to, their descriptions, and the
// checks and conversions after parsing.
class CommandOptions {
 public:
  virtual ~CommandOptions() = default;
  virtual boost::program_options::options_description describe() = 0;
  // After the options are stored: "" or what is wrong, naming the option.
  virtual std::string finish() = 0;
};

// Parses a command's argv (with --config FILE for `command`, see ParseCommandLine)
// into `options` and finishes them. Returns nothing when the command should go on,
// otherwise its exit code (0 for --help; kExitUsage after saying what is wrong).
std::optional<int> ParseCommand(int argc, char** argv, CommandOptions& options, const std::string& command,
                                const std::string& usage);

// The commands a configuration file configures (each a table name), and their
// options (fresh variables each call).
const std::vector<std::string>& ConfiguredCommands();
std::unique_ptr<CommandOptions> MakeCommandOptions(const std::string& command);

// The options `file` gives the command `command` whose options `desc` describes.
// Throws ftvm::Error listing every problem as "FILE:LINE: key 'K': what is wrong"
// (unknown keys, wrong types, bad values, a guest image that is not there, a
// malformed channel address).
boost::program_options::parsed_options LoadConfig(const std::string& file, const std::string& command,
                                                  const boost::program_options::options_description& desc);

// `ftvm config check FILE`.
int ConfigMain(int argc, char** argv);

}  // namespace ftvm::cli
