#include "migration/state_transfer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "common/log.h"
#include "eventlog/format.h"
#include "migration/page_messages.h"

namespace ftvm::migration {
namespace {

constexpr uint64_t kPage = vmm::kPageSize;
constexpr size_t kDiskChunkBytes = 1u << 20;
constexpr uint64_t kProgressBytes = 64u << 20;  // a receiver logs progress this often

double Mib(uint64_t bytes) { return double(bytes) / double(1u << 20); }

}  // namespace

uint64_t BlockHash(std::span<const uint8_t> block) { return XXH3_64bits(block.data(), block.size()); }

namespace {

// The hashes of every block of the open image `fd` of `bytes` (named `path` in
// errors). Holes are hashed as zeros without being read. Throws ftvm::Error.
std::vector<uint64_t> BlockHashesOf(int fd, uint64_t bytes, const std::string& path) {
  const std::vector<uint8_t> zeros(kPage, 0);
  std::vector<uint64_t> out((bytes + kPage - 1) / kPage, BlockHash(zeros));
  if (bytes % kPage != 0) out.back() = BlockHash({zeros.data(), size_t(bytes % kPage)});
  std::vector<uint8_t> buf(kPage);
  std::string error;
  vmm::FileDataPages(fd, bytes).for_each([&](uint64_t b) {
    if (!error.empty()) return;
    const size_t len = size_t(std::min(kPage, bytes - b * kPage));
    ssize_t n;
    do n = pread(fd, buf.data(), len, off_t(b * kPage));
    while (n < 0 && errno == EINTR);
    if (n != ssize_t(len)) {
      error = "reading disk image " + path + ": " + (n < 0 ? strerror(errno) : "short read");
      return;
    }
    out[b] = BlockHash({buf.data(), len});
  });
  if (!error.empty()) throw Error(error);
  return out;
}

}  // namespace

std::vector<uint64_t> DiskBlockHashes(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw SysError("disk image " + path);
  const off_t end = lseek(fd.get(), 0, SEEK_END);
  if (end < 0) throw SysError("sizing disk image " + path);
  return BlockHashesOf(fd.get(), uint64_t(end), path);
}

namespace {
constexpr size_t kHashesPerMessage = 1u << 20;  // 8 MiB: 4 GiB of disk
}  // namespace

std::string SendDiskHashes(transport::Channel& channel, std::span<const uint64_t> hashes,
                           std::chrono::nanoseconds timeout) {
  std::vector<uint8_t> buf;
  for (size_t first = 0; first < hashes.size(); first += kHashesPerMessage) {
    const size_t n = std::min(kHashesPerMessage, hashes.size() - first);
    buf.resize(8 + 8 * n);
    eventlog::PutLe64(buf.data(), first);
    for (size_t i = 0; i < n; ++i) eventlog::PutLe64(buf.data() + 8 + 8 * i, hashes[first + i]);
    if (transport::SendResult s = channel.send(kMsgDiskHashes, buf, timeout); !s.ok())
      return "sending the disk's block hashes: " + s.message;
  }
  return "";
}

std::vector<uint64_t> ReceiveDiskHashes(transport::Channel& channel, uint64_t blocks,
                                        std::chrono::nanoseconds timeout) {
  std::vector<uint64_t> out;
  out.reserve(blocks);
  transport::Message msg;
  while (out.size() < blocks) {
    transport::RecvResult r = channel.recv(msg, timeout);
    if (!r.is_message())
      throw Error("receiving the disk's block hashes from " + channel.peer() + ": " +
                  (r.timed_out() ? std::string("timed out") : r.message));
    if (msg.type() != kMsgDiskHashes || msg.size() < 8 || (msg.size() - 8) % 8 != 0)
      throw Error("the peer at " + channel.peer() + " sent message type " + std::to_string(msg.type()) + " of " +
                  std::to_string(msg.size()) + " bytes instead of its disk's block hashes");
    const uint64_t first = eventlog::GetLe64(msg.payload().data());
    const uint64_t n = (msg.size() - 8) / 8;
    if (first != out.size() || n > blocks - out.size())
      throw Error("disk block hashes for blocks " + std::to_string(first) + "+" + std::to_string(n) + ", expected " +
                  std::to_string(out.size()) + " of " + std::to_string(blocks));
    for (uint64_t i = 0; i < n; ++i) out.push_back(eventlog::GetLe64(msg.payload().data() + 8 + 8 * i));
  }
  return out;
}

// ---- Sender ---------------------------------------------------------------------------

PrecopySender::PrecopySender(RunningVm& vm, transport::Channel& channel, Clock& clock, PrecopyOptions options)
    : vm_(vm), channel_(channel), clock_(clock), options_(options), pages_out_(vm.memory(), channel, options.send_timeout) {
  const std::string& disk = vm_.disk_path();
  if (!disk.empty()) {
    disk_fd_ = UniqueFd(open(disk.c_str(), O_RDONLY | O_CLOEXEC));
    if (!disk_fd_) throw SysError("the disk " + disk + " (for a live copy)");
    const off_t end = lseek(disk_fd_.get(), 0, SEEK_END);
    if (end < 0) throw SysError("sizing the disk " + disk);
    disk_bytes_ = uint64_t(end);
    disk_written_ = vmm::PageBitmap((disk_bytes_ + kPage - 1) / kPage);
  }
}

PrecopySender::~PrecopySender() { Release(); }

void PrecopySender::Release() {
  vm_.set_throttle_percent(0);
  if (!tracking_) return;
  tracking_ = false;
  // The VM may have ended meanwhile; then there is nothing left to stop.
  vm_.at_boundary([this] { vm_.stop_write_tracking(); });
}

std::string PrecopySender::copy_while_running() {
  const uint64_t t0 = clock_.monotonic_ns();
  // Allocated while the VM runs: in the boundary below it only takes a copy (4 MiB
  // per GiB; its first touches there paused the VM ~15 ms).
  std::unique_ptr<vmm::MemoryDigest> offered;
  if (options_.copy_memory)
    offered = std::make_unique<vmm::MemoryDigest>(vm_.memory(), vmm::MemoryDigest::Unfilled{});
  bool have_digest = false;
  if (!vm_.at_boundary([&] {
        vm_.start_write_tracking(disk_fd_ ? &disk_written_ : nullptr);
        if (offered) have_digest = vm_.copy_memory_digest(*offered);
      }))
    return "the VM ended before its copy began";
  if (have_digest) digest_ = std::move(offered);
  tracking_ = true;
  // Round 0: everything that holds data. Holes are zeros on both sides.
  const uint64_t memory_bytes = vm_.memory().size();
  std::string why;
  if (options_.copy_memory) {
    // Every page that holds data goes in this round, and the rest are holes: so the
    // digest is complete once the round is sent, whether it started from the VM's
    // (stale only for pages that hold data) or from zeros.
    if (!digest_) digest_ = std::make_unique<vmm::MemoryDigest>(vm_.memory(), vmm::MemoryDigest::AllZero{});
    why = SendPages(vmm::FileDataPages(vm_.memory().fd(), memory_bytes));
    stats_.first_round_pages = stats_.memory_pages_sent;
  } else {
    pending_pages_ = vmm::PageBitmap(memory_bytes / kPage);  // collects the working set
  }
  if (why.empty() && disk_fd_) why = receiver_disk_.empty() ? SendDiskExtents() : SendDiskDifferences();
  if (why.empty()) why = WaitForReceiver();
  if (!why.empty()) {
    Release();
    return why;
  }
  uint64_t round_start = t0;
  uint64_t previous_left = UINT64_MAX;
  for (;;) {
    stats_.rounds++;
    vmm::PageBitmap pages, blocks;
    if (!vm_.at_boundary([&] {
          pages = vm_.take_written_pages();
          if (disk_fd_) {
            blocks = vmm::PageBitmap(disk_written_.pages());
            std::swap(blocks, disk_written_);
          }
        })) {
      tracking_ = false;
      return "the VM ended during its copy";
    }
    const uint64_t now = clock_.monotonic_ns();
    if (!options_.copy_memory) {
      pending_pages_.merge(pages);
      pages.clear();
    }
    const uint64_t left = (pages.count() + blocks.count()) * kPage;
    const uint64_t elapsed = std::max<uint64_t>(now - t0, 1);
    stats_.bandwidth_bytes_per_s = std::max<uint64_t>(stats_.bytes_sent * 1'000'000'000 / elapsed, 1);
    stats_.dirty_bytes_per_s = left * 1'000'000'000 / std::max<uint64_t>(now - round_start, 1);
    stats_.expected_downtime_ns = left * 1'000'000'000 / stats_.bandwidth_bytes_per_s;
    stats_.last_round_bytes = left;
    log::info("migration.round", {{"round", stats_.rounds},
                                  {"sent_mib", Mib(stats_.bytes_sent)},
                                  {"left_kib", left >> 10},
                                  {"dirty_mib_s", Mib(stats_.dirty_bytes_per_s)},
                                  {"bandwidth_mib_s", Mib(stats_.bandwidth_bytes_per_s)},
                                  {"expected_pause_ms", double(stats_.expected_downtime_ns) / 1e6},
                                  {"throttle_percent", stats_.throttle_percent}});
    const bool fits = stats_.expected_downtime_ns <= uint64_t(options_.downtime_target.count());
    const bool last = stats_.rounds >= options_.max_rounds;
    // The target is the whole pause, and copying is only part of it (the state, the
    // destination taking over): a round that fits goes once more while the VM runs
    // unless it is a quarter of the target or less, or no longer shrinks (then the
    // next round would be no smaller).
    const bool small = stats_.expected_downtime_ns * 4 <= uint64_t(options_.downtime_target.count());
    const bool shrinking = previous_left == UINT64_MAX || left * 10 <= previous_left * 9;
    if ((fits && (small || !shrinking)) || last) {
      if (!fits && stats_.expected_downtime_ns > uint64_t(options_.max_downtime.count())) {
        const std::string msg =
            "the live copy does not converge: the VM writes " + std::to_string(uint64_t(Mib(stats_.dirty_bytes_per_s))) +
            " MiB/s (throttled " + std::to_string(stats_.throttle_percent) + "%), the channel carries " +
            std::to_string(uint64_t(Mib(stats_.bandwidth_bytes_per_s))) + " MiB/s; after " +
            std::to_string(stats_.rounds) + " rounds " + std::to_string(left >> 10) + " KiB were left, a " +
            std::to_string(stats_.expected_downtime_ns / 1'000'000) + " ms pause (at most " +
            std::to_string(options_.max_downtime.count() / 1'000'000) + " ms allowed)";
        Release();
        return msg;
      }
      if (!fits)
        log::warn("migration.over_target", {{"expected_pause_ms", double(stats_.expected_downtime_ns) / 1e6},
                                            {"target_ms", double(options_.downtime_target.count()) / 1e6}});
      // What this round found goes in the pause, with what the VM writes until then.
      if (options_.copy_memory) pending_pages_ = std::move(pages);
      pending_blocks_ = std::move(blocks);
      stats_.copy_ns = clock_.monotonic_ns() - t0;
      return "";
    }
    // Not shrinking by a tenth a round: the guest writes about as fast as we copy.
    if (options_.throttle_step != 0 && previous_left != UINT64_MAX && left * 10 > previous_left * 9 &&
        stats_.throttle_percent < options_.max_throttle) {
      stats_.throttle_percent = std::min(options_.max_throttle, stats_.throttle_percent + options_.throttle_step);
      vm_.set_throttle_percent(stats_.throttle_percent);
      log::info("migration.throttle", {{"percent", stats_.throttle_percent}});
    }
    previous_left = left;
    round_start = now;
    why = SendPages(pages);
    if (why.empty() && disk_fd_) why = SendDiskBlocks(blocks);
    if (why.empty()) why = WaitForReceiver();
    if (!why.empty()) {
      Release();
      return why;
    }
  }
}

std::string PrecopySender::finish_at_boundary(vmm::PageBitmap& final_pages) {
  final_pages = vm_.take_written_pages();
  final_pages.merge(pending_pages_);
  std::string why;
  if (disk_fd_) {
    disk_written_.merge(pending_blocks_);
    const uint64_t before = stats_.disk_bytes_sent;
    why = SendDiskBlocks(disk_written_);
    stats_.final_disk_bytes = stats_.disk_bytes_sent - before;
  }
  if (why.empty() && options_.copy_memory) why = SendPages(final_pages);
  vm_.stop_write_tracking();
  tracking_ = false;
  vm_.set_throttle_percent(0);
  stats_.final_pages = final_pages.count();
  return why;
}

std::string PrecopySender::WaitForReceiver() {
  const uint64_t deadline = clock_.monotonic_ns() + uint64_t(options_.send_timeout.count());
  transport::Message msg;
  while (applied_bytes_ < stats_.bytes_sent) {
    const uint64_t now = clock_.monotonic_ns();
    if (now >= deadline) return "the receiver applied nothing for " + std::to_string(options_.send_timeout.count() / 1'000'000'000) + " s";
    transport::RecvResult r = channel_.recv(msg, std::chrono::nanoseconds(deadline - now));
    if (r.timed_out()) continue;
    if (!r.is_message()) return "the receiver went away during the live copy: " + r.message;
    if (msg.type() != kMsgCopyProgress || msg.size() != 8)
      return "the receiver sent message type " + std::to_string(msg.type()) + " during the live copy";
    applied_bytes_ = std::max(applied_bytes_, eventlog::GetLe64(msg.payload().data()));
  }
  return "";
}

std::string PrecopySender::send_manifest(StateManifest manifest) {
  manifest.set_format_version(kStateFormatVersion);
  manifest.set_memory_bytes(vm_.memory().size());
  manifest.set_disk_bytes(disk_bytes_);
  manifest.set_rounds(stats_.rounds);
  manifest.set_memory_pages_sent(stats_.memory_pages_sent);
  manifest.set_disk_bytes_sent(stats_.disk_bytes_sent);
  const std::string bytes = manifest.SerializeAsString();
  transport::SendResult s = channel_.send(
      kMsgStateManifest, {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, options_.send_timeout);
  if (!s.ok()) return "sending the state manifest: " + s.message;
  stats_.bytes_sent += bytes.size();
  return "";
}

std::string PrecopySender::SendPages(const vmm::PageBitmap& pages) {
  // One sender for every round: its buffers, first touched in round 0, are not new
  // memory in the pause (first touches cost ~14 us a page on this host).
  PageSender& out = pages_out_;
  const PageSendCounters before = out.counters();
  if (digest_) {
    // From the bytes sent, which the receiver hashes too; a page the guest changed
    // since is marked for the next round (or the pause) anyway.
    out.on_sent([d = digest_.get()](uint64_t page, const uint8_t* contents) {
      if (contents == nullptr) {
        d->set_zero_page(page);
      } else {
        d->set_page(page, std::span<const uint8_t, vmm::kPageSize>(contents, vmm::kPageSize));
      }
    });
  }
  std::string why;
  pages.for_each([&](uint64_t page) {
    if (why.empty()) why = out.add(page);
  });
  if (why.empty()) why = out.flush();
  stats_.memory_pages_sent += out.counters().pages - before.pages;
  stats_.zero_pages_sent += out.counters().zero_pages - before.zero_pages;
  stats_.bytes_sent += out.counters().bytes - before.bytes;
  return why;
}

std::string PrecopySender::SendDisk(uint64_t offset, uint64_t bytes) {
  // Kept across calls, like the page sender's buffers: no new memory in the pause.
  std::vector<uint8_t>& buf = disk_buf_;
  buf.resize(std::max<size_t>(buf.size(), size_t(8 + std::min<uint64_t>(bytes, kDiskChunkBytes))));
  while (bytes > 0) {
    const size_t want = size_t(std::min<uint64_t>(bytes, kDiskChunkBytes));
    ssize_t n = pread(disk_fd_.get(), buf.data() + 8, want, off_t(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return "reading the disk " + vm_.disk_path() + ": " + strerror(errno);
    if (n == 0) return "reading the disk " + vm_.disk_path() + ": it ends before " + std::to_string(offset);
    eventlog::PutLe64(buf.data(), offset);
    transport::SendResult s =
        channel_.send(kMsgDiskData, std::span<const uint8_t>(buf.data(), size_t(n) + 8), options_.send_timeout);
    if (!s.ok()) return "sending the disk: " + s.message;
    offset += uint64_t(n);
    bytes -= uint64_t(n);
    stats_.disk_bytes_sent += uint64_t(n);
    stats_.bytes_sent += uint64_t(n) + 8;
  }
  return "";
}

std::string PrecopySender::SendDiskExtents() { return SendDiskBlocks(vmm::FileDataPages(disk_fd_.get(), disk_bytes_)); }

std::string PrecopySender::SendDiskDifferences() {
  const uint64_t blocks = (disk_bytes_ + kPage - 1) / kPage;
  if (receiver_disk_.size() != blocks)
    return "the receiver's disk has " + std::to_string(receiver_disk_.size()) + " blocks, this one " +
           std::to_string(blocks);
  std::vector<uint64_t> mine;
  try {
    mine = BlockHashesOf(disk_fd_.get(), disk_bytes_, vm_.disk_path());
  } catch (const Error& e) {
    return e.what();
  }
  vmm::PageBitmap differ(blocks);
  for (uint64_t b = 0; b < blocks; ++b)
    if (mine[b] != receiver_disk_[b]) differ.set(b);
  stats_.disk_blocks_compared = blocks;
  stats_.disk_blocks_resynced = differ.count();
  log::event(log::Level::kInfo, "migration.disk_resync", {{"blocks", blocks}, {"differ", stats_.disk_blocks_resynced}});
  // A block written while this compared is marked for the next round anyway.
  return SendDiskBlocks(differ);
}

std::string PrecopySender::SendDiskBlocks(const vmm::PageBitmap& blocks) {
  // Runs of adjacent blocks go as one read.
  std::string why;
  uint64_t run_start = 0, run_len = 0;
  auto flush = [&] {
    if (run_len == 0 || !why.empty()) return;
    const uint64_t off = run_start * kPage;
    why = SendDisk(off, std::min(run_len * kPage, disk_bytes_ - off));
    run_len = 0;
  };
  blocks.for_each([&](uint64_t b) {
    if (run_len != 0 && b == run_start + run_len) {
      ++run_len;
      return;
    }
    flush();
    run_start = b;
    run_len = 1;
  });
  flush();
  return why;
}

// ---- Receiver -------------------------------------------------------------------------

void CreateSparseDisk(const std::string& path, uint64_t bytes) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) throw SysError("the replica's disk " + path);
  if (ftruncate(fd.get(), off_t(bytes)) != 0) throw SysError("sizing the replica's disk " + path);
}

StateReceiver::StateReceiver(vmm::GuestMemory& memory, const std::string& disk_path, uint64_t disk_bytes,
                             vmm::MemoryDigest* digest)
    : memory_(memory), digest_(digest), disk_path_(disk_path), disk_bytes_(disk_bytes) {
  if (disk_path_.empty()) return;
  disk_fd_ = UniqueFd(open(disk_path_.c_str(), O_WRONLY | O_CLOEXEC));
  if (!disk_fd_) throw SysError("the replica's disk " + disk_path_);
  struct stat st {};
  if (fstat(disk_fd_.get(), &st) != 0) throw SysError("the replica's disk " + disk_path_);
  if (uint64_t(st.st_size) != disk_bytes_)
    throw Error("the replica's disk " + disk_path_ + " has " + std::to_string(st.st_size) + " bytes, the VM's " +
                std::to_string(disk_bytes_));
}

StateManifest StateReceiver::receive(transport::Channel& channel, std::chrono::nanoseconds timeout) {
  transport::Message msg;
  for (;;) {
    transport::RecvResult r = channel.recv(msg, timeout);
    if (!r.is_message())
      throw Error("the live copy from " + channel.peer() + " stopped after " + std::to_string(pages_) + " pages and " +
                  std::to_string(disk_received_ >> 10) + " KiB of disk: " +
                  (r.timed_out() ? std::string("nothing arrived for ") + std::to_string(timeout.count() / 1'000'000) +
                                       " ms"
                                 : r.message));
    received_bytes_ += msg.size();
    if (received_bytes_ - last_progress_ >= kProgressBytes) {  // long copies show progress
      last_progress_ = received_bytes_;
      log::info("migration.receiving", {{"from", channel.peer()},
                                        {"mib", received_bytes_ >> 20},
                                        {"pages", pages_},
                                        {"disk_mib", disk_received_ >> 20}});
    }
    // How far it got, so that the sender's rounds follow what is applied here.
    auto progress = [&] {
      uint8_t applied[8];
      eventlog::PutLe64(applied, applied_bytes_ += msg.size());
      channel.send(kMsgCopyProgress, applied, std::chrono::seconds(1)).ok();  // a lost sender shows in recv
    };
    switch (msg.type()) {
      case kMsgMemoryPages: ApplyPages(msg.payload()); progress(); break;
      case kMsgDiskData: ApplyDisk(msg.payload()); progress(); break;
      case kMsgStateManifest: {
        StateManifest m = DecodeStateManifest(msg.payload(), memory_.size(), disk_bytes_, channel.peer());
        if (disk_fd_ && fdatasync(disk_fd_.get()) != 0) throw SysError("syncing the replica's disk " + disk_path_);
        return m;
      }
      default:
        throw Error("the sender at " + channel.peer() + " sent message type " + std::to_string(msg.type()) +
                    " in the middle of a live copy");
    }
  }
}

void StateReceiver::ApplyPages(std::span<const uint8_t> payload) {
  const PagesMessage msg(payload, memory_.size() / kPage);
  // Into the memory file, not through this process's mapping: a first touch through
  // the mapping costs ~4 ms per MiB on this (shadow-paged) host, a write to the file
  // 0.3-1 ms; the guest maps the pages it uses when it touches them. Data pages go
  // as runs of consecutive pages (they come sorted), zero pages as holes.
  auto apply_run = [&](uint64_t first, uint64_t i0, uint64_t n, bool data) {
    const off_t at = off_t(first * kPage);
    if (!data) {
      if (fallocate(memory_.fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, off_t(n * kPage)) != 0)
        throw SysError("zeroing " + std::to_string(n) + " pages of guest memory");
      return;
    }
    const uint8_t* src = msg.data(i0).data();
    for (size_t done = 0, len = size_t(n * kPage); done < len;) {
      const ssize_t w = pwrite(memory_.fd(), src + done, len - done, at + off_t(done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) throw SysError("writing " + std::to_string(n) + " pages into guest memory");
      done += size_t(w);
    }
  };
  uint64_t run_first = 0, run_i0 = 0, run_n = 0;
  bool run_data = false;
  for (uint64_t i = 0; i < msg.size(); ++i) {
    const uint64_t page = msg.page(i);
    const bool data = i < msg.data_pages();
    if (run_n != 0 && (data != run_data || page != run_first + run_n)) {
      apply_run(run_first, run_i0, run_n, run_data);
      run_n = 0;
    }
    if (run_n == 0) run_first = page, run_i0 = i, run_data = data;
    ++run_n;
    if (digest_ != nullptr) {
      if (data) {
        digest_->set_page(page, msg.data(i));
      } else {
        digest_->set_zero_page(page);
      }
    }
  }
  if (run_n != 0) apply_run(run_first, run_i0, run_n, run_data);
  pages_ += msg.size();
}

void StateReceiver::ApplyDisk(std::span<const uint8_t> payload) {
  if (!disk_fd_) throw Error("the sender sent disk data, but the VM has no disk");
  const auto [at, data] = DecodeDiskData(payload, disk_bytes_);
  for (size_t done = 0; done < data.size();) {
    ssize_t n = pwrite(disk_fd_.get(), data.data() + done, data.size() - done, off_t(at + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw SysError("writing the replica's disk " + disk_path_);
    done += size_t(n);
  }
  disk_received_ += data.size();
}

}  // namespace ftvm::migration
