// `ftvm drill`: the pull-the-plug test of a protected VM, as an operator runs it.
//
// It builds three "hosts" and a LAN out of network namespaces on this machine:
// host A and host B each have a bridge joining their LAN link and the VM's tap,
// plus an address for the logging channel; the client sits on the LAN in the VM's
// subnet. A protected mail-store pair starts (primary on A, secondary on B, each with
// its own copy of the disk); client workers deliver and fetch mail with exactly-once
// retries and keep a ledger of every delivery the store acknowledged. Then the drill
// injects the fault (SIGKILL of the primary, of the secondary, or A's LAN link cut),
// keeps the load going, and finally reads every mailbox back and checks it against
// the ledger. Each round reports: time from the fault to the first request answered
// by the survivor, requests in flight at the fault, acknowledged messages lost (must
// be 0), duplicates (must be 0), whether the mailboxes match the ledger, and whether
// exactly one VM stayed live.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ftvm::drill {

// kMigrate is no fault but a planned move: the VM runs on host A alone, and at the
// "fault" `ftvm migrate` on host B takes it over live, under the same load and checks.
// kStopPrimary / kStopSecondary: SIGSTOP for a while, then SIGCONT (a stalled host
// that comes back), for either DrillOptions::short_stop_s (less than the failure
// timeout: nobody may notice) or long_stop_s (more: the peer takes over or goes on
// alone, and the stalled one must not come back as a second live VM).
// kSecondaryDiskFull: host B's disk (a small file system of its own) fills up: the
// secondary must stop replicating with the reason, and the primary go on alone.
// kArbiterAway: the arbiter unreachable (its directory moved away) for long_stop_s,
// and the primary killed meanwhile: the secondary must wait for the arbiter before it
// takes over, never guess.
// Link faults, over the tcp channel: kSlowLink delays every byte on the logging link
// by DrillOptions::link_delay_ms for long_stop_s (a congested link: nobody may fail
// over for it); kLossyLink drops link_loss_percent of its packets for long_stop_s
// (the kernel's TCP retransmits: stalls of 200 ms and more, which may or may not
// end in a failover, but never in two live VMs); kCorruptLog flips one bit of the
// log stream in flight: the secondary must find it, refuse to take over on it, and
// stop, and the primary run on unprotected.
enum class Fault {
  kKillPrimary,
  kKillSecondary,
  kCutPrimaryLink,
  kMigrate,
  kStopPrimary,
  kStopSecondary,
  kArbiterAway,
  kSecondaryDiskFull,
  kSlowLink,
  kLossyLink,
  kCorruptLog,
};
std::string_view FaultName(Fault f);
// "kill-primary", "kill-secondary", "cut-link", "migrate", "stop-primary",
// "stop-secondary", "arbiter-away", "secondary-disk-full", "slow-link", "lossy-link",
// "corrupt-log".
bool ParseFault(std::string_view text, Fault& out);
// One round's fault; how long a stop or the arbiter's outage lasts (0 for the others).
struct FaultPlan {
  Fault fault = Fault::kKillPrimary;
  double stop_s = 0;
};
struct DrillOptions;
struct RoundReport;
// What a chaos run (--fault random) draws from: every fault but the planned move,
// stops both short and long, and cut-link only where the channel goes over a link.
// Rounds take them in a random order, each once per set of that many rounds, so
// that a short run still sees every kind.
std::vector<FaultPlan> ChaosFaults(const DrillOptions& options);
// tcp, dpdk-af_packet and dpdk-tap join the hosts over a link that can be cut; shm,
// rdma+shm and net_memif join two processes of this machine.
bool ChannelGoesOverALink(const std::string& channel);
// The link faults (slow-link, lossy-link, corrupt-log) need the tcp channel: they act
// on its TCP connection (a relay, packet filter rules).
bool IsLinkFault(Fault f);

struct DrillOptions {
  std::string ftvm;          // the ftvm binary to run as primary and secondary
  std::string guest;         // guest-kit image
  std::string workdir;       // scratch (disks, logs, arbiter); created if missing
  // The logging channel between the hosts: tcp (over the LAN), shm or rdma+shm (a Unix
  // socket both hosts see), dpdk (net_memif, through a socket file both see),
  // dpdk-af_packet (net_af_packet on a link of its own between A and B), or dpdk-tap
  // (net_tap on taps on the hosts' bridges: over the LAN).
  std::string channel = "tcp";
  Fault fault = Fault::kKillPrimary;
  bool random_fault = false;  // chaos: the rounds' faults come from ChaosFaults(*this)
  double short_stop_s = 0.1, long_stop_s = 1.2;  // stop faults (see Fault); --fault stop-*: long
  double link_delay_ms = 50;    // slow-link: added each way
  double link_loss_percent = 3; // lossy-link: packets dropped each way
  int rounds = 1;
  uint64_t seed = 0;         // 0: from the clock (printed, for replaying a drill)
  double rate = 300;         // client requests per second, all workers together
  int workers = 4;
  double min_before_s = 0.3, max_before_s = 1.5;  // the fault lands at a random moment in this range
  double after_s = 1.5;      // load continues this long after the fault
  std::string extra_primary_args;  // passed through (e.g. timeouts), space-separated
  bool keep = false;         // keep namespaces and files after the last round
  // kill-primary only: then bring host A back as a new secondary of the survivor
  // (re-protection of the running VM), and pull the plug on the survivor too.
  bool reprotect = false;
  // With reprotect: host A's new secondary starts before the fault, as a standby
  // that keeps trying the survivor's address and joins by itself once it listens.
  bool standby = false;
  // With fault migrate: ftvm migrate --postcopy (the VM moves before its memory).
  bool postcopy = false;
  // Set (by a signal handler) to end the drill early: the round under way stops,
  // cleans up (processes, namespaces, mounts, filter rules) and counts as failed;
  // no further round starts.
  const std::atomic<bool>* interrupted = nullptr;
  // Called with each round's report as soon as it is done (a long run keeps what it
  // found even if it is stopped).
  std::function<void(const RoundReport&)> on_round;
};

struct RoundReport {
  int round = 0;
  Fault fault = Fault::kKillPrimary;
  double fault_at_s = 0;          // after the load started
  double stop_ms = 0;             // stop faults: how long the process was stopped
  bool failover = false;          // the VM ended up served by the other host
  double recovery_ms = -1;        // fault -> first request answered afterwards (-1: none)
  double reprotect_ms = -1;       // --reprotect: new secondary started (--standby: the fault) -> protected again
  double recovery2_ms = -1;       // --reprotect: second fault -> first request answered
  uint64_t in_flight = 0;         // requests outstanding at the fault
  uint64_t requests = 0;          // completed during the round
  uint64_t acked = 0;             // deliveries the store acknowledged (OK or DUP)
  uint64_t lost = 0;              // acknowledged but missing afterwards
  uint64_t duplicates = 0;        // a message id stored more than once
  uint64_t unexpected = 0;        // stored but never attempted, or with another body
  uint64_t client_timeouts = 0;   // requests that never got an answer
  bool contents_match = false;
  bool one_live = false;          // exactly one VM process serves afterwards
  std::string survivor;           // "primary" or "secondary"
  std::string problem;            // why the round failed, if it did
  bool ok() const { return problem.empty(); }
};

struct DrillReport {
  uint64_t seed = 0;
  std::vector<RoundReport> rounds;
};

// Throws ftvm::Error when the drill cannot be set up (not root, no ip command,
// binaries missing). A round that goes wrong is reported, not thrown.
DrillReport RunDrill(const DrillOptions& options);

}  // namespace ftvm::drill
