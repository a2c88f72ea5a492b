// Post-copy: the VM runs on the destination before its memory has arrived.
//
//   source (its VM paused for good: handed over)   destination (the VM runs here)
//                                    <---  PageRequest: received so far, and the pages
//                                          the VM is waiting for
//   MemoryPages: those first (with a few pages  --->  placed with UFFDIO_COPY /
//   after each), then the rest in likely order:       UFFDIO_ZEROPAGE, which wakes
//   the pages the VM wrote last, then by address      whoever waits for them
//   PostcopyDone: u64 pages sent                --->  every page arrived; the digest
//                                                     of what arrived is its owner's
//                                    <---  PostcopyDone: the source may go
//
// The destination's guest RAM starts empty (every page a hole in the memfd) and is
// registered with userfaultfd in missing mode: an access to a page that has not
// arrived, by the vCPU, KVM or device code, blocks in the kernel until it arrives.
// The memory digest is taken of the pages as they arrive, before the guest can
// change them, so it must equal the source's at the pause.
//
// The source keeps at most kPostcopyWindowBytes of pushed pages unacknowledged, so
// a page the VM waits for never queues behind more than that on the channel.
//
// A source lost before every page arrived is the VM lost: the receiver says so, and
// its owner must stop the VM (Machine::abort) before it runs on with pages it never
// got; nothing is filled in with zeros.
//
// PageRequest payload: u64 bytes of page messages received so far, then u32 page
// numbers (possibly none: a progress report). Little-endian.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/unique_fd.h"
#include "transport/channel.h"
#include "vmm/guest_memory.h"
#include "vmm/page_bitmap.h"
#include "vmm/state_digest.h"

namespace ftvm::migration {

inline constexpr uint8_t kMsgPageRequest = 15;
inline constexpr uint8_t kMsgPostcopyDone = 16;
inline constexpr uint64_t kPostcopyWindowBytes = 1u << 20;

struct PostcopySenderStats {
  uint64_t pages = 0;            // every page of memory, each sent once
  uint64_t requested_pages = 0;  // asked for by the destination
  uint64_t zero_pages = 0;       // sent as a page number only
  uint64_t bytes_sent = 0;
  uint64_t ns = 0;               // from the first page to the destination's confirmation
  bool ended_early = false;      // the destination's VM ended before it needed them all
};

class PostcopySender {
 public:
  // `memory`: the VM's, paused for good (nothing writes it any more). `first`: pages
  // to push before the rest (the pages the VM wrote last: its working set).
  PostcopySender(const vmm::GuestMemory& memory, transport::Channel& channel, Clock& clock,
                 vmm::PageBitmap first);
  // In the pause, before the destination runs the VM (its replica may touch memory
  // while it sets up): answers a PageRequest at once. "" or why it failed.
  std::string answer(const transport::Message& request);
  // Sends every page once, requested ones first, and waits for the destination to
  // confirm. "" when it did, or why not: then the VM is lost (the destination ran it
  // with pages it does not have, and this copy is out of date). `silence`: the
  // destination counts as lost after this long without a message while pages are
  // outstanding.
  std::string serve(std::chrono::nanoseconds silence);
  const PostcopySenderStats& stats() const { return stats_; }

 private:
  // "" or why: handles one message from the destination.
  std::string Handle(const transport::Message& msg);
  std::string SendBatch(const std::vector<uint32_t>& pages);

  const vmm::GuestMemory& memory_;
  transport::Channel& channel_;
  Clock& clock_;
  vmm::PageBitmap sent_;
  const vmm::PageBitmap data_;    // pages that are not holes of the memfd
  bool ended_early_ = false;
  std::vector<uint32_t> order_;   // background order
  size_t next_ = 0;               // into order_
  std::vector<uint32_t> urgent_;  // requested, not yet sent
  uint64_t page_bytes_sent_ = 0;  // what the window counts
  uint64_t acked_bytes_ = 0;
  uint64_t last_heard_ns_ = 0;
  PostcopySenderStats stats_;
};

struct PostcopyReceiverStats {
  uint64_t pages = 0;
  uint64_t received_pages = 0;
  uint64_t faults = 0;           // distinct pages the VM waited for
  uint64_t zero_pages = 0;
  uint64_t holes_filled = 0;     // of those, zero-filled because the VM touched them
  uint64_t fault_wait_p50_ns = 0;
  uint64_t fault_wait_p99_ns = 0;
  uint64_t fault_wait_max_ns = 0;
  uint64_t complete_ns = 0;      // start() to the last page
};

class PostcopyReceiver {
 public:
  // Empties `memory` (every page a hole) and registers it with userfaultfd in
  // missing mode; from here on an access blocks until start() brings the page.
  // Throws ftvm::Error naming what the kernel refused.
  PostcopyReceiver(vmm::GuestMemory& memory, Clock& clock);
  ~PostcopyReceiver();
  PostcopyReceiver(const PostcopyReceiver&) = delete;
  PostcopyReceiver& operator=(const PostcopyReceiver&) = delete;

  // `why` empty: every page arrived (memory is the source's at the pause; `memory`
  // is the digest of what arrived) and userfaultfd is off again. Otherwise the VM is
  // lost, and `why` says how.
  using Done = std::function<void(const std::string& why, const vmm::MemorySum& memory)>;
  // Starts asking the source (the other end of `channel`, a PostcopySender) for
  // the pages anything here faults on: before the replica runs.
  void start_requests(transport::Channel& channel);
  // Places the pages of a MemoryPages message that its owner received (before the
  // handover, while the owner reads the channel). "" or why not.
  std::string deliver(std::span<const uint8_t> payload);
  // From the handover on, receives the rest from the channel itself. `done` is
  // called once, from a thread of this receiver. `silence`: the source counts as
  // lost after this long without a message.
  void start(std::chrono::nanoseconds silence, Done done);
  // The VM ended: no more pages are needed, and `done` is not called. Before the
  // channel closes (it tells the source).
  void stop();
  // Waits until its threads have ended (after stop(), `done` has returned if it ran).
  void join();

  PostcopyReceiverStats stats() const;

 private:
  void FaultLoop();
  void ReceiveLoop(std::chrono::nanoseconds silence, const Done& done);
  // "" or why: places the pages of one MemoryPages message.
  std::string Place(std::span<const uint8_t> payload);
  // Zero-fills `page`, a known hole (under mu_).
  std::string FillHole(uint64_t page);
  void SendRequest(const std::vector<uint32_t>& pages);
  void StopFaultThread();

  vmm::GuestMemory& memory_;
  Clock& clock_;
  UniqueFd uffd_;
  UniqueFd stop_fd_;  // eventfd: ends FaultLoop
  transport::Channel* channel_ = nullptr;
  vmm::MemoryDigest digest_;  // of the pages as they arrived
  std::thread faults_;
  std::mutex faults_join_mu_;  // StopFaultThread's: one join at a time
  std::thread receiver_;
  std::atomic<bool> stopping_{false};
  uint64_t start_ns_ = 0;
  std::atomic<uint64_t> received_bytes_{0};
  std::mutex send_mu_;
  bool finished_ = false;  // every page arrived (under send_mu_)
  mutable std::mutex mu_;  // guards what both threads see below
  vmm::PageBitmap received_;
  vmm::PageBitmap requested_;
  // Pages the source said are holes, not filled: the memory file keeps them as holes
  // (zeros, no memory) unless the VM touches one before the end, and then it is
  // zero-filled at once, with no request. (Filling all of them cost the destination
  // a zeroed page-cache page each: 0.2 s and 900 MiB for a 1 GiB VM using 110 MiB.)
  vmm::PageBitmap unfilled_holes_;
  std::vector<std::pair<uint32_t, uint64_t>> waiting_;  // page, when the VM first faulted on it
  std::vector<uint64_t> waits_ns_;
  PostcopyReceiverStats stats_;
};

}  // namespace ftvm::migration
