// Disk mirroring with real processes: the mail store in a network namespace with a
// client that delivers mail one message at a time and keeps a ledger of what was
// acknowledged and when.
//   - DR: the store runs with --dr-target to an `ftvm dr-replica`; the store is
//     killed with SIGKILL under load; `ftvm dr-start` boots it from the replica's
//     disk. The replica must hold a prefix of the deliveries that includes every one
//     acknowledged before the recovery point it reports.
//   - move-disk: the store's disk moves to a new path under load; nothing
//     acknowledged is lost, the old image is gone, and the VM writes the new one
//     (a restart from the new image alone has every message).
//   - move-disk to another host: the same to an `ftvm disk-server`; the VM then
//     reads and writes the server's image over TCP; killing the server stops the VM
//     with a clear error, and the server's image alone has every message.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <mutex>
#include <thread>

#include "common/error.h"
#include "common/unique_fd.h"
#include "tests/support/harness.h"
#include "tests/support/mail_deliverer.h"
#include "storage/dr_checkpoint.h"
#include "storage/storage.pb.h"
#include "tools/ftvm/mail_client.h"

namespace ftvm::itest {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr const char* kTap = "ftvmdr0";
constexpr const char* kGuestIp = "10.0.0.2";

void MakeBlankDisk(const std::string& path, off_t bytes) {
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(ftruncate(fd, bytes), 0) << path;
  close(fd);
}

class StorageTest : public testing::Test {
 protected:
  void SetUp() override { ns_.AddTap(kTap, "10.0.0.1/24"); }

  Process StartVm(const std::vector<std::string>& head, const std::vector<std::string>& extra, const std::string& console) {
    std::vector<std::string> argv = head;
    argv.insert(argv.end(), {"--guest", GuestImage(), "--app", "mailstore", "--tap", kTap, "--ip",
                             std::string(kGuestIp) + "/24", "--console", console});
    argv.insert(argv.end(), extra.begin(), extra.end());
    Process p = Process::Start(ns_.Wrap(argv), "vm");
    EXPECT_TRUE(WaitForFileContains(console, "mailstore: ready", seconds(90)))
        << ReadFile(console) << "\nstderr:\n" << p.Stderr();
    return p;
  }

  ProcessResult Mail(std::vector<std::string> args) {
    std::vector<std::string> argv = {FtvmBinary(), "mail"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--to", kGuestIp, "--timeout-ms", "2000", "--retries", "5"});
    return RunProcess(ns_.Wrap(argv), seconds(60), "mail");
  }

  uint64_t Count() {
    ProcessResult r = Mail({"count", "--mailbox", "dr"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.exit_code == 0 ? std::stoull(r.out) : 0;
  }

  // Every stored message is the one delivered at its index (a prefix, in order).
  void ExpectPrefix(uint64_t count) {
    for (uint64_t i : {uint64_t(0), count / 2, count - 1}) {
      if (count == 0) break;
      ProcessResult r = Mail({"fetch", "--mailbox", "dr", "--index", std::to_string(i)});
      EXPECT_EQ(r.out, "body-" + std::to_string(i)) << "message " << i << " of " << count;
    }
  }

  NetNamespace ns_{"storage"};
};

TEST_F(StorageTest, DrReplicaHoldsAPrefixOfAcknowledgedMailAfterTheSourceIsKilled) {
  const std::string disk = ScratchPath("dr-src.img"), dir = ScratchPath("dr-replica");
  MakeBlankDisk(disk, 32 << 20);
  const std::string addr = "tcp:127.0.0.1:" + std::to_string(20000 + getpid() % 20000);
  Process replica = Process::Start(ns_.Wrap({FtvmBinary(), "dr-replica", "--listen", addr, "--dir", dir}), "replica");
  ASSERT_TRUE(WaitForFileContains(replica.stderr_path(), "listening", seconds(10))) << replica.Stderr();
  Process vm = StartVm({FtvmBinary(), "run"}, {"--disk", disk, "--dr-target", addr, "--dr-report-s", "0.5"},
                       ScratchPath("dr-console.txt"));
  ASSERT_TRUE(WaitForFileContains(vm.stderr_path(), "dr.caught_up", seconds(30))) << vm.Stderr();

  Deliverer load(ns_.name(), kGuestIp, "dr");
  load.start();
  std::this_thread::sleep_for(seconds(3));
  vm.Signal(SIGKILL);  // the source's host dies: no goodbye to the replica
  vm.Wait(seconds(10));
  load.stop();
  const std::vector<uint64_t> acked = load.acked();
  ASSERT_GT(acked.size(), 20u) << load.error() << "\n" << vm.Stderr();
  std::this_thread::sleep_for(milliseconds(300));  // the replica sees the stream end
  replica.Signal(SIGTERM);
  ProcessResult rr = replica.Wait(seconds(10));
  EXPECT_EQ(rr.exit_code, 0) << rr.err;
  EXPECT_NE(vm.Stderr().find("dr.lag"), std::string::npos) << "the source reports how far behind the replica is";

  ProcessResult st = RunProcess({FtvmBinary(), "dr-replica", "--status", "--dir", dir}, seconds(10), "status");
  ASSERT_EQ(st.exit_code, 0) << st.err;
  auto field = [&](const std::string& key) {
    const size_t at = st.out.find("\n" + key + "=");
    return at == std::string::npos ? std::string() : st.out.substr(at + key.size() + 2, st.out.find('\n', at + 1) - at - key.size() - 2);
  };
  EXPECT_EQ(field("consistent"), "yes") << st.out;
  const uint64_t recovery_point = std::stoull(field("recovery_point_wall_ns"));
  uint64_t acked_before = 0;  // messages acknowledged before the recovery point
  while (acked_before < acked.size() && acked[acked_before] < recovery_point) ++acked_before;
  ASSERT_GT(acked_before, 0u) << st.out;

  Process vm2 = StartVm({FtvmBinary(), "dr-start", "--dir", dir}, {}, ScratchPath("dr-console2.txt"));
  EXPECT_NE(vm2.Stderr().find("crash-consistent"), std::string::npos) << vm2.Stderr();
  const uint64_t count = Count();
  std::printf("dr: %zu acknowledged, %llu before the recovery point, %llu on the replica, %llu attempted\n",
              acked.size(), static_cast<unsigned long long>(acked_before), static_cast<unsigned long long>(count),
              static_cast<unsigned long long>(load.attempted()));
  EXPECT_GE(count, acked_before) << "a message acknowledged before the reported recovery point is missing";
  EXPECT_LE(count, load.attempted()) << "the replica holds a message never sent";
  ExpectPrefix(count);
  vm2.Signal(SIGTERM);
  EXPECT_EQ(vm2.Wait(seconds(30)).exit_code, 0);
}

// --dr-sync: a delivery is acknowledged only after its journal write is on the
// replica, so the replica holds every acknowledged delivery, not just those before
// its recovery point.
TEST_F(StorageTest, SyncDrReplicaHoldsEveryAcknowledgedDeliveryAfterTheSourceIsKilled) {
  const std::string disk = ScratchPath("sync-src.img"), dir = ScratchPath("sync-replica");
  MakeBlankDisk(disk, 32 << 20);
  const std::string addr = "tcp:127.0.0.1:" + std::to_string(20000 + (getpid() + 7) % 20000);
  Process replica = Process::Start(ns_.Wrap({FtvmBinary(), "dr-replica", "--listen", addr, "--dir", dir}), "replica");
  ASSERT_TRUE(WaitForFileContains(replica.stderr_path(), "listening", seconds(10))) << replica.Stderr();
  Process vm = StartVm({FtvmBinary(), "run"}, {"--disk", disk, "--dr-target", addr, "--dr-sync", "--dr-sync-timeout-s", "30"},
                       ScratchPath("sync-console.txt"));
  ASSERT_TRUE(WaitForFileContains(vm.stderr_path(), "dr.caught_up", seconds(30))) << vm.Stderr();

  Deliverer load(ns_.name(), kGuestIp, "dr");
  load.start();
  std::this_thread::sleep_for(seconds(3));
  vm.Signal(SIGKILL);
  vm.Wait(seconds(10));
  load.stop();
  const std::vector<uint64_t> acked = load.acked();
  ASSERT_GT(acked.size(), 5u) << load.error() << "\n" << vm.Stderr();
  EXPECT_EQ(vm.Stderr().find("dr.sync_degraded"), std::string::npos) << vm.Stderr();
  std::this_thread::sleep_for(milliseconds(300));
  replica.Signal(SIGTERM);
  EXPECT_EQ(replica.Wait(seconds(10)).exit_code, 0);

  Process vm2 = StartVm({FtvmBinary(), "dr-start", "--dir", dir}, {}, ScratchPath("sync-console2.txt"));
  const uint64_t count = Count();
  std::printf("dr-sync: %zu acknowledged, %llu on the replica, %llu attempted\n", acked.size(),
              static_cast<unsigned long long>(count), static_cast<unsigned long long>(load.attempted()));
  EXPECT_GE(count, acked.size()) << "an acknowledged delivery is missing on the synchronous replica";
  EXPECT_LE(count, load.attempted());
  ExpectPrefix(count);
  vm2.Signal(SIGTERM);
  EXPECT_EQ(vm2.Wait(seconds(30)).exit_code, 0);
}

// DR checkpoints (--dr-checkpoint-s): deliveries are acknowledged (with --dr-sync)
// before and after a checkpoint, the source is killed. `dr-start --from-checkpoint`
// resumes the VM: every message delivered before the checkpoint is there, none
// after, the guest did not boot again (its console shows no boot), and the disk is
// byte for byte the replica's image at the checkpoint. A cold `dr-start` on a copy
// of the same replica holds every acknowledged delivery. The time from dr-start to
// the store's first reply is printed for both.
TEST_F(StorageTest, DrCheckpointResumesTheVmAtTheCheckpointAndColdBootKeepsEveryDelivery) {
  const std::string disk = ScratchPath("ck-src.img"), dir = ScratchPath("ck-replica"), cold = ScratchPath("ck-cold");
  MakeBlankDisk(disk, 32 << 20);
  const std::string addr = "tcp:127.0.0.1:" + std::to_string(20000 + (getpid() + 19) % 20000);
  Process replica = Process::Start(ns_.Wrap({FtvmBinary(), "dr-replica", "--listen", addr, "--dir", dir}), "replica");
  ASSERT_TRUE(WaitForFileContains(replica.stderr_path(), "listening", seconds(10))) << replica.Stderr();
  const std::string control = ScratchPath("ck.ctl");
  Process vm = StartVm({FtvmBinary(), "run"},
                       {"--disk", disk, "--dr-target", addr, "--dr-sync", "--dr-sync-timeout-s", "30",
                        "--dr-checkpoint-s", "8", "--control", control},
                       ScratchPath("ck-console.txt"));
  ASSERT_TRUE(WaitForFileContains(vm.stderr_path(), "dr.caught_up", seconds(30))) << vm.Stderr();

  auto status = [&] {
    std::map<std::string, std::string> m;
    ProcessResult st = RunProcess({FtvmBinary(), "dr-replica", "--status", "--dir", dir}, seconds(10), "status");
    EXPECT_EQ(st.exit_code, 0) << st.err;
    size_t at = 0;
    while (at < st.out.size()) {
      const size_t nl = st.out.find('\n', at), eq = st.out.find('=', at);
      if (eq != std::string::npos && eq < nl) m[st.out.substr(at, eq - at)] = st.out.substr(eq + 1, nl - eq - 1);
      at = nl == std::string::npos ? st.out.size() : nl + 1;
    }
    return m;
  };
  auto deliver = [&](uint64_t i) {
    ProcessResult r = Mail({"deliver", "--mailbox", "dr", "--id", "m" + std::to_string(i), "--body", "body-" + std::to_string(i)});
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  };
  constexpr uint64_t kBefore = 6, kAfter = 3;
  for (uint64_t i = 0; i < kBefore; ++i) deliver(i);
  // The next checkpoint after these deliveries, the store idle: it holds them all.
  const uint64_t delivered_at = std::stoull(status()["durable_seq"]);
  std::map<std::string, std::string> st;
  for (int i = 0; i < 400; ++i) {
    st = status();
    if (st["checkpoint"] == "yes" && std::stoull(st["checkpoint_seq"]) >= delivered_at) break;
    std::this_thread::sleep_for(milliseconds(50));
  }
  ASSERT_EQ(st["checkpoint"], "yes") << "no checkpoint arrived:\n" << vm.Stderr() << replica.Stderr();
  const std::string checkpoint_seq = st["checkpoint_seq"];
  ASSERT_GE(std::stoull(checkpoint_seq), delivered_at);
  EXPECT_EQ(st["checkpoint_seq"], st["durable_seq"]) << "the store is idle: the checkpoint is the newest write";
  EXPECT_FALSE(st["checkpoint_age_s"].empty());
  EXPECT_GT(std::stoull(st["checkpoint_bytes"]), 0u);
  // The source's `ftvm status` has the same checkpoint: one sent, of that size.
  {
    ProcessResult table = RunProcess({FtvmBinary(), "status", "--control", control}, seconds(10), "ftvm-status");
    ASSERT_EQ(table.exit_code, 0) << table.err;
    std::map<std::string, std::string> rows;
    std::istringstream lines(table.out);
    for (std::string name, value; lines >> name && std::getline(lines, value);)
      rows[name] = value.substr(std::min(value.find_first_not_of(' '), value.size()));
    EXPECT_GE(std::stoull(rows["dr_checkpoints"].empty() ? "0" : rows["dr_checkpoints"]), 1u) << table.out;
    // (A slow run may have sent the next one already, of another size.)
    if (rows["dr_checkpoints"] == "1") EXPECT_EQ(rows["dr_checkpoint_bytes"], st["checkpoint_bytes"]) << table.out;
    EXPECT_FALSE(rows["dr_checkpoint_age_s"].empty()) << table.out;
  }
  // The image at the checkpoint, to compare the rolled-back disk with.
  const std::string at_checkpoint = ReadFile(dir + "/disk.img");
  ASSERT_EQ(at_checkpoint.size(), size_t(32 << 20));
  // Delivered after the checkpoint (well before the next one, 8 s later: slack for a
  // VMM slowed by the sanitizers or a busy host).
  for (uint64_t i = kBefore; i < kBefore + kAfter; ++i) deliver(i);
  vm.Signal(SIGKILL);
  vm.Wait(seconds(10));
  std::this_thread::sleep_for(milliseconds(300));
  replica.Signal(SIGTERM);
  EXPECT_EQ(replica.Wait(seconds(10)).exit_code, 0);
  EXPECT_NE(vm.Stderr().find("dr.checkpoint "), std::string::npos) << vm.Stderr();
  st = status();
  ASSERT_EQ(st["checkpoint_seq"], checkpoint_seq) << "a later checkpoint arrived: the test's timing assumption broke";
  EXPECT_GT(std::stoull(st["checkpoint_undo_bytes"]), 0u) << "the writes after the checkpoint saved what they overwrote";
  ASSERT_EQ(std::system(("cp -r --sparse=always " + dir + " " + cold).c_str()), 0);

  // Time from starting a VM to the store's first reply.
  auto first_reply = [&](Process& p, std::chrono::steady_clock::time_point t0, const std::string& what) {
    for (int i = 0; i < 600; ++i) {
      ProcessResult r = RunProcess(ns_.Wrap({FtvmBinary(), "mail", "ping", "--to", kGuestIp, "--timeout-ms", "100", "--retries", "0"}),
                                   seconds(10), "ping");
      if (r.exit_code == 0) return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    ADD_FAILURE() << what << " never answered:\n" << p.Stderr();
    return 0.0;
  };

  // Resume: the checkpoint's messages, no boot, the disk at the checkpoint.
  const std::string console = ScratchPath("ck-resume-console.txt");
  const auto t_resume = std::chrono::steady_clock::now();
  Process resumed = Process::Start(ns_.Wrap({FtvmBinary(), "dr-start", "--dir", dir, "--from-checkpoint", "--guest", GuestImage(),
                                             "--app", "mailstore", "--tap", kTap, "--ip", std::string(kGuestIp) + "/24",
                                             "--console", console}),
                                   "resumed");
  const double resume_s = first_reply(resumed, t_resume, "the resumed VM");
  EXPECT_NE(resumed.Stderr().find("resuming the VM from the checkpoint at disk write " + checkpoint_seq), std::string::npos)
      << resumed.Stderr();
  EXPECT_EQ(Count(), kBefore) << "the resumed VM holds exactly the messages delivered before the checkpoint";
  ExpectPrefix(kBefore);
  resumed.Signal(SIGTERM);
  EXPECT_EQ(resumed.Wait(seconds(30)).exit_code, 0);
  const std::string resumed_console = ReadFile(console);
  EXPECT_EQ(resumed_console.find("mailstore: journal"), std::string::npos) << "the resumed VM booted:\n" << resumed_console;
  EXPECT_EQ(resumed_console.find("mailstore: ready"), std::string::npos) << "the resumed VM booted:\n" << resumed_console;
  EXPECT_TRUE(ReadFile(dir + "/disk.img") == at_checkpoint) << "the disk was not rolled back to the checkpoint's write";
  // Resumed once: a second resume would replay the state over a disk that moved on.
  ProcessResult again = RunProcess({FtvmBinary(), "dr-start", "--dir", dir, "--from-checkpoint", "--guest", GuestImage(),
                                    "--app", "mailstore"}, seconds(30), "again");
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.err.find("can no longer be resumed"), std::string::npos) << again.err;

  // Cold boot on the copy: every acknowledged delivery (--dr-sync).
  const auto t_cold = std::chrono::steady_clock::now();
  Process booted = Process::Start(ns_.Wrap({FtvmBinary(), "dr-start", "--dir", cold, "--guest", GuestImage(), "--app", "mailstore",
                                            "--tap", kTap, "--ip", std::string(kGuestIp) + "/24", "--console",
                                            ScratchPath("ck-cold-console.txt")}),
                                  "cold");
  const double cold_s = first_reply(booted, t_cold, "the cold-booted VM");
  EXPECT_EQ(Count(), kBefore + kAfter) << "a delivery acknowledged with --dr-sync is missing after the cold boot";
  ExpectPrefix(kBefore + kAfter);
  EXPECT_NE(booted.Stderr().find("set aside"), std::string::npos) << booted.Stderr();
  booted.Signal(SIGTERM);
  EXPECT_EQ(booted.Wait(seconds(30)).exit_code, 0);
  std::printf("dr checkpoint: dr-start to the store's first reply: resume from the checkpoint %.2f s, cold boot %.2f s "
              "(checkpoint %s bytes of %s bytes of state)\n",
              resume_s, cold_s, st["checkpoint_bytes"].c_str(), st["checkpoint_state_bytes"].c_str());
}

// Bad checkpoints: `dr-start --from-checkpoint` names the problem and leaves the
// replica's disk (and the checkpoint) as they were: a truncated or damaged file,
// another file format version, VM state of another state-format version, an undo
// journal that cannot take the disk back to the checkpoint's write (damaged, or a
// disk behind the checkpoint), a VM that does not match it (RAM, devices), and no
// checkpoint.
TEST_F(StorageTest, DrStartFromCheckpointRefusesBadCheckpointsAndLeavesTheDiskAlone) {
  const std::string disk = ScratchPath("bad-src.img"), dir = ScratchPath("bad-replica");
  MakeBlankDisk(disk, 32 << 20);
  const std::string addr = "tcp:127.0.0.1:" + std::to_string(20000 + (getpid() + 23) % 20000);
  Process replica = Process::Start(ns_.Wrap({FtvmBinary(), "dr-replica", "--listen", addr, "--dir", dir}), "replica");
  ASSERT_TRUE(WaitForFileContains(replica.stderr_path(), "listening", seconds(10))) << replica.Stderr();
  Process vm = StartVm({FtvmBinary(), "run"}, {"--disk", disk, "--dr-target", addr, "--dr-sync", "--dr-checkpoint-s", "3"},
                       ScratchPath("bad-console.txt"));
  ASSERT_TRUE(WaitForFileContains(replica.stderr_path(), "dr.checkpoint_stored", seconds(60))) << replica.Stderr();
  // Writes after the newest checkpoint are what fills its undo journal: deliver, then
  // stop the VM and let what it sent reach the replica; if a checkpoint landed after
  // the deliveries, deliver again.
  auto stored = [&] { return CountOf(replica.Stderr(), "dr.checkpoint_stored"); };
  for (size_t attempt = 0, before = stored();; ++attempt) {
    for (int i = 0; i < 2; ++i) {
      ProcessResult r = Mail({"deliver", "--mailbox", "dr", "--id", "m" + std::to_string(attempt) + "-" + std::to_string(i),
                              "--body", "b"});
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
    vm.Signal(SIGSTOP);
    std::this_thread::sleep_for(milliseconds(500));
    if (stored() == before) break;
    ASSERT_LT(attempt, 5u) << "a checkpoint landed after the deliveries every time";
    before = stored();
    vm.Signal(SIGCONT);
  }
  vm.Signal(SIGKILL);
  vm.Wait(seconds(10));
  std::this_thread::sleep_for(milliseconds(300));
  replica.Signal(SIGTERM);
  ASSERT_EQ(replica.Wait(seconds(10)).exit_code, 0);
  storage::LoadedCheckpoint good;
  try {
    good = storage::LoadCheckpoint(dir);
  } catch (const Error& e) {
    FAIL() << e.what();
  }
  const uint64_t undo_at = storage::kCheckpointHeaderBytes + good.header.state_bytes;
  ASSERT_FALSE(good.undo.empty()) << "the deliveries after the newest checkpoint left no undo record";

  int n = 0;
  // Applies `spoil` to a copy of the replica, runs dr-start --from-checkpoint there
  // and expects `error`, with the disk and the checkpoint file unchanged.
  auto expect_refused = [&](const std::function<void(const std::string&)>& spoil, const std::string& error,
                            std::vector<std::string> extra = {}) {
    const std::string copy = ScratchPath("bad-copy-" + std::to_string(n++));
    ASSERT_EQ(std::system(("cp -r --sparse=always " + dir + " " + copy).c_str()), 0);
    spoil(copy);
    const std::string disk_before = ReadFile(copy + "/disk.img");
    const std::string ckpt_before = ReadFile(storage::CheckpointPath(copy));
    std::vector<std::string> argv = {FtvmBinary(), "dr-start", "--dir", copy, "--from-checkpoint", "--guest", GuestImage(),
                                     "--app", "mailstore"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    ProcessResult r = RunProcess(argv, seconds(60), "bad");
    EXPECT_GT(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find(error), std::string::npos) << "want: " << error << "\ngot: " << r.err;
    EXPECT_TRUE(ReadFile(copy + "/disk.img") == disk_before) << "the disk changed for: " << error;
    EXPECT_TRUE(ReadFile(storage::CheckpointPath(copy)) == ckpt_before) << "the checkpoint changed for: " << error;
  };
  auto patch = [](const std::string& path, uint64_t at, const std::string& bytes) {
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_TRUE(fd);
    ASSERT_EQ(pwrite(fd.get(), bytes.data(), bytes.size(), off_t(at)), ssize_t(bytes.size()));
  };
  const std::string seq = std::to_string(good.header.seq);
  expect_refused([&](const std::string& d) { ASSERT_EQ(truncate(storage::CheckpointPath(d).c_str(), off_t(undo_at / 2)), 0); },
                 "is truncated");
  expect_refused([&](const std::string& d) { patch(storage::CheckpointPath(d), storage::kCheckpointHeaderBytes + 7, "\xff\x00"); },
                 "fails its CRC (damaged)");
  expect_refused([&](const std::string& d) { patch(storage::CheckpointPath(d), 8, std::string("\x02", 1)); },
                 "checkpoint in format version 2; this build reads version 1");
  // The VM state inside, re-encoded as if by a build of another state format.
  expect_refused(
      [&](const std::string& d) {
        std::vector<uint8_t> raw = storage::DecompressState(good.state, good.header.raw_bytes);
        storage::DrCheckpoint c;
        ASSERT_TRUE(c.ParseFromArray(raw.data(), int(raw.size())));
        c.set_format_version(99);
        const std::string again = c.SerializeAsString();
        storage::CheckpointHeader h = good.header;
        h.raw_bytes = again.size();
        std::vector<uint8_t> msg =
            storage::EncodeCheckpoint(h, storage::CompressState(std::span(reinterpret_cast<const uint8_t*>(again.data()), again.size())));
        const std::string file = ReadFile(storage::CheckpointPath(d));
        std::string out(msg.begin(), msg.end());
        out += file.substr(undo_at);  // the undo journal as it was
        std::ofstream(storage::CheckpointPath(d), std::ios::binary | std::ios::trunc) << out;
      },
      "state format 99; this build restores format 1");
  expect_refused([&](const std::string& d) { patch(storage::CheckpointPath(d), good.undo[0].file_offset + 1, "\x5a\xa5"); },
                 "cannot be rolled back to write " + seq);
  expect_refused(
      [&](const std::string& d) {
        std::string state = ReadFile(d + "/state");
        const size_t at = state.find("\ndurable_seq=");
        ASSERT_NE(at, std::string::npos);
        state.replace(at + 13, state.find('\n', at + 1) - at - 13, std::to_string(good.header.seq - 1));
        std::ofstream(d + "/state", std::ios::trunc) << state;
      },
      "its undo journal rolls the disk back, never forward");
  expect_refused([](const std::string&) {}, "give --mem 64", {"--mem", "128"});
  expect_refused([](const std::string&) {}, "start it with the source's device options (a NIC needs --tap)");
  const std::string none = ScratchPath("bad-none");
  ASSERT_EQ(std::system(("cp -r --sparse=always " + dir + " " + none + " && rm " + storage::CheckpointPath(none)).c_str()), 0);
  ProcessResult r = RunProcess({FtvmBinary(), "dr-start", "--dir", none, "--from-checkpoint", "--guest", GuestImage(), "--app",
                                "mailstore"},
                               seconds(60), "none");
  EXPECT_GT(r.exit_code, 0);
  EXPECT_NE(r.err.find("no checkpoint in " + none), std::string::npos) << r.err;
}

// A synchronous VM whose replica dies must not hang: after the timeout it goes on
// asynchronously, loudly, and deliveries are acknowledged again.
TEST_F(StorageTest, SyncDrGoesOnAsynchronouslyWhenTheReplicaIsLost) {
  const std::string disk = ScratchPath("lost-src.img"), dir = ScratchPath("lost-replica");
  MakeBlankDisk(disk, 32 << 20);
  const std::string addr = "tcp:127.0.0.1:" + std::to_string(20000 + (getpid() + 13) % 20000);
  Process replica = Process::Start(ns_.Wrap({FtvmBinary(), "dr-replica", "--listen", addr, "--dir", dir}), "replica");
  ASSERT_TRUE(WaitForFileContains(replica.stderr_path(), "listening", seconds(10))) << replica.Stderr();
  Process vm = StartVm({FtvmBinary(), "run"}, {"--disk", disk, "--dr-target", addr, "--dr-sync", "--dr-sync-timeout-s", "1"},
                       ScratchPath("lost-console.txt"));
  ASSERT_TRUE(WaitForFileContains(vm.stderr_path(), "dr.caught_up", seconds(30))) << vm.Stderr();
  Deliverer load(ns_.name(), kGuestIp, "dr");
  load.start();
  std::this_thread::sleep_for(seconds(1));
  replica.Signal(SIGKILL);
  replica.Wait(seconds(10));
  const size_t at_loss = load.acked().size();
  EXPECT_TRUE(WaitForFileContains(vm.stderr_path(), "dr.sync_degraded", seconds(30))) << vm.Stderr();
  std::this_thread::sleep_for(seconds(2));
  load.stop();
  EXPECT_GT(load.acked().size(), at_loss) << "deliveries go on after the replica is lost: " << load.error();
  vm.Signal(SIGTERM);
  EXPECT_EQ(vm.Wait(seconds(30)).exit_code, 0);
}

TEST_F(StorageTest, MoveDiskUnderLoadLosesNothingAndTheVmWritesTheNewImage) {
  const std::string disk = ScratchPath("move-old.img"), moved = ScratchPath("move-new.img");
  const std::string control = ScratchPath("vm.control");
  MakeBlankDisk(disk, 32 << 20);
  Process vm = StartVm({FtvmBinary(), "run"}, {"--disk", disk, "--control", control}, ScratchPath("move-console.txt"));
  Deliverer load(ns_.name(), kGuestIp, "dr");
  load.start();
  std::this_thread::sleep_for(seconds(1));
  ProcessResult mv = RunProcess({FtvmBinary(), "move-disk", "--control", control, "--to", moved}, seconds(60), "move");
  const size_t acked_at_switch = load.acked().size();
  std::this_thread::sleep_for(seconds(1));
  load.stop();
  ASSERT_EQ(mv.exit_code, 0) << mv.out << mv.err;
  std::printf("move-disk: %s%s", mv.out.c_str(), mv.err.c_str());
  EXPECT_NE(mv.err.find("copying"), std::string::npos) << "progress lines";
  EXPECT_NE(mv.out.find("old image removed"), std::string::npos);
  EXPECT_NE(access(disk.c_str(), F_OK), 0) << "the old image is removed";
  const std::vector<uint64_t> acked = load.acked();
  ASSERT_GT(acked.size(), acked_at_switch) << "the store served after the switch: " << load.error();
  EXPECT_GE(Count(), acked.size());
  vm.Signal(SIGTERM);
  EXPECT_EQ(vm.Wait(seconds(30)).exit_code, 0);
  // The new image alone holds every acknowledged message, those after the switch too.
  Process vm2 = StartVm({FtvmBinary(), "run"}, {"--disk", moved}, ScratchPath("move-console2.txt"));
  const uint64_t count = Count();
  EXPECT_GE(count, acked.size());
  EXPECT_LE(count, load.attempted());
  ExpectPrefix(count);
  vm2.Signal(SIGTERM);
  EXPECT_EQ(vm2.Wait(seconds(30)).exit_code, 0);
}

TEST_F(StorageTest, MoveDiskToADiskServerUnderLoadThenTheServerDies) {
  const std::string disk = ScratchPath("remote-old.img"), dir = ScratchPath("disk-server");
  const std::string control = ScratchPath("remote.control");
  MakeBlankDisk(disk, 32 << 20);
  const std::string addr = "tcp:127.0.0.1:" + std::to_string(20000 + (getpid() + 29) % 20000);
  Process server = Process::Start(ns_.Wrap({FtvmBinary(), "disk-server", "--listen", addr, "--dir", dir}), "server");
  ASSERT_TRUE(WaitForFileContains(server.stderr_path(), "listening", seconds(10))) << server.Stderr();
  Process vm = StartVm({FtvmBinary(), "run"}, {"--disk", disk, "--control", control}, ScratchPath("remote-console.txt"));
  Deliverer load(ns_.name(), kGuestIp, "dr");
  load.start();
  std::this_thread::sleep_for(seconds(1));
  ProcessResult mv = RunProcess({FtvmBinary(), "move-disk", "--control", control, "--to", addr, "--timeout-s", "3"},
                                seconds(60), "move");
  const size_t acked_at_switch = load.acked().size();
  std::this_thread::sleep_for(seconds(2));
  load.stop();
  ASSERT_EQ(mv.exit_code, 0) << mv.out << mv.err << "\nVM:\n" << vm.Stderr() << "\nserver:\n" << server.Stderr();
  std::printf("move-disk: %s%s", mv.out.c_str(), mv.err.c_str());
  EXPECT_NE(mv.out.find("to " + addr), std::string::npos) << mv.out;
  EXPECT_NE(mv.out.find("old image removed"), std::string::npos) << mv.out;
  EXPECT_NE(access(disk.c_str(), F_OK), 0) << "the local image is removed";
  EXPECT_NE(server.Stderr().find("disk_server.serving"), std::string::npos) << server.Stderr();
  ProcessResult st = RunProcess({FtvmBinary(), "status", "--control", control}, seconds(10), "status");
  EXPECT_NE(st.out.find("disk                   " + addr), std::string::npos) << "status shows where the disk is:\n" << st.out;
  const std::vector<uint64_t> acked = load.acked();
  ASSERT_GT(acked.size(), acked_at_switch) << "the store served with its disk on the server: " << load.error();
  // Read back through the guest, from the server's image.
  EXPECT_GE(Count(), acked.size());
  ExpectPrefix(acked.size());

  // The server dies and is back within --timeout-s: the VM's disk requests wait and
  // go on; nothing is lost.
  server.Signal(SIGKILL);
  server.Wait(seconds(10));
  Deliverer during(ns_.name(), kGuestIp, "during");
  during.start();
  std::this_thread::sleep_for(milliseconds(500));
  Process back = Process::Start(ns_.Wrap({FtvmBinary(), "disk-server", "--listen", addr, "--dir", dir}), "server2");
  ASSERT_TRUE(WaitForFileContains(vm.stderr_path(), "remote_disk.reconnected", seconds(20)))
      << vm.Stderr() << "\nserver:\n" << back.Stderr();
  std::this_thread::sleep_for(seconds(1));
  during.stop();
  EXPECT_GT(during.acked().size(), 0u) << "the store serves again with its server back: " << during.error();
  EXPECT_EQ(ReadFile(vm.stderr_path()).find("remote_disk.lost"), std::string::npos);

  // The server dies for good with the VM writing: after --timeout-s the VM stops,
  // saying why.
  back.Signal(SIGKILL);
  back.Wait(seconds(10));
  Deliverer after(ns_.name(), kGuestIp, "after");
  after.start();
  ProcessResult vr = vm.Wait(seconds(60));
  after.stop();
  EXPECT_NE(vr.exit_code, 0) << "a VM whose disk is gone does not go on";
  EXPECT_NE(vr.err.find("remote_disk.link_lost"), std::string::npos) << vr.err;
  EXPECT_NE(vr.err.find("disk server " + addr + " lost"), std::string::npos) << vr.err;

  // The server's image alone has every acknowledged message, those after the switch too.
  Process vm2 = StartVm({FtvmBinary(), "run"}, {"--disk", dir + "/disk.img"}, ScratchPath("remote-console2.txt"));
  const uint64_t count = Count();
  EXPECT_GE(count, acked.size());
  EXPECT_LE(count, load.attempted());
  ExpectPrefix(count);
  vm2.Signal(SIGTERM);
  EXPECT_EQ(vm2.Wait(seconds(30)).exit_code, 0);
}

}  // namespace
}  // namespace ftvm::itest
