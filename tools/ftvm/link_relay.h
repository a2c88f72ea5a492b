// A TCP relay that stands in the logging link for the drill's link faults, where the
// kernel offers no netem: it passes one connection's bytes both ways unchanged until
// told to delay them (a slow or congested link) or to flip one bit of what the
// primary sends (a corruption that got past the link's own checks).
//
// It lives in a network namespace of its own choosing (the secondary's host): it
// listens on `listen` there and, for the one connection it accepts, connects to
// `upstream` from there too, so the relayed traffic still crosses the LAN.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/unique_fd.h"

namespace ftvm::drill {

class LinkRelay {
 public:
  // Binds `listen_port` on 127.0.0.1 in namespace `netns` ("" for this thread's);
  // `upstream_host`:`upstream_port` is the primary's channel address. Throws
  // ftvm::Error.
  LinkRelay(const std::string& netns, uint16_t listen_port, std::string upstream_host, uint16_t upstream_port);
  ~LinkRelay();
  LinkRelay(const LinkRelay&) = delete;
  LinkRelay& operator=(const LinkRelay&) = delete;

  // Every byte read from now on, either way, is delivered `ms` later (0: at once);
  // order is kept, as on a link.
  void set_delay_ms(double ms) { delay_ns_.store(uint64_t(ms * 1e6), std::memory_order_relaxed); }
  // Flips one bit of the next bytes the primary sends, at a position `random`
  // picks. Returns at once; corrupted() says when it happened.
  void corrupt_next(uint64_t random);
  bool corrupted() const { return corrupted_.load(std::memory_order_acquire); }
  // Bytes relayed so far toward the secondary (downstream) and back.
  uint64_t bytes_down() const { return bytes_[0].load(std::memory_order_relaxed); }
  uint64_t bytes_up() const { return bytes_[1].load(std::memory_order_relaxed); }
  // What ended the relay ("" while it runs), e.g. a side that hung up.
  std::string ended() const;

 private:
  void Serve();
  // Copies `from` to `to` (direction 0: primary to secondary), honouring the delay
  // and a pending corruption, until either side ends or stop_.
  void Pump(int direction, int from, int to);
  void End(const std::string& why);

  std::string netns_;
  std::string upstream_host_;
  uint16_t upstream_port_;
  UniqueFd listener_;
  UniqueFd downstream_, upstream_;
  std::atomic<uint64_t> delay_ns_{0};
  std::atomic<bool> corrupt_pending_{false};
  std::atomic<bool> corrupted_{false};
  std::atomic<uint64_t> corrupt_random_{0};
  std::atomic<uint64_t> bytes_[2] = {0, 0};
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::string ended_;
  std::thread server_;
};

}  // namespace ftvm::drill
