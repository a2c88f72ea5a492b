// Network namespaces as stand-in hosts on one machine: the drill, the integration
// tests, the DPDK tests and the channel benchmark build "host A" and "host B" out of
// namespaces and join them with a veth pair (a cable between two NICs). Everything
// is RAII: a namespace or a link made here is deleted when its owner goes, however a
// test or a run ends. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and the `ip` command.
#pragma once

#include <string>
#include <vector>

namespace ftvm::netns {

// Runs `ip ARGS...`; throws ftvm::Error quoting the command and what it printed on
// stderr when it fails.
void Ip(const std::vector<std::string>& args);

// Moves the calling thread into the network namespace NAME (/var/run/netns/NAME):
// sockets and devices it opens from now on are that namespace's. Throws ftvm::Error.
void Enter(const std::string& name);

// A network namespace named PREFIX-PID (PID of this process), with its loopback up;
// deleted, with every interface in it, on destruction. Namespaces of the same PREFIX
// left by a process that no longer runs (killed before it could clean up) are deleted
// first. Throws ftvm::Error.
class Namespace {
 public:
  explicit Namespace(const std::string& prefix);
  ~Namespace();
  Namespace(const Namespace&) = delete;
  Namespace& operator=(const Namespace&) = delete;

  const std::string& name() const { return name_; }
  // `argv` run inside the namespace (`ip netns exec NAME argv...`).
  std::vector<std::string> wrap(const std::vector<std::string>& argv) const;

 private:
  std::string name_;
};

// A veth pair: interface `a.ifname` in namespace `a.netns`, `b.ifname` in `b.netns`
// (the two may have the same name), both up with the given MTU, each with an address
// when a CIDR is given. Deleted on destruction (unless its namespace went first, which
// deletes it too). Throws ftvm::Error.
class VethPair {
 public:
  struct End {
    std::string netns;
    std::string ifname;
    std::string cidr;  // "10.0.0.1/24", or empty for none
  };
  VethPair(End a, End b, unsigned mtu = 9000);
  ~VethPair();
  VethPair(const VethPair&) = delete;
  VethPair& operator=(const VethPair&) = delete;

  const End& a() const { return a_; }
  const End& b() const { return b_; }

 private:
  End a_, b_;
};

}  // namespace ftvm::netns
