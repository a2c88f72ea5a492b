// `ftvm ha-agent`: HA restart for VMs that no lockstep pair protects (or whose
// both copies are lost). One agent per host; the agent process is "the host": the
// VMs and DR replicas it starts are its children and die with it.
//
// The cluster directory (shared storage, like the arbiter's) holds
//   vms/NAME.toml        a VM: its `ftvm run` options (config.h) and an [ha] table:
//                        home (host), replica (host), replica_port, priority, mem_mib
//   hosts/HOST.lease     the host's lease: renewed every heartbeat (wall ns inside)
//   arbiter/NAME/        the VM's generations (failover/arbiter.h): the holder of
//                        the highest runs it; a restart claims the next one
// Each host keeps its replicas in DATA/NAME.replica (ftvm dr-replica --dir).
//
// A host is dead when its UDP heartbeats have been silent for the failure timeout
// AND its lease is older than the lease timeout. An agent that cannot renew its own
// lease for half the lease timeout kills its VMs and stops beating (self-fencing), so
// a host declared dead cannot still run them, and a host that lost the cluster
// directory but not the network is declared dead once its lease expires. The replica host of each of the dead host's VMs then,
// in priority order and if its free memory allows, claims the VM's next generation
// and restarts it from the replica (ftvm dr-start --dir; VMs run with --dr-sync, so
// the replica holds every write the guest was told is done).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ftvm::cli {

struct HaVm {
  std::string name;  // the file's stem
  std::string file;
  std::string home;
  std::string replica;
  unsigned replica_port = 0;
  int priority = 0;  // higher restarts first
  uint64_t mem_mib = 0;
  std::string disk;  // the home host's image (the file's `disk`)
  // `ftvm run` options from the file (without disk): --key value ...
  std::vector<std::string> run_args;
};

// Reads and checks one VM file. Throws ftvm::Error naming the file, the line and
// the key ("FILE:LINE: key 'ha.priority': ...").
HaVm LoadHaVm(const std::string& file);

// `host` and `known` (NAME=IP:PORT,...): throws ftvm::Error for a malformed list.
struct HaPeer {
  std::string name, ip;
  unsigned port = 0;
};
std::vector<HaPeer> ParseHaPeers(const std::string& list);

int HaAgentMain(int argc, char** argv);

}  // namespace ftvm::cli
