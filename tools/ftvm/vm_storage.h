// What `ftvm run`, `ftvm primary` and `ftvm dr-start` add to a VM for its disk: a
// DR mirror (--dr-target), and the disk's part of the control socket (`ftvm
// move-disk`, the disk and DR rows of `ftvm status`). Built before the VM runs, torn
// down after.
#pragma once

#include <boost/program_options.hpp>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/clock.h"
#include "control/control.h"
#include "tools/ftvm/operations.h"
#include "storage/disk_mirror.h"
#include "storage/image_stream.h"
#include "storage/remote_disk.h"
#include "storage/sync_gate.h"
#include "storage/vm_checkpoint.h"
#include "vmm/health_monitor.h"
#include "vmm/machine.h"

namespace ftvm::cli {

struct StorageCliOptions {
  std::string dr_target;     // channel address of an ftvm dr-replica
  double dr_queue_mib = 32;  // the mirror's queue bound
  double dr_report_s = 1;    // dr.lag log lines
  // Synchronous DR: disk writes complete for the guest once the replica holds them
  // durably (storage/sync_gate.h); after dr_sync_timeout_s without the replica,
  // asynchronous (loudly) until it is back.
  bool dr_sync = false;
  double dr_sync_timeout_s = 3;
  // Every this many seconds the VM's whole state goes to the DR target too, at a
  // disk-write position (storage/dr_checkpoint.h), so the VM can be resumed there
  // (ftvm dr-start --from-checkpoint) rather than booted. 0: never.
  double dr_checkpoint_s = 0;
  boost::program_options::options_description describe();
  // "" or what is wrong with the values.
  std::string check() const;
};

class VmStorage {
 public:
  // Attaches the mirror (if asked for). Before machine.run(). Throws ftvm::Error.
  VmStorage(const StorageCliOptions& options, vmm::Machine& machine, Clock& clock);
  ~VmStorage();
  // Answers move-disk and adds the disk's part to the status on `control`, which
  // must be destroyed before this.
  void serve(ControlEndpoint& control);
  // The VM is stopping: a disk request waiting for a lost disk server gives up.
  // Any thread.
  void cancel() {
    if (storage::RemoteDisk* r = remote_.load()) r->cancel();
  }
  // A last dr.lag line (the VM has stopped).
  void final_report();
  // The disk is still being streamed in by `stream` (null: it is local): no disk
  // move until the copy is complete.
  void set_image_stream(const storage::ImageStream* stream) { stream_ = stream; }

 private:
  control::Reply MoveDisk(const control::Request& req, control::Responder& out);
  // The same to a disk server (`--to tcp:HOST:PORT`, storage/remote_disk.h).
  control::Reply MoveDiskRemote(const control::Request& req, control::Responder& out);
  // Attaches `mirror` to the disk, starts it and waits until it is nearly synced,
  // with progress lines. Throws ftvm::Error (the mirror detached) when the copy fails.
  void CopyWhileRunning(storage::DiskMirror& mirror, const std::string& to, control::Responder& out);
  storage::MirrorOptions MoveMirrorOptions(const std::string& disk_path, double rate_mib) const;
  void Status(control::StatusReply& status);
  // The --dr-checkpoint-s thread: pauses the VM at a boundary, captures its state
  // and queues it on the mirror.
  void CheckpointLoop();
  void TakeCheckpoint();

  StorageCliOptions options_;
  vmm::Machine& machine_;
  Clock& clock_;
  storage::DiskTaps taps_;
  std::unique_ptr<storage::DiskMirror> dr_;
  std::unique_ptr<storage::SyncDrGate> sync_;  // --dr-sync (after dr_: it watches it)
  std::mutex move_mu_;  // one move at a time
  // The disk moved to a disk server: its backend (the device owns it).
  std::atomic<storage::RemoteDisk*> remote_{nullptr};
  const storage::ImageStream* stream_ = nullptr;
  std::mutex checkpoint_mu_;
  std::condition_variable checkpoint_cv_;
  bool checkpoint_stop_ = false;
  // The last capture's buffers, back from the sender: the next capture copies into
  // memory that is already mapped (storage/vm_checkpoint.h).
  std::shared_ptr<storage::VmStateCapture> spare_capture_;
  std::thread checkpointer_;  // last: stopped first
};

// `ftvm run --image-from HOST:PORT/NAME`: the disk (--disk, the local copy) is
// streamed from an image server while the VM runs (storage/image_stream.h).
struct ImageFromOptions {
  std::string from;        // HOST:PORT/NAME; empty: a plain local disk
  double timeout_s = 10;   // connecting, a demanded block, and a lost server's time to come back
  boost::program_options::options_description describe();
  // "" or what is wrong with the values.
  std::string check() const;
};

// Runs a VM (no recording) with its mirror and control socket until it powers off or
// a signal; returns the exit code of `ftvm <cmd>` (errors on stderr). With `image`,
// its disk is streamed in; `health`: the guest health monitor's settings (off by
// default). cmd_run.cc.
// `prepare`, if given, runs on the new machine before anything else is attached to
// it (dr-start --from-checkpoint loads the state there and rolls the disk back).
int RunVm(const std::string& cmd, const vmm::VmConfig& config, const StorageCliOptions& storage_options,
          const OperatorOptions& operator_options, const ImageFromOptions* image = nullptr,
          const vmm::HealthOptions& health = {}, const std::function<void(vmm::Machine&)>& prepare = {});

}  // namespace ftvm::cli
