#include "tools/ftvm/vm_runner.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <iostream>
#include <thread>

#include "common/error.h"
#include "common/log.h"
#include "control/control.pb.h"
#include "tools/ftvm/config.h"
#include "tools/ftvm/commands.h"

namespace ftvm::cli {

std::optional<int> ParseCommandLine(int argc, char** argv, const boost::program_options::options_description& desc,
                                    const std::string& cmd, const std::string& usage,
                                    const std::string& config_command) {
  namespace po = boost::program_options;
  std::string config_file;
  po::options_description all;
  all.add(desc);
  if (!config_command.empty())
    all.add_options()("config", po::value(&config_file),
                      "read options from this TOML file (ftvm config check FILE); the command line overrides it");
  try {
    po::variables_map vars;
    po::store(po::command_line_parser(argc, argv).options(all).run(), vars);
    if (vars.count("help")) {
      std::cout << usage << all;
      return 0;
    }
    // Stored second, the file's values give way to the command line's.
    if (vars.count("config")) po::store(LoadConfig(vars["config"].as<std::string>(), config_command, desc), vars);
    po::notify(vars);
  } catch (const po::error& e) {
    std::cerr << "ftvm " << cmd << ": " << e.what() << " (see ftvm " << cmd << " --help)\n";
    return kExitUsage;
  } catch (const Error& e) {
    std::cerr << "ftvm " << cmd << ": " << e.what() << "\n";
    return kExitUsage;
  }
  return std::nullopt;
}

namespace po = boost::program_options;

po::options_description VmOptions::describe() {
  vmm::VmConfig& c = config;
  po::options_description d("VM options");
  d.add_options()
      ("guest", po::value(&c.guest_image)->required(), "guest image (ELF64), e.g. build/guest/ftvm-guest.elf")
      ("app", po::value(&c.app)->required(), "guest-kit app: compute, timers, dirty, disk, mailstore")
      ("mem", po::value(&c.mem_mib)->default_value(c.mem_mib), "guest RAM in MiB")
      ("disk", po::value(&c.disk), "raw disk image for virtio-blk")
      ("tap", po::value(&c.tap), "tap interface for virtio-net")
      ("mac", po::value(&c.mac)->default_value(c.mac), "guest MAC address")
      ("ip", po::value(&c.ip)->default_value(c.ip), "guest IPv4 address/prefix")
      ("gateway", po::value(&c.gateway), "guest default gateway")
      ("backend", po::value(&backend)->default_value("auto"), "vCPU backend: auto, kvm, emulated")
      ("console", po::value(&c.console_path), "write guest console output to FILE instead of stdout")
      ("arg", po::value(&args)->composing(), "extra guest argument key=value (repeatable)");
  return d;
}

std::string VmOptions::apply() {
  auto kind = vmm::ParseBackendKind(backend);
  if (!kind) return "--backend '" + backend + "' is not one of auto, kvm, emulated";
  config.backend = *kind;
  config.app_args = args;
  return "";
}

po::options_description HealthCliOptions::describe() {
  po::options_description d("guest health");
  d.add_options()
      ("health-grace-ms", po::value(&grace_ms),
       "act when a guest that heartbeats (FTVM_SLOT_HEALTH) has not beaten for this long (0 or absent: never)")
      ("health-action", po::value(&action)->default_value(action),
       "what to do with a hung guest: reset (reboot it in place, disk kept) or restart (the VMM exits with 124 "
       "for its supervisor to start it again)");
  return d;
}

std::string HealthCliOptions::apply() {
  const std::optional<vmm::HealthAction> a = vmm::ParseHealthAction(action);
  if (!a) return "--health-action '" + action + "' is not one of reset, restart";
  options.action = *a;
  options.grace_ns = 0;
  if (grace_ms.empty()) return "";
  // At most a year: anything longer is a typo, and the product must not overflow.
  constexpr uint64_t kMaxMs = 365ull * 24 * 3600 * 1000;
  uint64_t ms = 0;
  bool ok = grace_ms.size() <= 12 && grace_ms.find_first_not_of("0123456789") == std::string::npos;
  if (ok) ms = std::stoull(grace_ms);
  if (!ok || ms > kMaxMs)
    return "--health-grace-ms '" + grace_ms + "' is not a number of milliseconds from 0 to " + std::to_string(kMaxMs);
  options.grace_ns = ms * 1000000;
  return "";
}

void FillHealthStatus(const vmm::HealthStatus& h, control::StatusReply& s) {
  if (!h.enabled && h.beats == 0 && h.resets == 0) return;  // a guest without the heartbeat, unwatched
  s.set_health_beats(h.beats);
  s.set_health_last_beat_age_ms(double(h.last_beat_age_ns) / 1e6);
  s.set_health_hangs(h.hangs);
  s.set_health_resets(h.resets);
}

void PrintSummary(const char* format, ...) {
  va_list args;
  va_start(args, format);
  va_list again;
  va_copy(again, args);
  const int n = std::vsnprintf(nullptr, 0, format, args);
  va_end(args);
  std::string line(size_t(std::max(n, 0)), '\0');
  std::vsnprintf(line.data(), line.size() + 1, format, again);
  va_end(again);
  log::summary(line);
}

void BlockStopSignals() {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
}

int RunUntilDone(const std::function<int()>& run, const std::function<void()>& stop) {
  BlockStopSignals();
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  std::atomic<bool> finished{false};
  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (!finished.load() && (sig == SIGINT || sig == SIGTERM)) {
      log::info("vm.signal", {{"signal", sig == SIGINT ? "SIGINT" : "SIGTERM"}});
      stop();
    }
  });
  auto join = [&] {
    // Wake the signal thread if the guest stopped by itself.
    finished.store(true);
    pthread_kill(signal_thread.native_handle(), SIGTERM);
    signal_thread.join();
  };
  int code;
  try {
    code = run();
  } catch (...) {
    join();
    throw;
  }
  join();
  return code;
}

}  // namespace ftvm::cli
