// What an operator uses to watch a VMM process (run, primary, secondary): its
// options (--control, --log-json, --event-file, --vm-name), its control endpoint
// (the control socket with a status answer composed from the parts that know
// something: the VM's disk and DR mirror, the primary, the secondary), and
// `ftvm status`, which asks it.
#pragma once

#include <boost/program_options.hpp>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "control/control.h"
#include "control/metrics.h"
#include "primary/protected_primary.h"
#include "secondary/protecting_secondary.h"

namespace ftvm::cli {

struct OperatorOptions {
  std::string control;     // control socket path ("" none)
  std::string metrics;     // HOST:PORT for Prometheus metrics and the dashboard over HTTP ("" none)
  std::string peer_metrics;        // the peer VMM's --metrics, which the dashboard polls too
  bool dashboard_actions = false;  // the dashboard's drill and switchover buttons act
  bool log_json = false;   // every log line a JSON object
  std::string event_file;  // failover, divergence, resync and migration events, as JSON lines
  std::string vm_name;     // the VM's name in logs and status ("" the guest's app)
  boost::program_options::options_description describe();
  // Sets up this process's logging (role and VM name on every line). Throws
  // ftvm::Error when the event file cannot be opened.
  void configure_logging(const std::string& role, const std::string& default_vm_name) const;
  std::string vm_or(const std::string& default_vm_name) const { return vm_name.empty() ? default_vm_name : vm_name; }
};

// The control socket of one VMM process, when --control asked for one, and its
// HTTP endpoint (metrics, dashboard), when --metrics did. Build it after what its
// handlers use (it stops serving first when destroyed), register the handlers,
// then start(). Every VMM answers status and failover_test (the drill: refused
// unless this VMM runs a protected VM); switchover is refused unless a command
// registers it. The dashboard's POSTs reach the same handlers.
class ControlEndpoint {
 public:
  using StatusPart = std::function<void(control::StatusReply&)>;
  // Throws ftvm::Error when --peer-metrics is malformed or --dashboard-actions
  // comes without --metrics.
  ControlEndpoint(const OperatorOptions& options, std::string role, std::string vm_name);
  ~ControlEndpoint();
  ControlEndpoint(const ControlEndpoint&) = delete;
  ControlEndpoint& operator=(const ControlEndpoint&) = delete;

  bool enabled() const { return server_ != nullptr || !metrics_address_.empty(); }
  // Before start(). A status answer is role and VM name, then every part in order.
  void add_status(StatusPart part) { status_parts_.push_back(std::move(part)); }
  void on(control::Request::BodyCase kind, control::Server::Handler handler);
  void start();
  // The status answer: role and VM name, then every part in order. The parts are
  // called under one lock (the control socket and the metrics server may ask at once).
  control::StatusReply status();

 private:
  control::Reply FailoverTest(control::Responder& out);

  std::string role_;
  std::string vm_name_;
  std::vector<StatusPart> status_parts_;
  std::mutex status_mu_;
  std::map<control::Request::BodyCase, control::Server::Handler> handlers_;
  std::unique_ptr<control::Server> server_;
  std::string metrics_address_;
  std::string peer_metrics_;
  bool dashboard_actions_ = false;
  std::string metrics_bound_;  // the bound HOST:PORT (under status_mu_)
  std::unique_ptr<control::MetricsServer> metrics_;  // last: stops serving first
};

// The answer to a drill or switchover that started: `message` in an ActionResult.
control::Reply ActionStarted(const std::string& message);

// The status parts of a primary and a secondary.
void FillPrimaryStatus(const primary::PrimaryReport& report, control::StatusReply& status);
void FillSecondaryStatus(const secondary::SecondaryStatus& secondary, control::StatusReply& status);

// The `q` quantile (0..1) of `samples`, 0 when there are none.
uint64_t Quantile(std::vector<uint64_t> samples, double q);

// `ftvm status --control PATH [--json]`.
int StatusMain(int argc, char** argv);

}  // namespace ftvm::cli
