// A mail-store client for process-level tests: one thread in a network namespace
// delivering "m<i>" with body "body-<i>" to one mailbox of one store, in order, each
// after the previous one was acknowledged, with a ledger of acknowledgement times.
// The store's journal then holds them in that order, so what survives a crash is a
// prefix m0..m<n-1>. Header-only: the test links the mail client (ftvm_tool_dep).
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"
#include "tools/ftvm/mail_client.h"

namespace ftvm::itest {

class Deliverer {
 public:
  Deliverer(std::string netns, std::string ip, std::string mailbox)
      : netns_(std::move(netns)), ip_(std::move(ip)), mailbox_(std::move(mailbox)) {}
  ~Deliverer() { stop(); }
  void start() {
    thread_ = std::thread([this] { Run(); });
  }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // Acknowledgement wall times, by index.
  std::vector<uint64_t> acked() {
    std::lock_guard<std::mutex> lock(mu_);
    return acked_;
  }
  uint64_t attempted() const { return attempted_; }
  std::string error() {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }
  static uint64_t WallNs() {
    timespec t{};
    clock_gettime(CLOCK_REALTIME, &t);
    return uint64_t(t.tv_sec) * 1000000000ull + uint64_t(t.tv_nsec);
  }

 private:
  void Run() {
    try {
      UniqueFd fd(open(("/var/run/netns/" + netns_).c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd || setns(fd.get(), CLONE_NEWNET) != 0) throw SysError("setns " + netns_);
      mail::ClientOptions co;
      co.timeout_ms = 50;
      co.retries = 60;
      mail::MailClient client(mail::ParseEndpoint(ip_), co);
      for (uint64_t i = 0; !stop_; ++i) {
        attempted_ = i + 1;
        mail::MailResult r = client.deliver("m" + std::to_string(i), mailbox_, "body-" + std::to_string(i));
        if (r.status != mail::MailStatus::kOk && r.status != mail::MailStatus::kDuplicate) break;  // the VM is gone
        const uint64_t t = WallNs();
        std::lock_guard<std::mutex> lock(mu_);
        acked_.push_back(t);
      }
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = e.what();
    }
  }

  std::string netns_, ip_, mailbox_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> attempted_{0};
  std::mutex mu_;
  std::vector<uint64_t> acked_;
  std::string error_;
};

}  // namespace ftvm::itest
