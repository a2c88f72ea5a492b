#include "control/control.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "common/error.h"
#include "common/log.h"
#include "eventlog/format.h"

namespace ftvm::control {

namespace {

sockaddr_un Address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof(a.sun_path)) throw Error("control socket path too long: " + path);
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

bool WriteAll(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::send(fd, c, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= size_t(w);
  }
  return true;
}

bool ReadAll(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t r = ::recv(fd, c, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= size_t(r);
  }
  return true;
}

bool SendMessage(int fd, const google::protobuf::MessageLite& m) {
  const std::string bytes = EncodeMessage(m);
  return WriteAll(fd, bytes.data(), bytes.size());
}

// "" or why not.
std::string RecvMessage(int fd, google::protobuf::MessageLite& m) {
  uint8_t prefix[kLengthBytes];
  if (!ReadAll(fd, prefix, kLengthBytes)) return "the peer closed the control connection";
  uint32_t n = 0;
  if (std::string e = DecodeLength(prefix, n); !e.empty()) return e;
  std::vector<uint8_t> body(n);
  if (!ReadAll(fd, body.data(), n)) return "the peer closed the control connection mid-message";
  return DecodeBody(body, m);
}

}  // namespace

std::string EncodeMessage(const google::protobuf::MessageLite& m) {
  const std::string body = m.SerializeAsString();
  std::string out(kLengthBytes, '\0');
  eventlog::PutLe32(reinterpret_cast<uint8_t*>(out.data()), uint32_t(body.size()));
  return out + body;
}

std::string DecodeLength(std::span<const uint8_t, kLengthBytes> prefix, uint32_t& length) {
  length = eventlog::GetLe32(prefix.data());
  if (length > kMaxMessageBytes)
    return "control message of " + std::to_string(length) + " bytes (not an ftvm control socket?)";
  return "";
}

std::string DecodeBody(std::span<const uint8_t> body, google::protobuf::MessageLite& m) {
  if (!m.ParseFromArray(body.data(), int(body.size()))) return "malformed control message";
  return "";
}

std::string CheckVersion(const Request& request) {
  if (request.version() == kControlVersion) return "";
  return "control protocol version " + std::to_string(request.version()) + " is not spoken by this VMM (it speaks " +
         std::to_string(kControlVersion) + ")";
}

void Responder::progress(const std::string& line) {
  Reply r;
  r.mutable_progress()->set_line(line);
  send(std::move(r));
}

bool Responder::send(Reply reply) {
  if (failed_) return false;
  reply.set_version(kControlVersion);
  if (!SendMessage(fd_, reply)) failed_ = true;  // the client left; the command goes on
  return !failed_;
}

Server::Server(std::string path) : path_(std::move(path)) {
  sockaddr_un a = Address(path_);
  fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd_) throw SysError("control socket");
  ::unlink(path_.c_str());  // a stale one from a dead VMM
  if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) throw SysError("control socket " + path_);
  if (::listen(fd_.get(), 4) != 0) throw SysError("control socket " + path_ + ": listen");
}

Server::~Server() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
  ::unlink(path_.c_str());
}

void Server::start() {
  thread_ = std::thread([this] { Loop(); });
}

void Server::Loop() {
  while (!stopping_) {
    pollfd p{fd_.get(), POLLIN, 0};
    const int n = ::poll(&p, 1, 100);
    if (n <= 0) continue;
    UniqueFd c(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c) continue;
    // A client that connects and says nothing must not hold the server (and the
    // VMM's shutdown) forever.
    timeval limit{5, 0};
    ::setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    Serve(c.get());
  }
}

void Server::Serve(int fd) {
  Request req;
  Responder out(fd);
  Reply reply;
  if (std::string e = RecvMessage(fd, req); !e.empty()) {
    reply.set_error(e);
  } else if (std::string v = CheckVersion(req); !v.empty()) {
    reply.set_error(v);
  } else if (auto it = handlers_.find(req.body_case()); it == handlers_.end()) {
    reply.set_error("this VMM does not handle that request (kind " + std::to_string(int(req.body_case())) + ")");
  } else {
    try {
      reply = it->second(req, out);
    } catch (const Error& e) {
      reply = Reply();
      reply.set_error(e.what());
    }
  }
  reply.set_done(true);
  if (!reply.error().empty()) log::warn("control.request_failed", {{"error", reply.error()}});
  out.send(std::move(reply));
  if (std::function<void()> then = out.take_then()) then();
}

Reply Call(const std::string& path, Request request, const std::function<void(const std::string&)>& on_progress) {
  sockaddr_un a = Address(path);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw SysError("control socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0)
    throw SysError("control socket " + path + " (is the VMM running with --control " + path + "?)");
  request.set_version(kControlVersion);
  if (!SendMessage(fd.get(), request)) throw SysError("control socket " + path + ": sending");
  for (;;) {
    Reply r;
    if (std::string e = RecvMessage(fd.get(), r); !e.empty()) throw Error("control socket " + path + ": " + e);
    if (r.done()) return r;
    if (r.has_progress() && on_progress) on_progress(r.progress().line());
  }
}

}  // namespace ftvm::control
