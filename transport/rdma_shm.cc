// The shared-memory implementation of the RDMA channel's one-sided-write interface
// ("rdma+shm:"), with the semantics the ring protocol relies on from verbs:
//   - a write copies bytes from the writer's private staging memory into memory the
//     peer exposes (here: shared, there: registered), like the device's DMA would;
//   - a doorbell (write with immediate) is pushed into the peer's doorbell queue after
//     the bytes, with release ordering, so the bytes are visible once the doorbell is
//     taken (verbs: the completion of RDMA WRITE WITH IMMEDIATE);
//   - the doorbell queue has a fixed number of entries, like a receive queue; a full
//     queue is an error here ("receiver not ready" on a real device), so the emulation
//     also checks that the ring protocol's doorbell credit holds;
//   - arm() + an eventfd stand for ibv_req_notify_cq() + the completion channel: the
//     writer signals the eventfd only when the peer armed it (one-shot).
// What it does not emulate: latency, the device's own copies, errors of a real fabric.
//
// Memory layout (one memfd, sealed against resizing, mapped by both processes):
//
//   [0, C)         control: magic, layout version, ring size; per link (0: listener
//                  -> connector, 1: connector -> listener) the sender's ack area and
//                  per end (0: sender, 1: receiver) a doorbell queue
//   [C, C+R)       link 0's ring (the connector receives into it)
//   [C+R, C+2R)    link 1's ring (the listener receives into it)
//
// Set-up is the shared-memory channel's: a Unix socket passes the memfd and four
// eventfds (per link and end, the end's completion channel) with a hello of kind
// kRdmaShm, and stays open so that either side's death is seen.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <array>
#include <atomic>
#include <cstring>
#include <mutex>
#include <memory>
#include <new>
#include <vector>

#include "common/error.h"
#include "common/log.h"
#include "eventlog/format.h"
#include "transport/channel.h"
#include "transport/frame.h"
#include "transport/io.h"
#include "transport/rdma_ring.h"
#include "transport/shm_util.h"
#include "transport/sockets.h"

namespace ftvm::transport {

using detail::Deadline;
using detail::Mapping;
using eventlog::GetLe64;
using eventlog::PutLe64;

namespace {

constexpr uint8_t kMagic[8] = {'F', 'T', 'V', 'M', 'R', 'D', 'M', 'A'};
constexpr uint32_t kLayoutVersion = 1;
using detail::kHandshakeTimeout;
constexpr size_t kSetupBytes = kHelloBytes + 16;  // hello, ring size, memory size
constexpr int kSetupFds = 5;                       // the memfd, four eventfds
constexpr size_t kLine = 128;  // see shm_channel.cc: lines are prefetched in pairs

struct alignas(kLine) QueueProducer {
  std::atomic<uint64_t> tail;
};
struct alignas(kLine) QueueConsumer {
  std::atomic<uint64_t> head;
  std::atomic<uint32_t> armed;  // the consumer asked for an eventfd signal
};
struct DoorbellQueue {
  QueueProducer producer;
  QueueConsumer consumer;
  uint32_t entries[rdma::kDoorbellQueueDepth];
};
struct LinkControl {
  alignas(kLine) uint8_t ack[rdma::kAckBytes];  // the sender's exposed memory
  DoorbellQueue queues[2];                      // 0: the sender's, 1: the receiver's
};
struct Control {
  uint8_t magic[8];
  uint32_t version;
  uint32_t reserved;
  uint64_t ring_bytes;
  uint64_t data_offset;
  LinkControl links[2];
};
static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free);
constexpr size_t kControlBytes = (sizeof(Control) + 4095) & ~size_t{4095};

class ShmLink final : public rdma::OneSidedLink {
 public:
  // `end` 0: this process sends on `link` (exposed: the ack area; staging: a private
  // ring mirror); 1: it receives (exposed: the ring; staging: a private ack area).
  ShmLink(std::shared_ptr<Mapping> map, int link, int end, UniqueFd my_efd, UniqueFd peer_efd,
          const std::string& what)
      : map_(std::move(map)), my_efd_(std::move(my_efd)), peer_efd_(std::move(peer_efd)) {
    auto* ctl = std::launder(reinterpret_cast<Control*>(map_->data()));
    my_queue_ = &ctl->links[link].queues[end];
    peer_queue_ = &ctl->links[link].queues[1 - end];
    const size_t cap = ctl->ring_bytes;
    uint8_t* ring = map_->data() + ctl->data_offset + static_cast<size_t>(link) * cap;
    uint8_t* ack = ctl->links[link].ack;
    if (end == 0) {
      exposed_ = {ack, rdma::kAckBytes};
      peer_exposed_ = {ring, cap};
      staging_map_ = detail::MapPrivate(cap, what);
    } else {
      exposed_ = {ring, cap};
      peer_exposed_ = {ack, rdma::kAckBytes};
      staging_map_ = detail::MapPrivate(4096, what);
    }
  }

  std::string describe() const override { return "shared-memory emulation of one-sided writes"; }
  std::span<uint8_t> exposed() override { return exposed_; }
  std::span<uint8_t> staging() override { return {staging_map_.data(), staging_map_.size()}; }

  std::string write(size_t src, size_t len, size_t dst, std::optional<uint32_t> imm) override {
    std::lock_guard lock(mutex_);
    if (src + len > staging_map_.size() || dst + len > peer_exposed_.size()) {
      return "write of " + std::to_string(len) + " bytes at " + std::to_string(dst) + " outside the peer's region";
    }
    const uint8_t* from = staging_map_.data() + src;
    uint8_t* to = peer_exposed_.data() + dst;
    if (len % 8 == 0 && dst % 8 == 0 && src % 8 == 0 && len <= rdma::kAckBytes) {
      // Small aligned writes (acknowledgements) land word by word, never torn, as an
      // RDMA device places an aligned 8-byte write.
      for (size_t i = 0; i < len; i += 8) {
        uint64_t v;
        std::memcpy(&v, from + i, 8);
        std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(to + i)).store(v, std::memory_order_release);
      }
    } else if (len > 0) {
      std::memcpy(to, from, len);
    }
    if (!imm) return {};
    auto& q = *peer_queue_;
    const uint64_t t = q.producer.tail.load(std::memory_order_relaxed);
    const uint64_t h = q.consumer.head.load(std::memory_order_acquire);
    if (t - h >= rdma::kDoorbellQueueDepth) {
      return "the peer's doorbell queue of " + std::to_string(rdma::kDoorbellQueueDepth) +
             " entries is full (a device would answer receiver-not-ready): the doorbell credit was broken";
    }
    q.entries[t % rdma::kDoorbellQueueDepth] = *imm;
    // Release: the bytes copied above and the entry are visible before the new tail.
    q.producer.tail.store(t + 1, std::memory_order_release);
    // Against the consumer's arm(): at least one of us sees the other's store.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (q.consumer.armed.load(std::memory_order_relaxed) != 0 &&
        q.consumer.armed.exchange(0, std::memory_order_relaxed) != 0) {
      detail::SignalEventfd(peer_efd_.get());
    }
    return {};
  }

  rdma::PollResult poll(std::span<uint32_t> out) override {
    auto& q = *my_queue_;
    const uint64_t h = q.consumer.head.load(std::memory_order_relaxed);
    const uint64_t t = q.producer.tail.load(std::memory_order_acquire);
    rdma::PollResult r;
    if (t - h > rdma::kDoorbellQueueDepth) {
      r.error = "doorbell queue corrupted (producer position " + std::to_string(t) + ", consumer position " +
                std::to_string(h) + ")";
      return r;
    }
    r.count = std::min<uint64_t>(t - h, out.size());
    for (size_t i = 0; i < r.count; ++i) out[i] = q.entries[(h + i) % rdma::kDoorbellQueueDepth];
    if (r.count > 0) q.consumer.head.store(h + r.count, std::memory_order_release);
    return r;
  }

  int notify_fd() const override { return my_efd_.get(); }
  std::string arm() override {
    my_queue_->consumer.armed.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return {};
  }
  void acknowledge_notification() override { detail::DrainEventfd(my_efd_.get()); }

 private:
  std::shared_ptr<Mapping> map_;  // shared by both links of a channel; outlives the pointers below
  DoorbellQueue* my_queue_ = nullptr;
  DoorbellQueue* peer_queue_ = nullptr;
  UniqueFd my_efd_;    // signalled by the peer when we armed
  UniqueFd peer_efd_;  // signalled by us when the peer armed
  std::span<uint8_t> exposed_;
  std::span<uint8_t> peer_exposed_;
  Mapping staging_map_;
  std::mutex mutex_;  // writes come from the sending (or receiving) thread and close()
};

// `side` 0 is the listener, 1 the connector. `efds`: link 0 sender, link 0 receiver,
// link 1 sender, link 1 receiver.
std::unique_ptr<Channel> MakeChannel(std::string peer, int side, Mapping mapping, UniqueFd sock,
                                     std::array<UniqueFd, 4> efds, std::chrono::nanoseconds spin) {
  auto map = std::make_shared<Mapping>(std::move(mapping));
  const size_t ring_bytes = std::launder(reinterpret_cast<Control*>(map->data()))->ring_bytes;
  const int out_link = side;  // the listener sends on link 0, the connector on link 1
  const int in_link = 1 - side;
  rdma::RingChannelParts parts;
  parts.kind = "rdma+shm";
  parts.peer = std::move(peer);
  parts.out = std::make_unique<ShmLink>(map, out_link, 0, std::move(efds[2 * out_link]),
                                        std::move(efds[2 * out_link + 1]), parts.peer);
  parts.in = std::make_unique<ShmLink>(map, in_link, 1, std::move(efds[2 * in_link + 1]),
                                       std::move(efds[2 * in_link]), parts.peer);
  parts.setup_socket = std::move(sock);
  parts.ring_bytes = ring_bytes;
  parts.spin = spin;
  return rdma::MakeRingChannel(std::move(parts));
}

Mapping CreateSharedMemory(size_t ring_bytes, UniqueFd& memfd, const std::string& what) {
  Mapping map = detail::CreateSealedMemory(kControlBytes + 2 * ring_bytes, "ftvm-rdma-emulation", memfd, what);
  auto* ctl = new (map.data()) Control();
  std::memcpy(ctl->magic, kMagic, sizeof kMagic);
  ctl->version = kLayoutVersion;
  ctl->ring_bytes = ring_bytes;
  ctl->data_offset = kControlBytes;
  return map;
}

class RdmaShmListener final : public Listener {
 public:
  RdmaShmListener(std::string path, const RdmaOptions& options) : path_(std::move(path)), options_(options) {
    const std::string what = "rdma+shm listen on " + path_;
    if (!rdma::ValidRingBytes(options_.ring_bytes)) {
      throw Error(what + ": ring size " + std::to_string(options_.ring_bytes) +
                  " is not a power of two between 4096 and " + std::to_string(rdma::kMaxRingBytes));
    }
    fd_ = detail::ListenUnix(path_, what, &inode_);
    log::info("rdma_emulation", {{"listener", address()},
                                 {"note", "RDMA ring protocol over shared memory (test/emulation transport)"}});
  }
  ~RdmaShmListener() override { detail::UnlinkUnixIfOurs(path_, inode_); }

  std::string address() const override { return "rdma+shm:" + path_; }

  std::unique_ptr<Channel> accept(std::chrono::nanoseconds timeout) override {
    const Deadline deadline(timeout);
    const std::string what = "rdma+shm accept on " + path_;
    for (;;) {
      UniqueFd conn = detail::AcceptUnix(fd_.get(), deadline, what);
      if (!conn) return nullptr;
      // Local resources: failures here are ours and throw.
      UniqueFd memfd;
      Mapping map = CreateSharedMemory(options_.ring_bytes, memfd, what);
      std::array<UniqueFd, 4> efds;
      for (auto& e : efds) {
        e.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!e) throw SysError(what + ": eventfd");
      }
      // The handshake: failures here are the peer's; drop it and keep listening.
      uint8_t setup[kSetupBytes];
      auto hello = EncodeHello(HelloKind::kRdmaShm);
      std::memcpy(setup, hello.data(), hello.size());
      PutLe64(setup + kHelloBytes, options_.ring_bytes);
      PutLe64(setup + kHelloBytes + 8, map.size());
      const int fds[kSetupFds] = {memfd.get(), efds[0].get(), efds[1].get(), efds[2].get(), efds[3].get()};
      std::string err = detail::SendWithFds(conn.get(), setup, fds);
      if (!err.empty()) {
        err = "sending the setup message: " + err;
      } else {
        std::array<uint8_t, kHelloBytes> ack{};
        err = detail::RecvAll(conn.get(), ack, Deadline(kHandshakeTimeout));
        err = err.empty() ? CheckHello(ack, HelloKind::kRdmaShm) : "waiting for the peer's hello: " + err;
      }
      if (!err.empty()) {
        log::warn("channel_handshake_failed", {{"listener", address()}, {"error", err}});
        if (deadline.expired()) return nullptr;
        continue;
      }
      log::debug("channel_accepted", {{"listener", address()}, {"ring_bytes", options_.ring_bytes}});
      return MakeChannel(address(), 0, std::move(map), std::move(conn), std::move(efds), options_.spin);
    }
  }

 private:
  std::string path_;
  RdmaOptions options_;
  UniqueFd fd_;
  uint64_t inode_ = 0;
};

}  // namespace

std::unique_ptr<Listener> RdmaShmListen(const std::string& socket_path, const RdmaOptions& options) {
  return std::make_unique<RdmaShmListener>(socket_path, options);
}

std::unique_ptr<Channel> RdmaShmConnect(const std::string& socket_path, std::chrono::nanoseconds timeout,
                                        const RdmaOptions& options) {
  const std::string what = "rdma+shm connect to " + socket_path;
  const Deadline deadline(timeout);
  UniqueFd sock = detail::ConnectUnix(socket_path, what);
  uint8_t setup[kSetupBytes];
  std::vector<UniqueFd> fds;
  bool truncated = false;
  std::string failed = detail::RecvWithFds(sock.get(), setup, fds, &truncated, deadline);
  if (failed == "timed out") throw Error(what + ": no setup message within " + detail::DescribeTimeout(timeout));
  if (!failed.empty()) throw Error(what + ": receiving the setup message: " + failed);
  std::string bad = CheckHello(std::span<const uint8_t, kHelloBytes>(setup, kHelloBytes), HelloKind::kRdmaShm);
  if (!bad.empty()) throw Error(what + ": " + bad);
  const uint64_t ring_bytes = GetLe64(setup + kHelloBytes);
  const uint64_t total = GetLe64(setup + kHelloBytes + 8);
  if (!rdma::ValidRingBytes(ring_bytes) || total != kControlBytes + 2 * ring_bytes) {
    throw Error(what + ": bad setup message (ring of " + std::to_string(ring_bytes) + " bytes, memory of " +
                std::to_string(total) + " bytes)");
  }
  if (truncated || fds.size() != kSetupFds) {
    throw Error(what + ": setup message carried " + std::to_string(fds.size()) + " descriptors, expected " +
                std::to_string(kSetupFds));
  }
  struct stat st {};
  if (::fstat(fds[0].get(), &st) < 0) throw SysError(what + ": fstat of the shared memory");
  int seals = ::fcntl(fds[0].get(), F_GET_SEALS);
  if (static_cast<uint64_t>(st.st_size) != total || seals < 0 || !(seals & F_SEAL_SHRINK)) {
    throw Error(what + ": the shared memory is not what the setup message announced");
  }
  Mapping map = detail::MapShared(fds[0].get(), total, what);
  const auto* ctl = std::launder(reinterpret_cast<const Control*>(map.data()));
  if (std::memcmp(ctl->magic, kMagic, sizeof kMagic) != 0 || ctl->version != kLayoutVersion ||
      ctl->ring_bytes != ring_bytes || ctl->data_offset != kControlBytes) {
    throw Error(what + ": the shared memory does not hold an RDMA emulation control block of layout version " +
                std::to_string(kLayoutVersion));
  }
  auto ack = EncodeHello(HelloKind::kRdmaShm);
  std::string err = detail::SendAll(sock.get(), ack, deadline);
  if (!err.empty()) throw Error(what + ": sending the hello: " + err);
  std::array<UniqueFd, 4> efds = {std::move(fds[1]), std::move(fds[2]), std::move(fds[3]), std::move(fds[4])};
  return MakeChannel("rdma+shm:" + socket_path, 1, std::move(map), std::move(sock), std::move(efds), options.spin);
}

}  // namespace ftvm::transport
