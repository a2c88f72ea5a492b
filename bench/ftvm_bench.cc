// ftvm benchmarks: one table, every figure next to a baseline measured in the same
// run. Runs real `ftvm run`, `ftvm record` and `ftvm replay` processes (and, for the
// mail store, a network namespace with a tap), so it needs root like the
// integration tests. Every replay must end "identical" (with the recording's final
// digest), or the bench stops with an error: timing a broken replay means nothing.
//
// Record/replay rows: "record:" is a recorded run against a plain `ftvm run` of the
// same workload in this run; "replay:" is `ftvm replay` of that very log against
// the recording's run time; "log:" is the log's bandwidth over the recorded run time
// (for the mail store beside the network input it carries, and the log bytes per
// received packet beyond the frame); "verify:" is what verification digests cost
// per MiB of dirtied memory, end to end and split into write tracking and hashing.
//
// Protected pair rows (see "The protected pair" below): "channel:" is the logging
// channel by itself (channel_bench), "pair:" the mail store protected over shm and
// tcp against `ftvm run` (latency, outputs held, replica lag, throughput, CPU),
// "failover:" the kill-primary drill against the issue's goals; "migrate:" a live
// move of a 1 GiB VM to another VMM (ftvm migrate).
//
//   build/bench/ftvm_bench [--quick] [--pair-only | --migrate-only | --storage-only | --image-only |
//                           --dr-checkpoint-only]
//
// --pair-only skips everything before the protected pair rows (boot time stays, for
// the backend); --migrate-only runs just the channel and migration rows;
// --storage-only just the DR replica, DR checkpoint and move-disk rows;
// --dr-checkpoint-only just the DR checkpoint rows; --image-only just the image
// streaming rows ("image:"). Environment: FTVM_BIN, FTVM_GUEST, FTVM_RING0_GUEST and
// FTVM_CHANNEL_BENCH (build/transport/channel_bench); meson sets them.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "common/clock.h"
#include "guest/apps/compute_core.h"
#include "storage/remote_disk.h"
#include "tests/support/harness.h"
#include "tests/support/mail_disk.h"
#include "tests/tools/mail_test_server.h"
#include "tools/ftvm/mail_client.h"
#include "vmm/dirty_tracker.h"
#include "vmm/guest_memory.h"
#include "vmm/page_bitmap.h"
#include "vmm/state_digest.h"

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

// Progress on stderr (the table goes to stdout): a full run takes minutes.
void Progress(const char* what) {
  static const auto start = std::chrono::steady_clock::now();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "bench: [%3.0f s] %s\n", s, what);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// ---- Record/replay helpers -------------------------------------------------------

constexpr double kMiB = 1024.0 * 1024.0;

struct RecordRun {
  ProcessResult proc;
  double run_ms = 0;  // the recorded VM's run time (vm.stopped run_ms)
  uint64_t records = 0, log_bytes = 0, interrupts = 0, frames = 0, checkpoints = 0, verifications = 0;
  std::string digest;  // final digest
  double mbit() const { return run_ms > 0 ? double(log_bytes) * 8 / (run_ms / 1000) / 1e6 : 0; }
};

// Thrown by Die once it said why; main returns 1. Unwinding stops the VMs still
// running and deletes the namespaces.
struct Fatal {};

[[noreturn]] void Die(const std::string& what, const ProcessResult& r) {
  std::fprintf(stderr, "bench: %s (exit %d%s)\nstdout:\n%s\nstderr:\n%s\n", what.c_str(), r.exit_code,
               r.timed_out ? ", timed out" : "", r.out.substr(0, 4000).c_str(), r.err.substr(0, 4000).c_str());
  throw Fatal{};
}

// Parses the summary `ftvm record` prints at the end; false when it is missing.
bool ParseRecord(const ProcessResult& p, RecordRun& rr) {
  std::smatch m;
  rr.proc = p;
  if (!std::regex_search(p.err, m, std::regex(R"(recorded (\d+) records, (\d+) bytes)"))) return false;
  rr.records = std::stoull(m[1]);
  rr.log_bytes = std::stoull(m[2]);
  static const std::regex counts(
      R"(interrupts (\d+), clock reads \d+, frames (\d+), checkpoints (\d+), verifications (\d+))");
  if (!std::regex_search(p.err, m, counts)) return false;
  rr.interrupts = std::stoull(m[1]);
  rr.frames = std::stoull(m[2]);
  rr.checkpoints = std::stoull(m[3]);
  rr.verifications = std::stoull(m[4]);
  if (!std::regex_search(p.err, m, std::regex(R"(final digest ([0-9a-f]+))"))) return false;
  rr.digest = m[1];
  rr.run_ms = Field(p.err, "run_ms");
  return rr.run_ms > 0;
}

// `ftvm record --log LOG --guest GUEST --app ARGS...`; the log must not exist.
RecordRun RecordGuest(const std::string& log, std::vector<std::string> args) {
  unlink(log.c_str());
  std::vector<std::string> argv = {g_ftvm, "record", "--log", log, "--guest", g_guest, "--app"};
  argv.insert(argv.end(), args.begin(), args.end());
  ProcessResult p = RunProcess(argv, seconds(600), "bench-record");
  RecordRun rr;
  if (p.exit_code != 0 || !ParseRecord(p, rr)) Die("ftvm record " + args[0] + " failed", p);
  return rr;
}

void MakeZeroDisk(const std::string& path, off_t bytes) {
  unlink(path.c_str());
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr || std::fclose(f) != 0 || truncate(path.c_str(), bytes) != 0) {
    std::fprintf(stderr, "bench: cannot create %s\n", path.c_str());
    std::exit(1);
  }
}

// Replays `log` (with a fresh zeroed disk of `disk_bytes` when the VM had one) and
// returns the replay's run time in ms. Stops the bench unless the replay says
// "identical" and reaches the recording's final digest.
double ReplayLog(const std::string& log, const RecordRun& rec, bool verify, off_t disk_bytes = 0) {
  std::vector<std::string> argv = {g_ftvm, "replay", "--log", log};
  std::string console = itest::ScratchPath("bench-replay-console.txt");
  argv.insert(argv.end(), {"--console", console});
  std::string disk;
  if (disk_bytes > 0) {
    disk = itest::ScratchPath("bench-replay-disk.img");
    MakeZeroDisk(disk, disk_bytes);
    argv.insert(argv.end(), {"--disk", disk});
  }
  if (verify) argv.push_back("--verify");
  ProcessResult p = RunProcess(argv, seconds(900), "bench-replay");
  unlink(console.c_str());
  if (!disk.empty()) unlink(disk.c_str());
  const bool identical = std::regex_search(p.out, std::regex("(^|\n)identical\n"));
  const bool same_digest = p.out.find("final digest " + rec.digest + "\n") != std::string::npos;
  if (p.exit_code != 0 || !identical || !same_digest)
    Die("replay of " + log + (verify ? " --verify" : "") + " failed or differs from its recording (final digest " +
            rec.digest + ")",
        p);
  if (verify && p.err.find(" " + std::to_string(rec.verifications) + " verifications") == std::string::npos)
    Die("replay --verify of " + log + " did not check all " + std::to_string(rec.verifications) + " Verify records",
        p);
  double ms = Field(p.err, "run_ms");
  if (ms < 0) Die("replay of " + log + " printed no run_ms", p);
  return ms;
}

struct TypeBytes {
  uint64_t records = 0, bytes = 0;
};

// `ftvm log info`: records and bytes (framing included) per record type.
std::map<std::string, TypeBytes> LogInfo(const std::string& log) {
  ProcessResult p = RunProcess({g_ftvm, "log", "info", log}, seconds(120), "bench-loginfo");
  if (p.exit_code != 0) Die("ftvm log info " + log + " failed", p);
  std::map<std::string, TypeBytes> out;
  std::regex line(R"(\n\s+([A-Za-z]+)\s+(\d+) records\s+(\d+) bytes)");
  for (std::sregex_iterator it(p.out.begin(), p.out.end(), line), end; it != end; ++it)
    out[(*it)[1]] = {std::stoull((*it)[2]), std::stoull((*it)[3])};
  return out;
}

// Pages the Verify records say were dirty since the previous one: what a replay
// with --verify rehashes.
uint64_t VerifiedPages(const std::string& log) {
  ProcessResult p = RunProcess({g_ftvm, "log", "dump", log}, seconds(120), "bench-logdump");
  if (p.exit_code != 0) Die("ftvm log dump " + log + " failed", p);
  uint64_t pages = 0;
  std::regex line(R"(Verify\s+[0-9a-f]+ pages (\d+))");
  for (std::sregex_iterator it(p.out.begin(), p.out.end(), line), end; it != end; ++it) pages += std::stoull((*it)[1]);
  return pages;
}

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
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

// CPU seconds (user + system) of all children waited for so far.
double ChildCpuSeconds() {
  struct rusage ru {};
  getrusage(RUSAGE_CHILDREN, &ru);
  return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// Recording overhead, replay speed and log bandwidth for compute: plain runs and
// recordings alternate (medians), each recording is replayed. Besides the run time
// (wall clock, which this shared host's other load inflates), the CPU time each
// process used beyond an iters=1 run of the same kind: the steady-state cost,
// without the one-time start-up, which has its own row.
void RecordCompute(std::vector<Row>& rows, bool quick) {
  uint64_t iters = quick ? 5000000 : 20000000;
  int reps = quick ? 1 : 3;
  const std::string arg = "iters=" + std::to_string(iters);
  std::vector<double> plain, recorded, replayed, mbit, plain_cpu, rec_cpu, plain_start, rec_start;
  for (int i = 0; i < reps; ++i) {
    std::string log = itest::ScratchPath("bench-compute.ftlog");
    auto t0 = std::chrono::steady_clock::now();
    double c0 = ChildCpuSeconds();
    RunGuest(g_guest, {"compute", "--arg", "iters=1"});
    const double plain_small_cpu = ChildCpuSeconds() - c0;
    plain_start.push_back(MsSince(t0));
    t0 = std::chrono::steady_clock::now();
    c0 = ChildCpuSeconds();
    RecordGuest(log, {"compute", "--arg", "iters=1"});
    const double rec_small_cpu = ChildCpuSeconds() - c0;
    rec_start.push_back(MsSince(t0));

    c0 = ChildCpuSeconds();
    plain.push_back(Field(RunGuest(g_guest, {"compute", "--arg", arg}).err, "run_ms"));
    plain_cpu.push_back((ChildCpuSeconds() - c0 - plain_small_cpu) * 1000);
    c0 = ChildCpuSeconds();
    RecordRun rec = RecordGuest(log, {"compute", "--arg", arg});
    rec_cpu.push_back((ChildCpuSeconds() - c0 - rec_small_cpu) * 1000);
    recorded.push_back(rec.run_ms);
    mbit.push_back(rec.mbit());
    replayed.push_back(ReplayLog(log, rec, false));
    unlink(log.c_str());
  }
  const std::string name = "compute " + std::to_string(iters / 1000000) + "M";
  rows.push_back({"record: " + name + ", run time", Median(recorded), "ms", "ftvm run (goal 1.03)", Median(plain)});
  rows.push_back({"record: " + name + ", CPU time beyond an iters=1 run", Median(rec_cpu), "ms",
                  "ftvm run (goal 1.03)", Median(plain_cpu)});
  rows.push_back({"record: start-up, compute iters=1 process wall time", Median(rec_start), "ms", "ftvm run",
                  Median(plain_start)});
  rows.push_back({"replay: " + name + ", replay time", Median(replayed), "ms", "its record (goal 1)",
                  Median(recorded)});
  rows.push_back({"log: " + name + ", bandwidth", Median(mbit), "Mbit/s", "goal 1 Mbit/s", 1});
}

// Timer interrupts that land while the guest computes without exits are delivered
// at epoch checkpoints, up to --checkpoint-after-us late, so a recorded run takes
// longer in wall time; what recording costs is the guest's compute throughput
// (fixed-size chunks per second of run time).
void RecordTimers(std::vector<Row>& rows, uint64_t period_us, uint64_t ticks, int reps) {
  const std::vector<std::string> args = {"timers", "--arg", "period_us=" + std::to_string(period_us), "--arg",
                                         "ticks=" + std::to_string(ticks)};
  std::vector<double> plain_cps, rec_cps, checkpoints, replay_ms, record_ms, mbit;
  for (int i = 0; i < reps; ++i) {
    ProcessResult plain = RunGuest(g_guest, args);
    plain_cps.push_back(Field(plain.out, "chunks") / (Field(plain.err, "run_ms") / 1000));
    std::string log = itest::ScratchPath("bench-timers.ftlog");
    RecordRun rec = RecordGuest(log, args);
    rec_cps.push_back(Field(rec.proc.out, "chunks") / (rec.run_ms / 1000));
    if (plain_cps.back() <= 0 || rec_cps.back() <= 0) Die("timers printed no chunks=", rec.proc);
    checkpoints.push_back(double(rec.checkpoints));
    record_ms.push_back(rec.run_ms);
    mbit.push_back(rec.mbit());
    replay_ms.push_back(ReplayLog(log, rec, false));
    unlink(log.c_str());
  }
  char name[64];
  std::snprintf(name, sizeof name, "timers every %g ms", double(period_us) / 1000);
  rows.push_back({std::string("record: ") + name + ", guest throughput", Median(rec_cps), "chunk/s", "ftvm run",
                  Median(plain_cps)});
  rows.push_back({std::string("record: ") + name + ", epoch checkpoints", Median(checkpoints), "ckpts",
                  "timer ticks", double(ticks)});
  rows.push_back({std::string("replay: ") + name + ", replay time", Median(replay_ms), "ms", "its record (goal 1)",
                  Median(record_ms)});
  rows.push_back({std::string("log: ") + name + ", bandwidth", Median(mbit), "Mbit/s", "goal 1 Mbit/s", 1});
}

// Log bandwidth of the dirty app, and what verification digests cost per MiB of
// dirty memory: end to end (replay --verify minus replay, over the pages the Verify
// records name) and in this process (userfaultfd write tracking, page hashing).
void RecordDirty(std::vector<Row>& rows, bool quick) {
  const std::vector<std::string> args = {"dirty",  "--arg", "mib=16", "--arg", "mib_per_s=64", "--arg",
                                         quick ? "seconds=1" : "seconds=2", "--arg", "slice_us=5000"};
  std::string log = itest::ScratchPath("bench-dirty.ftlog");
  RecordRun rec = RecordGuest(log, args);
  const uint64_t pages = VerifiedPages(log);
  std::vector<double> plain, verified;
  for (int i = 0; i < (quick ? 1 : 3); ++i) {
    plain.push_back(ReplayLog(log, rec, false));
    verified.push_back(ReplayLog(log, rec, true));
  }
  unlink(log.c_str());
  const double dirty_mib = double(pages) * vmm::kPageSize / kMiB;
  const double e2e_us_per_mib = (Median(verified) - Median(plain)) * 1000 / std::max(dirty_mib, 1e-9);

  // In process: 64 MiB of guest RAM, 16 MiB of it written (one word per page, as
  // the dirty app does) between measurements.
  constexpr uint64_t kRam = 64ull << 20, kRegion = 16ull << 20;
  vmm::GuestMemory mem = vmm::GuestMemory::Create(kRam);
  uint8_t* region = mem.host_base() + (8ull << 20);
  std::vector<uint8_t> copy(kRegion, 1);
  vmm::MemoryDigest digest(mem);
  vmm::PageBitmap dirty(kRam / vmm::kPageSize);
  const uint64_t first_page = uint64_t(region - mem.host_base()) / vmm::kPageSize;
  for (uint64_t p = 0; p < kRegion / vmm::kPageSize; ++p) dirty.set(first_page + p);
  uint64_t stamp = 1;
  auto write_region = [&] {
    ++stamp;
    for (uint64_t off = 0; off < kRegion; off += vmm::kPageSize)
      *reinterpret_cast<volatile uint64_t*>(region + off) = stamp * 0x9e3779b97f4a7c15ull + off;
  };
  std::vector<double> hash_ms, memcpy_ms, track_ms;
  for (int i = 0; i < 9; ++i) {
    write_region();
    auto t0 = std::chrono::steady_clock::now();
    digest.update(dirty);
    hash_ms.push_back(MsSince(t0));
    t0 = std::chrono::steady_clock::now();
    std::memcpy(copy.data(), region, kRegion);
    memcpy_ms.push_back(MsSince(t0));
  }
  volatile uint8_t sink = copy[kRegion / 2] ^ digest.value()[0];
  (void)sink;
  {
    std::unique_ptr<vmm::DirtyTracker> tracker = vmm::MakeUffdDirtyTracker(mem);
    vmm::PageBitmap seen(kRam / vmm::kPageSize);
    tracker->collect(seen);
    for (int i = 0; i < 9; ++i) {
      seen.clear();
      auto t0 = std::chrono::steady_clock::now();
      write_region();
      tracker->collect(seen);
      track_ms.push_back(MsSince(t0));
      if (seen.count() < kRegion / vmm::kPageSize) {
        std::fprintf(stderr, "bench: the dirty tracker reported %" PRIu64 " of %" PRIu64 " written pages\n",
                     seen.count(), kRegion / vmm::kPageSize);
        std::exit(1);
      }
    }
  }
  const double region_mib = double(kRegion) / kMiB;
  const double hash_us = Median(hash_ms) * 1000 / region_mib;
  const double memcpy_us = Median(memcpy_ms) * 1000 / region_mib;
  const double track_us = Median(track_ms) * 1000 / region_mib;

  char name[96];
  std::snprintf(name, sizeof name, "verify: replay --verify extra time, %.0f MiB dirtied", dirty_mib);
  rows.push_back({"log: dirty 64 MiB/s over 16 MiB, bandwidth", rec.mbit(), "Mbit/s", "goal 1 Mbit/s", 1});
  rows.push_back({name, Median(verified) - Median(plain), "ms", "replay without verify", Median(plain)});
  rows.push_back({"verify: replay --verify extra per MiB dirtied", e2e_us_per_mib, "us/MiB", "in-process track+hash",
                  track_us + hash_us});
  rows.push_back({"verify: in-process hash of dirty pages per MiB", hash_us, "us/MiB", "memcpy on the host",
                  memcpy_us});
  rows.push_back({"verify: in-process uffd-wp write tracking per MiB", track_us, "us/MiB", "in-process hash",
                  hash_us});
}

// Log bandwidth and replay speed of the disk app (one DiskCompletion per batch);
// the replay does the same I/O on a fresh copy of the disk.
void RecordDisk(std::vector<Row>& rows, bool quick) {
  const off_t disk_bytes = 64 << 20;
  const std::string ops = quick ? "ops=2000" : "ops=5000";
  std::vector<double> record_ms, replay_ms, mbit;
  for (int i = 0; i < (quick ? 1 : 3); ++i) {
    std::string disk = itest::ScratchPath("bench-disk.img");
    MakeZeroDisk(disk, disk_bytes);
    std::string log = itest::ScratchPath("bench-disk.ftlog");
    RecordRun rec = RecordGuest(log, {"disk", "--disk", disk, "--arg", ops});
    unlink(disk.c_str());
    record_ms.push_back(rec.run_ms);
    mbit.push_back(rec.mbit());
    replay_ms.push_back(ReplayLog(log, rec, false, disk_bytes));
    unlink(log.c_str());
  }
  const std::string name = "disk " + ops.substr(4) + " ops";
  rows.push_back({"replay: " + name + ", replay time", Median(replay_ms), "ms", "its record (goal 1)",
                  Median(record_ms)});
  rows.push_back({"log: " + name + ", bandwidth", Median(mbit), "Mbit/s", "goal 1 Mbit/s", 1});
}

struct LoadRun {
  mail::LoadReport report;
  double guest_exits = 0;
  RecordRun record;  // when recorded
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

constexpr off_t kMailDiskBytes = 64 << 20;

// Boots the mail store on a tap in a fresh namespace (under `ftvm record` to
// `record_log` when that is not empty), optionally drives load, stops it and
// returns the load report and the guest exits taken.
LoadRun MailStoreRun(const mail::LoadOptions* load, double idle_s, const std::string& record_log = "") {
  itest::NetNamespace ns("bench");
  ns.AddTap("ftvmb0", "10.0.0.1/24");
  std::string disk = itest::ScratchPath("bench-mail.img");
  MakeZeroDisk(disk, kMailDiskBytes);
  std::string console = itest::ScratchPath("bench-console.txt");
  std::vector<std::string> argv = {g_ftvm, "run"};
  if (!record_log.empty()) {
    unlink(record_log.c_str());
    argv = {g_ftvm, "record", "--log", record_log};
  }
  argv.insert(argv.end(), {"--guest", g_guest, "--app", "mailstore", "--disk", disk, "--tap", "ftvmb0", "--ip",
                           "10.0.0.2/24", "--console", console});
  Process vm = Process::Start(ns.Wrap(argv), "bench-vm");
  if (!itest::WaitForFileContains(console, "mailstore: ready", seconds(120))) {
    std::fprintf(stderr, "bench: mail store did not come up\n%s", vm.Stderr().c_str());
    throw Fatal{};
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
  ProcessResult v = vm.Wait(seconds(60));
  out.guest_exits = Field(v.err, "guest_exits");
  unlink(disk.c_str());
  unlink(console.c_str());
  if (!record_log.empty() && (v.exit_code != 0 || !ParseRecord(v, out.record)))
    Die("ftvm record of the mail store failed", v);
  return out;
}

// Replays a recorded mail store run and adds its replay-speed and log rows.
void MailReplayRows(std::vector<Row>& rows, const std::string& label, const std::string& log, const RecordRun& rec) {
  double replay_ms = ReplayLog(log, rec, false, kMailDiskBytes);
  std::map<std::string, TypeBytes> info = LogInfo(log);
  unlink(log.c_str());
  const TypeBytes rx = info["PacketRx"];
  if (rx.records != rec.frames) {
    std::fprintf(stderr, "bench: %s: the log has %" PRIu64 " PacketRx records, the recorder counted %" PRIu64
                 " frames\n", label.c_str(), rx.records, rec.frames);
    std::exit(1);
  }
  const double frame_bytes = double(rx.bytes) - 20.0 * double(rx.records);  // 20 bytes of framing per record
  const double secs = rec.run_ms / 1000;
  const double net_mbit = frame_bytes * 8 / secs / 1e6;
  const double beyond = (double(rec.log_bytes) - frame_bytes) / double(std::max<uint64_t>(rx.records, 1));
  rows.push_back({"replay: " + label + " log, replay time", replay_ms, "ms", "its record (goal 1)", rec.run_ms});
  rows.push_back({"log: " + label + ", bandwidth", rec.mbit(), "Mbit/s", "network input (frames)", net_mbit});
  rows.push_back({"log: " + label + ", bytes per packet beyond frame", beyond, "bytes", "goal 64", 64});
  const double checkpoint_bytes = double(info["Checkpoint"].bytes) / double(std::max<uint64_t>(rx.records, 1));
  rows.push_back({"log: " + label + ", of which checkpoints", checkpoint_bytes, "bytes", "beyond frame", beyond});
  const double verify_bytes = double(info["Verify"].bytes) / double(std::max<uint64_t>(rx.records, 1));
  rows.push_back({"log: " + label + ", of which Verify digests", verify_bytes, "bytes", "beyond frame", beyond});
}

// Plain mail store rows go to `rows`, the recorded store's to `rr_rows`.
void MailStore(std::vector<Row>& rows, std::vector<Row>& rr_rows, bool quick) {
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

  // Each load runs against the plain store and then, right after it (this host's
  // background load drifts), against a recorded one.
  const std::string steady_log = itest::ScratchPath("bench-mail-500.ftlog");
  const std::string flood_log = itest::ScratchPath("bench-mail-flood.ftlog");
  LoadRun idle = MailStoreRun(nullptr, duration);
  LoadRun steady = MailStoreRun(&opt, 0);
  LoadRun rec_steady = MailStoreRun(&opt, 0, steady_log);
  LoadRun max = MailStoreRun(&flood, 0);
  LoadRun rec_max = MailStoreRun(&flood, 0, flood_log);

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

  // Recording cost under load: the recorded store against the plain one (goal: at
  // most 10% fewer served, 10% more latency).
  rr_rows.push_back({"record: mail 500 req/s offered: served", rec_steady.report.throughput_rps, "req/s",
                  "ftvm run (goal 0.9)", steady.report.throughput_rps});
  rr_rows.push_back({"record: mail 500 req/s: p50 latency", double(rec_steady.report.p50_us), "us",
                     "ftvm run (goal 1.1)", double(steady.report.p50_us)});
  rr_rows.push_back({"record: mail 500 req/s: p99 latency", double(rec_steady.report.p99_us), "us",
                     "ftvm run (goal 1.1)", double(steady.report.p99_us)});
  rr_rows.push_back({"record: mail 20000 req/s offered: served", rec_max.report.throughput_rps, "req/s",
                  "ftvm run (goal 0.9)", max.report.throughput_rps});
  MailReplayRows(rr_rows, "mail 500 req/s", steady_log, rec_steady.record);
  MailReplayRows(rr_rows, "mail 20000 req/s", flood_log, rec_max.record);
  uint64_t timeouts =
      steady.report.timeouts + max.report.timeouts + rec_steady.report.timeouts + rec_max.report.timeouts;
  if (timeouts > 0) std::fprintf(stderr, "bench: note: %" PRIu64 " requests timed out\n", timeouts);
}

// ---- The protected pair: channel, output rule, replica lag, throughput, failover ---
//
// "channel:" rows come from build/transport/channel_bench (two processes, one
// channel). "pair:" rows run the mail store in one namespace several ways, back to
// back and interleaved (this host's background load drifts): `ftvm run`, (at 500
// req/s) `ftvm record` to a file, and a `ftvm primary` + `ftvm secondary` pair over
// shm and over tcp on the namespace's loopback. The primary has the tap; the
// secondary has its own zeroed disk and no tap. Both halves share this host's two
// cores, which two real hosts would not. Every pair must end "protected" with an
// identical replica, or the bench stops. Each run's figures also go to stderr.
// "failover:" rows come from `ftvm drill --fault kill-primary` (hosts A, B and the
// client in separate namespaces, tcp channel over their LAN); a failed round fails
// the bench (after the table).

std::string g_channel_bench;
std::string g_failure;  // set when a correctness check failed; main exits 1 after the table

// How much of this host other tenants took while a section ran: busy CPU time of
// the whole host (/proc/stat, steal included) minus this process's and its waited-
// for children's. The pair rows compare runs of a few seconds each, so this tells
// how noisy the host was (it is shared: other builds and tests run on it).
class HostNoise {
 public:
  HostNoise() : busy0_(HostBusySeconds()), mine0_(MyCpuSeconds()), t0_(std::chrono::steady_clock::now()) {}
  // Cores' worth of CPU others used since construction.
  double other_cores() const {
    const double wall = MsSince(t0_) / 1000;
    const double other = (HostBusySeconds() - busy0_) - (MyCpuSeconds() - mine0_);
    return wall > 0 ? std::max(0.0, other / wall) : 0;
  }

 private:
  static double HostBusySeconds() {
    FILE* f = std::fopen("/proc/stat", "r");
    unsigned long long v[8] = {};
    if (f == nullptr) return 0;
    const int n = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                              &v[5], &v[6], &v[7]);
    std::fclose(f);
    if (n < 8) return 0;
    // user nice system [idle iowait] irq softirq steal
    return double(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / double(sysconf(_SC_CLK_TCK));
  }
  static double MyCpuSeconds() {
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    return ChildCpuSeconds() + double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  }
  double busy0_, mine0_;
  std::chrono::steady_clock::time_point t0_;
};

struct ChannelRow {
  double rtt64_p50 = -1, rtt64_p99 = -1, rtt4k_p50 = -1, gbps = -1, cpu_s_per_gb = -1;
};

// Parses one row of channel_bench's table ("| name | 1.67 us | 14.2 us | ... |").
ChannelRow ParseChannelRow(const std::string& out, const std::string& name) {
  ChannelRow r;
  const size_t at = out.find("| " + name + " ");
  if (at == std::string::npos) return r;
  const std::string line = out.substr(at, out.find('\n', at) - at);
  std::vector<double> v;
  static const std::regex num(R"(([0-9]+\.[0-9]+))");
  for (std::sregex_iterator it(line.begin(), line.end(), num), end; it != end; ++it) v.push_back(std::stod((*it)[1]));
  if (v.size() < 4) return r;
  r.rtt64_p50 = v[0];
  r.rtt64_p99 = v[1];
  r.rtt4k_p50 = v[2];
  if (v.size() < 6) return r;  // a bare ping-pong row: no stream
  r.gbps = v[v.size() - 2];
  r.cpu_s_per_gb = v[v.size() - 1];
  return r;
}

struct Channels {
  ChannelRow tcp, shm, shm_nospin, rdma_emulated, rdma_emulated_nospin, dpdk_memif, memif_bare, dpdk_af_packet,
      af_packet_bare;
};

Channels ChannelBench(std::vector<Row>& rows) {
  ProcessResult p = RunProcess({g_channel_bench}, seconds(300), "bench-channel");
  Channels c;
  c.tcp = ParseChannelRow(p.out, "tcp loopback");
  c.shm = ParseChannelRow(p.out, "shm (spin 10 us)");
  c.shm_nospin = ParseChannelRow(p.out, "shm, no spin");
  if (c.tcp.gbps <= 0 || c.shm.gbps <= 0 || c.shm_nospin.gbps <= 0)
    Die("channel_bench failed or printed an unexpected table", p);
  // A DPDK measurement that failed (a virtual link that did not come up) leaves its
  // rows out; the rest of the table stands.
  if (p.exit_code != 0)
    std::fprintf(stderr, "bench: channel_bench reported a failed measurement (exit %d); its rows are left out:\n%s",
                 p.exit_code, p.err.c_str());
  rows.push_back({"channel: shm round trip 64 B, p50 (spin 10 us)", c.shm.rtt64_p50, "us", "goal 5 us", 5});
  rows.push_back({"channel: shm round trip 64 B, p99 (spin 10 us)", c.shm.rtt64_p99, "us", "its p50", c.shm.rtt64_p50});
  rows.push_back({"channel: shm round trip 64 B, p50, never spinning", c.shm_nospin.rtt64_p50, "us", "spin 10 us",
                  c.shm.rtt64_p50});
  rows.push_back({"channel: tcp loopback round trip 64 B, p50", c.tcp.rtt64_p50, "us", "shm", c.shm.rtt64_p50});
  rows.push_back({"channel: shm stream of 1 MiB messages", c.shm.gbps, "GB/s", "goal 1 GB/s", 1});
  rows.push_back({"channel: tcp loopback stream of 1 MiB messages", c.tcp.gbps, "GB/s", "shm", c.shm.gbps});
  rows.push_back({"channel: shm CPU per GB streamed (both ends)", c.shm.cpu_s_per_gb, "s", "tcp loopback",
                  c.tcp.cpu_s_per_gb});
  // The kernel-bypass channels, side by side with the same run's shm and with a bare
  // ping-pong of raw frames on the same DPDK device (goal: within 2x of it).
  c.rdma_emulated = ParseChannelRow(p.out, "rdma+shm emulated");
  c.rdma_emulated_nospin = ParseChannelRow(p.out, "rdma+shm emu, no spin");
  c.dpdk_memif = ParseChannelRow(p.out, "dpdk memif");
  c.memif_bare = ParseChannelRow(p.out, "memif bare ping");
  c.dpdk_af_packet = ParseChannelRow(p.out, "dpdk af_packet");
  c.af_packet_bare = ParseChannelRow(p.out, "af_packet bare ping");
  if (c.rdma_emulated.gbps <= 0) Die("channel_bench printed no rdma+shm row", p);
  rows.push_back({"channel: rdma+shm (emulated) round trip 64 B, p50", c.rdma_emulated.rtt64_p50, "us", "shm",
                  c.shm.rtt64_p50});
  rows.push_back({"channel: rdma+shm (emulated) round trip 4 KiB, p50", c.rdma_emulated.rtt4k_p50, "us", "shm",
                  c.shm.rtt4k_p50});
  rows.push_back({"channel: rdma+shm (emulated) stream of 1 MiB", c.rdma_emulated.gbps, "GB/s", "goal 1 GB/s", 1});
  rows.push_back({"channel: rdma+shm (emulated) CPU per GB", c.rdma_emulated.cpu_s_per_gb, "s", "shm",
                  c.shm.cpu_s_per_gb});
  for (const auto& [name, chan, bare] : {std::tuple{"dpdk memif", &c.dpdk_memif, &c.memif_bare},
                                         std::tuple{"dpdk af_packet", &c.dpdk_af_packet, &c.af_packet_bare}}) {
    if (chan->gbps <= 0 || bare->rtt64_p50 <= 0) {
      std::fprintf(stderr, "bench: no %s rows (DPDK not built, or not root for af_packet)\n", name);
      continue;
    }
    const std::string pre = std::string("channel: ") + name;
    rows.push_back({pre + " round trip 64 B, p50", chan->rtt64_p50, "us", "bare ping (goal 2x)", bare->rtt64_p50});
    rows.push_back({pre + " round trip 64 B, p99", chan->rtt64_p99, "us", "bare ping", bare->rtt64_p99});
    rows.push_back({pre + " round trip 4 KiB, p50", chan->rtt4k_p50, "us", "bare ping (goal 2x)", bare->rtt4k_p50});
    rows.push_back({pre + " stream of 1 MiB", chan->gbps, "GB/s", "goal 1 GB/s", 1});
    rows.push_back({pre + " CPU per GB", chan->cpu_s_per_gb, "s", "shm", c.shm.cpu_s_per_gb});
  }
  return c;
}

// What the primary says about the pair at the end (cmd_pair.cc).
struct PairStats {
  double lag_p50_us = -1, lag_p99_us = -1, held_p50_us = -1, held_p99_us = -1;
  uint64_t log_bytes = 0, flow_waits = 0;
  double max_silence_ms = -1;
};

struct MailRun {
  mail::LoadReport report;
  PairStats pair;
  double cpu_s = 0;  // CPU of every process of the run (VMs, load generator)
};

mail::LoadReport DriveLoad(const itest::NetNamespace& ns, const mail::LoadOptions& load) {
  char rate[32], dur[32], win[32];
  std::snprintf(rate, sizeof rate, "%.0f", load.rate);
  std::snprintf(dur, sizeof dur, "%.1f", load.duration_s);
  std::snprintf(win, sizeof win, "%u", load.window);
  ProcessResult r = RunProcess(ns.Wrap({g_ftvm, "mail", "load", "--to", "10.0.0.2", "--rate", rate, "--duration", dur,
                                        "--window", win, "--timeout-ms", "2000"}),
                               seconds(900), "bench-load");
  mail::LoadReport rep = ParseLoad(r.out);
  if (rep.completed == 0 || rep.throughput_rps <= 0) Die("the mail load completed nothing", r);
  return rep;
}

// The mail store under `load`: plain `ftvm run` when `channel` is empty, `ftvm
// record` to a log file when it is "record", else a protected pair over "shm" or
// "tcp".
MailRun PairMailRun(const mail::LoadOptions& load, const std::string& channel) {
  itest::NetNamespace ns("bench-pair");
  ns.AddTap("ftvmb0", "10.0.0.1/24");
  const std::string disk = itest::ScratchPath("bench-pair-a.img"), replica = itest::ScratchPath("bench-pair-b.img");
  const std::string console = itest::ScratchPath("bench-pair-console.txt");
  const std::string replica_console = itest::ScratchPath("bench-pair-replica-console.txt");
  const std::string arbiter = itest::ScratchPath("bench-pair-arbiter");
  MakeZeroDisk(disk, kMailDiskBytes);
  const double cpu0 = ChildCpuSeconds();
  const std::vector<std::string> vm = {"--guest", g_guest, "--app", "mailstore", "--disk", disk, "--tap", "ftvmb0",
                                       "--ip", "10.0.0.2/24", "--console", console};
  std::vector<std::string> pargv = {g_ftvm, "run"};
  std::optional<Process> secondary;
  const std::string log = itest::ScratchPath("bench-pair.ftlog");
  if (channel == "record") {
    pargv = {g_ftvm, "record", "--log", log};
  } else if (!channel.empty()) {
    MakeZeroDisk(replica, kMailDiskBytes);
    mkdir(arbiter.c_str(), 0755);
    const std::string sock = itest::ScratchPath("bench-pair.sock");
    const std::string address = channel == "tcp"    ? std::string("tcp:127.0.0.1:7300")
                                : channel == "dpdk" ? "dpdk:memif:" + sock + ";abstract=no"
                                                    : channel + ":" + sock;
    pargv = {g_ftvm, "primary", "--listen", address, "--arbiter", arbiter};
    secondary.emplace(Process::Start(ns.Wrap({g_ftvm, "secondary", "--connect", address, "--arbiter", arbiter,
                                              "--disk", replica, "--console", replica_console}),
                                     "bench-secondary"));
  }
  pargv.insert(pargv.end(), vm.begin(), vm.end());
  Process primary = Process::Start(ns.Wrap(pargv), "bench-primary");
  const std::string what = channel.empty()      ? "mail store"
                           : channel == "record" ? "recorded mail store"
                                                 : "protected mail store (" + channel + ")";
  if (!itest::WaitForFileContains(console, "mailstore: ready", seconds(120))) {
    primary.Signal(SIGTERM);
    Die(what + " did not come up", primary.Wait(seconds(30)));
  }
  // Steady state, not start-up: the load begins once the replica has replayed the
  // boot too (until then flow control holds a primary that ran ahead of it).
  if (secondary && !itest::WaitForFileContains(replica_console, "mailstore: ready", seconds(120))) {
    primary.Signal(SIGTERM);
    Die(what + ": the replica did not replay the boot", primary.Wait(seconds(30)));
  }
  MailRun out;
  out.report = DriveLoad(ns, load);
  primary.Signal(SIGTERM);
  ProcessResult p = primary.Wait(seconds(120));
  if (p.exit_code != 0) Die(what + ": the VM did not stop cleanly", p);
  if (secondary) {
    // The replica may still be catching up: it ends once it replayed everything.
    ProcessResult s = secondary->Wait(seconds(600));
    if (s.exit_code != 0 || s.err.find("replica identical") == std::string::npos)
      Die(what + ": the secondary did not end with an identical replica", s);
    if (p.err.find("\nprimary: protected") == std::string::npos) Die(what + ": the pair did not stay protected", p);
    std::smatch m;
    static const std::regex line(
        R"(primary: log (\d+) bytes in \d+ messages; replica lag p50 (\d+) us, p99 (\d+) us \(\d+ samples\); )"
        R"(outputs held p50 (\d+) us, p99 (\d+) us \(\d+ samples\); flow-control waits (\d+); )"
        R"(longest silence of the secondary ([0-9.]+) ms)");
    if (!std::regex_search(p.err, m, line)) Die(what + ": the primary printed no lag/held summary", p);
    out.pair.log_bytes = std::stoull(m[1]);
    out.pair.lag_p50_us = std::stod(m[2]);
    out.pair.lag_p99_us = std::stod(m[3]);
    out.pair.held_p50_us = std::stod(m[4]);
    out.pair.held_p99_us = std::stod(m[5]);
    out.pair.flow_waits = std::stoull(m[6]);
    out.pair.max_silence_ms = std::stod(m[7]);
  }
  out.cpu_s = ChildCpuSeconds() - cpu0;
  std::fprintf(stderr, "bench:   %s, %.0f req/s offered: served %.1f req/s, p50 %" PRIu64 " us, p99 %" PRIu64
               " us, CPU %.2f s", what.c_str(), load.rate, out.report.throughput_rps, out.report.p50_us,
               out.report.p99_us, out.cpu_s);
  if (secondary)
    std::fprintf(stderr, "; held p50 %.0f us, p99 %.0f us; lag p50 %.0f us, p99 %.0f us; log %" PRIu64
                 " bytes; flow-control waits %" PRIu64 "; longest silence of the secondary %.1f ms",
                 out.pair.held_p50_us, out.pair.held_p99_us, out.pair.lag_p50_us, out.pair.lag_p99_us,
                 out.pair.log_bytes, out.pair.flow_waits, out.pair.max_silence_ms);
  std::fprintf(stderr, "\n");
  if (out.report.timeouts > 0)
    std::fprintf(stderr, "bench: note: %s: %" PRIu64 " requests timed out\n", what.c_str(), out.report.timeouts);
  for (const std::string& f : {disk, replica, console, replica_console, log}) unlink(f.c_str());
  std::error_code ec;
  std::filesystem::remove_all(arbiter, ec);
  return out;
}

double CpuPerRequestUs(const MailRun& r) {
  return r.cpu_s * 1e6 / double(std::max<uint64_t>(r.report.completed, 1));
}

template <typename F>
double MedianOf(const std::vector<MailRun>& runs, F f) {
  std::vector<double> v;
  for (const MailRun& r : runs) v.push_back(f(r));
  return Median(v);
}

// The output rule at a moderate rate: client latency plain, recorded to a file and
// protected, and what the primary itself says about how long it held outputs and
// how far the replica lagged. The recorded store separates what recording costs
// from what the output rule and the secondary add.
void PairLatency(std::vector<Row>& rows, bool quick, const Channels& ch) {
  mail::LoadOptions opt;
  opt.rate = 500;
  opt.duration_s = quick ? 3 : 4;
  opt.window = 32;
  const int reps = quick ? 1 : 5;  // odd: medians are middle runs
  std::map<std::string, std::vector<MailRun>> runs;
  for (int i = 0; i < reps; ++i)
    for (const char* c : {"", "record", "shm", "tcp", "rdma+shm", "dpdk"}) runs[c].push_back(PairMailRun(opt, c));
  const auto p50 = [](const MailRun& r) { return double(r.report.p50_us); };
  const auto p99 = [](const MailRun& r) { return double(r.report.p99_us); };
  const auto held_p50 = [](const MailRun& r) { return r.pair.held_p50_us; };
  const auto held_p99 = [](const MailRun& r) { return r.pair.held_p99_us; };
  const auto lag_p50 = [](const MailRun& r) { return r.pair.lag_p50_us; };
  const auto lag_p99 = [](const MailRun& r) { return r.pair.lag_p99_us; };
  const double plain_p50 = MedianOf(runs[""], p50), plain_p99 = MedianOf(runs[""], p99);
  const double plain_cpu = MedianOf(runs[""], CpuPerRequestUs);
  rows.push_back({"pair: mail 500 req/s, ftvm record: p50 latency", MedianOf(runs["record"], p50), "us", "ftvm run",
                  plain_p50});
  rows.push_back({"pair: mail 500 req/s, ftvm record: p99 latency", MedianOf(runs["record"], p99), "us", "ftvm run",
                  plain_p99});
  for (const std::string c : {"shm", "tcp", "rdma+shm", "dpdk"}) {
    const std::vector<MailRun>& v = runs[c];
    const std::string pre = "pair: mail 500 req/s, " + c + ": ";
    // Goals: 150 us on one host (shm), 300 us between hosts (tcp); the kernel-bypass
    // channels are held to the one-host goal.
    const double goal = c == "tcp" ? 300 : 150;
    const ChannelRow& wake_rtt = c == "shm"        ? ch.shm_nospin
                                 : c == "rdma+shm" ? ch.rdma_emulated_nospin
                                 : c == "dpdk"     ? ch.dpdk_memif
                                                   : ch.tcp;
    const double prot_p99 = MedianOf(v, p99);
    // Added p99: the median over repetitions of (protected - plain) within one
    // repetition, whose runs follow each other (this host's load drifts).
    std::vector<double> over_run, over_record;
    for (size_t i = 0; i < v.size(); ++i) {
      over_run.push_back(p99(v[i]) - p99(runs[""][i]));
      over_record.push_back(p99(v[i]) - p99(runs["record"][i]));
    }
    char g[32];
    std::snprintf(g, sizeof g, "goal %.0f us", goal);
    rows.push_back({pre + "p50 latency", MedianOf(v, p50), "us", "ftvm run", plain_p50});
    rows.push_back({pre + "p99 latency", prot_p99, "us", "ftvm run", plain_p99});
    rows.push_back({pre + "added p99 over ftvm run", Median(over_run), "us", g, goal});
    rows.push_back({pre + "added p99 over ftvm record", Median(over_record), "us", g, goal});
    // At 500 req/s both receivers are asleep when a batch comes: the floor of a
    // hold is a round trip that wakes both (channel_bench's no-spin row for shm).
    rows.push_back({pre + "outputs held p50 (primary)", MedianOf(v, held_p50), "us",
                    c == "dpdk" ? "dpdk RTT p50" : c == "tcp" ? "tcp RTT p50" : c + " RTT p50, no spin",
                    wake_rtt.rtt64_p50});
    rows.push_back({pre + "outputs held p99 (primary)", MedianOf(v, held_p99), "us", g, goal});
    rows.push_back({pre + "replica lag p50", MedianOf(v, lag_p50) / 1000, "ms", "goal (for p99) 2 ms", 2});
    rows.push_back({pre + "replica lag p99", MedianOf(v, lag_p99) / 1000, "ms", "goal 2 ms", 2});
    // Both halves share this host's two cores: what the pair burns per request
    // (boot and idle time included, in every column alike).
    rows.push_back({pre + "CPU per request (all procs)", MedianOf(v, CpuPerRequestUs), "us", "ftvm run", plain_cpu});
  }
}

// The store flooded: what a protected pair serves against `ftvm run`, the replica's
// lag, the CPU each request costs (both halves share this host's two cores) and the
// log bandwidth against what the channel can carry.
void PairThroughput(std::vector<Row>& rows, bool quick, const Channels& ch) {
  mail::LoadOptions flood;
  flood.rate = 20000;
  flood.duration_s = quick ? 1 : 2;
  flood.window = 64;
  const int reps = quick ? 1 : 3;
  std::map<std::string, std::vector<MailRun>> runs;
  for (int i = 0; i < reps; ++i)
    for (const char* c : {"", "shm", "tcp"}) runs[c].push_back(PairMailRun(flood, c));
  const auto served = [](const MailRun& r) { return r.report.throughput_rps; };
  const auto lag_p99 = [](const MailRun& r) { return r.pair.lag_p99_us; };
  const double plain = MedianOf(runs[""], served), plain_cpu = MedianOf(runs[""], CpuPerRequestUs);
  for (const std::string c : {"shm", "tcp"}) {
    const std::vector<MailRun>& v = runs[c];
    const std::string pre = "pair: mail 20000 req/s, " + c + ": ";
    const ChannelRow& chan = c == "shm" ? ch.shm : ch.tcp;
    rows.push_back({pre + "served", MedianOf(v, served), "req/s", "ftvm run (goal 0.8)", plain});
    rows.push_back({pre + "replica lag p99", MedianOf(v, lag_p99) / 1000, "ms", "goal 2 ms", 2});
    rows.push_back({pre + "CPU per request (all procs)", MedianOf(v, CpuPerRequestUs), "us", "ftvm run", plain_cpu});
    // Over the load's duration (the log of boot and idle time is small).
    rows.push_back({pre + "log bandwidth under load", MedianOf(v, [](const MailRun& r) {
                      const double secs = double(r.report.completed) / r.report.throughput_rps;
                      return double(r.pair.log_bytes) / secs / 1e6;
                    }),
                    "MB/s", c + " channel stream", chan.gbps * 1000});
  }
}

// `ftvm migrate` of a 1 GiB VM whose guest writes 64 MiB/s (the `dirty` app over
// 512 MiB), over shm on this host: the pause (the last copy round, the opening
// checkpoint, the destination taking over), the whole move's time against RAM size
// over the channel's streaming bandwidth, and what went over the channel. The
// moved VM must finish its run on the destination, or the bench stops. Each figure
// is the median of several moves (one move's time depends on where in its idle
// and write cycle the guest was), with the worst total beside it.
// `postcopy`: ftvm migrate --postcopy instead: the VM runs on the destination after
// a pause without memory, which follows while it runs.
struct MigrationRun {
  double pause_ms = 0, source_ms = 0, total_s = 0, sent_mib = 0;
  // Post-copy only.
  double all_memory_s = 0, pages = 0, faults = 0, wait_p50_ms = 0, wait_p99_ms = 0;
};

MigrationRun MigrateOnce(bool quick, bool postcopy) {
  const std::string dir = itest::ScratchPath(postcopy ? "bench-postcopy" : "bench-migrate");
  std::filesystem::create_directories(dir + "/arbiter");
  const std::string sock = dir + "/s.sock", console = dir + "/dest.console";
  const std::string seconds_arg = quick ? "seconds=6" : "seconds=8";
  Process src = Process::Start({g_ftvm, "primary", "--listen", "shm:" + sock, "--arbiter", dir + "/arbiter",
                                "--wait-secondary-s", "0", "--guest", g_guest, "--mem", "1024", "--app", "dirty",
                                "--arg", "mib=512", "--arg", "mib_per_s=64", "--arg", seconds_arg},
                               "bench-migrate-src");
  if (!itest::WaitForFileContains(src.stderr_path(), "primary.unprotected", seconds(60)))
    Die("the migration source never started", src.Wait(seconds(1)));
  usleep(1500000);  // the guest writes its memory for a while first
  std::vector<std::string> migrate = {g_ftvm, "migrate", "--from", "shm:" + sock, "--arbiter", dir + "/arbiter",
                                      "--console", console};
  if (postcopy) migrate.push_back("--postcopy");
  ProcessResult dst = RunProcess(migrate, seconds(300), "bench-migrate-dst");
  ProcessResult sr = src.Wait(seconds(60));
  if (dst.exit_code != 0 || sr.exit_code != 4 || itest::ReadFile(console).find("dirty: mib=512") == std::string::npos)
    Die("ftvm migrate did not move the VM (source exit " + std::to_string(sr.exit_code) + ", source log:\n" +
            sr.err + ")",
        dst);
  auto field = [&](const std::string& event, const std::string& key) {
    std::smatch m;
    if (!std::regex_search(sr.err, m, std::regex(event + R"(.* )" + key + R"(=([0-9.]+))")))
      Die("the migration source did not log " + event + " " + key, sr);
    return std::stod(m[1]);
  };
  // Log lines start with HH:MM:SS.micros.
  auto at = [&](const std::string& event) {
    std::smatch m;
    if (!std::regex_search(sr.err, m, std::regex(R"((\d\d):(\d\d):(\d\d\.\d+) INFO )" + event)))
      Die("the migration source did not log " + event, sr);
    return std::stod(m[1]) * 3600 + std::stod(m[2]) * 60 + std::stod(m[3]);
  };
  MigrationRun run;
  run.pause_ms = field("primary.handed_over", "paused_ms");
  run.source_ms =
      field("primary.handed_over", "of_which_last_round_ms") + field("primary.handed_over", "of_which_checkpoint_ms");
  if (postcopy) {
    // The destination says how post-copy went.
    std::smatch m;
    if (!std::regex_search(dst.err, m, std::regex(R"(post-copy: (\d+) of (\d+) pages arrived, (\d+) fetched on demand \(waits p50 ([0-9.]+) ms, p99 ([0-9.]+) ms\), in ([0-9.]+) ms)")))
      Die("the post-copy destination did not report its post-copy", dst);
    run.pages = std::stod(m[2]);
    run.faults = std::stod(m[3]);
    run.wait_p50_ms = std::stod(m[4]);
    run.wait_p99_ms = std::stod(m[5]);
    run.all_memory_s = std::stod(m[6]) / 1e3;
  } else {
    run.sent_mib = field("primary.handed_over", "sent_mib");
    run.total_s = at("primary.handed_over") - at("primary.copying_state");
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return run;
}

void Migration(std::vector<Row>& rows, bool quick, const Channels& ch, bool postcopy) {
  const int moves = quick ? 3 : 5;
  std::vector<MigrationRun> runs;
  for (int i = 0; i < moves; ++i) runs.push_back(MigrateOnce(quick, postcopy));
  auto median = [&](double MigrationRun::*f) {
    std::vector<double> v;
    for (const MigrationRun& r : runs) v.push_back(r.*f);
    return Median(v);
  };
  auto worst = [&](double MigrationRun::*f) {
    double w = 0;
    for (const MigrationRun& r : runs) w = std::max(w, r.*f);
    return w;
  };
  const double ram_over_channel_s = double(1u << 30) / (ch.shm.gbps * 1e9);
  const std::string n = " (median of " + std::to_string(moves) + ")";
  if (postcopy) {
    const std::string pre = "post-copy 1 GiB, dirty 64 MiB/s, shm: ";
    rows.push_back({pre + "VM runs on the destination after" + n, median(&MigrationRun::pause_ms), "ms", "goal 20 ms", 20});
    rows.push_back({pre + "all memory there after" + n, median(&MigrationRun::all_memory_s), "s", "RAM / channel x 1.5",
                    1.5 * ram_over_channel_s});
    rows.push_back({pre + "pages fetched on demand" + n, median(&MigrationRun::faults), "pages", "all pages",
                    median(&MigrationRun::pages)});
    rows.push_back({pre + "wait for a page p50" + n, median(&MigrationRun::wait_p50_ms), "ms", "downtime (pre-copy)", 10});
    rows.push_back({pre + "wait for a page p99" + n, median(&MigrationRun::wait_p99_ms), "ms", "downtime (pre-copy)", 10});
    return;
  }
  const std::string pre = "migrate 1 GiB, dirty 64 MiB/s, shm: ";
  // The VM pauses once: the last round, the opening checkpoint, then the
  // destination applies it, claims the arbiter and runs the VM.
  const double pause = median(&MigrationRun::pause_ms);
  rows.push_back({pre + "downtime" + n, pause, "ms", "goal 10 ms", 10});
  rows.push_back({pre + "downtime, worst", worst(&MigrationRun::pause_ms), "ms", "goal 10 ms", 10});
  rows.push_back({pre + "source side of it" + n, median(&MigrationRun::source_ms), "ms", "downtime", pause});
  rows.push_back({pre + "total time" + n, median(&MigrationRun::total_s), "s", "RAM / channel x 1.5",
                  1.5 * ram_over_channel_s});
  rows.push_back({pre + "total time, worst", worst(&MigrationRun::total_s), "s", "RAM / channel x 1.5",
                  1.5 * ram_over_channel_s});
  rows.push_back({pre + "data sent" + n, median(&MigrationRun::sent_mib), "MiB", "RAM", 1024});
}

// `ftvm drill --fault kill-primary`: recovery time, lost and duplicated messages.
void Failover(std::vector<Row>& rows, bool quick) {
  const int rounds = quick ? 3 : 10;
  const std::string json = itest::ScratchPath("bench-drill.json"), workdir = itest::ScratchPath("bench-drill");
  ProcessResult p = RunProcess({g_ftvm, "drill", "--guest", g_guest, "--rounds", std::to_string(rounds), "--fault",
                                "kill-primary", "--json", json, "--workdir", workdir},
                               seconds(120 + 30 * rounds), "bench-drill");
  std::smatch m;
  static const std::regex summary(
      R"(summary: recovery p50 (-?[0-9.]+) ms, p99 (-?[0-9.]+) ms, max (-?[0-9.]+) ms; acknowledged messages lost )"
      R"((\d+); duplicates (\d+); failed rounds (\d+) of (\d+))");
  if ((p.exit_code != 0 && p.exit_code != 1) || !std::regex_search(p.out, m, summary))
    Die("ftvm drill could not run", p);
  std::fprintf(stderr, "%s", p.out.c_str());  // the drill's per-round table, for the record
  const double p50 = std::stod(m[1]), p99 = std::stod(m[2]);
  const uint64_t lost = std::stoull(m[4]), dups = std::stoull(m[5]), failed = std::stoull(m[6]);
  uint64_t acked = 0;
  std::string lines = itest::ReadFile(json);
  static const std::regex acked_re(R"("acked":(\d+))");
  for (std::sregex_iterator it(lines.begin(), lines.end(), acked_re), end; it != end; ++it)
    acked += std::stoull((*it)[1]);
  unlink(json.c_str());
  if (failed > 0 || p.exit_code != 0) {
    std::fprintf(stderr, "bench: ftvm drill: %" PRIu64 " of %d rounds failed (exit %d)\n", failed, rounds,
                 p.exit_code);
    g_failure += "ftvm drill: " + std::to_string(failed) + " of " + std::to_string(rounds) +
                 " rounds failed (files in " + workdir + "); ";
  } else {
    std::error_code ec;
    std::filesystem::remove_all(workdir, ec);
  }
  const std::string pre = "failover: kill-primary x" + std::to_string(rounds) + " tcp, ";
  rows.push_back({pre + "recovery p50", p50, "ms", "goal 100 ms", 100});
  rows.push_back({pre + "recovery p99" + (rounds < 100 ? " (= max)" : ""), p99, "ms", "goal 300 ms", 300});
  rows.push_back({pre + "acked messages lost", double(lost), "msgs", "acked (goal 0)", double(acked)});
  rows.push_back({pre + "duplicate messages", double(dups), "msgs", "acked (goal 0)", double(acked)});
  rows.push_back({pre + "failed rounds", double(failed), "rounds", "rounds (goal 0)", double(rounds)});
}

// ---- Disk mirroring: the DR replica's recovery point, a live disk move -------------
//
// "dr:" runs the mail store at 500 req/s with --dr-target to an `ftvm dr-replica`
// (both in the namespace, tcp on its loopback) and samples how far behind the
// replica is: from its state file every 20 ms (bytes and ms, as the replica reports
// them) and from the source's dr.lag lines every 100 ms. Baselines: the same load on
// a plain `ftvm run` right before (latency) and the replica's sync interval (lag).
// "move-disk:" moves a 256 MiB image filled with data while the store serves 500
// req/s: the move's time against a plain copy of the file on this host (read, write,
// fsync), and the load's p99 during the move against a run of the same load without
// one. Then the same image to an `ftvm disk-server` over TCP (on the namespace's
// loopback): the move's time against the plain copy, and the load's latency with the
// disk on the server against the same load on the local image. "remote disk:" the
// backend alone, in this process against a disk-server process over TCP loopback: a
// 4 KiB read, a 4 KiB write, and a write + flush, against pread/pwrite/fdatasync on
// a local file.

constexpr off_t kMoveDiskBytes = 256 << 20;

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(q * double(v.size())))];
}

// A file of `bytes` with data in every block (nothing sparse for a copy to skip),
// but zeros in the first MiB: the mail store formats only a disk that starts blank.
void MakeFullDisk(const std::string& path, off_t bytes) {
  std::vector<char> buf(1 << 20);
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) throw Fatal{};
  std::fwrite(buf.data(), 1, buf.size(), f);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = char(i * 131 + 7);
  for (off_t at = off_t(buf.size()); at < bytes; at += off_t(buf.size())) std::fwrite(buf.data(), 1, buf.size(), f);
  std::fclose(f);
}

// What a plain copy of the file takes here: the baseline for a move.
double CopyFileMs(const std::string& from, const std::string& to) {
  const auto t0 = std::chrono::steady_clock::now();
  FILE* in = std::fopen(from.c_str(), "r");
  FILE* out = std::fopen(to.c_str(), "w");
  if (in == nullptr || out == nullptr) throw Fatal{};
  std::vector<char> buf(1 << 20);
  for (size_t n; (n = std::fread(buf.data(), 1, buf.size(), in)) > 0;) std::fwrite(buf.data(), 1, n, out);
  std::fflush(out);
  fsync(fileno(out));
  std::fclose(in);
  std::fclose(out);
  return MsSince(t0);
}

mail::LoadReport MailLoad(const itest::NetNamespace& ns, double rate, double duration) {
  char r[32], d[32];
  std::snprintf(r, sizeof r, "%.0f", rate);
  std::snprintf(d, sizeof d, "%.1f", duration);
  ProcessResult p = RunProcess(ns.Wrap({g_ftvm, "mail", "load", "--to", "10.0.0.2", "--rate", r, "--duration", d,
                                        "--window", "32", "--timeout-ms", "2000"}),
                               seconds(600), "bench-load");
  return ParseLoad(p.out);
}

void Storage(std::vector<Row>& rows, bool quick) {
  const double duration = quick ? 3 : 8;
  itest::NetNamespace ns("bench-st");
  ns.AddTap("ftvmb0", "10.0.0.1/24");
  auto boot = [&](const std::vector<std::string>& extra, const std::string& disk) {
    const std::string console = itest::ScratchPath("bench-st-console.txt");
    std::vector<std::string> argv = {g_ftvm, "run", "--guest", g_guest, "--app", "mailstore", "--disk", disk,
                                     "--tap", "ftvmb0", "--ip", "10.0.0.2/24", "--console", console};
    argv.insert(argv.end(), extra.begin(), extra.end());
    Process vm = Process::Start(ns.Wrap(argv), "bench-st-vm");
    if (!itest::WaitForFileContains(console, "mailstore: ready", seconds(120))) {
      std::fprintf(stderr, "bench: mail store did not come up\n%s", vm.Stderr().c_str());
      throw Fatal{};
    }
    return vm;
  };

  // DR: plain first, then with a replica.
  const std::string disk = itest::ScratchPath("bench-st.img");
  MakeZeroDisk(disk, kMailDiskBytes);
  mail::LoadReport plain;
  {
    Process vm = boot({}, disk);
    plain = MailLoad(ns, 500, duration);
    vm.Signal(SIGTERM);
    vm.Wait(seconds(60));
  }
  MakeZeroDisk(disk, kMailDiskBytes);
  const std::string dir = itest::ScratchPath("bench-st-replica");
  Process replica = Process::Start(ns.Wrap({g_ftvm, "dr-replica", "--listen", "tcp:127.0.0.1:7390", "--dir", dir}),
                                   "bench-st-replica");
  itest::WaitForFileContains(replica.stderr_path(), "listening", seconds(10));
  Process vm = boot({"--dr-target", "tcp:127.0.0.1:7390", "--dr-report-s", "0.1"}, disk);
  itest::WaitForFileContains(vm.stderr_path(), "dr.caught_up", seconds(30));
  std::vector<double> rep_ms, rep_bytes;
  std::atomic<bool> sampling{true};
  std::thread sampler([&] {
    while (sampling) {
      const std::string st = itest::ReadFile(dir + "/state");
      const double ms = Field(st, "behind_ms"), bytes = Field(st, "behind_bytes");
      if (ms >= 0 && bytes >= 0) {
        rep_ms.push_back(ms);
        rep_bytes.push_back(bytes);
      }
      usleep(20000);
    }
  });
  mail::LoadReport with_dr = MailLoad(ns, 500, duration);
  sampling = false;
  sampler.join();
  vm.Signal(SIGTERM);
  ProcessResult v = vm.Wait(seconds(60));
  replica.Signal(SIGTERM);
  replica.Wait(seconds(10));
  std::vector<double> src_ms, src_bytes;
  static const std::regex lag_re(R"(dr\.lag .*behind_bytes=([0-9]+) behind_ms=([0-9.]+))");
  for (std::sregex_iterator it(v.err.begin(), v.err.end(), lag_re), end; it != end; ++it) {
    src_bytes.push_back(std::stod((*it)[1]));
    src_ms.push_back(std::stod((*it)[2]));
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  const std::string pre = "dr: mail 500 req/s, tcp: ";
  rows.push_back({pre + "replica behind p50 (replica)", Percentile(rep_ms, 0.5), "ms", "replica sync interval", 50});
  rows.push_back({pre + "replica behind p99 (replica)", Percentile(rep_ms, 0.99), "ms", "replica sync interval", 50});
  rows.push_back({pre + "replica behind p99 (replica)", Percentile(rep_bytes, 0.99) / 1024, "KiB", "", 0});
  rows.push_back({pre + "replica behind p99 (source)", Percentile(src_ms, 0.99), "ms", "replica sync interval", 50});
  rows.push_back({pre + "replica behind p99 (source)", Percentile(src_bytes, 0.99) / 1024, "KiB", "", 0});
  rows.push_back({pre + "p99 latency", double(with_dr.p99_us), "us", "ftvm run", double(plain.p99_us)});
  rows.push_back({pre + "p50 latency", double(with_dr.p50_us), "us", "ftvm run", double(plain.p50_us)});

  // move-disk: a full 256 MiB image, moved under load.
  std::string big = itest::ScratchPath("bench-st-big.img"), copy = itest::ScratchPath("bench-st-copy.img");
  MakeFullDisk(big, kMoveDiskBytes);
  const double copy_ms = CopyFileMs(big, copy);
  unlink(copy.c_str());
  const std::string control = itest::ScratchPath("bench-st.control");
  Process vm2 = boot({"--control", control}, big);
  mail::LoadReport no_move = MailLoad(ns, 500, 4);
  // Unlimited, then at 64 MiB/s, each under the same load.
  for (const char* rate : {"0", "64"}) {
    ProcessResult mv;
    std::thread mover([&] {
      usleep(1000000);
      mv = RunProcess({g_ftvm, "move-disk", "--control", control, "--to", copy, "--rate-mib", rate}, seconds(300),
                      "bench-move");
    });
    mail::LoadReport moving = MailLoad(ns, 500, rate[0] == '0' ? 4 : 6);
    mover.join();
    std::smatch m;
    static const std::regex moved_re(R"(in ([0-9.]+) s \(([0-9]+) blocks copied, vCPU waited ([0-9.]+) ms)");
    if (mv.exit_code != 0 || !std::regex_search(mv.out, m, moved_re)) {
      std::fprintf(stderr, "bench: move-disk failed (%d): %s%s\n", mv.exit_code, mv.out.c_str(), mv.err.c_str());
      g_failure += "ftvm move-disk failed; ";
      break;
    }
    std::fprintf(stderr, "%s%s", mv.out.c_str(), mv.err.c_str());
    const std::string pre = std::string("move-disk 256 MiB, ") + (rate[0] == '0' ? "unlimited" : "64 MiB/s") + ": ";
    rows.push_back({pre + "time", std::stod(m[1]) * 1000, "ms", "plain copy (cp + fsync)", copy_ms});
    rows.push_back({pre + "vCPU wait at the switch", std::stod(m[3]), "ms", "", 0});
    rows.push_back({pre + "mail 500 req/s p99 during it", double(moving.p99_us), "us", "same load, no move",
                    double(no_move.p99_us)});
    std::swap(big, copy);  // move it back next time
  }
  // The image (back at `big`) to a disk server on this host, under the same load.
  const std::string sdir = itest::ScratchPath("bench-st-server");
  Process server = Process::Start(ns.Wrap({g_ftvm, "disk-server", "--listen", "tcp:127.0.0.1:7393", "--dir", sdir}),
                                  "bench-st-server");
  itest::WaitForFileContains(server.stderr_path(), "listening", seconds(10));
  ProcessResult mv;
  std::thread mover([&] {
    usleep(1000000);
    mv = RunProcess({g_ftvm, "move-disk", "--control", control, "--to", "tcp:127.0.0.1:7393"}, seconds(300),
                    "bench-move-remote");
  });
  const mail::LoadReport moving = MailLoad(ns, 500, 4);
  mover.join();
  std::smatch m;
  static const std::regex moved_re(R"(in ([0-9.]+) s \(([0-9]+) blocks copied, vCPU waited ([0-9.]+) ms)");
  if (mv.exit_code != 0 || !std::regex_search(mv.out, m, moved_re)) {
    std::fprintf(stderr, "bench: move-disk to a disk server failed (%d): %s%s\n", mv.exit_code, mv.out.c_str(), mv.err.c_str());
    g_failure += "ftvm move-disk --to tcp: failed; ";
  } else {
    std::fprintf(stderr, "%s%s", mv.out.c_str(), mv.err.c_str());
    const mail::LoadReport remote = MailLoad(ns, 500, 4);
    const std::string pre = "move-disk 256 MiB to a disk-server over TCP: ";
    rows.push_back({pre + "time", std::stod(m[1]) * 1000, "ms", "plain copy (cp + fsync)", copy_ms});
    rows.push_back({pre + "vCPU wait at the switch", std::stod(m[3]), "ms", "", 0});
    rows.push_back({pre + "mail 500 req/s p99 during it", double(moving.p99_us), "us", "same load, no move",
                    double(no_move.p99_us)});
    rows.push_back({"remote disk (TCP loopback): mail 500 req/s p50", double(remote.p50_us), "us", "local image",
                    double(no_move.p50_us)});
    rows.push_back({"remote disk (TCP loopback): mail 500 req/s p99", double(remote.p99_us), "us", "local image",
                    double(no_move.p99_us)});
  }
  vm2.Signal(SIGTERM);
  vm2.Wait(seconds(60));
  server.Signal(SIGTERM);
  server.Wait(seconds(10));
  unlink(copy.c_str());
  unlink(big.c_str());
  std::error_code ec2;
  std::filesystem::remove_all(sdir, ec2);
}

// "remote disk:" 4 KiB requests through storage::RemoteDisk to a disk-server process
// against the same requests on a local file (see the comment above Storage).
void RemoteDiskLatency(std::vector<Row>& rows, bool quick) {
  const std::string dir = itest::ScratchPath("bench-rd-server"), local = itest::ScratchPath("bench-rd-local.img");
  constexpr uint64_t kBytes = 64u << 20;
  std::filesystem::create_directories(dir);
  for (const std::string& f : {dir + "/disk.img", local}) {
    UniqueFd fd(open(f.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd || ftruncate(fd.get(), off_t(kBytes)) != 0) throw Fatal{};
  }
  Process server = Process::Start({g_ftvm, "disk-server", "--listen", "tcp:127.0.0.1:7394", "--dir", dir}, "bench-rd-server");
  itest::WaitForFileContains(server.stderr_path(), "listening", seconds(10));
  auto clock = MakeSystemClock();
  storage::RemoteDiskOptions o;
  o.address = "tcp:127.0.0.1:7394";
  o.disk_bytes = kBytes;
  o.vm_name = "bench";
  storage::RemoteDisk remote(o, *clock);
  UniqueFd fd(open(local.c_str(), O_RDWR | O_CLOEXEC));
  std::vector<uint8_t> buf(4096, 0x5a);
  iovec v{buf.data(), buf.size()};
  const int n = quick ? 500 : 2000;
  std::minstd_rand rng(1);
  // p50 in us of `op` over n random 4 KiB blocks.
  auto time = [&](const std::function<int(uint64_t)>& op) {
    std::vector<double> us;
    for (int i = 0; i < n; ++i) {
      const uint64_t at = uint64_t(rng() % (kBytes / 4096)) * 4096;
      const auto t0 = std::chrono::steady_clock::now();
      if (op(at) != 0) throw Fatal{};
      us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    return Percentile(us, 0.5);
  };
  auto local_io = [&](bool write, uint64_t at) {
    return (write ? pwrite(fd.get(), buf.data(), buf.size(), off_t(at)) : pread(fd.get(), buf.data(), buf.size(), off_t(at))) ==
                   ssize_t(buf.size())
               ? 0
               : errno;
  };
  const double lw = time([&](uint64_t at) { return local_io(true, at); });
  const double rw = time([&](uint64_t at) { return remote.transfer(true, std::span(&v, 1), at); });
  const double lr = time([&](uint64_t at) { return local_io(false, at); });
  const double rr = time([&](uint64_t at) { return remote.transfer(false, std::span(&v, 1), at); });
  const double lf = time([&](uint64_t at) { return local_io(true, at) != 0 ? EIO : fdatasync(fd.get()) != 0 ? errno : 0; });
  const double rf = time([&](uint64_t at) {
    const int e = remote.transfer(true, std::span(&v, 1), at);
    return e != 0 ? e : remote.flush();
  });
  rows.push_back({"remote disk (TCP loopback): 4 KiB read p50", rr, "us", "local file pread", lr});
  rows.push_back({"remote disk (TCP loopback): 4 KiB write p50", rw, "us", "local file pwrite", lw});
  rows.push_back({"remote disk (TCP loopback): 4 KiB write + flush p50", rf, "us", "local pwrite + fdatasync", lf});
  server.Signal(SIGTERM);
  server.Wait(seconds(10));
  unlink(local.c_str());
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

// ---- DR checkpoints ----------------------------------------------------------------
// "dr checkpoint:" the mail store (64 MiB of RAM) serving 200 req/s with
// --dr-target --dr-sync --dr-checkpoint-s 1: the state each checkpoint captures and
// what it compresses to (against the RAM size), and the vCPU's pause per checkpoint
// (from the source's dr.checkpoint lines, against the load's p50 latency). Then the
// source is killed and the store started from copies of the replica both ways:
// `dr-start --from-checkpoint` (resume) against a cold `dr-start` (boot), timed from
// the process start to the store's first reply to a ping.
void DrCheckpoints(std::vector<Row>& rows, bool quick) {
  itest::NetNamespace ns("bench-ck");
  ns.AddTap("ftvmb1", "10.0.0.1/24");
  const std::string disk = itest::ScratchPath("bench-ck.img"), dir = itest::ScratchPath("bench-ck-replica");
  MakeZeroDisk(disk, kMailDiskBytes);
  Process replica = Process::Start(ns.Wrap({g_ftvm, "dr-replica", "--listen", "tcp:127.0.0.1:7391", "--dir", dir}),
                                   "bench-ck-replica");
  itest::WaitForFileContains(replica.stderr_path(), "listening", seconds(10));
  const std::string console = itest::ScratchPath("bench-ck-console.txt");
  const std::vector<std::string> vm_args = {"--guest", g_guest, "--app", "mailstore", "--tap", "ftvmb1", "--ip", "10.0.0.2/24"};
  std::vector<std::string> argv = {g_ftvm, "run", "--disk", disk, "--console", console, "--dr-target", "tcp:127.0.0.1:7391",
                                   "--dr-sync", "--dr-checkpoint-s", "1"};
  argv.insert(argv.end(), vm_args.begin(), vm_args.end());
  Process vm = Process::Start(ns.Wrap(argv), "bench-ck-vm");
  if (!itest::WaitForFileContains(console, "mailstore: ready", seconds(120))) {
    std::fprintf(stderr, "bench: mail store did not come up\n%s", vm.Stderr().c_str());
    throw Fatal{};
  }
  itest::WaitForFileContains(vm.stderr_path(), "dr.caught_up", seconds(30));
  const mail::LoadReport load = MailLoad(ns, 200, quick ? 4 : 10);
  usleep(1500000);  // a checkpoint after the load, then writes after it
  (void)RunProcess(ns.Wrap({g_ftvm, "mail", "deliver", "--to", "10.0.0.2", "--id", "after", "--mailbox", "x", "--body", "b"}),
                   seconds(30), "bench-ck-mail");
  vm.Signal(SIGKILL);
  ProcessResult v = vm.Wait(seconds(30));
  usleep(300000);
  replica.Signal(SIGTERM);
  replica.Wait(seconds(10));
  std::vector<double> pause_ms, state_mib, packed_kib, build_ms, compress_ms;
  static const std::regex ck_re(R"(dr\.checkpoint seq=[0-9]+ pages=[0-9]+ ram_mib=[0-9.]+ pause_ms=([0-9.]+))");
  static const std::regex sent_re(
      R"(dr\.checkpoint_sent .*state_bytes=([0-9]+) compressed_bytes=([0-9]+) build_ms=([0-9.]+) compress_ms=([0-9.]+))");
  for (std::sregex_iterator it(v.err.begin(), v.err.end(), ck_re), end; it != end; ++it)
    pause_ms.push_back(std::stod((*it)[1]));
  for (std::sregex_iterator it(v.err.begin(), v.err.end(), sent_re), end; it != end; ++it) {
    state_mib.push_back(std::stod((*it)[1]) / 1048576.0);
    packed_kib.push_back(std::stod((*it)[2]) / 1024.0);
    build_ms.push_back(std::stod((*it)[3]));
    compress_ms.push_back(std::stod((*it)[4]));
  }
  if (pause_ms.empty() || packed_kib.empty()) {
    std::fprintf(stderr, "bench: no DR checkpoint was taken\n%s", v.err.c_str());
    g_failure += "no DR checkpoint; ";
    return;
  }
  // Both ways from the same replica (copies: each start changes its directory).
  auto first_reply_ms = [&](const std::vector<std::string>& how, const std::string& tag) {
    const std::string copy = itest::ScratchPath("bench-ck-" + tag);
    if (std::system(("cp -r --sparse=always " + dir + " " + copy).c_str()) != 0) throw Fatal{};
    std::vector<std::string> a = {g_ftvm, "dr-start", "--dir", copy, "--console", itest::ScratchPath("bench-ck-c2.txt")};
    a.insert(a.end(), how.begin(), how.end());
    a.insert(a.end(), vm_args.begin(), vm_args.end());
    const auto t0 = std::chrono::steady_clock::now();
    Process p = Process::Start(ns.Wrap(a), "bench-ck-" + tag);
    double ms = -1;
    for (int i = 0; i < 600 && ms < 0; ++i) {
      ProcessResult r = RunProcess(ns.Wrap({g_ftvm, "mail", "ping", "--to", "10.0.0.2", "--timeout-ms", "100", "--retries", "0"}),
                                   seconds(10), "bench-ck-ping");
      if (r.exit_code == 0) ms = MsSince(t0);
    }
    p.Signal(SIGTERM);
    p.Wait(seconds(30));
    std::error_code ec;
    std::filesystem::remove_all(copy, ec);
    if (ms < 0) {
      std::fprintf(stderr, "bench: dr-start %s never answered\n%s", tag.c_str(), p.Stderr().c_str());
      g_failure += "dr-start " + tag + " never answered; ";
    }
    return ms;
  };
  const double cold_ms = first_reply_ms({}, "cold");
  const double resume_ms = first_reply_ms({"--from-checkpoint"}, "resume");
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  unlink(disk.c_str());
  // 64 MiB guest (the mail store), 200 req/s.
  const std::string pre = "dr ckpt 64 MiB guest: ";
  rows.push_back({pre + "state (written RAM) p50", Percentile(state_mib, 0.5), "MiB", "guest RAM", 64});
  rows.push_back({pre + "sent, zstd, p50", Percentile(packed_kib, 0.5), "KiB", "guest RAM", 65536});
  rows.push_back({pre + "vCPU pause p50", Percentile(pause_ms, 0.5), "ms", "mail p50 latency", double(load.p50_us) / 1000});
  rows.push_back({pre + "vCPU pause max", Percentile(pause_ms, 1.0), "ms", "mail p50 latency", double(load.p50_us) / 1000});
  rows.push_back({pre + "build + zstd (sender) p50", Percentile(build_ms, 0.5) + Percentile(compress_ms, 0.5), "ms", "", 0});
  rows.push_back({"dr-start to first reply: --from-checkpoint", resume_ms, "ms", "cold boot (dr-start)", cold_ms});
  std::fprintf(stderr, "bench: dr checkpoint: %zu checkpoints, %.1f KiB sent of %.2f MiB state (p50)\n", pause_ms.size(),
               Percentile(packed_kib, 0.5), Percentile(state_mib, 0.5));
}

// ---- Image streaming -------------------------------------------------------------
// The mail store with a 4000-message journal (1 KiB records: 4 MiB, 64 blocks of
// 64 KiB read at boot) on a 32 MiB disk, booted three ways: from a local copy; streamed
// from `ftvm serve-image` with no boot profile; streamed again once the server
// holds the profile the previous boot left. The server's background copy is held to
// 0.25 MiB/s (4 blocks/s, slower than the boot reads its journal), so a boot cannot
// simply wait for the whole image. "ready" is the console's
// "mailstore: ready" line (the journal replayed), timed from the process start;
// "first output" is the VMM's boot_to_first_output. The on-demand share is the
// blocks fetched on demand over the distinct blocks the guest read while the copy
// ran (goal: under 10% with a profile).
void ImageStreaming(std::vector<Row>& rows, bool quick) {
  itest::NetNamespace ns("bench-im");
  ns.AddTap("ftvmbi0", "10.0.0.1/24");
  const std::string dir = itest::ScratchPath("bench-images");
  std::filesystem::create_directories(dir);
  itest::MakeMailDisk(dir + "/mail", 32 << 20, quick ? 2000 : 4000, "box", 896);
  const std::string port = std::to_string(23000 + getpid() % 20000);
  struct Boot {
    double ready_ms = -1, first_output_ms = -1, on_demand = -1, read = -1;
  };
  auto boot = [&](const std::vector<std::string>& disk_args) {
    const std::string console = itest::ScratchPath("bench-im-console.txt");
    std::vector<std::string> argv = {g_ftvm, "run", "--guest", g_guest, "--app", "mailstore", "--tap", "ftvmbi0",
                                     "--ip", "10.0.0.2/24", "--console", console};
    argv.insert(argv.end(), disk_args.begin(), disk_args.end());
    unlink(console.c_str());
    const auto t0 = std::chrono::steady_clock::now();
    Process vm = Process::Start(ns.Wrap(argv), "bench-im-vm");
    Boot b;
    if (!itest::WaitForFileContains(console, "mailstore: ready", seconds(300))) {
      std::fprintf(stderr, "bench: streamed mail store did not come up\n%s", vm.Stderr().c_str());
      g_failure += "image streaming boot failed; ";
      return b;
    }
    b.ready_ms = MsSince(t0);
    vm.Signal(SIGTERM);
    ProcessResult r = vm.Wait(seconds(60));
    b.first_output_ms = Field(r.err, "first_output_us") / 1000.0;
    std::smatch m;
    static const std::regex stream_re(R"(fetched on demand ([0-9]+), .* read ([0-9]+) distinct blocks)");
    if (std::regex_search(r.err, m, stream_re)) {
      b.on_demand = std::stod(m[1]);
      b.read = std::stod(m[2]);
    }
    return b;
  };
  auto share = [](const Boot& b) { return b.read > 0 ? 100.0 * b.on_demand / b.read : -1; };
  const int reps = quick ? 1 : 3;
  std::vector<Boot> local, cold, warm;
  Process server = Process::Start(
      ns.Wrap({g_ftvm, "serve-image", "--listen", "127.0.0.1:" + port, "--dir", dir, "--rate-mib", "0.25"}), "bench-im-srv");
  itest::WaitForFileContains(server.stderr_path(), "listening", seconds(10));
  for (int i = 0; i < reps; ++i) {
    const std::string copy = itest::ScratchPath("bench-im-local.img");
    std::filesystem::copy_file(dir + "/mail", copy, std::filesystem::copy_options::overwrite_existing);
    local.push_back(boot({"--disk", copy}));
    unlink(copy.c_str());
    for (bool with_profile : {false, true}) {
      if (!with_profile) unlink((dir + "/mail.profile").c_str());
      const std::string stream_copy = itest::ScratchPath("bench-im-stream.img");
      (with_profile ? warm : cold).push_back(boot({"--image-from", "127.0.0.1:" + port + "/mail", "--disk", stream_copy}));
      unlink(stream_copy.c_str());
      unlink((stream_copy + ".present").c_str());
    }
  }
  server.Signal(SIGTERM);
  server.Wait(seconds(10));
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  auto med = [](const std::vector<Boot>& v, double Boot::*f) {
    std::vector<double> x;
    for (const Boot& b : v) x.push_back(b.*f);
    return Median(x);
  };
  const double local_ready = med(local, &Boot::ready_ms), local_first = med(local, &Boot::first_output_ms);
  const std::string pre = "image: mail store ";
  rows.push_back({pre + "first output, streamed, no profile", med(cold, &Boot::first_output_ms), "ms", "local image",
                  local_first});
  rows.push_back({pre + "first output, streamed, profile", med(warm, &Boot::first_output_ms), "ms", "local image",
                  local_first});
  rows.push_back({pre + "ready, streamed, no profile", med(cold, &Boot::ready_ms), "ms", "local image", local_ready});
  rows.push_back({pre + "ready, streamed, profile", med(warm, &Boot::ready_ms), "ms", "local image", local_ready});
  std::vector<double> cold_share, warm_share;
  for (const Boot& b : cold) cold_share.push_back(share(b));
  for (const Boot& b : warm) warm_share.push_back(share(b));
  rows.push_back({pre + "on-demand share of blocks read, no profile", Median(cold_share), "%", "", 0});
  rows.push_back({pre + "on-demand share of blocks read, profile", Median(warm_share), "%", "goal 10%", 10});
}

int Main(int argc, char** argv) {
  bool quick = false, pair_only = false, migrate_only = false, storage_only = false, image_only = false;
  bool checkpoint_only = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else if (std::strcmp(argv[i], "--pair-only") == 0) {
      pair_only = true;
    } else if (std::strcmp(argv[i], "--migrate-only") == 0) {
      pair_only = migrate_only = true;
    } else if (std::strcmp(argv[i], "--storage-only") == 0) {
      storage_only = true;
    } else if (std::strcmp(argv[i], "--image-only") == 0) {
      image_only = true;
    } else if (std::strcmp(argv[i], "--dr-checkpoint-only") == 0) {
      storage_only = image_only = checkpoint_only = true;
    } else {
      std::fprintf(stderr, "usage: ftvm_bench [--quick] [--pair-only | --migrate-only | --storage-only | --image-only | "
                           "--dr-checkpoint-only]\n");
      return 2;
    }
  }
  const char* ftvm = std::getenv("FTVM_BIN");
  const char* guest = std::getenv("FTVM_GUEST");
  const char* ring0 = std::getenv("FTVM_RING0_GUEST");
  const char* channel_bench = std::getenv("FTVM_CHANNEL_BENCH");
  if (!ftvm || !guest || !ring0 || !channel_bench) {
    std::fprintf(stderr, "ftvm_bench: run it through `meson test -C build --benchmark` or set FTVM_BIN, FTVM_GUEST, "
                         "FTVM_RING0_GUEST, FTVM_CHANNEL_BENCH\n");
    return 2;
  }
  g_ftvm = ftvm;
  g_guest = guest;
  g_ring0_guest = ring0;
  g_channel_bench = channel_bench;
  std::vector<Row> rows;
  std::string backend;
  Progress("boot, exits, compute");
  BootTime(rows, backend);
  if (storage_only || image_only) pair_only = true;
  std::vector<Row> mail_rr;
  if (!pair_only) {
    ExitCosts(rows, quick);
    Compute(rows, quick);
    Progress("mail store: host baseline, ftvm run, ftvm record, replays");
    MailStore(rows, mail_rr, quick);
    // Record/replay: recording overhead, replay speed, log bandwidth, verification.
    Progress("record/replay: compute");
    RecordCompute(rows, quick);
    Progress("record/replay: timers");
    RecordTimers(rows, 1000, quick ? 800 : 1500, quick ? 1 : 3);
    RecordTimers(rows, 10000, quick ? 100 : 300, quick ? 1 : 3);
    Progress("record/replay: dirty, verification digests");
    RecordDirty(rows, quick);
    Progress("record/replay: disk");
    RecordDisk(rows, quick);
  }
  // The protected pair: logging channel, output rule, replica lag, throughput, failover.
  std::vector<Row> pair_rows;
  const HostNoise pair_noise;
  const double cores = double(sysconf(_SC_NPROCESSORS_ONLN));
  auto section = [&](const char* what, const std::function<void()>& run) {
    Progress(what);
    const HostNoise noise;
    run();
    std::fprintf(stderr, "bench:   other processes on this host took %.2f of %.0f cores meanwhile\n",
                 noise.other_cores(), cores);
  };
  Channels channels;
  if (!storage_only && !image_only)
    section("pair: logging channels (channel_bench)", [&] { channels = ChannelBench(pair_rows); });
  if (!migrate_only && !storage_only && !image_only) {
    section("pair: mail store at 500 req/s: ftvm run, ftvm record, protected over shm and tcp",
            [&] { PairLatency(pair_rows, quick, channels); });
    section("pair: mail store flooded: ftvm run, protected over shm and tcp",
            [&] { PairThroughput(pair_rows, quick, channels); });
    section("failover: ftvm drill --fault kill-primary", [&] { Failover(pair_rows, quick); });
  }
  if (!storage_only && !image_only) {
    section("migrate: a 1 GiB VM writing 64 MiB/s, over shm", [&] { Migration(pair_rows, quick, channels, false); });
    section("post-copy: the same VM, running on the destination before its memory",
            [&] { Migration(pair_rows, quick, channels, true); });
  }
  if (!migrate_only && !image_only)
    section("dr and move-disk: mail store at 500 req/s with a DR replica; a 256 MiB disk moved under load",
            [&] { Storage(pair_rows, quick); });
  if (!migrate_only && !image_only)
    section("remote disk: 4 KiB requests to an ftvm disk-server over TCP loopback vs a local file",
            [&] { RemoteDiskLatency(pair_rows, quick); });
  if (!migrate_only && (!image_only || checkpoint_only))
    section("dr checkpoint: the mail store with --dr-checkpoint-s 1; resumed from the checkpoint vs booted",
            [&] { DrCheckpoints(pair_rows, quick); });
  if (!migrate_only && !storage_only)
    section("image: the mail store booted from a local image, streamed, streamed with a boot profile",
            [&] { ImageStreaming(pair_rows, quick); });
  pair_rows.push_back({"host: CPU other processes took during the pair rows", pair_noise.other_cores(), "cores",
                       "cores of this host", cores});
  Progress("done");
  rows.insert(rows.end(), mail_rr.begin(), mail_rr.end());
  rows.insert(rows.end(), pair_rows.begin(), pair_rows.end());

  std::printf("\nftvm bench (backend: %s%s)\n", backend.c_str(), quick ? ", quick" : "");
  std::printf("| %-56s | %10s | %-7s | %-23s | %10s | %7s |\n", "metric", "value", "unit", "baseline", "baseline",
              "ratio");
  std::printf("|%s|%s|%s|%s|%s|%s|\n", std::string(58, '-').c_str(), std::string(12, '-').c_str(),
              std::string(9, '-').c_str(), std::string(25, '-').c_str(), std::string(12, '-').c_str(),
              std::string(9, '-').c_str());
  for (const Row& r : rows) {
    if (r.baseline > 0)
      std::printf("| %-56s | %10.2f | %-7s | %-23s | %10.2f | %7.2f |\n", r.metric.c_str(), r.value, r.unit.c_str(),
                  r.baseline_name.c_str(), r.baseline, r.value / r.baseline);
    else
      std::printf("| %-56s | %10.2f | %-7s | %-23s | %10s | %7s |\n", r.metric.c_str(), r.value, r.unit.c_str(), "", "",
                  "");
  }
  if (!g_failure.empty()) {
    std::fflush(stdout);
    std::fprintf(stderr, "bench: FAILED: %s\n", g_failure.c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace ftvm::bench

int main(int argc, char** argv) {
  try {
    return ftvm::bench::Main(argc, argv);
  } catch (const ftvm::bench::Fatal&) {
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench: %s\n", e.what());
    return 1;
  }
}
