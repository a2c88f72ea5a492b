// Test and benchmark access to the DPDK transport: the protocol's own counters (so a
// test of injected faults can check that faults really were injected and repaired),
// and a bare port for the benchmark's baseline ping-pong, brought up exactly like a
// channel's port (same EAL, device arguments, mbuf pool) but with no protocol on it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>

#include "transport/channel.h"

namespace ftvm::transport::test_hooks {

struct DpdkCounters {
  uint64_t segments_sent = 0;       // every kind, retransmissions included
  uint64_t segments_received = 0;   // valid segments of this channel
  uint64_t retransmits = 0;         // data or FIN segments sent again
  uint64_t acks_sent = 0;           // acknowledgements sent alone (not on data)
  uint64_t duplicates_received = 0;   // data segments entirely received before
  uint64_t out_of_order_received = 0;  // data segments beyond a gap
  uint64_t doorbells_rung = 0;      // memif: the peer said it slept, and was woken
  uint64_t wakeups = 0;             // a sleeping thread woken by a frame's arrival (not its timeout)
  uint64_t burst_faults = 0;        // memif: bursts cut short as the driver unmapped the peer's memory
  // What the fault injector (DpdkOptions::faults) did to this side's segments.
  uint64_t injected_losses = 0;
  uint64_t injected_duplicates = 0;
  uint64_t injected_reorders = 0;
};

// Throws ftvm::Error when `channel` is not a DPDK channel.
DpdkCounters DpdkChannelCounters(Channel& channel);

// A DPDK port with no protocol: raw Ethernet frames in and out.
class DpdkRawPort {
 public:
  // `listening`: the side a DpdkListener would be (memif server). Waits up to
  // `timeout` for the link to come up. Throws ftvm::Error.
  DpdkRawPort(const DpdkAddress& address, bool listening, std::chrono::nanoseconds timeout);
  ~DpdkRawPort();
  DpdkRawPort(const DpdkRawPort&) = delete;
  DpdkRawPort& operator=(const DpdkRawPort&) = delete;

  // Sends one frame (Ethernet header included). False when the port did not take it.
  bool send(std::span<const uint8_t> frame);
  // Copies the next received frame (up to out.size() bytes) into `out`; returns its
  // length, 0 when none is waiting.
  size_t poll(std::span<uint8_t> out);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ftvm::transport::test_hooks
