// The DPDK transport in a build without libdpdk: dpdk: addresses still parse, and
// using one says why it cannot work here.
#include "common/error.h"
#include "transport/channel.h"
#include "transport/dpdk_testing.h"

namespace ftvm::transport {

namespace {
[[noreturn]] void Unavailable(const DpdkAddress& a) {
  throw Error("channel address '" + a.text +
              "': this ftvm was built without DPDK (libdpdk was not found at build time; install libdpdk-dev and "
              "rebuild)");
}
}  // namespace

struct DpdkListener::Impl {};

DpdkListener::DpdkListener(const DpdkAddress& address, const DpdkOptions&) { Unavailable(address); }
DpdkListener::~DpdkListener() = default;
std::string DpdkListener::address() const { return {}; }
std::unique_ptr<Channel> DpdkListener::accept(std::chrono::nanoseconds) { return nullptr; }

std::unique_ptr<Channel> DpdkConnect(const DpdkAddress& address, std::chrono::nanoseconds, const DpdkOptions&) {
  Unavailable(address);
}

bool DpdkAvailable() { return false; }

namespace test_hooks {
DpdkCounters DpdkChannelCounters(Channel& channel) {
  throw Error("DpdkChannelCounters: " + channel.peer() + " is not a DPDK channel (built without DPDK)");
}
struct DpdkRawPort::Impl {};
DpdkRawPort::DpdkRawPort(const DpdkAddress& address, bool, std::chrono::nanoseconds) { Unavailable(address); }
DpdkRawPort::~DpdkRawPort() = default;
bool DpdkRawPort::send(std::span<const uint8_t>) { return false; }
size_t DpdkRawPort::poll(std::span<uint8_t>) { return 0; }
}  // namespace test_hooks

}  // namespace ftvm::transport
