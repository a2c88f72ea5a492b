// Record and replay of whole VMs through the real `ftvm record` / `ftvm replay`
// processes: every guest-kit app replays to the recorder's final digest with the
// same console output (three times), the mail store under a client load does too
// (with packets arriving whenever the host delivers them), and damaged logs are
// reported precisely: a tampered clock value as a divergence near its position, a
// flipped byte as a bad CRC at its offset, a cut log as cut short, a full log disk as
// a stopped recording whose log stays readable.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <regex>

#include "eventlog/crc32c.h"
#include "eventlog/format.h"
#include "eventlog/reader.h"
#include "tests/support/harness.h"

namespace ftvm::itest {
namespace {

using std::chrono::seconds;

std::string Capture(const std::string& text, const std::string& pattern) {
  std::smatch m;
  if (std::regex_search(text, m, std::regex(pattern)) && m.size() > 1) return m[1];
  return "";
}

void MakeDisk(const std::string& path, off_t bytes) {
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(ftruncate(fd, bytes), 0);
  close(fd);
}

void CopyFile(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  std::ofstream out(to, std::ios::binary | std::ios::trunc);
  out << in.rdbuf();
}

struct Recording {
  std::string log;
  std::string console;
  std::string digest;  // the recorder's final digest
  ProcessResult result;
};

// `ftvm record` of `app`; disk (if any) is used as is.
Recording Record(const std::string& app, std::vector<std::string> extra, int want_exit = 0) {
  Recording rec;
  rec.log = ScratchPath(app + ".ftlog");
  rec.console = ScratchPath(app + ".console");
  std::vector<std::string> argv = {FtvmBinary(), "record", "--log", rec.log, "--guest", GuestImage(), "--app", app,
                                   "--console", rec.console};
  argv.insert(argv.end(), extra.begin(), extra.end());
  rec.result = RunProcess(argv, seconds(300), "record-" + app);
  EXPECT_FALSE(rec.result.timed_out);
  EXPECT_EQ(rec.result.exit_code, want_exit) << rec.result.err;
  rec.digest = Capture(rec.result.err, "final digest ([0-9a-f]{64})");
  return rec;
}

struct Replay {
  ProcessResult result;
  std::string digest;
  std::string console;
};

Replay ReplayLog(const std::string& log, std::vector<std::string> extra = {}) {
  Replay rp;
  rp.console = ScratchPath("replay.console");
  std::vector<std::string> argv = {FtvmBinary(), "replay", "--log", log, "--console", rp.console};
  argv.insert(argv.end(), extra.begin(), extra.end());
  rp.result = RunProcess(argv, seconds(300), "replay");
  EXPECT_FALSE(rp.result.timed_out);
  rp.digest = Capture(rp.result.out, "final digest ([0-9a-f]{64})");
  return rp;
}

// Replays three times (with verification) and checks each against the recording.
void ExpectReplaysIdentical(const Recording& rec, const std::function<std::vector<std::string>()>& extra = {}) {
  ASSERT_FALSE(rec.digest.empty()) << rec.result.err;
  const std::string recorded_console = ReadFile(rec.console);
  for (int i = 0; i < 3; ++i) {
    Replay rp = ReplayLog(rec.log, extra ? extra() : std::vector<std::string>{});
    rp.result.out += "";  // keep the diagnostics below readable
    ASSERT_EQ(rp.result.exit_code, 0) << "replay " << i << ":\n" << rp.result.out << rp.result.err;
    EXPECT_NE(rp.result.out.find("\nidentical\n"), std::string::npos) << rp.result.out;
    EXPECT_EQ(rp.digest, rec.digest) << "replay " << i;
    EXPECT_EQ(ReadFile(rp.console), recorded_console) << "replay " << i << ": console output differs";
    EXPECT_NE(Capture(rp.result.err, "(\\d+) verifications"), "") << rp.result.err;
    unlink(rp.console.c_str());
  }
}

TEST(RecordReplay, ComputeReplaysIdentically) {
  Recording rec = Record("compute", {"--arg", "iters=3000000"});
  EXPECT_NE(ReadFile(rec.console).find("compute: iters=3000000 checksum="), std::string::npos);
  ExpectReplaysIdentical(rec, [] { return std::vector<std::string>{"--verify"}; });
}

// The timers app computes without a single exit while its timer fires: every tick
// reaches the guest through an epoch checkpoint, and the checksum folds in where
// each tick landed, so a replica that replayed a tick elsewhere prints another one.
TEST(RecordReplay, TimersThroughEpochCheckpoints) {
  const int ticks = 40;
  Recording rec = Record("timers", {"--arg", "ticks=" + std::to_string(ticks), "--arg", "period_us=1500"});
  EXPECT_NE(ReadFile(rec.console).find("ticks=40 fired=40"), std::string::npos) << ReadFile(rec.console);
  // One checkpoint per tick: there is no guest exit between a timer expiry and its
  // delivery (the guest re-arms only after it saw the tick).
  EXPECT_EQ(Capture(rec.result.err, "checkpoints (\\d+)"), std::to_string(ticks)) << rec.result.err;
  EXPECT_EQ(Capture(rec.result.err, "interrupts (\\d+)"), std::to_string(ticks)) << rec.result.err;
  ExpectReplaysIdentical(rec, [] { return std::vector<std::string>{"--verify"}; });
  // Without verification the replica still ends in the same state.
  Replay plain = ReplayLog(rec.log);
  EXPECT_EQ(plain.result.exit_code, 0) << plain.result.out << plain.result.err;
  EXPECT_EQ(plain.digest, rec.digest);
  EXPECT_EQ(Capture(plain.result.err, "(\\d+) checkpoints"), std::to_string(ticks)) << plain.result.err;
}

TEST(RecordReplay, DirtyPagesAndClockReads) {
  Recording rec = Record("dirty", {"--arg", "mib=8", "--arg", "mib_per_s=32", "--arg", "seconds=1", "--arg",
                                   "slice_us=4000"});
  EXPECT_NE(Capture(rec.result.err, "clock reads (\\d+)"), "0");
  ExpectReplaysIdentical(rec, [] { return std::vector<std::string>{"--verify"}; });
}

TEST(RecordReplay, DiskAppOnItsOwnReplicaDisk) {
  const std::string disk = ScratchPath("disk.img");
  const std::string initial = ScratchPath("disk-initial.img");
  MakeDisk(disk, 16 << 20);
  CopyFile(disk, initial);
  Recording rec = Record("disk", {"--disk", disk, "--arg", "ops=150", "--arg", "seed=11"});
  EXPECT_NE(ReadFile(rec.console).find("errors=0"), std::string::npos);
  std::vector<std::string> replicas;
  ExpectReplaysIdentical(rec, [&] {
    std::string replica = ScratchPath("disk-replica.img");
    CopyFile(initial, replica);
    replicas.push_back(replica);
    return std::vector<std::string>{"--verify", "--disk", replica};
  });
  // Each replica's disk ends byte for byte like the primary's.
  for (const std::string& r : replicas) {
    EXPECT_TRUE(ReadFile(r) == ReadFile(disk)) << r;
    unlink(r.c_str());
  }
  // A replica started from another disk is refused before it boots.
  Replay wrong = ReplayLog(rec.log, {"--disk", disk});
  EXPECT_EQ(wrong.result.exit_code, 125);
  EXPECT_NE(wrong.result.err.find("differs from the recorded VM's disk"), std::string::npos) << wrong.result.err;
  Replay none = ReplayLog(rec.log);
  EXPECT_EQ(none.result.exit_code, 125);
  EXPECT_NE(none.result.err.find("--disk"), std::string::npos) << none.result.err;
  unlink(disk.c_str());
  unlink(initial.c_str());
}

// The mail store on a tap in its own namespace, under a client load: frames arrive
// whenever the host delivers them, the store writes its journal to disk, and the
// recording ends with SIGTERM at whatever point the guest is. It is recorded with
// output checks, so the replays also compare every frame sent and journal write.
TEST(RecordReplay, MailStoreUnderLoad) {
  NetNamespace ns("rr");
  ns.AddTap("ftvmrr0", "10.0.0.1/24");
  const std::string disk = ScratchPath("mail.img");
  const std::string initial = ScratchPath("mail-initial.img");
  MakeDisk(disk, 32 << 20);
  CopyFile(disk, initial);
  const std::string log = ScratchPath("mail.ftlog");
  const std::string console = ScratchPath("mail.console");
  Process vm = Process::Start(ns.Wrap({FtvmBinary(), "record", "--log", log, "--guest", GuestImage(), "--app",
                                       "mailstore", "--disk", disk, "--tap", "ftvmrr0", "--ip", "10.0.0.2/24",
                                       "--console", console, "--output-checks"}),
                              "mail-record");
  ASSERT_TRUE(WaitForFileContains(console, "mailstore: ready", seconds(60))) << vm.Stderr();
  ProcessResult d = RunProcess(ns.Wrap({FtvmBinary(), "mail", "deliver", "--to", "10.0.0.2", "--id", "x1", "--mailbox",
                                        "carol", "--body", "recorded", "--timeout-ms", "2000", "--retries", "5"}),
                               seconds(60), "mail");
  EXPECT_EQ(d.exit_code, 0) << d.err;
  ProcessResult load = RunProcess(ns.Wrap({FtvmBinary(), "mail", "load", "--to", "10.0.0.2", "--rate", "1500",
                                           "--duration", "2", "--mailboxes", "8"}),
                                  seconds(120), "load");
  EXPECT_EQ(load.exit_code, 0) << load.out << load.err;
  vm.Signal(SIGTERM);
  ProcessResult r = vm.Wait(seconds(60));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string digest = Capture(r.err, "final digest ([0-9a-f]{64})");
  ASSERT_FALSE(digest.empty()) << r.err;
  EXPECT_NE(Capture(r.err, "frames (\\d+)"), "0") << r.err;
  // Every reply frame and journal write was logged with its hash, and each replay
  // below checks them all.
  const std::string checks = Capture(r.err, "output checks (\\d+)");
  ASSERT_NE(checks, "") << r.err;
  EXPECT_GT(std::stoull(checks), 100u) << r.err;
  for (int i = 0; i < 3; ++i) {
    const std::string replica = ScratchPath("mail-replica.img");
    CopyFile(initial, replica);
    Replay rp = ReplayLog(log, {"--verify", "--disk", replica});
    ASSERT_EQ(rp.result.exit_code, 0) << rp.result.out << rp.result.err;
    EXPECT_EQ(rp.digest, digest);
    EXPECT_EQ(Capture(rp.result.err, "(\\d+) output checks"), checks) << rp.result.err;
    EXPECT_EQ(ReadFile(rp.console), ReadFile(console));
    EXPECT_TRUE(ReadFile(replica) == ReadFile(disk)) << "the replica's journal differs";
    unlink(replica.c_str());
    unlink(rp.console.c_str());
  }
  unlink(disk.c_str());
  unlink(initial.c_str());
  unlink(log.c_str());
}

// Rewrites the payload of the n-th record of `type` (and its CRC, so the log stays
// well-formed): returns that record's position.
uint64_t TamperRecord(const std::string& path, eventlog::RecordType type, int nth,
                      const std::function<void(std::vector<uint8_t>&)>& change) {
  eventlog::LogReader reader = eventlog::LogReader::OpenFile(path);
  eventlog::Record rec;
  int seen = 0;
  while (reader.next(rec).is_record()) {
    if (rec.type != type || seen++ != nth) continue;
    EXPECT_EQ(rec.flags, 0) << "tampering needs an uncompressed record";
    std::vector<uint8_t> bytes(rec.stored_bytes);
    int fd = open(path.c_str(), O_RDWR);
    EXPECT_EQ(pread(fd, bytes.data(), bytes.size(), off_t(rec.offset)), ssize_t(bytes.size()));
    // Uncompressed, the stored payload is rec.payload: the header is as long as the
    // varints of its size and the position.
    const size_t head = eventlog::RecordHeaderBytes(rec.payload.size(), rec.position);
    const size_t crc_at = bytes.size() - eventlog::kRecordCrcBytes;
    EXPECT_EQ(head + rec.payload.size(), crc_at);
    std::vector<uint8_t> payload(bytes.begin() + long(head), bytes.begin() + long(crc_at));
    change(payload);
    std::copy(payload.begin(), payload.end(), bytes.begin() + long(head));
    eventlog::PutLe32(bytes.data() + crc_at, eventlog::Crc32c({bytes.data(), crc_at}));
    EXPECT_EQ(pwrite(fd, bytes.data(), bytes.size(), off_t(rec.offset)), ssize_t(bytes.size()));
    close(fd);
    return rec.position;
  }
  ADD_FAILURE() << "no record " << nth << " of that type";
  return 0;
}

TEST(RecordReplay, TamperedClockValueIsReportedAsDivergenceNearItsPosition) {
  Recording rec = Record("dirty", {"--arg", "mib=8", "--arg", "mib_per_s=32", "--arg", "seconds=1", "--arg",
                                   "slice_us=4000", "--verify-interval-ms", "20"});
  // A clock read in the middle of the run returns 30 ms later than it did.
  const uint64_t position = TamperRecord(rec.log, eventlog::RecordType::kClockRead, 60, [](std::vector<uint8_t>& p) {
    eventlog::PutLe64(p.data(), eventlog::GetLe64(p.data()) + 30'000'000);
  });
  Replay rp = ReplayLog(rec.log, {"--verify"});
  EXPECT_EQ(rp.result.exit_code, 1) << rp.result.out << rp.result.err;
  const std::string at = Capture(rp.result.out, "diverged at position (\\d+)");
  ASSERT_FALSE(at.empty()) << rp.result.out;
  EXPECT_GE(std::stoull(at), position);
  // The guest writes more pages at once, which the next verification (every 20 ms,
  // ~5 clock reads apart) sees: soon after, not at the end of the run.
  EXPECT_LE(std::stoull(at), position + 40) << rp.result.out;
  EXPECT_NE(rp.result.out.find("verification failed"), std::string::npos) << rp.result.out;
}

// Strict output checks: every disk write is logged with the running hash of all
// writes so far, and the replica compares its own before it goes past. A log whose
// check disagrees with what the replica wrote is a divergence right there, naming
// the output, long before any periodic verification.
TEST(RecordReplay, OutputChecksCatchADifferentDiskWriteWhereItHappens) {
  const std::string disk = ScratchPath("strict.img");
  const std::string initial = ScratchPath("strict-initial.img");
  MakeDisk(disk, 16 << 20);
  CopyFile(disk, initial);
  Recording rec = Record("disk", {"--disk", disk, "--arg", "ops=60", "--arg", "seed=5", "--output-checks",
                                  "--verify-interval-ms", "100000"});
  const std::string checks = Capture(rec.result.err, "output checks (\\d+)");
  ASSERT_FALSE(checks.empty()) << rec.result.err;
  EXPECT_GE(std::stoull(checks), 30u) << rec.result.err;  // about half of the ops write
  const std::string replica = ScratchPath("strict-replica.img");
  CopyFile(initial, replica);
  Replay ok = ReplayLog(rec.log, {"--disk", replica});
  ASSERT_EQ(ok.result.exit_code, 0) << ok.result.out << ok.result.err;
  EXPECT_EQ(ok.digest, rec.digest);
  EXPECT_EQ(Capture(ok.result.err, "(\\d+) output checks"), checks) << ok.result.err;

  const uint64_t position = TamperRecord(rec.log, eventlog::RecordType::kOutputCheck, 20,
                                         [](std::vector<uint8_t>& p) { p[5] ^= 0x40; });
  CopyFile(initial, replica);
  Replay bad = ReplayLog(rec.log, {"--disk", replica});
  EXPECT_EQ(bad.result.exit_code, 1) << bad.result.out << bad.result.err;
  EXPECT_EQ(Capture(bad.result.out, "diverged at position (\\d+)"), std::to_string(position)) << bad.result.out;
  EXPECT_NE(bad.result.out.find("disk writes hash"), std::string::npos) << bad.result.out;
  EXPECT_EQ(Capture(bad.result.err, "(\\d+) output checks"), "20") << bad.result.err;
  for (const std::string& f : {disk, initial, replica}) unlink(f.c_str());
}

TEST(RecordReplay, FlippedByteIsABadCrcAtItsOffset) {
  Recording rec = Record("timers", {"--arg", "ticks=10", "--arg", "period_us=1500"});
  eventlog::LogReader reader = eventlog::LogReader::OpenFile(rec.log);
  eventlog::Record r;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(reader.next(r).is_record());
  const uint64_t offset = r.offset;
  // The record's last byte (its CRC): records are as short as 8 bytes, and a header
  // byte could make the header unreadable rather than the CRC wrong.
  const off_t at = off_t(offset + r.stored_bytes - 1);
  int fd = open(rec.log.c_str(), O_RDWR);
  uint8_t b = 0;
  ASSERT_EQ(pread(fd, &b, 1, at), 1);
  b ^= 0x40;
  ASSERT_EQ(pwrite(fd, &b, 1, at), 1);
  close(fd);
  Replay rp = ReplayLog(rec.log);
  EXPECT_EQ(rp.result.exit_code, 125) << rp.result.out << rp.result.err;
  EXPECT_NE(rp.result.out.find("bad CRC at offset " + std::to_string(offset)), std::string::npos) << rp.result.out;
  ProcessResult info = RunProcess({FtvmBinary(), "log", "info", rec.log}, seconds(30));
  EXPECT_EQ(info.exit_code, 1);
  EXPECT_NE(info.out.find("damaged: "), std::string::npos) << info.out;
}

TEST(RecordReplay, TruncatedLogIsCutShortAndRecoverable) {
  Recording rec = Record("timers", {"--arg", "ticks=10", "--arg", "period_us=1500"});
  struct stat st {};
  ASSERT_EQ(stat(rec.log.c_str(), &st), 0);
  ASSERT_EQ(truncate(rec.log.c_str(), st.st_size - 30), 0);  // inside the last records
  Replay rp = ReplayLog(rec.log);
  EXPECT_EQ(rp.result.exit_code, 3) << rp.result.out << rp.result.err;
  EXPECT_NE(rp.result.out.find("truncated"), std::string::npos) << rp.result.out;
  ProcessResult rec_r = RunProcess({FtvmBinary(), "log", "recover", rec.log}, seconds(30));
  EXPECT_EQ(rec_r.exit_code, 1) << rec_r.out << rec_r.err;
  EXPECT_NE(rec_r.out.find("cut to"), std::string::npos) << rec_r.out;
  // Whole again, but without its End: the replica goes as far as the log does.
  Replay again = ReplayLog(rec.log);
  EXPECT_EQ(again.result.exit_code, 3) << again.result.out;
  EXPECT_NE(again.result.out.find("cut short"), std::string::npos) << again.result.out;
  ProcessResult ok = RunProcess({FtvmBinary(), "log", "recover", rec.log}, seconds(30));
  EXPECT_EQ(ok.exit_code, 0) << ok.out;
}

TEST(RecordReplay, FullLogDiskStopsTheRecordingAndKeepsTheLogReadable) {
  const std::string dir = ScratchPath("fulldisk");
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  ASSERT_EQ(mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=96k"), 0) << std::strerror(errno);
  const std::string log = dir + "/t.ftlog";
  ProcessResult r = RunProcess({FtvmBinary(), "record", "--log", log, "--guest", GuestImage(), "--app", "timers",
                                "--arg", "ticks=400", "--arg", "period_us=1000"},
                               seconds(120), "record-full");
  EXPECT_EQ(r.exit_code, 125) << r.err;
  EXPECT_NE(r.err.find("recording stopped"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << r.err;
  // Cut back to its last whole record: readable, just incomplete.
  ProcessResult info = RunProcess({FtvmBinary(), "log", "info", log}, seconds(30));
  EXPECT_EQ(info.exit_code, 1);
  EXPECT_NE(info.out.find("incomplete: no End record"), std::string::npos) << info.out;
  Replay rp = ReplayLog(log);
  EXPECT_EQ(rp.result.exit_code, 3) << rp.result.out << rp.result.err;
  umount2(dir.c_str(), MNT_DETACH);
  rmdir(dir.c_str());
}

TEST(RecordReplay, BadInputIsNamed) {
  Recording rec = Record("compute", {"--arg", "iters=1000"});
  // An existing log is never overwritten by accident.
  ProcessResult again = RunProcess({FtvmBinary(), "record", "--log", rec.log, "--guest", GuestImage(), "--app",
                                    "compute"},
                                   seconds(60));
  EXPECT_EQ(again.exit_code, 125);
  EXPECT_NE(again.err.find("already exists"), std::string::npos) << again.err;
  // Another guest image than the one recorded.
  const std::string other = ScratchPath("other.elf");
  CopyFile(GuestImage(), other);
  {
    std::ofstream f(other, std::ios::binary | std::ios::app);
    f << "x";
  }
  Replay wrong = ReplayLog(rec.log, {"--guest", other});
  EXPECT_EQ(wrong.result.exit_code, 125);
  EXPECT_NE(wrong.result.err.find("is not the image the log was recorded with"), std::string::npos)
      << wrong.result.err;
  // Not a log at all.
  Replay junk = ReplayLog(other);
  EXPECT_EQ(junk.result.exit_code, 125);
  EXPECT_NE(junk.result.err.find("not an ftvm event log"), std::string::npos) << junk.result.err;
  // Missing file.
  Replay missing = ReplayLog("/nonexistent/x.ftlog");
  EXPECT_EQ(missing.result.exit_code, 125);
  EXPECT_NE(missing.result.err.find("/nonexistent/x.ftlog"), std::string::npos) << missing.result.err;
  ProcessResult usage = RunProcess({FtvmBinary(), "record", "--guest", GuestImage(), "--app", "compute"}, seconds(30));
  EXPECT_EQ(usage.exit_code, 2);
  EXPECT_NE(usage.err.find("--log"), std::string::npos) << usage.err;
  unlink(other.c_str());
}

}  // namespace
}  // namespace ftvm::itest
