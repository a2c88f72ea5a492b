// Prometheus metrics of one VMM process: GET /metrics over HTTP (text format
// 0.0.4), rendered from the same StatusReply that `ftvm status` shows, so the two
// never disagree. The HTTP side is Boost.Beast.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "control/control.pb.h"

namespace ftvm::control {

// Upper bounds (microseconds) of the output-hold histogram's buckets; StatusReply's
// hold_buckets holds the cumulative count at each, then the total.
inline constexpr double kHoldBucketBoundsUs[] = {10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000};

// The exposition text of `s` (gauges, counters, and histograms of the output
// hold time and of the failover downtime).
std::string RenderPrometheus(const StatusReply& s);

class MetricsServer {
 public:
  // Listens on "HOST:PORT" (PORT 0: any free port; see address()) and answers
  // GET /metrics with render()'s text on a thread of its own. Throws ftvm::Error
  // when the address is malformed or cannot be bound.
  MetricsServer(const std::string& address, std::function<std::string()> render);
  ~MetricsServer();  // stops serving (an answer in progress is finished first)
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  std::string address() const;  // the bound HOST:PORT

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ftvm::control
