// Channel addresses as the command line spells them, and the factory that picks the
// transport from the scheme.
#include <charconv>

#include "common/error.h"
#include "transport/channel.h"

namespace ftvm::transport {

namespace {

constexpr const char* kSyntax =
    "expected tcp:HOST:PORT, shm:/path/to.sock, rdma:HOST:PORT, rdma+shm:/path/to.sock, or dpdk:memif:/path, "
    "dpdk:af_packet:IFACE, dpdk:tap:IFACE or dpdk:dev=DEVARGS, each followed by optional ;eal=ARGS and ;mtu=N";

[[noreturn]] void Bad(std::string_view address, const std::string& why) {
  throw Error("channel address '" + std::string(address) + "': " + why + " (" + kSyntax + ")");
}

// dpdk:DEVICE[;eal=ARG ARG...][;mtu=N][;abstract=no] (see DpdkAddress in channel.h).
DpdkAddress ParseDpdk(std::string_view address, std::string_view rest) {
  DpdkAddress out;
  out.text = std::string(address);
  const size_t semi = rest.find(';');
  const std::string_view device = rest.substr(0, semi);
  struct Prefix {
    std::string_view text;
    DpdkAddress::Device device;
  };
  const Prefix prefixes[] = {{"memif:", DpdkAddress::Device::kMemif},
                             {"af_packet:", DpdkAddress::Device::kAfPacket},
                             {"tap:", DpdkAddress::Device::kTap},
                             {"dev=", DpdkAddress::Device::kDevargs}};
  bool known = false;
  for (const auto& p : prefixes) {
    if (device.starts_with(p.text)) {
      out.device = p.device;
      out.target = std::string(device.substr(p.text.size()));
      known = true;
      break;
    }
  }
  if (!known) Bad(address, "unknown DPDK device '" + std::string(device) + "'");
  if (out.target.empty()) Bad(address, "empty DPDK device after '" + std::string(device) + "'");
  if (out.device != DpdkAddress::Device::kDevargs && out.target.find(',') != std::string::npos) {
    Bad(address, "a ',' in '" + out.target + "': give driver arguments with dpdk:dev=DEVARGS");
  }
  if (out.device == DpdkAddress::Device::kAfPacket || out.device == DpdkAddress::Device::kTap) {
    if (out.target.size() > 15) Bad(address, "interface name '" + out.target + "' is longer than 15 bytes");
  }
  bool have_eal = false, have_mtu = false;
  for (size_t at = semi; at != std::string_view::npos;) {
    const size_t next = rest.find(';', at + 1);
    const std::string_view option = rest.substr(at + 1, next == std::string_view::npos ? next : next - at - 1);
    at = next;
    if (option.starts_with("eal=")) {
      if (have_eal) Bad(address, "eal= given twice");
      have_eal = true;
      std::string_view args = option.substr(4);
      while (!args.empty()) {
        const size_t sp = args.find(' ');
        if (sp != 0) out.eal.emplace_back(args.substr(0, sp));
        if (sp == std::string_view::npos) break;
        args.remove_prefix(sp + 1);
      }
      if (out.eal.empty()) Bad(address, "eal= with no arguments");
    } else if (option.starts_with("mtu=")) {
      if (have_mtu) Bad(address, "mtu= given twice");
      have_mtu = true;
      const std::string_view v = option.substr(4);
      unsigned value = 0;
      auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), value);
      if (v.empty() || ec != std::errc() || end != v.data() + v.size() || value < 256 || value > 65000) {
        Bad(address, "bad mtu '" + std::string(v) + "' (256..65000)");
      }
      out.mtu = value;
    } else if (option == "abstract=no" || option == "abstract=yes") {
      if (out.device != DpdkAddress::Device::kMemif) Bad(address, "abstract= applies to memif only");
      out.abstract_socket = option == "abstract=yes";
    } else {
      Bad(address, "unknown DPDK option '" + std::string(option) + "'");
    }
  }
  return out;
}

}  // namespace

ChannelAddress ParseChannelAddress(std::string_view address) {
  const size_t colon = address.find(':');
  if (colon == std::string_view::npos) Bad(address, "no scheme");
  const std::string_view scheme = address.substr(0, colon);
  const std::string_view rest = address.substr(colon + 1);
  ChannelAddress out;
  if (scheme == "dpdk") {
    out.kind = ChannelAddress::Kind::kDpdk;
    out.dpdk = ParseDpdk(address, rest);
    return out;
  }
  if (scheme == "shm" || scheme == "rdma+shm") {
    out.kind = scheme == "shm" ? ChannelAddress::Kind::kShm : ChannelAddress::Kind::kRdmaShm;
    if (rest.empty()) Bad(address, "empty socket path");
    out.path = std::string(rest);
    return out;
  }
  if (scheme == "tcp") {
    out.kind = ChannelAddress::Kind::kTcp;
  } else if (scheme == "rdma") {
    out.kind = ChannelAddress::Kind::kRdma;
  } else {
    Bad(address, "unknown scheme '" + std::string(scheme) + "'");
  }
  // HOST:PORT with the port after the last colon; an IPv6 host is bracketed.
  const size_t last = rest.rfind(':');
  if (last == std::string_view::npos) Bad(address, "no port");
  std::string_view host = rest.substr(0, last);
  const std::string_view port = rest.substr(last + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    Bad(address, "an IPv6 host must be in brackets, as in " + std::string(scheme) + ":[::1]:7000");
  }
  if (host.empty()) Bad(address, "empty host");
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value > 65535) {
    Bad(address, "bad port '" + std::string(port) + "'");
  }
  out.host = std::string(host);
  out.port = static_cast<uint16_t>(value);
  return out;
}

std::unique_ptr<Listener> Listen(std::string_view address, const ChannelOptions& options) {
  ChannelAddress a = ParseChannelAddress(address);
  switch (a.kind) {
    case ChannelAddress::Kind::kShm: return std::make_unique<ShmListener>(a.path, options.shm);
    case ChannelAddress::Kind::kRdma: return RdmaListen(a.host, a.port, options.rdma);
    case ChannelAddress::Kind::kRdmaShm: return RdmaShmListen(a.path, options.rdma);
    case ChannelAddress::Kind::kDpdk: return std::make_unique<DpdkListener>(a.dpdk, options.dpdk);
    case ChannelAddress::Kind::kTcp: break;
  }
  return std::make_unique<TcpListener>(a.host, a.port, options.tcp);
}

std::unique_ptr<Channel> Connect(std::string_view address, std::chrono::nanoseconds timeout,
                                 const ChannelOptions& options) {
  ChannelAddress a = ParseChannelAddress(address);
  if (a.kind == ChannelAddress::Kind::kDpdk) return DpdkConnect(a.dpdk, timeout, options.dpdk);
  if (a.kind == ChannelAddress::Kind::kShm) return ShmConnect(a.path, timeout, options.shm);
  if (a.kind == ChannelAddress::Kind::kRdmaShm) return RdmaShmConnect(a.path, timeout, options.rdma);
  if (a.port == 0) {
    throw Error("channel address '" + std::string(address) + "': port 0 can be listened on, not connected to");
  }
  if (a.kind == ChannelAddress::Kind::kRdma) return RdmaConnect(a.host, a.port, timeout, options.rdma);
  return TcpConnect(a.host, a.port, timeout, options.tcp);
}

}  // namespace ftvm::transport
