// In-test UDP mail store on 127.0.0.1 that speaks guest/apps/mailstore_proto.h, with
// hooks to misbehave (drop requests, swallow replies, send stale replies) so client
// retry and matching logic can be exercised over real sockets.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "common/unique_fd.h"

namespace ftvm::mail::mailtest {

enum class Action {
  kAnswer,           // process and reply
  kDrop,             // ignore the request entirely (lost on the way in)
  kSwallowReply,     // process (store!) but send no reply (lost on the way out)
  kStaleThenAnswer,  // send a reply with a wrong reqid first, then the real one
  kStaleOnly,        // send only a wrong-reqid reply; do not process
  kSilent,           // never answer anything (a dead store)
};

class TestMailServer {
 public:
  // `policy(n)` decides what to do with the n-th datagram received (from 0);
  // `before_reply(n)` runs just before a reply is sent (tests use it to move a clock).
  using Policy = std::function<Action(size_t n)>;
  using Hook = std::function<void(size_t n)>;

  explicit TestMailServer(Policy policy = nullptr, Hook before_reply = nullptr)
      : policy_(std::move(policy)), before_reply_(std::move(before_reply)) {
    fd_.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!fd_) throw std::runtime_error("test server: socket");
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;  // kernel-chosen port: tests can run in parallel
    if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
      throw std::runtime_error("test server: bind");
    socklen_t len = sizeof a;
    ::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::jthread([this](std::stop_token st) { Loop(st); });
  }
  ~TestMailServer() { thread_.request_stop(); }  // jthread joins; poll wakes every 10 ms

  uint16_t port() const { return port_; }
  std::string to() const { return "127.0.0.1:" + std::to_string(port_); }

  std::vector<std::string> received() const {
    std::lock_guard l(mu_);
    return received_;
  }
  size_t stored(const std::string& mailbox) const {
    std::lock_guard l(mu_);
    auto it = boxes_.find(mailbox);
    return it == boxes_.end() ? 0 : it->second.size();
  }

 private:
  static std::vector<std::string_view> Tokens(std::string_view line) {
    std::vector<std::string_view> t;
    while (!line.empty()) {
      size_t sp = line.find(' ');
      t.push_back(line.substr(0, sp));
      if (sp == std::string_view::npos) break;
      line.remove_prefix(sp + 1);
    }
    return t;
  }

  // The store's answer, without the reqid prefix.
  std::string Handle(std::string_view body, const std::vector<std::string_view>& t) {
    std::lock_guard l(mu_);
    if (t.size() == 2 && t[1] == "PING") return "PONG";
    if (t.size() == 4 && t[1] == "DELIVER") {
      std::string msgid(t[2]);
      if (!ids_.insert(msgid).second) return "DUP " + msgid;
      boxes_[std::string(t[3])].emplace_back(msgid, std::string(body));
      return "OK " + msgid;
    }
    if (t.size() == 4 && t[1] == "FETCH") {
      auto it = boxes_.find(std::string(t[2]));
      size_t idx = std::stoul(std::string(t[3]));
      if (it == boxes_.end() || idx >= it->second.size()) return "NONE";
      return "MSG " + it->second[idx].first + "\n" + it->second[idx].second;
    }
    if (t.size() == 3 && t[1] == "COUNT") {
      auto it = boxes_.find(std::string(t[2]));
      return "COUNT " + std::to_string(it == boxes_.end() ? 0 : it->second.size());
    }
    return "ERR malformed";
  }

  void Reply(const sockaddr_in& peer, const std::string& dg) {
    ::sendto(fd_.get(), dg.data(), dg.size(), 0, reinterpret_cast<const sockaddr*>(&peer),
             sizeof peer);
  }

  void Loop(std::stop_token st) {
    char buf[2048];
    size_t n = 0;
    while (!st.stop_requested()) {
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, 10) <= 0) continue;
      sockaddr_in peer{};
      socklen_t plen = sizeof peer;
      ssize_t len = ::recvfrom(fd_.get(), buf, sizeof buf, 0,
                               reinterpret_cast<sockaddr*>(&peer), &plen);
      if (len < 0) continue;
      std::string dg(buf, size_t(len));
      {
        std::lock_guard l(mu_);
        received_.push_back(dg);
      }
      size_t idx = n++;
      Action act = policy_ ? policy_(idx) : Action::kAnswer;
      if (act == Action::kDrop || act == Action::kSilent) continue;

      size_t nl = dg.find('\n');
      std::string_view header = std::string_view(dg).substr(0, nl);
      std::string_view body =
          nl == std::string::npos ? std::string_view() : std::string_view(dg).substr(nl + 1);
      auto t = Tokens(header);
      std::string reqid = t.empty() || t[0].empty() ? "-" : std::string(t[0]);

      if (act == Action::kStaleThenAnswer || act == Action::kStaleOnly) {
        // Plausible content for every verb, only the reqid is wrong.
        if (before_reply_) before_reply_(idx);
        Reply(peer, "stale" + std::to_string(idx) + " OK bogus");
        Reply(peer, "stale" + std::to_string(idx) + " COUNT 999");
        Reply(peer, "stale" + std::to_string(idx) + " PONG");
        if (act == Action::kStaleOnly) continue;
      }
      std::string answer = reqid + " " + Handle(body, t);
      if (act == Action::kSwallowReply) continue;
      if (before_reply_) before_reply_(idx);
      Reply(peer, answer);
    }
  }

  Policy policy_;
  Hook before_reply_;
  UniqueFd fd_;
  uint16_t port_ = 0;
  mutable std::mutex mu_;
  std::vector<std::string> received_;
  std::set<std::string> ids_;
  std::map<std::string, std::vector<std::pair<std::string, std::string>>> boxes_;
  std::jthread thread_;  // last: starts after, and stops before, the state it uses
};

}  // namespace ftvm::mail::mailtest
