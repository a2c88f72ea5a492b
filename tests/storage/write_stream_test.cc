// The write stream's batches and the applier: records come back as encoded; a batch
// that is damaged, cut short, of another format version or miscounted is refused by
// name; the applier applies only in order (a gap or a repeat is refused and leaves
// the image as it was), makes flushes durable, marks a catch-up inconsistent until
// its end, and stops (saying why, keeping its prefix) when the disk is full.
#include <gtest/gtest.h>
#include <sys/mount.h>

#include <cstring>

#include "common/clock.h"
#include "storage/disk_applier.h"
#include "storage/write_stream.h"
#include "tests/storage/test_util.h"

namespace ftvm::storage {
namespace {

using testutil::ReadAll;
using testutil::ScratchDir;

std::vector<uint8_t> Bytes(size_t n, uint8_t v) { return std::vector<uint8_t>(n, v); }

// A batch of records, `first_seq` for its first write/flush.
struct Builder {
  std::vector<uint8_t> buf = std::vector<uint8_t>(kBatchHeaderBytes);
  uint16_t count = 0;
  Builder& write(uint64_t offset, const std::vector<uint8_t>& data) {
    std::span<const uint8_t> part(data);
    AppendRecord(buf, RecordKind::kWrite, count, offset, data.size(), std::span(&part, 1));
    ++count;
    return *this;
  }
  Builder& block(uint64_t offset, const std::vector<uint8_t>& data) {
    std::span<const uint8_t> part(data);
    AppendRecord(buf, RecordKind::kBlock, 0, offset, data.size(), std::span(&part, 1));
    ++count;
    return *this;
  }
  Builder& mark(RecordKind k, uint64_t a = 0, uint64_t b = 0) {
    AppendRecord(buf, k, 0, a, b);
    ++count;
    return *this;
  }
  std::vector<uint8_t> seal(uint64_t first_seq, uint64_t head_seq = 0) {
    SealBatch(buf, BatchHeader{count, first_seq, 0, 1000000, head_seq, 0, 2000000});
    return buf;
  }
};

TEST(WriteStream, RoundTrip) {
  std::vector<uint8_t> b = Builder().write(4096, Bytes(512, 7)).mark(RecordKind::kFlush).write(0, Bytes(4096, 9)).seal(5, 7);
  DecodedBatch d;
  ASSERT_EQ(DecodeBatch(b, d), "");
  EXPECT_EQ(d.header.first_seq, 5u);
  EXPECT_EQ(d.header.head_seq, 7u);
  ASSERT_EQ(d.records.size(), 3u);
  EXPECT_EQ(d.records[0].kind, RecordKind::kWrite);
  EXPECT_EQ(d.records[0].a, 4096u);
  EXPECT_EQ(d.records[0].data.size(), 512u);
  EXPECT_EQ(d.records[0].data[0], 7);
  EXPECT_EQ(d.records[1].kind, RecordKind::kFlush);
  EXPECT_EQ(d.records[2].delta_us, 2u);
}

TEST(WriteStream, RefusesDamagedTruncatedAndOtherVersions) {
  const std::vector<uint8_t> good = Builder().write(0, Bytes(100, 1)).seal(1);
  DecodedBatch d;
  std::vector<uint8_t> flipped = good;
  flipped[kBatchHeaderBytes + 30] ^= 0x10;
  EXPECT_NE(DecodeBatch(flipped, d).find("CRC"), std::string::npos);

  // Cut short: the record's data is missing (CRC recomputed so the length check speaks).
  std::vector<uint8_t> cut(good.begin(), good.end() - 40);
  BatchHeader h{1, 1, 0, 0, 0, 0, 0};
  SealBatch(cut, h);
  EXPECT_NE(DecodeBatch(cut, d).find("only"), std::string::npos) << DecodeBatch(cut, d);
  std::vector<uint8_t> tiny(good.begin(), good.begin() + 20);
  EXPECT_NE(DecodeBatch(tiny, d).find("shorter than"), std::string::npos);

  std::vector<uint8_t> other = good;
  other[0] = kStreamFormatVersion + 1;
  EXPECT_NE(DecodeBatch(other, d).find("stream format 2"), std::string::npos) << DecodeBatch(other, d);

  // Byte 1 lies outside the CRC (found by fuzz/storage_stream_fuzz.cc).
  std::vector<uint8_t> reserved = good;
  reserved[1] = 0xc1;
  EXPECT_NE(DecodeBatch(reserved, d).find("reserved byte 193"), std::string::npos) << DecodeBatch(reserved, d);

  std::vector<uint8_t> miscount = good;
  SealBatch(miscount, BatchHeader{3, 1, 0, 0, 0, 0, 0});
  EXPECT_NE(DecodeBatch(miscount, d).find("says 3 records"), std::string::npos);

  std::vector<uint8_t> unknown = good;
  unknown[kBatchHeaderBytes] = 99;
  SealBatch(unknown, BatchHeader{1, 1, 0, 0, 0, 0, 0});
  EXPECT_NE(DecodeBatch(unknown, d).find("unknown kind 99"), std::string::npos);
}

TEST(WriteStream, AckRoundTripAndVersion) {
  Ack a{10, 8, 4096, Ack::State::kStopped, "disk full"};
  std::vector<uint8_t> e = EncodeAck(a);
  Ack b;
  ASSERT_EQ(DecodeAck(e, b), "");
  EXPECT_EQ(b.durable_seq, 8u);
  EXPECT_EQ(b.reason, "disk full");
  e[0] = 9;
  EXPECT_NE(DecodeAck(e, b).find("format 9"), std::string::npos);
}

// Decoded records point into their batch: `keep` holds it while they are used.
TEST(DiskApplier, AppliesInOrderAndRefusesGaps) {
  std::vector<uint8_t> keep;
  const std::string dir = ScratchDir("apply");
  const std::string img = dir + "/disk.img";
  DiskApplier ap(img, 64 * 1024);
  DecodedBatch d;
  ASSERT_EQ(DecodeBatch(keep = Builder().write(0, Bytes(4096, 1)).write(4096, Bytes(4096, 2)).seal(1, 2), d), "");
  ASSERT_EQ(ap.apply(d), "");
  EXPECT_EQ(ap.state().applied_seq, 2u);
  EXPECT_EQ(ap.state().durable_seq, 0u);  // no flush yet
  // A gap: write 4 before 3 would reorder the guest's writes.
  ASSERT_EQ(DecodeBatch(keep = Builder().write(0, Bytes(4096, 9)).seal(4), d), "");
  EXPECT_NE(ap.apply(d).find("applied up to 2"), std::string::npos);
  // A repeat is refused too.
  ASSERT_EQ(DecodeBatch(keep = Builder().write(0, Bytes(4096, 9)).seal(2), d), "");
  EXPECT_NE(ap.apply(d), "");
  std::vector<uint8_t> img_bytes = ReadAll(img);
  EXPECT_EQ(img_bytes[0], 1);
  EXPECT_EQ(img_bytes[4096], 2);
  // A flush makes it durable, and the recovery point is the source's time then.
  ASSERT_EQ(DecodeBatch(keep = Builder().write(8192, Bytes(4096, 3)).mark(RecordKind::kFlush).seal(3, 4), d), "");
  ASSERT_EQ(ap.apply(d), "");
  EXPECT_TRUE(ap.flush_pending());
  ASSERT_EQ(ap.sync(), "");
  EXPECT_EQ(ap.state().durable_seq, 4u);
  EXPECT_EQ(ap.state().durable_bytes, 4096u);  // batch byte positions start at 0 in this test
  EXPECT_EQ(ap.state().recovery_point_wall_ns, 2000000u);  // caught up with the head
  // Outside the disk: refused.
  ASSERT_EQ(DecodeBatch(keep = Builder().write(64 * 1024 - 100, Bytes(4096, 3)).seal(5), d), "");
  EXPECT_NE(ap.apply(d).find("outside"), std::string::npos);
}

TEST(DiskApplier, CatchUpIsInconsistentUntilItsEnd) {
  std::vector<uint8_t> keep;
  const std::string dir = ScratchDir("catchup");
  DiskApplier ap(dir + "/disk.img", 64 * 1024);
  DecodedBatch d;
  ASSERT_EQ(DecodeBatch(keep = Builder().mark(RecordKind::kCatchupBegin).block(0, Bytes(4096, 5)).seal(0), d), "");
  ASSERT_EQ(ap.apply(d), "");
  EXPECT_FALSE(ap.state().consistent);
  ASSERT_EQ(ap.sync(), "");
  EXPECT_EQ(ap.state().durable_seq, 0u);  // durable, but no moment of the source's disk
  // A guest write inside a catch-up is a protocol error.
  ASSERT_EQ(DecodeBatch(keep = Builder().write(0, Bytes(10, 1)).seal(1), d), "");
  EXPECT_NE(ap.apply(d), "");
  ASSERT_EQ(DecodeBatch(keep = Builder().block(4096, Bytes(4096, 6)).mark(RecordKind::kCatchupEnd, 41, 9999).seal(0, 41), d), "");
  ASSERT_EQ(ap.apply(d), "");
  EXPECT_TRUE(ap.state().consistent);
  ASSERT_EQ(ap.sync(), "");
  EXPECT_EQ(ap.state().durable_seq, 41u);
  EXPECT_EQ(ap.state().durable_bytes, 9999u);
  // The stream continues right after the catch-up's sequence number.
  ASSERT_EQ(DecodeBatch(keep = Builder().write(0, Bytes(10, 1)).seal(42), d), "");
  EXPECT_EQ(ap.apply(d), "");
}

TEST(DiskApplier, RefusesAnImageOfAnotherSize) {
  const std::string dir = ScratchDir("size");
  testutil::MakeImage(dir + "/disk.img", 8192);
  EXPECT_THROW(DiskApplier(dir + "/disk.img", 4096), Error);
}

// A full filesystem under the replica: it stops applying, says why, and keeps the
// prefix it had made durable. Needs root (a small tmpfs).
TEST(DiskApplier, DiskFullStopsAndKeepsThePrefix) {
  std::vector<uint8_t> keep;
  const std::string dir = ScratchDir("full");
  if (mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=256k") != 0) GTEST_SKIP() << "cannot mount a tmpfs: " << std::strerror(errno);
  struct Unmount {
    std::string d;
    ~Unmount() { umount2(d.c_str(), MNT_DETACH); }
  } unmount{dir};
  DiskApplier ap(dir + "/disk.img", 4u << 20);  // sparse: 4 MiB on a 256 KiB filesystem
  DecodedBatch d;
  ASSERT_EQ(DecodeBatch(keep = Builder().write(0, Bytes(4096, 1)).mark(RecordKind::kFlush).seal(1, 2), d), "");
  ASSERT_EQ(ap.apply(d), "");
  ASSERT_EQ(ap.sync(), "");
  ASSERT_EQ(ap.state().durable_seq, 2u);
  uint64_t seq = 3;
  for (int i = 1; i < 200 && !ap.state().stopped; ++i) {
    ASSERT_EQ(DecodeBatch(keep = Builder().write(uint64_t(i) * 16384, Bytes(16384, 2)).mark(RecordKind::kFlush).seal(seq), d), "");
    ASSERT_EQ(ap.apply(d), "");
    (void)ap.sync();
    if (!ap.state().stopped) seq += 2;
  }
  ASSERT_TRUE(ap.state().stopped);
  EXPECT_NE(ap.state().stop_reason.find("No space left"), std::string::npos) << ap.state().stop_reason;
  EXPECT_EQ(ap.state().durable_seq, seq - 1);  // everything before the refused write
  EXPECT_TRUE(ap.state().consistent);
  // Later batches are ignored, not applied out of order.
  ASSERT_EQ(DecodeBatch(keep = Builder().write(0, Bytes(4096, 7)).seal(seq + 5), d), "");
  EXPECT_EQ(ap.apply(d), "");
  EXPECT_EQ(ReadAll(dir + "/disk.img")[0], 1);
}

}  // namespace
}  // namespace ftvm::storage
