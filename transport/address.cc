// Channel addresses as the command line spells them, and the factory that picks the
// transport from the scheme.
#include <charconv>

#include "common/error.h"
#include "transport/channel.h"

namespace ftvm::transport {

namespace {

constexpr const char* kSyntax =
    "expected tcp:HOST:PORT, shm:/path/to.sock, rdma:HOST:PORT or rdma+shm:/path/to.sock";

[[noreturn]] void Bad(std::string_view address, const std::string& why) {
  throw Error("channel address '" + std::string(address) + "': " + why + " (" + kSyntax + ")");
}

}  // namespace

ChannelAddress ParseChannelAddress(std::string_view address) {
  const size_t colon = address.find(':');
  if (colon == std::string_view::npos) Bad(address, "no scheme");
  const std::string_view scheme = address.substr(0, colon);
  const std::string_view rest = address.substr(colon + 1);
  ChannelAddress out;
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
    case ChannelAddress::Kind::kTcp: break;
  }
  return std::make_unique<TcpListener>(a.host, a.port, options.tcp);
}

std::unique_ptr<Channel> Connect(std::string_view address, std::chrono::nanoseconds timeout,
                                 const ChannelOptions& options) {
  ChannelAddress a = ParseChannelAddress(address);
  if (a.kind == ChannelAddress::Kind::kShm) return ShmConnect(a.path, timeout, options.shm);
  if (a.kind == ChannelAddress::Kind::kRdmaShm) return RdmaShmConnect(a.path, timeout, options.rdma);
  if (a.port == 0) {
    throw Error("channel address '" + std::string(address) + "': port 0 can be listened on, not connected to");
  }
  if (a.kind == ChannelAddress::Kind::kRdma) return RdmaConnect(a.host, a.port, timeout, options.rdma);
  return TcpConnect(a.host, a.port, timeout, options.tcp);
}

}  // namespace ftvm::transport
