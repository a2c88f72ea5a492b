// What `ftvm ha-agent` (ha_agent.h) decodes from outside, kept apart from the agent
// so that each decoder can be checked alone (fuzz/ha_heartbeat_fuzz.cc):
//   - the UDP heartbeat datagram, "ftvm-ha1 HOST";
//   - a host's lease, hosts/HOST.lease in the cluster directory: the wall time of its
//     last renewal in ns, in decimal, and a newline;
//   - the [ha] table of a VM file, vms/NAME.toml.
// (The arbiter's generation files are failover/arbiter.h's.)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <toml++/toml.h>

#include "tools/ftvm/ha_agent.h"

namespace ftvm::cli {

inline constexpr std::string_view kHaHeartbeatMagic = "ftvm-ha1 ";

std::string EncodeHaHeartbeat(const std::string& host);
// True and the sending host's name in `host` for a heartbeat, false (and `host`
// untouched) for anything else.
bool DecodeHaHeartbeat(std::string_view datagram, std::string& host);

std::string FormatHaLease(uint64_t wall_ns);
// True and the renewal time for a lease as FormatHaLease writes it (the newline may
// be missing); false (and `wall_ns` untouched) for anything else: a damaged lease
// is no lease, never one that looks fresh.
bool ParseHaLease(std::string_view text, uint64_t& wall_ns);

// Checks the [ha] table of `table` (read from `file`, named in errors) and fills
// vm.home, replica, replica_port, priority and mem_mib (the top-level `mem` stands
// in for a missing mem_mib). Throws ftvm::Error naming the file, the line and the
// key; `vm` changes only when it does not throw.
void DecodeHaTable(const toml::table& table, const std::string& file, HaVm& vm);

}  // namespace ftvm::cli
