#include "tools/ftvm/config.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <tuple>
#include <iostream>
#include <set>
#include <toml++/toml.h>

#include "common/error.h"
#include "control/metrics.h"
#include "tools/ftvm/commands.h"
#include "tools/ftvm/vm_runner.h"
#include "transport/channel.h"

namespace ftvm::cli {
namespace po = boost::program_options;

namespace {

struct Problem {
  int line = 0;
  std::string key;
  std::string what;
  bool operator<(const Problem& o) const { return std::tie(line, key, what) < std::tie(o.line, o.key, o.what); }
};

std::string Describe(const std::string& file, const Problem& p) {
  std::string s = p.line == 0 ? file + ": " : file + ":" + std::to_string(p.line) + ": ";
  if (!p.key.empty()) s += "key '" + p.key + "': ";
  return s + p.what;
}

std::string TomlTypeName(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a number";
    case toml::node_type::boolean: return "true/false";
    case toml::node_type::array: return "a list";
    case toml::node_type::table: return "a table";
    default: return "a date or time";
  }
}

int LineOf(const toml::node& n) { return int(n.source().begin.line); }

// A single value as the command line would have it; nullopt for a table, list or date.
std::optional<std::string> Token(const toml::node& n) {
  if (auto s = n.as_string()) return s->get();
  if (auto i = n.as_integer()) return std::to_string(i->get());
  if (auto f = n.as_floating_point()) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", f->get());
    return std::string(buf);
  }
  return std::nullopt;
}

// What a value must be beyond its type, for the keys whose values name things
// outside the file: "" or what is wrong.
std::string CheckValue(const std::string& key, const std::string& value) {
  struct stat st{};
  if (key == "guest") {
    if (::stat(value.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return "the guest image " + value + " is not there";
    if (::access(value.c_str(), R_OK) != 0) return "the guest image " + value + " cannot be read";
  } else if (key == "arbiter") {
    if (::stat(value.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return "the arbiter directory " + value + " is not there";
  } else if (key == "metrics" || key == "peer-metrics") {
    if (std::string bad = control::CheckHttpAddress(value); !bad.empty()) return bad;
  } else if (key == "listen" || key == "connect" || key == "dr-target" || key == "attach" || key == "from") {
    try {
      (void)transport::ParseChannelAddress(value);
    } catch (const Error& e) {
      return std::string("not a channel address: ") + e.what();
    }
  }
  return "";
}

bool KnownToSomeCommand(const std::string& key) {
  for (const std::string& cmd : ConfiguredCommands())
    if (MakeCommandOptions(cmd)->describe().find_nothrow(key, false) != nullptr) return true;
  return false;
}

// Adds `key = node` as an option of `desc` to `out`, or a problem.
// `shown` is the key as the file has it (table.key for one in a table).
void AddOption(const std::string& key, const std::string& shown, const toml::node& node,
               const po::option_description& option, std::vector<po::option>& out, std::vector<Problem>& problems) {
  const int line = LineOf(node);
  auto problem = [&](const std::string& what) { problems.push_back({line, shown, what}); };
  const po::value_semantic& semantic = *option.semantic();
  po::option o;
  o.string_key = key;
  if (semantic.max_tokens() == 0) {  // a switch: --strict
    const auto b = node.as_boolean();
    if (!b) return problem("is " + TomlTypeName(node) + "; it is a switch: true or false");
    if (!b->get()) return;  // off is the default
    out.push_back(o);
    return;
  }
  if (const toml::array* list = node.as_array()) {
    if (!semantic.is_composing() && semantic.max_tokens() <= 1)
      return problem("is a list; it takes one value");
    for (const toml::node& element : *list) {
      std::optional<std::string> t = Token(element);
      if (!t) return problem("has " + TomlTypeName(element) + " in its list; it takes strings or numbers");
      o.value.push_back(*t);
    }
  } else {
    std::optional<std::string> t = Token(node);
    if (!t) return problem("is " + TomlTypeName(node) + "; it takes a " + (semantic.is_composing() ? "list" : "value"));
    o.value.push_back(*t);
  }
  o.original_tokens = o.value;
  // Converted the way the command line's value would be: "lots" for a number is
  // refused here, with the line.
  try {
    boost::any converted;
    semantic.parse(converted, o.value, true);
  } catch (po::error_with_option_name& e) {
    e.set_option_name("--" + key);
    return problem(std::string("bad value: ") + e.what());
  } catch (const po::error& e) {
    return problem(std::string("bad value: ") + e.what());
  }
  for (const std::string& v : o.value)
    if (std::string bad = CheckValue(key, v); !bad.empty()) return problem(bad);
  out.push_back(o);
}

toml::table ParseFile(const std::string& file) {
  if (::access(file.c_str(), R_OK) != 0) throw SysError("config " + file);
  try {
    return toml::parse_file(file);
  } catch (const toml::parse_error& e) {
    throw Error(file + ":" + std::to_string(e.source().begin.line) + ": not TOML: " + std::string(e.description()));
  }
}

// The options of `command` in `table`, with the problems found.
std::vector<po::option> Collect(const toml::table& table, const std::string& command, const po::options_description& desc,
                                std::vector<Problem>& problems) {
  std::vector<po::option> top, section;
  const std::vector<std::string>& commands = ConfiguredCommands();
  for (auto&& [k, node] : table) {
    const std::string key(k.str());
    if (const toml::table* t = node.as_table()) {
      if (key == "ha") continue;  // ftvm ha-agent's (ha_agent.h), checked there
      if (std::find(commands.begin(), commands.end(), key) == commands.end()) {
        problems.push_back({LineOf(node), key, "unknown table (tables are: run, primary, secondary, protect; ha for ftvm ha-agent)"});
        continue;
      }
      if (key != command) continue;
      for (auto&& [sk, snode] : *t) {
        const std::string skey(sk.str());
        if (const po::option_description* o = desc.find_nothrow(skey, false))
          AddOption(skey, key + "." + skey, snode, *o, section, problems);
        else
          problems.push_back({LineOf(snode), key + "." + skey, "unknown key: ftvm " + command + " has no --" + skey});
      }
      continue;
    }
    if (const po::option_description* o = desc.find_nothrow(key, false))
      AddOption(key, key, node, *o, top, problems);
    else if (!KnownToSomeCommand(key))
      problems.push_back({LineOf(node), key, "unknown key: no ftvm command has --" + key});
  }
  // A command's own table overrides the top level.
  for (const po::option& o : top) {
    const bool overridden = std::any_of(section.begin(), section.end(),
                                        [&](const po::option& mine) { return mine.string_key == o.string_key; });
    if (!overridden) section.push_back(o);
  }
  return section;
}

[[noreturn]] void ThrowProblems(const std::string& file, const std::vector<Problem>& problems) {
  std::string all;
  for (const Problem& p : std::set<Problem>(problems.begin(), problems.end())) {
    if (!all.empty()) all += "\n";
    all += Describe(file, p);
  }
  throw Error(all);
}

// The line of the key an error message names as --KEY, or 0.
int LineNamed(const toml::table& table, const std::string& command, const std::string& message, std::string* key) {
  int line = 0;
  auto look = [&](const toml::table& t, const std::string& prefix) {
    for (auto&& [k, node] : t) {
      const std::string name(k.str());
      if (!node.is_table() && message.find("--" + name) != std::string::npos && line == 0) {
        line = LineOf(node);
        *key = prefix + name;
      }
    }
  };
  if (const toml::table* t = table[command].as_table()) look(*t, command + ".");
  look(table, "");
  return line;
}

}  // namespace

const std::vector<std::string>& ConfiguredCommands() {
  static const std::vector<std::string> commands = {"run", "primary", "secondary", "protect"};
  return commands;
}

std::unique_ptr<CommandOptions> MakeCommandOptions(const std::string& command) {
  if (command == "run") return MakeRunOptions();
  if (command == "primary") return MakePrimaryOptions();
  if (command == "secondary") return MakeSecondaryOptions();
  if (command == "protect") return MakeProtectOptions();
  throw Error("no configuration for ftvm " + command);
}

std::optional<int> ParseCommand(int argc, char** argv, CommandOptions& options, const std::string& command,
                                const std::string& usage) {
  if (auto code = ParseCommandLine(argc, argv, options.describe(), command, usage, command)) return code;
  if (std::string bad = options.finish(); !bad.empty()) {
    std::cerr << "ftvm " << command << ": " << bad << "\n";
    return kExitUsage;
  }
  return std::nullopt;
}

po::parsed_options LoadConfig(const std::string& file, const std::string& command, const po::options_description& desc) {
  const toml::table table = ParseFile(file);
  std::vector<Problem> problems;
  po::parsed_options parsed(&desc);
  parsed.options = Collect(table, command, desc, problems);
  if (!problems.empty()) ThrowProblems(file, problems);
  return parsed;
}

int ConfigMain(int argc, char** argv) {
  if (argc == 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    std::cout << "usage: ftvm config check FILE\n"
                 "Checks a VM's configuration file (TOML) for each command it has a table for ([run], [primary],\n"
                 "[secondary], [protect]; run when it has none) and explains every error with its key and line.\n";
    return 0;
  }
  if (argc != 3 || std::string(argv[1]) != "check") {
    std::cerr << "usage: ftvm config check FILE\n";
    return kExitUsage;
  }
  const std::string file = argv[2];
  try {
    const toml::table table = ParseFile(file);
    std::vector<std::string> commands;
    for (const std::string& cmd : ConfiguredCommands())
      if (table[cmd].is_table()) commands.push_back(cmd);
    if (commands.empty()) commands.push_back("run");
    std::vector<Problem> problems;
    // Every value is checked by each command that has its key; the commands the file
    // has a table for are checked whole (required keys, values that go together).
    for (const std::string& cmd : ConfiguredCommands()) {
      std::unique_ptr<CommandOptions> options = MakeCommandOptions(cmd);
      const po::options_description desc = options->describe();
      const size_t before = problems.size();
      po::parsed_options parsed(&desc);
      parsed.options = Collect(table, cmd, desc, problems);
      if (problems.size() != before || std::find(commands.begin(), commands.end(), cmd) == commands.end()) continue;
      // What the command itself would say: a missing required key, values that do
      // not go together.
      std::string why;
      try {
        po::variables_map vars;
        po::store(parsed, vars);
        po::notify(vars);
        why = options->finish();
      } catch (const po::required_option& e) {
        std::string name = e.get_option_name();
        if (name.rfind("--", 0) == 0) name = name.substr(2);
        problems.push_back({0, "", "ftvm " + cmd + " needs '" + name + "' (in the file or on its command line)"});
        continue;
      } catch (const po::error& e) {
        why = e.what();
      }
      if (why.empty()) continue;
      std::string key;
      const int line = LineNamed(table, cmd, why, &key);
      problems.push_back({line, key, "ftvm " + cmd + ": " + why});
    }
    if (!problems.empty()) ThrowProblems(file, problems);
    std::string names;
    for (const std::string& cmd : commands) names += (names.empty() ? "" : ", ") + cmd;
    std::cout << file << ": OK (" << names << ")\n";
    return 0;
  } catch (const Error& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}

}  // namespace ftvm::cli
