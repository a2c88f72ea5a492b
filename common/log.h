// Structured, leveled logging: one line per event, "LEVEL event key=value ...", or,
// once configured for it (ftvm --log-json), one JSON object per line carrying the
// VM's name and this process's role. Output goes to stderr so a guest's console on
// stdout stays clean. Operator events (failover, divergence, resync, migration) go
// through event(): logged like any line and, when an event file is configured,
// appended to it as one JSON object per line.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace ftvm::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// A key/value field; values are rendered to text at the call site (numbers stay
// numbers in JSON).
struct Field {
  Field(std::string_view k, std::string_view v) : key(k), value(v) {}
  Field(std::string_view k, const char* v) : key(k), value(v) {}
  Field(std::string_view k, const std::string& v) : key(k), value(v) {}
  template <typename T>
    requires std::is_arithmetic_v<T>
  Field(std::string_view k, T v) : key(k), value(std::to_string(v)), number(true) {}
  std::string_view key;
  std::string value;
  bool number = false;
};

// How this process logs. Set once at start-up, before the threads that log exist
// (a VMM's command sets it right after parsing its options); the default is text
// lines with neither name nor role.
struct Settings {
  bool json = false;        // one JSON object per line
  std::string vm;           // the VM's name, on every line when set
  std::string role;         // run, primary, secondary, ...: on every line when set
  std::string event_file;   // operator events appended here as JSON lines ("" none)
};
// Throws ftvm::Error when the event file cannot be opened for appending.
void configure(const Settings& settings);

// The threshold is read once from FTVM_LOG (debug|info|warn|error, default info).
Level threshold();
void write(Level level, std::string_view event, std::initializer_list<Field> fields);
// An operator event: written like write() (whatever the threshold) and appended to
// the event file.
void event(Level level, std::string_view event, std::initializer_list<Field> fields);

// A line for people (a command's closing summary): written to stderr as it is, or,
// with JSON lines, as an object with event "summary" and the line as "text".
void summary(std::string_view line);

// `text` as a JSON string literal, quotes included.
std::string JsonString(std::string_view text);

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
