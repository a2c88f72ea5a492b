// The disk mirror end to end, in one process: a fake VM writes its image and tells
// the mirror (as virtio-blk does); the target is a new image here (a disk move's) or
// a DR replica over TCP loopback. What must hold: the target ends equal to the
// source, writes racing the initial copy included; a target slower than the guest
// overflows the queue, is reported not crash-consistent while it catches up by
// blocks, and ends equal and consistent; the replica reports its durable point and
// recovery point in its state file; it refuses a hello of another protocol version
// and drops a stream with a damaged batch, keeping what it had.
#include <gtest/gtest.h>

#include <sys/mount.h>
#include <sys/stat.h>

#include <atomic>
#include <optional>
#include <random>
#include <thread>

#include "common/clock.h"
#include "migration/state_transfer.h"
#include "storage/disk_mirror.h"
#include "storage/dr_replica.h"
#include "storage/storage.pb.h"
#include "tests/storage/test_util.h"
#include "transport/channel.h"

namespace ftvm::storage {
namespace {

using namespace std::chrono_literals;
using testutil::FakeDisk;
using testutil::MakeImage;
using testutil::ReadAll;
using testutil::ReplicaThread;
using testutil::ScratchDir;

constexpr uint64_t kDisk = 4u << 20;

// Random 4 KiB writes (some overlapping, so order matters) with a flush every 8.
void WriteRandom(FakeDisk& disk, std::mt19937_64& rng, int n) {
  for (int i = 0; i < n; ++i) {
    std::vector<uint8_t> data(4096, uint8_t(rng()));
    data[0] = uint8_t(i);
    disk.write((rng() % 64) * 4096, data);
    if (i % 8 == 7) disk.flush();
  }
}

MirrorOptions Options(const std::string& image) {
  MirrorOptions o;
  o.disk_path = image;
  o.report = 0ns;
  o.heartbeat = 10ms;
  o.retry = 50ms;
  return o;
}

TEST(DiskMirror, LocalTargetEndsEqualWithWritesRacingTheCopy) {
  const std::string dir = ScratchDir("local");
  const std::string src = dir + "/src.img", dst = dir + "/dst.img";
  MakeImage(src, kDisk);
  auto clock = MakeSystemClock();
  std::mt19937_64 rng(1);
  {
    // Data before the mirror exists: the initial catch-up copies it.
    DiskTaps none;
    FakeDisk pre(src, none);
    WriteRandom(pre, rng, 100);
  }
  DiskMirror m(MakeLocalTarget(dst), Options(src), *clock);
  FakeDisk disk(src, m);
  m.start();
  WriteRandom(disk, rng, 500);  // races the copy
  ASSERT_TRUE(m.wait_synced(20s)) << m.status().last_error;
  WriteRandom(disk, rng, 300);  // streamed
  ASSERT_TRUE(m.wait_synced(20s));
  MirrorStatus s = m.status();
  EXPECT_TRUE(s.target_consistent);
  EXPECT_EQ(s.lag_bytes, 0u);
  EXPECT_EQ(s.head_seq, 500u + 62 + 300 + 37);  // writes and flushes since the mirror started
  EXPECT_EQ(ReadAll(src), ReadAll(dst));
}

// A target that takes its time: the queue overflows.
class SlowTarget final : public MirrorTarget {
 public:
  SlowTarget(std::unique_ptr<MirrorTarget> inner, std::atomic<int>& delay_ms) : inner_(std::move(inner)), delay_ms_(delay_ms) {}
  std::string describe() const override { return "slow " + inner_->describe(); }
  std::unique_ptr<MirrorLink> connect(const MirrorHello& hello) override {
    struct Link final : MirrorLink {
      std::unique_ptr<MirrorLink> in;
      std::atomic<int>* delay;
      const std::vector<uint64_t>& target_hashes() const override { return in->target_hashes(); }
      std::string send(std::span<const uint8_t> b) override {
        std::this_thread::sleep_for(std::chrono::milliseconds(delay->load()));
        return in->send(b);
      }
      std::string poll_ack(Ack& a, bool& got) override { return in->poll_ack(a, got); }
    };
    auto l = std::make_unique<Link>();
    l->in = inner_->connect(hello);
    l->delay = &delay_ms_;
    return l;
  }

 private:
  std::unique_ptr<MirrorTarget> inner_;
  std::atomic<int>& delay_ms_;
};

TEST(DiskMirror, OverflowFallsBackToCatchUpAndIsReportedInconsistent) {
  const std::string dir = ScratchDir("overflow");
  const std::string src = dir + "/src.img", dst = dir + "/dst.img";
  MakeImage(src, kDisk);
  auto clock = MakeSystemClock();
  std::atomic<int> delay{0};
  MirrorOptions o = Options(src);
  o.queue_bytes = 64u << 10;  // 15 writes
  DiskMirror m(std::make_unique<SlowTarget>(MakeLocalTarget(dst), delay), o, *clock);
  FakeDisk disk(src, m);
  m.start();
  ASSERT_TRUE(m.wait_synced(20s)) << m.status().last_error;
  delay = 200;
  std::mt19937_64 rng(2);
  WriteRandom(disk, rng, 8);  // the sender takes these and sleeps
  std::this_thread::sleep_for(20ms);
  WriteRandom(disk, rng, 64);  // more than the queue holds
  MirrorStatus s = m.status();
  EXPECT_GE(s.overflows, 1u);
  EXPECT_FALSE(s.target_consistent) << "a target catching up must not be reported consistent";
  EXPECT_EQ(s.state, MirrorState::kCatchingUp);
  EXPECT_GT(s.lag_bytes, 0u);
  delay = 0;
  ASSERT_TRUE(m.wait_synced(20s));
  s = m.status();
  EXPECT_TRUE(s.target_consistent);
  EXPECT_GE(s.catchups, 2u);  // the first copy and the overflow's
  EXPECT_EQ(ReadAll(src), ReadAll(dst));
}

TEST(DrReplica, KeepsAnEqualCopyAndReportsItsRecoveryPoint) {
  const std::string dir = ScratchDir("dr");
  const std::string src = dir + "/src.img";
  MakeImage(src, kDisk);
  auto clock = MakeSystemClock();
  ReplicaThread r(dir + "/replica");
  MirrorOptions o = Options(src);
  DiskMirror m(MakeChannelTarget(r.replica->address()), o, *clock);
  FakeDisk disk(src, m);
  m.start();
  std::mt19937_64 rng(3);
  WriteRandom(disk, rng, 400);
  const uint64_t before_last = clock->wall_ns();
  ASSERT_TRUE(m.wait_synced(20s)) << m.status().last_error;
  MirrorStatus s = m.status();
  EXPECT_EQ(s.durable_seq, 450u);
  EXPECT_EQ(s.lag_bytes, 0u);
  EXPECT_EQ(s.lag_ns, 0u);
  std::this_thread::sleep_for(100ms);  // a heartbeat and a state file later
  std::map<std::string, std::string> st = ReadReplicaState(dir + "/replica");
  EXPECT_EQ(st["durable_seq"], "450");
  EXPECT_EQ(st["consistent"], "yes");
  EXPECT_EQ(st["behind_bytes"], "0");
  EXPECT_GE(std::stoull(st["recovery_point_wall_ns"]), before_last);
  EXPECT_EQ(ReadAll(src), ReadAll(DiskImagePath(dir + "/replica")));
}

// The replica's filesystem fills up: it stops applying and says so; the source is
// told, keeps taking the guest's writes without blocking, and reports the replica
// stopped (not consistent with the head). Needs root (a small tmpfs).
TEST(DrReplica, DiskFullStopsTheReplicaNotTheSource) {
  const std::string dir = ScratchDir("drfull");
  const std::string src = dir + "/src.img", rdir = dir + "/replica";
  MakeImage(src, kDisk);
  ASSERT_EQ(mkdir(rdir.c_str(), 0755), 0);
  if (mount("tmpfs", rdir.c_str(), "tmpfs", 0, "size=1m") != 0) GTEST_SKIP() << "cannot mount a tmpfs";
  struct Unmount {
    std::string d;
    ~Unmount() { umount2(d.c_str(), MNT_DETACH); }
  } unmount{rdir};
  auto clock = MakeSystemClock();
  std::optional<ReplicaThread> r(std::in_place, rdir);
  MirrorOptions o = Options(src);
  o.retry = 10s;  // no reconnect during the test
  DiskMirror m(MakeChannelTarget(r->replica->address()), o, *clock);
  FakeDisk disk(src, m);
  m.start();
  ASSERT_TRUE(m.wait_synced(20s)) << m.status().last_error;
  // 2 MiB of distinct blocks: more than the replica's 1 MiB filesystem holds.
  for (uint64_t b = 0; b < 512; ++b) {
    disk.write(b * 4096, std::vector<uint8_t>(4096, uint8_t(b | 1)));
    if (b % 16 == 15) disk.flush();
  }
  MirrorStatus s;
  for (int i = 0; i < 400; ++i) {
    s = m.status();
    if (s.state == MirrorState::kStopped) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(s.state, MirrorState::kStopped);
  EXPECT_NE(s.last_error.find("No space left"), std::string::npos) << s.last_error;
  EXPECT_FALSE(s.target_consistent);
  EXPECT_EQ(s.head_seq, 512u + 32);  // every write was taken
  disk.write(0, std::vector<uint8_t>(4096, 7));  // and the source goes on
  EXPECT_EQ(m.status().head_seq, 512u + 33);
  m.stop();
  r.reset();
  std::map<std::string, std::string> st = ReadReplicaState(rdir);
  EXPECT_EQ(st["state"], "stopped");
  EXPECT_NE(st["reason"].find("No space left"), std::string::npos) << st["reason"];
  EXPECT_EQ(st["consistent"], "yes");  // what it made durable is a moment of the source's disk
}

// A source that has written nothing since it started (its head is write 0) and whose
// disk holds data the target lacks: it is not synced, nor the target consistent,
// until the target acknowledges the catch-up. The target here answers the hello and
// takes every batch but never acknowledges; an unacknowledged catch-up once read as
// "durable up to 0", i.e. synced.
TEST(DiskMirror, IsNotSyncedUntilTheTargetAcknowledgesItsCatchUp) {
  const std::string dir = ScratchDir("noack");
  const std::string src = dir + "/src.img";
  MakeImage(src, kDisk);
  auto listener = transport::Listen("tcp:127.0.0.1:0");
  std::atomic<uint64_t> batches{0};
  std::atomic<bool> done{false};
  std::thread target([&] {
    auto ch = listener->accept(10s);
    if (ch == nullptr) return;
    transport::Message msg;
    if (!ch->recv(msg, 5s).is_message()) return;
    MirrorHelloReply reply;
    reply.set_protocol_version(kMirrorProtocolVersion);
    const std::string b = reply.SerializeAsString();
    if (!ch->send(kMsgHelloReply, std::span(reinterpret_cast<const uint8_t*>(b.data()), b.size()), 5s).ok()) return;
    const std::vector<uint64_t> blank(kDisk / 4096, migration::BlockHash(std::vector<uint8_t>(4096, 0)));
    if (!migration::SendDiskHashes(*ch, blank, 5s).empty()) return;
    while (!done) {
      transport::RecvResult r = ch->recv(msg, 50ms);
      if (r.is_message()) ++batches;
      else if (!r.timed_out()) return;
    }
  });
  auto clock = MakeSystemClock();
  {
    DiskMirror m(MakeChannelTarget(listener->address()), Options(src), *clock);
    m.start();
    EXPECT_FALSE(m.wait_synced(1s)) << "synced with nothing acknowledged";
    const MirrorStatus s = m.status();
    EXPECT_GT(batches.load(), 0u) << "the catch-up was sent";
    EXPECT_EQ(s.head_seq, 0u);
    EXPECT_FALSE(s.target_consistent);
    done = true;
    m.stop();
  }
  target.join();
}

TEST(DrReplica, RefusesAnotherProtocolVersion) {
  const std::string dir = ScratchDir("version");
  ReplicaThread r(dir);
  auto ch = transport::Connect(r.replica->address(), 5s);
  MirrorHello hello;
  hello.set_protocol_version(kMirrorProtocolVersion + 98);
  hello.set_disk_bytes(kDisk);
  const std::string b = hello.SerializeAsString();
  ASSERT_TRUE(ch->send(kMsgHello, std::span(reinterpret_cast<const uint8_t*>(b.data()), b.size()), 5s).ok());
  transport::Message msg;
  ASSERT_TRUE(ch->recv(msg, 5s).is_message());
  MirrorHelloReply reply;
  ASSERT_TRUE(reply.ParseFromArray(msg.payload().data(), int(msg.size())));
  EXPECT_NE(reply.error().find("version " + std::to_string(kMirrorProtocolVersion + 98)), std::string::npos) << reply.error();
}

TEST(DrReplica, DropsADamagedBatchAndKeepsWhatItHad) {
  const std::string dir = ScratchDir("damaged");
  ReplicaThread r(dir);
  auto ch = transport::Connect(r.replica->address(), 5s);
  MirrorHello hello;
  hello.set_protocol_version(kMirrorProtocolVersion);
  hello.set_disk_bytes(kDisk);
  const std::string b = hello.SerializeAsString();
  ASSERT_TRUE(ch->send(kMsgHello, std::span(reinterpret_cast<const uint8_t*>(b.data()), b.size()), 5s).ok());
  transport::Message msg;
  ASSERT_TRUE(ch->recv(msg, 5s).is_message());
  migration::ReceiveDiskHashes(*ch, kDisk / 4096, 5s);
  // A good catch-up that makes the replica consistent at write 10, then a damaged batch.
  std::vector<uint8_t> good(kBatchHeaderBytes);
  std::vector<uint8_t> data(4096, 0xab);
  std::span<const uint8_t> part(data);
  AppendRecord(good, RecordKind::kCatchupBegin, 0, 0, 0);
  AppendRecord(good, RecordKind::kBlock, 0, 0, 4096, std::span(&part, 1));
  AppendRecord(good, RecordKind::kCatchupEnd, 0, 10, 4096);
  SealBatch(good, BatchHeader{3, 11, 4096, 1, 10, 4096, 2});
  ASSERT_TRUE(ch->send(kMsgWrites, good, 5s).ok());
  std::vector<uint8_t> bad(kBatchHeaderBytes);
  AppendRecord(bad, RecordKind::kWrite, 0, 0, 4096, std::span(&part, 1));
  SealBatch(bad, BatchHeader{1, 11, 4096, 3, 11, 8192, 4});
  bad[kBatchHeaderBytes + 100] ^= 1;
  ASSERT_TRUE(ch->send(kMsgWrites, bad, 5s).ok());
  // The replica hangs up; its state names the problem and keeps write 10.
  for (int i = 0; i < 200; ++i) {
    transport::RecvResult rr = ch->recv(msg, 50ms);
    if (rr.closed() || rr.error()) break;
  }
  std::this_thread::sleep_for(50ms);
  std::map<std::string, std::string> st = ReadReplicaState(dir);
  EXPECT_NE(st["reason"].find("CRC"), std::string::npos) << st["reason"];
  EXPECT_EQ(st["durable_seq"], "10");
  EXPECT_EQ(st["consistent"], "yes");
  EXPECT_EQ(ReadAll(DiskImagePath(dir))[0], 0xab);
}

}  // namespace
}  // namespace ftvm::storage
