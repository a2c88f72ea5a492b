#include "common/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

#include "common/error.h"
#include "common/unique_fd.h"

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

const char* LevelJsonName(Level l) {
  switch (l) {
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarn: return "warn";
    case Level::kError: return "error";
  }
  return "?";
}

bool NeedsQuotes(std::string_view v) {
  if (v.empty()) return true;
  for (char c : v)
    if (c == ' ' || c == '"' || c == '=' || c < 0x20) return true;
  return false;
}

// Where lines go and how they look: the process's one logging destination (stderr
// and the event file are process-wide too). The mutex serialises whole lines from
// several threads; configure() takes it as well.
struct Sink {
  std::mutex mu;
  Settings settings;
  UniqueFd event_fd;
};

Sink& TheSink() {
  static Sink sink;
  return sink;
}

struct Stamp {
  char clock[40];  // HH:MM:SS.micros (text lines)
  char iso[80];    // full UTC date and time (JSON lines)
};

Stamp Now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm tmv{};
  gmtime_r(&ts.tv_sec, &tmv);
  Stamp s;
  std::snprintf(s.clock, sizeof s.clock, "%02d:%02d:%02d.%06ld", tmv.tm_hour, tmv.tm_min, tmv.tm_sec,
                ts.tv_nsec / 1000);
  std::snprintf(s.iso, sizeof s.iso, "%04d-%02d-%02dT%s%s", tmv.tm_year + 1900, tmv.tm_mon + 1, tmv.tm_mday,
                s.clock, "Z");
  return s;
}

std::string TextLine(const Stamp& stamp, Level level, std::string_view event, std::initializer_list<Field> fields,
                     const Settings& settings) {
  std::string line;
  line.reserve(128);
  line.append(stamp.clock).append(" ").append(LevelName(level)).append(" ").append(event);
  auto append_field = [&](std::string_view key, std::string_view value) {
    line.append(" ").append(key).append("=");
    if (NeedsQuotes(value)) {
      line.push_back('"');
      for (char c : value) {
        if (c == '"' || c == '\\') line.push_back('\\');
        line.push_back(c == '\n' ? ' ' : c);
      }
      line.push_back('"');
    } else {
      line.append(value);
    }
  };
  for (const Field& f : fields) append_field(f.key, f.value);
  if (!settings.vm.empty()) append_field("vm", settings.vm);
  if (!settings.role.empty()) append_field("role", settings.role);
  line.push_back('\n');
  return line;
}

std::string JsonLine(const Stamp& stamp, Level level, std::string_view event, std::initializer_list<Field> fields,
                     const Settings& settings) {
  std::string line;
  line.reserve(160);
  line.append("{\"ts\":\"").append(stamp.iso).append("\",\"level\":\"").append(LevelJsonName(level));
  line.append("\",\"event\":").append(JsonString(event));
  if (!settings.vm.empty()) line.append(",\"vm\":").append(JsonString(settings.vm));
  if (!settings.role.empty()) line.append(",\"role\":").append(JsonString(settings.role));
  for (const Field& f : fields) {
    line.append(",").append(JsonString(f.key)).append(":");
    // std::to_string of a double can give "inf" or "nan", which JSON has no word for.
    const bool plain_number = f.number && !f.value.empty() && f.value.find_first_of("in") == std::string::npos;
    line.append(plain_number ? f.value : JsonString(f.value));
  }
  line.append("}\n");
  return line;
}

void Emit(Level level, std::string_view event, std::initializer_list<Field> fields, bool operator_event) {
  const Stamp stamp = Now();
  Sink& sink = TheSink();
  std::lock_guard<std::mutex> lock(sink.mu);
  const std::string line = sink.settings.json ? JsonLine(stamp, level, event, fields, sink.settings)
                                              : TextLine(stamp, level, event, fields, sink.settings);
  std::fwrite(line.data(), 1, line.size(), stderr);
  if (operator_event && sink.event_fd) {
    const std::string json = sink.settings.json ? line : JsonLine(stamp, level, event, fields, sink.settings);
    // One write per line on an O_APPEND file: lines of several processes sharing
    // the file never interleave.
    if (::write(sink.event_fd.get(), json.data(), json.size()) != ssize_t(json.size()))
      std::fprintf(stderr, "%s ERROR log.event_file_write_failed\n", stamp.clock);
  }
}

}  // namespace

std::string JsonString(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out.push_back('"');
  for (char c : text) {
    switch (c) {
      case '"': out.append("\\\""); break;
      case '\\': out.append("\\\\"); break;
      case '\n': out.append("\\n"); break;
      case '\r': out.append("\\r"); break;
      case '\t': out.append("\\t"); break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char esc[8];
          std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
          out.append(esc);
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
  return out;
}

void configure(const Settings& settings) {
  UniqueFd fd;
  if (!settings.event_file.empty()) {
    fd.reset(::open(settings.event_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    if (!fd) throw SysError("event file " + settings.event_file);
  }
  Sink& sink = TheSink();
  std::lock_guard<std::mutex> lock(sink.mu);
  sink.settings = settings;
  sink.event_fd = std::move(fd);
}

Level threshold() {
  // Function-local static: initialised once, read-only afterwards.
  static const Level level = ParseLevel(std::getenv("FTVM_LOG"));
  return level;
}

void write(Level level, std::string_view event, std::initializer_list<Field> fields) {
  Emit(level, event, fields, false);
}

void summary(std::string_view line) {
  while (!line.empty() && line.back() == '\n') line.remove_suffix(1);
  Sink& sink = TheSink();
  std::unique_lock<std::mutex> lock(sink.mu);
  if (!sink.settings.json) {
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fputc('\n', stderr);
    return;
  }
  lock.unlock();
  Emit(Level::kInfo, "summary", {{"text", line}}, false);
}

void event(Level level, std::string_view event, std::initializer_list<Field> fields) {
  Emit(level, event, fields, true);
}

}  // namespace ftvm::log
