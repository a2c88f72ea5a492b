// `ftvm run`: boot a guest-kit image and run it until it powers off or a signal.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <boost/program_options.hpp>
#include <iostream>
#include <thread>

#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "tools/ftvm/commands.h"
#include "vmm/machine.h"

namespace ftvm::cli {
namespace po = boost::program_options;

namespace {

po::options_description RunOptions(vmm::VmConfig& c, std::string& backend, std::vector<std::string>& args) {
  po::options_description d("ftvm run options");
  d.add_options()
      ("help,h", "show this help")
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

}  // namespace

int RunMain(int argc, char** argv) {
  vmm::VmConfig config;
  std::string backend;
  std::vector<std::string> args;
  po::options_description desc = RunOptions(config, backend, args);
  try {
    po::variables_map vm;
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: ftvm run --guest IMAGE --app NAME [options]\n" << desc;
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "ftvm run: " << e.what() << " (see ftvm run --help)\n";
    return kExitUsage;
  }
  auto kind = vmm::ParseBackendKind(backend);
  if (!kind) {
    std::cerr << "ftvm run: --backend '" << backend << "' is not one of auto, kvm, emulated\n";
    return kExitUsage;
  }
  config.backend = *kind;
  config.app_args = args;

  // SIGINT/SIGTERM stop the guest cleanly: blocked everywhere, taken by one thread.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  try {
    auto clock = MakeSystemClock();
    auto random = MakeSystemRandom();
    vmm::Machine machine(config, *clock, *random);
    std::atomic<bool> finished{false};
    std::thread signal_thread([&] {
      int sig = 0;
      sigwait(&stop_signals, &sig);
      if (!finished.load() && (sig == SIGINT || sig == SIGTERM)) {
        log::info("vm.signal", {{"signal", sig == SIGINT ? "SIGINT" : "SIGTERM"}});
        machine.stop();
      }
    });
    int code = -1;
    try {
      code = machine.run();
    } catch (...) {
      finished.store(true);
      pthread_kill(signal_thread.native_handle(), SIGTERM);
      signal_thread.join();
      throw;
    }
    // Wake the signal thread if the guest stopped by itself.
    finished.store(true);
    pthread_kill(signal_thread.native_handle(), SIGTERM);
    signal_thread.join();
    return code < 0 ? 0 : code;
  } catch (const Error& e) {
    std::cerr << "ftvm run: " << e.what() << "\n";
    return kExitVmmError;
  } catch (const std::exception& e) {
    std::cerr << "ftvm run: internal error: " << e.what() << "\n";
    return kExitVmmError;
  }
}

}  // namespace ftvm::cli
