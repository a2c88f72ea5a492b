// The reader's validation: every record type round-trips, the header round-trips,
// and every kind of damage (wrong magic or version, bad CRCs, any single flipped byte,
// truncation at any offset, unknown types, positions going backwards, bad compressed
// payloads) is reported with the offset of the bad record.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "common/error.h"
#include "eventlog/crc32c.h"
#include "tests/eventlog/test_util.h"

namespace ftvm::eventlog {
namespace {

using testing::SampleHeader;
using testing::SmallLog;
using ::testing::HasSubstr;

std::vector<uint8_t> Copy(std::span<const uint8_t> s) { return {s.begin(), s.end()}; }

// Reads all records; returns the final result (end or error).
ReadResult ReadAll(LogReader& r, std::vector<Record>* records = nullptr,
                   std::vector<std::vector<uint8_t>>* payloads = nullptr) {
  Record rec;
  for (;;) {
    ReadResult res = r.next(rec);
    if (!res.is_record()) return res;
    if (records) records->push_back(rec);
    if (payloads) payloads->push_back(Copy(rec.payload));
  }
}

std::string OpenError(std::span<const uint8_t> bytes) {
  try {
    LogReader::OpenBuffer(bytes);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(EventLogFormat, RecordSizesFollowTheVarints) {
  EXPECT_EQ(kMaxRecordHeaderBytes, 16u);
  EXPECT_EQ(kMinRecordOverhead, 8u);
  std::vector<uint8_t> out;
  // length 1 + type 1 + flags 1 + position 1 + payload 8 + CRC 4.
  AppendRecord(out, RecordType::kClockRead, 0, 5, EncodeClockRead(1));
  EXPECT_EQ(out.size(), 16u);
  EXPECT_EQ(out.size(), EncodedRecordBytes(8, 5));
  out.clear();
  // length 1 + type 1 + flags 1 + position 2 + payload 1 + CRC 4.
  AppendRecord(out, RecordType::kInterrupt, 0, 300, EncodeInterrupt(3));
  EXPECT_EQ(out.size(), 10u);
  EXPECT_EQ(RecordOverhead(1, 300), 9u);
  out.clear();
  const std::vector<uint8_t> frame(1514, 0xee);
  AppendRecord(out, RecordType::kPacketRx, 0, 1'000'000, frame);
  EXPECT_EQ(out.size(), frame.size() + 2 + 2 + 3 + 4);
  EXPECT_EQ(RecordOverhead(kMaxPayloadBytes, UINT64_MAX), kMaxRecordHeaderBytes + kRecordCrcBytes);
}

TEST(EventLogFormat, VarintsHaveOneEncoding) {
  for (uint64_t v : {0ull, 1ull, 127ull, 128ull, 16383ull, 16384ull, (1ull << 28) - 1, 1ull << 63, ~0ull}) {
    uint8_t buf[kMaxVarintBytes];
    const size_t n = static_cast<size_t>(PutVarint(buf, v) - buf);
    EXPECT_EQ(n, VarintBytes(v)) << v;
    size_t at = 0;
    uint64_t back = 0;
    ASSERT_EQ(GetVarint(std::span<const uint8_t>(buf, n), at, back), VarintResult::kOk) << v;
    EXPECT_EQ(back, v);
    EXPECT_EQ(at, n);
    // Every proper prefix is cut short, not wrong.
    for (size_t cut = 0; cut < n; ++cut) {
      at = 0;
      EXPECT_EQ(GetVarint(std::span<const uint8_t>(buf, cut), at, back), VarintResult::kTruncated) << v;
    }
  }
  EXPECT_EQ(VarintBytes(127), 1u);
  EXPECT_EQ(VarintBytes(128), 2u);
  EXPECT_EQ(VarintBytes(~0ull), kMaxVarintBytes);
  auto get = [](std::vector<uint8_t> bytes, size_t max = kMaxVarintBytes) {
    size_t at = 0;
    uint64_t v = 0;
    return GetVarint(bytes, at, v, max);
  };
  EXPECT_EQ(get({0x80, 0x00}), VarintResult::kOverlong);      // 0 in two bytes
  EXPECT_EQ(get({0x85, 0x80, 0x00}), VarintResult::kOverlong);  // 5 in three
  EXPECT_EQ(get({0x80, 0x80, 0x80, 0x80, 0x01}, 4), VarintResult::kTooLong);
  EXPECT_EQ(get({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}), VarintResult::kTooLong);
  EXPECT_EQ(get(std::vector<uint8_t>(11, 0x80)), VarintResult::kTooLong);
}

TEST(EventLogFormat, ByteLayout) {
  std::vector<uint8_t> out;
  AppendRecord(out, RecordType::kClockRead, 0, 0x0102030405060708ull,
               EncodeClockRead(0xa1a2a3a4a5a6a7a8ull));
  const std::vector<uint8_t> want = {8, 1, 0,                                            // length, type, flags
                                     0x88, 0x8e, 0x98, 0xa8, 0xc0, 0xe0, 0x80, 0x81, 0x01,  // position
                                     0xa8, 0xa7, 0xa6, 0xa5, 0xa4, 0xa3, 0xa2, 0xa1};     // payload
  ASSERT_EQ(out.size(), want.size() + kRecordCrcBytes);
  EXPECT_EQ(std::vector<uint8_t>(out.begin(), out.begin() + long(want.size())), want);
  EXPECT_EQ(GetLe32(&out[want.size()]), Crc32c(std::span<const uint8_t>(out).first(want.size())));
}

TEST(EventLogFormat, EveryRecordTypeRoundTrips) {
  std::vector<uint8_t> log = SmallLog();
  LogReader r = LogReader::OpenBuffer(log);
  std::vector<Record> recs;
  std::vector<std::vector<uint8_t>> payloads;
  ReadResult end = ReadAll(r, &recs, &payloads);
  ASSERT_TRUE(end.is_end()) << end.message;
  ASSERT_EQ(recs.size(), 8u);
  EXPECT_EQ(recs[0].type, RecordType::kClockRead);
  EXPECT_EQ(DecodeClockRead(payloads[0]), 0x1122334455667788ull);
  EXPECT_EQ(recs[0].position, 1u);
  EXPECT_EQ(recs[1].type, RecordType::kRngData);
  EXPECT_EQ(payloads[1], (std::vector<uint8_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(recs[2].type, RecordType::kPacketRx);
  ASSERT_TRUE(DecodePacketRx(payloads[2]));
  EXPECT_EQ(DecodePacketRx(payloads[2])->size(), 15u);
  EXPECT_EQ(recs[3].type, RecordType::kDiskCompletion);
  EXPECT_EQ(DecodeDiskCompletion(payloads[3]), (DiskCompletion{1, 3}));
  EXPECT_EQ(recs[4].type, RecordType::kInterrupt);
  EXPECT_EQ(DecodeInterrupt(payloads[4]), 0x21);
  EXPECT_EQ(recs[4].position, 9u);
  EXPECT_EQ(recs[5].type, RecordType::kCheckpoint);
  EXPECT_EQ(payloads[5], (std::vector<uint8_t>{'c', 'k', 'p', 't'}));
  EXPECT_EQ(recs[6].type, RecordType::kVerify);
  EXPECT_EQ(DecodeVerify(payloads[6]),
            (Verify{testing::MakeDigest(3), 17, testing::MakeDigest(4), {}, {1, 2, 3}, {{5, 6}}}));
  EXPECT_EQ(recs[7].type, RecordType::kEnd);
  EXPECT_EQ(DecodeEnd(payloads[7]), testing::MakeDigest(9));
  EXPECT_EQ(recs[7].position, 20u);
  EXPECT_TRUE(r.saw_end_record());
  EXPECT_EQ(r.offset(), log.size());
  // The end is not sticky (a growing file may have more) and stays the end.
  Record rec;
  EXPECT_TRUE(r.next(rec).is_end());
}

TEST(EventLogFormat, DecodersRejectWrongSizes) {
  const uint8_t three[3] = {1, 2, 3};
  EXPECT_FALSE(DecodeClockRead(three));
  EXPECT_FALSE(DecodeInterrupt(three));
  EXPECT_FALSE(DecodeDiskCompletion(three));
  EXPECT_FALSE(DecodeVerify(three));
  EXPECT_FALSE(DecodeEnd(three));
  EXPECT_FALSE(DecodeRngData({}));
  EXPECT_FALSE(DecodePacketRx({}));
  std::vector<uint8_t> jumbo(kMaxPacketBytes + 1);
  EXPECT_FALSE(DecodePacketRx(jumbo));
  EXPECT_TRUE(DecodeCheckpoint({}));
  EXPECT_EQ(PayloadSizeProblem(RecordType::kInterrupt, 3), "Interrupt payload of 3 bytes, expected 1");
}

TEST(EventLogFormat, HeaderRoundTrips) {
  std::vector<uint8_t> log = SmallLog();
  LogReader r = LogReader::OpenBuffer(log);
  LogHeader want = SampleHeader();
  want.set_format_version(kFormatVersion);
  EXPECT_EQ(r.header().SerializeAsString(), want.SerializeAsString());
  EXPECT_EQ(r.header().vm().app_args_size(), 2);
  EXPECT_EQ(r.header().vm().mac(), "52:54:00:12:34:56");
  EXPECT_EQ(r.first_record_offset(), 16 + want.ByteSizeLong() + 4);
}

TEST(EventLogFormat, RejectsWrongMagic) {
  std::vector<uint8_t> log = SmallLog();
  log[3] = 'X';
  EXPECT_THAT(OpenError(log), HasSubstr("not an ftvm event log"));
  std::string text = "hello world, this is not a log at all";
  EXPECT_THAT(OpenError({reinterpret_cast<const uint8_t*>(text.data()), text.size()}),
              HasSubstr("not an ftvm event log"));
  EXPECT_THAT(OpenError({}), HasSubstr("empty file"));
}

TEST(EventLogFormat, RejectsWrongVersion) {
  std::vector<uint8_t> log = SmallLog();
  PutLe32(&log[8], kFormatVersion + 1);
  EXPECT_THAT(OpenError(log), HasSubstr("written by format version " + std::to_string(kFormatVersion + 1) +
                                        "; this ftvm reads version " + std::to_string(kFormatVersion)));
  // Logs of the previous formats (fixed 16-byte record headers) are refused too.
  PutLe32(&log[8], 2);
  EXPECT_THAT(OpenError(log), HasSubstr("written by format version 2; this ftvm reads version 5"));
  PutLe32(&log[8], 1);
  EXPECT_THAT(OpenError(log), HasSubstr("written by format version 1"));
}

TEST(EventLogFormat, GuestResetAndWaitCutRecordsRoundTripWithNoPayload) {
  // GuestReset (format 4) and WaitCut (format 5) records round-trip with no payload,
  // and one with a payload is refused.
  std::vector<uint8_t> log = EncodeFileHeader(SampleHeader());
  AppendRecord(log, RecordType::kClockRead, 0, 1, EncodeClockRead(1));
  AppendRecord(log, RecordType::kGuestReset, 0, 4, {});
  AppendRecord(log, RecordType::kWaitCut, 0, 6, {});
  AppendRecord(log, RecordType::kEnd, 0, 9, EncodeEnd(testing::MakeDigest(1)));
  {
    LogReader r = LogReader::OpenBuffer(log);
    std::vector<Record> recs;
    ASSERT_TRUE(ReadAll(r, &recs).is_end());
    ASSERT_EQ(recs.size(), 4u);
    EXPECT_EQ(recs[1].type, RecordType::kGuestReset);
    EXPECT_EQ(recs[1].position, 4u);
    EXPECT_TRUE(recs[1].payload.empty());
    EXPECT_EQ(recs[2].type, RecordType::kWaitCut);
    EXPECT_EQ(recs[2].position, 6u);
    EXPECT_TRUE(recs[2].payload.empty());
  }
  EXPECT_EQ(RecordTypeName(RecordType::kGuestReset), "GuestReset");
  EXPECT_EQ(RecordTypeName(RecordType::kWaitCut), "WaitCut");
  EXPECT_EQ(PayloadSizeProblem(RecordType::kGuestReset, 1), "GuestReset payload of 1 bytes, expected 0");
  EXPECT_EQ(PayloadSizeProblem(RecordType::kWaitCut, 2), "WaitCut payload of 2 bytes, expected 0");
  // Logs that may hold them say version 5, which an older build refuses when it
  // opens the file, naming both versions (its reader is this one with 4 here); and
  // this build refuses version-4 logs the same way.
  EXPECT_EQ(kFormatVersion, 5u);
  PutLe32(&log[8], 4);
  EXPECT_THAT(OpenError(log), HasSubstr("written by format version 4; this ftvm reads version 5"));
}

TEST(EventLogFormat, RejectsBadHeaderCrc) {
  std::vector<uint8_t> log = SmallLog();
  log[20] ^= 0x40;  // inside the protobuf
  std::string err = OpenError(log);
  EXPECT_THAT(err, HasSubstr("bad header CRC at offset"));
  EXPECT_THAT(err, HasSubstr("<buffer>"));
}

TEST(EventLogFormat, EverySingleByteFlipIsDetected) {
  const std::vector<uint8_t> good = SmallLog();
  for (size_t i = 0; i < good.size(); ++i) {
    for (uint8_t mask : {0x01, 0x80, 0xff}) {
      std::vector<uint8_t> bad = good;
      bad[i] ^= mask;
      bool detected = false;
      try {
        LogReader r = LogReader::OpenBuffer(bad);
        detected = ReadAll(r).is_error();
      } catch (const Error&) {
        detected = true;
      }
      ASSERT_TRUE(detected) << "flip of byte " << i << " with mask " << int(mask) << " undetected";
    }
  }
}

TEST(EventLogFormat, TruncationAtEveryOffsetIsReportedWithItsOffset) {
  std::vector<uint64_t> offsets;
  const std::vector<uint8_t> good = SmallLog(&offsets);
  const uint64_t first = offsets.front();
  for (size_t len = 0; len < good.size(); ++len) {
    std::span<const uint8_t> cut(good.data(), len);
    if (len < first) {
      std::string err = OpenError(cut);
      EXPECT_TRUE(err.find("truncated header at offset 0") != std::string::npos ||
                  (len == 0 && err.find("empty") != std::string::npos))
          << "len " << len << ": " << err;
      continue;
    }
    // The last record boundary at or before `len`, and the record cut there.
    size_t k = 0;
    while (k + 1 < offsets.size() && offsets[k + 1] <= len) ++k;
    const uint64_t boundary = offsets[k];
    LogReader r = LogReader::OpenBuffer(cut);
    std::vector<Record> recs;
    ReadResult res = ReadAll(r, &recs);
    EXPECT_EQ(recs.size(), k) << "len " << len;
    if (len == boundary) {
      EXPECT_TRUE(res.is_end()) << "len " << len << ": " << res.message;
    } else {
      ASSERT_EQ(res.code, ReadCode::kTruncated) << "len " << len << ": " << res.message;
      EXPECT_EQ(res.offset, boundary);
      const uint64_t have = len - boundary;
      // SmallLog's positions and lengths are below 128: 4-byte headers.
      const std::string want =
          "truncated record at offset " + std::to_string(boundary) + " (" + std::to_string(have) +
          (have < 4 ? " bytes, inside its header)"
                    : " of " + std::to_string(offsets[k + 1] - boundary) + " bytes)");
      EXPECT_THAT(res.message, HasSubstr(want)) << "len " << len;
    }
    Recovery rec = RecoverTruncatedTail(cut);
    EXPECT_EQ(rec.valid_bytes, boundary) << "len " << len;
    EXPECT_EQ(rec.records, k);
    EXPECT_EQ(rec.dropped_bytes(), len - boundary);
    EXPECT_EQ(rec.reason.empty(), len == boundary);
  }
}

TEST(EventLogFormat, RecoveryTruncatesACrashedFile) {
  testing::TempDir dir;
  std::vector<uint64_t> offsets;
  std::vector<uint8_t> log = SmallLog(&offsets);
  // A crash mid-record, and a tail of zeros as a file system may leave after one.
  log.resize(offsets[5] + 7);
  log.insert(log.end(), 4096, 0);
  const std::string path = dir.file("crashed.ftlog");
  testing::WriteFile(path, log);

  Recovery dry = RecoverTruncatedTail(path, /*truncate_file=*/false);
  EXPECT_EQ(dry.valid_bytes, offsets[5]);
  EXPECT_EQ(dry.records, 5u);
  EXPECT_EQ(dry.last_position, 9u);
  EXPECT_FALSE(dry.truncated);
  EXPECT_THAT(dry.reason, HasSubstr("at offset " + std::to_string(offsets[5])));
  EXPECT_EQ(std::filesystem::file_size(path), log.size());

  Recovery done = RecoverTruncatedTail(path, /*truncate_file=*/true);
  EXPECT_TRUE(done.truncated);
  EXPECT_EQ(std::filesystem::file_size(path), offsets[5]);
  LogReader r = LogReader::OpenFile(path);
  std::vector<Record> recs;
  EXPECT_TRUE(ReadAll(r, &recs).is_end());
  EXPECT_EQ(recs.size(), 5u);
  // An intact log is left alone.
  Recovery again = RecoverTruncatedTail(path, true);
  EXPECT_FALSE(again.truncated);
  EXPECT_TRUE(again.reason.empty());
}

TEST(EventLogFormat, PositionsGoingBackwardsAreRejected) {
  std::vector<uint8_t> log = EncodeFileHeader(SampleHeader());
  AppendRecord(log, RecordType::kInterrupt, 0, 5, EncodeInterrupt(1));
  AppendRecord(log, RecordType::kInterrupt, 0, 5, EncodeInterrupt(2));  // equal is fine
  const uint64_t bad_at = log.size();
  AppendRecord(log, RecordType::kInterrupt, 0, 4, EncodeInterrupt(3));
  LogReader r = LogReader::OpenBuffer(log);
  std::vector<Record> recs;
  ReadResult res = ReadAll(r, &recs);
  EXPECT_EQ(recs.size(), 2u);
  ASSERT_EQ(res.code, ReadCode::kPositionBackwards);
  EXPECT_EQ(res.offset, bad_at);
  EXPECT_THAT(res.message, HasSubstr("position 4 goes backwards (previous record at 5) at offset " +
                                     std::to_string(bad_at)));
  // Errors are sticky.
  Record rec;
  EXPECT_EQ(r.next(rec).code, ReadCode::kPositionBackwards);
}

TEST(EventLogFormat, InvalidRecordsAreNamedWithTheirOffset) {
  auto check = [](const char* what, auto build, ReadCode code, std::string want) {
    std::vector<uint8_t> log = EncodeFileHeader(SampleHeader());
    AppendRecord(log, RecordType::kClockRead, 0, 1, EncodeClockRead(1));
    const uint64_t at = log.size();
    build(log);
    LogReader r = LogReader::OpenBuffer(log);
    std::vector<Record> recs;
    ReadResult res = ReadAll(r, &recs);
    EXPECT_EQ(recs.size(), 1u) << what;
    EXPECT_EQ(res.code, code) << what << ": " << res.message;
    EXPECT_EQ(res.offset, at) << what;
    for (size_t p; (p = want.find('@')) != std::string::npos;) want.replace(p, 1, std::to_string(at));
    EXPECT_THAT(res.message, HasSubstr(want)) << what;
  };
  const uint8_t one[1] = {7};
  check("unknown type", [&](auto& log) { AppendRecord(log, RecordType{42}, 0, 2, one); },
        ReadCode::kUnknownType, "unknown record type 42 at offset @");
  check("type zero", [&](auto& log) { AppendRecord(log, RecordType{0}, 0, 2, one); },
        ReadCode::kUnknownType, "unknown record type 0 at offset @");
  check("unknown flag", [&](auto& log) { AppendRecord(log, RecordType::kInterrupt, 0x80, 2, one); },
        ReadCode::kBadFlags, "unknown flags 0x80");
  check("bad payload size",
        [&](auto& log) { AppendRecord(log, RecordType::kClockRead, 0, 2, one); },
        ReadCode::kBadPayload, "ClockRead payload of 1 bytes, expected 8 at offset @");
  check("garbage zstd",
        [&](auto& log) {
          const uint8_t junk[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
          AppendRecord(log, RecordType::kCheckpoint, kFlagZstd, 2, junk);
        },
        ReadCode::kDecompress, "not a zstd frame at offset @");
  check("payload too large",
        [&](auto& log) {
          uint8_t head[kMaxRecordHeaderBytes];
          const size_t n = EncodeRecordHeader({uint32_t(kMaxPayloadBytes + 1), 6, 0, 2}, head);
          log.insert(log.end(), head, head + n);
        },
        ReadCode::kPayloadTooLarge, "payload too large at offset @ (67108865 bytes, cap 67108864)");
  check("bad crc",
        [&](auto& log) {
          AppendRecord(log, RecordType::kInterrupt, 0, 2, one);
          log.back() ^= 1;
        },
        ReadCode::kBadCrc, "bad CRC at offset @ (stored 0x");
  // Garbled length varints with every byte present: errors naming the varint's
  // offset (the record's), never "truncated".
  auto raw = [](std::vector<uint8_t> bytes) {
    return [bytes](auto& log) {
      log.insert(log.end(), bytes.begin(), bytes.end());
      log.insert(log.end(), 32, 0);  // enough for any record these headers announce
    };
  };
  check("overlong length", raw({0x81, 0x00, 5, 0, 2, 7}), ReadCode::kBadVarint,
        "bad record header at offset @: overlong length varint at offset @");
  check("length longer than 4 bytes", raw({0x80, 0x80, 0x80, 0x80, 0x01, 5, 0, 2}), ReadCode::kBadVarint,
        "bad record header at offset @: length varint longer than 4 bytes at offset @");
  check("length 4 bytes over the cap", raw({0xff, 0xff, 0xff, 0x7f, 5, 0, 2}), ReadCode::kPayloadTooLarge,
        "payload too large at offset @ (268435455 bytes, cap 67108864)");
}

// The position varint's errors name its own offset: the record's plus 3.
TEST(EventLogFormat, BadPositionVarintsNameTheirOffset) {
  auto check = [](std::vector<uint8_t> position, const std::string& what) {
    std::vector<uint8_t> log = EncodeFileHeader(SampleHeader());
    AppendRecord(log, RecordType::kClockRead, 0, 1, EncodeClockRead(1));
    const uint64_t at = log.size();
    const uint8_t head[] = {1, static_cast<uint8_t>(RecordType::kInterrupt), 0};
    log.insert(log.end(), head, head + 3);
    log.insert(log.end(), position.begin(), position.end());
    log.insert(log.end(), 16, 0);
    LogReader r = LogReader::OpenBuffer(log);
    std::vector<Record> recs;
    ReadResult res = ReadAll(r, &recs);
    EXPECT_EQ(recs.size(), 1u) << what;
    EXPECT_EQ(res.code, ReadCode::kBadVarint) << res.message;
    EXPECT_EQ(res.offset, at);
    EXPECT_THAT(res.message, HasSubstr("bad record header at offset " + std::to_string(at) + ": " + what +
                                       " at offset " + std::to_string(at + 3)));
  };
  check({0x82, 0x80, 0x00}, "overlong position varint");
  check(std::vector<uint8_t>(10, 0x80), "position varint longer than 10 bytes or above 64 bits");
  check({0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x03},
        "position varint longer than 10 bytes or above 64 bits");
}

// A record with 2-byte length and position varints cut at every byte: inside the
// length, between type and flags, inside the position, the payload and the CRC.
TEST(EventLogFormat, ACutInsideAnyFieldIsTruncation) {
  std::vector<uint8_t> log = EncodeFileHeader(SampleHeader());
  const uint64_t at = log.size();
  const std::vector<uint8_t> frame(200, 0x42);
  AppendRecord(log, RecordType::kPacketRx, 0, 1000, frame);
  ASSERT_EQ(log.size() - at, 2 + 2 + 2 + frame.size() + 4);
  for (size_t have = 1; have < log.size() - at; ++have) {
    std::span<const uint8_t> cut(log.data(), at + have);
    LogReader r = LogReader::OpenBuffer(cut);
    ReadResult res = ReadAll(r);
    ASSERT_EQ(res.code, ReadCode::kTruncated) << have << ": " << res.message;
    EXPECT_EQ(res.offset, at);
    EXPECT_THAT(res.message, HasSubstr("truncated record at offset " + std::to_string(at) + " (" +
                                       std::to_string(have) +
                                       (have < 6 ? " bytes, inside its header)" : " of 210 bytes)")));
    EXPECT_EQ(RecoverTruncatedTail(cut).valid_bytes, at);
  }
}

// A live stream that holds part of a record has not failed: the rest is on its way.
// Once the stream has finished, the same bytes are a truncated record.
TEST(EventLogFormat, StreamWithPartOfARecordWaitsForTheRest) {
  std::vector<uint8_t> log = EncodeFileHeader(SampleHeader());
  AppendRecord(log, RecordType::kInterrupt, 0, 300, EncodeInterrupt(9));
  const size_t first_end = log.size();
  AppendRecord(log, RecordType::kClockRead, 0, 70000, EncodeClockRead(5));
  for (size_t split : {first_end + 1, first_end + 4, first_end + 8}) {
    auto stream = std::make_shared<ByteStream>();
    stream->append(std::span<const uint8_t>(log).first(split));
    LogReader r = LogReader::OpenStream(stream, "stream");
    Record rec;
    ASSERT_TRUE(r.next(rec).is_record());
    EXPECT_EQ(rec.stored_bytes, 10u);
    ReadResult res = r.next(rec);
    ASSERT_TRUE(res.is_end()) << split << ": " << res.message;
    EXPECT_EQ(r.offset(), first_end);
    EXPECT_EQ(r.data_end(), split) << "a waiter waits for bytes beyond what is there";
    stream->append(std::span<const uint8_t>(log).subspan(split));
    ASSERT_TRUE(r.next(rec).is_record()) << split;
    EXPECT_EQ(rec.position, 70000u);
    EXPECT_EQ(DecodeClockRead(rec.payload), 5u);
    EXPECT_TRUE(r.next(rec).is_end());
  }
  auto stream = std::make_shared<ByteStream>();
  stream->append(std::span<const uint8_t>(log).first(first_end + 2));
  stream->finish("test");
  LogReader r = LogReader::OpenStream(stream, "stream");
  Record rec;
  ASSERT_TRUE(r.next(rec).is_record());
  ReadResult res = r.next(rec);
  EXPECT_EQ(res.code, ReadCode::kTruncated) << res.message;
  EXPECT_EQ(res.offset, first_end);
}

TEST(EventLogFormat, DataAfterTheEndRecordIsRejected) {
  std::vector<uint8_t> log = EncodeFileHeader(SampleHeader());
  AppendRecord(log, RecordType::kEnd, 0, 2, EncodeEnd(testing::MakeDigest(1)));
  const uint64_t at = log.size();
  AppendRecord(log, RecordType::kInterrupt, 0, 2, EncodeInterrupt(1));
  LogReader r = LogReader::OpenBuffer(log);
  std::vector<Record> recs;
  ReadResult res = ReadAll(r, &recs);
  EXPECT_EQ(recs.size(), 1u);
  EXPECT_EQ(res.code, ReadCode::kTrailingData);
  EXPECT_THAT(res.message, HasSubstr("data after the End record at offset " + std::to_string(at)));
}

TEST(EventLogFormat, FileReaderCrossesReadChunks) {
  // Many small records around a 3 MiB one, so the 1 MiB read window is refilled at
  // record boundaries, mid-record and for a record larger than the window.
  testing::TempDir dir;
  std::vector<uint8_t> log = EncodeFileHeader(SampleHeader());
  std::mt19937_64 rng(7);
  std::vector<uint8_t> big(3 << 20);
  for (auto& b : big) b = static_cast<uint8_t>(rng());
  uint64_t pos = 0;
  for (int i = 0; i < 60000; ++i) AppendRecord(log, RecordType::kClockRead, 0, pos++, EncodeClockRead(i));
  AppendRecord(log, RecordType::kCheckpoint, 0, pos, big);
  for (int i = 0; i < 60000; ++i) AppendRecord(log, RecordType::kClockRead, 0, pos++, EncodeClockRead(i));
  const std::string path = dir.file("big.ftlog");
  testing::WriteFile(path, log);
  LogReader r = LogReader::OpenFile(path);
  Record rec;
  uint64_t n = 0;
  ReadResult res;
  while ((res = r.next(rec)).is_record()) {
    if (rec.type == RecordType::kCheckpoint) {
      ASSERT_TRUE(std::equal(rec.payload.begin(), rec.payload.end(), big.begin(), big.end()));
    } else {
      ASSERT_EQ(DecodeClockRead(rec.payload), (n < 60000 ? n : n - 60001)) << n;
    }
    ++n;
  }
  EXPECT_TRUE(res.is_end()) << res.message;
  EXPECT_EQ(n, 120001u);
}

}  // namespace
}  // namespace ftvm::eventlog
