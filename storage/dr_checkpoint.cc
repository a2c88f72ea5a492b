#include "storage/dr_checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "eventlog/crc32c.h"
#include "eventlog/format.h"

namespace ftvm::storage {

using eventlog::GetLe32;
using eventlog::GetLe64;
using eventlog::PutLe32;
using eventlog::PutLe64;

namespace {

constexpr char kMagic[8] = {'F', 'T', 'V', 'M', 'D', 'R', 'C', 'K'};
constexpr uint64_t kBlock = 4096;
constexpr uint64_t kMaxUndoRecord = 1u << 20;  // adjacent blocks per record

void WriteAll(int fd, const uint8_t* p, size_t n, uint64_t at, const std::string& what) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, off_t(at));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw SysError(what);
    p += w;
    n -= size_t(w);
    at += uint64_t(w);
  }
}

void ReadAll(int fd, uint8_t* p, size_t n, uint64_t at, const std::string& what) {
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, off_t(at));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw SysError(what);
    if (r == 0) throw Error(what + ": unexpected end of file");
    p += r;
    n -= size_t(r);
    at += uint64_t(r);
  }
}

bool AllZeros(const CheckpointReader& read, uint64_t at, uint64_t n) {
  uint8_t buf[4096];
  while (n > 0) {
    const size_t k = size_t(std::min<uint64_t>(n, sizeof buf));
    read(buf, k, at, "reading the undo journal");
    for (size_t i = 0; i < k; ++i)
      if (buf[i] != 0) return false;
    at += k;
    n -= k;
  }
  return true;
}

void SyncDir(const std::string& dir) {
  UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d || ::fsync(d.get()) != 0) throw SysError("fsync of directory " + dir);
}

}  // namespace

std::string CheckpointPath(const std::string& dir) { return dir + "/checkpoint"; }
std::string InvalidCheckpointPath(const std::string& dir) { return dir + "/checkpoint.invalid"; }

std::vector<uint8_t> EncodeCheckpoint(CheckpointHeader h, std::span<const uint8_t> state) {
  std::vector<uint8_t> out(kCheckpointHeaderBytes + state.size());
  uint8_t* p = out.data();
  std::memcpy(p, kMagic, 8);
  PutLe32(p + 8, h.version);
  PutLe64(p + 16, h.seq);
  PutLe64(p + 24, h.bytes);
  PutLe64(p + 32, h.wall_ns);
  PutLe64(p + 40, h.raw_bytes);
  PutLe64(p + 48, state.size());
  if (!state.empty()) std::memcpy(p + kCheckpointHeaderBytes, state.data(), state.size());  // data() may be null
  PutLe32(p + 12, eventlog::Crc32c(std::span<const uint8_t>(out).subspan(16)));
  return out;
}

std::string DecodeCheckpoint(std::span<const uint8_t> bytes, CheckpointHeader& out, std::span<const uint8_t>& state) {
  CheckpointHeader h;  // `out` and `state` change only when it decodes
  if (bytes.size() < kCheckpointHeaderBytes)
    return "checkpoint of " + std::to_string(bytes.size()) + " bytes is shorter than its " +
           std::to_string(kCheckpointHeaderBytes) + "-byte header (truncated)";
  const uint8_t* p = bytes.data();
  if (std::memcmp(p, kMagic, 8) != 0) return "not an ftvm DR checkpoint (no FTVMDRCK magic)";
  h.version = GetLe32(p + 8);
  if (h.version != kCheckpointFormatVersion)
    return "checkpoint in format version " + std::to_string(h.version) + "; this build reads version " +
           std::to_string(kCheckpointFormatVersion);
  h.seq = GetLe64(p + 16);
  h.bytes = GetLe64(p + 24);
  h.wall_ns = GetLe64(p + 32);
  h.raw_bytes = GetLe64(p + 40);
  h.state_bytes = GetLe64(p + 48);
  if (h.state_bytes > bytes.size() - kCheckpointHeaderBytes)
    return "checkpoint is truncated: its header says " + std::to_string(h.state_bytes) + " state bytes, only " +
           std::to_string(bytes.size() - kCheckpointHeaderBytes) + " follow";
  if (eventlog::Crc32c(bytes.subspan(16, kCheckpointHeaderBytes - 16 + h.state_bytes)) != GetLe32(p + 12))
    return "checkpoint fails its CRC (damaged)";
  state = bytes.subspan(kCheckpointHeaderBytes, h.state_bytes);
  out = h;
  return "";
}

CheckpointStore CheckpointStore::Install(const std::string& dir, std::span<const uint8_t> message, uint64_t disk_bytes) {
  CheckpointStore s;
  std::span<const uint8_t> state;
  if (std::string e = DecodeCheckpoint(message, s.header_, state); !e.empty()) throw Error(e);
  const std::string path = CheckpointPath(dir), tmp = path + ".tmp";
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd) throw SysError("checkpoint " + tmp);
    const size_t n = kCheckpointHeaderBytes + state.size();
    WriteAll(fd.get(), message.data(), n, 0, "writing checkpoint " + tmp);
    if (::fdatasync(fd.get()) != 0) throw SysError("fdatasync " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw SysError("renaming " + tmp + " to " + path);
  SyncDir(dir);
  s.dir_ = dir;
  s.fd_.reset(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!s.fd_) throw SysError("checkpoint " + path);
  s.undo_start_ = s.end_ = kCheckpointHeaderBytes + state.size();
  s.disk_bytes_ = disk_bytes;
  s.saved_ = vmm::PageBitmap((disk_bytes + kBlock - 1) / kBlock);
  return s;
}

CheckpointStore CheckpointStore::Reopen(const std::string& dir, uint64_t disk_bytes) {
  LoadedCheckpoint c = LoadCheckpoint(dir);
  CheckpointStore s;
  s.dir_ = dir;
  s.header_ = c.header;
  s.fd_.reset(::open(CheckpointPath(dir).c_str(), O_WRONLY | O_CLOEXEC));
  if (!s.fd_) throw SysError("checkpoint " + CheckpointPath(dir));
  s.undo_start_ = kCheckpointHeaderBytes + c.header.state_bytes;
  s.end_ = c.file_bytes - c.torn_tail_bytes;  // a torn tail is overwritten
  s.records_ = c.undo.size();
  s.disk_bytes_ = disk_bytes;
  s.saved_ = vmm::PageBitmap((disk_bytes + kBlock - 1) / kBlock);
  for (const LoadedCheckpoint::Undo& u : c.undo) s.saved_.set_range(u.disk_offset, u.length);
  return s;
}

std::string CheckpointStore::save_before(int disk_fd, std::span<const std::pair<uint64_t, uint64_t>> extents) {
  buf_.clear();
  uint64_t appended = 0;
  // One record per run of adjacent blocks not saved yet.
  auto flush_run = [&](uint64_t first, uint64_t count) -> std::string {
    const uint64_t offset = first * kBlock;
    const uint64_t len = std::min(count * kBlock, disk_bytes_ - offset);
    const size_t at = buf_.size();
    buf_.resize(at + kUndoRecordHeaderBytes + len);
    uint8_t* rec = buf_.data() + at;
    uint64_t done = 0;
    while (done < len) {
      const ssize_t r = ::pread(disk_fd, rec + kUndoRecordHeaderBytes + done, len - done, off_t(offset + done));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return "reading the disk's block at " + std::to_string(offset + done) + ": " + std::strerror(errno);
      if (r == 0) {  // past the end of a sparse file: zeros
        std::memset(rec + kUndoRecordHeaderBytes + done, 0, len - done);
        break;
      }
      done += uint64_t(r);
    }
    PutLe32(rec + 4, uint32_t(len));
    PutLe64(rec + 8, offset);
    PutLe32(rec, eventlog::Crc32c(std::span<const uint8_t>(rec + 4, kUndoRecordHeaderBytes - 4 + len)));
    saved_.set_range(offset, len);
    ++appended;
    return "";
  };
  for (const auto& [offset, length] : extents) {
    if (length == 0 || offset >= disk_bytes_) continue;
    const uint64_t end = std::min(offset + length, disk_bytes_);
    uint64_t run_first = 0, run_count = 0;
    for (uint64_t b = offset / kBlock; b * kBlock < end; ++b) {
      const bool need = !saved_.test(b);
      if (need && run_count != 0 && b == run_first + run_count && run_count * kBlock < kMaxUndoRecord) {
        ++run_count;
        continue;
      }
      if (run_count != 0)
        if (std::string e = flush_run(run_first, run_count); !e.empty()) return e;
      run_count = 0;
      if (need) {
        run_first = b;
        run_count = 1;
      }
    }
    if (run_count != 0)
      if (std::string e = flush_run(run_first, run_count); !e.empty()) return e;
  }
  if (buf_.empty()) return "";
  // Durable before the writes that follow may reach the disk.
  try {
    WriteAll(fd_.get(), buf_.data(), buf_.size(), end_, "appending to the undo journal " + CheckpointPath(dir_));
  } catch (const Error& e) {
    return e.what();
  }
  if (::fdatasync(fd_.get()) != 0) return "fdatasync of the undo journal " + CheckpointPath(dir_) + ": " + std::strerror(errno);
  end_ += buf_.size();
  records_ += appended;
  return "";
}

LoadedCheckpoint LoadCheckpoint(const std::string& dir) {
  const std::string path = CheckpointPath(dir);
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    const int err = errno;
    if (err == ENOENT && ::access(InvalidCheckpointPath(dir).c_str(), F_OK) == 0)
      throw Error("no valid checkpoint in " + dir + ": " + InvalidCheckpointPath(dir) +
                  " is one that can no longer be resumed (the disk changed without its undo journal: a cold dr-start, "
                  "or the journal could not be written)");
    if (err == ENOENT)
      throw Error("no checkpoint in " + dir + " (the source needs --dr-checkpoint-s N, and one must have arrived)");
    throw SysError("checkpoint " + path, err);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw SysError("checkpoint " + path + ": fstat");
  return ParseCheckpointFile(
      [&](uint8_t* p, size_t n, uint64_t at, const std::string& what) { ReadAll(fd.get(), p, n, at, what); },
      uint64_t(st.st_size), path);
}

LoadedCheckpoint ParseCheckpointFile(const CheckpointReader& read, uint64_t file_bytes, const std::string& path) {
  LoadedCheckpoint c;
  c.file_bytes = file_bytes;
  std::vector<uint8_t> head(std::min<uint64_t>(c.file_bytes, kCheckpointHeaderBytes));
  read(head.data(), head.size(), 0, "reading " + path);
  // The header alone first (its state length), then header + state for the CRC.
  CheckpointHeader h;
  std::span<const uint8_t> ignored;
  if (head.size() < kCheckpointHeaderBytes) throw Error(path + ": " + DecodeCheckpoint(head, h, ignored));
  const uint64_t state_bytes = GetLe64(head.data() + 48);
  const uint64_t want = std::min<uint64_t>(c.file_bytes, kCheckpointHeaderBytes + std::min<uint64_t>(state_bytes, c.file_bytes));
  std::vector<uint8_t> whole(want);
  read(whole.data(), whole.size(), 0, "reading " + path);
  std::span<const uint8_t> state;
  if (std::string e = DecodeCheckpoint(whole, c.header, state); !e.empty()) throw Error(path + ": " + e);
  c.state.assign(state.begin(), state.end());
  // The undo journal: every record must check. Only an append cut short by a crash
  // may end it (a short record, or a size that grew before its data, read as
  // zeros): its disk write waited for it to be durable, so it never happened. A
  // complete record that does not check is damage, wherever it is: the write after
  // it may have reached the disk.
  uint64_t at = kCheckpointHeaderBytes + c.header.state_bytes;
  std::vector<uint8_t> rec;
  auto damaged = [&](const std::string& what) {
    return Error(path + ": undo journal record " + std::to_string(c.undo.size()) + " at file offset " + std::to_string(at) +
                 " " + what + " (damaged): the disk cannot be rolled back to write " + std::to_string(c.header.seq));
  };
  while (at < c.file_bytes) {
    const uint64_t left = c.file_bytes - at;
    uint8_t hdr[kUndoRecordHeaderBytes];
    if (left < kUndoRecordHeaderBytes) {
      c.torn_tail_bytes = left;
      break;
    }
    read(hdr, sizeof hdr, at, "reading the undo journal of " + path);
    const uint32_t len = GetLe32(hdr + 4);
    const uint64_t offset = GetLe64(hdr + 8);
    if (len > kMaxUndoRecord) {
      if (AllZeros(read, at, left)) {
        c.torn_tail_bytes = left;
        break;
      }
      throw damaged("claims " + std::to_string(len) + " bytes");
    }
    if (kUndoRecordHeaderBytes + uint64_t(len) > left) {
      c.torn_tail_bytes = left;
      break;
    }
    rec.resize(kUndoRecordHeaderBytes + len);
    read(rec.data(), rec.size(), at, "reading the undo journal of " + path);
    if (eventlog::Crc32c(std::span<const uint8_t>(rec).subspan(4)) != GetLe32(rec.data())) {
      if (AllZeros(read, at, left)) {
        c.torn_tail_bytes = left;
        break;
      }
      throw damaged("fails its CRC");
    }
    c.undo.push_back({at + kUndoRecordHeaderBytes, offset, len});
    at += rec.size();
  }
  return c;
}

void RollbackDisk(const std::string& dir, const LoadedCheckpoint& c, const std::string& disk_path) {
  UniqueFd src(::open(CheckpointPath(dir).c_str(), O_RDONLY | O_CLOEXEC));
  if (!src) throw SysError("checkpoint " + CheckpointPath(dir));
  UniqueFd disk(::open(disk_path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!disk) throw SysError("replica disk " + disk_path);
  // Every record first, so that a bad one leaves the disk as it was: a record whose CRC
  // holds but whose place lies past the disk's end would otherwise grow the image.
  struct stat st {};
  if (::fstat(disk.get(), &st) != 0) throw SysError("replica disk " + disk_path);
  const uint64_t disk_bytes = uint64_t(st.st_size);
  for (const auto& u : c.undo)
    if (u.disk_offset > disk_bytes || u.length > disk_bytes - u.disk_offset)
      throw Error("checkpoint " + CheckpointPath(dir) + ": an undo record for bytes " + std::to_string(u.disk_offset) +
                  "+" + std::to_string(u.length) + " lies past the end of " + disk_path + " (" +
                  std::to_string(disk_bytes) + " bytes); the disk was not touched");
  std::vector<uint8_t> data;
  for (auto it = c.undo.rbegin(); it != c.undo.rend(); ++it) {
    data.resize(it->length);
    ReadAll(src.get(), data.data(), data.size(), it->file_offset, "reading the undo journal of " + CheckpointPath(dir));
    WriteAll(disk.get(), data.data(), data.size(), it->disk_offset, "rolling back " + disk_path);
  }
  if (::fdatasync(disk.get()) != 0) throw SysError("fdatasync " + disk_path);
}

std::vector<uint8_t> CompressState(std::span<const uint8_t> raw) {
  std::vector<uint8_t> out(ZSTD_compressBound(raw.size()));
  const size_t n = ZSTD_compress(out.data(), out.size(), raw.data(), raw.size(), 1);
  if (ZSTD_isError(n)) throw Error(std::string("compressing the checkpoint: ") + ZSTD_getErrorName(n));
  out.resize(n);
  return out;
}

std::vector<uint8_t> DecompressState(std::span<const uint8_t> stored, uint64_t raw_bytes) {
  const unsigned long long size = ZSTD_getFrameContentSize(stored.data(), stored.size());
  if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN || size != raw_bytes)
    throw Error("checkpoint state is not one zstd frame of " + std::to_string(raw_bytes) + " bytes");
  std::vector<uint8_t> out(raw_bytes);
  const size_t n = ZSTD_decompress(out.data(), out.size(), stored.data(), stored.size());
  if (ZSTD_isError(n) || n != raw_bytes)
    throw Error(std::string("checkpoint state does not decompress: ") + (ZSTD_isError(n) ? ZSTD_getErrorName(n) : "short"));
  return out;
}

}  // namespace ftvm::storage
