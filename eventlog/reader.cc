#include "eventlog/reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/hex.h"
#include "eventlog/crc32c.h"
#include "eventlog/records.h"

namespace ftvm::eventlog {
namespace {

// Files are read in chunks this large so that replaying small records costs one
// pread per ~1 MiB, not one per record.
constexpr size_t kReadChunk = 1 << 20;

}  // namespace

void LogReader::DctxDeleter::operator()(ZSTD_DCtx_s* d) const { ZSTD_freeDCtx(d); }

LogReader::LogReader(LogReader&&) noexcept = default;
LogReader& LogReader::operator=(LogReader&&) noexcept = default;
LogReader::~LogReader() = default;

LogReader LogReader::OpenFile(const std::string& path) {
  LogReader r;
  r.name_ = path;
  r.fd_.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!r.fd_) throw SysError("event log " + path + ": open");
  r.parse_header();
  return r;
}

LogReader LogReader::OpenBuffer(std::span<const uint8_t> bytes, std::string name) {
  LogReader r;
  r.name_ = std::move(name);
  r.memory_ = bytes;
  r.parse_header();
  return r;
}

LogReader LogReader::OpenStream(std::shared_ptr<ByteStream> stream, std::string name) {
  LogReader r;
  r.name_ = std::move(name);
  r.stream_ = std::move(stream);
  r.parse_header();
  return r;
}

std::span<const uint8_t> LogReader::fetch(uint64_t off, size_t n, int& err) {
  err = 0;
  if (stream_) {
    // The stream drops what lies before `off` (everything before it was read).
    stream_->release_before(off);
    if (window_.size() < n) window_.resize(n);
    const size_t got = stream_->read(off, n, window_.data());
    return std::span<const uint8_t>(window_).first(got);
  }
  if (!fd_) {
    if (off >= memory_.size()) return {};
    return memory_.subspan(static_cast<size_t>(off),
                           std::min<uint64_t>(n, memory_.size() - off));
  }
  if (off >= window_start_ && off - window_start_ <= window_len_ &&
      window_len_ - (off - window_start_) >= n) {
    return std::span<const uint8_t>(window_).subspan(static_cast<size_t>(off - window_start_), n);
  }
  // Refill the window starting at `off`. It only grows (to the largest record seen).
  if (window_.size() < std::max(n, kReadChunk)) window_.resize(std::max(n, kReadChunk));
  window_start_ = off;
  window_len_ = 0;
  while (window_len_ < window_.size()) {
    ssize_t got = ::pread(fd_.get(), window_.data() + window_len_, window_.size() - window_len_,
                          static_cast<off_t>(off + window_len_));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      err = errno;
      window_len_ = 0;
      return {};
    }
    if (got == 0) break;
    window_len_ += static_cast<size_t>(got);
  }
  return std::span<const uint8_t>(window_).first(std::min(n, window_len_));
}

void LogReader::parse_header() {
  auto fail = [this](const std::string& what) { return Error("event log " + name_ + ": " + what); };
  int err = 0;
  std::span<const uint8_t> fixed = fetch(0, kFileFixedHeaderBytes, err);
  if (err) throw SysError("event log " + name_ + ": read", err);
  const size_t magic_seen = std::min(fixed.size(), kMagic.size());
  if (fixed.empty()) throw fail("empty file (not an ftvm event log)");
  if (!std::equal(fixed.begin(), fixed.begin() + magic_seen, kMagic.begin())) {
    throw fail("not an ftvm event log (bad magic)");
  }
  if (fixed.size() < kFileFixedHeaderBytes) {
    throw fail("truncated header at offset 0 (" + std::to_string(fixed.size()) + " of at least " +
               std::to_string(kFileFixedHeaderBytes + 4) + " bytes)");
  }
  // The version is checked before the CRC: a later format may lay the header out
  // differently, and "wrong version" is the useful message then.
  uint32_t version = GetLe32(fixed.data() + 8);
  if (version != kFormatVersion) {
    throw fail("written by format version " + std::to_string(version) + "; this ftvm reads version " +
               std::to_string(kFormatVersion));
  }
  uint32_t len = GetLe32(fixed.data() + 12);
  if (len > kMaxHeaderBytes) {
    throw fail("header length " + std::to_string(len) + " at offset 12 exceeds the cap of " +
               std::to_string(kMaxHeaderBytes));
  }
  const size_t total = kFileFixedHeaderBytes + len + 4;
  std::span<const uint8_t> all = fetch(0, total, err);
  if (err) throw SysError("event log " + name_ + ": read", err);
  if (all.size() < total) {
    throw fail("truncated header at offset 0 (" + std::to_string(all.size()) + " of " +
               std::to_string(total) + " bytes)");
  }
  uint32_t stored = GetLe32(all.data() + kFileFixedHeaderBytes + len);
  uint32_t computed = Crc32c(all.subspan(8, 8 + len));
  if (stored != computed) {
    throw fail("bad header CRC at offset " + std::to_string(kFileFixedHeaderBytes + len) +
               " (stored " + Hex(stored) + ", computed " + Hex(computed) + ")");
  }
  if (!header_.ParseFromArray(all.data() + kFileFixedHeaderBytes, static_cast<int>(len))) {
    throw fail("header at offset 16 is not a valid LogHeader protobuf");
  }
  if (header_.format_version() != version) {
    throw fail("header protobuf says format version " + std::to_string(header_.format_version()) +
               " but the file says " + std::to_string(version));
  }
  first_record_offset_ = offset_ = total;
}

ReadResult LogReader::next(Record& out) {
  if (failure_.is_error()) return failure_;
  auto fail = [&](ReadCode code, const std::string& what) {
    failure_ = ReadResult{code, offset_,
                          "event log " + name_ + ": " + what + " at offset " + std::to_string(offset_)};
    return failure_;
  };
  // Read before the bytes: a stream that finishes after this sent them all already.
  const bool more_may_come = stream_ && !stream_->finished();
  int err = 0;
  // The header is as long as its varints: fetch the most it can be, or what there is.
  std::span<const uint8_t> view = fetch(offset_, kMaxRecordHeaderBytes, err);
  if (err) return fail(ReadCode::kIo, std::string("read failed (") + std::strerror(err) + ")");
  data_end_ = offset_ + view.size();
  if (view.empty()) return ReadResult{ReadCode::kEnd, offset_, {}};
  if (saw_end_) return fail(ReadCode::kTrailingData, "data after the End record");
  RecordHeader head;
  size_t head_bytes = 0;
  ReadResult r = ParseRecordHeader(view, offset_, name_, head, head_bytes);
  RecordView rv;
  if (r.is_record()) {
    view = fetch(offset_, head_bytes + head.length + kRecordCrcBytes, err);
    if (err) return fail(ReadCode::kIo, std::string("read failed (") + std::strerror(err) + ")");
    data_end_ = offset_ + view.size();
    r = ParseRecord(view, offset_, name_, rv);
  }
  if (r.is_error()) {
    // A live stream holding part of a record: the rest is on its way.
    if (r.code == ReadCode::kTruncated && more_may_come) return ReadResult{ReadCode::kEnd, offset_, {}};
    failure_ = std::move(r);
    return failure_;
  }
  const RecordHeader& h = rv.header;
  const auto type = static_cast<RecordType>(h.type);
  if (records_read_ > 0 && h.position < last_position_) {
    return fail(ReadCode::kPositionBackwards,
                "position " + std::to_string(h.position) + " goes backwards (previous record at " +
                    std::to_string(last_position_) + ")");
  }
  std::span<const uint8_t> payload = rv.stored_payload;
  if ((h.flags & kFlagDelta) && (!(h.flags & kFlagZstd) || type != RecordType::kCheckpoint)) {
    return fail(ReadCode::kBadFlags, "delta flag on a " + RecordTypeName(type) +
                                         (h.flags & kFlagZstd ? "" : " without compression") + " record");
  }
  if (h.flags & kFlagZstd) {
    if (!dctx_) dctx_.reset(ZSTD_createDCtx());
    if (!dctx_) return fail(ReadCode::kDecompress, "cannot create a zstd context");
    if (h.flags & kFlagDelta) {
      if (!have_delta_base_) {
        return fail(ReadCode::kDecompress,
                    "delta-compressed checkpoint without the checkpoint before it (a log read from the middle?)");
      }
      const size_t r = ZSTD_DCtx_refPrefix(dctx_.get(), delta_base_.data(), delta_base_.size());
      if (ZSTD_isError(r)) return fail(ReadCode::kDecompress, std::string("zstd prefix: ") + ZSTD_getErrorName(r));
    }
    unsigned long long size = ZSTD_getFrameContentSize(payload.data(), payload.size());
    if (size == ZSTD_CONTENTSIZE_ERROR) {
      return fail(ReadCode::kDecompress, "compressed payload is not a zstd frame");
    }
    if (size == ZSTD_CONTENTSIZE_UNKNOWN) {
      return fail(ReadCode::kDecompress, "zstd frame without a content size");
    }
    if (size > kMaxPayloadBytes) {
      return fail(ReadCode::kPayloadTooLarge,
                  "decompressed payload of " + std::to_string(size) + " bytes exceeds the cap of " +
                      std::to_string(kMaxPayloadBytes));
    }
    // At least one byte so data() is never null for zstd.
    decompressed_.resize(std::max<size_t>(size, 1));
    size_t got = ZSTD_decompressDCtx(dctx_.get(), decompressed_.data(), static_cast<size_t>(size),
                                     payload.data(), payload.size());
    if (ZSTD_isError(got)) {
      return fail(ReadCode::kDecompress, std::string("zstd: ") + ZSTD_getErrorName(got));
    }
    if (got != size) {
      return fail(ReadCode::kDecompress, "zstd frame decompressed to " + std::to_string(got) +
                                             " bytes instead of " + std::to_string(size));
    }
    payload = std::span<const uint8_t>(decompressed_.data(), got);
  }
  if (std::string problem = PayloadProblem(type, payload); !problem.empty()) {
    return fail(ReadCode::kBadPayload, problem);
  }
  if (type == RecordType::kCheckpoint) {
    have_delta_base_ = payload.size() <= kMaxDeltaBaseBytes;
    if (have_delta_base_) delta_base_.assign(payload.begin(), payload.end());
  }
  out.type = type;
  out.flags = h.flags;
  out.position = h.position;
  out.offset = offset_;
  out.stored_bytes = rv.encoded_bytes;
  out.payload = payload;
  offset_ += rv.encoded_bytes;
  ++records_read_;
  last_position_ = h.position;
  saw_end_ = type == RecordType::kEnd;
  return ReadResult{ReadCode::kRecord, out.offset, {}};
}

namespace {

Recovery Scan(LogReader& reader, uint64_t total) {
  Recovery rec;
  rec.total_bytes = total;
  Record r;
  for (;;) {
    ReadResult res = reader.next(r);
    if (res.is_record()) continue;
    if (res.is_error()) rec.reason = res.message;
    break;
  }
  rec.valid_bytes = reader.offset();
  rec.records = reader.records_read();
  rec.last_position = reader.last_position();
  rec.saw_end_record = reader.saw_end_record();
  return rec;
}

}  // namespace

Recovery RecoverTruncatedTail(std::span<const uint8_t> bytes) {
  LogReader reader = LogReader::OpenBuffer(bytes);
  return Scan(reader, bytes.size());
}

Recovery RecoverTruncatedTail(const std::string& path, bool truncate_file) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw SysError("event log " + path + ": stat");
  Recovery rec;
  {
    LogReader reader = LogReader::OpenFile(path);
    rec = Scan(reader, static_cast<uint64_t>(st.st_size));
  }
  if (truncate_file && rec.valid_bytes < rec.total_bytes) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) throw SysError("event log " + path + ": open for truncation");
    if (::ftruncate(fd.get(), static_cast<off_t>(rec.valid_bytes)) != 0) {
      throw SysError("event log " + path + ": truncate to " + std::to_string(rec.valid_bytes));
    }
    if (::fdatasync(fd.get()) != 0) throw SysError("event log " + path + ": fdatasync");
    rec.truncated = true;
  }
  return rec;
}

}  // namespace ftvm::eventlog
