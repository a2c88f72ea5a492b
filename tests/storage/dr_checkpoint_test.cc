// DR checkpoints on the replica: the checkpoint message and file refuse damage by
// name; the undo journal saves what the writes after S overwrite (the first write to
// a block only, catch-up blocks included), survives a replica restart, and rolls the
// image back to exactly its contents at S; an append cut short (or a tail of zeros)
// is ignored, a complete record that fails its CRC, even the last, refuses the
// rollback. End to end over TCP: a checkpoint queued
// on the mirror lands on the replica at the position it was queued at, between the
// writes before and after it, and a rollback gives the image at that moment.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <random>
#include <thread>

#include "common/clock.h"
#include "common/error.h"
#include "storage/disk_applier.h"
#include "storage/disk_mirror.h"
#include "storage/dr_checkpoint.h"
#include "storage/dr_replica.h"
#include "storage/write_stream.h"
#include "tests/storage/test_util.h"

namespace ftvm::storage {
namespace {

using namespace std::chrono_literals;
using testutil::FakeDisk;
using testutil::MakeImage;
using testutil::ReadAll;
using testutil::ReplicaThread;
using testutil::ScratchDir;

constexpr uint64_t kDisk = 1u << 20;

std::vector<uint8_t> Message(uint64_t seq, const std::string& state) {
  CheckpointHeader h;
  h.seq = seq;
  h.bytes = seq * 4096;
  h.wall_ns = 123;
  h.raw_bytes = state.size();
  const std::vector<uint8_t> packed = CompressState(std::span(reinterpret_cast<const uint8_t*>(state.data()), state.size()));
  return EncodeCheckpoint(h, packed);
}

// Writes batches of (offset, data) writes through an applier, sequence numbers
// continuing from the applier's state.
void Apply(DiskApplier& a, const std::vector<std::pair<uint64_t, std::vector<uint8_t>>>& writes, bool as_blocks = false) {
  std::vector<uint8_t> buf(kBatchHeaderBytes);
  uint16_t count = 0;
  if (as_blocks) {
    AppendRecord(buf, RecordKind::kCatchupBegin, 0, 0, 0);
    ++count;
  }
  for (const auto& [offset, data] : writes) {
    std::span<const uint8_t> part(data);
    AppendRecord(buf, as_blocks ? RecordKind::kBlock : RecordKind::kWrite, 0, offset, data.size(), std::span(&part, 1));
    ++count;
  }
  const uint64_t first = a.state().applied_seq + 1;
  if (as_blocks) {
    AppendRecord(buf, RecordKind::kCatchupEnd, 0, first + 10, 0);
    ++count;
  }
  SealBatch(buf, BatchHeader{count, first, 0, 1000, 0, 0, 1000});
  DecodedBatch d;
  ASSERT_EQ(DecodeBatch(buf, d), "");
  ASSERT_EQ(a.apply(d), "");
  ASSERT_EQ(a.sync(), "");
}

std::vector<uint8_t> Fill(size_t n, uint8_t v) { return std::vector<uint8_t>(n, v); }

void Attach(DiskApplier& a, std::optional<CheckpointStore>& store) {
  a.set_before_write([&store](int fd, std::span<const std::pair<uint64_t, uint64_t>> extents) {
    ASSERT_EQ(store->save_before(fd, extents), "");
  });
}

TEST(DrCheckpoint, MessageRoundTripAndRefusals) {
  std::vector<uint8_t> m = Message(42, std::string(100000, 'x') + "end");
  CheckpointHeader h;
  std::span<const uint8_t> state;
  ASSERT_EQ(DecodeCheckpoint(m, h, state), "");
  EXPECT_EQ(h.seq, 42u);
  EXPECT_EQ(h.raw_bytes, 100003u);
  const std::vector<uint8_t> raw = DecompressState(state, h.raw_bytes);
  EXPECT_EQ(std::string(raw.begin(), raw.end()), std::string(100000, 'x') + "end");
  EXPECT_THROW(DecompressState(state, h.raw_bytes + 1), Error);

  std::vector<uint8_t> cut(m.begin(), m.end() - 5);
  EXPECT_NE(DecodeCheckpoint(cut, h, state).find("truncated"), std::string::npos);
  std::vector<uint8_t> tiny(m.begin(), m.begin() + 20);
  EXPECT_NE(DecodeCheckpoint(tiny, h, state).find("truncated"), std::string::npos);
  std::vector<uint8_t> bad = m;
  bad[kCheckpointHeaderBytes + 3] ^= 1;
  EXPECT_NE(DecodeCheckpoint(bad, h, state).find("CRC"), std::string::npos);
  std::vector<uint8_t> other = m;
  other[8] = 9;  // format version
  EXPECT_EQ(DecodeCheckpoint(other, h, state), "checkpoint in format version 9; this build reads version 1");
  std::vector<uint8_t> foreign = m;
  foreign[0] = 'X';
  EXPECT_NE(DecodeCheckpoint(foreign, h, state).find("magic"), std::string::npos);
}

// Writes after S (overlapping, unaligned, repeated, catch-up blocks) and a replica
// restart in the middle: the rollback gives exactly the image at S.
TEST(DrCheckpoint, UndoJournalRollsTheImageBackToTheCheckpoint) {
  const std::string dir = ScratchDir("ckundo");
  const std::string img = DiskImagePath(dir);
  std::optional<CheckpointStore> store;
  std::vector<uint8_t> at_s;
  {
    DiskApplier a(img, kDisk);
    Apply(a, {{0, Fill(8192, 1)}, {65536, Fill(4096, 2)}, {kDisk - 4096, Fill(4096, 3)}});
    ASSERT_EQ(a.state().applied_seq, 3u);
    at_s = ReadAll(img);
    store = CheckpointStore::Install(dir, Message(3, "vm state"), kDisk);
    Attach(a, store);
    Apply(a, {{100, Fill(300, 9)}, {4096, Fill(8192, 8)}, {100, Fill(10, 7)}});  // the same block twice
    Apply(a, {{65536 + 4096 * 3, Fill(4096 * 5, 6)}});
    Apply(a, {{0, Fill(4096 * 3, 5)}, {kDisk - 4096, Fill(4096, 4)}}, /*as_blocks=*/true);
    EXPECT_GT(store->undo_bytes(), 0u);
    EXPECT_NE(ReadAll(img), at_s);
  }
  // The replica restarts: the journal goes on where it was.
  {
    DiskApplier a(img, kDisk);
    ApplierState s;
    s.durable_seq = 13;
    s.durable_bytes = 0;
    a.resume(s);
    store = CheckpointStore::Reopen(dir, kDisk);
    const uint64_t records = store->undo_records();
    Attach(a, store);
    Apply(a, {{4096 * 200, Fill(4096, 0x55)}, {0, Fill(4096, 0x66)}});
    EXPECT_EQ(store->undo_records(), records + 1) << "block 0 was saved before the restart; only block 200 is new";
  }
  LoadedCheckpoint c = LoadCheckpoint(dir);
  EXPECT_EQ(c.header.seq, 3u);
  EXPECT_EQ(c.torn_tail_bytes, 0u);
  const std::vector<uint8_t> raw = DecompressState(c.state, c.header.raw_bytes);
  EXPECT_EQ(std::string(raw.begin(), raw.end()), "vm state");
  RollbackDisk(dir, c, img);
  EXPECT_TRUE(ReadAll(img) == at_s) << "the rolled-back image differs from the image at the checkpoint";

  // An image shorter than the journal's records (not the replica's disk): refused
  // before anything is written, and the image keeps its size.
  const std::string small = dir + "/small.img";
  MakeImage(small, 8192);
  try {
    RollbackDisk(dir, c, small);
    ADD_FAILURE() << "a rollback past the end of the image";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lies past the end of " + small), std::string::npos) << e.what();
  }
  EXPECT_EQ(ReadAll(small).size(), 8192u);

  // A new checkpoint replaces the file: its journal starts empty.
  store = CheckpointStore::Install(dir, Message(20, "newer"), kDisk);
  EXPECT_EQ(store->undo_bytes(), 0u);
  EXPECT_EQ(LoadCheckpoint(dir).undo.size(), 0u);
}

TEST(DrCheckpoint, TornTailIsIgnoredADamagedRecordRefuses) {
  const std::string dir = ScratchDir("cktorn");
  const std::string img = DiskImagePath(dir);
  std::optional<CheckpointStore> store;
  std::vector<uint8_t> at_s;
  {
    DiskApplier a(img, kDisk);
    Apply(a, {{0, Fill(4096, 1)}});
    at_s = ReadAll(img);
    store = CheckpointStore::Install(dir, Message(1, "s"), kDisk);
    Attach(a, store);
    Apply(a, {{0, Fill(4096, 2)}});
    Apply(a, {{8192, Fill(4096, 3)}});
  }
  const std::string path = CheckpointPath(dir);
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  const off_t good = st.st_size;
  // A crash while appending a third record: half of it reached the file.
  {
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_APPEND));
    std::vector<uint8_t> half(kUndoRecordHeaderBytes + 100, 0xee);
    half[4] = 0;
    half[5] = 0x10;  // length 4096, only 100 bytes follow
    half[6] = half[7] = 0;
    ASSERT_EQ(write(fd.get(), half.data(), half.size()), ssize_t(half.size()));
  }
  LoadedCheckpoint c = LoadCheckpoint(dir);
  EXPECT_EQ(c.undo.size(), 2u);
  EXPECT_EQ(c.torn_tail_bytes, kUndoRecordHeaderBytes + 100);
  // Reopened, the journal overwrites the torn tail.
  store = CheckpointStore::Reopen(dir, kDisk);
  EXPECT_EQ(store->undo_records(), 2u);
  // A size that grew before its data: zeros.
  ASSERT_EQ(truncate(path.c_str(), good), 0);
  ASSERT_EQ(truncate(path.c_str(), good + 5000), 0);
  EXPECT_EQ(LoadCheckpoint(dir).undo.size(), 2u);
  // The last complete record damaged: its write may have reached the disk.
  ASSERT_EQ(truncate(path.c_str(), good), 0);
  {
    UniqueFd fd(open(path.c_str(), O_RDWR));
    uint8_t b = 0;
    ASSERT_EQ(pread(fd.get(), &b, 1, off_t(good - 7)), 1);
    b ^= 0xff;
    ASSERT_EQ(pwrite(fd.get(), &b, 1, off_t(good - 7)), 1);
    EXPECT_THROW(LoadCheckpoint(dir), Error);
    b ^= 0xff;
    ASSERT_EQ(pwrite(fd.get(), &b, 1, off_t(good - 7)), 1);
  }
  // Damage in the first record: the disk cannot be rolled back to S.
  ASSERT_EQ(truncate(path.c_str(), good), 0);
  {
    UniqueFd fd(open(path.c_str(), O_RDWR));
    const uint64_t first = kCheckpointHeaderBytes + LoadCheckpoint(dir).header.state_bytes;
    uint8_t b = 0;
    ASSERT_EQ(pread(fd.get(), &b, 1, off_t(first + kUndoRecordHeaderBytes + 10)), 1);
    b ^= 0xff;
    ASSERT_EQ(pwrite(fd.get(), &b, 1, off_t(first + kUndoRecordHeaderBytes + 10)), 1);
  }
  try {
    LoadCheckpoint(dir);
    FAIL() << "a damaged undo record was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot be rolled back to write 1"), std::string::npos) << e.what();
  }
  // Missing, and set aside.
  ASSERT_EQ(rename(path.c_str(), InvalidCheckpointPath(dir).c_str()), 0);
  try {
    LoadCheckpoint(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("can no longer be resumed"), std::string::npos) << e.what();
  }
  EXPECT_THROW(LoadCheckpoint(ScratchDir("ckempty")), Error);
}

// The mirror sends a checkpoint between the writes before and after it; the replica
// stores it at that position, says so in its state file, and journals what the
// later writes overwrite.
TEST(DrCheckpoint, MirrorAndReplicaKeepTheCheckpointAtItsPosition) {
  const std::string dir = ScratchDir("ckdr");
  const std::string src = dir + "/src.img", rdir = dir + "/replica";
  MakeImage(src, kDisk);
  auto clock = MakeSystemClock();
  std::optional<ReplicaThread> r;
  r.emplace(rdir);
  MirrorOptions o;
  o.disk_path = src;
  o.report = 0ns;
  o.heartbeat = 10ms;
  o.retry = 50ms;
  DiskMirror m(MakeChannelTarget(r->replica->address()), o, *clock);
  FakeDisk disk(src, m);
  m.start();
  ASSERT_TRUE(m.wait_synced(20s)) << m.status().last_error;
  EXPECT_FALSE(m.queue_checkpoint([] { return std::string("wrong position"); }, 99)) << "the head is not at write 99";
  std::mt19937_64 rng(5);
  for (int i = 0; i < 40; ++i) disk.write((rng() % 200) * 4096, std::vector<uint8_t>(4096, uint8_t(rng())));
  disk.flush();
  // No write in progress (this thread is the VM): the head is write 41.
  const std::vector<uint8_t> at_s = ReadAll(src);
  ASSERT_TRUE(m.queue_checkpoint([] { return std::string("state at 41"); }, 41));
  for (int i = 0; i < 40; ++i) disk.write((rng() % 200) * 4096, std::vector<uint8_t>(4096, uint8_t(rng())));
  disk.flush();
  ASSERT_TRUE(m.wait_synced(20s)) << m.status().last_error;
  EXPECT_EQ(m.status().checkpoints_sent, 1u);
  EXPECT_EQ(m.status().last_checkpoint_seq, 41u);
  std::this_thread::sleep_for(100ms);  // a state file later
  std::map<std::string, std::string> st = ReadReplicaState(rdir);
  EXPECT_EQ(st["checkpoint"], "yes");
  EXPECT_EQ(st["checkpoint_seq"], "41");
  EXPECT_EQ(st["durable_seq"], "82");
  EXPECT_NE(st["checkpoint_undo_bytes"], "0");
  EXPECT_EQ(ReadAll(src), ReadAll(DiskImagePath(rdir))) << "the image is still the newest";
  r.reset();  // the replica stopped: nothing else writes its image
  LoadedCheckpoint c = LoadCheckpoint(rdir);
  EXPECT_EQ(c.header.seq, 41u);
  const std::vector<uint8_t> raw = DecompressState(c.state, c.header.raw_bytes);
  EXPECT_EQ(std::string(raw.begin(), raw.end()), "state at 41");
  RollbackDisk(rdir, c, DiskImagePath(rdir));
  EXPECT_TRUE(ReadAll(DiskImagePath(rdir)) == at_s) << "the rollback did not give the image at the checkpoint";
}

// The replica restarts over its directory while the source writes on (a new source
// connection catches up by block hashes): the reopened journal saves what the
// catch-up overwrites, and a rollback still gives the image at the checkpoint.
TEST(DrCheckpoint, ARestartedReplicaJournalsTheCatchUp) {
  const std::string dir = ScratchDir("ckre");
  const std::string src = dir + "/src.img", rdir = dir + "/replica";
  MakeImage(src, kDisk);
  auto clock = MakeSystemClock();
  MirrorOptions o;
  o.disk_path = src;
  o.report = 0ns;
  o.heartbeat = 10ms;
  o.retry = 50ms;
  std::mt19937_64 rng(9);
  std::vector<uint8_t> at_s;
  {
    ReplicaThread r(rdir);
    DiskMirror m(MakeChannelTarget(r.replica->address()), o, *clock);
    FakeDisk disk(src, m);
    m.start();
    ASSERT_TRUE(m.wait_synced(20s)) << m.status().last_error;
    for (int i = 0; i < 20; ++i) disk.write((rng() % 100) * 4096, std::vector<uint8_t>(4096, uint8_t(rng())));
    at_s = ReadAll(src);
    ASSERT_TRUE(m.queue_checkpoint([] { return std::string("s"); }, 20));
    for (int i = 0; i < 10; ++i) disk.write((rng() % 100) * 4096, std::vector<uint8_t>(4096, uint8_t(rng())));
    ASSERT_TRUE(m.wait_synced(20s)) << m.status().last_error;
    m.stop();
  }
  // Written while no replica ran: only a catch-up brings these over.
  {
    UniqueFd fd(open(src.c_str(), O_WRONLY));
    for (uint64_t b : {3u, 150u, 151u, 255u}) {
      std::vector<uint8_t> data(4096, uint8_t(b));
      ASSERT_EQ(pwrite(fd.get(), data.data(), data.size(), off_t(b * 4096)), 4096);
    }
  }
  {
    ReplicaThread r(rdir);
    DiskMirror m(MakeChannelTarget(r.replica->address()), o, *clock);
    m.start();
    ASSERT_TRUE(m.wait_synced(20s)) << m.status().last_error;
    EXPECT_EQ(ReadAll(src), ReadAll(DiskImagePath(rdir)));
    m.stop();
  }
  LoadedCheckpoint c = LoadCheckpoint(rdir);
  EXPECT_EQ(c.header.seq, 20u);
  RollbackDisk(rdir, c, DiskImagePath(rdir));
  EXPECT_TRUE(ReadAll(DiskImagePath(rdir)) == at_s) << "the catch-up's blocks were not journaled";
}

}  // namespace
}  // namespace ftvm::storage
