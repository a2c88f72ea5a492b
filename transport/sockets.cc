#include "transport/sockets.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "common/error.h"
#include "common/log.h"

namespace ftvm::transport::detail {

namespace {

struct AddrInfoDeleter {
  void operator()(addrinfo* ai) const { ::freeaddrinfo(ai); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

AddrInfoPtr Resolve(const std::string& host, uint16_t port, bool passive, const std::string& what) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* res = nullptr;
  std::string service = std::to_string(port);
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0) {
    throw Error(what + ": cannot resolve '" + host + "': " +
                (rc == EAI_SYSTEM ? std::strerror(errno) : ::gai_strerror(rc)));
  }
  return AddrInfoPtr(res);
}

void SetIntOption(int fd, int level, int name, int value, const std::string& what, const char* opt) {
  if (::setsockopt(fd, level, name, &value, sizeof value) < 0) throw SysError(what + ": " + opt);
}

// Buffer sizes go on before listen()/connect() so the window scale negotiated in the
// SYN can use them.
void SetBuffers(int fd, int buffer_bytes, const std::string& what) {
  if (buffer_bytes <= 0) return;
  SetIntOption(fd, SOL_SOCKET, SO_SNDBUF, buffer_bytes, what, "SO_SNDBUF");
  SetIntOption(fd, SOL_SOCKET, SO_RCVBUF, buffer_bytes, what, "SO_RCVBUF");
}

// Small messages (an acknowledgement, a clock read) must leave at once, not wait for
// more data to fill a segment.
void SetNoDelay(int fd, const std::string& what) {
  SetIntOption(fd, IPPROTO_TCP, TCP_NODELAY, 1, what, "TCP_NODELAY");
}

sockaddr_un UnixAddress(const std::string& path, const std::string& what) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path) {
    throw Error(what + ": a Unix socket path must be 1 to " + std::to_string(sizeof addr.sun_path - 1) +
                " bytes long");
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

}  // namespace

std::string HostPort(const std::string& host, uint16_t port) {
  bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string SockaddrText(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (ss.ss_family == AF_INET) {
    auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    return HostPort(buf, ntohs(a->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    return HostPort(buf, ntohs(a->sin6_port));
  }
  return "?";
}

UniqueFd ListenTcp(const std::string& host, uint16_t port, int buffer_bytes, const std::string& what,
                   uint16_t* bound_port) {
  AddrInfoPtr addrs = Resolve(host, port, /*passive=*/true, what);
  int last_err = 0;
  const char* failed_call = "socket";
  for (addrinfo* ai = addrs.get(); ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) {
      last_err = errno;
      failed_call = "socket";
      continue;
    }
    // A restarted primary must be able to listen again at once, not after TIME_WAIT.
    SetIntOption(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1, what, "SO_REUSEADDR");
    SetBuffers(fd.get(), buffer_bytes, what);
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) < 0) {
      last_err = errno;
      failed_call = "bind";
      continue;
    }
    if (::listen(fd.get(), 16) < 0) {
      last_err = errno;
      failed_call = "listen";
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len) < 0) {
      throw SysError(what + ": getsockname");
    }
    *bound_port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                                 : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    return fd;
  }
  throw SysError(what + ": " + failed_call, last_err);
}

UniqueFd AcceptTcp(int listen_fd, int buffer_bytes, const Deadline& deadline, const std::string& what,
                   std::string* peer) {
  for (;;) {
    pollfd p{listen_fd, POLLIN, 0};
    int r = PollUntil({&p, 1}, deadline);
    if (r < 0) throw SysError(what + ": poll");
    if (r == 0) return UniqueFd();
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    UniqueFd conn(::accept4(listen_fd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!conn) {
      // The connection went away between poll and accept: not the listener's fault.
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED ||
          errno == EPROTO) {
        continue;
      }
      throw SysError(what);
    }
    *peer = SockaddrText(ss);
    SetNoDelay(conn.get(), what);
    SetBuffers(conn.get(), buffer_bytes, what);
    return conn;
  }
}

UniqueFd ConnectTcp(const std::string& host, uint16_t port, int buffer_bytes, const Deadline& deadline,
                    std::chrono::nanoseconds timeout, const std::string& what) {
  AddrInfoPtr addrs = Resolve(host, port, /*passive=*/false, what);
  int last_err = ECONNREFUSED;
  for (addrinfo* ai = addrs.get(); ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) {
      last_err = errno;
      continue;
    }
    SetBuffers(fd.get(), buffer_bytes, what);
    SetNoDelay(fd.get(), what);
    if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) < 0) {
      if (errno != EINPROGRESS) {
        last_err = errno;
        continue;
      }
      pollfd p{fd.get(), POLLOUT, 0};
      int r = PollUntil({&p, 1}, deadline);
      if (r < 0) throw SysError(what + ": poll");
      if (r == 0) throw Error(what + ": timed out after " + DescribeTimeout(timeout));
      int err = 0;
      socklen_t len = sizeof err;
      if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
      if (err != 0) {
        last_err = err;
        continue;
      }
    }
    return fd;
  }
  throw SysError(what, last_err);
}

UniqueFd ListenUnix(const std::string& path, const std::string& what, uint64_t* inode) {
  const sockaddr_un addr = UnixAddress(path, what);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) throw SysError(what + ": socket");
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0) {
    if (errno != EADDRINUSE) throw SysError(what + ": bind");
    // The file exists. A listener that died (or was killed) leaves its socket file
    // behind; replace it, but never a live listener's, nor a file that is no socket.
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode)) {
      throw Error(what + ": the path exists and is not a socket");
    }
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!probe) throw SysError(what + ": socket");
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 || errno == EAGAIN) {
      throw Error(what + ": another listener is live on this socket");
    }
    if (errno != ECONNREFUSED) throw SysError(what + ": probing the existing socket file");
    log::info("channel_stale_socket_replaced", {{"path", path}});
    ::unlink(path.c_str());
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0) {
      throw SysError(what + ": bind");
    }
  }
  struct stat st {};
  *inode = ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
  if (::listen(fd.get(), 16) < 0) throw SysError(what + ": listen");
  return fd;
}

void UnlinkUnixIfOurs(const std::string& path, uint64_t inode) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == inode) ::unlink(path.c_str());
}

UniqueFd ConnectUnix(const std::string& path, const std::string& what) {
  const sockaddr_un addr = UnixAddress(path, what);
  UniqueFd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!sock) throw SysError(what + ": socket");
  if (::connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0) throw SysError(what, errno);
  return sock;
}

UniqueFd AcceptUnix(int listen_fd, const Deadline& deadline, const std::string& what) {
  for (;;) {
    pollfd p{listen_fd, POLLIN, 0};
    int r = PollUntil({&p, 1}, deadline);
    if (r < 0) throw SysError(what + ": poll");
    if (r == 0) return UniqueFd();
    UniqueFd conn(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (conn) return conn;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) continue;
    throw SysError(what);
  }
}

std::string SendWithFds(int fd, std::span<const uint8_t> data, std::span<const int> fds) {
  constexpr size_t kMaxFds = 16;
  if (fds.size() > kMaxFds) return "too many descriptors to pass";
  iovec iov{const_cast<uint8_t*>(data.data()), data.size()};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cbuf;
  m.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  ssize_t n = ::sendmsg(fd, &m, MSG_NOSIGNAL);
  if (n == static_cast<ssize_t>(data.size())) return {};
  return n < 0 ? std::string(std::strerror(errno)) : "short write";
}

std::string RecvWithFds(int fd, std::span<uint8_t> out, std::vector<UniqueFd>& fds, bool* truncated,
                        const Deadline& deadline) {
  // The descriptors arrive with the first byte; the rest of the bytes is read without
  // ancillary data if it comes separately.
  size_t got = 0;
  while (got < out.size()) {
    iovec iov{out.data() + got, out.size() - got};
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 16)] = {};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    ssize_t n = ::recvmsg(fd, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n > 0) {
      for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
          int passed;
          std::memcpy(&passed, CMSG_DATA(c) + i * sizeof(int), sizeof passed);
          fds.emplace_back(passed);
        }
      }
      if (m.msg_flags & MSG_CTRUNC) *truncated = true;
      got += static_cast<size_t>(n);
      continue;
    }
    if (n == 0) return "closed the connection";
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return std::strerror(errno);
    pollfd p{fd, POLLIN, 0};
    int r = PollUntil({&p, 1}, deadline);
    if (r < 0) return std::string("poll: ") + std::strerror(errno);
    if (r == 0) return "timed out";
  }
  return {};
}

}  // namespace ftvm::transport::detail
