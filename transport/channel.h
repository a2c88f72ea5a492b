// The logging channel: a reliable, ordered, bidirectional, message-oriented link
// between two processes, over which the primary streams its event log to the
// secondary and the secondary answers (acknowledgements, heartbeats).
//
// Three transports share one interface and one framing (transport/frame.h):
//   - TCP, between hosts (or over loopback);
//   - shared memory, on one host: a memfd holding one single-producer/single-consumer
//     byte ring per direction, set up over a Unix domain socket that stays open so
//     that either side's death is seen by the other;
//   - RDMA verbs, between hosts: frames written into a ring registered on the
//     receiving side with one-sided RDMA writes, immediate data as the doorbell, and
//     acknowledgements written back (transport/rdma_ring.h). Its ring protocol also
//     runs over a shared-memory emulation of one-sided writes ("rdma+shm:"), which is
//     how it is tested and measured on hosts without an RDMA device.
//   - DPDK, between hosts over raw Ethernet frames on a DPDK port (a real NIC, or the
//     virtual devices net_memif, net_af_packet, net_tap), with its own sequence
//     numbers, acknowledgements, retransmission and flow control, since frames can be
//     lost (transport/dpdk_channel.cc).
//
// Threading: one thread may send while another receives on the same channel. Sends
// from several threads are serialized by the channel (whole messages never
// interleave); so are receives. close() may be called from any thread at any time.
//
// Results: after setup nothing throws. send() and recv() return explicit results, so
// the record/replay hot path decides what a timeout or a dead peer means. Setup
// (listen, accept, connect, address parsing) throws ftvm::Error with a message that
// names the address and the cause.
//
// Flow control: send() blocks while the peer is not consuming and the bounded buffer
// between the two (socket buffers, the ring) is full; it never drops a message and
// never buffers without bound. It gives up at its timeout.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/unique_fd.h"

namespace ftvm::transport {

// The largest payload one message may carry (the event log's record cap, so any
// record, checkpoint chunks included, fits in one message).
inline constexpr size_t kMaxMessageBytes = 64u << 20;

// A timeout meaning "wait as long as it takes". Negative timeouts count as zero (try
// once, never block).
inline constexpr std::chrono::nanoseconds kNoTimeout = std::chrono::nanoseconds::max();

// One received message. recv() fills it in place and reuses its buffer, so a
// receiver that keeps one Message allocates only when a message is larger than any
// before (the buffer is never shrunk; destroy the Message to give memory back).
class Message {
 public:
  Message() = default;
  Message(Message&&) noexcept = default;
  Message& operator=(Message&&) noexcept = default;
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;

  uint8_t type() const { return type_; }
  std::span<const uint8_t> payload() const { return {data_.get(), size_}; }
  size_t size() const { return size_; }

 private:
  friend class FrameDecoder;  // transport/frame.h fills messages
  // Makes room for `size` payload bytes (uninitialized) and returns where they go.
  uint8_t* prepare(uint8_t type, size_t size);

  uint8_t type_ = 0;
  std::unique_ptr<uint8_t[]> data_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

enum class SendCode : uint8_t {
  kOk,       // the whole message is in the channel (not necessarily read yet)
  kTimeout,  // nothing of the message was sent; the channel is still usable
  kClosed,   // closed here (close()) or by the peer, or the peer died
  kError,    // the message was refused (bad type, too large) or the channel broke
};
enum class RecvCode : uint8_t {
  kMessage,  // `out` holds the next message
  kTimeout,  // no whole message within the timeout; a partly received one is kept
  kClosed,   // closed here, or the peer closed or died; a message it did not finish
             // sending is never delivered. Sticky.
  kError,    // I/O error or a damaged stream (bad CRC, bad length). Sticky: the
             // stream cannot be trusted after it.
};
std::string_view SendCodeName(SendCode code);
std::string_view RecvCodeName(RecvCode code);

struct [[nodiscard]] SendResult {
  SendCode code = SendCode::kOk;
  std::string message;  // why, for everything but kOk; names the channel

  bool ok() const { return code == SendCode::kOk; }
  bool timed_out() const { return code == SendCode::kTimeout; }
  bool closed() const { return code == SendCode::kClosed; }
  bool error() const { return code == SendCode::kError; }
};

struct [[nodiscard]] RecvResult {
  RecvCode code = RecvCode::kMessage;
  std::string message;  // why, for everything but kMessage; names the channel and,
                        // for a damaged stream, the byte offset in it

  // kError because the stream failed its own checks (a bad CRC, length or header):
  // bytes did arrive, so the link or something on it broke them, and the peer
  // itself may well be alive. A replica must not take that for its primary's death.
  bool damaged = false;

  bool is_message() const { return code == RecvCode::kMessage; }
  bool timed_out() const { return code == RecvCode::kTimeout; }
  bool closed() const { return code == RecvCode::kClosed; }
  bool error() const { return code == RecvCode::kError; }

  static RecvResult Damaged(std::string why) { return {RecvCode::kError, std::move(why), true}; }
};

// Counters since the channel was set up. Bytes are payload bytes of whole messages
// (each message also costs kFrameOverhead = 12 bytes of framing on the wire).
struct ChannelStats {
  uint64_t messages_sent = 0;
  uint64_t bytes_sent = 0;
  uint64_t messages_received = 0;
  uint64_t bytes_received = 0;
  // How often a send or recv had to sleep in the kernel (after the short spin, for
  // shared memory): a measure of how often the other side was not keeping up.
  uint64_t send_waits = 0;
  uint64_t recv_waits = 0;
};

class Channel {
 public:
  virtual ~Channel() = default;
  Channel() = default;
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  // "tcp", "shm", "rdma", "rdma+shm" or "dpdk".
  virtual std::string_view kind() const = 0;
  // The other end, as an address-like text for messages: "tcp:10.0.0.2:41522",
  // "shm:/run/ftvm/vm1.sock", "dpdk:memif:/run/ftvm/vm1.sock (peer 02:...)".
  virtual const std::string& peer() const = 0;

  // Sends one message of `type` (1..255) whose payload is the concatenation of
  // `parts` (gathered, not copied together first), at most kMaxMessageBytes.
  // Blocks while there is no room, up to `timeout`; kTimeout guarantees nothing of the
  // message was sent and the channel stays usable. A message waits for room for all of
  // it before any byte goes out, unless it is larger than that room can ever be (shm:
  // the ring; TCP: about a third of the socket send buffer, ~2.4 MiB by default): such a
  // message is streamed, and if the timeout passes in its middle the stream cannot
  // continue, so the channel is closed and the result is kError. Like a socket write,
  // a send that finds room succeeds even if the peer died since its last read; the
  // death shows in recv() and in the next send that has to wait.
  virtual SendResult send(uint8_t type, std::span<const std::span<const uint8_t>> parts,
                          std::chrono::nanoseconds timeout) = 0;
  SendResult send(uint8_t type, std::span<const uint8_t> payload, std::chrono::nanoseconds timeout) {
    return send(type, std::span<const std::span<const uint8_t>>(&payload, 1), timeout);
  }

  // Receives the next message into `out` (its previous contents are replaced only on
  // kMessage). Messages the peer sent before closing are delivered before kClosed.
  virtual RecvResult recv(Message& out, std::chrono::nanoseconds timeout) = 0;

  // Closes this end: every send/recv blocked in this process returns kClosed now, as
  // do later calls; the peer receives what was already sent, then kClosed. The peer's
  // sends see kClosed at once on shm and RDMA, and on TCP once this end is destroyed
  // (TCP has no way to say "stop sending" short of a reset). Idempotent. Resources are
  // released by the destructor, which calls close().
  virtual void close() = 0;

  // Closes this end of a channel whose peer the caller has declared gone (by its own
  // failure detection): like close(), but nothing more is done for the peer, so the
  // destructor releases everything at once. Only DPDK differs from close(): there a
  // destroyed channel otherwise lingers until the peer acknowledged what was sent
  // (up to DpdkOptions::peer_timeout), and until then keeps its port.
  virtual void abandon() { close(); }

  virtual ChannelStats stats() const = 0;
};

// Accepts channels on an address. Destroying it stops listening.
class Listener {
 public:
  virtual ~Listener() = default;
  Listener() = default;
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Where peers connect, in Connect() syntax, with the real port when 0 was asked for:
  // "tcp:127.0.0.1:41522", "shm:/run/ftvm/vm1.sock".
  virtual std::string address() const = 0;
  // Waits up to `timeout` for a peer and completes the handshake. Returns nullptr on
  // timeout. A peer that connected in time gets the whole handshake limit (10 s) to
  // send its hello, even past `timeout`: a short accept timeout (polling for stop
  // requests) must not turn away a slow but sound peer. A peer that fails the handshake (not an ftvm channel, wrong version, gone
  // half way) is logged and dropped, and waiting goes on. Throws ftvm::Error when the
  // listening socket itself fails.
  virtual std::unique_ptr<Channel> accept(std::chrono::nanoseconds timeout) = 0;
};

// --- TCP -------------------------------------------------------------------------

struct TcpOptions {
  // SO_SNDBUF and SO_RCVBUF, set before connect()/listen() so the window scale can
  // use them. The kernel caps the request at net.core.{w,r}mem_max (4 MiB on our
  // hosts) and doubles it for its bookkeeping. 0 keeps the kernel's auto-tuning.
  int socket_buffer_bytes = 4 << 20;
};

class TcpListener final : public Listener {
 public:
  // Binds `bind_address` (a numeric address or a host name; "0.0.0.0" or "::" for
  // every interface) and `port` (0: an ephemeral port, see port()). Throws
  // ftvm::Error naming address:port and the errno.
  TcpListener(const std::string& bind_address, uint16_t port, const TcpOptions& options = {});
  ~TcpListener() override;

  uint16_t port() const { return port_; }
  std::string address() const override;
  std::unique_ptr<Channel> accept(std::chrono::nanoseconds timeout) override;

 private:
  std::string host_;
  uint16_t port_ = 0;
  TcpOptions options_;
  UniqueFd fd_;
};

// Connects to an ftvm TcpListener and completes the handshake, all within `timeout`.
// Does not retry a refused connection. Throws ftvm::Error naming host:port and the
// cause ("tcp connect to 10.0.0.2:7000: Connection refused").
std::unique_ptr<Channel> TcpConnect(const std::string& host, uint16_t port,
                                    std::chrono::nanoseconds timeout, const TcpOptions& options = {});

// --- Shared memory ---------------------------------------------------------------

struct ShmOptions {
  // Bytes of each of the two rings (one per direction): a power of two, 4 KiB..1 GiB.
  // Chosen by the listener; a connector's value is ignored. A message larger than the
  // ring still goes through, streamed piece by piece.
  size_t ring_bytes = 8u << 20;
  // How long send/recv busy-wait (with `pause`) for the peer before sleeping in the
  // kernel. Bounded and short, because there are only two cores and a spinning thread
  // must not starve a vCPU; but not shorter than what sleeping costs: on the hosts we
  // run on, one sleep/wake cycle costs each side ~14 us of CPU (ppoll, eventfd,
  // context switches) and ~15-40 us of latency, so a spin of up to 10 us never burns
  // more CPU than blocking would, and it keeps a request/reply exchange in the regime
  // where both sides catch each other spinning (~1.6 us round trip) instead of the one
  // where each waits for the other to wake up (~30 us). 0: block at once.
  std::chrono::nanoseconds spin = std::chrono::microseconds(10);
};

class ShmListener final : public Listener {
 public:
  // Listens on the Unix socket `socket_path`. A stale socket file left by a dead
  // listener is replaced; a live one makes this throw. Throws ftvm::Error naming the
  // path for a bad ring size or any failure.
  explicit ShmListener(std::string socket_path, const ShmOptions& options = {});
  // Stops listening and removes the socket file (if it is still ours).
  ~ShmListener() override;

  const std::string& path() const { return path_; }
  std::string address() const override { return "shm:" + path_; }
  std::unique_ptr<Channel> accept(std::chrono::nanoseconds timeout) override;

 private:
  std::string path_;
  ShmOptions options_;
  UniqueFd fd_;
  uint64_t inode_ = 0;  // of the socket file we bound, so we never unlink another's
};

// Connects to a ShmListener's socket, receives the shared memory and the eventfds,
// and completes the handshake within `timeout`. options.spin applies to this end.
// Throws ftvm::Error naming the path and the cause.
std::unique_ptr<Channel> ShmConnect(const std::string& socket_path, std::chrono::nanoseconds timeout,
                                    const ShmOptions& options = {});

// --- RDMA --------------------------------------------------------------------------

struct RdmaOptions {
  // Bytes of each of the two receive rings (one per direction): a power of two, 4 KiB..
  // 1 GiB. Chosen by the listener; a connector's value is ignored. A message larger
  // than the ring still goes through, streamed piece by piece.
  size_t ring_bytes = 8u << 20;
  // How long send/recv poll for a doorbell or for credit before sleeping on the
  // completion channel (or, emulated, an eventfd). Same trade-off as ShmOptions::spin.
  std::chrono::nanoseconds spin = std::chrono::microseconds(10);
  // Verbs only: the device ("mlx5_0"; empty: the first one found), its port, and the
  // GID table index used for addressing (RoCE needs a GID; InfiniBand uses the LID).
  std::string device;
  uint8_t port = 1;
  int gid_index = 0;
};

// The RDMA devices libibverbs finds. Empty when there is none; then *why says what
// ibv_get_device_list() reported ("no RDMA device (ibv_get_device_list found none:
// Function not implemented)").
std::vector<std::string> RdmaDevices(std::string* why);

// Listens for RDMA channels on a TCP side channel (HOST as for TCP; port 0: an
// ephemeral one): the queue pairs' numbers, addresses and keys are exchanged over it,
// and it stays open so that the peer's death is seen at once. Throws ftvm::Error when
// no RDMA device exists ("no RDMA device (ibv_get_device_list found none)") or the
// device, the memory registration or the socket fails.
std::unique_ptr<Listener> RdmaListen(const std::string& bind_address, uint16_t port,
                                     const RdmaOptions& options = {});
// Connects to an RdmaListener and brings both queue pairs up within `timeout`. Throws
// ftvm::Error naming host:port and the cause (no device included).
std::unique_ptr<Channel> RdmaConnect(const std::string& host, uint16_t port, std::chrono::nanoseconds timeout,
                                     const RdmaOptions& options = {});

// The emulation: the same RDMA channel (ring protocol, doorbells, credits, close and
// peer death) over a shared-memory implementation of one-sided writes between two
// processes on one host, set up over a Unix socket. For tests and measurements on
// hosts without an RDMA device; production on one host uses "shm:".
std::unique_ptr<Listener> RdmaShmListen(const std::string& socket_path, const RdmaOptions& options = {});
std::unique_ptr<Channel> RdmaShmConnect(const std::string& socket_path, std::chrono::nanoseconds timeout,
                                        const RdmaOptions& options = {});

// --- DPDK ----------------------------------------------------------------------
//
// A DPDK channel owns one DPDK port (one Ethernet link: a NIC, or a virtual device)
// with one receive and one transmit queue, and carries the byte stream of frames in
// sequence-numbered segments of at most the link's MTU, acknowledged cumulatively,
// retransmitted when lost, reassembled in order, with a receive window that bounds
// what the sender may have in flight. Peer death is seen by a keepalive timeout (and
// at once on net_memif, whose link goes down when the peer's process goes away).
// The Environment Abstraction Layer (EAL) can be initialized once per process: the
// first DPDK channel or listener does it with the EAL arguments of its address (or
// the defaults, see DpdkAddress), and later ones must ask for the same or none.
//
// Waiting: send/recv poll the port themselves, busy for `spin` (there are two cores:
// a poller must not starve a vCPU), then asleep until a frame arrives, at most
// `max_sleep` at a time. None of the virtual devices has a receive interrupt the
// channel uses, so it makes its own: a packet socket of its own that sees the frames
// arrive (net_af_packet, net_tap), or a doorbell the peer rings after it sends to an
// end that said it sleeps (net_memif). On other devices (a NIC) a poller sleeps in
// steps growing from 10 us to `max_sleep` instead. A keeper thread
// per channel pumps every `tick` while no send or recv is waiting, to answer the
// peer (acknowledgements, keepalives, retransmissions). close() sends a FIN after
// what was sent; destroying the channel waits (up to peer_timeout) until the peer
// has acknowledged all of it, as a socket's close would.

// Test hook: faults injected into this side's transmitted segments (every kind:
// handshake, data, acknowledgements), deterministic for a seed. Rates are 0..1.
struct DpdkFaults {
  double loss = 0;       // the segment is dropped
  double duplicate = 0;  // the segment is sent twice
  double reorder = 0;    // the segment is held back and sent after the next one
  uint64_t seed = 1;
};

struct DpdkOptions {
  // Bytes of the send buffer (data not yet acknowledged) and of the receive window
  // (data received, in order or not, that recv() has not consumed): a power of two,
  // 64 KiB..256 MiB. A message larger than the send buffer is streamed.
  size_t window_bytes = 4u << 20;
  // Busy polling before sleeping: long enough to catch a reply on a fast link
  // (a round trip on net_memif is a few microseconds), short enough not to starve a
  // vCPU on a two-core host. A sleeper wakes when a frame arrives (see above) or
  // after `max_sleep`, which keeps the timers it runs going (and, where nothing
  // wakes it, bounds the latency of a message to an idle channel) and costs an idle
  // waiter one wake-up per `max_sleep` (~1-2% of a core at 1 ms on our hosts).
  std::chrono::nanoseconds spin = std::chrono::microseconds(20);
  // A receive spins up to twice as long as the last one took, when that was more than
  // `spin` and at most `max_spin` (adaptive polling: a peer that answers in 50 us is
  // caught spinning, not after a sleep), and `spin` again after a longer wait.
  std::chrono::nanoseconds max_spin = std::chrono::microseconds(200);
  std::chrono::nanoseconds max_sleep = std::chrono::milliseconds(1);
  // How often the keeper thread pumps while no send or recv is waiting.
  std::chrono::nanoseconds tick = std::chrono::milliseconds(1);
  // At most this many segments in flight (sent, not yet acknowledged), fewer than a
  // receiving device holds by default while its poller is not reading (net_af_packet's
  // ring of 512 frames, a NIC's 512 receive descriptors, net_tap's queue of 1000,
  // net_memif's ring of 1024). The byte window does not bound frames: small messages
  // travel in small segments, and even full ones number 2870 to a 4 MiB window at MTU
  // 1500. Frames a device cannot hold are dropped, and repairing a burst of losses
  // costs a round trip per lost segment (a stream over net_tap crawled at 8 MiB/s).
  uint32_t max_segments_in_flight = 256;
  // First retransmission timeout; doubled on each retry of the same data, up to 64x.
  std::chrono::nanoseconds retransmit_timeout = std::chrono::milliseconds(5);
  // A segment is sent at least this often, and a peer silent for `peer_timeout` is
  // presumed dead (kClosed).
  std::chrono::nanoseconds keepalive_interval = std::chrono::milliseconds(100);
  std::chrono::nanoseconds peer_timeout = std::chrono::seconds(2);
  DpdkFaults faults;
};

struct DpdkAddress;

class DpdkListener final : public Listener {
 public:
  // Initializes the EAL if this is the first DPDK use in the process, brings up the
  // port (for net_memif: the server end, which creates the control socket) and
  // waits for hellos in accept(). One channel at a time uses the port: accept()
  // waits while a channel it returned is alive. Throws ftvm::Error naming the
  // address and the cause.
  DpdkListener(const DpdkAddress& address, const DpdkOptions& options = {});
  ~DpdkListener() override;

  std::string address() const override;
  std::unique_ptr<Channel> accept(std::chrono::nanoseconds timeout) override;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Brings up the port (net_memif: the client end, retried until the listener's
// socket exists or the timeout passes) and completes the handshake within `timeout`.
std::unique_ptr<Channel> DpdkConnect(const DpdkAddress& address, std::chrono::nanoseconds timeout,
                                     const DpdkOptions& options = {});

// True when this build has the DPDK transport (libdpdk was found at build time).
bool DpdkAvailable();

// --- Addresses -------------------------------------------------------------------

// A DPDK port and the EAL arguments, as a dpdk: address gives them:
//   dpdk:memif:/run/ftvm/vm1.sock   net_memif over that control socket (an abstract
//                                   Unix socket name, as memif uses by default); the
//                                   listener is the memif server, the connector the
//                                   client, so both sides use the same address
//   dpdk:af_packet:IFACE            net_af_packet on a kernel interface (a veth end,
//                                   a NIC the kernel drives); needs CAP_NET_RAW. Each
//                                   side names its own interface
//   dpdk:tap:IFACE                  net_tap, a tap interface it creates
//   dpdk:dev=DEVARGS                any device as the EAL's --vdev or -a take it:
//                                   "net_memif0,socket=/x.sock,role=server", or a PCI
//                                   address for a real NIC ("0000:03:00.0")
// followed by options, each after a ';':
//   eal=ARGS   the EAL arguments, separated by spaces, instead of the defaults
//              ("-l CPU --no-shconf --no-telemetry --file-prefix=ftvm-PID
//              --log-level=warning --no-huge --no-pci -m 256" for virtual devices,
//              with CPU the first this process may run on (the calling thread's
//              affinity is given back after the EAL pinned it); for a PCI device
//              "-a DEVICE" instead of the last four, hugepages being needed then)
//   mtu=N      the largest Ethernet payload to send (both sides use the smaller of
//              their two); default 9000 on net_memif, the interface's MTU on
//              net_af_packet, 1500 otherwise
//   abstract=no  memif: a socket file instead of an abstract socket name, so that
//              processes in different network namespaces of one host meet
// Example: "dpdk:af_packet:veth0;mtu=1500;eal=-l 1 --no-huge --no-pci --no-shconf".
struct DpdkAddress {
  enum class Device : uint8_t { kMemif, kAfPacket, kTap, kDevargs };
  Device device = Device::kMemif;
  std::string target;             // memif: socket path; af_packet, tap: interface; devargs
  std::vector<std::string> eal;   // empty: the defaults
  uint32_t mtu = 0;               // 0: the device's default
  // memif: an abstract socket name (memif's default; per network namespace), or,
  // with ;abstract=no, a socket file, which processes in other network namespaces
  // of the host see too.
  bool abstract_socket = true;
  std::string text;               // the address as given
};

// A channel address as the command line takes it:
//   tcp:HOST:PORT       HOST a name, an IPv4 address or a bracketed IPv6 one ([::1])
//   shm:/path/to.sock   the Unix socket of a shared-memory listener
//   rdma:HOST:PORT      RDMA verbs; HOST:PORT is the TCP side channel, as for tcp:
//   rdma+shm:/path.sock the RDMA ring protocol over its shared-memory emulation
//                       (tests and measurements on hosts without an RDMA device)
//   dpdk:...            a DPDK port, see DpdkAddress
struct ChannelAddress {
  enum class Kind : uint8_t { kTcp, kShm, kRdma, kRdmaShm, kDpdk };
  Kind kind = Kind::kTcp;
  std::string host;  // tcp, rdma
  uint16_t port = 0;  // tcp, rdma
  std::string path;  // shm, rdma+shm
  DpdkAddress dpdk;  // dpdk
};
// Throws ftvm::Error quoting the address for an unknown scheme or a malformed one.
ChannelAddress ParseChannelAddress(std::string_view address);

struct ChannelOptions {
  TcpOptions tcp;
  ShmOptions shm;
  RdmaOptions rdma;  // rdma: and rdma+shm:
  DpdkOptions dpdk;
};
// Listens on / connects to `address` with the transport its scheme names. Port 0
// listens on an ephemeral port (Listener::address() tells which); Connect needs a
// real port.
std::unique_ptr<Listener> Listen(std::string_view address, const ChannelOptions& options = {});
std::unique_ptr<Channel> Connect(std::string_view address, std::chrono::nanoseconds timeout,
                                 const ChannelOptions& options = {});

}  // namespace ftvm::transport
