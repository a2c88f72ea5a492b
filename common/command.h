// Running a helper program (ip, nft) to its end and keeping what it printed: the one
// way the tools do it, so that every failure quotes the command and its stderr.
// Not for the VMM processes a drill or a test starts: those run on, with output to
// files, under their own handles.
#pragma once

#include <string>
#include <vector>

namespace ftvm {

struct CommandResult {
  int status = -1;  // the exit status; 128 + N when signal N killed it
  std::string out;  // what it wrote on stdout
  std::string err;  // and on stderr
};

// Runs argv (argv[0] looked up on PATH) with stdin from /dev/null and waits for it.
// Throws ftvm::Error when it cannot be started.
CommandResult RunCommand(const std::vector<std::string>& argv);

// RunCommand, then throws ftvm::Error quoting the command, its exit status and its
// stderr unless it exited 0. Returns its stdout.
std::string RunCommandOrThrow(const std::vector<std::string>& argv);

// "ip -n ns link set up": argv as one line, for messages.
std::string CommandLine(const std::vector<std::string>& argv);

}  // namespace ftvm
