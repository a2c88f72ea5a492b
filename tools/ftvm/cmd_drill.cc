// `ftvm drill`: pull the plug on a protected mail store, N times, and report what
// the clients saw (tools/ftvm/drill.h). Exit 0 when every round kept every
// acknowledged message exactly once with exactly one live VM, 1 otherwise.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>

#include <boost/program_options.hpp>

#include "common/error.h"
#include "tools/ftvm/commands.h"
#include "tools/ftvm/drill.h"
#include "tools/ftvm/vm_runner.h"

namespace ftvm::cli {
namespace po = boost::program_options;

namespace {

std::string SelfPath() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, size_t(n)) : "ftvm";
}

// SIGINT/SIGTERM: the drill stops after cleaning up the round under way (its
// namespaces, mounts and filter rules would outlive a process killed outright). A
// signal handler can only reach a flag of static storage; this is that flag.
std::atomic<bool> drill_interrupted{false};

void OnStopSignal(int) {
  drill_interrupted.store(true);
  // A second signal kills at once.
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
}

void JsonLine(std::ostream& js, const drill::RoundReport& r) {
  js << "{\"round\":" << r.round << ",\"fault\":\"" << drill::FaultName(r.fault) << "\",\"fault_at_s\":"
     << r.fault_at_s << ",\"stop_ms\":" << r.stop_ms << ",\"failover\":" << (r.failover ? "true" : "false")
     << ",\"recovery_ms\":" << r.recovery_ms << ",\"in_flight\":" << r.in_flight << ",\"requests\":" << r.requests
     << ",\"acked\":" << r.acked << ",\"lost\":" << r.lost << ",\"duplicates\":" << r.duplicates
     << ",\"unexpected\":" << r.unexpected << ",\"reprotect_ms\":" << r.reprotect_ms
     << ",\"recovery2_ms\":" << r.recovery2_ms << ",\"contents_match\":" << (r.contents_match ? "true" : "false")
     << ",\"one_live\":" << (r.one_live ? "true" : "false") << ",\"survivor\":\"" << r.survivor
     << "\",\"ok\":" << (r.ok() ? "true" : "false") << "}\n";
  js.flush();
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(q * double(v.size())))];
}

// "stop-primary 1200ms": the fault, and how long a stop lasted.
std::string FaultLabel(const drill::RoundReport& r) {
  std::string name(drill::FaultName(r.fault));
  if (r.stop_ms > 0) name += " " + std::to_string(int(r.stop_ms)) + "ms";
  return name;
}

// A chaos run's table: per fault type, how many, failovers, recovery p50/p99,
// acknowledged messages lost, duplicates, and split-brain (rounds that ended with
// other than exactly one live VM), then the totals.
void PrintByFault(const drill::DrillReport& report) {
  struct Row {
    int faults = 0, failovers = 0, split = 0, failed = 0;
    uint64_t lost = 0, dups = 0;
    std::vector<double> recovery;
  };
  std::map<std::string, Row> rows;
  for (const drill::RoundReport& r : report.rounds) {
    for (Row* row : {&rows[FaultLabel(r)], &rows["all"]}) {
      ++row->faults;
      row->failovers += r.failover ? 1 : 0;
      row->split += r.one_live ? 0 : 1;
      row->failed += r.ok() ? 0 : 1;
      row->lost += r.lost;
      row->dups += r.duplicates;
      if (r.recovery_ms >= 0) row->recovery.push_back(r.recovery_ms);
    }
  }
  std::printf("%-22s %6s %9s %10s %10s %5s %5s %11s %6s\n", "fault", "count", "failover", "recov_p50", "recov_p99",
              "lost", "dups", "split_brain", "failed");
  auto print = [](const std::string& name, const Row& row) {
    std::printf("%-22s %6d %9d %10.1f %10.1f %5llu %5llu %11d %6d\n", name.c_str(), row.faults, row.failovers,
                Percentile(row.recovery, 0.5), Percentile(row.recovery, 0.99),
                static_cast<unsigned long long>(row.lost), static_cast<unsigned long long>(row.dups), row.split,
                row.failed);
  };
  for (const auto& [name, row] : rows)
    if (name != "all") print(name, row);
  print("all", rows["all"]);
}

}  // namespace

int DrillMain(int argc, char** argv) {
  drill::DrillOptions o;
  o.ftvm = SelfPath();
  std::string fault = "kill-primary", json;
  o.workdir = "/tmp/ftvm-drill-" + std::to_string(getpid());
  po::options_description desc("ftvm drill options");
  desc.add_options()
      ("help,h", "show this help")
      ("guest", po::value(&o.guest)->required(), "guest-kit image (build/guest/ftvm-guest.elf)")
      ("rounds", po::value(&o.rounds)->default_value(o.rounds), "how many times to pull the plug")
      ("fault", po::value(&fault)->default_value(fault),
       "kill-primary, kill-secondary, cut-link, stop-primary, stop-secondary (SIGSTOP for --short-stop-s or "
       "--long-stop-s, then SIGCONT), arbiter-away (the arbiter unreachable for --long-stop-s, the primary killed "
       "meanwhile), secondary-disk-full (host B's disk, on a small tmpfs, fills up), slow-link (--link-delay-ms "
       "added each way for --long-stop-s), lossy-link (--link-loss-percent of the logging link's packets dropped "
       "for --long-stop-s), corrupt-log (one bit of the log stream flipped in flight; the last three over tcp), "
       "migrate (a live move to host B under load), or random (chaos: each round draws one of the faults but "
       "migrate, each once per set, stops short and long)")
      ("short-stop-s", po::value(&o.short_stop_s)->default_value(o.short_stop_s),
       "a short stop (random): less than the failure timeout")
      ("long-stop-s", po::value(&o.long_stop_s)->default_value(o.long_stop_s),
       "a long stop (stop-primary, stop-secondary, random): more than the failure timeout; also how long "
       "slow-link and lossy-link last")
      ("link-delay-ms", po::value(&o.link_delay_ms)->default_value(o.link_delay_ms),
       "slow-link: delay added to the logging link, each way")
      ("link-loss-percent", po::value(&o.link_loss_percent)->default_value(o.link_loss_percent),
       "lossy-link: share of the logging link's packets dropped, each way")
      ("channel", po::value(&o.channel)->default_value(o.channel), "logging channel between the hosts: tcp (over the LAN), shm, dpdk (net_memif), dpdk-af_packet "
       "(net_af_packet on a link of its own between the hosts), dpdk-tap (net_tap on the hosts' bridges, over the LAN), "
       "or rdma+shm (the RDMA ring protocol over shared memory)")
      ("rate", po::value(&o.rate)->default_value(o.rate), "client requests per second")
      ("workers", po::value(&o.workers)->default_value(o.workers), "client workers")
      ("seed", po::value(&o.seed)->default_value(0), "random seed (0: from the clock; printed)")
      ("after-s", po::value(&o.after_s)->default_value(o.after_s), "seconds of load after the fault")
      ("primary-args", po::value(&o.extra_primary_args), "extra ftvm primary options, e.g. \"--failure-timeout-ms 200\"")
      ("workdir", po::value(&o.workdir), "scratch directory (disks, logs, consoles)")
      ("json", po::value(&json), "also write the rounds as JSON lines to FILE")
      ("keep", po::bool_switch(&o.keep), "keep the files of passing rounds too")
      ("postcopy", po::bool_switch(&o.postcopy), "with --fault migrate: ftvm migrate --postcopy")
      ("standby", po::bool_switch(&o.standby),
       "with --reprotect: host A's new secondary waits as a standby from the start and joins the survivor by itself")
      ("reprotect", po::bool_switch(&o.reprotect),
       "kill-primary: then host A rejoins as the survivor's new secondary, and the survivor is killed too");
  if (auto code = ParseCommandLine(argc, argv, desc, "drill",
                                   "usage: ftvm drill --guest IMAGE [--rounds N] [--fault F] [options]\n"))
    return *code;
  o.random_fault = fault == "random";
  if (!o.random_fault && !drill::ParseFault(fault, o.fault)) {
    std::cerr << "ftvm drill: --fault '" << fault
              << "' is not kill-primary, kill-secondary, cut-link, stop-primary, stop-secondary, arbiter-away, "
                 "secondary-disk-full, slow-link, lossy-link, corrupt-log, migrate or random\n";
    return kExitUsage;
  }
  if (o.random_fault && (o.reprotect || o.postcopy)) {
    std::cerr << "ftvm drill: --fault random takes neither --reprotect nor --postcopy\n";
    return kExitUsage;
  }
  if (o.channel != "tcp" && o.channel != "shm" && o.channel != "rdma+shm" && o.channel != "dpdk" &&
      o.channel != "dpdk-af_packet" && o.channel != "dpdk-tap") {
    std::cerr << "ftvm drill: --channel must be tcp, shm, dpdk, dpdk-af_packet, dpdk-tap or rdma+shm\n";
    return kExitUsage;
  }
  if (!o.random_fault && o.fault == drill::Fault::kCutPrimaryLink && !drill::ChannelGoesOverALink(o.channel)) {
    // Shared memory and net_memif join two processes of this machine, not two hosts
    // over a link: cutting host A's cables would leave the pair's channel up, and
    // the VM cut off from its clients with nobody to take it over.
    std::cerr << "ftvm drill: --fault cut-link needs a channel over a link that can be cut: tcp, dpdk-af_packet or dpdk-tap\n";
    return kExitUsage;
  }
  if (!o.random_fault && drill::IsLinkFault(o.fault) && o.channel != "tcp") {
    std::cerr << "ftvm drill: --fault " << fault << " acts on the tcp channel's connection: it needs --channel tcp\n";
    return kExitUsage;
  }
  if (o.link_delay_ms < 0 || o.link_delay_ms > 10000 || o.link_loss_percent < 0 || o.link_loss_percent > 100) {
    std::cerr << "ftvm drill: --link-delay-ms must be within 0..10000 and --link-loss-percent within 0..100\n";
    return kExitUsage;
  }
  if (o.rounds < 1 || o.workers < 1 || o.rate <= 0) {
    std::cerr << "ftvm drill: --rounds, --workers and --rate must be positive\n";
    return kExitUsage;
  }
  std::ofstream js;
  if (!json.empty()) {
    js.open(json);
    if (!js) {
      std::cerr << "ftvm drill: cannot write --json " << json << "\n";
      return kExitUsage;
    }
    o.on_round = [&js](const drill::RoundReport& r) { JsonLine(js, r); };
  }
  o.interrupted = &drill_interrupted;
  struct sigaction sa{};
  sa.sa_handler = OnStopSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  try {
    drill::DrillReport report = drill::RunDrill(o);
    if (drill_interrupted.load())
      std::printf("drill: interrupted after %zu of %d rounds (the last one cleaned up and counted failed)\n",
                  report.rounds.size(), o.rounds);
    std::printf("drill: %d rounds of %s over %s, seed %llu, %d workers at %.0f req/s\n", int(report.rounds.size()), fault.c_str(),
                o.channel.c_str(), static_cast<unsigned long long>(report.seed), o.workers, o.rate);
    std::printf("%5s %-22s %9s %12s %9s %9s %7s %5s %5s %6s %8s %s\n", "round", "fault", "fault_s", "recovery_ms", "in_flight",
                "requests", "acked", "lost", "dups", "match", "one_live", "result");
    std::vector<double> recovery;
    uint64_t lost = 0, dups = 0, failed = 0;
    for (const drill::RoundReport& r : report.rounds) {
      std::printf("%5d %-22s %9.2f %12.1f %9llu %9llu %7llu %5llu %5llu %6s %8s %s\n", r.round, FaultLabel(r).c_str(),
                  r.fault_at_s, r.recovery_ms,
                  static_cast<unsigned long long>(r.in_flight), static_cast<unsigned long long>(r.requests),
                  static_cast<unsigned long long>(r.acked), static_cast<unsigned long long>(r.lost),
                  static_cast<unsigned long long>(r.duplicates), r.contents_match ? "yes" : "NO",
                  r.one_live ? "yes" : "NO", r.ok() ? "ok" : r.problem.c_str());
      if (r.recovery_ms >= 0) recovery.push_back(r.recovery_ms);
      lost += r.lost;
      dups += r.duplicates;
      failed += r.ok() ? 0 : 1;
    }
    std::printf("summary: recovery p50 %.1f ms, p99 %.1f ms, max %.1f ms; acknowledged messages lost %llu; "
                "duplicates %llu; failed rounds %llu of %d\n",
                Percentile(recovery, 0.5), Percentile(recovery, 0.99), Percentile(recovery, 1.0),
                static_cast<unsigned long long>(lost), static_cast<unsigned long long>(dups),
                static_cast<unsigned long long>(failed), int(report.rounds.size()));
    if (o.reprotect) {
      std::vector<double> rp, r2;
      for (const drill::RoundReport& r : report.rounds) {
        if (r.reprotect_ms >= 0) rp.push_back(r.reprotect_ms);
        if (r.recovery2_ms >= 0) r2.push_back(r.recovery2_ms);
      }
      std::printf("re-protection: new secondary to protected p50 %.0f ms; second failover recovery p50 %.1f ms, "
                  "max %.1f ms\n",
                  Percentile(rp, 0.5), Percentile(r2, 0.5), Percentile(r2, 1.0));
    }
    if (o.random_fault) PrintByFault(report);
    if (failed > 0) std::printf("files of failed rounds are kept in %s\n", o.workdir.c_str());
    return failed == 0 ? 0 : 1;
  } catch (const Error& e) {
    std::cerr << "ftvm drill: " << e.what() << "\n";
    return kExitVmmError;
  }
}

}  // namespace ftvm::cli
