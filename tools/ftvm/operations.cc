#include "tools/ftvm/operations.h"

#include <google/protobuf/descriptor.h>

#include <algorithm>
#include <cstdio>
#include <iostream>

#include "common/error.h"
#include "common/log.h"
#include "tools/ftvm/commands.h"
#include "tools/ftvm/vm_runner.h"

namespace ftvm::cli {
namespace po = boost::program_options;

po::options_description OperatorOptions::describe() {
  po::options_description d("operating it");
  d.add_options()
      ("control", po::value(&control), "control socket for this VMM (ftvm status --control PATH, ftvm move-disk)")
      ("metrics", po::value(&metrics),
       "serve Prometheus metrics at http://HOST:PORT/metrics and the dashboard at http://HOST:PORT/ (PORT 0: any "
       "free port)")
      ("peer-metrics", po::value(&peer_metrics),
       "the peer VMM's --metrics HOST:PORT: the dashboard shows both sides of the pair")
      ("dashboard-actions", po::bool_switch(&dashboard_actions),
       "let the dashboard's buttons act (POST /api/drill, /api/migrate); off, they are refused, since the metrics "
       "port may be reachable by others")
      ("log-json", po::bool_switch(&log_json), "write every log line as a JSON object (with the VM's name and role)")
      ("event-file", po::value(&event_file),
       "append failover, divergence, resync and migration events to FILE, one JSON object per line")
      ("vm-name", po::value(&vm_name), "the VM's name in logs, events and status (default: the guest's app)");
  return d;
}

void OperatorOptions::configure_logging(const std::string& role, const std::string& default_vm_name) const {
  log::Settings s;
  s.json = log_json;
  s.vm = vm_or(default_vm_name);
  s.role = role;
  s.event_file = event_file;
  log::configure(s);
}

ControlEndpoint::ControlEndpoint(const OperatorOptions& options, std::string role, std::string vm_name)
    : role_(std::move(role)), vm_name_(std::move(vm_name)), metrics_address_(options.metrics),
      peer_metrics_(options.peer_metrics), dashboard_actions_(options.dashboard_actions) {
  if (!peer_metrics_.empty())
    if (std::string bad = control::CheckHttpAddress(peer_metrics_); !bad.empty()) throw Error("--peer-metrics " + bad);
  if (dashboard_actions_ && metrics_address_.empty())
    throw Error("--dashboard-actions needs --metrics HOST:PORT (the dashboard's endpoint)");
  if (!options.control.empty()) server_ = std::make_unique<control::Server>(options.control);
  on(control::Request::kStatus, [this](const control::Request&, control::Responder&) {
    control::Reply reply;
    *reply.mutable_status() = status();
    return reply;
  });
  on(control::Request::kFailoverTest,
     [this](const control::Request&, control::Responder& out) { return FailoverTest(out); });
  on(control::Request::kSwitchover, [this](const control::Request&, control::Responder&) -> control::Reply {
    throw Error("a switchover is not supported by this '" + role_ +
                "' VMM: only an ftvm primary whose VM a secondary protects hands it over (ftvm switchover "
                "--control ITS-SOCKET)");
  });
}

control::Reply ControlEndpoint::FailoverTest(control::Responder& out) {
  const control::StatusReply s = status();
  if (!s.runs_vm() || s.state() != "protected")
    throw Error("failover drill: this VMM (" + role_ + ", " + s.state() +
                ") does not run a protected VM; ask the one that runs it while a secondary protects it");
  log::event(log::Level::kError, "control.failover_drill",
             {{"host", s.host()}, {"peer", s.peer()}, {"detail", "this VMM ends now as if its host died"}});
  // After the answer went out: end at once, like a host that dies. No destructor
  // runs: nothing more is released, the channel just goes, and the secondary
  // finds its primary lost.
  out.then([] { std::_Exit(kExitFailoverDrill); });
  return ActionStarted("failover drill: " + s.host() + " ends now as if its host died; " + s.peer() +
                       " detects it and takes over");
}

control::Reply ActionStarted(const std::string& message) {
  control::Reply reply;
  reply.mutable_action()->set_message(message);
  return reply;
}

control::StatusReply ControlEndpoint::status() {
  std::lock_guard lock(status_mu_);
  control::StatusReply s;
  s.set_role(role_);
  s.set_vm(vm_name_);
  s.set_metrics(metrics_bound_);
  s.set_peer_metrics(peer_metrics_);
  s.set_dashboard_actions(dashboard_actions_);
  for (const StatusPart& part : status_parts_) part(s);
  return s;
}

ControlEndpoint::~ControlEndpoint() = default;

void ControlEndpoint::on(control::Request::BodyCase kind, control::Server::Handler handler) {
  handlers_[kind] = handler;
  if (server_) server_->on(kind, std::move(handler));
}

void ControlEndpoint::start() {
  if (!metrics_address_.empty()) {
    control::Server::Handler act;
    if (dashboard_actions_)
      act = [this](const control::Request& request, control::Responder& out) {
        return handlers_.at(request.body_case())(request, out);
      };
    metrics_ = std::make_unique<control::MetricsServer>(metrics_address_, [this] { return status(); }, std::move(act));
    std::lock_guard lock(status_mu_);
    metrics_bound_ = metrics_->address();
  }
  if (!server_) return;
  server_->start();
  log::info("control.listening", {{"path", server_->path()}});
}

uint64_t Quantile(std::vector<uint64_t> samples, double q) {
  if (samples.empty()) return 0;
  const size_t at = std::min(samples.size() - 1, size_t(q * double(samples.size())));
  std::nth_element(samples.begin(), samples.begin() + long(at), samples.end());
  return samples[at];
}

namespace {

std::string_view PrimaryState(const primary::PrimaryReport& r) {
  if (r.syncing) return "syncing";
  switch (r.protection) {
    case primary::Protection::kWaiting: return "unprotected";  // no secondary yet
    case primary::Protection::kProtected: return "protected";
    case primary::Protection::kUnprotected: return "unprotected";
    case primary::Protection::kStoppedForPeer: return "failed-over";
  }
  return "?";
}

std::string_view SecondaryState(const secondary::SecondaryStatus& st) {
  if (!st.replicating) return "syncing";
  switch (st.report.outcome) {
    case secondary::SecondaryOutcome::kRunning: return "protected";
    case secondary::SecondaryOutcome::kWentLive: return "live";
    case secondary::SecondaryOutcome::kStoppedForPeer: return "failed-over";
    case secondary::SecondaryOutcome::kPrimaryEnded: return "ended";
    case secondary::SecondaryOutcome::kDiverged: return "diverged";
    case secondary::SecondaryOutcome::kFailed: return "failed";
    case secondary::SecondaryOutcome::kVmLost: return "vm-lost";
    case secondary::SecondaryOutcome::kReleased: return "released";
  }
  return "?";
}

}  // namespace

void FillPrimaryStatus(const primary::PrimaryReport& r, control::StatusReply& s) {
  s.set_state(std::string(PrimaryState(r)));
  s.set_runs_vm(r.protection != primary::Protection::kStoppedForPeer);
  s.set_detail(r.event);
  s.set_peer(r.secondary);
  s.set_generation(r.generation);
  const primary::StreamerStats& log = r.streamer;
  s.set_log_appended(log.appended_offset);
  s.set_log_sent(log.sent_offset);
  s.set_log_received(log.received_offset);
  s.set_log_replayed(log.replayed_offset);
  s.set_lag_us(double(log.oldest_unreplayed_ns) / 1e3);
  s.set_lag_p50_us(double(Quantile(log.lag_ns, 0.5)) / 1e3);
  s.set_lag_p99_us(double(Quantile(log.lag_ns, 0.99)) / 1e3);
  s.set_log_bytes(log.bytes);
  if (log.streaming_ns != 0) s.set_log_bytes_per_s(double(log.bytes) / (double(log.streaming_ns) / 1e9));
  s.set_hold_p50_us(double(Quantile(r.gate.hold_ns, 0.5)) / 1e3);
  s.set_hold_p99_us(double(Quantile(r.gate.hold_ns, 0.99)) / 1e3);
  s.set_outputs_held(r.gate.frames_held);
  uint64_t sum_ns = 0;
  std::vector<uint64_t> counts(std::size(control::kHoldBucketBoundsUs) + 1, 0);
  for (uint64_t ns : r.gate.hold_ns) {
    sum_ns += ns;
    for (size_t i = 0; i < std::size(control::kHoldBucketBoundsUs); ++i)
      if (double(ns) <= control::kHoldBucketBoundsUs[i] * 1e3) ++counts[i];
    ++counts.back();
  }
  for (uint64_t c : counts) s.add_hold_buckets(c);
  s.set_hold_sum_us(double(sum_ns) / 1e3);
  s.set_checkpoints(r.recorder.checkpoints);
  s.set_verifications(r.recorder.verifications);
  // The primary's failover: it lost its secondary (and went on unprotected, or
  // stopped because the secondary took the VM).
  if (r.lost_at_ns != 0) s.set_last_failover(r.event);
}

void FillSecondaryStatus(const secondary::SecondaryStatus& st, control::StatusReply& s) {
  const secondary::SecondaryReport& r = st.report;
  s.set_state(std::string(SecondaryState(st)));
  s.set_runs_vm(r.outcome == secondary::SecondaryOutcome::kWentLive);
  s.set_detail(r.detail);
  s.set_peer(st.primary);
  s.set_generation(r.generation);
  s.set_log_received(st.received_offset);
  s.set_log_replayed(st.consumed_offset);
  s.set_replica_position(st.replica_position);
  s.set_checkpoints(r.replay.checkpoints);
  s.set_verifications(r.replay.verifications);
  s.set_last_divergence(r.last_divergence);
  if (r.outcome == secondary::SecondaryOutcome::kWentLive) {
    s.set_last_failover(r.detail);
    if (r.primary_last_heard_ns != 0) s.set_failover_downtime_ms(double(r.live_at_ns - r.primary_last_heard_ns) / 1e6);
    if (r.primary_lost_at_ns != 0) s.set_failover_takeover_ms(double(r.live_at_ns - r.primary_lost_at_ns) / 1e6);
  }
  if (st.protecting) {
    // This host runs the VM now and streams its log to a new secondary of its own:
    // the log and output figures are that pair's; the state stays "live" (it was
    // failed over to) unless a new secondary protects it again.
    control::StatusReply mine;
    FillPrimaryStatus(*st.protecting, mine);
    const std::string failover = s.last_failover();
    const double downtime = s.failover_downtime_ms(), takeover = s.failover_takeover_ms();
    const uint64_t generation = s.generation();
    s.clear_replica_position();  // the replay's, over; the log figures below are the new stream's
    s.MergeFrom(mine);
    if (st.protecting->protection != primary::Protection::kProtected && !st.protecting->syncing) s.set_state("live");
    s.set_last_failover(failover);
    s.set_failover_downtime_ms(downtime);
    s.set_failover_takeover_ms(takeover);
    s.set_generation(std::max(generation, s.generation()));
  }
}

namespace {

std::string FieldText(const google::protobuf::Message& m, const google::protobuf::FieldDescriptor* f) {
  const google::protobuf::Reflection* r = m.GetReflection();
  char buf[64];
  switch (f->cpp_type()) {
    case google::protobuf::FieldDescriptor::CPPTYPE_STRING: return r->GetString(m, f);
    case google::protobuf::FieldDescriptor::CPPTYPE_BOOL: return r->GetBool(m, f) ? "yes" : "no";
    case google::protobuf::FieldDescriptor::CPPTYPE_UINT64: return std::to_string(r->GetUInt64(m, f));
    case google::protobuf::FieldDescriptor::CPPTYPE_DOUBLE:
      std::snprintf(buf, sizeof buf, "%.1f", r->GetDouble(m, f));
      return buf;
    default: return "?";
  }
}

}  // namespace

int StatusMain(int argc, char** argv) {
  std::string path;
  bool json = false;
  po::options_description desc("ftvm status options");
  desc.add_options()
      ("help,h", "show this help")
      ("control", po::value(&path)->required(), "the VMM's control socket (its --control PATH)")
      ("json", po::bool_switch(&json), "print the status as one JSON object (every field, protobuf's JSON names)");
  if (auto code = ParseCommandLine(argc, argv, desc, "status", "usage: ftvm status --control PATH [--json]\n"))
    return *code;
  try {
    control::Request req;
    req.mutable_status();
    control::Reply reply = control::Call(path, req, nullptr);
    if (!reply.error().empty()) throw Error(reply.error());
    const control::StatusReply& s = reply.status();
    if (json) {
      std::cout << control::StatusJson(s) << "\n";
      return 0;
    }
    // A table of what is set: the role and state always, the rest when it says
    // something (a VM without a disk has no disk row).
    const google::protobuf::Descriptor* d = s.GetDescriptor();
    const google::protobuf::Reflection* r = s.GetReflection();
    for (int i = 0; i < d->field_count(); ++i) {
      const google::protobuf::FieldDescriptor* f = d->field(i);
      // The hold-time histogram is for metrics (its p50/p99 are rows already).
      if (f->is_repeated()) continue;
      const bool always = f->name() == "role" || f->name() == "state";
      if (!always && !r->HasField(s, f)) continue;
      std::printf("%-22s %s\n", f->name().c_str(), FieldText(s, f).c_str());
    }
    return 0;
  } catch (const Error& e) {
    std::cerr << "ftvm status: " << e.what() << "\n";
    return 1;  // no answer (no VMM there, or it refused)
  }
}

namespace {

// `ftvm failover-test` and `ftvm switchover`: one request on the control socket.
int ActionMain(int argc, char** argv, const char* name, const char* what, bool drill) {
  std::string path;
  po::options_description desc(std::string("ftvm ") + name + " options");
  desc.add_options()
      ("help,h", "show this help")
      ("control", po::value(&path)->required(), "the control socket (--control PATH) of the VMM that runs the protected VM");
  if (auto code = ParseCommandLine(argc, argv, desc, name, std::string("usage: ftvm ") + name + " --control PATH\n" + what))
    return *code;
  try {
    control::Request req;
    if (drill)
      req.mutable_failover_test();
    else
      req.mutable_switchover();
    control::Reply reply = control::Call(path, req, [](const std::string& line) { std::cerr << line << "\n"; });
    if (!reply.error().empty()) throw Error(reply.error());
    std::cout << reply.action().message() << "\n";
    return 0;
  } catch (const Error& e) {
    std::cerr << "ftvm " << name << ": " << e.what() << "\n";
    return 1;
  }
}

}  // namespace

int FailoverTestMain(int argc, char** argv) {
  return ActionMain(argc, argv, "failover-test",
                    "A failover drill: the VMM that runs the protected VM ends at once, as if its host died; its "
                    "secondary detects the loss and takes over (exit 0 once the VMM accepted it).\n",
                    true);
}

int SwitchoverMain(int argc, char** argv) {
  return ActionMain(argc, argv, "switchover",
                    "A planned switchover: the primary pauses its VM, waits until the secondary has the whole log, "
                    "hands the VM over and stops; the secondary runs it at once (exit 0 once the primary started "
                    "it; it ends with exit 4).\n",
                    false);
}

}  // namespace ftvm::cli
