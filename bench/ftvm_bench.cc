// ftvm benchmarks: one table, every figure next to a baseline measured in the same
// run. Runs real `ftvm run` processes (and, for the mail store, a network namespace
// with a tap), so it needs root like the integration tests.
//
//   build/bench/ftvm_bench [--quick]
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <regex>
#include <string>
#include <vector>

#include "guest/apps/compute_core.h"
#include "tests/support/harness.h"
#include "tests/tools/mail_test_server.h"
#include "tools/ftvm/mail_client.h"

namespace ftvm::bench {
namespace {

using itest::Process;
using itest::ProcessResult;
using itest::RunProcess;
using std::chrono::seconds;

struct Row {
  std::string metric;
  double value;
  std::string unit;
  std::string baseline_name;
  double baseline;  // <= 0: no baseline
};

std::string g_ftvm, g_guest, g_ring0_guest;

double Field(const std::string& text, const std::string& key) {
  std::smatch m;
  if (std::regex_search(text, m, std::regex(key + "=([0-9.]+)"))) return std::stod(m[1]);
  return -1;
}

std::string Backend(const std::string& log) {
  std::smatch m;
  if (std::regex_search(log, m, std::regex("backend=([a-z]+)"))) return m[1];
  return "?";
}

ProcessResult RunGuest(const std::string& image, std::vector<std::string> args) {
  std::vector<std::string> argv = {g_ftvm, "run", "--guest", image, "--app"};
  argv.insert(argv.end(), args.begin(), args.end());
  ProcessResult r = RunProcess(argv, seconds(600), "bench");
  if (r.exit_code != 0) {
    std::fprintf(stderr, "bench: guest run failed (%d): %s\n", r.exit_code, r.err.c_str());
    std::exit(1);
  }
  return r;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

void ExitCosts(std::vector<Row>& rows, bool quick) {
  std::vector<double> pio, mmio0, mmio3;
  int reps = quick ? 1 : 3;
  for (int i = 0; i < reps; ++i) {
    ProcessResult r = RunGuest(g_ring0_guest, {"exits"});
    double n = Field(r.out, "n");
    pio.push_back(Field(r.out, "pio_ns") / n / 1000.0);
    mmio0.push_back(Field(r.out, "mmio_ns") / n / 1000.0);
    ProcessResult u = RunGuest(g_guest, {"exits", "--arg", "n=20000"});
    mmio3.push_back(Field(u.out, "mmio_ns") / Field(u.out, "n") / 1000.0);
  }
  double base = Median(mmio0);
  rows.push_back({"exit round trip: port I/O from ring 0", Median(pio), "us", "MMIO ring 0", base});
  rows.push_back({"exit round trip: MMIO from ring 0", base, "us", "", 0});
  rows.push_back({"exit round trip: MMIO from ring 3", Median(mmio3), "us", "MMIO ring 0", base});
}

void BootTime(std::vector<Row>& rows, std::string& backend) {
  std::vector<double> boot;
  for (int i = 0; i < 5; ++i) {
    ProcessResult r = RunGuest(g_guest, {"compute", "--arg", "iters=1"});
    boot.push_back(Field(r.err, "first_output_us") / 1000.0);
    backend = Backend(r.err);
  }
  rows.push_back({"boot to first output", Median(boot), "ms", "goal 50 ms", 50});
}

void Compute(std::vector<Row>& rows, bool quick) {
  // The difference of two guest runs removes boot and exit costs; the host runs the
  // same compiled code (guest/apps/compute_core.cc) in this process.
  uint64_t iters = quick ? 5000000 : 20000000;
  ProcessResult small = RunGuest(g_guest, {"compute", "--arg", "iters=1"});
  ProcessResult big = RunGuest(g_guest, {"compute", "--arg", "iters=" + std::to_string(iters)});
  double guest_ms = Field(big.err, "run_ms") - Field(small.err, "run_ms");
  auto t0 = std::chrono::steady_clock::now();
  volatile uint64_t sink = ftvm_compute(iters);
  (void)sink;
  double host_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  rows.push_back({"compute " + std::to_string(iters / 1000000) + "M iterations in the guest", guest_ms, "ms",
                  "same code on the host", host_ms});
}

struct LoadRun {
  mail::LoadReport report;
  double guest_exits = 0;
};

mail::LoadReport ParseLoad(const std::string& out) {
  mail::LoadReport r{};
  auto get = [&](const char* key) {
    std::smatch m;
    if (std::regex_search(out, m, std::regex(std::string(key) + "\\s+([0-9.]+)"))) return std::stod(m[1]);
    return -1.0;
  };
  r.completed = uint64_t(get("completed"));
  r.timeouts = uint64_t(get("timeouts"));
  r.throughput_rps = get("throughput_rps");
  r.p50_us = uint64_t(get("latency_p50_us"));
  r.p99_us = uint64_t(get("latency_p99_us"));
  return r;
}

// Boots the mail store on a tap in a fresh namespace, optionally drives load, stops
// it and returns the load report and the guest exits taken.
LoadRun MailStoreRun(const mail::LoadOptions* load, double idle_s) {
  itest::NetNamespace ns("bench");
  ns.AddTap("ftvmb0", "10.0.0.1/24");
  std::string disk = itest::ScratchPath("bench-mail.img");
  FILE* f = std::fopen(disk.c_str(), "w");
  std::fclose(f);
  if (truncate(disk.c_str(), 64 << 20) != 0) std::exit(1);
  std::string console = itest::ScratchPath("bench-console.txt");
  Process vm = Process::Start(ns.Wrap({g_ftvm, "run", "--guest", g_guest, "--app", "mailstore", "--disk", disk,
                                       "--tap", "ftvmb0", "--ip", "10.0.0.2/24", "--console", console}),
                              "bench-vm");
  if (!itest::WaitForFileContains(console, "mailstore: ready", seconds(120))) {
    std::fprintf(stderr, "bench: mail store did not come up\n%s", vm.Stderr().c_str());
    std::exit(1);
  }
  LoadRun out;
  if (load != nullptr) {
    char rate[32], dur[32], win[32];
    std::snprintf(rate, sizeof rate, "%.0f", load->rate);
    std::snprintf(dur, sizeof dur, "%.1f", load->duration_s);
    std::snprintf(win, sizeof win, "%u", load->window);
    ProcessResult r = RunProcess(ns.Wrap({g_ftvm, "mail", "load", "--to", "10.0.0.2", "--rate", rate, "--duration",
                                          dur, "--window", win, "--timeout-ms", "2000"}),
                                 seconds(600), "bench-load");
    out.report = ParseLoad(r.out);
  } else {
    usleep(useconds_t(idle_s * 1e6));
  }
  vm.Signal(SIGTERM);
  ProcessResult v = vm.Wait(seconds(30));
  out.guest_exits = Field(v.err, "guest_exits");
  unlink(disk.c_str());
  return out;
}

void MailStore(std::vector<Row>& rows, bool quick) {
  double duration = quick ? 3 : 10;
  // Host baseline: the same load generator against an in-process UDP store on
  // loopback: what the client and the host network stack cost by themselves.
  mail::LoadOptions opt;
  opt.duration_s = duration;
  opt.window = 32;
  opt.rate = 500;
  mail::mailtest::TestMailServer server;
  mail::MailClient client({"127.0.0.1", server.port()}, {});
  mail::LoadReport host = client.run_load(opt);

  mail::LoadOptions flood = opt;
  flood.rate = 20000;
  flood.window = 64;
  mail::LoadReport host_flood = client.run_load(flood);

  LoadRun idle = MailStoreRun(nullptr, duration);
  LoadRun steady = MailStoreRun(&opt, 0);
  LoadRun max = MailStoreRun(&flood, 0);

  double exits_per_req = (steady.guest_exits - idle.guest_exits) / double(std::max<uint64_t>(steady.report.completed, 1));
  rows.push_back({"mail store, 500 req/s offered: served", steady.report.throughput_rps, "req/s", "host UDP store",
                  host.throughput_rps});
  rows.push_back({"mail store, 500 req/s: p50 latency", double(steady.report.p50_us), "us", "host UDP store",
                  double(host.p50_us)});
  rows.push_back({"mail store, 500 req/s: p99 latency", double(steady.report.p99_us), "us", "host UDP store",
                  double(host.p99_us)});
  double flood_exits_per_req =
      (max.guest_exits - idle.guest_exits) / double(std::max<uint64_t>(max.report.completed, 1));
  rows.push_back({"mail store, 500 req/s: guest exits per request", exits_per_req, "exits", "goal 1", 1});
  // Open-loop latency past saturation only measures the queue, so the flood row
  // reports what was served and how well exits were batched.
  rows.push_back({"mail store, 20000 req/s offered: served", max.report.throughput_rps, "req/s", "host UDP store",
                  host_flood.throughput_rps});
  rows.push_back({"mail store, 20000 req/s: guest exits per request", flood_exits_per_req, "exits", "goal 1", 1});
  if (steady.report.timeouts + max.report.timeouts > 0)
    std::fprintf(stderr, "bench: note: %" PRIu64 " requests timed out\n", steady.report.timeouts + max.report.timeouts);
}

}  // namespace
}  // namespace ftvm::bench

int main(int argc, char** argv) {
  using namespace ftvm::bench;
  bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const char* ftvm = std::getenv("FTVM_BIN");
  const char* guest = std::getenv("FTVM_GUEST");
  const char* ring0 = std::getenv("FTVM_RING0_GUEST");
  if (!ftvm || !guest || !ring0) {
    std::fprintf(stderr, "ftvm_bench: run it through `meson test -C build --benchmark` or set FTVM_BIN, FTVM_GUEST, FTVM_RING0_GUEST\n");
    return 2;
  }
  g_ftvm = ftvm;
  g_guest = guest;
  g_ring0_guest = ring0;
  std::vector<Row> rows;
  std::string backend;
  BootTime(rows, backend);
  ExitCosts(rows, quick);
  Compute(rows, quick);
  MailStore(rows, quick);

  std::printf("\nftvm bench (backend: %s%s)\n", backend.c_str(), quick ? ", quick" : "");
  std::printf("| %-50s | %10s | %-5s | %-22s | %10s | %7s |\n", "metric", "value", "unit", "baseline", "baseline", "ratio");
  std::printf("|%s|%s|%s|%s|%s|%s|\n", std::string(52, '-').c_str(), std::string(12, '-').c_str(),
              std::string(7, '-').c_str(), std::string(24, '-').c_str(), std::string(12, '-').c_str(),
              std::string(9, '-').c_str());
  for (const Row& r : rows) {
    if (r.baseline > 0)
      std::printf("| %-50s | %10.2f | %-5s | %-22s | %10.2f | %7.2f |\n", r.metric.c_str(), r.value, r.unit.c_str(),
                  r.baseline_name.c_str(), r.baseline, r.value / r.baseline);
    else
      std::printf("| %-50s | %10.2f | %-5s | %-22s | %10s | %7s |\n", r.metric.c_str(), r.value, r.unit.c_str(), "", "",
                  "");
  }
  return 0;
}
