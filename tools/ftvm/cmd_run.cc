// `ftvm run`: boot a guest-kit image and run it until it powers off or a signal.
#include <iostream>

#include "common/clock.h"
#include "common/error.h"
#include "tools/ftvm/commands.h"
#include "tools/ftvm/config.h"
#include "tools/ftvm/vm_runner.h"
#include "tools/ftvm/vm_storage.h"

namespace ftvm::cli {
namespace po = boost::program_options;

po::options_description ImageFromOptions::describe() {
  po::options_description d("image streaming");
  d.add_options()
      ("image-from", po::value(&from),
       "start from the disk image NAME on an `ftvm serve-image` at HOST:PORT (HOST:PORT/NAME) before it is copied: "
       "--disk is the local copy, created sparse (or resumed: its .present file says what it holds)")
      ("image-timeout-s", po::value(&timeout_s)->default_value(timeout_s),
       "a connection to the image server counts as lost after this long without an answer, and a lost server "
       "has this long to come back (the VM waits) before the VM is lost");
  return d;
}

std::string ImageFromOptions::check() const {
  if (!(timeout_s > 0)) return "--image-timeout-s must be positive";
  if (from.empty()) return "";
  storage::ImageAddress a;
  if (std::string why = storage::ParseImageAddress(from, a); !why.empty()) return "--image-from " + why;
  return "";
}

namespace {

// Stops the stream before the machine it reports a lost server to is destroyed.
struct StreamStopper {
  storage::ImageStream* stream;
  ~StreamStopper() {
    if (stream != nullptr) stream->stop();
  }
};

void ReportStream(const storage::ImageStream& stream) {
  const storage::ImageStreamStats s = stream.stats();
  PrintSummary("image stream: %s: %llu blocks of %u KiB, %s; fetched on demand %llu, prefetched %llu, written over %llu, "
               "local at start %llu; the guest read %llu distinct blocks while it ran (on demand: %.1f%%); the vCPU "
               "waited %.1f ms for blocks (%llu waits, longest %.1f ms); %llu reconnects",
               stream.local_path().c_str(), static_cast<unsigned long long>(s.blocks), s.block_bytes / 1024,
               s.complete ? "complete" : "NOT complete", static_cast<unsigned long long>(s.demand_fetched),
               static_cast<unsigned long long>(s.prefetched), static_cast<unsigned long long>(s.written_over),
               static_cast<unsigned long long>(s.local_at_start), static_cast<unsigned long long>(s.blocks_read),
               s.blocks_read > 0 ? 100.0 * double(s.demand_fetched) / double(s.blocks_read) : 0.0,
               double(s.wait_ns_total) / 1e6, static_cast<unsigned long long>(s.demand_waits),
               double(s.wait_ns_max) / 1e6, static_cast<unsigned long long>(s.reconnects));
}

}  // namespace

int RunVm(const std::string& cmd, const vmm::VmConfig& config, const StorageCliOptions& storage_options,
          const OperatorOptions& operator_options, const ImageFromOptions* image,
          const vmm::HealthOptions& health_options, const std::function<void(vmm::Machine&)>& prepare) {
  try {
    operator_options.configure_logging(cmd, config.app);
    auto clock = MakeSystemClock();
    auto random = MakeSystemRandom();
    std::unique_ptr<storage::ImageStream> stream;
    if (image != nullptr && !image->from.empty()) {
      if (config.disk.empty()) throw Error("--image-from needs --disk LOCAL_PATH: where the image is copied to");
      if (!storage_options.dr_target.empty())
        throw Error("--image-from and --dr-target together: a DR copy of a disk that is not local yet would copy its "
                    "holes; start the mirror once the image is local");
      storage::ImageStreamOptions so;
      if (std::string why = storage::ParseImageAddress(image->from, so.server); !why.empty())
        throw Error("--image-from " + why);
      so.local_path = config.disk;
      so.timeout = std::chrono::nanoseconds(int64_t(image->timeout_s * 1e9));
      so.client_name = operator_options.vm_or(config.app);
      stream = std::make_unique<storage::ImageStream>(so);
    }
    vmm::Machine machine(config, *clock, *random);
    if (prepare) prepare(machine);
    StreamStopper stopper{stream.get()};
    if (stream && !stream->complete()) {
      machine.set_disk_source(stream.get());
      stream->start([&machine](const std::string& why) { machine.abort(why); });
    }
    VmStorage storage(storage_options, machine, *clock);
    storage.set_image_stream(stream.get());
    ControlEndpoint control(operator_options, cmd, operator_options.vm_or(config.app));
    storage.serve(control);
    // A VM that runs alone is live and unprotected.
    control.add_status([](control::StatusReply& s) { s.set_state("unprotected"); });
    vmm::HealthMonitor health(machine, health_options);
    control.add_status([&health](control::StatusReply& s) { FillHealthStatus(health.status(), s); });
    control.start();
    int code = RunUntilDone([&] { return machine.run(); },
                            [&] {
                              if (stream) stream->cancel();  // a vCPU waiting for a block
                              storage.cancel();              // ... or for a lost disk server
                              machine.stop();
                            });
    health.stop();
    storage.final_report();
    if (stream) {
      stream->stop();
      ReportStream(*stream);
    }
    if (health.restart_requested()) {
      PrintSummary("%s: the guest hung; exiting with %d for a restart\n", cmd.c_str(), vmm::kExitGuestHung);
      return vmm::kExitGuestHung;
    }
    return code < 0 ? 0 : code;
  } catch (const Error& e) {
    std::cerr << "ftvm " << cmd << ": " << e.what() << "\n";
    return kExitVmmError;
  } catch (const std::exception& e) {
    std::cerr << "ftvm " << cmd << ": internal error: " << e.what() << "\n";
    return kExitVmmError;
  }
}

namespace {

struct RunOptions final : CommandOptions {
  VmOptions vm;
  StorageCliOptions storage;
  ImageFromOptions image;
  OperatorOptions ops;
  HealthCliOptions health;
  po::options_description describe() override {
    po::options_description desc("ftvm run options");
    desc.add_options()("help,h", "show this help");
    desc.add(vm.describe());
    desc.add(storage.describe());
    desc.add(image.describe());
    desc.add(health.describe());
    desc.add(ops.describe());
    return desc;
  }
  std::string finish() override {
    std::string bad = vm.apply() + storage.check() + image.check() + health.apply();
    if (bad.empty() && !image.from.empty() && vm.config.disk.empty())
      bad = "--image-from needs --disk LOCAL_PATH: where the image is copied to";
    if (bad.empty() && !image.from.empty() && !storage.dr_target.empty())
      bad = "--image-from and --dr-target together: a DR copy of a disk that is not local yet would copy its holes; "
            "start the mirror once the image is local";
    return bad;
  }
};

}  // namespace

std::unique_ptr<CommandOptions> MakeRunOptions() { return std::make_unique<RunOptions>(); }

int RunMain(int argc, char** argv) {
  BlockStopSignals();
  RunOptions o;
  if (auto code = ParseCommand(argc, argv, o, "run", "usage: ftvm run --guest IMAGE --app NAME [options]\n"))
    return *code;
  return RunVm("run", o.vm.config, o.storage, o.ops, &o.image, o.health.options);
}

}  // namespace ftvm::cli
