// Fuzz target for the event-log reader: any byte string goes through LogReader (over
// a buffer), every record is decoded with the typed helpers, and RecoverTruncatedTail
// runs on it. Besides the sanitizers' checks it asserts the reader's own promises:
// records lie inside the input, errors name the offset where reading stopped, and the
// prefix recovery keeps reads back cleanly with the same records.
//
// Seeds are generated logs (some payloads zstd-compressed); the repair step makes the
// header and record CRCs right again (and, for half the inputs, the magic and
// version), so mutated inputs get past the CRC checks to the code behind them (type,
// flags, sizes, positions, zstd). fuzz/harness.h has the rest.
#include <zstd.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include "common/error.h"
#include "eventlog/crc32c.h"
#include "eventlog/format.h"
#include "eventlog/reader.h"
#include "eventlog/records.h"
#include "fuzz/harness.h"

namespace {

using namespace ftvm::eventlog;

using ftvm::fuzz::Require;

void Exercise(std::span<const uint8_t> data) {
  try {
    LogReader reader = LogReader::OpenBuffer(data, "fuzz");
    Require(reader.first_record_offset() <= data.size(), "header inside the input");
    Record rec;
    uint64_t records = 0;
    uint64_t sum = 0;  // touches every payload byte so ASan sees any bad span
    for (;;) {
      ReadResult res = reader.next(rec);
      if (!res.is_record()) {
        Require(res.offset == reader.offset(), "result offset is where reading stopped");
        Require(res.is_end() == res.message.empty(), "errors have a message, the end has none");
        if (res.is_end()) Require(reader.offset() == data.size(), "end only at the end of data");
        break;
      }
      ++records;
      Require(rec.offset + rec.stored_bytes <= data.size(), "record inside the input");
      Require(rec.stored_bytes >= RecordOverhead(0, rec.position), "record has its overhead");
      if (rec.flags == 0)
        Require(rec.stored_bytes == EncodedRecordBytes(rec.payload.size(), rec.position),
                "an uncompressed record is as long as its canonical encoding");
      for (uint8_t b : rec.payload) sum += b;
      switch (rec.type) {
        case RecordType::kClockRead: Require(DecodeClockRead(rec.payload).has_value(), "clock"); break;
        case RecordType::kRngData: Require(DecodeRngData(rec.payload).has_value(), "rng"); break;
        case RecordType::kPacketRx: Require(DecodePacketRx(rec.payload).has_value(), "packet"); break;
        case RecordType::kDiskCompletion:
          Require(DecodeDiskCompletion(rec.payload).has_value(), "disk");
          break;
        case RecordType::kInterrupt: Require(DecodeInterrupt(rec.payload).has_value(), "irq"); break;
        case RecordType::kCheckpoint:
          Require(DecodeCheckpoint(rec.payload).has_value(), "checkpoint");
          break;
        case RecordType::kVerify: Require(DecodeVerify(rec.payload).has_value(), "verify"); break;
        case RecordType::kEnd: Require(DecodeEnd(rec.payload).has_value(), "end"); break;
        case RecordType::kTimerExpiry: Require(rec.payload.empty(), "timer"); break;
        case RecordType::kGuestReset: Require(rec.payload.empty(), "guest reset"); break;
        case RecordType::kWaitCut: Require(rec.payload.empty(), "wait cut"); break;
        case RecordType::kIrqWaitResult:
          Require(DecodeIrqWaitResult(rec.payload).has_value(), "wait result");
          break;
        case RecordType::kDiskError: Require(DecodeDiskError(rec.payload).has_value(), "disk error"); break;
        case RecordType::kOutputCheck:
          Require(DecodeOutputCheck(rec.payload).has_value(), "output check");
          break;
        default: Require(false, "reader returned an unknown type");
      }
    }
    (void)sum;

    Recovery recovery = RecoverTruncatedTail(data);
    Require(recovery.valid_bytes <= data.size(), "recovery inside the input");
    Require(recovery.records == records, "recovery keeps the records the reader read");
    LogReader again = LogReader::OpenBuffer(data.first(recovery.valid_bytes), "fuzz-recovered");
    uint64_t again_records = 0;
    ReadResult res;
    while ((res = again.next(rec)).is_record()) ++again_records;
    Require(res.is_end(), "a recovered log reads to a clean end");
    Require(again_records == records, "a recovered log keeps every whole record");
  } catch (const ftvm::Error&) {
    // An unreadable header: the documented outcome for such input.
  }
}

// Makes the header CRC and every record CRC (as far as the lengths lead) right again.
// With `fix_magic`, also restores the magic and version.
void FixCrcs(uint8_t* data, size_t size, bool fix_magic) {
  if (size < kFileFixedHeaderBytes) return;
  if (fix_magic) {
    std::memcpy(data, kMagic.data(), kMagic.size());
    PutLe32(data + 8, kFormatVersion);
  }
  uint64_t len = GetLe32(data + 12);
  if (len > kMaxHeaderBytes || kFileFixedHeaderBytes + len + 4 > size) return;
  PutLe32(data + kFileFixedHeaderBytes + len,
          Crc32c(std::span<const uint8_t>(data + 8, 8 + len)));
  uint64_t off = kFileFixedHeaderBytes + len + 4;
  while (off < size) {
    const std::span<const uint8_t> rest(data + off, size - off);
    RecordHeader h;
    size_t head = 0;
    if (!ParseRecordHeader(rest, off, "fuzz", h, head).is_record()) return;
    const size_t crc_at = head + h.length;
    if (crc_at + kRecordCrcBytes > rest.size()) return;
    PutLe32(data + off + crc_at, Crc32c(rest.first(crc_at)));
    off += crc_at + kRecordCrcBytes;
  }
}

// A valid log with a random mix of records, some payloads zstd-compressed.
std::vector<uint8_t> SeedLog(std::minstd_rand& rng) {
  LogHeader h;
  h.mutable_vm()->set_app("fuzz");
  h.mutable_vm()->set_mem_mib(rng() % 512);
  h.mutable_vm()->set_has_net(rng() % 2);
  h.set_guest_image_sha256(std::string(32, static_cast<char>(rng())));
  std::vector<uint8_t> log = EncodeFileHeader(h);
  uint64_t pos = 0;
  const int n = 1 + static_cast<int>(rng() % 12);
  for (int i = 0; i < n; ++i) {
    pos += rng() % 3;
    // Any type but End, which comes only last.
    auto type = static_cast<RecordType>(1 + rng() % (kMaxRecordType - 1));
    if (type == RecordType::kEnd) type = static_cast<RecordType>(kMaxRecordType);
    std::vector<uint8_t> payload;
    switch (type) {
      case RecordType::kClockRead: {
        auto p = EncodeClockRead(rng());
        payload.assign(p.begin(), p.end());
        break;
      }
      case RecordType::kDiskCompletion: {
        auto p = EncodeDiskCompletion({static_cast<uint16_t>(rng() % 4), static_cast<uint16_t>(rng())});
        payload.assign(p.begin(), p.end());
        break;
      }
      case RecordType::kInterrupt: payload = {static_cast<uint8_t>(rng())}; break;
      case RecordType::kVerify: {
        Verify v;
        v.dirty_pages = rng();
        v.regs.assign(rng() % 64, static_cast<uint8_t>(rng()));
        for (uint32_t i = 0, n = uint32_t(rng() % 8), page = 0; i < n; ++i) {
          page += 1 + uint32_t(rng() % 300);
          v.pages.push_back(PageHash{page, uint16_t(rng())});
        }
        payload = EncodeVerify(v);
        break;
      }
      case RecordType::kTimerExpiry: payload.clear(); break;
      case RecordType::kIrqWaitResult: payload.assign(kIrqWaitResultBytes, static_cast<uint8_t>(rng())); break;
      case RecordType::kDiskError: payload.assign(kDiskErrorBytes, static_cast<uint8_t>(rng())); break;
      case RecordType::kOutputCheck: payload.assign(kOutputCheckBytes, static_cast<uint8_t>(rng())); break;
      default: {
        // Runs of repeated bytes, so zstd has something to compress.
        payload.resize(1 + rng() % 300);
        for (size_t j = 0; j < payload.size(); ++j) payload[j] = static_cast<uint8_t>((j / 16) * 31);
        break;
      }
    }
    uint8_t flags = 0;
    if (type == RecordType::kCheckpoint || rng() % 8 == 0) {
      std::vector<uint8_t> z(ZSTD_compressBound(payload.size()));
      size_t zn = ZSTD_compress(z.data(), z.size(), payload.data(), payload.size(), 1);
      if (!ZSTD_isError(zn)) {
        z.resize(zn);
        payload = std::move(z);
        flags = kFlagZstd;
      }
    }
    AppendRecord(log, type, flags, pos, payload);
  }
  if (rng() % 2) AppendRecord(log, RecordType::kEnd, 0, pos, EncodeEnd(Digest{}));
  return log;
}

// Makes the CRCs right again; the magic and version too for inputs whose last byte
// is even (half of them: the others keep exercising the header checks).
void Repair(std::span<uint8_t> data) {
  if (!data.empty()) FixCrcs(data.data(), data.size(), data.back() % 2 == 0);
}

std::vector<uint8_t> Seed(std::minstd_rand& rng) { return SeedLog(rng); }

}  // namespace

const ftvm::fuzz::Target ftvm::fuzz::kTarget = {"eventlog", Exercise, Seed, Repair};
