#include "failover/witness.h"

#include <arpa/inet.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "common/error.h"
#include "common/unique_fd.h"

namespace ftvm::failover {
namespace {

uint16_t Checksum(const uint8_t* p, size_t n) {
  uint32_t sum = 0;
  for (size_t i = 0; i + 1 < n; i += 2) sum += uint32_t(p[i] << 8 | p[i + 1]);
  if (n & 1) sum += uint32_t(p[n - 1] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return uint16_t(~sum);
}

}  // namespace

bool WitnessAnswers(const std::string& ipv4, std::chrono::milliseconds timeout) {
  sockaddr_in to{};
  to.sin_family = AF_INET;
  if (inet_pton(AF_INET, ipv4.c_str(), &to.sin_addr) != 1)
    throw Error("witness '" + ipv4 + "' is not an IPv4 address");
  // A ping socket needs no privilege where net.ipv4.ping_group_range allows it; as
  // root a raw socket always works. Either way the kernel matches replies for us
  // (ping sockets) or we match them by identifier (raw).
  bool raw = false;
  UniqueFd fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_ICMP));
  if (!fd) {
    fd.reset(socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP));
    raw = true;
  }
  if (!fd) throw SysError("witness " + ipv4 + ": ICMP socket");
  const uint16_t id = uint16_t(getpid());
  const int attempts = 3;
  const auto per_try = timeout / attempts;
  for (int seq = 1; seq <= attempts; ++seq) {
    uint8_t req[16] = {};
    req[0] = ICMP_ECHO;
    req[4] = uint8_t(id >> 8), req[5] = uint8_t(id);
    req[6] = 0, req[7] = uint8_t(seq);
    const uint16_t sum = Checksum(req, sizeof req);
    req[2] = uint8_t(sum >> 8), req[3] = uint8_t(sum);
    if (sendto(fd.get(), req, sizeof req, 0, reinterpret_cast<sockaddr*>(&to), sizeof to) < 0) continue;
    const auto deadline = std::chrono::steady_clock::now() + per_try;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{fd.get(), POLLIN, 0};
      if (poll(&p, 1, int(left.count())) <= 0) break;
      uint8_t buf[1500];
      sockaddr_in from{};
      socklen_t len = sizeof from;
      ssize_t n = recvfrom(fd.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (n <= 0 || from.sin_addr.s_addr != to.sin_addr.s_addr) continue;
      const uint8_t* icmp = buf;
      if (raw) {
        const size_t ihl = size_t(buf[0] & 0xf) * 4;
        if (size_t(n) < ihl + 8) continue;
        icmp = buf + ihl;
        if (icmp[0] != ICMP_ECHOREPLY || (uint16_t(icmp[4] << 8 | icmp[5])) != id) continue;
      } else if (n < 8 || icmp[0] != ICMP_ECHOREPLY) {
        continue;
      }
      return true;
    }
  }
  return false;
}

}  // namespace ftvm::failover
