// LogWriter against real files: create/overwrite rules, buffering, compression,
// positions, payload validation, and a full disk (a 64 KiB tmpfs) reported with the
// path, the offset and ENOSPC while the file stays a clean log.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mount.h>

#include <fstream>
#include <iterator>
#include <random>

#include "common/error.h"
#include "tests/eventlog/test_util.h"

namespace ftvm::eventlog {
namespace {

using testing::SampleHeader;
using testing::TempDir;
using ::testing::HasSubstr;

TEST(LogWriter, RoundTripThroughAFile) {
  TempDir dir;
  const std::string path = dir.file("a.ftlog");
  {
    LogWriter w = LogWriter::Create(path, SampleHeader());
    ASSERT_TRUE(w.append(RecordType::kClockRead, 3, EncodeClockRead(99)).ok());
    ASSERT_TRUE(w.append(RecordType::kInterrupt, 3, EncodeInterrupt(0x30)).ok());
    ASSERT_TRUE(w.append(RecordType::kDiskCompletion, 8, EncodeDiskCompletion({0, 2})).ok());
    EXPECT_EQ(w.records(), 3u);
    EXPECT_EQ(w.flushed_records(), 0u);  // still buffered
    ASSERT_TRUE(w.sync().ok());
    EXPECT_EQ(w.flushed_records(), 3u);
    EXPECT_EQ(w.flushed_bytes(), w.size());
    ASSERT_TRUE(w.append(RecordType::kEnd, 8, EncodeEnd(testing::MakeDigest(1))).ok());
    // The destructor flushes the last record.
  }
  LogReader r = LogReader::OpenFile(path);
  EXPECT_EQ(r.header().vm().app(), "kvstore");
  EXPECT_EQ(r.header().format_version(), kFormatVersion);
  Record rec;
  ASSERT_TRUE(r.next(rec).is_record());
  EXPECT_EQ(DecodeClockRead(rec.payload), 99u);
  EXPECT_EQ(rec.stored_bytes, 16u);  // 4-byte header, 8-byte payload, CRC
  ASSERT_TRUE(r.next(rec).is_record());
  EXPECT_EQ(DecodeInterrupt(rec.payload), 0x30);
  ASSERT_TRUE(r.next(rec).is_record());
  EXPECT_EQ(DecodeDiskCompletion(rec.payload), (DiskCompletion{0, 2}));
  EXPECT_EQ(rec.position, 8u);
  ASSERT_TRUE(r.next(rec).is_record());
  EXPECT_EQ(rec.type, RecordType::kEnd);
  EXPECT_TRUE(r.next(rec).is_end());
}

TEST(LogWriter, FillsVersionFields) {
  TempDir dir;
  LogHeader h = SampleHeader();
  h.clear_ftvm_version();
  h.set_created_unix_ns(0);
  h.set_format_version(77);
  { LogWriter w = LogWriter::Create(dir.file("v.ftlog"), h); }
  LogReader r = LogReader::OpenFile(dir.file("v.ftlog"));
  EXPECT_EQ(r.header().format_version(), kFormatVersion);
  EXPECT_FALSE(r.header().ftvm_version().empty());
  EXPECT_GT(r.header().created_unix_ns(), 1600000000ull * 1000000000ull);
}

TEST(LogWriter, RefusesToOverwriteUnlessAsked) {
  TempDir dir;
  const std::string path = dir.file("x.ftlog");
  { LogWriter w = LogWriter::Create(path, SampleHeader()); }
  try {
    LogWriter::Create(path, SampleHeader());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(path));
    EXPECT_THAT(e.what(), HasSubstr("already exists"));
  }
  WriterOptions o;
  o.overwrite = true;
  LogWriter w = LogWriter::Create(path, SampleHeader(), o);
  ASSERT_TRUE(w.close().ok());
  LogReader r = LogReader::OpenFile(path);
  Record rec;
  EXPECT_TRUE(r.next(rec).is_end());
}

TEST(LogWriter, CreateErrorNamesThePath) {
  try {
    LogWriter::Create("/nonexistent-dir/y.ftlog", SampleHeader());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent-dir/y.ftlog"));
    EXPECT_THAT(e.what(), HasSubstr("No such file or directory"));
  }
}

TEST(LogWriter, PositionsBackwardsAndBadPayloadsAreRejectedWithoutStopping) {
  TempDir dir;
  LogWriter w = LogWriter::Create(dir.file("p.ftlog"), SampleHeader());
  ASSERT_TRUE(w.append(RecordType::kInterrupt, 10, EncodeInterrupt(1)).ok());
  Status s = w.append(RecordType::kInterrupt, 9, EncodeInterrupt(2));
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("position 9 goes backwards (last position 10)"));
  const uint8_t three[3] = {};
  s = w.append(RecordType::kInterrupt, 10, three);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("Interrupt payload of 3 bytes, expected 1"));
  s = w.append(RecordType{99}, 10, three);
  EXPECT_THAT(s.message(), HasSubstr("unknown record type 99"));
  EXPECT_FALSE(w.failed());
  ASSERT_TRUE(w.append(RecordType::kInterrupt, 10, EncodeInterrupt(3)).ok());
  EXPECT_EQ(w.records(), 2u);
  ASSERT_TRUE(w.close().ok());
  EXPECT_FALSE(w.append(RecordType::kInterrupt, 11, EncodeInterrupt(3)).ok());
}

TEST(LogWriter, CompressedCheckpointRoundTrips) {
  TempDir dir;
  const std::string path = dir.file("c.ftlog");
  std::vector<uint8_t> zeros(1 << 20, 0);
  std::vector<uint8_t> mixed(256 << 10, 0);
  for (size_t i = 0; i < mixed.size(); i += 4096) mixed[i] = static_cast<uint8_t>(i >> 12);
  std::vector<uint8_t> noise(64 << 10);
  std::mt19937_64 rng(1);
  for (auto& b : noise) b = static_cast<uint8_t>(rng());
  {
    LogWriter w = LogWriter::Create(path, SampleHeader());
    ASSERT_TRUE(w.append(RecordType::kCheckpoint, 1, zeros, /*compress=*/true).ok());
    ASSERT_TRUE(w.append(RecordType::kCheckpoint, 2, mixed, true).ok());
    ASSERT_TRUE(w.append(RecordType::kRngData, 3, noise, true).ok());
    ASSERT_TRUE(w.close().ok());
  }
  LogReader r = LogReader::OpenFile(path);
  Record rec;
  ASSERT_TRUE(r.next(rec).is_record());
  EXPECT_EQ(rec.flags, kFlagZstd);
  EXPECT_LT(rec.stored_bytes, 1024u) << "1 MiB of zeros should compress to well under 1 KiB";
  EXPECT_TRUE(std::equal(rec.payload.begin(), rec.payload.end(), zeros.begin(), zeros.end()));
  ASSERT_TRUE(r.next(rec).is_record());
  EXPECT_EQ(rec.flags, kFlagZstd | kFlagDelta) << "a checkpoint after a checkpoint is compressed against it";
  EXPECT_TRUE(std::equal(rec.payload.begin(), rec.payload.end(), mixed.begin(), mixed.end()));
  ASSERT_TRUE(r.next(rec).is_record());
  EXPECT_EQ(rec.flags, 0) << "incompressible data is stored as is";
  EXPECT_EQ(rec.stored_bytes, EncodedRecordBytes(noise.size(), 3));
  EXPECT_TRUE(std::equal(rec.payload.begin(), rec.payload.end(), noise.begin(), noise.end()));
  EXPECT_TRUE(r.next(rec).is_end());
}

// A checkpoint that differs from the one before in a few bytes costs those bytes,
// not its size; read without the one before, it is an error that says so.
TEST(LogWriter, DeltaCheckpointCostsWhatChanged) {
  TempDir dir;
  const std::string path = dir.file("d.ftlog");
  std::vector<uint8_t> first(64 << 10);
  std::mt19937_64 rng(3);
  for (auto& b : first) b = static_cast<uint8_t>(rng());
  std::vector<uint8_t> second = first;
  for (size_t i = 0; i < second.size(); i += 8192) second[i] ^= 0x5a;
  uint64_t first_end = 0;
  {
    LogWriter w = LogWriter::Create(path, SampleHeader());
    ASSERT_TRUE(w.append(RecordType::kCheckpoint, 1, first, true).ok());
    first_end = w.size();
    ASSERT_TRUE(w.append(RecordType::kCheckpoint, 2, second, true).ok());
    ASSERT_TRUE(w.close().ok());
  }
  {
    LogReader r = LogReader::OpenFile(path);
    Record rec;
    ASSERT_TRUE(r.next(rec).is_record());
    EXPECT_EQ(rec.flags, 0) << "random bytes do not compress on their own";
    ASSERT_TRUE(r.next(rec).is_record());
    EXPECT_EQ(rec.flags, kFlagZstd | kFlagDelta);
    EXPECT_LT(rec.stored_bytes, 512u) << "8 changed bytes in 64 KiB";
    EXPECT_TRUE(std::equal(rec.payload.begin(), rec.payload.end(), second.begin(), second.end()));
  }
  // The same log without its first checkpoint: the header, then the delta record.
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LogReader whole = LogReader::OpenFile(path);
  const uint64_t header_end = whole.offset();
  std::vector<char> cut(bytes.begin(), bytes.begin() + long(header_end));
  cut.insert(cut.end(), bytes.begin() + long(first_end), bytes.end());
  const std::string cut_path = dir.file("cut.ftlog");
  std::ofstream(cut_path, std::ios::binary).write(cut.data(), long(cut.size()));
  LogReader r = LogReader::OpenFile(cut_path);
  Record rec;
  ReadResult res = r.next(rec);
  EXPECT_EQ(res.code, ReadCode::kDecompress);
  EXPECT_THAT(res.message, HasSubstr("without the checkpoint before it"));
  EXPECT_THAT(res.message, HasSubstr("offset " + std::to_string(header_end)));
}

TEST(LogWriter, RecordsLargerThanTheBufferGoStraightOut) {
  TempDir dir;
  const std::string path = dir.file("l.ftlog");
  WriterOptions o;
  o.buffer_bytes = 4096;
  std::vector<uint8_t> blob(100000, 0x5a);
  {
    LogWriter w = LogWriter::Create(path, SampleHeader(), o);
    for (uint64_t i = 0; i < 1000; ++i) {
      ASSERT_TRUE(w.append(RecordType::kClockRead, i, EncodeClockRead(i)).ok());
      if (i % 100 == 0) {
        ASSERT_TRUE(w.append(RecordType::kCheckpoint, i, blob).ok());
      }
    }
    ASSERT_TRUE(w.close().ok());
  }
  LogReader r = LogReader::OpenFile(path);
  Record rec;
  uint64_t clocks = 0, checkpoints = 0;
  ReadResult res;
  while ((res = r.next(rec)).is_record()) {
    if (rec.type == RecordType::kClockRead) {
      ASSERT_EQ(DecodeClockRead(rec.payload), clocks);
      ++clocks;
    } else {
      ASSERT_EQ(rec.payload.size(), blob.size());
      ++checkpoints;
    }
  }
  EXPECT_TRUE(res.is_end()) << res.message;
  EXPECT_EQ(clocks, 1000u);
  EXPECT_EQ(checkpoints, 10u);
}

// A real full disk: a 64 KiB tmpfs mounted for this test (needs root; skipped
// otherwise).
class SmallTmpfs {
 public:
  SmallTmpfs() {
    if (::mount("ftvm-enospc", dir_.path().c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=64k") == 0) {
      mounted_ = true;
    }
  }
  ~SmallTmpfs() {
    if (mounted_) ::umount2(dir_.path().c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  std::string file(const std::string& name) const { return dir_.file(name); }

 private:
  TempDir dir_;
  bool mounted_ = false;
};

TEST(LogWriter, FullDiskIsReportedAndTheFileStaysClean) {
  SmallTmpfs fs;
  if (!fs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs (not root?)";
  const std::string path = fs.file("full.ftlog");
  WriterOptions o;
  o.buffer_bytes = 4096;
  LogWriter w = LogWriter::Create(path, SampleHeader(), o);
  Status failure = Status::Ok();
  uint64_t pos = 0;
  for (; pos < 100000 && failure.ok(); ++pos) {
    failure = w.append(RecordType::kClockRead, pos, EncodeClockRead(pos));
  }
  ASSERT_FALSE(failure.ok()) << "64 KiB tmpfs never filled";
  EXPECT_EQ(failure.err(), ENOSPC);
  EXPECT_THAT(failure.message(), HasSubstr(path));
  EXPECT_THAT(failure.message(), HasSubstr("No space left on device"));
  EXPECT_THAT(failure.message(), HasSubstr("write at offset "));
  EXPECT_THAT(failure.message(), HasSubstr("cut back to offset " + std::to_string(w.flushed_bytes())));
  EXPECT_TRUE(w.failed());
  // Sticky: nothing more is accepted, and flush/sync say so too.
  EXPECT_FALSE(w.append(RecordType::kClockRead, pos, EncodeClockRead(1)).ok());
  EXPECT_EQ(w.flush().err(), ENOSPC);
  EXPECT_EQ(w.sync().err(), ENOSPC);

  // The file holds exactly the records flushed before the failure, and ends cleanly.
  const uint64_t flushed = w.flushed_records();
  EXPECT_GT(flushed, 1000u);
  EXPECT_EQ(std::filesystem::file_size(path), w.flushed_bytes());
  LogReader r = LogReader::OpenFile(path);
  Record rec;
  uint64_t n = 0;
  ReadResult res;
  while ((res = r.next(rec)).is_record()) {
    ASSERT_EQ(DecodeClockRead(rec.payload), n);
    ++n;
  }
  EXPECT_TRUE(res.is_end()) << res.message;
  EXPECT_EQ(n, flushed);
}

}  // namespace
}  // namespace ftvm::eventlog
