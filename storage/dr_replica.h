// The DR target: keeps a crash-consistent copy of a VM's disk in a directory by
// applying the write stream of a source (storage/disk_mirror.h) in order.
//
//   DIR/disk.img   the replica's image (created sparse at the first hello)
//   DIR/state      what it holds, rewritten atomically (key=value lines, see
//                  ReplicaStatus): the source's sequence number and bytes it
//                  holds durably, whether the image is consistent, the recovery
//                  point and how far behind the source it is, in ms and bytes;
//                  the checkpoint's position, time and size.
//   DIR/checkpoint the newest DR checkpoint (a source with --dr-checkpoint-s) and
//                  its undo journal (storage/dr_checkpoint.h): the VM's state at
//                  write S, and how to roll the disk back to S.
//
// It is also `ftvm disk-server`: a VM whose disk moved here (ftvm move-disk --to
// ADDR: a mirror source first, then a remote disk client, storage/remote_disk.h)
// reads and writes DIR/disk.img through it (storage/remote_wire.h). The first
// message of a connection says which it is. Serving a disk live ends any DR
// checkpoint (rolling the disk back would lose the VM's writes).
//
// One source at a time; a source that reconnects (or a new one for the same disk)
// catches up by block hashes. A damaged batch, a protocol version it does not speak
// or a sequence gap drops that connection with a clear log line; the image keeps
// every write applied before. A write the host refuses (the replica's filesystem is
// full) stops applying: the image stays at its last durable point, the state file
// and the source are told why, and the source runs on.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "common/clock.h"
#include "storage/disk_applier.h"
#include "storage/dr_checkpoint.h"
#include "storage/storage.pb.h"
#include "transport/channel.h"

namespace ftvm::storage {

struct ReplicaOptions {
  std::string listen;  // channel address (tcp:HOST:PORT, shm:/path.sock, ...)
  std::string dir;
  // fdatasync at least this often while writes arrive (flush barriers sync at once).
  std::chrono::nanoseconds sync_interval = std::chrono::milliseconds(50);
  std::chrono::nanoseconds state_interval = std::chrono::milliseconds(200);
  std::chrono::nanoseconds report = std::chrono::seconds(1);  // dr.replica lines
  // Which boot of this host the server runs in, told to remote disk clients (a
  // client whose unflushed writes were in the page cache of an earlier boot knows
  // they may be gone). Empty: /proc/sys/kernel/random/boot_id.
  std::string boot_id;
};

// The state file, as key=value lines.
std::string DiskImagePath(const std::string& dir);
std::string StatePath(const std::string& dir);
// Reads DIR/state. Throws ftvm::Error when it is missing or unreadable.
std::map<std::string, std::string> ReadReplicaState(const std::string& dir);

class DrReplica {
 public:
  // Creates DIR if needed and listens. Throws ftvm::Error.
  DrReplica(ReplicaOptions options, Clock& clock);
  ~DrReplica();

  std::string address() const { return listener_->address(); }
  // Serves sources until stop(). Returns 0, or 1 after a fatal error (logged).
  int run();
  void stop() { stopping_ = true; }

 private:
  // One source's connection; returns why it ended ("" when stopping).
  std::string Serve(transport::Channel& ch);
  // A remote disk client's connection (its open message received).
  std::string ServeDisk(transport::Channel& ch, const transport::Message& open);
  // Checks and answers a remote disk's open: "" (served from now on) or why it was
  // refused (the client is told).
  std::string OpenDisk(transport::Channel& ch, const transport::Message& open_msg, RemoteDiskOpen& open);
  // While a remote disk is served (`session`, `vm`), a new connection: the same
  // session's comes back in `out` (it takes over); others are refused.
  void AnswerWhileServing(const std::string& session, const std::string& vm, std::unique_ptr<transport::Channel>& out);
  void WriteState(const std::string& state_name, const std::string& source, uint64_t now_wall);
  // A checkpoint message, after the batches before it: kept if the image holds
  // exactly its write S (else refused, logged; the stream goes on).
  void StoreCheckpoint(std::span<const uint8_t> message);
  // The checkpoint can no longer be rolled back to: DIR/checkpoint.invalid.
  void InvalidateCheckpoint(const std::string& why);
  void AttachCheckpoint();

  ReplicaOptions options_;
  Clock& clock_;
  std::unique_ptr<transport::Listener> listener_;
  std::unique_ptr<DiskApplier> applier_;
  std::optional<ApplierState> saved_;  // from DIR/state at start
  std::optional<CheckpointStore> checkpoint_;
  std::atomic<bool> stopping_{false};
  std::string last_error_;
};

}  // namespace ftvm::storage
