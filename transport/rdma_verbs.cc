// The RDMA verbs implementation of the ring protocol's one-sided-write interface
// (transport/rdma_ring.h), and the "rdma:" listener and connector.
//
// Per direction one reliable-connected queue pair, so the sending and receiving
// threads never share a queue pair or a completion queue:
//   - the receiver registers its ring (remote write) and posts kDoorbellQueueDepth
//     zero-length receives, each of which an RDMA WRITE WITH IMMEDIATE (the doorbell)
//     consumes; it reposts one for each completion it takes;
//   - the sender registers an equally large staging ring (the source of its writes) and
//     an ack area (remote write) that the receiver writes its position into;
//   - completions of doorbells go to a completion queue with a completion channel, so a
//     thread that has spun long enough sleeps in ppoll() on the channel's descriptor
//     (together with the setup socket and the channel's close() eventfd);
//   - sends are signalled every kSignalEvery work requests, which is how the send queue
//     is reaped; writes up to the device's inline limit (acknowledgements, doorbells)
//     are copied at post time.
//
// Set-up is over a TCP side channel (the address's HOST:PORT): the hello (kind kRdma),
// the listener's ring size, then both sides' queue pair numbers, PSNs, LID, GID and the
// address and rkey of their exposed memory; both bring their queue pairs to RTS and say
// "ready" before anything is written. The socket stays open: the peer's death closes
// it, which every sleep watches. No librdmacm: a TCP socket works the same on
// InfiniBand and RoCE and doubles as the death detector.
//
// With no RDMA device (the kernel has no InfiniBand support, or no adapter), Listen and
// Connect throw "no RDMA device (ibv_get_device_list found none: ...)" at once.
#include <arpa/inet.h>
#include <infiniband/verbs.h>
#include <sched.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
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
using detail::HostPort;
using detail::Mapping;
using eventlog::GetLe16;
using eventlog::GetLe32;
using eventlog::GetLe64;
using eventlog::PutLe16;
using eventlog::PutLe32;
using eventlog::PutLe64;

namespace {

using detail::kHandshakeTimeout;
constexpr uint32_t kSendQueueDepth = 256;
constexpr uint32_t kSignalEvery = 32;
constexpr uint32_t kWantInline = 64;
// A send queue that does not drain in this long belongs to a link that is dead
// without the queue pair having noticed (its retries alone take ~0.5 s).
constexpr std::chrono::seconds kSendQueueStuck{30};

// --- RAII for verbs objects ------------------------------------------------------

struct DeviceListDeleter {
  void operator()(ibv_device** list) const { ::ibv_free_device_list(list); }
};
using DeviceListPtr = std::unique_ptr<ibv_device*, DeviceListDeleter>;

// Releasing a verbs object fails only when something still uses it (a bug); it is
// logged, not thrown, because this runs in destructors.
template <typename T, int (*Release)(T*)>
struct Releaser {
  void operator()(T* object) const {
    if (int rc = Release(object); rc != 0) {
      log::warn("rdma_release_failed", {{"error", std::strerror(rc > 0 ? rc : errno)}});
    }
  }
};
int CloseDevice(ibv_context* c) { return ::ibv_close_device(c); }
int DeallocPd(ibv_pd* pd) { return ::ibv_dealloc_pd(pd); }
int DeregMr(ibv_mr* mr) { return ::ibv_dereg_mr(mr); }
int DestroyCq(ibv_cq* cq) { return ::ibv_destroy_cq(cq); }
int DestroyChannel(ibv_comp_channel* ch) { return ::ibv_destroy_comp_channel(ch); }
int DestroyQp(ibv_qp* qp) { return ::ibv_destroy_qp(qp); }
using ContextPtr = std::unique_ptr<ibv_context, Releaser<ibv_context, CloseDevice>>;
using PdPtr = std::unique_ptr<ibv_pd, Releaser<ibv_pd, DeallocPd>>;
using MrPtr = std::unique_ptr<ibv_mr, Releaser<ibv_mr, DeregMr>>;
using CqPtr = std::unique_ptr<ibv_cq, Releaser<ibv_cq, DestroyCq>>;
using CompChannelPtr = std::unique_ptr<ibv_comp_channel, Releaser<ibv_comp_channel, DestroyChannel>>;
using QpPtr = std::unique_ptr<ibv_qp, Releaser<ibv_qp, DestroyQp>>;

std::string NoDeviceText(int err) {
  // rdma-core returns NULL with errno ENOSYS when the kernel has no RDMA support at
  // all, and an empty list when it has but no adapter is present.
  std::string text = "no RDMA device (ibv_get_device_list found none";
  if (err != 0) text += std::string(": ") + std::strerror(err);
  return text + ")";
}

// An open device, its protection domain and the port's addressing.
class VerbsDevice {
 public:
  VerbsDevice(const RdmaOptions& options, const std::string& what) : port_(options.port), gid_index_(options.gid_index) {
    errno = 0;
    int n = 0;
    DeviceListPtr list(::ibv_get_device_list(&n));
    if (!list || n == 0) {
      const int err = list ? 0 : errno;
      log::error("rdma_no_device", {{"what", what}, {"cause", NoDeviceText(err)}});
      throw Error(what + ": " + NoDeviceText(err));
    }
    ibv_device* chosen = nullptr;
    std::string names;
    for (int i = 0; i < n; ++i) {
      const char* name = ::ibv_get_device_name(list.get()[i]);
      names += (i ? ", " : "") + std::string(name);
      if (chosen == nullptr && (options.device.empty() || options.device == name)) chosen = list.get()[i];
    }
    if (chosen == nullptr) throw Error(what + ": no RDMA device named '" + options.device + "' (found " + names + ")");
    name_ = ::ibv_get_device_name(chosen);
    ctx_.reset(::ibv_open_device(chosen));
    if (!ctx_) throw SysError(what + ": opening RDMA device " + name_);
    if (int rc = ::ibv_query_port(ctx_.get(), port_, &port_attr_); rc != 0) {
      throw SysError(what + ": querying port " + std::to_string(port_) + " of " + name_, rc);
    }
    if (port_attr_.state != IBV_PORT_ACTIVE) {
      throw Error(what + ": port " + std::to_string(port_) + " of RDMA device " + name_ + " is not active (" +
                  ::ibv_port_state_str(port_attr_.state) + ")");
    }
    if (int rc = ::ibv_query_gid(ctx_.get(), port_, gid_index_, &gid_); rc != 0) {
      throw SysError(what + ": reading GID " + std::to_string(gid_index_) + " of " + name_, rc > 0 ? rc : errno);
    }
    pd_.reset(::ibv_alloc_pd(ctx_.get()));
    if (!pd_) throw SysError(what + ": allocating a protection domain on " + name_);
    log::info("rdma_device", {{"device", name_}, {"port", static_cast<int>(port_)}, {"lid", port_attr_.lid},
                              {"mtu", 128 << port_attr_.active_mtu}});
  }

  ibv_context* context() const { return ctx_.get(); }
  ibv_pd* pd() const { return pd_.get(); }
  const std::string& name() const { return name_; }
  uint8_t port() const { return port_; }
  int gid_index() const { return gid_index_; }
  const ibv_port_attr& port_attr() const { return port_attr_; }
  const ibv_gid& gid() const { return gid_; }

 private:
  uint8_t port_;
  int gid_index_;
  std::string name_;
  ibv_port_attr port_attr_{};
  ibv_gid gid_{};
  ContextPtr ctx_;  // declared before the PD: released after it
  PdPtr pd_;
};

// What one end tells the other about a queue pair and the memory it exposes.
struct LinkInfo {
  uint32_t qpn = 0;
  uint32_t psn = 0;
  uint16_t lid = 0;
  uint8_t gid[16] = {};
  uint64_t addr = 0;
  uint32_t rkey = 0;
  uint64_t size = 0;
};
constexpr size_t kLinkInfoBytes = 48;

void EncodeInfo(const LinkInfo& i, uint8_t* p) {
  std::memset(p, 0, kLinkInfoBytes);
  PutLe32(p, i.qpn);
  PutLe32(p + 4, i.psn);
  PutLe16(p + 8, i.lid);
  std::memcpy(p + 10, i.gid, 16);
  PutLe64(p + 26, i.addr);
  PutLe32(p + 34, i.rkey);
  PutLe64(p + 38, i.size);
}
LinkInfo DecodeInfo(const uint8_t* p) {
  LinkInfo i;
  i.qpn = GetLe32(p);
  i.psn = GetLe32(p + 4);
  i.lid = GetLe16(p + 8);
  std::memcpy(i.gid, p + 10, 16);
  i.addr = GetLe64(p + 26);
  i.rkey = GetLe32(p + 34);
  i.size = GetLe64(p + 38);
  return i;
}

size_t PageRound(size_t n) { return (n + 4095) & ~size_t{4095}; }

class VerbsLink final : public rdma::OneSidedLink {
 public:
  VerbsLink(std::shared_ptr<VerbsDevice> dev, size_t exposed_bytes, size_t staging_bytes, const std::string& what)
      : dev_(std::move(dev)) {
    ibv_context* ctx = dev_->context();
    channel_.reset(::ibv_create_comp_channel(ctx));
    if (!channel_) throw SysError(what + ": ibv_create_comp_channel");
    detail::SetNonBlocking(channel_->fd, what + ": completion channel");
    recv_cq_.reset(::ibv_create_cq(ctx, rdma::kDoorbellQueueDepth, nullptr, channel_.get(), 0));
    if (!recv_cq_) throw SysError(what + ": ibv_create_cq (doorbells)");
    send_cq_.reset(::ibv_create_cq(ctx, kSendQueueDepth, nullptr, nullptr, 0));
    if (!send_cq_) throw SysError(what + ": ibv_create_cq (writes)");

    exposed_map_ = detail::MapPrivate(PageRound(exposed_bytes), what);
    staging_map_ = detail::MapPrivate(PageRound(staging_bytes), what);
    exposed_mr_.reset(::ibv_reg_mr(dev_->pd(), exposed_map_.data(), exposed_map_.size(),
                                   IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE));
    if (!exposed_mr_) throw SysError(what + ": registering " + std::to_string(exposed_map_.size()) + " bytes");
    staging_mr_.reset(::ibv_reg_mr(dev_->pd(), staging_map_.data(), staging_map_.size(), IBV_ACCESS_LOCAL_WRITE));
    if (!staging_mr_) throw SysError(what + ": registering " + std::to_string(staging_map_.size()) + " bytes");

    ibv_qp_init_attr init{};
    init.send_cq = send_cq_.get();
    init.recv_cq = recv_cq_.get();
    init.qp_type = IBV_QPT_RC;
    init.sq_sig_all = 0;
    init.cap.max_send_wr = kSendQueueDepth;
    init.cap.max_recv_wr = rdma::kDoorbellQueueDepth;
    init.cap.max_send_sge = 1;
    init.cap.max_recv_sge = 1;
    init.cap.max_inline_data = kWantInline;
    qp_.reset(::ibv_create_qp(dev_->pd(), &init));
    if (!qp_) throw SysError(what + ": ibv_create_qp");
    max_inline_ = init.cap.max_inline_data;  // what the device granted

    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_INIT;
    a.pkey_index = 0;
    a.port_num = dev_->port();
    a.qp_access_flags = IBV_ACCESS_REMOTE_WRITE;
    if (int rc = ::ibv_modify_qp(qp_.get(), &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) {
      throw SysError(what + ": queue pair to INIT", rc);
    }
    // Receives may be posted from INIT on; every doorbell from the peer takes one.
    for (uint32_t i = 0; i < rdma::kDoorbellQueueDepth; ++i) {
      if (std::string err = post_receives(1); !err.empty()) throw Error(what + ": " + err);
    }
    psn_ = std::random_device{}() & 0xffffff;
  }

  LinkInfo local_info() const {
    LinkInfo i;
    i.qpn = qp_->qp_num;
    i.psn = psn_;
    i.lid = dev_->port_attr().lid;
    std::memcpy(i.gid, dev_->gid().raw, 16);
    i.addr = reinterpret_cast<uintptr_t>(exposed_map_.data());
    i.rkey = exposed_mr_->rkey;
    i.size = exposed_map_.size();
    return i;
  }

  // Brings the queue pair to RTR and RTS towards the peer's.
  void connect(const LinkInfo& remote, const std::string& what) {
    remote_ = remote;
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = dev_->port_attr().active_mtu;
    a.dest_qp_num = remote.qpn;
    a.rq_psn = remote.psn;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 12;  // 0.64 ms; the credit protocol never lets receives run out
    a.ah_attr.dlid = remote.lid;
    a.ah_attr.port_num = dev_->port();
    bool global = false;
    for (uint8_t b : remote.gid) global |= b != 0;
    if (global) {  // RoCE, or InfiniBand across subnets: address by GID
      a.ah_attr.is_global = 1;
      std::memcpy(a.ah_attr.grh.dgid.raw, remote.gid, 16);
      a.ah_attr.grh.sgid_index = static_cast<uint8_t>(dev_->gid_index());
      a.ah_attr.grh.hop_limit = 64;
    }
    if (int rc = ::ibv_modify_qp(qp_.get(), &a,
                                 IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                                     IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)) {
      throw SysError(what + ": queue pair to RTR", rc);
    }
    ibv_qp_attr r{};
    r.qp_state = IBV_QPS_RTS;
    r.timeout = 14;  // 4.096 us * 2^14 = 67 ms per try, 7 tries: a dead peer shows in ~0.5 s
    r.retry_cnt = 7;
    r.rnr_retry = 7;
    r.sq_psn = psn_;
    r.max_rd_atomic = 1;
    if (int rc = ::ibv_modify_qp(qp_.get(), &r,
                                 IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                                     IBV_QP_MAX_QP_RD_ATOMIC)) {
      throw SysError(what + ": queue pair to RTS", rc);
    }
  }

  std::string describe() const override {
    return "verbs " + dev_->name() + " port " + std::to_string(dev_->port()) + " qp " + std::to_string(qp_->qp_num);
  }
  std::span<uint8_t> exposed() override { return {exposed_map_.data(), exposed_map_.size()}; }
  std::span<uint8_t> staging() override { return {staging_map_.data(), staging_map_.size()}; }

  std::string write(size_t src, size_t len, size_t dst, std::optional<uint32_t> imm) override {
    std::lock_guard lock(mutex_);
    if (!failed_.empty()) return failed_;
    if (src + len > staging_map_.size() || dst + len > remote_.size) {
      return "write of " + std::to_string(len) + " bytes at " + std::to_string(dst) + " outside the peer's region";
    }
    if (posted_ - completed_ >= kSendQueueDepth - 1) {
      if (std::string err = reap(/*wait=*/true); !err.empty()) return err;
    }
    ibv_sge sge{};
    sge.addr = reinterpret_cast<uintptr_t>(staging_map_.data() + src);
    sge.length = static_cast<uint32_t>(len);
    sge.lkey = staging_mr_->lkey;
    ibv_send_wr wr{};
    wr.wr_id = posted_ + 1;
    wr.sg_list = len > 0 ? &sge : nullptr;
    wr.num_sge = len > 0 ? 1 : 0;
    wr.opcode = imm ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE;
    if (imm) wr.imm_data = htonl(*imm);
    wr.wr.rdma.remote_addr = remote_.addr + dst;
    wr.wr.rdma.rkey = remote_.rkey;
    if (len <= max_inline_) wr.send_flags |= IBV_SEND_INLINE;
    if ((posted_ + 1) % kSignalEvery == 0) wr.send_flags |= IBV_SEND_SIGNALED;
    ibv_send_wr* bad = nullptr;
    if (int rc = ::ibv_post_send(qp_.get(), &wr, &bad); rc != 0) {
      failed_ = std::string("ibv_post_send: ") + std::strerror(rc);
      return failed_;
    }
    ++posted_;
    return reap(/*wait=*/false);
  }

  rdma::PollResult poll(std::span<uint32_t> out) override {
    std::array<ibv_wc, 32> wcs;
    rdma::PollResult r;
    const int want = static_cast<int>(std::min(out.size(), wcs.size()));
    const int got = ::ibv_poll_cq(recv_cq_.get(), want, wcs.data());
    if (got < 0) {
      r.error = "ibv_poll_cq failed";
      return r;
    }
    for (int i = 0; i < got; ++i) {
      const ibv_wc& wc = wcs[i];
      if (wc.status != IBV_WC_SUCCESS) {
        // A flushed receive means the queue pair went to the error state, which on a
        // link that worked means the peer stopped answering.
        r.error = std::string("doorbell completion failed: ") + ::ibv_wc_status_str(wc.status) + " (" + describe() + ")";
        r.peer_lost = wc.status == IBV_WC_WR_FLUSH_ERR || wc.status == IBV_WC_RETRY_EXC_ERR;
        return r;
      }
      if (wc.opcode != IBV_WC_RECV_RDMA_WITH_IMM) {
        r.error = "unexpected completion opcode " + std::to_string(static_cast<int>(wc.opcode)) + " (" + describe() + ")";
        return r;
      }
      out[r.count++] = ntohl(wc.imm_data);
    }
    if (got > 0) r.error = post_receives(static_cast<uint32_t>(got));
    return r;
  }

  int notify_fd() const override { return channel_->fd; }
  std::string arm() override {
    if (int rc = ::ibv_req_notify_cq(recv_cq_.get(), 0); rc != 0) {
      return std::string("ibv_req_notify_cq: ") + std::strerror(rc);
    }
    return {};
  }
  void acknowledge_notification() override {
    ibv_cq* cq = nullptr;
    void* context = nullptr;
    // Non-blocking: a spurious wake-up finds no event, which is fine.
    if (::ibv_get_cq_event(channel_.get(), &cq, &context) == 0) ::ibv_ack_cq_events(cq, 1);
  }

 private:
  std::string post_receives(uint32_t n) {
    // Zero-length receives: a write with immediate places its bytes by RDMA and only
    // needs a receive for the immediate.
    std::array<ibv_recv_wr, 32> wrs{};
    while (n > 0) {
      const uint32_t k = std::min<uint32_t>(n, wrs.size());
      for (uint32_t i = 0; i < k; ++i) {
        wrs[i] = ibv_recv_wr{};
        wrs[i].next = i + 1 < k ? &wrs[i + 1] : nullptr;
      }
      ibv_recv_wr* bad = nullptr;
      if (int rc = ::ibv_post_recv(qp_.get(), wrs.data(), &bad); rc != 0) {
        return std::string("ibv_post_recv: ") + std::strerror(rc);
      }
      n -= k;
    }
    return {};
  }

  // Takes send completions; with `wait`, until the send queue has room. Under mutex_.
  std::string reap(bool wait) {
    const auto give_up = std::chrono::steady_clock::now() + kSendQueueStuck;
    for (;;) {
      std::array<ibv_wc, 16> wcs;
      const int got = ::ibv_poll_cq(send_cq_.get(), static_cast<int>(wcs.size()), wcs.data());
      if (got < 0) return failed_ = "ibv_poll_cq (writes) failed";
      for (int i = 0; i < got; ++i) {
        if (wcs[i].status != IBV_WC_SUCCESS) {
          failed_ = std::string("RDMA write failed: ") + ::ibv_wc_status_str(wcs[i].status) + " (" + describe() + ")";
          return failed_;
        }
        completed_ = std::max<uint64_t>(completed_, wcs[i].wr_id);  // covers every earlier one
      }
      if (!wait || posted_ - completed_ < kSendQueueDepth - 1) return {};
      if (std::chrono::steady_clock::now() > give_up) {
        return failed_ = "send queue did not drain in " + std::to_string(kSendQueueStuck.count()) + " s (" +
                         describe() + ")";
      }
      ::sched_yield();
    }
  }

  // Declaration order is release order reversed: the queue pair goes first, then the
  // registrations, the memory, the completion queues, the channel, the device.
  std::shared_ptr<VerbsDevice> dev_;
  CompChannelPtr channel_;
  CqPtr recv_cq_;
  CqPtr send_cq_;
  Mapping exposed_map_;
  Mapping staging_map_;
  MrPtr exposed_mr_;
  MrPtr staging_mr_;
  QpPtr qp_;
  uint32_t psn_ = 0;
  uint32_t max_inline_ = 0;
  LinkInfo remote_{};

  std::mutex mutex_;  // posting: the sending (or receiving) thread and close()
  uint64_t posted_ = 0;
  uint64_t completed_ = 0;
  std::string failed_;  // sticky: a queue pair in error stays in error
};

// Both ends of the side channel: after the hello, the listener sends its ring size and
// its two links, the connector answers with its two, both connect and say ready.
// Setup order of the links on the wire: link 0 (listener -> connector), link 1.
constexpr size_t kListenerSetupBytes = 8 + 2 * kLinkInfoBytes;
constexpr size_t kConnectorSetupBytes = 2 * kLinkInfoBytes;

std::unique_ptr<Channel> Finish(std::string peer, std::unique_ptr<VerbsLink> out, std::unique_ptr<VerbsLink> in,
                                UniqueFd sock, size_t ring_bytes, const RdmaOptions& options) {
  rdma::RingChannelParts parts;
  parts.kind = "rdma";
  parts.peer = std::move(peer);
  parts.out = std::move(out);
  parts.in = std::move(in);
  parts.setup_socket = std::move(sock);
  parts.ring_bytes = ring_bytes;
  parts.spin = options.spin;
  return rdma::MakeRingChannel(std::move(parts));
}

// Exchanges the one-byte "ready": both queue pairs of both ends are in RTS, so writes
// may start.
std::string ExchangeReady(int fd, const Deadline& deadline) {
  const uint8_t ready[1] = {'R'};
  std::string err = detail::SendAll(fd, ready, deadline);
  if (!err.empty()) return "sending ready: " + err;
  uint8_t theirs[1] = {0};
  err = detail::RecvAll(fd, theirs, deadline);
  if (!err.empty()) return "waiting for the peer to be ready: " + err;
  return theirs[0] == 'R' ? "" : "peer sent a bad ready byte";
}

class RdmaListener final : public Listener {
 public:
  RdmaListener(std::string host, uint16_t port, const RdmaOptions& options)
      : host_(std::move(host)), options_(options) {
    const std::string what = "rdma listen on " + HostPort(host_, port);
    if (!rdma::ValidRingBytes(options_.ring_bytes)) {
      throw Error(what + ": ring size " + std::to_string(options_.ring_bytes) +
                  " is not a power of two between 4096 and " + std::to_string(rdma::kMaxRingBytes));
    }
    // The device first: without one there is nothing to listen for.
    device_ = std::make_shared<VerbsDevice>(options_, what);
    fd_ = detail::ListenTcp(host_, port, 0, what, &port_);
  }

  std::string address() const override { return "rdma:" + HostPort(host_, port_); }

  std::unique_ptr<Channel> accept(std::chrono::nanoseconds timeout) override {
    const Deadline deadline(timeout);
    const std::string what = "rdma accept on " + HostPort(host_, port_);
    for (;;) {
      std::string peer;
      UniqueFd conn = detail::AcceptTcp(fd_.get(), 0, deadline, what, &peer);
      if (!conn) return nullptr;
      peer = "rdma:" + peer;
      const Deadline setup(kHandshakeTimeout);  // a connected peer gets all of it (channel.h)
      std::string err = detail::ExchangeHello(conn.get(), HelloKind::kRdma, setup);
      if (!err.empty()) {
        log::warn("channel_handshake_failed", {{"listener", address()}, {"peer", peer}, {"error", err}});
        if (deadline.expired()) return nullptr;
        continue;
      }
      // Our resources: failures throw.
      auto out = std::make_unique<VerbsLink>(device_, rdma::kAckBytes, options_.ring_bytes, what);
      auto in = std::make_unique<VerbsLink>(device_, options_.ring_bytes, rdma::kAckBytes, what);
      uint8_t mine[kListenerSetupBytes];
      PutLe64(mine, options_.ring_bytes);
      EncodeInfo(out->local_info(), mine + 8);
      EncodeInfo(in->local_info(), mine + 8 + kLinkInfoBytes);
      uint8_t theirs[kConnectorSetupBytes];
      err = detail::SendAll(conn.get(), mine, setup);
      if (err.empty()) err = detail::RecvAll(conn.get(), theirs, setup);
      if (err.empty()) {
        const LinkInfo peer_in = DecodeInfo(theirs);  // link 0: it receives into its ring
        const LinkInfo peer_out = DecodeInfo(theirs + kLinkInfoBytes);
        if (peer_in.size < options_.ring_bytes || peer_out.size < rdma::kAckBytes) {
          err = "peer exposes regions too small for a ring of " + std::to_string(options_.ring_bytes) + " bytes";
        } else {
          try {
            // Numbers the device refuses (a queue pair that does not exist, a bad
            // LID or GID) are the peer's fault: drop it like a bad hello.
            out->connect(peer_in, what);
            in->connect(peer_out, what);
            err = ExchangeReady(conn.get(), setup);
          } catch (const Error& e) {
            err = e.what();
          }
        }
      }
      if (!err.empty()) {
        log::warn("channel_handshake_failed", {{"listener", address()}, {"peer", peer}, {"error", err}});
        if (deadline.expired()) return nullptr;
        continue;
      }
      log::info("channel_accepted", {{"listener", address()}, {"peer", peer}, {"link", out->describe()}});
      return Finish(peer, std::move(out), std::move(in), std::move(conn), options_.ring_bytes, options_);
    }
  }

 private:
  std::string host_;
  uint16_t port_ = 0;
  RdmaOptions options_;
  std::shared_ptr<VerbsDevice> device_;
  UniqueFd fd_;
};

}  // namespace

std::vector<std::string> RdmaDevices(std::string* why) {
  errno = 0;
  int n = 0;
  DeviceListPtr list(::ibv_get_device_list(&n));
  std::vector<std::string> names;
  if (list) {
    for (int i = 0; i < n; ++i) names.emplace_back(::ibv_get_device_name(list.get()[i]));
  }
  if (names.empty() && why != nullptr) *why = NoDeviceText(list ? 0 : errno);
  return names;
}

std::unique_ptr<Listener> RdmaListen(const std::string& bind_address, uint16_t port, const RdmaOptions& options) {
  return std::make_unique<RdmaListener>(bind_address, port, options);
}

std::unique_ptr<Channel> RdmaConnect(const std::string& host, uint16_t port, std::chrono::nanoseconds timeout,
                                     const RdmaOptions& options) {
  const std::string target = HostPort(host, port);
  const std::string what = "rdma connect to " + target;
  const Deadline deadline(timeout);
  auto device = std::make_shared<VerbsDevice>(options, what);
  UniqueFd fd = detail::ConnectTcp(host, port, 0, deadline, timeout, what);
  std::string err = detail::ExchangeHello(fd.get(), HelloKind::kRdma, deadline);
  if (!err.empty()) throw Error(what + ": handshake: " + err);
  uint8_t theirs[kListenerSetupBytes];
  err = detail::RecvAll(fd.get(), theirs, deadline);
  if (!err.empty()) throw Error(what + ": receiving the queue pairs: " + err);
  const uint64_t ring_bytes = GetLe64(theirs);
  if (!rdma::ValidRingBytes(ring_bytes)) throw Error(what + ": bad ring size " + std::to_string(ring_bytes));
  const LinkInfo peer_out = DecodeInfo(theirs + 8);  // link 0: it sends, exposes its ack area
  const LinkInfo peer_in = DecodeInfo(theirs + 8 + kLinkInfoBytes);
  if (peer_in.size < ring_bytes || peer_out.size < rdma::kAckBytes) {
    throw Error(what + ": peer exposes regions too small for a ring of " + std::to_string(ring_bytes) + " bytes");
  }
  auto in = std::make_unique<VerbsLink>(device, ring_bytes, rdma::kAckBytes, what);
  auto out = std::make_unique<VerbsLink>(device, rdma::kAckBytes, ring_bytes, what);
  uint8_t mine[kConnectorSetupBytes];
  EncodeInfo(in->local_info(), mine);
  EncodeInfo(out->local_info(), mine + kLinkInfoBytes);
  err = detail::SendAll(fd.get(), mine, deadline);
  if (!err.empty()) throw Error(what + ": sending the queue pairs: " + err);
  in->connect(peer_out, what);
  out->connect(peer_in, what);
  err = ExchangeReady(fd.get(), deadline);
  if (!err.empty()) throw Error(what + ": " + err);
  log::info("channel_connected", {{"peer", "rdma:" + target}, {"link", out->describe()}});
  return Finish("rdma:" + target, std::move(out), std::move(in), std::move(fd), ring_bytes, options);
}

}  // namespace ftvm::transport
