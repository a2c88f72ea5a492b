#include "storage/disk_mirror.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>

#include "common/error.h"
#include "common/log.h"
#include "migration/state_transfer.h"
#include "storage/dr_checkpoint.h"
#include "transport/channel.h"
#include "vmm/page_bitmap.h"

namespace ftvm::storage {

namespace {

using vmm::kPageSize;
constexpr uint64_t kCopyBatchBytes = 4u << 20;  // catch-up blocks per message
constexpr uint64_t kRunBlocks = 256;            // adjacent blocks per catch-up record (1 MiB)
constexpr auto kLinkTimeout = std::chrono::seconds(30);

// True when every hash is that of a block of zeros (a blank or sparse image).
bool AllZeroBlocks(const std::vector<uint64_t>& hashes) {
  static const uint64_t zero = migration::BlockHash(std::vector<uint8_t>(kPageSize, 0));
  for (uint64_t h : hashes)
    if (h != zero) return false;
  return true;
}

uint64_t Micros(uint64_t from_ns, uint64_t to_ns) {
  return to_ns > from_ns ? std::min<uint64_t>((to_ns - from_ns) / 1000, UINT32_MAX) : 0;
}

// ---- The DR replica over a channel ----------------------------------------------

class ChannelLink final : public MirrorLink {
 public:
  ChannelLink(std::unique_ptr<transport::Channel> ch, std::vector<uint64_t> hashes)
      : ch_(std::move(ch)), hashes_(std::move(hashes)) {}
  const std::vector<uint64_t>& target_hashes() const override { return hashes_; }
  std::string send(std::span<const uint8_t> batch) override {
    transport::SendResult r = ch_->send(kMsgWrites, batch, kLinkTimeout);
    return r.ok() ? "" : "sending to the DR replica " + ch_->peer() + ": " + r.message;
  }
  std::string poll_ack(Ack& ack, bool& got) override {
    got = false;
    for (;;) {
      transport::RecvResult r = ch_->recv(msg_, std::chrono::nanoseconds(0));
      if (r.timed_out()) return "";
      if (!r.is_message()) return "the DR replica " + ch_->peer() + ": " + r.message;
      if (msg_.type() != kMsgAck)
        return "the DR replica " + ch_->peer() + " sent message type " + std::to_string(msg_.type());
      if (std::string e = DecodeAck(msg_.payload(), ack); !e.empty()) return "the DR replica " + ch_->peer() + ": " + e;
      got = true;
    }
  }
  std::string send_checkpoint(std::span<const uint8_t> message) override {
    transport::SendResult r = ch_->send(kMsgCheckpoint, message, kLinkTimeout);
    return r.ok() ? "" : "sending a checkpoint to the DR replica " + ch_->peer() + ": " + r.message;
  }

 private:
  std::unique_ptr<transport::Channel> ch_;
  std::vector<uint64_t> hashes_;
  transport::Message msg_;
};

class ChannelTarget final : public MirrorTarget {
 public:
  explicit ChannelTarget(std::string address) : address_(std::move(address)) {
    transport::ParseChannelAddress(address_);  // a bad address fails at setup
  }
  std::string describe() const override { return address_; }
  std::unique_ptr<MirrorLink> connect(const MirrorHello& hello) override {
    std::unique_ptr<transport::Channel> ch = transport::Connect(address_, std::chrono::seconds(10));
    const std::string bytes = hello.SerializeAsString();
    if (transport::SendResult s = ch->send(kMsgHello, std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), kLinkTimeout);
        !s.ok())
      throw Error("DR replica " + address_ + ": sending the hello: " + s.message);
    transport::Message msg;
    transport::RecvResult r = ch->recv(msg, kLinkTimeout);
    if (!r.is_message())
      throw Error("DR replica " + address_ + ": no answer to the hello: " + (r.timed_out() ? "timed out" : r.message));
    MirrorHelloReply reply;
    if (msg.type() != kMsgHelloReply || !reply.ParseFromArray(msg.payload().data(), int(msg.size())))
      throw Error("DR replica " + address_ + ": answered the hello with message type " + std::to_string(msg.type()) +
                  " (not an ftvm dr-replica?)");
    if (!reply.error().empty()) throw Error("DR replica " + address_ + " refused: " + reply.error());
    if (reply.protocol_version() != kMirrorProtocolVersion)
      throw Error("DR replica " + address_ + " speaks mirror protocol " + std::to_string(reply.protocol_version()) +
                  ", this source " + std::to_string(kMirrorProtocolVersion));
    const uint64_t blocks = (hello.disk_bytes() + kPageSize - 1) / kPageSize;
    std::vector<uint64_t> hashes = migration::ReceiveDiskHashes(*ch, blocks, std::chrono::seconds(120));
    return std::make_unique<ChannelLink>(std::move(ch), std::move(hashes));
  }

 private:
  std::string address_;
};

// ---- A new image in this process ------------------------------------------------

class LocalLink final : public MirrorLink {
 public:
  LocalLink(const std::string& path, uint64_t bytes) : applier_(path, bytes), hashes_(migration::DiskBlockHashes(path)) {}
  const std::vector<uint64_t>& target_hashes() const override { return hashes_; }
  std::string send(std::span<const uint8_t> batch) override {
    if (std::string e = DecodeBatch(batch, decoded_); !e.empty()) return e;
    if (std::string e = applier_.apply(decoded_); !e.empty()) return e;
    return applier_.state().stopped ? applier_.state().stop_reason : "";
  }
  std::string poll_ack(Ack& ack, bool& got) override {
    // Durable here means fsynced: the move's switch waits for it.
    if (std::string e = applier_.sync(); !e.empty()) return e;
    const ApplierState& s = applier_.state();
    ack.applied_seq = s.applied_seq;
    ack.durable_seq = s.durable_seq;
    ack.durable_bytes = s.durable_bytes;
    ack.state = s.stopped ? Ack::State::kStopped : s.consistent ? Ack::State::kStreaming : Ack::State::kCatchingUp;
    ack.reason = s.stop_reason;
    got = true;
    return "";
  }

 private:
  DiskApplier applier_;
  std::vector<uint64_t> hashes_;
  DecodedBatch decoded_;
};

class LocalTarget final : public MirrorTarget {
 public:
  explicit LocalTarget(std::string path) : path_(std::move(path)) {}
  std::string describe() const override { return path_; }
  std::unique_ptr<MirrorLink> connect(const MirrorHello& hello) override {
    return std::make_unique<LocalLink>(path_, hello.disk_bytes());
  }

 private:
  std::string path_;
};

}  // namespace

std::unique_ptr<MirrorTarget> MakeChannelTarget(const std::string& address) {
  return std::make_unique<ChannelTarget>(address);
}
std::unique_ptr<MirrorTarget> MakeLocalTarget(const std::string& path) { return std::make_unique<LocalTarget>(path); }

std::string_view MirrorStateName(MirrorState s) {
  switch (s) {
    case MirrorState::kConnecting: return "connecting";
    case MirrorState::kCatchingUp: return "catching-up";
    case MirrorState::kStreaming: return "streaming";
    case MirrorState::kStopped: return "stopped";
  }
  return "?";
}

// ---- DiskMirror -----------------------------------------------------------------

DiskMirror::DiskMirror(std::unique_ptr<MirrorTarget> target, MirrorOptions options, Clock& clock)
    : target_(std::move(target)), options_(std::move(options)), clock_(clock) {
  if (options_.queue_bytes > (48u << 20) || options_.queue_bytes < (64u << 10))
    throw Error("the disk mirror's queue must be 64 KiB..48 MiB (one channel message)");
  reopen_image(options_.disk_path);
  dirty_ = vmm::PageBitmap((disk_bytes_ + kPageSize - 1) / kPageSize);
  ResetOpen();
}

void DiskMirror::start() {
  if (!thread_.joinable()) thread_ = std::thread([this] { SenderLoop(); });
}

DiskMirror::~DiskMirror() { stop(); }

void DiskMirror::reopen_image(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw SysError("disk image " + path + " (for the mirror)");
  const off_t end = ::lseek(fd.get(), 0, SEEK_END);
  if (end < 0) throw SysError("disk image " + path + ": seeking to the end");
  if (image_ && uint64_t(end) != disk_bytes_) throw Error("disk image " + path + " has another size");
  disk_bytes_ = uint64_t(end);
  image_ = std::move(fd);
  options_.disk_path = path;
}

void DiskMirror::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void DiskMirror::ResetOpen() {
  open_.clear();
  open_.resize(kBatchHeaderBytes);
  open_count_ = 0;
  open_first_seq_ = head_seq_ + 1;
  open_first_bytes_ = head_bytes_;
  open_first_wall_ = 0;
}

void DiskMirror::Overflow() {
  // The queued records were never sent: their blocks go to the catch-up instead.
  DecodedBatch queued;
  const BatchHeader h{open_count_, open_first_seq_, open_first_bytes_, open_first_wall_, 0, 0, 0};
  SealBatch(open_, h);
  if (DecodeBatch(open_, queued).empty()) {
    for (const Record& r : queued.records)
      if (r.kind == RecordKind::kWrite) dirty_.set_range(r.a, r.b);
  } else {
    dirty_.set_range(0, disk_bytes_);  // cannot happen (we encoded it); copy all to be safe
  }
  if (dirty_since_wall_ == 0) dirty_since_wall_ = open_first_wall_ != 0 ? open_first_wall_ : clock_.wall_ns();
  DropCheckpointLocked("the queue overflowed", true);
  ++counters_.overflows;
  state_ = MirrorState::kCatchingUp;
  ResetOpen();
  log::warn("dr.queue_overflow",
            {{"target", target_->describe()}, {"queue_bytes", uint64_t(options_.queue_bytes)},
             {"consistent", "no (until the catch-up ends)"}});
  cv_.notify_all();
}

void DiskMirror::AppendLocked(RecordKind kind, uint64_t offset, uint64_t bytes, std::span<const iovec> data) {
  ++head_seq_;
  head_bytes_ += bytes;
  const uint64_t now = clock_.wall_ns();
  if (state_ == MirrorState::kStreaming) {
    if (open_.size() + kRecordHeaderBytes + bytes > options_.queue_bytes || open_count_ == UINT16_MAX) {
      Overflow();
    } else {
      if (open_count_ == 0) {
        open_first_seq_ = head_seq_;
        open_first_bytes_ = head_bytes_ - bytes;
        open_first_wall_ = now;
      }
      const size_t at = open_.size();
      AppendRecord(open_, kind, uint32_t(Micros(open_first_wall_, now)), offset, bytes);
      open_.resize(at + kRecordHeaderBytes + bytes);
      uint8_t* p = open_.data() + at + kRecordHeaderBytes;
      for (const iovec& v : data) {
        std::memcpy(p, v.iov_base, v.iov_len);
        p += v.iov_len;
      }
      ++open_count_;
      return;
    }
  }
  if (kind == RecordKind::kWrite) dirty_.set_range(offset, bytes);
  if (dirty_since_wall_ == 0) dirty_since_wall_ = now;
}

void DiskMirror::disk_written(uint64_t offset, std::span<const iovec> data) {
  uint64_t bytes = 0;
  for (const iovec& v : data) bytes += v.iov_len;
  {
    std::lock_guard<std::mutex> lock(mu_);
    AppendLocked(RecordKind::kWrite, offset, bytes, data);
  }
  cv_.notify_one();
}

void DiskMirror::disk_flushed() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    AppendLocked(RecordKind::kFlush, 0, 0, {});
  }
  cv_.notify_one();
}

void DiskMirror::FillStatusLocked(MirrorStatus& s, uint64_t now) const {
  s = counters_;
  s.state = state_;
  s.target_consistent = state_ == MirrorState::kStreaming && last_ack_.state == Ack::State::kStreaming;
  s.head_seq = head_seq_;
  s.head_bytes = head_bytes_;
  s.durable_seq = last_ack_.durable_seq;
  s.durable_bytes = last_ack_.durable_bytes;
  s.queued_bytes = open_.size() - kBatchHeaderBytes;
  // Bytes: what the guest wrote that the target does not hold durably; a catch-up
  // still to copy counts its blocks, which may be less than the writes they cover.
  if (state_ == MirrorState::kStreaming)
    s.lag_bytes = head_bytes_ > last_ack_.durable_bytes ? head_bytes_ - last_ack_.durable_bytes : 0;
  else
    s.lag_bytes = dirty_.count() * kPageSize + s.queued_bytes;
  uint64_t oldest = 0;
  if (head_seq_ != last_ack_.durable_seq || state_ != MirrorState::kStreaming) {
    auto older = [&](uint64_t t) {
      if (t != 0 && (oldest == 0 || t < oldest)) oldest = t;
    };
    if (!unacked_.empty()) older(unacked_.front().second);
    if (open_count_ != 0) older(open_first_wall_);
    older(dirty_since_wall_);
  }
  s.lag_ns = oldest != 0 && now > oldest ? now - oldest : 0;
}

MirrorStatus DiskMirror::status() const {
  MirrorStatus s;
  const uint64_t now = clock_.wall_ns();
  std::lock_guard<std::mutex> lock(mu_);
  FillStatusLocked(s, now);
  return s;
}

void DiskMirror::Report(bool force) {
  if (options_.report.count() == 0) return;
  const uint64_t now = clock_.monotonic_ns();
  if (!force && now < next_report_ns_) return;
  next_report_ns_ = now + uint64_t(options_.report.count());
  MirrorStatus s = status();
  log::info("dr.lag", {{"target", target_->describe()},
                       {"state", MirrorStateName(s.state)},
                       {"consistent", s.target_consistent ? "yes" : "no"},
                       {"behind_bytes", s.lag_bytes},
                       {"behind_ms", double(s.lag_ns) / 1e6},
                       {"head_seq", s.head_seq},
                       {"durable_seq", s.durable_seq},
                       {"overflows", s.overflows}});
}

void DiskMirror::NoteAck(const Ack& ack) {
  bool advanced = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    advanced = ack.durable_seq > last_ack_.durable_seq || ack.state != last_ack_.state;
    last_ack_ = ack;
    while (!unacked_.empty() && unacked_.front().first <= ack.durable_seq) unacked_.pop_front();
  }
  if (advanced && options_.on_durable) options_.on_durable();
}

std::string DiskMirror::PollAcks(MirrorLink& link) {
  Ack ack;
  bool got = false;
  {
    std::lock_guard<std::mutex> send_lock(send_mu_);  // drain() uses the link too
    if (std::string e = link.poll_ack(ack, got); !e.empty()) return e;
  }
  if (!got) return "";
  NoteAck(ack);
  if (ack.state == Ack::State::kStopped) return "the target stopped applying: " + ack.reason;
  return "";
}

std::string DiskMirror::SendOpenBatch(MirrorLink& link, bool heartbeat) {
  std::lock_guard<std::mutex> send_lock(send_mu_);
  BatchHeader h;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ != MirrorState::kStreaming || (open_count_ == 0 && !heartbeat)) return "";
    h = BatchHeader{open_count_, open_first_seq_, open_first_bytes_, open_first_wall_, head_seq_, head_bytes_,
                    clock_.wall_ns()};
    if (open_count_ == 0) h.first_wall_ns = h.head_wall_ns;
    else unacked_.emplace_back(head_seq_, open_first_wall_);
    std::swap(open_, sending_);
    ResetOpen();
  }
  SealBatch(sending_, h);
  if (std::string e = link.send(sending_); !e.empty()) return e;
  std::lock_guard<std::mutex> lock(mu_);
  counters_.bytes_sent += sending_.size();
  return "";
}

std::string DiskMirror::CatchUp(MirrorLink& link, vmm::PageBitmap blocks) {
  std::vector<uint8_t> batch;
  bool began = false;
  uint16_t records = 0;   // in `batch`
  uint64_t in_batch = 0;  // blocks in `batch`
  auto start_batch = [&] {
    batch.assign(kBatchHeaderBytes, 0);
    records = 0;
    in_batch = 0;
    if (!began) {
      AppendRecord(batch, RecordKind::kCatchupBegin, 0, 0, 0);
      ++records;
    }
    began = true;
  };
  auto seal_and_send = [&](const BatchHeader& h) -> std::string {
    SealBatch(batch, h);
    if (std::string e = link.send(batch); !e.empty()) return e;
    std::lock_guard<std::mutex> lock(mu_);
    counters_.bytes_sent += batch.size();
    return "";
  };
  // A run of adjacent blocks, read with one pread into one record.
  auto add_run = [&](uint64_t first, uint64_t count) -> std::string {
    const uint64_t offset = first * kPageSize;
    const uint64_t n = std::min<uint64_t>(count * kPageSize, disk_bytes_ - offset);
    const size_t at = batch.size();
    AppendRecord(batch, RecordKind::kBlock, 0, offset, n);
    batch.resize(at + kRecordHeaderBytes + n);
    const ssize_t got = ::pread(image_.get(), batch.data() + at + kRecordHeaderBytes, n, off_t(offset));
    if (got != ssize_t(n))
      return "reading blocks " + std::to_string(first) + "+" + std::to_string(count) + " of " + options_.disk_path +
             ": " + (got < 0 ? std::strerror(errno) : "short read");
    in_batch += count;
    ++records;
    return "";
  };
  // Calls f(first, count) for the runs of set blocks, at most kRunBlocks each.
  auto for_each_run = [](const vmm::PageBitmap& bits, const std::function<void(uint64_t, uint64_t)>& f) {
    uint64_t first = 0, count = 0;
    bits.for_each([&](uint64_t b) {
      if (count != 0 && b == first + count && count < kRunBlocks) {
        ++count;
        return;
      }
      if (count != 0) f(first, count);
      first = b;
      count = 1;
    });
    if (count != 0) f(first, count);
  };
  start_batch();
  const uint64_t copy_t0 = clock_.monotonic_ns();
  uint64_t copied = 0;
  for (unsigned round = 0;; ++round) {
    // A guest that writes faster than the copy goes would never leave the catch-up:
    // after a few rounds the last round may be larger (a longer wait for the vCPU).
    const uint64_t final_blocks = round < 8 ? options_.final_round_blocks : options_.queue_bytes / kPageSize;
    {
      std::lock_guard<std::mutex> send_lock(send_mu_);
      std::unique_lock<std::mutex> lock(mu_);
      if (stopping_) return "stopping";
      blocks.merge(dirty_);
      dirty_.clear();
      if (blocks.count() <= final_blocks) {
        // The last round, read while no write can complete (disk_written waits for
        // mu_): the target then holds exactly this disk after write head_seq_.
        std::string err;
        for_each_run(blocks, [&](uint64_t first, uint64_t count) {
          if (err.empty()) err = add_run(first, count);
        });
        if (!err.empty()) return err;
        const uint64_t now = clock_.wall_ns();
        AppendRecord(batch, RecordKind::kCatchupEnd, 0, head_seq_, head_bytes_);
        ++records;
        SealBatch(batch, BatchHeader{records, head_seq_ + 1, head_bytes_, now, head_seq_, head_bytes_, now});
        unacked_.emplace_back(head_seq_, dirty_since_wall_ != 0 ? dirty_since_wall_ : now);
        dirty_since_wall_ = 0;
        state_ = MirrorState::kStreaming;
        ResetOpen();
        lock.unlock();
        if (std::string e = link.send(batch); !e.empty()) return e;
        std::lock_guard<std::mutex> relock(mu_);
        counters_.bytes_sent += batch.size();
        counters_.blocks_copied += in_batch;
        ++counters_.catchups;
        break;
      }
    }
    // A round while the guest runs: torn reads are fine, their blocks are in dirty_.
    std::string err;
    for_each_run(blocks, [&](uint64_t first, uint64_t count) {
      if (!err.empty()) return;
      err = add_run(first, count);
      if (err.empty() && batch.size() >= kCopyBatchBytes) {
        const uint64_t n = in_batch;
        err = seal_and_send(BatchHeader{records, 0, 0, clock_.wall_ns(), 0, 0, 0});
        copied += batch.size();
        if (options_.copy_rate != 0) {
          // Sleep until the copy is back under its rate.
          const uint64_t due = copy_t0 + copied * 1000000000ull / options_.copy_rate;
          const uint64_t now = clock_.monotonic_ns();
          if (due > now) usleep(useconds_t((due - now) / 1000));
        }
        std::lock_guard<std::mutex> lock(mu_);
        counters_.blocks_copied += n;
        start_batch();
      }
    });
    if (!err.empty()) return err;
    blocks.clear();
    if (std::string e = PollAcks(link); !e.empty()) return e;
    Report(false);
  }
  log::info("dr.caught_up", {{"target", target_->describe()}, {"seq", status().head_seq}});
  return "";
}

std::string DiskMirror::Serve(MirrorLink& link) {
  // Writes from now on are noted; the comparison below may read torn blocks, which
  // those notes send again.
  {
    std::lock_guard<std::mutex> lock(mu_);
    state_ = MirrorState::kCatchingUp;
    dirty_.clear();
    dirty_since_wall_ = clock_.wall_ns();
    ResetOpen();
    DropCheckpointLocked("the target reconnected", false);
    unacked_.clear();
    // Not consistent until the target says so: an Ack{} reads as "streaming, durable
    // up to 0", which a source that has written nothing since it started (head 0)
    // took for synced the moment its catch-up was sent, before the target had it.
    last_ack_ = Ack{};
    last_ack_.state = Ack::State::kCatchingUp;
  }
  const std::vector<uint64_t>& theirs = link.target_hashes();
  vmm::PageBitmap differ;
  if (AllZeroBlocks(theirs)) {
    // A blank target (a new replica, a move's new image) lacks exactly our data
    // blocks: no need to read and hash all of this disk to find them.
    differ = vmm::FileDataPages(image_.get(), disk_bytes_);
  } else {
    const std::vector<uint64_t> mine = migration::DiskBlockHashes(options_.disk_path);
    differ = vmm::PageBitmap(mine.size());
    for (size_t i = 0; i < mine.size(); ++i)
      if (i >= theirs.size() || mine[i] != theirs[i]) differ.set(i);
  }
  log::info("dr.catch_up", {{"target", target_->describe()}, {"blocks", differ.count()}, {"of", differ.pages()}});
  if (std::string e = CatchUp(link, std::move(differ)); !e.empty()) return e;
  uint64_t last_send = clock_.monotonic_ns();
  for (;;) {
    bool catch_up = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Someone waits for the acknowledgements (synchronous DR holds the guest's disk
      // reports until they come): look for them every millisecond while batches are
      // out, not at the next heartbeat.
      const std::chrono::nanoseconds wait =
          options_.on_durable && !unacked_.empty() ? std::chrono::milliseconds(1) : options_.heartbeat / 4;
      cv_.wait_for(lock, wait, [&] {
        return stopping_ || state_ == MirrorState::kCatchingUp || open_count_ > 0 || checkpoint_ != nullptr;
      });
      if (stopping_) return "";
      catch_up = state_ == MirrorState::kCatchingUp;
    }
    if (catch_up) {
      if (std::string e = CatchUp(link, vmm::PageBitmap(dirty_.pages())); !e.empty()) return e;
      continue;
    }
    const uint64_t now = clock_.monotonic_ns();
    const bool heartbeat = now - last_send >= uint64_t(options_.heartbeat.count());
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (open_count_ > 0 || heartbeat) last_send = now;
    }
    if (std::string e = SendCheckpoint(link); !e.empty()) return e;
    if (std::string e = SendOpenBatch(link, heartbeat); !e.empty()) return e;
    if (std::string e = PollAcks(link); !e.empty()) return e;
    Report(false);
  }
}

bool DiskMirror::queue_checkpoint(std::function<std::string()> build, uint64_t seq) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ != MirrorState::kStreaming || checkpoint_ != nullptr || seq != head_seq_) return false;
    auto pc = std::make_unique<PendingCheckpoint>();
    pc->build = std::move(build);
    pc->seq = head_seq_;
    pc->bytes = head_bytes_;
    pc->wall_ns = clock_.wall_ns();
    if (open_count_ > 0) {
      // The writes up to S go first, in a batch of their own: no batch after this
      // one may hold a write before S, and none before it one after.
      pc->before_header = BatchHeader{open_count_, open_first_seq_, open_first_bytes_, open_first_wall_,
                                      head_seq_,  head_bytes_,     pc->wall_ns};
      pc->before = std::move(open_);
      open_ = {};
      ResetOpen();
    }
    checkpoint_ = std::move(pc);
  }
  cv_.notify_all();
  return true;
}

void DiskMirror::DropCheckpointLocked(const std::string& why, bool overflow) {
  if (checkpoint_ == nullptr) return;
  if (overflow && !checkpoint_->before.empty()) {
    DecodedBatch queued;
    SealBatch(checkpoint_->before, checkpoint_->before_header);
    if (DecodeBatch(checkpoint_->before, queued).empty()) {
      for (const Record& r : queued.records)
        if (r.kind == RecordKind::kWrite) dirty_.set_range(r.a, r.b);
    } else {
      dirty_.set_range(0, disk_bytes_);
    }
    if (dirty_since_wall_ == 0) dirty_since_wall_ = checkpoint_->before_header.first_wall_ns;
  }
  log::warn("dr.checkpoint_dropped", {{"target", target_->describe()}, {"seq", checkpoint_->seq}, {"reason", why}});
  checkpoint_.reset();
  ++counters_.checkpoints_dropped;
}

std::string DiskMirror::SendCheckpoint(MirrorLink& link) {
  std::lock_guard<std::mutex> send_lock(send_mu_);
  std::unique_ptr<PendingCheckpoint> pc;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (checkpoint_ == nullptr || state_ != MirrorState::kStreaming) return "";
    pc = std::move(checkpoint_);
    if (!pc->before.empty()) unacked_.emplace_back(pc->seq, pc->before_header.first_wall_ns);
  }
  if (!pc->before.empty()) {
    SealBatch(pc->before, pc->before_header);
    if (std::string e = link.send(pc->before); !e.empty()) return e;
  }
  // Built and compressed here, not in the vCPU's pause; later writes wait in the
  // open batch.
  const uint64_t t0 = clock_.monotonic_ns();
  std::string state;
  std::vector<uint8_t> packed;
  uint64_t tb = t0;
  try {
    state = pc->build();
    tb = clock_.monotonic_ns();
    packed = CompressState(std::span(reinterpret_cast<const uint8_t*>(state.data()), state.size()));
  } catch (const Error& e) {
    // The stream goes on without it; the replica keeps its previous checkpoint.
    log::error("dr.checkpoint_failed", {{"seq", pc->seq}, {"reason", e.what()}});
    std::lock_guard<std::mutex> lock(mu_);
    ++counters_.checkpoints_dropped;
    return "";
  }
  CheckpointHeader h;
  h.seq = pc->seq;
  h.bytes = pc->bytes;
  h.wall_ns = pc->wall_ns;
  h.raw_bytes = state.size();
  const std::vector<uint8_t> message = EncodeCheckpoint(h, packed);
  const uint64_t t1 = clock_.monotonic_ns();
  if (message.size() > transport::kMaxMessageBytes) {
    // The stream goes on without it; the previous checkpoint stays the replica's.
    log::error("dr.checkpoint_too_large", {{"target", target_->describe()}, {"seq", pc->seq},
                                           {"compressed_bytes", uint64_t(message.size())},
                                           {"limit_bytes", uint64_t(transport::kMaxMessageBytes)}});
    std::lock_guard<std::mutex> lock(mu_);
    ++counters_.checkpoints_dropped;
    return "";
  }
  if (std::string e = link.send_checkpoint(message); !e.empty()) return e;
  log::info("dr.checkpoint_sent", {{"target", target_->describe()}, {"seq", pc->seq},
                                   {"state_bytes", uint64_t(state.size())},
                                   {"compressed_bytes", uint64_t(message.size())},
                                   {"build_ms", double(tb - t0) / 1e6},
                                   {"compress_ms", double(t1 - tb) / 1e6},
                                   {"send_ms", double(clock_.monotonic_ns() - t1) / 1e6}});
  std::lock_guard<std::mutex> lock(mu_);
  counters_.bytes_sent += message.size() + pc->before.size();
  ++counters_.checkpoints_sent;
  counters_.last_checkpoint_seq = pc->seq;
  counters_.last_checkpoint_bytes = message.size();
  counters_.last_checkpoint_wall_ns = pc->wall_ns;
  return "";
}

void DiskMirror::SenderLoop() {
  MirrorHello hello;
  hello.set_protocol_version(kMirrorProtocolVersion);
  hello.set_disk_bytes(disk_bytes_);
  hello.set_vm_name(options_.vm_name);
  hello.set_source_path(options_.disk_path);
  std::chrono::nanoseconds backoff = options_.retry;
  std::string last_logged;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
    }
    std::string why;
    try {
      std::unique_ptr<MirrorLink> link = target_->connect(hello);
      log::info("dr.connected", {{"target", target_->describe()}, {"disk", options_.disk_path}});
      {
        std::lock_guard<std::mutex> lock(send_mu_);
        link_ = link.get();
      }
      backoff = options_.retry;
      last_logged.clear();
      why = Serve(*link);
      {
        std::lock_guard<std::mutex> lock(send_mu_);
        link_ = nullptr;
      }
      if (why.empty()) {
        // Stopping: a last report of where the target stands.
        Report(true);
        return;
      }
    } catch (const Error& e) {
      why = e.what();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      counters_.last_error = why;
      state_ = why.rfind("the target stopped applying", 0) == 0 ? MirrorState::kStopped : MirrorState::kConnecting;
      if (dirty_since_wall_ == 0) dirty_since_wall_ = clock_.wall_ns();
      ResetOpen();
      DropCheckpointLocked("the target is unavailable: " + why, false);
    }
    if (why != last_logged) {
      // The VM runs on unmirrored; a reconnect copies what differs.
      log::error("dr.target_unavailable", {{"target", target_->describe()}, {"reason", why},
                                            {"retry_s", double(backoff.count()) / 1e9}});
      last_logged = why;
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, backoff, [&] { return stopping_; });
    backoff = std::min<std::chrono::nanoseconds>(backoff * 2, std::chrono::seconds(30));
  }
}

bool DiskMirror::wait_synced(std::chrono::nanoseconds timeout, uint64_t max_behind) {
  const uint64_t deadline = clock_.monotonic_ns() + uint64_t(timeout.count());
  for (;;) {
    MirrorStatus s = status();
    if (s.state == MirrorState::kStreaming && s.target_consistent && s.durable_seq + max_behind >= s.head_seq) return true;
    if (clock_.monotonic_ns() >= deadline) return false;
    usleep(20000);
  }
}

std::string DiskMirror::drain(std::chrono::nanoseconds timeout) {
  std::lock_guard<std::mutex> send_lock(send_mu_);
  if (link_ == nullptr) return "the mirror has no target connected";
  BatchHeader h;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ != MirrorState::kStreaming) return "the mirror is " + std::string(MirrorStateName(state_));
    h = BatchHeader{open_count_, open_first_seq_, open_first_bytes_, open_first_wall_, head_seq_, head_bytes_,
                    clock_.wall_ns()};
    if (open_count_ == 0) h.first_wall_ns = h.head_wall_ns;
    std::swap(open_, sending_);
    ResetOpen();
  }
  SealBatch(sending_, h);
  if (std::string e = link_->send(sending_); !e.empty()) return e;
  const uint64_t deadline = clock_.monotonic_ns() + uint64_t(timeout.count());
  for (;;) {
    Ack ack;
    bool got = false;
    if (std::string e = link_->poll_ack(ack, got); !e.empty()) return e;
    if (got) {
      NoteAck(ack);
      if (ack.state == Ack::State::kStopped) return "the target stopped applying: " + ack.reason;
      if (ack.durable_seq >= h.head_seq && ack.state == Ack::State::kStreaming) return "";
    }
    if (clock_.monotonic_ns() >= deadline) return "the target did not confirm the last writes in time";
    usleep(1000);
  }
}

}  // namespace ftvm::storage
