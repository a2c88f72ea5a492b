// "0x1f" formatting for addresses and registers in messages and logs.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace ftvm {

inline std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace ftvm
