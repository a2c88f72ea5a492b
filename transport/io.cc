#include "transport/io.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <time.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace ftvm::transport {

std::string_view SendCodeName(SendCode code) {
  switch (code) {
    case SendCode::kOk: return "ok";
    case SendCode::kTimeout: return "timeout";
    case SendCode::kClosed: return "closed";
    case SendCode::kError: return "error";
  }
  return "?";
}

std::string_view RecvCodeName(RecvCode code) {
  switch (code) {
    case RecvCode::kMessage: return "message";
    case RecvCode::kTimeout: return "timeout";
    case RecvCode::kClosed: return "closed";
    case RecvCode::kError: return "error";
  }
  return "?";
}

namespace detail {

int PollUntil(std::span<pollfd> fds, const Deadline& deadline) {
  for (;;) {
    timespec ts{};
    timespec* tsp = nullptr;
    if (!deadline.forever()) {
      auto left = deadline.remaining();
      ts.tv_sec = static_cast<time_t>(left.count() / 1'000'000'000);
      ts.tv_nsec = static_cast<long>(left.count() % 1'000'000'000);
      tsp = &ts;
    }
    int n = ::ppoll(fds.data(), fds.size(), tsp, nullptr);
    if (n >= 0 || errno != EINTR) return n;
  }
}

std::string DescribeTimeout(std::chrono::nanoseconds timeout) {
  if (timeout == kNoTimeout) return "no timeout";
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count()) + " ms";
}

std::string SendAll(int fd, std::span<const uint8_t> data, const Deadline& deadline) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return std::strerror(errno);
    pollfd p{fd, POLLOUT, 0};
    int r = PollUntil({&p, 1}, deadline);
    if (r < 0) return std::string("poll: ") + std::strerror(errno);
    if (r == 0) return "timed out";
  }
  return {};
}

std::string RecvAll(int fd, std::span<uint8_t> out, const Deadline& deadline) {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::recv(fd, out.data() + done, out.size() - done, MSG_DONTWAIT);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n == 0) return "peer closed the connection";
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return std::strerror(errno);
    pollfd p{fd, POLLIN, 0};
    int r = PollUntil({&p, 1}, deadline);
    if (r < 0) return std::string("poll: ") + std::strerror(errno);
    if (r == 0) return "timed out";
  }
  return {};
}

void SetNonBlocking(int fd, const std::string& what) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) throw SysError(what + ": O_NONBLOCK");
}

std::string ExchangeHello(int fd, HelloKind kind, const Deadline& deadline) {
  // Both sides send first and then read, so neither waits for the other to speak.
  auto ours = EncodeHello(kind);
  std::string err = SendAll(fd, ours, deadline);
  if (!err.empty()) return "sending the hello: " + err;
  std::array<uint8_t, kHelloBytes> theirs{};
  err = RecvAll(fd, theirs, deadline);
  if (!err.empty()) return "waiting for the peer's hello: " + err;
  return CheckHello(theirs, kind);
}

}  // namespace detail
}  // namespace ftvm::transport
