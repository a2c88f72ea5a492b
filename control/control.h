// A VMM's control socket: a Unix stream socket (one per VMM process, path from
// --control) on which a client sends one protobuf Request and reads Replies (progress
// lines, then one marked done). Each message is a u32 little-endian length and the
// serialized protobuf. Requests carry kControlVersion; a server refuses another
// version by name. Commands register a handler per request kind, so a new command
// (ftvm status) is a new oneof field and a handler, not a new protocol.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <thread>

#include "common/unique_fd.h"
#include "control/control.pb.h"

namespace ftvm::control {

inline constexpr uint32_t kControlVersion = 1;

// The framing on the socket (both ways): u32 little-endian body length, at most
// kMaxMessageBytes, then the serialized protobuf. Server and Call() use these; so
// does fuzz/control_fuzz.cc.
inline constexpr size_t kLengthBytes = 4;
inline constexpr uint32_t kMaxMessageBytes = 1u << 20;
std::string EncodeMessage(const google::protobuf::MessageLite& m);
// The body length a message announces: "" or why it is refused.
std::string DecodeLength(std::span<const uint8_t, kLengthBytes> prefix, uint32_t& length);
// Parses a body into `m`: "" or why not.
std::string DecodeBody(std::span<const uint8_t> body, google::protobuf::MessageLite& m);
// What the server answers a request of another protocol version ("" for this one's).
std::string CheckVersion(const Request& request);

// What a handler answers through. progress() sends a progress reply; the handler
// returns the final one (done is set for it).
class Responder {
 public:
  explicit Responder(int fd) : fd_(fd) {}
  // A caller that is no socket client (the dashboard's HTTP actions): progress
  // lines go nowhere.
  Responder() : fd_(-1), failed_(true) {}
  void progress(const std::string& line);
  bool failed() const { return failed_; }
  // `f` runs once the final reply has gone out (a drill ends the process: its
  // answer must reach the client first).
  void then(std::function<void()> f) { then_ = std::move(f); }
  std::function<void()> take_then() { return std::move(then_); }

 private:
  friend class Server;
  bool send(Reply reply);
  int fd_;
  bool failed_ = false;
  std::function<void()> then_;
};

class Server {
 public:
  using Handler = std::function<Reply(const Request&, Responder&)>;
  // Binds `path` (a stale socket file is replaced). Throws ftvm::Error.
  explicit Server(std::string path);
  // Stops serving and removes the socket file.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Before start().
  void on(Request::BodyCase kind, Handler handler) { handlers_[kind] = std::move(handler); }
  void start();
  const std::string& path() const { return path_; }

 private:
  void Loop();
  void Serve(int fd);

  std::string path_;
  UniqueFd fd_;
  std::map<Request::BodyCase, Handler> handlers_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// Sends `request` (version set here) to the VMM at `path` and returns the final
// reply; `on_progress` gets each progress line. Throws ftvm::Error when the socket
// cannot be reached or the exchange breaks.
Reply Call(const std::string& path, Request request, const std::function<void(const std::string&)>& on_progress);

}  // namespace ftvm::control
