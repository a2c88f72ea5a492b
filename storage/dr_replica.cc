#include "storage/dr_replica.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/log.h"
#include "common/unique_fd.h"
#include "migration/state_transfer.h"
#include "storage/remote_wire.h"
#include "storage/storage.pb.h"

namespace ftvm::storage {

namespace {

constexpr auto kHelloTimeout = std::chrono::seconds(10);
constexpr int kGroupBatches = 256;  // batches applied before one fdatasync at most

uint64_t U64(const std::map<std::string, std::string>& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? 0 : std::stoull(it->second);
}

}  // namespace

std::string DiskImagePath(const std::string& dir) { return dir + "/disk.img"; }
std::string StatePath(const std::string& dir) { return dir + "/state"; }

std::map<std::string, std::string> ReadReplicaState(const std::string& dir) {
  std::ifstream in(StatePath(dir));
  if (!in) throw SysError("DR replica state " + StatePath(dir));
  std::map<std::string, std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return out;
}

DrReplica::DrReplica(ReplicaOptions options, Clock& clock) : options_(std::move(options)), clock_(clock) {
  if (::mkdir(options_.dir.c_str(), 0755) != 0 && errno != EEXIST) throw SysError("DR replica directory " + options_.dir);
  // A replica restarted over its directory resumes from what it had made durable.
  if (::access(StatePath(options_.dir).c_str(), F_OK) == 0) {
    std::map<std::string, std::string> m = ReadReplicaState(options_.dir);
    ApplierState s;
    s.durable_seq = U64(m, "durable_seq");
    s.durable_bytes = U64(m, "durable_bytes");
    s.recovery_point_wall_ns = U64(m, "recovery_point_wall_ns");
    s.consistent = m["consistent"] == "yes";
    saved_ = s;
  }
  // A checkpoint from before the restart keeps its undo journal going.
  struct stat img {};
  if (::access(CheckpointPath(options_.dir).c_str(), F_OK) == 0 && ::stat(DiskImagePath(options_.dir).c_str(), &img) == 0) {
    try {
      checkpoint_ = CheckpointStore::Reopen(options_.dir, uint64_t(img.st_size));
    } catch (const Error& e) {
      InvalidateCheckpoint(e.what());
    }
  }
  if (options_.boot_id.empty()) {
    std::ifstream boot("/proc/sys/kernel/random/boot_id");
    std::getline(boot, options_.boot_id);
  }
  listener_ = transport::Listen(options_.listen);
  log::info("dr.replica_listening", {{"address", listener_->address()}, {"dir", options_.dir}});
}

DrReplica::~DrReplica() = default;

void DrReplica::WriteState(const std::string& state_name, const std::string& source, uint64_t now_wall) {
  ApplierState s = applier_ ? applier_->state() : saved_.value_or(ApplierState{});
  std::ostringstream o;
  o << "state=" << (s.stopped ? "stopped" : state_name) << "\n"
    << "source=" << source << "\n"
    << "consistent=" << (s.consistent ? "yes" : "no") << "\n"
    << "applied_seq=" << s.applied_seq << "\n"
    << "durable_seq=" << s.durable_seq << "\n"
    << "durable_bytes=" << s.durable_bytes << "\n"
    << "head_seq=" << s.head_seq << "\n"
    << "head_bytes=" << s.head_bytes << "\n"
    << "head_wall_ns=" << s.head_wall_ns << "\n"
    << "recovery_point_wall_ns=" << s.recovery_point_wall_ns << "\n"
    << "behind_bytes=" << s.lag_bytes() << "\n"
    << "behind_ms=" << double(s.lag_ns()) / 1e6 << "\n"
    << "updated_wall_ns=" << now_wall << "\n"
    << "batches=" << s.batches << "\n"
    << "syncs=" << s.syncs << "\n"
    << "reason=" << (s.stopped ? s.stop_reason : last_error_) << "\n";
  if (checkpoint_) {
    const CheckpointHeader& h = checkpoint_->header();
    o << "checkpoint=yes\n"
      << "checkpoint_seq=" << h.seq << "\n"
      << "checkpoint_disk_bytes=" << h.bytes << "\n"
      << "checkpoint_wall_ns=" << h.wall_ns << "\n"
      << "checkpoint_bytes=" << kCheckpointHeaderBytes + h.state_bytes << "\n"
      << "checkpoint_state_bytes=" << h.raw_bytes << "\n"
      << "checkpoint_undo_bytes=" << checkpoint_->undo_bytes() << "\n";
  } else {
    o << "checkpoint=" << (::access(InvalidCheckpointPath(options_.dir).c_str(), F_OK) == 0 ? "invalid" : "no") << "\n";
  }
  // The state file lives beside the image, so it must be writable when the image's
  // filesystem is full (that is when it matters most): the next state is written
  // into a file whose block was reserved right after the previous rename, in place.
  const std::string path = StatePath(options_.dir);
  const std::string tmp = path + ".tmp";
  const std::string text = o.str();
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  const bool written = fd && ::pwrite(fd.get(), text.data(), text.size(), 0) == ssize_t(text.size()) &&
                       ::ftruncate(fd.get(), off_t(text.size())) == 0;
  if (!written) {
    // The previous state file stays, still true as far as it goes.
    log::error("dr.state_write_failed", {{"path", tmp}, {"error", std::strerror(errno)}});
    return;
  }
  fd.reset();
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    log::error("dr.state_write_failed", {{"path", path}, {"error", std::strerror(errno)}});
    return;
  }
  UniqueFd next(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  if (next) (void)::fallocate(next.get(), 0, 0, 4096);
}

void DrReplica::InvalidateCheckpoint(const std::string& why) {
  const bool had = checkpoint_.has_value() || ::access(CheckpointPath(options_.dir).c_str(), F_OK) == 0;
  // The applier's hook stays (this may run inside it): it does nothing without one.
  checkpoint_.reset();
  if (!had) return;
  // Kept for a person to look at, but never resumed: the disk has writes after S
  // whose before-images are not in the journal.
  if (std::rename(CheckpointPath(options_.dir).c_str(), InvalidCheckpointPath(options_.dir).c_str()) != 0 && errno != ENOENT)
    log::error("dr.checkpoint_invalidate_failed", {{"path", CheckpointPath(options_.dir)}, {"error", std::strerror(errno)}});
  log::error("dr.checkpoint_invalid", {{"dir", options_.dir}, {"reason", why},
                                       {"note", "the disk image is still the newest crash-consistent one"}});
}

void DrReplica::AttachCheckpoint() {
  if (!applier_) return;
  if (!checkpoint_) {
    applier_->set_before_write({});
    return;
  }
  applier_->set_before_write([this](int fd, std::span<const std::pair<uint64_t, uint64_t>> extents) {
    if (!checkpoint_) return;
    if (std::string e = checkpoint_->save_before(fd, extents); !e.empty()) InvalidateCheckpoint("undo journal: " + e);
  });
}

void DrReplica::StoreCheckpoint(std::span<const uint8_t> message) {
  const uint64_t t0 = clock_.monotonic_ns();
  CheckpointHeader h;
  std::span<const uint8_t> state;
  if (std::string e = DecodeCheckpoint(message, h, state); !e.empty()) {
    log::error("dr.checkpoint_refused", {{"reason", e}});
    return;
  }
  const ApplierState& s = applier_->state();
  if (s.stopped || !s.consistent || s.applied_seq != h.seq) {
    log::error("dr.checkpoint_refused",
               {{"seq", h.seq}, {"reason", "the image holds write " + std::to_string(s.applied_seq) +
                                               (s.consistent ? "" : " (catching up)") + (s.stopped ? " (stopped)" : "") +
                                               ", not the checkpoint's"}});
    return;
  }
  // The image must hold exactly write S durably before the checkpoint says so.
  if (std::string e = applier_->sync(); !e.empty()) {
    log::error("dr.checkpoint_refused", {{"seq", h.seq}, {"reason", e}});
    return;
  }
  try {
    checkpoint_.reset();
    checkpoint_ = CheckpointStore::Install(options_.dir, message, applier_->disk_bytes());
  } catch (const Error& e) {
    // The old one's file may be gone or replaced half-way: not trustworthy.
    InvalidateCheckpoint(std::string("storing a new checkpoint: ") + e.what());
    return;
  }
  AttachCheckpoint();
  log::info("dr.checkpoint_stored", {{"seq", h.seq},
                                     {"bytes", uint64_t(message.size())},
                                     {"state_bytes", h.raw_bytes},
                                     {"store_ms", double(clock_.monotonic_ns() - t0) / 1e6}});
}

int DrReplica::run() {
  WriteState("waiting", "", clock_.wall_ns());
  while (!stopping_) {
    // The timeout is also how long a stop waits, and an HA restart stops the replica
    // before it boots the VM from its disk (it was 200 ms: most of the ~0.18 s the
    // agent waited); 50 wake-ups a second cost nothing measurable.
    std::unique_ptr<transport::Channel> ch = listener_->accept(std::chrono::milliseconds(20));
    if (!ch) continue;
    const std::string peer = ch->peer();
    log::info("dr.source_connected", {{"peer", peer}});
    std::string why;
    try {
      why = Serve(*ch);
    } catch (const Error& e) {
      why = e.what();
    }
    if (applier_) {
      // Whatever was applied in order is a prefix: make it durable before waiting.
      (void)applier_->sync();
    }
    if (!why.empty()) {
      last_error_ = why;
      log::warn("dr.source_dropped", {{"peer", peer}, {"reason", why},
                                        {"durable_seq", applier_ ? applier_->state().durable_seq : 0},
                                        {"consistent", applier_ && applier_->state().consistent ? "yes" : "no"}});
    }
    WriteState(why.empty() ? "stopped" : "disconnected", peer, clock_.wall_ns());
  }
  return 0;
}

std::string DrReplica::Serve(transport::Channel& ch) {
  transport::Message msg;
  transport::RecvResult r = ch.recv(msg, kHelloTimeout);
  if (!r.is_message()) return "no hello: " + (r.timed_out() ? std::string("timed out") : r.message);
  if (msg.type() == kMsgDiskOpen) return ServeDisk(ch, msg);
  MirrorHello hello;
  MirrorHelloReply reply;
  reply.set_protocol_version(kMirrorProtocolVersion);
  auto refuse = [&](const std::string& why) {
    reply.set_error(why);
    const std::string bytes = reply.SerializeAsString();
    (void)ch.send(kMsgHelloReply, std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), kHelloTimeout);
    return "refused the source: " + why;
  };
  if (msg.type() != kMsgHello || !hello.ParseFromArray(msg.payload().data(), int(msg.size())))
    return refuse("expected a mirror hello, got message type " + std::to_string(msg.type()));
  if (hello.protocol_version() != kMirrorProtocolVersion)
    return refuse("mirror protocol version " + std::to_string(hello.protocol_version()) + " is not spoken here (this replica speaks " +
                  std::to_string(kMirrorProtocolVersion) + ")");
  try {
    if (!applier_ || applier_->disk_bytes() != hello.disk_bytes() || applier_->state().stopped) {
      // What it held so far (a stopped applier's, or the state file's at start).
      std::optional<ApplierState> held = saved_;
      if (applier_ && applier_->disk_bytes() == hello.disk_bytes()) held = applier_->state();
      applier_.reset();
      applier_ = std::make_unique<DiskApplier>(DiskImagePath(options_.dir), hello.disk_bytes());
      if (held) applier_->resume(*held);
      AttachCheckpoint();
    }
  } catch (const Error& e) {
    return refuse(e.what());
  }
  reply.set_durable_seq(applier_->state().durable_seq);
  reply.set_consistent(applier_->state().consistent);
  const std::string bytes = reply.SerializeAsString();
  if (transport::SendResult s = ch.send(kMsgHelloReply, std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), kHelloTimeout);
      !s.ok())
    return "answering the hello: " + s.message;
  log::info("dr.source_hello", {{"vm", hello.vm_name()}, {"source_disk", hello.source_path()},
                                {"disk_bytes", hello.disk_bytes()}, {"durable_seq", applier_->state().durable_seq}});
  // Our block hashes: the source sends what differs, as a catch-up.
  if (std::string e = migration::SendDiskHashes(ch, migration::DiskBlockHashes(DiskImagePath(options_.dir)), kHelloTimeout);
      !e.empty())
    return e;

  const std::string source = hello.vm_name() + "@" + ch.peer();
  DecodedBatch batch;
  uint64_t last_sync = clock_.monotonic_ns();
  uint64_t last_state = 0;
  uint64_t last_report = 0;
  Ack::State last_sent_state = Ack::State::kStreaming;
  uint64_t last_sent_durable = applier_->state().durable_seq;
  bool told_stop = false;
  while (!stopping_) {
    // Everything that has arrived, then one fdatasync for all of it (group commit).
    bool applied = false;
    for (int n = 0; n < kGroupBatches; ++n) {
      r = ch.recv(msg, n == 0 ? std::chrono::nanoseconds(std::chrono::milliseconds(20)) : std::chrono::nanoseconds(0));
      if (r.closed()) return "the source closed the stream: " + r.message;
      if (r.error()) return "damaged stream: " + r.message;
      if (!r.is_message()) break;
      if (msg.type() == kMsgCheckpoint) {
        StoreCheckpoint(msg.payload());
        applied = true;
        last_state = 0;  // the state file says so at once
        continue;
      }
      if (msg.type() != kMsgWrites) return "unexpected message type " + std::to_string(msg.type()) + " in the write stream";
      if (std::string e = DecodeBatch(msg.payload(), batch); !e.empty()) return e;
      if (std::string e = applier_->apply(batch); !e.empty()) return e;
      applied = true;
    }
    const uint64_t now = clock_.monotonic_ns();
    if (applier_->needs_sync() &&
        (applier_->flush_pending() || now - last_sync >= uint64_t(options_.sync_interval.count()))) {
      (void)applier_->sync();  // a failure stops the applier, which says so
      last_sync = now;
    }
    const ApplierState& s = applier_->state();
    const Ack::State st = s.stopped ? Ack::State::kStopped : s.consistent ? Ack::State::kStreaming : Ack::State::kCatchingUp;
    // Also when only the durable point moved (a sync after the batches): a source in
    // synchronous mode holds the guest's disk reports until it hears it.
    if (applied || st != last_sent_state || s.durable_seq != last_sent_durable) {
      if (!(s.stopped && told_stop)) {
        Ack ack{s.applied_seq, s.durable_seq, s.durable_bytes, st, s.stop_reason};
        const std::vector<uint8_t> a = EncodeAck(ack);
        if (transport::SendResult sr = ch.send(kMsgAck, a, std::chrono::seconds(10)); !sr.ok())
          return "acknowledging: " + sr.message;
        told_stop = s.stopped;
      }
      last_sent_durable = s.durable_seq;
      last_sent_state = st;
    }
    if (now - last_state >= uint64_t(options_.state_interval.count()) || (applied && s.syncs == 0)) {
      WriteState(s.consistent ? "streaming" : "catching-up", source, clock_.wall_ns());
      last_state = now;
    }
    if (options_.report.count() != 0 && now - last_report >= uint64_t(options_.report.count())) {
      log::info("dr.replica", {{"consistent", s.consistent ? "yes" : "no"},
                               {"durable_seq", s.durable_seq},
                               {"behind_bytes", s.lag_bytes()},
                               {"behind_ms", double(s.lag_ns()) / 1e6},
                               {"state", s.stopped ? "stopped" : "applying"}});
      last_report = now;
    }
  }
  return "";
}

namespace {

// All of `data` at `offset` on `fd`, read (`in`) or written (`out`). 0 or an errno
// value.
int FullIo(int fd, std::span<uint8_t> in, std::span<const uint8_t> out, uint64_t offset) {
  const bool write = !out.empty();
  size_t done = 0;
  const size_t bytes = write ? out.size() : in.size();
  while (done < bytes) {
    const ssize_t n = write ? ::pwrite(fd, out.data() + done, bytes - done, off_t(offset + done))
                            : ::pread(fd, in.data() + done, bytes - done, off_t(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;  // the image is shorter than it was opened with
    done += size_t(n);
  }
  return 0;
}

}  // namespace

std::string DrReplica::OpenDisk(transport::Channel& ch, const transport::Message& open_msg, RemoteDiskOpen& open) {
  RemoteDiskOpenReply reply;
  reply.set_protocol_version(kRemoteProtocolVersion);
  auto refuse = [&](const std::string& why) {
    reply.set_error(why);
    const std::string bytes = reply.SerializeAsString();
    (void)ch.send(kMsgDiskOpenReply, std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), kHelloTimeout);
    return "refused a remote disk client: " + why;
  };
  if (!open.ParseFromArray(open_msg.payload().data(), int(open_msg.size())))
    return refuse("its open message does not parse");
  if (open.protocol_version() != kRemoteProtocolVersion)
    return refuse("remote disk protocol version " + std::to_string(open.protocol_version()) + " is not spoken here (this server speaks " +
                  std::to_string(kRemoteProtocolVersion) + ")");
  const std::string image = DiskImagePath(options_.dir);
  try {
    if (!applier_) {
      struct stat st {};
      if (::stat(image.c_str(), &st) != 0)
        return refuse("no disk image in " + options_.dir + " (ftvm move-disk --to this address copies one here first)");
      applier_ = std::make_unique<DiskApplier>(image, uint64_t(st.st_size));
      if (saved_) applier_->resume(*saved_);
      AttachCheckpoint();
    }
  } catch (const Error& e) {
    return refuse(e.what());
  }
  const ApplierState& s = applier_->state();
  if (applier_->disk_bytes() != open.disk_bytes())
    return refuse("the image in " + options_.dir + " is " + std::to_string(applier_->disk_bytes()) + " bytes, the VM's disk " +
                  std::to_string(open.disk_bytes()));
  if (s.stopped) return refuse("the image in " + options_.dir + " stopped taking writes: " + s.stop_reason);
  if (!s.consistent)
    return refuse("the image in " + options_.dir + " is not a consistent copy (its copy was cut off in a catch-up)");
  // The guest's writes land here from now on, outside the write stream: no
  // checkpoint's undo journal covers them.
  if (checkpoint_ || ::access(CheckpointPath(options_.dir).c_str(), F_OK) == 0)
    InvalidateCheckpoint("the disk is served live to " + open.vm_name() + " (a remote disk)");
  // Whatever the mirror applied is durable before the VM reads it as its disk.
  if (std::string e = applier_->sync(); !e.empty()) return refuse(e);
  reply.set_disk_bytes(applier_->disk_bytes());
  reply.set_boot_id(options_.boot_id);
  {
    const std::string bytes = reply.SerializeAsString();
    if (transport::SendResult sr = ch.send(kMsgDiskOpenReply, std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), kHelloTimeout);
        !sr.ok())
      return "answering the remote disk's open: " + sr.message;
  }
  return "";
}

void DrReplica::AnswerWhileServing(const std::string& session, const std::string& vm,
                                   std::unique_ptr<transport::Channel>& out) {
  std::unique_ptr<transport::Channel> ch = listener_->accept(std::chrono::nanoseconds(0));
  if (!ch) return;
  const std::string peer = ch->peer();
  const std::string busy = "the disk here is served live to " + vm + "; it takes no other client meanwhile";
  transport::Message msg;
  // Briefly: the VM being served waits meanwhile (an ftvm client sends its first
  // message at once).
  transport::RecvResult r = ch->recv(msg, std::chrono::seconds(1));
  if (!r.is_message()) return;
  if (msg.type() == kMsgHello) {
    MirrorHelloReply reply;
    reply.set_protocol_version(kMirrorProtocolVersion);
    reply.set_error(busy);
    const std::string bytes = reply.SerializeAsString();
    (void)ch->send(kMsgHelloReply, std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), kHelloTimeout);
    log::warn("disk_server.refused", {{"peer", peer}, {"reason", busy}});
    return;
  }
  RemoteDiskOpen open;
  if (msg.type() == kMsgDiskOpen && open.ParseFromArray(msg.payload().data(), int(msg.size())) && !session.empty() &&
      open.session() == session) {
    // The same VMM again: its old connection broke without our noticing.
    if (std::string why = OpenDisk(*ch, msg, open); !why.empty()) {
      log::warn("disk_server.refused", {{"peer", peer}, {"reason", why}});
      return;
    }
    log::info("disk_server.reconnected", {{"vm", open.vm_name()}, {"peer", peer}});
    out = std::move(ch);
    return;
  }
  RemoteDiskOpenReply reply;
  reply.set_protocol_version(kRemoteProtocolVersion);
  reply.set_error(busy);
  const std::string bytes = reply.SerializeAsString();
  (void)ch->send(kMsgDiskOpenReply, std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), kHelloTimeout);
  log::warn("disk_server.refused", {{"peer", peer}, {"reason", busy}});
}

std::string DrReplica::ServeDisk(transport::Channel& first, const transport::Message& open_msg) {
  RemoteDiskOpen open;
  if (std::string why = OpenDisk(first, open_msg, open); !why.empty()) return why;
  transport::Channel* cur = &first;
  std::unique_ptr<transport::Channel> taken;  // a connection that took over
  const std::string source = open.vm_name() + "@" + first.peer() + " (remote disk)";
  log::info("disk_server.serving", {{"vm", open.vm_name()}, {"peer", first.peer()}, {"disk_bytes", applier_->disk_bytes()}});
  WriteState("serving", source, clock_.wall_ns());
  const int fd = applier_->fd();
  transport::Message msg;
  DiskRequest req;
  std::vector<uint8_t> data, out;
  uint64_t requests = 0;
  while (!stopping_) {
    transport::RecvResult r = cur->recv(msg, std::chrono::milliseconds(50));
    if (r.timed_out()) {
      // Quiet: a new connection, if any, is answered (a VMM whose link broke comes
      // back on one while this one may still look alive).
      std::unique_ptr<transport::Channel> next;
      AnswerWhileServing(open.session(), open.vm_name(), next);
      if (next) {
        cur->close();
        taken = std::move(next);
        cur = taken.get();
      }
      continue;
    }
    if (r.closed()) return "";  // the VM stopped, or moved its disk away
    if (!r.is_message()) return "damaged remote disk stream: " + r.message;
    if (msg.type() != kMsgDiskRequest) return "unexpected message type " + std::to_string(msg.type()) + " from a remote disk";
    if (std::string e = DecodeDiskRequest(msg.payload(), req); !e.empty()) return e;
    DiskReply rep{req.op, req.id, 0, {}};
    const bool in_range = req.offset <= applier_->disk_bytes() && req.bytes <= applier_->disk_bytes() - req.offset;
    if (req.op == DiskOp::kFlush) {
      if (::fdatasync(fd) != 0) rep.error = uint32_t(errno);
    } else if (!in_range) {
      rep.error = EINVAL;
    } else if (req.op == DiskOp::kWrite) {
      rep.error = uint32_t(FullIo(fd, {}, req.data, req.offset));
    } else {
      data.resize(req.bytes);
      rep.error = uint32_t(FullIo(fd, data, {}, req.offset));
      if (rep.error == 0) rep.data = data;
    }
    if (rep.error != 0)
      log::warn("disk_server.io_failed", {{"op", int(req.op)}, {"offset", req.offset}, {"bytes", req.bytes},
                                           {"error", std::strerror(int(rep.error))}});
    EncodeDiskReply(rep, out);
    if (transport::SendResult sr = cur->send(kMsgDiskReply, out, std::chrono::seconds(10)); !sr.ok())
      return "answering the remote disk: " + sr.message;
    ++requests;
  }
  return "";
}

}  // namespace ftvm::storage
