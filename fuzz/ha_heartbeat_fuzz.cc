// Fuzz target for what `ftvm ha-agent` (tools/ftvm/ha_agent.h) decodes from other
// hosts (tools/ftvm/ha_wire.h): UDP heartbeat datagrams from the network, and from
// the shared cluster directory the hosts' lease files, the arbiter's generation
// file names and contents (failover/arbiter.h), and the [ha] table of a VM's TOML
// file.
//
// Input: a selector byte, then the datagram, file or file name.
// Invariants: a heartbeat, lease or generation file name that decodes encodes back
// to exactly its bytes (a lease perhaps without its newline), and anything that
// does not decode leaves the output untouched; a generation's owner is the file's
// text without its line ending; an [ha] table that decodes has two different
// non-empty hosts, a port in 1..65535, a priority in ±1000000 and mem_mib in
// 1..1048576, all as the table says; one that does not throws ftvm::Error and
// leaves the VM untouched. (The TOML text itself is toml++'s: the target builds the
// table from its input, see BuildTable.)
#include <algorithm>

#include "common/error.h"
#include "failover/arbiter.h"
#include "fuzz/harness.h"
#include "tools/ftvm/ha_wire.h"

namespace {

using namespace ftvm::cli;
using ftvm::fuzz::Require;

enum Selector : uint8_t { kHeartbeat, kLease, kGenerationName, kGenerationOwner, kHaTable, kSelectors };

void CheckHeartbeat(std::string_view datagram) {
  std::string host = "untouched";
  if (!DecodeHaHeartbeat(datagram, host)) {
    Require(host == "untouched", "a datagram that is no heartbeat touches nothing");
    return;
  }
  Require(EncodeHaHeartbeat(host) == datagram, "a heartbeat re-encodes to its bytes");
}

void CheckLease(std::string_view text) {
  uint64_t wall = 0xbeef;
  if (!ParseHaLease(text, wall)) {
    Require(wall == 0xbeef, "a damaged lease touches nothing");
    return;
  }
  const std::string again = FormatHaLease(wall);
  Require(again == text || again == std::string(text) + "\n", "a lease re-encodes to its bytes");
}

void CheckGenerationName(std::string_view name) {
  uint64_t generation = 0xbeef;
  if (!ftvm::failover::ParseGenerationFileName(name, generation)) {
    Require(generation == 0xbeef, "another file touches nothing");
    return;
  }
  Require(ftvm::failover::GenerationFileName(generation) == name, "a generation's file name is its name again");
}

void CheckGenerationOwner(std::string_view text) {
  const std::string owner = ftvm::failover::GenerationOwner(text);
  std::string_view want = text;
  while (!want.empty() && (want.back() == '\n' || want.back() == '\r')) want.remove_suffix(1);
  Require(want.empty() ? owner == "(being written)" : owner == want, "the owner is the text without its line ending");
}

// The VM file's table, built from `bytes` (the TOML text is toml++'s to parse, and
// fuzzing it finds toml++ 3.3.0's own bugs, e.g. marzer/tomlplusplus#295): entries
// of a key byte, a type byte and a value (a length byte and bytes, or 8 bytes).
toml::table BuildTable(std::span<const uint8_t> bytes) {
  static const char* const kKeys[] = {"home", "replica", "replica_port", "priority", "mem_mib", "color"};
  toml::table table, ha;
  bool has_ha = true;
  size_t at = 0;
  auto take = [&](size_t n) {
    const size_t k = std::min(n, bytes.size() - at);
    const std::span<const uint8_t> s = bytes.subspan(at, k);
    at += k;
    return s;
  };
  while (at + 2 <= bytes.size()) {
    const uint8_t key = bytes[at], type = bytes[at + 1];
    at += 2;
    toml::table& where = key & 0x80 ? table : ha;  // the top level: `mem`, or [ha] itself
    const std::string name = key & 0x80 ? (key & 1 ? "mem" : "ha") : kKeys[key % std::size(kKeys)];
    if (name == "ha") has_ha = false;  // `ha` as a plain value: no [ha] table
    switch (type % 5) {
      case 0: {
        const std::span<const uint8_t> n = take(1);
        const std::span<const uint8_t> s = take(n.empty() ? 0 : n[0] % 16);
        where.insert_or_assign(name, std::string(s.begin(), s.end()));
        break;
      }
      case 1: case 2: {
        uint64_t v = 0;
        const std::span<const uint8_t> s = take(8);
        for (size_t i = 0; i < s.size(); ++i) v |= uint64_t(s[i]) << (8 * i);
        // Small numbers more often than not: ranges have edges near 0.
        const int64_t i = type % 5 == 1 ? int64_t(v) : int64_t(v % 140000) - 70000;
        where.insert_or_assign(name, i);
        break;
      }
      case 3: where.insert_or_assign(name, double(type)); break;
      default: where.insert_or_assign(name, toml::array{1, 2}); break;
    }
  }
  if (has_ha) table.insert_or_assign("ha", std::move(ha));
  return table;
}

void CheckHaTable(std::span<const uint8_t> bytes) {
  const toml::table table = BuildTable(bytes);
  HaVm vm;
  vm.name = "untouched";
  vm.priority = 7;
  try {
    DecodeHaTable(table, "vm.toml", vm);
  } catch (const ftvm::Error&) {
    Require(vm.name == "untouched" && vm.home.empty() && vm.replica.empty() && vm.replica_port == 0 &&
                vm.priority == 7 && vm.mem_mib == 0,
            "a refused [ha] table touches nothing");
    return;
  }
  const toml::table* ha = table["ha"].as_table();
  Require(ha != nullptr, "a VM file without [ha] is refused");
  Require(!vm.home.empty() && !vm.replica.empty() && vm.home != vm.replica &&
              (*ha)["home"].value<std::string>() == vm.home && (*ha)["replica"].value<std::string>() == vm.replica,
          "two different hosts, as the table says");
  Require(vm.replica_port >= 1 && vm.replica_port <= 65535 && (*ha)["replica_port"].value<int64_t>() == int64_t(vm.replica_port),
          "the replica port, in range");
  Require(vm.priority >= -1000000 && vm.priority <= 1000000 && (*ha)["priority"].value_or<int64_t>(0) == vm.priority,
          "the priority, in range");
  Require(vm.mem_mib >= 1 && vm.mem_mib <= (1u << 20), "mem_mib in range");
  if (const toml::node* m = ha->get("mem_mib")) Require(m->value<int64_t>() == int64_t(vm.mem_mib), "mem_mib as the table says");
  Require(vm.name == "untouched" && vm.run_args.empty() && vm.disk.empty(), "only the [ha] fields change");
}

void Run(std::span<const uint8_t> input) {
  if (input.empty()) return;
  const std::string_view text(reinterpret_cast<const char*>(input.data()) + 1, input.size() - 1);
  switch (input[0] % kSelectors) {
    case kHeartbeat: CheckHeartbeat(text); break;
    case kLease: CheckLease(text); break;
    case kGenerationName: CheckGenerationName(text); break;
    case kGenerationOwner: CheckGenerationOwner(text); break;
    case kHaTable: CheckHaTable(input.subspan(1)); break;
  }
}

std::vector<uint8_t> Seed(std::minstd_rand& rng) {
  const auto selector = static_cast<uint8_t>(rng() % kSelectors);
  static const char* const kHosts[] = {"a", "b", "host-3", "h\xc3\xa9", ""};
  std::string out;
  switch (selector) {
    case kHeartbeat: out = EncodeHaHeartbeat(kHosts[rng() % std::size(kHosts)]); break;
    case kLease: out = FormatHaLease(rng() % 2 ? uint64_t(rng()) * 1000003 : UINT64_MAX - rng() % 3); break;
    case kGenerationName: out = ftvm::failover::GenerationFileName(rng() % 3 ? rng() % 20 : UINT64_MAX - rng() % 3); break;
    case kGenerationOwner: out = std::string(kHosts[rng() % std::size(kHosts)]) + (rng() % 2 ? "\n" : "\r\n"); break;
    default: {
      auto str = [&](uint8_t key, const std::string& v) {
        out += char(key);
        out += char(0);
        out += char(v.size());
        out += v;
      };
      auto integer = [&](uint8_t key, int64_t v) {
        out += char(key);
        out += char(1);
        for (int i = 0; i < 8; ++i) out += char(uint64_t(v) >> (8 * i));
      };
      if (rng() % 2) integer(0x81, 1 + rng() % 512);  // mem
      str(0, "a");
      str(1, rng() % 8 ? "b" : "a");
      integer(2, rng() % 8 ? 1 + rng() % 65535 : 70000);
      if (rng() % 2) integer(3, int(rng() % 200) - 100);
      if (rng() % 2) integer(4, rng() % 4 ? 1 + rng() % 4096 : 0);
      if (rng() % 8 == 0) str(5, "blue");
      break;
    }
  }
  std::vector<uint8_t> bytes(out.begin(), out.end());
  bytes.insert(bytes.begin(), selector);
  return bytes;
}

}  // namespace

const ftvm::fuzz::Target ftvm::fuzz::kTarget = {"ha_heartbeat", Run, Seed, nullptr};
