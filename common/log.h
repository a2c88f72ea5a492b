// Structured, leveled logging: one line per event, "LEVEL event key=value ...".
// Output goes to stderr so a guest's console on stdout stays clean.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace ftvm::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// A key/value field; values are rendered to text at the call site.
struct Field {
  Field(std::string_view k, std::string_view v) : key(k), value(v) {}
  Field(std::string_view k, const char* v) : key(k), value(v) {}
  Field(std::string_view k, const std::string& v) : key(k), value(v) {}
  template <typename T>
    requires std::is_arithmetic_v<T>
  Field(std::string_view k, T v) : key(k), value(std::to_string(v)) {}
  std::string_view key;
  std::string value;
};

// The threshold is read once from FTVM_LOG (debug|info|warn|error, default info).
Level threshold();
void write(Level level, std::string_view event, std::initializer_list<Field> fields);

inline void debug(std::string_view e, std::initializer_list<Field> f = {}) {
  if (threshold() <= Level::kDebug) write(Level::kDebug, e, f);
}
inline void info(std::string_view e, std::initializer_list<Field> f = {}) {
  if (threshold() <= Level::kInfo) write(Level::kInfo, e, f);
}
inline void warn(std::string_view e, std::initializer_list<Field> f = {}) {
  if (threshold() <= Level::kWarn) write(Level::kWarn, e, f);
}
inline void error(std::string_view e, std::initializer_list<Field> f = {}) {
  write(Level::kError, e, f);
}

}  // namespace ftvm::log
