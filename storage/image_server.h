// `ftvm serve-image`: serves the raw disk images in a directory by name, so a VM
// can start from one before it has been copied (storage/image_stream.h; the
// protocol is in storage/image_wire.h).
//
// Per client, each block is sent at most once: the blocks the client demands at
// once (its VM waits for them), then the image's boot profile (DIR/NAME.profile,
// the order earlier boots first read blocks in), then the rest in ascending order.
// The rate limit applies to that last part only, the background copy: demanded
// blocks and the profile are what the VM needs now. A client that finishes (or
// stops) sends the order its VM first read blocks in, which becomes the profile.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "transport/channel.h"

namespace ftvm::storage {

struct ImageServerOptions {
  std::string dir;
  uint32_t block_bytes = 64u << 10;  // a multiple of 4 KiB, at most 4 MiB
  uint64_t rate_bytes = 0;           // background copy per client, bytes/s; 0: unlimited
};

// Reads DIR/NAME.profile (empty when there is none, or it belongs to another version
// of the image: `why` says so then).
std::vector<uint32_t> LoadImageProfile(const std::string& path, uint64_t image_bytes, uint32_t block_bytes,
                                       const std::string& image_id, std::string* why);

class ImageServer {
 public:
  // Listens on `address` ("HOST:PORT" or "tcp:HOST:PORT"; port 0: any). Throws
  // ftvm::Error for a bad directory, block size or address.
  ImageServer(const std::string& address, ImageServerOptions options);
  ~ImageServer();
  ImageServer(const ImageServer&) = delete;
  ImageServer& operator=(const ImageServer&) = delete;

  // Where clients connect ("tcp:127.0.0.1:41522").
  std::string address() const { return listener_->address(); }
  // Accepts and serves clients (a thread each) until stop(). Throws ftvm::Error when
  // the listening socket fails.
  void run();
  // Thread-safe: run() returns soon, every client's channel is closed.
  void stop();
  // Sessions served so far (finished or not).
  uint64_t sessions() const { return sessions_.load(); }

 private:
  struct Session {
    std::unique_ptr<transport::Channel> channel;
    std::thread thread;
    std::atomic<bool> done{false};
  };
  void Serve(Session& s, uint64_t id);
  // "" when the client finished or left, otherwise why the session failed.
  std::string ServeImage(transport::Channel& ch, uint64_t id);
  // Keeps a client's profile as DIR/NAME.profile (replacing the old one).
  void SaveProfile(const std::string& name, std::span<const uint8_t> payload, uint64_t image_bytes,
                   const std::string& image_id);
  void Reap(bool all);

  ImageServerOptions options_;
  std::unique_ptr<transport::Listener> listener_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> sessions_{0};
  std::mutex mu_;  // sessions_list_, profile writes
  std::list<Session> sessions_list_;
};

}  // namespace ftvm::storage
