// Internal socket set-up shared by the transports: TCP listening/accepting/connecting
// (the TCP channel, and the side channel over which RDMA queue pairs are set up) and
// Unix sockets with descriptor passing (the shared-memory channel, and the RDMA
// channel's shared-memory emulation). Setup only: everything here throws ftvm::Error
// naming `what` and the cause, or returns an explicit "" / error text where the
// caller decides whose fault a failure is.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/unique_fd.h"
#include "transport/io.h"

namespace ftvm::transport::detail {

// "10.0.0.2:7000", "[::1]:7000".
std::string HostPort(const std::string& host, uint16_t port);
// The numeric address of a peer as HostPort() writes it.
std::string SockaddrText(const sockaddr_storage& ss);

// A non-blocking listening TCP socket on `host` (a name, a numeric address, "0.0.0.0"
// or "::") and `port` (0: ephemeral; *bound_port says which), with SO_REUSEADDR and,
// when buffer_bytes > 0, SO_SNDBUF/SO_RCVBUF set before listen().
UniqueFd ListenTcp(const std::string& host, uint16_t port, int buffer_bytes, const std::string& what,
                   uint16_t* bound_port);
// Waits for a connection until the deadline; an invalid UniqueFd on timeout. The
// accepted socket is non-blocking with TCP_NODELAY and the buffer sizes; *peer gets
// "HOST:PORT".
UniqueFd AcceptTcp(int listen_fd, int buffer_bytes, const Deadline& deadline, const std::string& what,
                   std::string* peer);
// Connects to host:port within the deadline (no retry of a refused connection): a
// non-blocking socket with TCP_NODELAY and the buffer sizes. `timeout` is only for
// the message.
UniqueFd ConnectTcp(const std::string& host, uint16_t port, int buffer_bytes, const Deadline& deadline,
                    std::chrono::nanoseconds timeout, const std::string& what);

// A non-blocking listening Unix stream socket at `path`. A stale socket file left by
// a dead listener is replaced; a live one, or a file that is no socket, makes this
// throw. *inode gets the socket file's inode so that only our own file is removed.
UniqueFd ListenUnix(const std::string& path, const std::string& what, uint64_t* inode);
// Removes the socket file at `path` if it is still the one with `inode`.
void UnlinkUnixIfOurs(const std::string& path, uint64_t inode);
// A non-blocking Unix stream socket connected to `path`; throws "what: strerror".
UniqueFd ConnectUnix(const std::string& path, const std::string& what);
// Accepts one connection if there is one before the deadline (invalid on timeout).
UniqueFd AcceptUnix(int listen_fd, const Deadline& deadline, const std::string& what);

// Sends `data` with `fds` attached (SCM_RIGHTS) in one sendmsg() on a fresh socket
// (whose buffer always takes a short setup message whole). "" or what went wrong.
std::string SendWithFds(int fd, std::span<const uint8_t> data, std::span<const int> fds);
// Reads exactly `out.size()` bytes, collecting descriptors passed with them into
// `fds` (close-on-exec). "" or what went wrong: "closed the connection",
// "timed out", an errno text. *truncated is set when descriptors were lost.
std::string RecvWithFds(int fd, std::span<uint8_t> out, std::vector<UniqueFd>& fds, bool* truncated,
                        const Deadline& deadline);

}  // namespace ftvm::transport::detail
