// The DPDK transport: the channel's byte stream of frames (transport/frame.h) carried
// in raw Ethernet frames on a DPDK port, with a small reliable-stream protocol on top,
// because frames can be lost, duplicated or reordered on the way and the log must not.
//
// Segments: transport/dpdk_segment.h has their format (Ethernet, EtherType 0x88B5).
//
// Handshake: the connector broadcasts HELLO (the 16-byte channel hello of kind DPDK,
// its largest Ethernet payload, its window) every 20 ms until the listener answers
// HELLO_ACK (the same, plus its connection id) or REJECT (why, as text: another
// protocol version, a malformed hello). A listener whose port is in use by a channel
// leaves other connectors' HELLOs unanswered, so they keep asking until that channel
// ends (a new secondary after a failover) or their timeout. Later segments go to the
// MAC address learned in the handshake and carry both connection ids, so stale
// segments of an earlier channel on the same link are ignored and answered with RST,
// which ends a channel whose peer no longer knows it.
//
// Reliability: a segment's payload is a piece of the byte stream; the receiver places
// it at its offset in a receive ring (so out-of-order pieces wait there for the gap to
// fill), hands the contiguous prefix to the FrameDecoder, and acknowledges
// cumulatively. Acks ride on data going the other way, or go alone after 50 us, at
// once for a segment that is out of order or a duplicate (the sender's hint that
// something was lost: two duplicate acks retransmit the first unacknowledged segment
// and start recovery, in which every partial ack retransmits the next gap), and when
// a quarter of the window was consumed. The oldest unacknowledged segment is also
// retransmitted on a timeout that doubles on each retry. Flow control: the sender
// keeps every byte until it is acknowledged, in a send buffer of window_bytes (send()
// waits for room there), and never sends beyond ack + window, the room left in the
// peer's receive ring; a zero window is probed. Nothing is dropped, nothing grows
// without bound.
//
// Liveness: every end sends something at least every keepalive_interval; a peer
// silent for peer_timeout is presumed dead (kClosed). On net_memif the link goes
// down the moment the peer's process closes the port or dies, which ends the channel
// at once. close() sends FIN after the data already sent; the destructor lingers
// (up to peer_timeout) until the peer acknowledged everything, as a TCP socket's
// close would, so that what was sent before close() arrives.
//
// Threads: all protocol state and the port's queues are guarded by one mutex; send()
// and recv() run the protocol ("pump": receive, acknowledge, transmit, timers)
// themselves while they wait, busy for DpdkOptions::spin (a receive adapts it up to
// max_spin to how late the last answer came) and then asleep until a frame may have
// arrived (RxWaker) or max_sleep passed; a keeper thread pumps every `tick` while
// nobody else waits, so a peer is answered while this side's application is busy
// elsewhere.
//
// Segments in flight are capped (DpdkOptions::max_segments_in_flight) below what a
// receiving device buffers while its poller sleeps: the byte window alone would let
// thousands of small or MTU-1500 segments out, and a device drops what it cannot hold.
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netpacket/packet.h>
#include <poll.h>
#include <sys/un.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_log.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <thread>

#include "common/error.h"
#include "common/log.h"
#include "eventlog/crc32c.h"
#include "eventlog/format.h"
#include "transport/channel.h"
#include "transport/dpdk_segment.h"
#include "transport/dpdk_testing.h"
#include "transport/frame.h"
#include "transport/io.h"
#include "transport/shm_util.h"  // CpuRelax

namespace ftvm::transport {

using detail::Counters;
using detail::Deadline;
using eventlog::PutLe32;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

namespace {

using namespace segment;

constexpr uint16_t kBurst = 32;
constexpr uint16_t kQueueDescriptors = 512;
// Enough for both rings' descriptors on a real NIC plus bursts in flight; virtual
// devices copy and free at once.
constexpr unsigned kPoolMbufs = 2047;
constexpr auto kHelloEvery = 20ms;
constexpr auto kAckDelay = 50us;
constexpr int kMaxBackoff = 6;  // retransmission timeout up to 64x
constexpr size_t kMinWindow = 64u << 10;
constexpr size_t kMaxWindow = 256u << 20;

std::string RteError(int err) { return rte_strerror(err < 0 ? -err : err); }

// Takes `m`, trying for ~2 us before sleeping on it. A thread waiting for a segment
// polls the port under the channel's mutex with only two pauses between rounds, so the
// mutex is free often but briefly: a thread that slept on it would be woken just to
// find it taken again.
std::unique_lock<std::mutex> LockSoon(std::mutex& m) {
  for (int i = 0; i < 64; ++i) {
    if (m.try_lock()) return std::unique_lock<std::mutex>(m, std::adopt_lock);
    detail::CpuRelax();
  }
  return std::unique_lock<std::mutex>(m);
}

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& a : v) s += (s.empty() ? "" : " ") + a;
  return s;
}

std::string MacText(const rte_ether_addr& a) {
  char buf[RTE_ETHER_ADDR_FMT_SIZE];
  rte_ether_format_addr(buf, sizeof buf, &a);
  return buf;
}

using detail::CpuRelax;

// A random locally administered unicast MAC address.
rte_ether_addr RandomMac() {
  std::random_device rd;
  rte_ether_addr a{};
  for (auto& b : a.addr_bytes) b = static_cast<uint8_t>(rd());
  a.addr_bytes[0] = static_cast<uint8_t>((a.addr_bytes[0] & 0xfe) | 0x02);
  return a;
}

bool IsVirtual(const DpdkAddress& a) {
  if (a.device != DpdkAddress::Device::kDevargs) return true;
  return a.target.starts_with("net_") || a.target.starts_with("eth_");
}

// --- EAL ---------------------------------------------------------------------------

// The EAL arguments used when the address gives none: no hugepages and no PCI scan
// for virtual devices (they need neither, and work as any user with no setup), no
// shared runtime files and a file prefix of our own so that several ftvm processes on
// one host never meet through /var/run/dpdk, warnings only on stderr, and the EAL's
// main lcore on a CPU we may run on (its affinity is given back afterwards).
std::vector<std::string> DefaultEalArgs(const DpdkAddress& a) {
  cpu_set_t set;
  CPU_ZERO(&set);
  int cpu = 0;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &set)) {
        cpu = c;
        break;
      }
    }
  }
  std::vector<std::string> v = {"-l", std::to_string(cpu), "--no-shconf", "--no-telemetry",
                                "--file-prefix=ftvm-" + std::to_string(::getpid()), "--log-level=warning"};
  if (IsVirtual(a)) {
    for (const char* s : {"--no-huge", "--no-pci", "-m", "256"}) v.emplace_back(s);
  } else {
    v.emplace_back("-a");
    v.emplace_back(a.target.substr(0, a.target.find(',')));
  }
  return v;
}

// The EAL of this process. rte_eal_init() can run once per process (a second call
// fails, even after rte_eal_cleanup()), and its memory, lcores and device buses are
// process-wide, so it is the one process-wide object of the transport: created by
// the first DPDK listener or channel with that address's EAL arguments, shared by all
// later ones, and cleaned up at exit.
class EalRuntime {
 public:
  static EalRuntime& Get(const DpdkAddress& a, const std::string& what) {
    static std::mutex mu;
    static std::unique_ptr<EalRuntime> instance;
    static std::string failure;  // rte_eal_init cannot be tried again
    std::lock_guard lock(mu);
    if (instance) {
      if (!a.eal.empty() && a.eal != instance->args_) {
        throw Error(what + ": this process's EAL was initialized with '" + Join(instance->args_) +
                    "'; it cannot be initialized again with '" + Join(a.eal) +
                    "' (rte_eal_init runs once per process): give every DPDK address of a process the same eal=");
      }
      return *instance;
    }
    if (!failure.empty()) throw Error(what + ": " + failure);
    try {
      instance = std::make_unique<EalRuntime>(a.eal.empty() ? DefaultEalArgs(a) : a.eal);
    } catch (const Error& e) {
      failure = e.what();
      throw Error(what + ": " + failure);
    }
    return *instance;
  }

  explicit EalRuntime(std::vector<std::string> args) : args_(std::move(args)) {
    std::vector<std::string> storage = {"ftvm"};
    storage.insert(storage.end(), args_.begin(), args_.end());
    std::vector<char*> argv;
    for (auto& s : storage) argv.push_back(s.data());
    argv.push_back(nullptr);
    // The EAL pins the calling thread to its main lcore; this thread (and every thread
    // it starts later) is the application's, not a dedicated lcore, so it gets its
    // affinity back.
    cpu_set_t before;
    const bool have_affinity = ::pthread_getaffinity_np(::pthread_self(), sizeof before, &before) == 0;
    // DPDK logs to stdout by default, where a guest's console goes.
    rte_openlog_stream(stderr);
    const int rc = rte_eal_init(static_cast<int>(storage.size()), argv.data());
    const int err = rte_errno;
    if (have_affinity) ::pthread_setaffinity_np(::pthread_self(), sizeof before, &before);
    if (rc < 0) {
      throw Error("DPDK EAL initialization with '" + Join(args_) + "' failed: " + RteError(err) +
                  " (the EAL's own messages above say more)");
    }
    // The EAL makes a runtime directory (/var/run/dpdk/PREFIX) even with --no-shconf,
    // and leaves it behind; with --no-shconf and no telemetry nothing is ever put in
    // it, so remove it now, which also covers a process that ends with _exit() or a
    // signal. With EAL arguments that share state through it, it is not empty and
    // rmdir() leaves it alone (ENOTEMPTY), as it should.
    if (const char* dir = rte_eal_get_runtime_dir(); dir != nullptr && ::rmdir(dir) != 0 && errno != ENOTEMPTY &&
                                                     errno != ENOENT && errno != EEXIST) {
      log::warn("dpdk_runtime_dir_left", {{"path", dir}, {"error", std::strerror(errno)}});
    }
    log::debug("dpdk_eal_ready", {{"args", Join(args_)}});
  }
  ~EalRuntime() { rte_eal_cleanup(); }
  EalRuntime(const EalRuntime&) = delete;
  EalRuntime& operator=(const EalRuntime&) = delete;

  // Device and pool names must be unique in the process.
  unsigned next_index() { return counter_.fetch_add(1, std::memory_order_relaxed); }

 private:
  std::vector<std::string> args_;
  std::atomic<unsigned> counter_{0};
};

// --- Port --------------------------------------------------------------------------

struct PortSpec {
  std::string devargs;  // for rte_dev_probe
  std::string name;     // the device (and port) name
  bool memif = false;
  std::string memif_socket;      // net_memif: its control socket (for the doorbell's address)
  bool memif_abstract = true;
  std::string tap_iface;    // net_tap: the kernel's side of the tap
  std::string af_packet_iface;   // net_af_packet: the interface it reads
  uint32_t mtu = 1500;      // the largest Ethernet payload this side sends and takes
  uint32_t rx_room = 2048;  // mbuf data room for one received frame
};

uint32_t RoundUp(uint32_t v, uint32_t to) { return (v + to - 1) / to * to; }
uint32_t Pow2AtLeast(uint32_t v) {
  uint32_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

uint32_t InterfaceMtu(const std::string& iface, const std::string& what) {
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) throw SysError(what + ": socket");
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, iface.c_str(), IFNAMSIZ - 1);
  if (::ioctl(s.get(), SIOCGIFMTU, &ifr) < 0) throw SysError(what + ": interface " + iface);
  return static_cast<uint32_t>(ifr.ifr_mtu);
}

PortSpec MakeSpec(const DpdkAddress& a, bool listening, EalRuntime& eal, const std::string& what) {
  PortSpec s;
  const std::string n = std::to_string(eal.next_index());
  switch (a.device) {
    case DpdkAddress::Device::kMemif: {
      // One memif buffer per segment: copying a segment into a chain of 2 KiB buffers
      // costs more than the larger shared memory.
      s.mtu = a.mtu ? a.mtu : 9000;
      const uint32_t bsize = std::max<uint32_t>(2048, RoundUp(s.mtu + kEthBytes, 1024));
      s.name = "net_memif_ftvm" + n;
      s.devargs = s.name + ",role=" + (listening ? "server" : "client") + ",socket=" + a.target +
                  ",bsize=" + std::to_string(bsize) + (a.abstract_socket ? "" : ",socket-abstract=no");
      s.memif = true;
      s.memif_socket = a.target;
      s.memif_abstract = a.abstract_socket;
      s.rx_room = bsize;
      break;
    }
    case DpdkAddress::Device::kAfPacket: {
      s.mtu = a.mtu ? a.mtu : InterfaceMtu(a.target, what);
      // A frame slot holds the tpacket header (52 bytes) and the frame; a block holds
      // whole slots and is a multiple of the page size.
      const uint32_t framesz = Pow2AtLeast(std::max<uint32_t>(2048, s.mtu + kEthBytes + 64));
      s.name = "net_af_packet_ftvm" + n;
      s.devargs = s.name + ",iface=" + a.target + ",framesz=" + std::to_string(framesz) +
                  ",blocksz=" + std::to_string(std::max<uint32_t>(4096, framesz)) + ",framecnt=512";
      s.af_packet_iface = a.target;
      // net_af_packet copies a received frame into one mbuf without looking at its
      // size: the mbuf must hold the largest frame a slot can hold.
      s.rx_room = framesz;
      break;
    }
    case DpdkAddress::Device::kTap:
      s.mtu = a.mtu ? a.mtu : 1500;
      s.name = "net_tap_ftvm" + n;
      // The port's MAC address from a real source of randomness: net_tap's own comes
      // from rte_rand(), whose state processes fork()ed from one parent share.
      s.devargs = s.name + ",iface=" + a.target + ",mac=" + MacText(RandomMac());
      s.tap_iface = a.target;
      s.rx_room = std::max<uint32_t>(2048, RoundUp(s.mtu + kEthBytes + 4, 1024));
      break;
    case DpdkAddress::Device::kDevargs: {
      s.devargs = a.target;
      s.name = a.target.substr(0, a.target.find(','));
      s.mtu = a.mtu ? a.mtu : 1500;
      s.memif = s.name.starts_with("net_memif");
      if (s.name.starts_with("net_tap")) {
        const size_t at = a.target.find("iface=");
        if (at != std::string::npos) s.tap_iface = a.target.substr(at + 6, a.target.find(',', at) - at - 6);
      }
      s.rx_room = std::max<uint32_t>(2048, RoundUp(s.mtu + kEthBytes + 4, 1024));
      if (s.name.starts_with("net_af_packet") || s.name.starts_with("eth_af_packet")) {
        const size_t at = a.target.find("framesz=");
        uint32_t framesz = 2048;  // the driver's default
        if (at != std::string::npos) framesz = static_cast<uint32_t>(std::stoul(a.target.substr(at + 8)));
        s.rx_room = std::max(s.rx_room, framesz);
      }
      break;
    }
  }
  if (s.mtu < 256 || s.mtu > 65000) throw Error(what + ": MTU " + std::to_string(s.mtu) + " out of 256..65000");
  return s;
}

// DPDK 22.11's memif driver unmaps a connection's shared memory from the EAL's
// interrupt thread as soon as the peer's control socket closes (the peer died),
// with no lock a burst on another thread could take: a burst that passed the
// driver's "connected" check copies into memory that is gone, and the process dies
// of SIGSEGV (seen: a secondary killed inside the memif transmit path when its
// primary was killed, so nobody took the VM over). A burst on a memif port runs
// under this guard instead: a fault on this thread while it is inside the burst
// jumps back out of it, and the burst counts as sending or receiving nothing (the
// link is down by then, which the channel sees). Any other fault goes on to the
// handler that was there before, or kills the process as usual.
class MemifFaultGuard {
 public:
  // Installs the handler once per process (a signal disposition is process-wide by
  // nature; what it saves is only read afterwards).
  static void Install() {
    static std::once_flag once;
    std::call_once(once, [] {
      struct sigaction sa{};
      sa.sa_sigaction = &OnFault;
      sa.sa_flags = SA_SIGINFO | SA_NODEFER;
      sigemptyset(&sa.sa_mask);
      if (sigaction(SIGSEGV, &sa, &Previous(SIGSEGV)) != 0 || sigaction(SIGBUS, &sa, &Previous(SIGBUS)) != 0)
        throw SysError("dpdk: installing the memif fault guard");
    });
  }

  // Runs burst() and returns what it returned, or nothing if it faulted.
  template <typename Burst>
  static std::optional<uint16_t> Run(Burst&& burst) {
    sigjmp_buf jump;
    // The mask need not be saved: with SA_NODEFER the handler leaves it as it was.
    if (sigsetjmp(jump, 0) != 0) {
      jump_ = nullptr;
      return std::nullopt;
    }
    jump_ = &jump;
    const uint16_t n = burst();
    jump_ = nullptr;
    return n;
  }

 private:
  static struct sigaction& Previous(int sig) {
    static struct sigaction segv{}, bus{};
    return sig == SIGBUS ? bus : segv;
  }
  static void OnFault(int sig, siginfo_t* info, void* context) {
    if (sigjmp_buf* j = jump_) {
      jump_ = nullptr;
      siglongjmp(*j, 1);
    }
    const struct sigaction& prev = Previous(sig);
    if ((prev.sa_flags & SA_SIGINFO) != 0 && prev.sa_sigaction != nullptr) {
      prev.sa_sigaction(sig, info, context);
    } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler != nullptr) {
      prev.sa_handler(sig);
    } else {
      // Returning retries the faulting access, which now gets the default action.
      signal(sig, SIG_DFL);
    }
  }
  static inline thread_local sigjmp_buf* jump_ = nullptr;
};

// A DPDK port brought up with one receive and one transmit queue and its own mbuf
// pool; stopped, and removed if we created the device, on destruction. Its queues are
// used by one thread at a time: the listener's accept() or the channel that holds
// the lease.
class Port {
 public:
  Port(PortSpec spec, EalRuntime& eal, const std::string& what) : spec_(std::move(spec)), what_(what) {
    if (spec_.memif) MemifFaultGuard::Install();
    try {
      bring_up(eal);
    } catch (...) {
      release();
      throw;
    }
  }
  ~Port() { release(); }
  Port(const Port&) = delete;
  Port& operator=(const Port&) = delete;

 private:
  void bring_up(EalRuntime& eal) {
    uint16_t id = 0;
    if (rte_eth_dev_get_port_by_name(spec_.name.c_str(), &id) != 0) {
      const int rc = rte_dev_probe(spec_.devargs.c_str());
      if (rc < 0) {
        throw Error(what_ + ": cannot create the DPDK device '" + spec_.devargs + "': " + RteError(rc) +
                    " (the driver's messages above say more)");
      }
      if (rte_eth_dev_get_port_by_name(spec_.name.c_str(), &id) != 0) {
        throw Error(what_ + ": the device '" + spec_.devargs + "' was created but has no Ethernet port '" +
                    spec_.name + "'");
      }
    }
    id_ = id;
    rte_eth_dev_info info{};
    if (int rc = rte_eth_dev_info_get(id_, &info); rc != 0) throw Error(what_ + ": device info: " + RteError(rc));
    device_ = info.device;
    const std::string pool_name = "ftvm_pool" + std::to_string(eal.next_index());
    pool_ = rte_pktmbuf_pool_create(pool_name.c_str(), kPoolMbufs, 0, 0,
                                    static_cast<uint16_t>(RTE_PKTMBUF_HEADROOM + spec_.rx_room),
                                    rte_eth_dev_socket_id(id_));
    if (pool_ == nullptr) {
      throw Error(what_ + ": cannot create a pool of " + std::to_string(kPoolMbufs) + " mbufs of " +
                  std::to_string(spec_.rx_room) + " bytes: " + RteError(rte_errno) +
                  " (raise the EAL's memory with eal=... -m MB)");
    }
    rte_eth_conf conf{};
    // A real NIC drops frames longer than its configured MTU; virtual devices report a
    // 1518-byte limit they do not enforce, so their MTU is left alone.
    if (spec_.mtu + RTE_ETHER_HDR_LEN + RTE_ETHER_CRC_LEN <= info.max_rx_pktlen) conf.rxmode.mtu = spec_.mtu;
    if (int rc = rte_eth_dev_configure(id_, 1, 1, &conf); rc != 0) {
      throw Error(what_ + ": configuring port " + spec_.name + ": " + RteError(rc));
    }
    uint16_t nrx = kQueueDescriptors, ntx = kQueueDescriptors;
    if (int rc = rte_eth_dev_adjust_nb_rx_tx_desc(id_, &nrx, &ntx); rc != 0) {
      throw Error(what_ + ": queue sizes of port " + spec_.name + ": " + RteError(rc));
    }
    const int socket = rte_eth_dev_socket_id(id_);
    if (int rc = rte_eth_rx_queue_setup(id_, 0, nrx, socket >= 0 ? socket : SOCKET_ID_ANY, nullptr, pool_); rc != 0) {
      throw Error(what_ + ": receive queue of port " + spec_.name + ": " + RteError(rc));
    }
    if (int rc = rte_eth_tx_queue_setup(id_, 0, ntx, socket >= 0 ? socket : SOCKET_ID_ANY, nullptr); rc != 0) {
      throw Error(what_ + ": transmit queue of port " + spec_.name + ": " + RteError(rc));
    }
    if (int rc = rte_eth_macaddr_get(id_, &mac_); rc != 0) throw Error(what_ + ": MAC address: " + RteError(rc));
  }

  void release() {
    if (started_) rte_eth_dev_stop(id_);
    // Closes the port and frees the device, so that its name (and a memif server's
    // socket) can be used again; a device the EAL probed at start-up (a NIC given with
    // -a) is probed again by the next channel that names it.
    if (device_ != nullptr) rte_dev_remove(device_);
    // After the queues that hold its mbufs are gone.
    if (pool_ != nullptr) rte_mempool_free(pool_);
    started_ = false;
    device_ = nullptr;
    pool_ = nullptr;
  }

 public:
  // Starts the port. A memif client's start connects to the server's socket and
  // fails while there is none yet: retried until the deadline.
  void start(const Deadline& deadline) {
    // Every failed try makes memif log an error: try again at a growing interval.
    std::chrono::nanoseconds pause = 20ms;
    for (;;) {
      const int rc = rte_eth_dev_start(id_);
      if (rc == 0) {
        started_ = true;
        if (!spec_.tap_iface.empty()) separate_tap_mac();
        return;
      }
      if (deadline.expired()) {
        // memif returns -1 without an errno value.
        throw Error(what_ + ": cannot start port " + spec_.devargs + (rc == -1 ? "" : ": " + RteError(rc)) +
                    (spec_.memif ? " (no memif server on the socket: is the listener up?)" : ""));
      }
      std::this_thread::sleep_for(std::min(pause, deadline.remaining()));
      pause = std::min<std::chrono::nanoseconds>(pause * 2, 250ms);
    }
  }

  // A memif client that connected while the server was between creating its socket
  // and starting its port is turned away ("ID not found") and does not try again by
  // itself: stop and start it to connect anew.
  void restart() {
    if (started_) rte_eth_dev_stop(id_);
    started_ = rte_eth_dev_start(id_) == 0;
  }

  // net_tap gives the kernel's side of its tap the port's own MAC address (and again
  // at every start). On a bridge, which is how a tap reaches anything, that makes the
  // port's address the bridge's own: a frame sent to the port is handed to the host's
  // stack instead of out through the tap, so whatever the peer sends to this port is
  // lost (the handshake's HELLO_ACK first, while broadcast HELLOs still go through).
  // The kernel's side gets an address of its own instead.
  void separate_tap_mac() {
    rte_ether_addr kernel{};
    do {
      kernel = RandomMac();
    } while (rte_is_same_ether_addr(&kernel, &mac_));
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, spec_.tap_iface.c_str(), IFNAMSIZ - 1);
    ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
    std::memcpy(ifr.ifr_hwaddr.sa_data, kernel.addr_bytes, RTE_ETHER_ADDR_LEN);
    UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!s || ::ioctl(s.get(), SIOCSIFHWADDR, &ifr) != 0) {
      throw SysError(what_ + ": cannot give the kernel's side of tap " + spec_.tap_iface +
                     " a MAC address other than the port's " + MacText(mac_) +
                     " (with the same one, a bridge keeps every frame sent to the port)");
    }
  }

  bool link_up() const {
    rte_eth_link link{};
    return rte_eth_link_get_nowait(id_, &link) == 0 && link.link_status == RTE_ETH_LINK_UP;
  }
  uint16_t rx(rte_mbuf** pkts, uint16_t n) {
    if (!spec_.memif) return rte_eth_rx_burst(id_, 0, pkts, n);
    if (auto got = MemifFaultGuard::Run([&] { return rte_eth_rx_burst(id_, 0, pkts, n); })) return *got;
    burst_faults_.fetch_add(1, std::memory_order_relaxed);
    return 0;
  }
  // A faulted transmit counts as sent: the mbufs it was given stay with the driver
  // and are lost with the connection's memory (the caller would free them twice).
  uint16_t tx(rte_mbuf** pkts, uint16_t n) {
    if (!spec_.memif) return rte_eth_tx_burst(id_, 0, pkts, n);
    if (auto sent = MemifFaultGuard::Run([&] { return rte_eth_tx_burst(id_, 0, pkts, n); })) return *sent;
    burst_faults_.fetch_add(1, std::memory_order_relaxed);
    return n;
  }
  // Bursts cut short by the memif driver unmapping their memory (see MemifFaultGuard).
  uint64_t burst_faults() const { return burst_faults_.load(std::memory_order_relaxed); }

  const PortSpec& spec() const { return spec_; }
  const rte_ether_addr& mac() const { return mac_; }
  rte_mempool* pool() const { return pool_; }
  std::atomic<bool>& in_use() { return in_use_; }

 private:
  PortSpec spec_;
  std::string what_;
  uint16_t id_ = 0;
  rte_device* device_ = nullptr;
  rte_mempool* pool_ = nullptr;
  rte_ether_addr mac_{};
  bool started_ = false;
  std::atomic<bool> in_use_{false};  // a channel holds the port
  std::atomic<uint64_t> burst_faults_{0};
};

// Holds a port for one channel; gives it back on release() or destruction, but keeps
// it alive (its pool holds the channel's mbufs) until destroyed.
class PortLease {
 public:
  PortLease() = default;
  explicit PortLease(std::shared_ptr<Port> port) : port_(std::move(port)), held_(port_ != nullptr) {}
  PortLease(PortLease&& o) noexcept : port_(std::move(o.port_)), held_(std::exchange(o.held_, false)) {}
  PortLease& operator=(PortLease&&) = delete;
  ~PortLease() { release(); }
  // From now on the holder does not touch the port's queues: another channel may.
  void release() {
    if (std::exchange(held_, false)) port_->in_use().store(false, std::memory_order_release);
  }
  Port& operator*() const { return *port_; }
  Port* operator->() const { return port_.get(); }

 private:
  std::shared_ptr<Port> port_;
  bool held_ = false;
};

struct MbufFree {
  void operator()(rte_mbuf* m) const { rte_pktmbuf_free(m); }
};
using MbufPtr = std::unique_ptr<rte_mbuf, MbufFree>;

// --- Segments ----------------------------------------------------------------------

Mac MacOf(const rte_ether_addr& a) {
  Mac m;
  std::memcpy(m.data(), a.addr_bytes, 6);
  return m;
}

// Allocates a segment with room for `payload` bytes after the headers, fills the
// headers, and returns it with a pointer to the payload area (nullptr when the pool is
// empty).
rte_mbuf* BuildSegment(Port& port, const rte_ether_addr& dst, const SegHeader& h, uint8_t** payload) {
  rte_mbuf* m = rte_pktmbuf_alloc(port.pool());
  if (m == nullptr) return nullptr;
  auto* p = reinterpret_cast<uint8_t*>(rte_pktmbuf_append(m, static_cast<uint16_t>(kHeadBytes + h.len)));
  if (p == nullptr) {
    rte_pktmbuf_free(m);
    return nullptr;
  }
  EncodeHead(std::span<uint8_t, kHeadBytes>(p, kHeadBytes), MacOf(dst), MacOf(port.mac()), h);
  if (payload != nullptr) *payload = p + kHeadBytes;
  return m;
}

// Parses a received frame. False for anything that is not a well-formed segment.
bool ParseSegment(const rte_mbuf* m, SegHeader& h, rte_ether_addr& src_mac) {
  if (rte_pktmbuf_pkt_len(m) < kHeadBytes) return false;
  uint8_t copy[kHeadBytes];
  const auto* p = static_cast<const uint8_t*>(rte_pktmbuf_read(m, 0, kHeadBytes, copy));
  if (p == nullptr) return false;
  Mac src;
  if (!ParseHead(std::span<const uint8_t, kHeadBytes>(p, kHeadBytes), rte_pktmbuf_pkt_len(m), h, src)) return false;
  std::memcpy(src_mac.addr_bytes, src.data(), 6);
  return true;
}

// Copies `n` payload bytes at `off` of the payload out of a (possibly chained) mbuf.
void ReadPayload(const rte_mbuf* m, size_t off, uint8_t* dst, size_t n) {
  const void* src = rte_pktmbuf_read(m, static_cast<uint32_t>(kHeadBytes + off), static_cast<uint32_t>(n), dst);
  if (src != dst) std::memcpy(dst, src, n);
}

HelloInfo ParseHello(const rte_mbuf* m, const SegHeader& h) {
  uint8_t buf[kHelloPayload];
  const bool whole = h.len >= kHelloPayload;
  if (whole) ReadPayload(m, 0, buf, sizeof buf);
  return segment::ParseHello(std::span<const uint8_t>(buf, whole ? sizeof buf : 0), h.len);
}

// Sends one control segment (handshake, reject, reset) with an optional payload.
// Best effort: a control segment that is lost is sent again by whoever needs it.
void SendControl(Port& port, const rte_ether_addr& dst, SegHeader h, std::span<const uint8_t> payload) {
  h.len = static_cast<uint16_t>(std::min<size_t>(payload.size(), port.spec().mtu - kSegHeaderBytes));
  uint8_t* p = nullptr;
  rte_mbuf* m = BuildSegment(port, dst, h, &p);
  if (m == nullptr) return;
  if (h.len > 0) std::memcpy(p, payload.data(), h.len);
  if (port.tx(&m, 1) == 0) rte_pktmbuf_free(m);
}

constexpr rte_ether_addr kBroadcast = {{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}};

uint32_t NewConnectionId() {
  std::random_device rd;
  uint32_t id = 0;
  while (id == 0) id = rd();
  return id;
}

// What a waiting thread blocks on once its spin is over, instead of sleeping blindly in
// growing steps (up to max_sleep, which the first message after a pause then waited
// for: ~1 ms): a descriptor that becomes readable when a frame for this port may have
// arrived. None of the virtual devices has a receive interrupt in DPDK 22.11 but
// net_tap, so the channel makes its own:
//   - net_af_packet, net_tap: a packet socket of our own on the kernel interface, which
//     sees our EtherType's frames as the kernel hands them to the port (arriving on the
//     af_packet interface; sent by the kernel into the tap). A BPF filter keeps one
//     byte of those and nothing else, and a tiny receive buffer drops the rest of a
//     burst: it is a signal, not a copy.
//   - net_memif: both ends are processes of one host, with no kernel between them. Each
//     end binds a datagram socket (a doorbell) named after the memif socket and its
//     connection id; a thread about to sleep says so in the flags of the segments its
//     end sends (kFlagSleeping), and the other end, when it next sends that end data
//     or an acknowledgement, rings the doorbell once.
// Waking is a hint: a wake-up missed (a race, a full buffer) costs at most the
// max_sleep the thread waits anyway, and a spurious one a look at the port.
class RxWaker {
 public:
  // nullptr when the device has no way to wake us (a NIC: no receive interrupts used
  // yet) or setting it up failed (logged: the channel works without it).
  static std::unique_ptr<RxWaker> For(const PortSpec& spec, uint32_t local_id) {
    try {
      if (!spec.af_packet_iface.empty()) return FrameWatch(spec.af_packet_iface, /*outgoing=*/false);
      if (!spec.tap_iface.empty()) return FrameWatch(spec.tap_iface, /*outgoing=*/true);
      if (spec.memif && !spec.memif_socket.empty()) return Doorbell(spec, local_id);
    } catch (const Error& e) {
      log::warn("dpdk_no_wakeups", {{"port", spec.name}, {"error", e.what()}});
    }
    return nullptr;
  }
  ~RxWaker() {
    if (!bound_path_.empty()) ::unlink(bound_path_.c_str());
  }
  RxWaker(const RxWaker&) = delete;
  RxWaker& operator=(const RxWaker&) = delete;

  // A doorbell the peer rings (memif), rather than frames seen by the kernel.
  bool is_doorbell() const { return doorbell_; }
  // Empties the descriptor: done before the last look at the port, so that whatever
  // arrives after that look makes it readable again.
  void drain() {
    char buf[64];
    for (int i = 0; i < 256 && ::recv(fd_.get(), buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC) >= 0; ++i) {
    }
  }
  // Blocks until the descriptor is readable (true) or `timeout` passed.
  bool wait(std::chrono::nanoseconds timeout) {
    pollfd p = {fd_.get(), POLLIN, 0};
    const timespec ts = {static_cast<time_t>(timeout.count() / 1'000'000'000),
                         static_cast<long>(timeout.count() % 1'000'000'000)};
    return ::ppoll(&p, 1, &ts, nullptr) > 0;
  }
  // Rings the peer's doorbell (memif).
  void ring(uint32_t peer_id) {
    const sockaddr_un a = DoorbellAddress(peer_id);
    const char one = 1;
    ::sendto(fd_.get(), &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&a),
             address_length(a));
  }

 private:
  RxWaker(UniqueFd fd, bool doorbell) : fd_(std::move(fd)), doorbell_(doorbell) {}

  static std::unique_ptr<RxWaker> FrameWatch(const std::string& iface, bool outgoing) {
    // Frames arriving: a socket for our EtherType alone, which the kernel never shows
    // the frames sent on the interface (a socket for every protocol would cost a clone
    // of each frame the port sends: a sixth of af_packet's streaming rate). Frames the
    // kernel sends into a tap: only a socket for every protocol sees those.
    const uint16_t protocol = outgoing ? ETH_P_ALL : kEtherType;
    UniqueFd fd(::socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(protocol)));
    if (!fd) throw SysError("packet socket to watch " + iface);
    // Our EtherType, in the direction the port reads it: one byte kept, the rest dropped.
    const uint32_t keep_out = outgoing ? 1 : 0;
    sock_filter prog[] = {
        {BPF_LD | BPF_H | BPF_ABS, 0, 0, 12},                                             // EtherType
        {BPF_JMP | BPF_JEQ | BPF_K, 0, 4, kEtherType},                                    // else -> 6
        {BPF_LD | BPF_W | BPF_ABS, 0, 0, static_cast<uint32_t>(SKF_AD_OFF + SKF_AD_PKTTYPE)},
        {BPF_JMP | BPF_JEQ | BPF_K, 0, 1, PACKET_OUTGOING},                               // else -> 5
        {BPF_RET | BPF_K, 0, 0, keep_out},                                                // sent
        {BPF_RET | BPF_K, 0, 0, 1 - keep_out},                                            // received
        {BPF_RET | BPF_K, 0, 0, 0},                                                       // not ours
    };
    const sock_fprog fprog = {static_cast<unsigned short>(std::size(prog)), prog};
    if (::setsockopt(fd.get(), SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof fprog) != 0) {
      throw SysError("filter on the packet socket watching " + iface);
    }
    const int small = 1;  // the kernel's minimum: a few frames
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    sockaddr_ll ll{};
    ll.sll_family = AF_PACKET;
    ll.sll_protocol = htons(protocol);
    ll.sll_ifindex = static_cast<int>(::if_nametoindex(iface.c_str()));
    if (ll.sll_ifindex == 0) throw SysError("interface " + iface);
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&ll), sizeof ll) != 0) {
      throw SysError("binding a packet socket to " + iface);
    }
    auto w = std::unique_ptr<RxWaker>(new RxWaker(std::move(fd), false));
    w->drain();  // what the unfiltered socket caught before the filter was attached
    return w;
  }

  static std::unique_ptr<RxWaker> Doorbell(const PortSpec& spec, uint32_t local_id) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) throw SysError("doorbell socket");
    auto w = std::unique_ptr<RxWaker>(new RxWaker(std::move(fd), true));
    w->socket_ = spec.memif_socket;
    w->abstract_ = spec.memif_abstract;
    const sockaddr_un a = w->DoorbellAddress(local_id);
    if (!w->abstract_) {
      ::unlink(a.sun_path);  // a stale one of an earlier channel that had this id
      w->bound_path_ = a.sun_path;
    }
    if (::bind(w->fd_.get(), reinterpret_cast<const sockaddr*>(&a), w->address_length(a)) != 0) {
      w->bound_path_.clear();
      throw SysError("binding the doorbell of " + spec.memif_socket);
    }
    return w;
  }

  // Next to the memif socket, in the same namespace of names: an abstract name for an
  // abstract memif socket, a file beside a memif socket file.
  sockaddr_un DoorbellAddress(uint32_t id) const {
    char hex[9];
    std::snprintf(hex, sizeof hex, "%08x", id);
    const std::string name = (abstract_ ? "ftvm-doorbell:" : "") + socket_ + ".doorbell-" + hex;
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    const size_t at = abstract_ ? 1 : 0;  // an abstract name starts with a NUL byte
    if (name.size() + at >= sizeof a.sun_path) throw Error("doorbell name " + name + " is too long");
    std::memcpy(a.sun_path + at, name.data(), name.size());
    return a;
  }
  socklen_t address_length(const sockaddr_un& a) const {
    const size_t n = abstract_ ? 1 + std::strlen(a.sun_path + 1) : std::strlen(a.sun_path) + 1;
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n);
  }

  UniqueFd fd_;
  bool doorbell_ = false;
  std::string socket_;      // memif
  bool abstract_ = true;    // memif
  std::string bound_path_;  // a doorbell file of ours, removed at the end
};

// Spin for `spin` (`relax` pause instructions between looks), then sleep in steps
// doubling from 10 us up to `max_sleep` (never past the deadline).
class Backoff {
 public:
  Backoff(std::chrono::nanoseconds spin, std::chrono::nanoseconds max_sleep, int relax = 16)
      : spin_until_(SteadyClock::now() + spin), max_sleep_(max_sleep), relax_(relax) {}
  bool spun() const { return spun(SteadyClock::now()); }
  bool spun(SteadyClock::time_point now) const { return now >= spin_until_; }
  // Returns true the first time it sleeps. `now`: a clock reading the caller just took.
  bool pause(const Deadline& deadline) { return pause(deadline, SteadyClock::now()); }
  bool pause(const Deadline& deadline, SteadyClock::time_point now) {
    if (now < spin_until_) {
      for (int i = 0; i < relax_; ++i) CpuRelax();
      return false;
    }
    std::this_thread::sleep_for(std::min(step_, deadline.remaining()));
    step_ = std::min<std::chrono::nanoseconds>(step_ * 2, max_sleep_);
    return std::exchange(first_sleep_, false);
  }

 private:
  SteadyClock::time_point spin_until_;
  std::chrono::nanoseconds max_sleep_;
  int relax_;
  std::chrono::nanoseconds step_ = 10us;
  bool first_sleep_ = true;
};

// The transmit path, with the test hook: deterministic loss, duplication and
// reordering of segments.
class Wire {
 public:
  Wire(Port& port, const DpdkFaults& faults)
      : port_(port), faults_(faults),
        enabled_(faults.loss > 0 || faults.duplicate > 0 || faults.reorder > 0), state_(faults.seed) {}
  ~Wire() {
    if (held_ != nullptr) rte_pktmbuf_free(held_);
  }
  Wire(const Wire&) = delete;
  Wire& operator=(const Wire&) = delete;

  // Transmits `pkts`; returns how many the port took (the caller frees the rest). With
  // faults on, every segment counts as taken (a full transmit ring is one more loss).
  uint16_t send(rte_mbuf** pkts, uint16_t n) {
    if (!enabled_) return port_.tx(pkts, n);
    rte_mbuf* out[2 * kBurst + 1];
    uint16_t count = 0;
    // A held segment goes out once a segment that came after it went out.
    size_t release_at = held_ != nullptr ? 1 : SIZE_MAX;
    for (uint16_t i = 0; i < n; ++i) {
      if (chance(faults_.loss)) {
        rte_pktmbuf_free(pkts[i]);
        ++losses;
        continue;
      }
      if (held_ == nullptr && chance(faults_.reorder)) {
        held_ = pkts[i];
        held_at_ = SteadyClock::now();
        release_at = count + 1u;
        ++reorders;
        continue;
      }
      out[count++] = pkts[i];
      if (chance(faults_.duplicate)) {
        if (rte_mbuf* copy = rte_pktmbuf_copy(pkts[i], port_.pool(), 0, UINT32_MAX)) {
          out[count++] = copy;
          ++duplicates;
        }
      }
    }
    if (held_ != nullptr && count >= release_at) {
      out[count++] = held_;
      held_ = nullptr;
    }
    const uint16_t sent = port_.tx(out, count);
    for (uint16_t i = sent; i < count; ++i) rte_pktmbuf_free(out[i]);
    return n;
  }
  void discard_held() {
    if (held_ != nullptr) rte_pktmbuf_free(held_);
    held_ = nullptr;
  }
  // A segment held back with nothing sent after it goes out after a while anyway.
  void flush(SteadyClock::time_point now) {
    if (held_ != nullptr && now - held_at_ > 1ms) {
      if (port_.tx(&held_, 1) == 0) rte_pktmbuf_free(held_);
      held_ = nullptr;
    }
  }

  uint64_t losses = 0, duplicates = 0, reorders = 0;

 private:
  bool chance(double p) {
    if (p <= 0) return false;
    // splitmix64: a fixed sequence for a seed, whatever the standard library.
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) * 0x1.0p-53 < p;
  }

  Port& port_;
  DpdkFaults faults_;
  bool enabled_;
  uint64_t state_;
  rte_mbuf* held_ = nullptr;
  SteadyClock::time_point held_at_{};
};

// What the handshake established.
struct Established {
  uint32_t local_id = 0;
  uint32_t peer_id = 0;
  rte_ether_addr peer_mac{};
  uint32_t peer_mtu = 0;
  uint32_t peer_window = 0;
  bool listener_side = false;
};

// --- Channel -----------------------------------------------------------------------

class DpdkChannel final : public Channel {
 public:
  DpdkChannel(PortLease port, std::string peer, const DpdkOptions& options, const Established& e)
      : port_(std::move(port)), peer_(std::move(peer)), options_(options), est_(e),
        wire_(*port_, options.faults), cap_(options.window_bytes), mask_(cap_ - 1),
        sbuf_(std::make_unique_for_overwrite<uint8_t[]>(cap_)),
        rbuf_(std::make_unique_for_overwrite<uint8_t[]>(cap_)), decoder_(peer_), recv_spin_(options.spin) {
    seg_payload_ = std::min(port_->spec().mtu, e.peer_mtu) - static_cast<uint32_t>(kSegHeaderBytes);
    peer_wnd_ = e.peer_window;
    // Fault both rings in now: a first pass over untouched memory costs a page fault
    // every 4 KiB (many microseconds each on our hosts), which would land on the first
    // few thousand messages (a 4 KiB round trip went from ~4 us to ~30 us).
    std::memset(sbuf_.get(), 0, cap_);
    std::memset(rbuf_.get(), 0, cap_);
    const auto now = SteadyClock::now();
    last_rx_ = last_tx_ = last_pump_ = now;
    wnd_advertised_ = static_cast<uint32_t>(cap_);
    waker_ = RxWaker::For(port_->spec(), e.local_id);
    keeper_ = std::jthread([this](std::stop_token st) { keep(st); });
  }
  ~DpdkChannel() override;

  std::string_view kind() const override { return "dpdk"; }
  const std::string& peer() const override { return peer_; }
  SendResult send(uint8_t type, std::span<const std::span<const uint8_t>> parts,
                  std::chrono::nanoseconds timeout) override;
  RecvResult recv(Message& out, std::chrono::nanoseconds timeout) override;
  void close() override;
  void abandon() override {
    close();
    std::lock_guard lock(mu_);
    die("abandoned by this end (the peer was declared gone)");
  }
  ChannelStats stats() const override { return counters_.snapshot(); }

  test_hooks::DpdkCounters counters() {
    std::lock_guard lock(mu_);
    test_hooks::DpdkCounters c = proto_;
    c.injected_losses = wire_.losses;
    c.injected_duplicates = wire_.duplicates;
    c.injected_reorders = wire_.reorders;
    c.burst_faults = port_->burst_faults();
    return c;
  }

  // The listener's answer to the HELLO.
  void greet() {
    std::lock_guard lock(mu_);
    send_hello_ack();
  }

 private:
  // The listener's HELLO_ACK, sent again when the connector repeats its HELLO.
  void send_hello_ack() {
    if (released_) return;
    uint8_t p[kHelloPayload];
    PutHello(p, port_->spec().mtu, static_cast<uint32_t>(cap_));
    SegHeader h;
    h.type = kHelloAck;
    h.src = est_.local_id;
    h.dst = est_.peer_id;
    h.window = static_cast<uint32_t>(cap_);
    h.len = kHelloPayload;
    uint8_t* payload = nullptr;
    rte_mbuf* m = BuildSegment(*port_, est_.peer_mac, h, &payload);
    if (m == nullptr) return;
    std::memcpy(payload, p, sizeof p);
    if (wire_.send(&m, 1) == 0) rte_pktmbuf_free(m);
    ++proto_.segments_sent;
  }

  enum class Wait : uint8_t { kReady, kTimeout, kClosedHere, kPeerGone };

  // Everything below runs under mu_.
  void pump(SteadyClock::time_point now);
  void handle(const rte_mbuf* m, SteadyClock::time_point now);
  void on_ack(const SegHeader& h, SteadyClock::time_point now);
  void on_data(const rte_mbuf* m, const SegHeader& h, SteadyClock::time_point now);
  void push(SteadyClock::time_point now);
  bool transmit(uint64_t seq, uint32_t len, SteadyClock::time_point now);
  void send_ack(SteadyClock::time_point now, uint8_t flags = 0);
  void send_fin(SteadyClock::time_point now);
  void timers(SteadyClock::time_point now);
  // The peer is gone for good: nothing more can be exchanged with it, so the port is
  // given back at once. The channel itself may live on for a while (its owner still
  // holds it, to read what arrived before the end), and a listener must not wait for
  // that to take its next channel (a new secondary after the old one died).
  void die(std::string why) {
    if (dead_) return;
    dead_ = peer_ + ": " + std::move(why);
    wire_.discard_held();
    port_.release();
    released_ = true;
  }
  uint32_t window() const { return static_cast<uint32_t>(cap_ - (rcv_nxt_ - rcv_read_)); }
  bool doorbell() const { return waker_ && waker_->is_doorbell(); }
  // Flags every segment carries: whether we saw the peer's FIN, and whether a thread
  // of ours sleeps on our doorbell.
  uint8_t state_flags() const {
    return static_cast<uint8_t>((peer_fin_ ? kFlagFinSeen : 0) | (sleepers_ > 0 && doorbell() ? kFlagSleeping : 0));
  }
  // After sending the peer something it may be waiting for (data, FIN, a new
  // acknowledgement): ring its doorbell if its last segment said one of its threads
  // sleeps. Once: its next segment says whether one still does.
  void kick() {
    if (!peer_sleeping_ || !doorbell()) return;
    waker_->ring(est_.peer_id);
    peer_sleeping_ = false;
    ++proto_.doorbells_rung;
  }
  // A waiting thread past its spin, about to sleep on waker_: say so (doorbell), then
  // empty the waker, before the last look at the port.
  void arm() {
    {
      std::lock_guard lock(mu_);
      if (sleepers_++ == 0 && doorbell()) send_ack(SteadyClock::now());
    }
    waker_->drain();
  }
  void disarm(bool woken = false) {
    std::lock_guard lock(mu_);
    --sleepers_;
    if (woken) ++proto_.wakeups;
  }
  std::chrono::nanoseconds rto() const { return options_.retransmit_timeout * (1 << backoff_); }
  size_t send_room() const { return cap_ - (snd_end_ - snd_una_); }
  void append(const uint8_t* src, size_t n) {
    const size_t off = snd_end_ & mask_;
    const size_t first = std::min(n, cap_ - off);
    std::memcpy(sbuf_.get() + off, src, first);
    std::memcpy(sbuf_.get(), src + first, n - first);
    snd_end_ += n;
  }
  FrameDecoder::Status consume(Message& out, SteadyClock::time_point now);

  // Runs the protocol until `ready(now)` holds (checked under mu_), the channel is closed
  // here, the peer is gone, or the deadline passes.
  template <typename Ready>
  Wait wait(Ready ready, const Deadline& deadline, std::atomic<uint64_t>& wait_count, std::chrono::nanoseconds spin) {
    // While a caller polls, the keeper need not (see keep()).
    waiters_.fetch_add(1, std::memory_order_relaxed);
    struct Leave {
      std::atomic<int>& n;
      ~Leave() { n.fetch_sub(1, std::memory_order_relaxed); }
    } leave{waiters_};
    // Two pauses between looks at the port, not 16: a pause takes 25-40 ns here, and
    // a segment that lands during the pauses waits for them (16 made ~0.3 us of each
    // direction's latency).
    Backoff backoff(spin, options_.max_sleep, 2);
    // Past the spin, with a waker: arm it, look at the port once more, then sleep on it
    // (up to max_sleep, which keeps the timers this thread runs going).
    struct Armed {
      DpdkChannel& c;
      bool on = false;
      ~Armed() {
        if (on) c.disarm();
      }
    } armed{*this};
    bool slept = false;
    for (;;) {
      // One clock reading a round (the pump's timers, the deadline, the spin): under
      // load a read costs up to ~100 ns, several a round slowed the polling that
      // catches the peer's answer.
      SteadyClock::time_point now;
      {
        // close() here wins over everything, even a message that is there.
        if (closed_.load(std::memory_order_acquire)) return Wait::kClosedHere;
        auto lock = LockSoon(mu_);
        now = SteadyClock::now();
        pump(now);
        if (ready(now)) return Wait::kReady;
        if (dead_ || peer_fin_) return Wait::kPeerGone;
      }
      if (deadline.expired(now)) return Wait::kTimeout;
      if (waker_ && backoff.spun(now)) {
        if (!armed.on) {
          arm();
          armed.on = true;
          continue;
        }
        disarm(waker_->wait(std::min<std::chrono::nanoseconds>(options_.max_sleep, deadline.remaining())));
        armed.on = false;
        if (!std::exchange(slept, true)) Counters::add(wait_count, 1);
        continue;
      }
      if (backoff.pause(deadline, now)) Counters::add(wait_count, 1);
    }
  }

  void keep(std::stop_token st);

  PortLease port_;
  const std::string peer_;
  const DpdkOptions options_;
  const Established est_;
  std::atomic<bool> closed_{false};
  std::atomic<int> waiters_{0};  // threads in wait()
  Counters counters_;

  std::mutex mu_;  // the protocol state and the port's queues
  Wire wire_;
  const size_t cap_;
  const uint64_t mask_;
  uint32_t seg_payload_ = 0;
  test_hooks::DpdkCounters proto_;
  SteadyClock::time_point last_rx_, last_tx_, last_pump_;
  std::optional<std::string> dead_;  // why the peer is gone
  bool released_ = false;             // the port went back with dead_: never touch it again
  std::unique_ptr<RxWaker> waker_;    // null: waiting threads sleep in steps
  int sleepers_ = 0;                  // threads asleep on waker_ (a doorbell: the peer is told)
  bool peer_sleeping_ = false;        // the peer's last segment said a thread of it sleeps

  // Sending: bytes [snd_una_, snd_end_) are kept in sbuf_; [snd_una_, snd_nxt_) were
  // sent and await their acknowledgement.
  std::unique_ptr<uint8_t[]> sbuf_;
  uint64_t snd_una_ = 0, snd_nxt_ = 0, snd_end_ = 0;
  std::deque<uint64_t> in_flight_;  // the end of each segment sent beyond snd_una_
  uint32_t peer_wnd_ = 0;
  int backoff_ = 0;
  SteadyClock::time_point rto_at_{};
  SteadyClock::time_point probe_at_{};
  int dupacks_ = 0;
  bool recovering_ = false;
  uint64_t recover_ = 0;
  bool fin_queued_ = false, fin_sent_ = false, fin_acked_ = false;
  uint64_t fin_seq_ = 0;

  // Receiving: [rcv_read_, rcv_nxt_) arrived in order and awaits the decoder; pieces
  // beyond rcv_nxt_ that arrived early are in ooo_ (start -> end), their bytes already
  // in place in rbuf_.
  std::unique_ptr<uint8_t[]> rbuf_;
  uint64_t rcv_read_ = 0, rcv_nxt_ = 0;
  std::map<uint64_t, uint64_t> ooo_;
  uint64_t acked_upto_ = 0;
  uint32_t segments_unacked_ = 0;  // received in order since our last ack
  uint32_t wnd_advertised_ = 0;
  std::optional<SteadyClock::time_point> ack_due_since_;
  bool ack_now_ = false;
  bool peer_fin_ = false;
  FrameDecoder decoder_;

  std::mutex send_mutex_;
  std::optional<SendResult> send_end_;
  std::mutex recv_mutex_;
  std::optional<RecvResult> recv_end_;
  std::chrono::nanoseconds recv_spin_;  // the next receive's spin, options_.spin..max_spin

  std::jthread keeper_;  // last: stopped and joined before anything it uses goes away
};

void DpdkChannel::keep(std::stop_token st) {
  std::mutex m;
  std::condition_variable_any cv;
  while (!st.stop_requested()) {
    // A send or recv that waits pumps at least every max_sleep: then the keeper only
    // stands by (each wake-up costs CPU on an idle channel), in case that caller
    // leaves.
    const auto period = waiters_.load(std::memory_order_relaxed) > 0
                            ? std::max<std::chrono::nanoseconds>(options_.tick, options_.keepalive_interval / 4)
                            : options_.tick;
    {
      std::unique_lock l(m);
      cv.wait_for(l, st, period, [] { return false; });
    }
    if (st.stop_requested()) return;
    std::unique_lock lock(mu_, std::try_to_lock);
    if (!lock.owns_lock()) continue;  // a send or recv is pumping
    const auto now = SteadyClock::now();
    if (now - last_pump_ < options_.tick / 2) continue;
    pump(now);
  }
}

void DpdkChannel::pump(SteadyClock::time_point now) {
  last_pump_ = now;
  if (released_) return;
  rte_mbuf* pkts[kBurst];
  for (int round = 0; round < 8; ++round) {
    const uint16_t n = port_->rx(pkts, kBurst);
    for (uint16_t i = 0; i < n; ++i) {
      handle(pkts[i], now);
      rte_pktmbuf_free(pkts[i]);
    }
    if (n < kBurst || released_) break;
  }
  push(now);
  timers(now);
  if (ack_now_ || (ack_due_since_ && now - *ack_due_since_ >= kAckDelay)) send_ack(now);
  if (!released_) wire_.flush(now);
}

void DpdkChannel::handle(const rte_mbuf* m, SteadyClock::time_point now) {
  if (released_) return;
  SegHeader h;
  rte_ether_addr src_mac;
  if (!ParseSegment(m, h, src_mac)) return;
  if (h.src == est_.local_id) return;  // our own frame, looped back by the link
  if (h.type == kHello) {
    // Our HELLO_ACK was lost. A HELLO from another connector is left unanswered: it
    // goes on asking until this channel ends and accept() takes it, or it gives up.
    if (h.src == est_.peer_id && est_.listener_side) send_hello_ack();
    return;
  }
  // A listener that no longer has a channel for us resets from connection id 0.
  if (h.type == kRst && h.dst == est_.local_id) {
    die("the peer reset the channel (it no longer knows it: restarted, or closed long ago)");
    return;
  }
  if (h.dst != est_.local_id || h.src != est_.peer_id) {
    // A segment of another channel, probably an earlier one on this link: tell its
    // sender that this end does not know it.
    if (h.type != kRst && h.type != kReject && h.type != kHelloAck) {
      SegHeader r;
      r.type = kRst;
      r.src = est_.local_id;
      r.dst = h.src;
      SendControl(*port_, src_mac, r, {});
    }
    return;
  }
  ++proto_.segments_received;
  last_rx_ = now;
  if (h.flags & kFlagSleeping) {
    peer_sleeping_ = true;
    // It took its last look at the port before it said so: data of ours it had not
    // received by then may have arrived just after that look.
    if (h.ack < snd_nxt_) kick();
  } else {
    peer_sleeping_ = false;
  }
  switch (h.type) {
    case kReject:
    case kHelloAck:
      return;  // handshake repeats
    case kData:
      on_ack(h, now);
      on_data(m, h, now);
      break;
    case kAck:
      on_ack(h, now);
      break;
    case kFin:
      on_ack(h, now);
      if (h.seq == rcv_nxt_) {
        peer_fin_ = true;
        ack_now_ = true;
      }
      break;
    default:
      return;
  }
  if (h.flags & kFlagAckNow) ack_now_ = true;
}

void DpdkChannel::on_ack(const SegHeader& h, SteadyClock::time_point now) {
  if (h.ack < snd_una_ || h.ack > snd_nxt_) return;  // older than what we know, or bogus
  if ((h.flags & kFlagFinSeen) && fin_sent_ && h.ack == fin_seq_) fin_acked_ = true;
  if (h.ack > snd_una_) {
    snd_una_ = h.ack;
    while (!in_flight_.empty() && in_flight_.front() <= snd_una_) in_flight_.pop_front();
    backoff_ = 0;
    dupacks_ = 0;
    rto_at_ = now + rto();
    if (recovering_) {
      if (snd_una_ < recover_ && snd_una_ < snd_nxt_) {
        // A partial ack: the next gap is lost too.
        transmit(snd_una_, static_cast<uint32_t>(std::min<uint64_t>(seg_payload_, snd_nxt_ - snd_una_)), now);
        ++proto_.retransmits;
      } else {
        recovering_ = false;
      }
    }
  } else if (h.type == kAck && snd_una_ < snd_nxt_ && h.window == peer_wnd_) {
    if (++dupacks_ == 2 && !recovering_) {
      recovering_ = true;
      recover_ = snd_nxt_;
      transmit(snd_una_, static_cast<uint32_t>(std::min<uint64_t>(seg_payload_, snd_nxt_ - snd_una_)), now);
      ++proto_.retransmits;
    }
  }
  peer_wnd_ = h.window;
}

void DpdkChannel::on_data(const rte_mbuf* m, const SegHeader& h, SteadyClock::time_point now) {
  const uint64_t end = h.seq + h.len;
  if (end <= rcv_nxt_) {
    ++proto_.duplicates_received;
    ack_now_ = true;  // our ack may have been lost
    return;
  }
  const uint64_t limit = rcv_read_ + cap_;
  const uint64_t start = std::max(h.seq, rcv_nxt_);
  const uint64_t stop = std::min(end, limit);
  if (start >= stop) {
    ack_now_ = true;  // beyond the window: tell the sender where it is
    return;
  }
  for (uint64_t at = start; at < stop;) {
    const size_t off = at & mask_;
    const size_t n = std::min<uint64_t>(stop - at, cap_ - off);
    ReadPayload(m, at - h.seq, rbuf_.get() + off, n);
    at += n;
  }
  if (h.seq <= rcv_nxt_) {
    const bool filled_gap = !ooo_.empty();
    rcv_nxt_ = stop;
    while (!ooo_.empty() && ooo_.begin()->first <= rcv_nxt_) {
      rcv_nxt_ = std::max(rcv_nxt_, ooo_.begin()->second);
      ooo_.erase(ooo_.begin());
    }
    // The sender may send no more than max_segments_in_flight before an ack: ack well
    // before that, whatever the segments' size.
    if (filled_gap || rcv_nxt_ - acked_upto_ >= cap_ / 4 ||
        ++segments_unacked_ >= std::max<uint32_t>(1, options_.max_segments_in_flight / 4)) {
      ack_now_ = true;
    } else if (!ack_due_since_) {
      ack_due_since_ = now;
    }
  } else {
    auto [it, inserted] = ooo_.emplace(start, stop);
    if (!inserted) it->second = std::max(it->second, stop);
    ++proto_.out_of_order_received;
    send_ack(now);  // a duplicate ack, one per segment past the gap: the sender's sign of a loss
  }
}

bool DpdkChannel::transmit(uint64_t seq, uint32_t len, SteadyClock::time_point now) {
  if (released_) return false;
  SegHeader h;
  h.type = kData;
  h.flags = state_flags();
  h.src = est_.local_id;
  h.dst = est_.peer_id;
  h.len = static_cast<uint16_t>(len);
  h.seq = seq;
  h.ack = rcv_nxt_;
  h.window = window();
  uint8_t* p = nullptr;
  rte_mbuf* m = BuildSegment(*port_, est_.peer_mac, h, &p);
  if (m == nullptr) return false;
  const size_t off = seq & mask_;
  const size_t first = std::min<size_t>(len, cap_ - off);
  std::memcpy(p, sbuf_.get() + off, first);
  std::memcpy(p + first, sbuf_.get(), len - first);
  if (wire_.send(&m, 1) == 0) {
    rte_pktmbuf_free(m);
    return false;
  }
  ++proto_.segments_sent;
  acked_upto_ = rcv_nxt_;
  segments_unacked_ = 0;
  wnd_advertised_ = h.window;
  ack_due_since_.reset();
  ack_now_ = false;
  last_tx_ = now;
  kick();
  return true;
}

// Sends new data as far as the peer's window allows, in bursts.
void DpdkChannel::push(SteadyClock::time_point now) {
  if (released_) return;
  const uint64_t right = snd_una_ + peer_wnd_;
  const size_t max_in_flight = options_.max_segments_in_flight;
  while (snd_nxt_ < snd_end_ && snd_nxt_ < right && in_flight_.size() < max_in_flight) {
    if (snd_una_ == snd_nxt_) rto_at_ = now + rto();  // the timer starts with the oldest byte out
    rte_mbuf* pkts[kBurst];
    uint64_t seqs[kBurst];
    uint16_t n = 0;
    uint64_t at = snd_nxt_;
    while (n < kBurst && at < snd_end_ && at < right && in_flight_.size() + n < max_in_flight) {
      const uint32_t len = static_cast<uint32_t>(std::min<uint64_t>({seg_payload_, snd_end_ - at, right - at}));
      SegHeader h;
      h.type = kData;
      h.flags = state_flags();
      h.src = est_.local_id;
      h.dst = est_.peer_id;
      h.len = static_cast<uint16_t>(len);
      h.seq = at;
      h.ack = rcv_nxt_;
      h.window = window();
      uint8_t* p = nullptr;
      rte_mbuf* m = BuildSegment(*port_, est_.peer_mac, h, &p);
      if (m == nullptr) break;
      const size_t off = at & mask_;
      const size_t first = std::min<size_t>(len, cap_ - off);
      std::memcpy(p, sbuf_.get() + off, first);
      std::memcpy(p + first, sbuf_.get(), len - first);
      seqs[n] = at;
      pkts[n++] = m;
      at += len;
    }
    if (n == 0) break;
    const uint16_t sent = wire_.send(pkts, n);
    for (uint16_t i = sent; i < n; ++i) rte_pktmbuf_free(pkts[i]);
    if (sent == 0) break;  // the transmit ring is full: later
    snd_nxt_ = sent < n ? seqs[sent] : at;
    for (uint16_t i = 0; i < sent; ++i) in_flight_.push_back(i + 1 < n ? seqs[i + 1] : at);
    proto_.segments_sent += sent;
    acked_upto_ = rcv_nxt_;
    segments_unacked_ = 0;
    wnd_advertised_ = window();
    ack_due_since_.reset();
    ack_now_ = false;
    last_tx_ = now;
    kick();
    if (sent < n) break;
  }
  if (fin_queued_ && !fin_sent_ && snd_nxt_ == snd_end_) {
    send_fin(now);
    fin_sent_ = true;
    if (snd_una_ == snd_nxt_) rto_at_ = now + rto();
  }
}

void DpdkChannel::send_fin(SteadyClock::time_point now) {
  if (released_) return;
  SegHeader h;
  h.type = kFin;
  h.flags = state_flags();
  h.src = est_.local_id;
  h.dst = est_.peer_id;
  h.seq = fin_seq_;
  h.ack = rcv_nxt_;
  h.window = window();
  rte_mbuf* m = BuildSegment(*port_, est_.peer_mac, h, nullptr);
  if (m == nullptr) return;
  if (wire_.send(&m, 1) == 0) {
    rte_pktmbuf_free(m);
    return;
  }
  ++proto_.segments_sent;
  last_tx_ = now;
  kick();
}

void DpdkChannel::send_ack(SteadyClock::time_point now, uint8_t flags) {
  if (released_) return;
  SegHeader h;
  h.type = kAck;
  h.flags = static_cast<uint8_t>(flags | state_flags());
  h.src = est_.local_id;
  h.dst = est_.peer_id;
  h.seq = snd_nxt_;
  h.ack = rcv_nxt_;
  h.window = window();
  rte_mbuf* m = BuildSegment(*port_, est_.peer_mac, h, nullptr);
  if (m == nullptr) return;
  if (wire_.send(&m, 1) == 0) {
    rte_pktmbuf_free(m);
    return;
  }
  ++proto_.segments_sent;
  ++proto_.acks_sent;
  // News the peer may be waiting for (send-buffer room, window), not a keepalive or
  // a sleep announcement.
  if (rcv_nxt_ > acked_upto_ || h.window > wnd_advertised_) kick();
  acked_upto_ = rcv_nxt_;
  segments_unacked_ = 0;
  wnd_advertised_ = h.window;
  ack_due_since_.reset();
  ack_now_ = false;
  last_tx_ = now;
}

void DpdkChannel::timers(SteadyClock::time_point now) {
  if (dead_) return;
  const bool data_out = snd_una_ < snd_nxt_;
  const bool fin_out = fin_sent_ && !fin_acked_ && snd_una_ == snd_nxt_;
  if ((data_out || fin_out) && now >= rto_at_) {
    if (data_out) {
      transmit(snd_una_, static_cast<uint32_t>(std::min<uint64_t>(seg_payload_, snd_nxt_ - snd_una_)), now);
      // Whatever else was in flight may be lost too: each partial ack that follows
      // retransmits the next gap.
      recovering_ = true;
      recover_ = snd_nxt_;
    } else {
      send_fin(now);
    }
    ++proto_.retransmits;
    backoff_ = std::min(backoff_ + 1, kMaxBackoff);
    rto_at_ = now + rto();
  }
  // The peer's window is closed and nothing is in flight to bring an ack back: ask.
  if (!data_out && snd_nxt_ < snd_end_ && snd_nxt_ >= snd_una_ + peer_wnd_ && now >= probe_at_) {
    send_ack(now, kFlagAckNow);
    probe_at_ = now + std::min<std::chrono::nanoseconds>(rto() * 4, options_.keepalive_interval);
  }
  if (now - last_tx_ >= options_.keepalive_interval) send_ack(now);
  if (now - last_rx_ >= options_.peer_timeout) {
    die("no segment from the peer for " + detail::DescribeTimeout(options_.peer_timeout) +
        ": presumed dead (no keepalive)");
  } else if (port_->spec().memif && !port_->link_up()) {
    const uint64_t faults = port_->burst_faults();
    die("the memif link went down: the peer closed its port or died" +
        (faults == 0 ? std::string()
                     : " (" + std::to_string(faults) + " bursts were cut short as the driver unmapped its memory)"));
  }
}

DpdkChannel::~DpdkChannel() {
  close();
  // Linger until the peer has everything we sent and our FIN, as a socket's close
  // would (bounded: a peer that says nothing for peer_timeout is dead anyway).
  const Deadline linger(options_.peer_timeout);
  Backoff backoff(0ns, options_.tick);
  for (;;) {
    {
      std::lock_guard lock(mu_);
      pump(SteadyClock::now());
      // A peer that closed too reads nothing more: no need to wait for its ack.
      if ((fin_acked_ && snd_una_ == snd_end_) || dead_ || peer_fin_) break;
    }
    if (linger.expired()) break;
    backoff.pause(linger);
  }
  keeper_.request_stop();
  keeper_.join();
}

void DpdkChannel::close() {
  if (closed_.exchange(true, std::memory_order_acq_rel)) return;
  std::lock_guard lock(mu_);
  fin_queued_ = true;
  fin_seq_ = snd_end_;
  push(SteadyClock::now());
}

SendResult DpdkChannel::send(uint8_t type, std::span<const std::span<const uint8_t>> parts,
                             std::chrono::nanoseconds timeout) {
  const Deadline deadline(timeout);
  std::lock_guard slock(send_mutex_);
  if (closed_.load(std::memory_order_acquire)) return {SendCode::kClosed, peer_ + ": channel closed"};
  if (send_end_) return *send_end_;
  // Taken once for a message that fits (the common case: checks, copy and push under
  // one acquisition); released at once for one streamed in pieces.
  auto lock = LockSoon(mu_);
  if (dead_) {
    send_end_ = SendResult{SendCode::kClosed, *dead_};
    return *send_end_;
  }
  if (peer_fin_) {
    send_end_ = SendResult{SendCode::kClosed, peer_ + ": peer closed the channel"};
    return *send_end_;
  }
  if (type == 0) return {SendCode::kError, peer_ + ": message type 0 is reserved"};
  size_t length = 0;
  for (auto p : parts) length += p.size();
  if (length > kMaxMessageBytes) {
    return {SendCode::kError, peer_ + ": message of " + std::to_string(length) + " bytes exceeds the limit of " +
                                  std::to_string(kMaxMessageBytes)};
  }
  const size_t frame = length + kFrameOverhead;
  const bool whole = frame <= cap_;
  size_t written = 0;  // frame bytes appended so far

  auto failed = [&](Wait w) -> SendResult {
    if (w == Wait::kClosedHere) return {SendCode::kClosed, peer_ + ": channel closed"};
    if (w == Wait::kPeerGone) {
      std::lock_guard relock(mu_);
      send_end_ = SendResult{SendCode::kClosed, dead_ ? *dead_ : peer_ + ": peer closed the channel"};
      return *send_end_;
    }
    if (written == 0) {
      return {SendCode::kTimeout, peer_ + ": peer not reading: no room for a message of " + std::to_string(length) +
                                      " bytes within " + detail::DescribeTimeout(timeout)};
    }
    close();
    return {SendCode::kError, peer_ + ": timed out (" + detail::DescribeTimeout(timeout) + ") after " +
                                  std::to_string(written) + " of " + std::to_string(frame) +
                                  " bytes of a message larger than the send buffer; the stream cannot "
                                  "continue, channel closed"};
  };

  const auto header = EncodeFrameHeader(type, static_cast<uint32_t>(length));
  constexpr size_t kPiece = 64u << 10;  // CRC what the copy just brought into cache
  if (whole) {
    // The frame goes into the send buffer in one pass under the lock, once there is
    // room for all of it (at once, in the common case: no pump first).
    if (send_room() < frame) {
      lock.unlock();
      Wait w = wait([&](SteadyClock::time_point) { return send_room() >= frame; }, deadline, counters_.send_waits,
                    options_.spin);
      if (w != Wait::kReady) return failed(w);
      lock.lock();
    }
    if (closed_.load(std::memory_order_acquire)) return {SendCode::kClosed, peer_ + ": channel closed"};
    uint32_t crc = eventlog::Crc32c(header);
    append(header.data(), header.size());
    for (auto part : parts) {
      for (size_t done = 0; done < part.size();) {
        const size_t piece = std::min(kPiece, part.size() - done);
        crc = eventlog::Crc32c(part.subspan(done, piece), crc);
        append(part.data() + done, piece);
        done += piece;
      }
    }
    uint8_t trailer[kFrameTrailerBytes];
    PutLe32(trailer, crc);
    append(trailer, sizeof trailer);
    push(SteadyClock::now());
  } else {
    // Larger than the send buffer: streamed, waiting for room piece by piece.
    lock.unlock();
    auto put = [&](const uint8_t* src, size_t n) -> std::optional<SendResult> {
      while (n > 0) {
        {
          std::lock_guard lock(mu_);
          if (closed_.load(std::memory_order_acquire)) {
            return SendResult{SendCode::kClosed, peer_ + ": channel closed"};
          }
          const size_t k = std::min(n, send_room());
          if (k > 0) {
            append(src, k);
            src += k;
            n -= k;
            written += k;
            push(SteadyClock::now());
            continue;
          }
        }
        Wait w = wait([&](SteadyClock::time_point) { return send_room() >= std::min(n, cap_ / 4); }, deadline,
                      counters_.send_waits, options_.spin);
        if (w != Wait::kReady) return failed(w);
      }
      return std::nullopt;
    };
    uint32_t crc = eventlog::Crc32c(header);
    if (auto f = put(header.data(), header.size())) return *f;
    for (auto part : parts) {
      for (size_t done = 0; done < part.size();) {
        const size_t piece = std::min(kPiece, part.size() - done);
        crc = eventlog::Crc32c(part.subspan(done, piece), crc);
        if (auto f = put(part.data() + done, piece)) return *f;
        done += piece;
      }
    }
    uint8_t trailer[kFrameTrailerBytes];
    PutLe32(trailer, crc);
    if (auto f = put(trailer, sizeof trailer)) return *f;
  }
  Counters::add(counters_.messages_sent, 1);
  Counters::add(counters_.bytes_sent, length);
  return {};
}

// Feeds the decoder what arrived in order, up to the end of the first whole message.
FrameDecoder::Status DpdkChannel::consume(Message& out, SteadyClock::time_point now) {
  auto status = FrameDecoder::Status::kNeedMore;
  while (rcv_read_ < rcv_nxt_) {
    const size_t off = rcv_read_ & mask_;
    const size_t n = std::min<uint64_t>(rcv_nxt_ - rcv_read_, cap_ - off);
    auto step = decoder_.feed({rbuf_.get() + off, n});
    rcv_read_ += step.consumed;
    if (step.status != FrameDecoder::Status::kNeedMore) {
      status = step.status;
      break;
    }
  }
  // Tell the sender about room it is waiting for.
  if (window() >= wnd_advertised_ + cap_ / 4) send_ack(now);
  if (status == FrameDecoder::Status::kMessage) decoder_.take(out);
  return status;
}

RecvResult DpdkChannel::recv(Message& out, std::chrono::nanoseconds timeout) {
  const Deadline deadline(timeout);
  std::lock_guard rlock(recv_mutex_);
  if (closed_.load(std::memory_order_acquire)) return {RecvCode::kClosed, peer_ + ": channel closed"};
  if (recv_end_) return *recv_end_;
  auto status = FrameDecoder::Status::kNeedMore;
  const auto started = SteadyClock::now();
  Wait w = wait(
      [&](SteadyClock::time_point now) {
        status = consume(out, now);
        if (status != FrameDecoder::Status::kNeedMore) return true;
        // The peer is gone and everything it sent was consumed.
        return (dead_ || peer_fin_) && rcv_read_ == rcv_nxt_;
      },
      deadline, counters_.recv_waits, recv_spin_);
  // Adaptive polling: a message that came later than the spin but within max_spin
  // makes the next receive spin about twice as long. Without it, one hiccup (a
  // preemption) can put a request/reply exchange where each side's answer arrives
  // after the other stopped spinning and went to sleep, for good: each then waits
  // for its own timer instead of catching the other spinning.
  if (w == Wait::kReady) {
    const auto took = SteadyClock::now() - started;
    recv_spin_ = took <= options_.max_spin
                     ? std::clamp<std::chrono::nanoseconds>(2 * took, options_.spin, options_.max_spin)
                     : options_.spin;
  }
  if (w == Wait::kReady && status == FrameDecoder::Status::kMessage) {
    Counters::add(counters_.messages_received, 1);
    Counters::add(counters_.bytes_received, out.size());
    return {};
  }
  if (w == Wait::kReady && status == FrameDecoder::Status::kError) {
    recv_end_ = RecvResult::Damaged(decoder_.error());
    return *recv_end_;
  }
  if (w == Wait::kClosedHere) return {RecvCode::kClosed, peer_ + ": channel closed"};
  if (w == Wait::kTimeout) return {RecvCode::kTimeout, peer_ + ": no message within " + detail::DescribeTimeout(timeout)};
  // The peer is gone. wait() reports that before the ready check of a later round,
  // so look once more for whole messages it sent before going.
  std::lock_guard lock(mu_);
  status = consume(out, SteadyClock::now());
  if (status == FrameDecoder::Status::kMessage) {
    Counters::add(counters_.messages_received, 1);
    Counters::add(counters_.bytes_received, out.size());
    return {};
  }
  if (status == FrameDecoder::Status::kError) {
    recv_end_ = RecvResult::Damaged(decoder_.error());
    return *recv_end_;
  }
  const std::string partial = decoder_.mid_frame() ? " " + decoder_.describe_partial() : "";
  recv_end_ = RecvResult{RecvCode::kClosed, (dead_ ? *dead_ : peer_ + ": peer closed the channel") + partial};
  return *recv_end_;
}

std::string Describe(const DpdkAddress& a) { return a.text.empty() ? "dpdk" : a.text; }

void CheckOptions(const DpdkOptions& o, const std::string& what) {
  if (o.window_bytes < kMinWindow || o.window_bytes > kMaxWindow || (o.window_bytes & (o.window_bytes - 1)) != 0) {
    throw Error(what + ": window of " + std::to_string(o.window_bytes) + " bytes is not a power of two between " +
                std::to_string(kMinWindow) + " and " + std::to_string(kMaxWindow));
  }
  if (o.max_spin < o.spin) throw Error(what + ": max_spin must not be shorter than spin");
  if (o.max_segments_in_flight == 0) throw Error(what + ": max_segments_in_flight must be at least 1");
  if (o.tick <= 0ns || o.retransmit_timeout <= 0ns || o.keepalive_interval <= 0ns ||
      o.peer_timeout <= o.keepalive_interval) {
    throw Error(what + ": tick, retransmit timeout and keepalive interval must be positive, and the peer timeout "
                       "longer than the keepalive interval");
  }
}

}  // namespace

// --- Listener ----------------------------------------------------------------------

struct DpdkListener::Impl {
  DpdkAddress address;
  DpdkOptions options;
  std::shared_ptr<Port> port;
};

DpdkListener::DpdkListener(const DpdkAddress& address, const DpdkOptions& options)
    : impl_(std::make_unique<Impl>()) {
  const std::string what = "dpdk listen on " + Describe(address);
  CheckOptions(options, what);
  EalRuntime& eal = EalRuntime::Get(address, what);
  impl_->address = address;
  impl_->options = options;
  impl_->port = std::make_shared<Port>(MakeSpec(address, /*listening=*/true, eal, what), eal, what);
  impl_->port->start(Deadline(0ns));
}

DpdkListener::~DpdkListener() = default;

std::string DpdkListener::address() const { return impl_->address.text; }

std::unique_ptr<Channel> DpdkListener::accept(std::chrono::nanoseconds timeout) {
  const Deadline deadline(timeout);
  Port& port = *impl_->port;
  const DpdkOptions& o = impl_->options;
  // One channel at a time on the port.
  Backoff wait_free(0ns, 1ms);
  for (bool expected = false; !port.in_use().compare_exchange_strong(expected, true, std::memory_order_acq_rel);
       expected = false) {
    if (deadline.expired()) return nullptr;
    wait_free.pause(deadline);
  }
  PortLease lease(impl_->port);
  Backoff backoff(o.spin, o.max_sleep);
  rte_mbuf* pkts[kBurst];
  for (;;) {
    const uint16_t n = port.rx(pkts, kBurst);
    std::vector<MbufPtr> got;
    for (uint16_t i = 0; i < n; ++i) got.emplace_back(pkts[i]);
    for (auto& m : got) {
      SegHeader h;
      rte_ether_addr src_mac;
      if (!ParseSegment(m.get(), h, src_mac)) continue;
      if (h.type != kHello) {
        if (h.type == kData || h.type == kAck || h.type == kFin) {
          SegHeader r;
          r.type = kRst;
          r.dst = h.src;
          SendControl(port, src_mac, r, {});
        }
        continue;
      }
      const HelloInfo info = ParseHello(m.get(), h);
      if (!info.problem.empty()) {
        log::warn("channel_handshake_failed", {{"listener", address()}, {"peer", MacText(src_mac)},
                                               {"error", info.problem}});
        SegHeader r;
        r.type = kReject;
        r.dst = h.src;
        SendControl(port, src_mac, r, {reinterpret_cast<const uint8_t*>(info.problem.data()), info.problem.size()});
        continue;
      }
      Established e;
      e.local_id = NewConnectionId();
      e.peer_id = h.src;
      e.peer_mac = src_mac;
      e.peer_mtu = info.mtu;
      e.peer_window = info.window;
      e.listener_side = true;
      const std::string peer = address() + " (peer " + MacText(src_mac) + ")";
      auto ch = std::make_unique<DpdkChannel>(std::move(lease), peer, o, e);
      ch->greet();
      log::debug("channel_accepted", {{"listener", address()}, {"peer", MacText(src_mac)}});
      return ch;
    }
    if (deadline.expired()) return nullptr;
    backoff.pause(deadline);
  }
}

// --- Connector ---------------------------------------------------------------------

std::unique_ptr<Channel> DpdkConnect(const DpdkAddress& address, std::chrono::nanoseconds timeout,
                                     const DpdkOptions& options) {
  const std::string what = "dpdk connect to " + Describe(address);
  CheckOptions(options, what);
  const Deadline deadline(timeout);
  EalRuntime& eal = EalRuntime::Get(address, what);
  auto port = std::make_shared<Port>(MakeSpec(address, /*listening=*/false, eal, what), eal, what);
  port->in_use().store(true);
  PortLease lease(port);
  port->start(deadline);

  Established e;
  e.local_id = NewConnectionId();
  uint8_t hello[kHelloPayload];
  PutHello(hello, port->spec().mtu, static_cast<uint32_t>(options.window_bytes));
  // Handshake segments go through the fault injector too, so that tests cover a lost
  // HELLO or HELLO_ACK.
  Wire wire(*port, options.faults);
  Backoff backoff(options.spin, options.max_sleep);
  auto next_hello = SteadyClock::now();
  auto link_check = SteadyClock::now() + 200ms;
  rte_mbuf* pkts[kBurst];
  for (;;) {
    const auto now = SteadyClock::now();
    if (port->spec().memif && now >= link_check) {
      if (!port->link_up()) port->restart();
      link_check = now + 200ms;
    }
    if (now >= next_hello) {
      SegHeader h;
      h.type = kHello;
      h.src = e.local_id;
      h.len = kHelloPayload;
      h.window = static_cast<uint32_t>(options.window_bytes);
      uint8_t* p = nullptr;
      if (rte_mbuf* m = BuildSegment(*port, kBroadcast, h, &p)) {
        std::memcpy(p, hello, sizeof hello);
        if (wire.send(&m, 1) == 0) rte_pktmbuf_free(m);
      }
      next_hello = now + kHelloEvery;
      backoff = Backoff(options.spin, std::min<std::chrono::nanoseconds>(options.max_sleep, 1ms));
    }
    wire.flush(now);
    const uint16_t n = port->rx(pkts, kBurst);
    std::vector<MbufPtr> got;
    for (uint16_t i = 0; i < n; ++i) got.emplace_back(pkts[i]);
    for (auto& m : got) {
      SegHeader h;
      rte_ether_addr src_mac;
      if (!ParseSegment(m.get(), h, src_mac) || h.dst != e.local_id) continue;
      if (h.type == kReject) {
        std::string why(h.len, '\0');
        ReadPayload(m.get(), 0, reinterpret_cast<uint8_t*>(why.data()), h.len);
        throw Error(what + ": the listener refused the channel: " + why);
      }
      if (h.type != kHelloAck) continue;
      const HelloInfo info = ParseHello(m.get(), h);
      if (!info.problem.empty()) throw Error(what + ": handshake: " + info.problem);
      e.peer_id = h.src;
      e.peer_mac = src_mac;
      e.peer_mtu = info.mtu;
      e.peer_window = info.window;
      const std::string peer = Describe(address) + " (peer " + MacText(src_mac) + ")";
      return std::make_unique<DpdkChannel>(std::move(lease), peer, options, e);
    }
    if (deadline.expired()) {
      throw Error(what + ": no answer from a listener within " + detail::DescribeTimeout(timeout) +
                  (port->link_up() ? " (the link is up: is a listener on it, accepting?)" : " (the link is down)"));
    }
    backoff.pause(deadline.capped(std::chrono::duration_cast<std::chrono::nanoseconds>(next_hello - now)));
  }
}

bool DpdkAvailable() { return true; }

// --- Test hooks --------------------------------------------------------------------

namespace test_hooks {

DpdkCounters DpdkChannelCounters(Channel& channel) {
  auto* c = dynamic_cast<DpdkChannel*>(&channel);
  if (c == nullptr) throw Error("DpdkChannelCounters: " + channel.peer() + " is not a DPDK channel");
  return c->counters();
}

struct DpdkRawPort::Impl {
  std::shared_ptr<Port> port;
};

DpdkRawPort::DpdkRawPort(const DpdkAddress& address, bool listening, std::chrono::nanoseconds timeout)
    : impl_(std::make_unique<Impl>()) {
  const std::string what = "dpdk raw port " + Describe(address);
  const Deadline deadline(timeout);
  EalRuntime& eal = EalRuntime::Get(address, what);
  impl_->port = std::make_shared<Port>(MakeSpec(address, listening, eal, what), eal, what);
  impl_->port->start(deadline);
  auto restart_at = SteadyClock::now() + 200ms;
  while (!impl_->port->link_up()) {
    if (deadline.expired()) throw Error(what + ": the link did not come up within " + detail::DescribeTimeout(timeout));
    std::this_thread::sleep_for(1ms);
    if (impl_->port->spec().memif && SteadyClock::now() >= restart_at) {
      impl_->port->restart();  // turned away by a server not started yet: see Port::restart()
      restart_at = SteadyClock::now() + 200ms;
    }
  }
}

DpdkRawPort::~DpdkRawPort() = default;

bool DpdkRawPort::send(std::span<const uint8_t> frame) {
  Port& port = *impl_->port;
  rte_mbuf* m = rte_pktmbuf_alloc(port.pool());
  if (m == nullptr) return false;
  auto* p = reinterpret_cast<uint8_t*>(rte_pktmbuf_append(m, static_cast<uint16_t>(frame.size())));
  if (p == nullptr) {
    rte_pktmbuf_free(m);
    return false;
  }
  std::memcpy(p, frame.data(), frame.size());
  if (port.tx(&m, 1) == 1) return true;
  rte_pktmbuf_free(m);
  return false;
}

size_t DpdkRawPort::poll(std::span<uint8_t> out) {
  rte_mbuf* m = nullptr;
  if (impl_->port->rx(&m, 1) == 0) return 0;
  MbufPtr hold(m);
  const size_t n = std::min<size_t>(rte_pktmbuf_pkt_len(m), out.size());
  const void* src = rte_pktmbuf_read(m, 0, static_cast<uint32_t>(n), out.data());
  if (src != out.data()) std::memcpy(out.data(), src, n);
  return n;
}

}  // namespace test_hooks
}  // namespace ftvm::transport
