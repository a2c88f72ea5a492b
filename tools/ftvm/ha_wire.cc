#include "tools/ftvm/ha_wire.h"

#include "common/error.h"

namespace ftvm::cli {

namespace {

std::string At(const std::string& file, const toml::node& n, const std::string& key) {
  return file + ":" + std::to_string(n.source().begin.line) + ": key '" + key + "': ";
}

}  // namespace

std::string EncodeHaHeartbeat(const std::string& host) { return std::string(kHaHeartbeatMagic) + host; }

bool DecodeHaHeartbeat(std::string_view datagram, std::string& host) {
  if (!datagram.starts_with(kHaHeartbeatMagic)) return false;
  host = datagram.substr(kHaHeartbeatMagic.size());
  return true;
}

std::string FormatHaLease(uint64_t wall_ns) { return std::to_string(wall_ns) + "\n"; }

bool ParseHaLease(std::string_view text, uint64_t& wall_ns) {
  if (text.ends_with('\n')) text.remove_suffix(1);
  // Digits only, as written: "-1" or a number past 2^64 read by strtoull would be a
  // lease from the far future, fresh for ever.
  if (text.empty() || text.size() > 20 || text.find_first_not_of("0123456789") != std::string_view::npos ||
      (text.size() > 1 && text[0] == '0'))
    return false;
  uint64_t v = 0;
  for (char c : text) {
    const uint64_t d = uint64_t(c - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  wall_ns = v;
  return true;
}

void DecodeHaTable(const toml::table& table, const std::string& file, HaVm& vm) {
  const toml::table* ha = table["ha"].as_table();
  if (ha == nullptr)
    throw Error(file + ": no [ha] table (home, replica, replica_port, priority, mem_mib): not a VM for ftvm ha-agent");
  auto str = [&](const char* key, std::string& out) {
    const toml::node* n = ha->get(key);
    if (n == nullptr) throw Error(file + ": key 'ha." + key + "' is missing");
    const auto* s = n->as_string();
    if (s == nullptr || s->get().empty()) throw Error(At(file, *n, std::string("ha.") + key) + "must be a host name (a string)");
    out = s->get();
  };
  auto integer = [&](const char* key, int64_t lo, int64_t hi, bool required, int64_t& out) {
    const toml::node* n = ha->get(key);
    if (n == nullptr) {
      if (required) throw Error(file + ": key 'ha." + key + "' is missing");
      return;
    }
    const auto* i = n->as_integer();
    if (i == nullptr || i->get() < lo || i->get() > hi)
      throw Error(At(file, *n, std::string("ha.") + key) + "must be an integer in " + std::to_string(lo) + ".." +
                  std::to_string(hi));
    out = i->get();
  };
  for (auto&& [k, n] : *ha) {
    const std::string key(k.str());
    if (key != "home" && key != "replica" && key != "replica_port" && key != "priority" && key != "mem_mib")
      throw Error(At(file, n, "ha." + key) + "unknown key (the [ha] keys are home, replica, replica_port, priority, mem_mib)");
  }
  std::string home, replica;
  str("home", home);
  str("replica", replica);
  if (replica == home)
    throw Error(At(file, *ha->get("replica"), "ha.replica") + "is the home host '" + home +
                "': the replica must be on another host");
  int64_t port = 0, priority = 0, mem = 0;
  integer("replica_port", 1, 65535, true, port);
  integer("priority", -1000000, 1000000, false, priority);
  // The run's `mem` (MiB) stands in for a missing ha.mem_mib, so it is held to the
  // same range: a negative one would otherwise be taken as 2^64 - N MiB.
  if (const toml::node* m = table.get("mem"); m != nullptr && m->as_integer() != nullptr && ha->get("mem_mib") == nullptr) {
    mem = m->as_integer()->get();
    if (mem < 1 || mem > (1 << 20))
      throw Error(At(file, *m, "mem") + "must be an integer in 1..1048576 (it stands in for the missing ha.mem_mib)");
  }
  integer("mem_mib", 1, 1 << 20, mem == 0, mem);
  vm.home = std::move(home);
  vm.replica = std::move(replica);
  vm.replica_port = unsigned(port);
  vm.priority = int(priority);
  vm.mem_mib = uint64_t(mem);
}

}  // namespace ftvm::cli
