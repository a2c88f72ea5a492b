#include "storage/remote_disk.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>

#include "common/error.h"
#include "common/log.h"
#include "storage/storage.pb.h"

namespace ftvm::storage {

namespace {

constexpr auto kRetryPause = std::chrono::milliseconds(100);

std::span<const uint8_t> Bytes(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

}  // namespace

namespace {

std::string NewSession() {
  std::random_device rd;
  char text[33];
  std::snprintf(text, sizeof text, "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
  return text;
}

}  // namespace

RemoteDisk::RemoteDisk(RemoteDiskOptions options, Clock& clock)
    : options_(std::move(options)), clock_(clock), session_(NewSession()) {
  bool fatal = false;
  if (std::string why = Open(fatal); !why.empty()) throw Error("disk server " + options_.address + ": " + why);
}

std::string RemoteDisk::Open(bool& fatal) {
  fatal = false;
  channel_.reset();
  std::unique_ptr<transport::Channel> ch;
  try {
    ch = transport::Connect(options_.address, options_.timeout);
  } catch (const Error& e) {
    return e.what();
  }
  RemoteDiskOpen open;
  open.set_protocol_version(kRemoteProtocolVersion);
  open.set_disk_bytes(options_.disk_bytes);
  open.set_vm_name(options_.vm_name);
  open.set_session(session_);
  if (transport::SendResult s = ch->send(kMsgDiskOpen, Bytes(open.SerializeAsString()), options_.timeout); !s.ok())
    return "opening the disk: " + s.message;
  transport::RecvResult r = ch->recv(reply_, options_.timeout);
  if (!r.is_message())
    return "no answer to opening the disk: " + (r.timed_out() ? std::string("timed out") : r.message);
  RemoteDiskOpenReply reply;
  if (reply_.type() != kMsgDiskOpenReply || !reply.ParseFromArray(reply_.payload().data(), int(reply_.size()))) {
    fatal = true;
    return "answered message type " + std::to_string(reply_.type()) + " to opening a disk (not an ftvm disk server?)";
  }
  if (!reply.error().empty()) {
    fatal = true;
    return "refused: " + reply.error();
  }
  if (reply.protocol_version() != kRemoteProtocolVersion) {
    fatal = true;
    return "speaks remote disk protocol " + std::to_string(reply.protocol_version()) + "; this build speaks " +
           std::to_string(kRemoteProtocolVersion);
  }
  if (reply.disk_bytes() != options_.disk_bytes) {
    fatal = true;
    return "its image is " + std::to_string(reply.disk_bytes()) + " bytes, the VM's disk " +
           std::to_string(options_.disk_bytes);
  }
  if (!boot_id_.empty() && reply.boot_id() != boot_id_ && unflushed_) {
    fatal = true;
    return "its host restarted (boot " + reply.boot_id() + ", was " + boot_id_ +
           ") with writes not yet flushed, which may be lost";
  }
  boot_id_ = reply.boot_id();
  channel_ = std::move(ch);
  return "";
}

std::string RemoteDisk::Try(const DiskRequest& request, std::span<const iovec> iov, int& error) {
  uint8_t header[kDiskRequestHeaderBytes];
  const bool write = request.op == DiskOp::kWrite;
  EncodeDiskRequestHeader(request, write ? iov : std::span<const iovec>(), header);
  parts_.clear();
  parts_.emplace_back(header, sizeof header);
  if (write)
    for (const iovec& v : iov) parts_.emplace_back(static_cast<const uint8_t*>(v.iov_base), v.iov_len);
  if (transport::SendResult s = channel_->send(kMsgDiskRequest, parts_, options_.timeout); !s.ok()) return s.message;
  for (;;) {
    transport::RecvResult r = channel_->recv(reply_, options_.timeout);
    if (r.timed_out()) return "no answer within " + std::to_string(options_.timeout.count() / 1'000'000) + " ms";
    if (!r.is_message()) return r.message;
    if (reply_.type() != kMsgDiskReply) return "unexpected message type " + std::to_string(reply_.type());
    DiskReply reply;
    if (std::string why = DecodeDiskReply(reply_.payload(), reply); !why.empty()) return why;
    if (reply.id < request.id) continue;  // an answer to a request sent before on this link
    if (reply.id != request.id || reply.op != request.op)
      return "an answer to request " + std::to_string(reply.id) + ", not " + std::to_string(request.id);
    error = int(reply.error);
    if (error == 0 && request.op == DiskOp::kRead) {
      if (reply.data.size() != request.bytes)
        return "a read of " + std::to_string(request.bytes) + " bytes answered with " + std::to_string(reply.data.size());
      size_t at = 0;
      for (const iovec& v : iov) {
        std::memcpy(v.iov_base, reply.data.data() + at, v.iov_len);
        at += v.iov_len;
      }
    }
    return "";
  }
}

int RemoteDisk::Call(DiskOp op, uint64_t offset, uint32_t bytes, std::span<const iovec> iov) {
  if (!failed_.empty()) return EIO;
  const DiskRequest request{op, next_id_++, offset, bytes, {}};
  uint64_t lost_at = 0;  // when the link first failed for this request (0: it has not)
  std::string why;
  for (;;) {
    if (channel_) {
      int error = 0;
      why = Try(request, iov, error);
      if (why.empty()) {
        ++stats_.requests;
        if (error == 0 && op == DiskOp::kWrite) unflushed_ = true;
        if (error == 0 && op == DiskOp::kFlush) unflushed_ = false;
        if (lost_at != 0) {
          ++stats_.reconnects;
          log::info("remote_disk.reconnected", {{"server", options_.address},
                                                {"waited_ms", double(clock_.monotonic_ns() - lost_at) / 1e6}});
        }
        return error;
      }
      channel_.reset();
    }
    const uint64_t now = clock_.monotonic_ns();
    if (lost_at == 0) {
      lost_at = now;
      log::warn("remote_disk.link_lost", {{"server", options_.address}, {"reason", why},
                                          {"timeout_s", double(options_.timeout.count()) / 1e9}});
    } else if (now - lost_at >= uint64_t(options_.timeout.count())) {
      break;
    }
    if (cancelled_.load(std::memory_order_acquire)) return ECANCELED;
    std::this_thread::sleep_for(kRetryPause);
    bool fatal = false;
    if (std::string e = Open(fatal); !e.empty()) {
      why = e;
      if (fatal) break;
      continue;
    }
    ++stats_.resent;
  }
  char within[32];
  std::snprintf(within, sizeof within, "%.1f s", double(options_.timeout.count()) / 1e9);
  failed_ = "disk server " + options_.address + " lost: " + why + " (not back within " + within +
            "): the VM's disk is gone, VM stopped";
  log::error("remote_disk.lost", {{"server", options_.address}, {"reason", failed_}});
  if (lost_) lost_(failed_);
  return EIO;
}

int RemoteDisk::transfer(bool write, std::span<const iovec> iov, uint64_t offset) {
  // In requests of at most kRemoteMaxBytes, each an exact slice of the iovecs.
  size_t i = 0, skip = 0;  // where the next request starts: iov[i], `skip` bytes in
  while (i < iov.size()) {
    chunk_.clear();
    uint32_t bytes = 0;
    while (i < iov.size() && bytes < kRemoteMaxBytes) {
      const size_t take = std::min<size_t>(iov[i].iov_len - skip, kRemoteMaxBytes - bytes);
      if (take > 0) chunk_.push_back({static_cast<uint8_t*>(iov[i].iov_base) + skip, take});
      bytes += uint32_t(take);
      skip += take;
      if (skip == iov[i].iov_len) {
        ++i;
        skip = 0;
      }
    }
    if (bytes == 0) continue;
    if (const int err = Call(write ? DiskOp::kWrite : DiskOp::kRead, offset, bytes, chunk_); err != 0) return err;
    offset += bytes;
  }
  return 0;
}

int RemoteDisk::flush() { return Call(DiskOp::kFlush, 0, 0, {}); }

}  // namespace ftvm::storage
