// Error helpers. Setup and configuration paths throw ftvm::Error with a message that
// names the problem; hot paths return explicit results instead.
#pragma once

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace ftvm {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "what: strerror(errno)" for a failed system call; errno is read at the call.
inline Error SysError(const std::string& what, int err = errno) {
  return Error(what + ": " + std::strerror(err));
}

}  // namespace ftvm
