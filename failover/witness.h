// Isolation check before claiming the arbiter. When a pair loses each other by
// silence, either host may be the one cut off; the arbiter alone would let the
// faster one win, and an isolated primary that wins keeps a VM nobody can reach. A
// host that cannot reach the witness (an address on the clients' side: a gateway, a
// router) knows it is the isolated one and does not claim.
#pragma once

#include <chrono>
#include <string>

namespace ftvm::failover {

// Sends ICMP echo requests to `ipv4` (a ping socket, or a raw one as root) and
// returns whether one was answered within `timeout` (spread over a few attempts).
// Throws ftvm::Error for an address that is not IPv4 or a socket that cannot be made.
bool WitnessAnswers(const std::string& ipv4, std::chrono::milliseconds timeout);

}  // namespace ftvm::failover
