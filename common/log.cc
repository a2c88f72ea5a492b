#include "common/log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

namespace ftvm::log {
namespace {

Level ParseLevel(const char* s) {
  if (s == nullptr) return Level::kInfo;
  if (std::strcmp(s, "debug") == 0) return Level::kDebug;
  if (std::strcmp(s, "warn") == 0) return Level::kWarn;
  if (std::strcmp(s, "error") == 0) return Level::kError;
  return Level::kInfo;
}

const char* LevelName(Level l) {
  switch (l) {
    case Level::kDebug: return "DEBUG";
    case Level::kInfo: return "INFO";
    case Level::kWarn: return "WARN";
    case Level::kError: return "ERROR";
  }
  return "?";
}

bool NeedsQuotes(std::string_view v) {
  if (v.empty()) return true;
  for (char c : v)
    if (c == ' ' || c == '"' || c == '=' || c < 0x20) return true;
  return false;
}

}  // namespace

Level threshold() {
  // Function-local static: initialised once, read-only afterwards.
  static const Level level = ParseLevel(std::getenv("FTVM_LOG"));
  return level;
}

void write(Level level, std::string_view event, std::initializer_list<Field> fields) {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm tmv{};
  gmtime_r(&ts.tv_sec, &tmv);
  char stamp[40];
  std::snprintf(stamp, sizeof stamp, "%02d:%02d:%02d.%06ld", tmv.tm_hour, tmv.tm_min, tmv.tm_sec,
                ts.tv_nsec / 1000);
  std::string line;
  line.reserve(128);
  line.append(stamp).append(" ").append(LevelName(level)).append(" ").append(event);
  for (const Field& f : fields) {
    line.append(" ").append(f.key).append("=");
    if (NeedsQuotes(f.value)) {
      line.push_back('"');
      for (char c : f.value) {
        if (c == '"' || c == '\\') line.push_back('\\');
        line.push_back(c == '\n' ? ' ' : c);
      }
      line.push_back('"');
    } else {
      line.append(f.value);
    }
  }
  line.push_back('\n');
  static std::mutex mu;  // serialises whole lines from several threads
  std::lock_guard<std::mutex> lock(mu);
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace ftvm::log
