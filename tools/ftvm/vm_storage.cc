#include "tools/ftvm/vm_storage.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

#include "common/error.h"
#include "common/log.h"
#include "storage/remote_disk.h"
#include "storage/vm_checkpoint.h"
#include "transport/channel.h"

namespace ftvm::cli {
namespace po = boost::program_options;

po::options_description StorageCliOptions::describe() {
  po::options_description d("disk mirroring");
  d.add_options()
      ("dr-target", po::value(&dr_target),
       "keep a crash-consistent copy of the disk at an ftvm dr-replica on this channel address (tcp:HOST:PORT, "
       "shm:/path.sock)")
      ("dr-queue-mib", po::value(&dr_queue_mib)->default_value(dr_queue_mib),
       "writes queued for the DR target before falling back to a block bitmap and catching up (1..48)")
      ("dr-report-s", po::value(&dr_report_s)->default_value(dr_report_s), "log how far behind the DR target is this often (0: never)")
      ("dr-sync", po::bool_switch(&dr_sync),
       "synchronous DR: a disk write completes for the guest only once the DR target holds it durably (an unprotected "
       "VM: ftvm run, dr-start)")
      ("dr-sync-timeout-s", po::value(&dr_sync_timeout_s)->default_value(dr_sync_timeout_s),
       "with --dr-sync: a write the DR target has not confirmed after this long makes the mirror asynchronous (a "
       "warning, event dr.sync_degraded) until the target holds every write again")
      ("dr-checkpoint-s", po::value(&dr_checkpoint_s)->default_value(dr_checkpoint_s),
       "with --dr-target: every this many seconds pause the VM briefly and send its whole state (RAM, vCPU, devices; "
       "compressed) to the DR target at a disk-write position, so that ftvm dr-start --from-checkpoint can resume it "
       "there (0: never)");
  return d;
}

std::string StorageCliOptions::check() const {
  if (!(dr_queue_mib >= 0.0625 && dr_queue_mib <= 48)) return "--dr-queue-mib must be 0.0625..48";
  if (!(dr_report_s >= 0)) return "--dr-report-s must be >= 0";
  if (dr_sync && dr_target.empty()) return "--dr-sync needs --dr-target";
  if (!(dr_sync_timeout_s > 0 && dr_sync_timeout_s <= 3600)) return "--dr-sync-timeout-s must be in (0, 3600]";
  if (!(dr_checkpoint_s >= 0 && dr_checkpoint_s <= 86400)) return "--dr-checkpoint-s must be 0..86400";
  if (dr_checkpoint_s > 0 && dr_target.empty()) return "--dr-checkpoint-s needs --dr-target";
  return "";
}

VmStorage::VmStorage(const StorageCliOptions& options, vmm::Machine& machine, Clock& clock)
    : options_(options), machine_(machine), clock_(clock) {
  if (!options_.dr_target.empty()) {
    if (machine_.disk_path().empty()) throw Error("--dr-target needs a VM with a disk (--disk)");
    storage::MirrorOptions mo;
    mo.disk_path = machine_.disk_path();
    mo.vm_name = machine_.config().app;
    mo.queue_bytes = size_t(options_.dr_queue_mib * double(1u << 20));
    mo.report = std::chrono::nanoseconds(int64_t(options_.dr_report_s * 1e9));
    if (options_.dr_sync) {
      if (machine_.config().mode != vmm::ExecutionMode::kLive)
        throw Error("--dr-sync is for an unprotected VM (ftvm run, dr-start): a protected primary's disk writes already "
                    "wait for its secondary");
      mo.on_durable = [this] {
        if (sync_) sync_->durable_advanced();
      };
    }
    dr_ = std::make_unique<storage::DiskMirror>(storage::MakeChannelTarget(options_.dr_target), mo, clock_);
    taps_.add(dr_.get());
    if (options_.dr_sync) {
      sync_ = std::make_unique<storage::SyncDrGate>(
          *dr_, std::chrono::nanoseconds(int64_t(options_.dr_sync_timeout_s * 1e9)), clock_,
          [m = &machine_] { m->notify_host_event(); });
      machine_.set_live_io(sync_.get());
      log::info("dr.sync", {{"target", options_.dr_target}, {"timeout_s", options_.dr_sync_timeout_s}});
    }
  }
  machine_.set_disk_observer(&taps_);
  if (dr_) dr_->start();  // observing from here on
  if (dr_ && options_.dr_checkpoint_s > 0) checkpointer_ = std::thread([this] { CheckpointLoop(); });
}

void VmStorage::CheckpointLoop() {
  const auto every = std::chrono::nanoseconds(int64_t(options_.dr_checkpoint_s * 1e9));
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(checkpoint_mu_);
      if (checkpoint_cv_.wait_for(lock, every, [&] { return checkpoint_stop_; })) return;
    }
    try {
      TakeCheckpoint();
    } catch (const Error& e) {
      // The VM runs on; the replica keeps its previous checkpoint.
      log::error("dr.checkpoint_failed", {{"reason", e.what()}});
    }
  }
}

void VmStorage::TakeCheckpoint() {
  const storage::MirrorStatus before = dr_->status();
  if (before.state != storage::MirrorState::kStreaming) {
    log::warn("dr.checkpoint_skipped", {{"reason", "the DR target is " + std::string(storage::MirrorStateName(before.state))}});
    return;
  }
  std::shared_ptr<storage::VmStateCapture> capture;
  {
    std::lock_guard<std::mutex> lock(checkpoint_mu_);
    capture = std::move(spare_capture_);
  }
  if (!capture) capture = std::make_shared<storage::VmStateCapture>();
  uint64_t seq = 0, pause_ns = 0;
  storage::VmStateCapture::Stats cs;
  bool queued = false;
  const bool ran = machine_.run_at_boundary([&] {
    // Between guest exits, no disk write in progress: the stream's head is the
    // position every write before the capture has, and none after it.
    const uint64_t t0 = clock_.monotonic_ns();
    seq = dr_->status().head_seq;
    cs = capture->capture(machine_, seq);
    // The protobuf is built on the sender thread; the buffers come back here.
    queued = dr_->queue_checkpoint(
        [this, capture] {
          std::string state = capture->serialize();
          std::lock_guard<std::mutex> lock(checkpoint_mu_);
          spare_capture_ = capture;
          return state;
        },
        seq);
    pause_ns = clock_.monotonic_ns() - t0;
  });
  if (!ran) return;  // the VM ended
  if (!queued) {
    log::warn("dr.checkpoint_skipped", {{"seq", seq}, {"reason", "the DR target is not streaming, or the last checkpoint is still being sent"}});
    return;
  }
  log::info("dr.checkpoint", {{"seq", seq},
                              {"pages", cs.pages},
                              {"ram_mib", double(machine_.memory().size()) / 1048576.0},
                              {"pause_ms", double(pause_ns) / 1e6},
                              {"find_ms", double(cs.find_ns) / 1e6},
                              {"copy_ms", double(cs.copy_ns) / 1e6}});
}

void VmStorage::serve(ControlEndpoint& control) {
  control.on(control::Request::kMoveDisk,
             [this](const control::Request& r, control::Responder& out) { return MoveDisk(r, out); });
  control.add_status([this](control::StatusReply& s) { Status(s); });
}

VmStorage::~VmStorage() {
  {
    std::lock_guard<std::mutex> lock(checkpoint_mu_);
    checkpoint_stop_ = true;
  }
  checkpoint_cv_.notify_all();
  if (checkpointer_.joinable()) checkpointer_.join();
  if (dr_) dr_->stop();  // no more on_durable calls
  if (sync_) machine_.set_live_io(nullptr);
  sync_.reset();
}

void VmStorage::final_report() {
  if (!dr_) return;
  // A VM that stopped cleanly leaves its last writes with the target if it can take
  // them soon; one that cannot is reported behind.
  (void)dr_->wait_synced(std::chrono::seconds(5));
  storage::MirrorStatus s = dr_->status();
  log::info("dr.final", {{"target", options_.dr_target},
                         {"state", storage::MirrorStateName(s.state)},
                         {"consistent", s.target_consistent ? "yes" : "no"},
                         {"behind_bytes", s.lag_bytes},
                         {"behind_ms", double(s.lag_ns) / 1e6},
                         {"head_seq", s.head_seq},
                         {"durable_seq", s.durable_seq}});
}

void VmStorage::Status(control::StatusReply& status) {
  control::StatusReply* s = &status;
  s->set_disk(machine_.disk_path());
  if (dr_) {
    storage::MirrorStatus m = dr_->status();
    s->set_dr_target(options_.dr_target);
    s->set_dr_state(std::string(storage::MirrorStateName(m.state)));
    s->set_dr_consistent(m.target_consistent);
    s->set_dr_behind_bytes(m.lag_bytes);
    s->set_dr_behind_ms(double(m.lag_ns) / 1e6);
    s->set_dr_checkpoints(m.checkpoints_sent);
    s->set_dr_checkpoints_dropped(m.checkpoints_dropped);
    if (m.checkpoints_sent != 0) {
      const uint64_t now = clock_.wall_ns();
      s->set_dr_checkpoint_age_s(
          double(now > m.last_checkpoint_wall_ns ? now - m.last_checkpoint_wall_ns : 0) / 1e9);
      s->set_dr_checkpoint_bytes(m.last_checkpoint_bytes);
    }
  }
}

namespace {

// `ftvm move-disk --to` names a disk server (a channel address) rather than a path.
bool NamesDiskServer(const std::string& to) {
  for (const char* scheme : {"tcp:", "shm:", "rdma:", "rdma+shm:", "dpdk:"})
    if (to.starts_with(scheme)) return true;
  return false;
}

}  // namespace

void VmStorage::CopyWhileRunning(storage::DiskMirror& mirror, const std::string& to, control::Responder& out) {
  storage::DiskMirror* m = &mirror;
  auto detach = [&] { (void)machine_.run_at_boundary([&] { taps_.remove(m); }); };
  if (!machine_.run_at_boundary([&] { taps_.add(m); })) throw Error("the VM stopped");
  mirror.start();  // only now: every write from here on is seen
  // Copy: the mirror catches up (all data blocks of the old image), then streams.
  uint64_t last_line = 0;
  for (;;) {
    storage::MirrorStatus s = mirror.status();
    if (s.state == storage::MirrorState::kStopped || (s.state == storage::MirrorState::kConnecting && !s.last_error.empty())) {
      detach();
      mirror.stop();
      throw Error("copying to " + to + ": " + s.last_error);
    }
    // Close enough: the switch sends the rest with the vCPU waiting.
    if (mirror.wait_synced(std::chrono::milliseconds(200), 256)) return;
    const uint64_t now = clock_.monotonic_ns();
    if (now - last_line >= 500'000'000) {
      s = mirror.status();
      char line[200];
      std::snprintf(line, sizeof line, "copied %.1f MiB, %s, %.1f MiB behind", double(s.blocks_copied) * 4096 / 1048576.0,
                    std::string(storage::MirrorStateName(s.state)).c_str(), double(s.lag_bytes) / 1048576.0);
      out.progress(line);
      log::info("move_disk.progress", {{"copied_mib", double(s.blocks_copied) * 4096 / 1048576.0},
                                       {"state", storage::MirrorStateName(s.state)},
                                       {"behind_bytes", s.lag_bytes}});
      last_line = now;
    }
  }
}

// The copy of a disk move: no reports of its own (the move reports progress), a
// quick heartbeat, and at most `rate_mib` MiB/s (0: unlimited).
storage::MirrorOptions VmStorage::MoveMirrorOptions(const std::string& disk_path, double rate_mib) const {
  storage::MirrorOptions mo;
  mo.disk_path = disk_path;
  mo.vm_name = machine_.config().app;
  mo.report = std::chrono::nanoseconds(0);
  mo.heartbeat = std::chrono::milliseconds(20);
  mo.copy_rate = uint64_t(std::max(0.0, rate_mib) * double(1u << 20));
  return mo;
}

control::Reply VmStorage::MoveDisk(const control::Request& req, control::Responder& out) {
  control::Reply reply;
  std::unique_lock<std::mutex> one(move_mu_, std::try_to_lock);
  if (!one.owns_lock()) {
    reply.set_error("a disk move is already running");
    return reply;
  }
  const std::string old_path = machine_.disk_path();
  const std::string new_path = req.move_disk().new_path();
  if (old_path.empty()) throw Error("this VM has no disk");
  if (stream_ != nullptr && !stream_->complete())
    throw Error("the disk is still being streamed from its image server; move it once the copy is complete");
  if (new_path.empty()) throw Error("no new path given");
  if (NamesDiskServer(new_path)) return MoveDiskRemote(req, out);
  if (remote_) throw Error("the disk is on a disk server (" + old_path + "); it can move only from a local image");
  if (::access(new_path.c_str(), F_OK) == 0) throw Error(new_path + " already exists (a move never overwrites a file)");
  const uint64_t t0 = clock_.monotonic_ns();
  log::info("move_disk.start", {{"from", old_path}, {"to", new_path}});
  out.progress("moving " + old_path + " to " + new_path + ": copying while the VM runs");

  const storage::MirrorOptions mo = MoveMirrorOptions(old_path, req.move_disk().rate_mib());
  auto mirror = std::make_unique<storage::DiskMirror>(storage::MakeLocalTarget(new_path), mo, clock_);
  try {
    CopyWhileRunning(*mirror, new_path, out);
  } catch (const Error&) {
    mirror.reset();
    ::unlink(new_path.c_str());
    throw;
  }
  out.progress("copied; switching the VM to " + new_path);
  // The switch: on the vCPU thread, between requests, so no write is half done:
  // send the last queued writes, wait until the new image holds them durably, and
  // carry on with it.
  std::string why;
  uint64_t switch_ns = 0;
  const bool ran = machine_.run_at_boundary([&] {
    const uint64_t s0 = clock_.monotonic_ns();
    why = mirror->drain(std::chrono::seconds(10));
    if (why.empty()) {
      try {
        machine_.switch_disk(new_path);
        if (dr_) dr_->reopen_image(new_path);
      } catch (const Error& e) {
        why = e.what();
      }
    }
    taps_.remove(mirror.get());
    switch_ns = clock_.monotonic_ns() - s0;
  });
  const storage::MirrorStatus final_status = mirror->status();
  mirror.reset();
  if (!ran || !why.empty()) {
    ::unlink(new_path.c_str());
    throw Error("switching to " + new_path + ": " + (ran ? why : "the VM stopped"));
  }
  bool removed = false;
  if (!req.move_disk().keep_old()) {
    removed = ::unlink(old_path.c_str()) == 0;
    if (!removed) log::warn("move_disk.old_kept", {{"path", old_path}, {"error", std::strerror(errno)}});
  }
  const double secs = double(clock_.monotonic_ns() - t0) / 1e9;
  log::info("move_disk.done", {{"from", old_path}, {"to", new_path}, {"seconds", secs},
                               {"switch_ms", double(switch_ns) / 1e6}, {"old_removed", removed ? "yes" : "no"}});
  control::MoveDiskResult* r = reply.mutable_move_disk();
  r->set_old_path(old_path);
  r->set_new_path(new_path);
  r->set_old_removed(removed);
  r->set_seconds(secs);
  r->set_blocks_copied(final_status.blocks_copied);
  r->set_switch_ms(double(switch_ns) / 1e6);
  return reply;
}

control::Reply VmStorage::MoveDiskRemote(const control::Request& req, control::Responder& out) {
  const std::string old_path = machine_.disk_path();
  const std::string address = req.move_disk().new_path();
  try {
    (void)transport::ParseChannelAddress(address);
  } catch (const Error& e) {
    throw Error(std::string("--to: ") + e.what());
  }
  if (remote_) throw Error("the disk is already on a disk server (" + old_path + ")");
  if (dr_)
    throw Error("this VM mirrors its disk to a DR target (--dr-target), whose catch-up copies read the local image: "
                "its disk cannot move to a disk server");
  if (machine_.config().mode != vmm::ExecutionMode::kLive)
    throw Error("this VM is protected: bringing up a new secondary, or migrating it, copies its local disk image, so "
                "its disk cannot move to a disk server (move it to a path on this host instead)");
  struct stat st {};
  if (::stat(old_path.c_str(), &st) != 0) throw SysError("disk image " + old_path);
  const double timeout_s = req.move_disk().timeout_s() > 0 ? req.move_disk().timeout_s() : 10;
  const uint64_t t0 = clock_.monotonic_ns();
  log::info("move_disk.start", {{"from", old_path}, {"to", address}});
  out.progress("moving " + old_path + " to the disk server at " + address + ": copying while the VM runs");

  const storage::MirrorOptions mo = MoveMirrorOptions(old_path, req.move_disk().rate_mib());
  auto mirror = std::make_unique<storage::DiskMirror>(storage::MakeChannelTarget(address), mo, clock_);
  CopyWhileRunning(*mirror, address, out);
  out.progress("copied; switching the VM to the disk server at " + address);
  // The switch, between requests on the vCPU thread: the server durably holds every
  // write, the copy's connection ends (the server serves one client at a time), and
  // the device reads and writes the server's image from the next request on. Any
  // failure before the last step leaves the VM on its local image.
  std::string why;
  uint64_t switch_ns = 0;
  storage::RemoteDisk* remote = nullptr;
  const bool ran = machine_.run_at_boundary([&] {
    const uint64_t s0 = clock_.monotonic_ns();
    why = mirror->drain(std::chrono::seconds(10));
    taps_.remove(mirror.get());
    mirror->stop();
    if (why.empty()) {
      try {
        storage::RemoteDiskOptions ro;
        ro.address = address;
        ro.disk_bytes = uint64_t(st.st_size);
        ro.vm_name = machine_.config().app;
        ro.timeout = std::chrono::nanoseconds(int64_t(timeout_s * 1e9));
        auto disk = std::make_unique<storage::RemoteDisk>(ro, clock_);
        disk->set_lost([m = &machine_](const std::string& reason) { m->abort(reason); });
        remote = disk.get();
        machine_.switch_disk(std::move(disk));
      } catch (const Error& e) {
        remote = nullptr;
        why = e.what();
      }
    }
    switch_ns = clock_.monotonic_ns() - s0;
  });
  const storage::MirrorStatus final_status = mirror->status();
  mirror.reset();
  if (!ran || !why.empty()) throw Error("switching to " + address + ": " + (ran ? why : "the VM stopped") + "; the VM keeps " + old_path);
  remote_ = remote;
  bool removed = false;
  if (!req.move_disk().keep_old()) {
    removed = ::unlink(old_path.c_str()) == 0;
    if (!removed) log::warn("move_disk.old_kept", {{"path", old_path}, {"error", std::strerror(errno)}});
  }
  const double secs = double(clock_.monotonic_ns() - t0) / 1e9;
  log::info("move_disk.done", {{"from", old_path}, {"to", address}, {"seconds", secs},
                               {"switch_ms", double(switch_ns) / 1e6}, {"old_removed", removed ? "yes" : "no"}});
  control::Reply reply;
  control::MoveDiskResult* r = reply.mutable_move_disk();
  r->set_old_path(old_path);
  r->set_new_path(address);
  r->set_old_removed(removed);
  r->set_seconds(secs);
  r->set_blocks_copied(final_status.blocks_copied);
  r->set_switch_ms(double(switch_ns) / 1e6);
  return reply;
}

}  // namespace ftvm::cli
