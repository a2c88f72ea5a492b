// Shared helpers of the transport tests: connected channel pairs over either
// transport, deterministic payloads, socket paths, and fork()ed child processes.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "transport/channel.h"

namespace ftvm::transport::testutil {

using namespace std::chrono_literals;

// kRdmaShm: the RDMA channel over its shared-memory emulation of one-sided writes;
// kRdma: over real verbs (only where an RDMA device exists).
enum class Kind { kTcp, kShm, kRdmaShm, kRdma };

inline std::string KindName(Kind k) {
  switch (k) {
    case Kind::kTcp: return "tcp";
    case Kind::kShm: return "shm";
    case Kind::kRdmaShm: return "rdma+shm";
    case Kind::kRdma: return "rdma";
  }
  return "?";
}
// For test names, which allow letters, digits and '_' only.
inline std::string KindTestName(Kind k) { return k == Kind::kRdmaShm ? "rdma_shm" : KindName(k); }

// A socket path unique to this process and call, removed again on destruction.
class SocketPath {
 public:
  explicit SocketPath(const std::string& tag) {
    static int counter = 0;
    path_ = (std::filesystem::temp_directory_path() /
             ("ftvm-transport-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" + tag +
              ".sock"))
                .string();
    ::unlink(path_.c_str());
  }
  ~SocketPath() { ::unlink(path_.c_str()); }
  SocketPath(const SocketPath&) = delete;
  SocketPath& operator=(const SocketPath&) = delete;
  const std::string& str() const { return path_; }

 private:
  std::string path_;
};

// A listener on loopback or on a fresh Unix socket path.
class TestListener {
 public:
  explicit TestListener(Kind kind, const ChannelOptions& options = {}) : path_("pair") {
    switch (kind) {
      case Kind::kTcp: listener_ = Listen("tcp:127.0.0.1:0", options); break;
      case Kind::kShm: listener_ = Listen("shm:" + path_.str(), options); break;
      case Kind::kRdmaShm: listener_ = Listen("rdma+shm:" + path_.str(), options); break;
      case Kind::kRdma: listener_ = Listen("rdma:127.0.0.1:0", options); break;
    }
  }
  Listener& operator*() { return *listener_; }
  Listener* operator->() { return listener_.get(); }
  std::string address() const { return listener_->address(); }

 private:
  SocketPath path_;
  std::unique_ptr<Listener> listener_;
};

// Two connected ends in this process: `a` accepted, `b` connected.
struct Pair {
  std::unique_ptr<TestListener> listener;
  std::unique_ptr<Channel> a;
  std::unique_ptr<Channel> b;
};

inline Pair MakePair(Kind kind, const ChannelOptions& options = {}) {
  Pair p;
  p.listener = std::make_unique<TestListener>(kind, options);
  std::exception_ptr failure;
  // The handshake needs both ends at once: connect from another thread.
  std::thread t([&] {
    try {
      p.b = Connect(p.listener->address(), 10s, options);
    } catch (...) {
      failure = std::current_exception();
    }
  });
  p.a = (*p.listener)->accept(10s);
  t.join();
  if (failure) std::rethrow_exception(failure);
  if (!p.a) throw std::runtime_error("accept timed out");
  return p;
}

// Deterministic bytes that differ with `seed` and position, so a shifted, dropped or
// duplicated chunk never matches.
inline std::vector<uint8_t> Pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  uint32_t x = seed * 2654435761u + 12345u;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    v[i] = static_cast<uint8_t>(x >> 24);
  }
  return v;
}

inline bool Equal(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

inline void PutU64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
inline uint64_t GetU64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// A child process running `body` (its return value is the exit code; an exception is
// exit code 99). The child never returns into the test framework. Killed and reaped
// on destruction if still running.
class Child {
 public:
  template <typename Body>
  explicit Child(Body body) {
    std::fflush(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      int rc = 99;
      try {
        rc = body();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child: %s\n", e.what());
      }
      ::_exit(rc);
    }
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  pid_t pid() const { return pid_; }
  void kill(int sig) { ::kill(pid_, sig); }
  // Exit code, or 128 + signal number.
  int wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
};

}  // namespace ftvm::transport::testutil
