// `ftvm mail ...`: command-line front end for MailClient.
//
// Exit codes: 0 success, 1 a request failed (timeout, store error, NONE, load run with
// timeouts/errors), 2 usage error (bad subcommand, option, or value). Every failure
// is one line on stderr; no exception escapes MailMain.
#include <boost/program_options.hpp>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/error.h"
#include "tools/ftvm/mail_client.h"

namespace ftvm {
namespace {

namespace po = boost::program_options;
using mail::MailStatus;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

// Thrown for bad command lines only; mapped to exit code 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

constexpr const char* kSubcommands = "deliver, fetch, count, ping, load";

void PrintUsage(std::ostream& os) {
  os << "usage: ftvm mail <subcommand> --to IP[:PORT] [options]\n"
        "  deliver --id MSGID --mailbox BOX (--body TEXT | --body-file F)\n"
        "  fetch   --mailbox BOX [--index N]     prints the body to stdout\n"
        "  count   --mailbox BOX                 prints the number of messages\n"
        "  ping\n"
        "  load    [--rate R] [--duration S] [--mailboxes N] [--window W]\n"
        "          [--body-size B] [--mix D:F:C] [--seed N]\n"
        "common: --timeout-ms MS (default 500), --retries N (default 5), --help\n"
        "default port " << FTVM_MAIL_PORT << "; run `ftvm mail <subcommand> --help` for details\n";
}

// Values are parsed as signed/floating types and range-checked here, because
// boost's lexical_cast silently wraps "-1" into a huge unsigned number.
int64_t InRange(const po::variables_map& vm, const char* name, int64_t lo, int64_t hi) {
  int64_t v = vm[name].as<int64_t>();
  if (v < lo || v > hi)
    throw UsageError("--" + std::string(name) + " " + std::to_string(v) + " out of range [" +
                     std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return v;
}

// Returns option `name` after a protocol check; a violation is a usage error.
std::string Checked(const po::variables_map& vm, const char* name,
                    std::optional<std::string> (*validate)(std::string_view)) {
  std::string v = vm[name].as<std::string>();
  if (auto e = validate(v)) throw UsageError(*e);
  return v;
}

std::string ReadBodyFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("cannot read --body-file '" + path + "'");
  // Read one byte past the limit: enough to tell "too large" without slurping a
  // huge file into memory.
  std::string body(FTVM_MAIL_MAX_BODY + 1, '\0');
  in.read(body.data(), std::streamsize(body.size()));
  if (in.bad()) throw UsageError("error reading --body-file '" + path + "'");
  body.resize(size_t(in.gcount()));
  if (body.size() > FTVM_MAIL_MAX_BODY)
    throw UsageError("--body-file '" + path + "' is larger than FTVM_MAIL_MAX_BODY (" +
                     std::to_string(FTVM_MAIL_MAX_BODY) + " bytes)");
  return body;
}

// "D:F:C" relative weights of DELIVER, FETCH, COUNT.
void ParseMix(const std::string& s, mail::LoadOptions* o) {
  unsigned d = 0, f = 0, c = 0;
  int used = 0;
  if (std::sscanf(s.c_str(), "%u:%u:%u%n", &d, &f, &c, &used) != 3 ||
      size_t(used) != s.size() || s.find('-') != std::string::npos || d > 1000000 ||
      f > 1000000 || c > 1000000)
    throw UsageError("bad --mix '" + s + "' (want D:F:C, three non-negative weights)");
  o->deliver_weight = d;
  o->fetch_weight = f;
  o->count_weight = c;
}

std::string Where(const mail::Endpoint& ep) { return ep.host + ":" + std::to_string(ep.port); }

// Reports a non-success result on stderr and returns the exit code.
int Failed(const std::string& prefix, const mail::MailResult& r) {
  std::cerr << prefix << r.error << "\n";
  return kExitFailed;
}

void PrintReport(const mail::Endpoint& ep, const mail::LoadOptions& o,
                 const mail::LoadReport& r) {
  std::printf("load %s: rate %.0f/s, duration %.1f s, window %u, mailboxes %u, body %u B, "
              "mix %u:%u:%u\n",
              Where(ep).c_str(), o.rate, o.duration_s, o.window, o.mailboxes, o.body_size,
              o.deliver_weight, o.fetch_weight, o.count_weight);
  std::printf("  %-16s %12" PRIu64 "\n", "sent", r.sent);
  std::printf("  %-16s %12" PRIu64 "\n", "completed", r.completed);
  std::printf("  %-16s %12" PRIu64 "\n", "timeouts", r.timeouts);
  std::printf("  %-16s %12" PRIu64 "\n", "retries", r.retries);
  std::printf("  %-16s %12" PRIu64 "\n", "errors", r.errors);
  std::printf("  %-16s %12" PRIu64 "\n", "duplicates", r.duplicates);
  std::printf("  %-16s %12.3f\n", "elapsed_s", r.elapsed_s);
  std::printf("  %-16s %12.1f\n", "throughput_rps", r.throughput_rps);
  std::printf("  %-16s %12" PRIu64 "\n", "latency_p50_us", r.p50_us);
  std::printf("  %-16s %12" PRIu64 "\n", "latency_p90_us", r.p90_us);
  std::printf("  %-16s %12" PRIu64 "\n", "latency_p99_us", r.p99_us);
  std::printf("  %-16s %12" PRIu64 "\n", "latency_max_us", r.max_us);
  std::fflush(stdout);
}

int Run(int argc, char** argv, const std::string& sub) {
  const std::string prefix = "ftvm mail " + sub + ": ";

  po::options_description desc("ftvm mail " + sub + " options");
  desc.add_options()
      ("help,h", "show this help")
      ("to", po::value<std::string>()->required(), "store address IP[:PORT]")
      ("timeout-ms", po::value<int64_t>()->default_value(500), "per-attempt timeout")
      ("retries", po::value<int64_t>()->default_value(5), "re-sends after the first attempt");
  if (sub == "deliver") {
    desc.add_options()
        ("id", po::value<std::string>()->required(), "message id (dedup key)")
        ("mailbox", po::value<std::string>()->required(), "mailbox name")
        ("body", po::value<std::string>(), "message body text")
        ("body-file", po::value<std::string>(), "read the message body from a file");
  } else if (sub == "fetch") {
    desc.add_options()
        ("mailbox", po::value<std::string>()->required(), "mailbox name")
        ("index", po::value<int64_t>()->default_value(0), "message index, from 0");
  } else if (sub == "count") {
    desc.add_options()("mailbox", po::value<std::string>()->required(), "mailbox name");
  } else if (sub == "load") {
    desc.add_options()
        ("rate", po::value<double>()->default_value(1000), "requests per second")
        ("duration", po::value<double>()->default_value(10), "seconds of issuing")
        ("mailboxes", po::value<int64_t>()->default_value(8), "mailboxes to spread over")
        ("window", po::value<int64_t>()->default_value(64), "max outstanding requests")
        ("body-size", po::value<int64_t>()->default_value(256), "DELIVER body bytes")
        ("mix", po::value<std::string>()->default_value("50:30:20"),
         "DELIVER:FETCH:COUNT weights")
        ("seed", po::value<int64_t>()->default_value(0), "mix RNG seed (0 = random)");
  }

  po::variables_map vm;
  // Stray words are collected into a hidden option so the error can name them
  // (boost would otherwise ignore them or report them without the word).
  po::options_description all;
  all.add(desc).add_options()("stray-words", po::value<std::vector<std::string>>());
  po::positional_options_description stray;
  stray.add("stray-words", -1);
  // argv[1] (the subcommand) plays the parser's argv[0]. No abbreviations: a typo
  // should be an error, not a guess.
  po::store(po::command_line_parser(argc - 1, argv + 1)
                .options(all)
                .positional(stray)
                .style(po::command_line_style::default_style &
                       ~po::command_line_style::allow_guessing)
                .run(),
            vm);
  if (vm.count("help")) {
    std::cout << desc;
    return kExitOk;
  }
  if (vm.count("stray-words"))
    throw UsageError("unexpected argument '" +
                     vm["stray-words"].as<std::vector<std::string>>().front() + "'");
  po::notify(vm);  // throws for missing required options

  mail::Endpoint ep;
  try {
    ep = mail::ParseEndpoint(vm["to"].as<std::string>());
  } catch (const Error& e) {
    throw UsageError(std::string("--to: ") + e.what());
  }
  mail::ClientOptions copts;
  copts.timeout_ms = static_cast<uint32_t>(InRange(vm, "timeout-ms", 1, 3600000));
  copts.retries = static_cast<uint32_t>(InRange(vm, "retries", 0, 1000));

  if (sub == "deliver") {
    std::string id = Checked(vm, "id", mail::ValidateMsgid);
    std::string box = Checked(vm, "mailbox", mail::ValidateMailbox);
    bool has_body = vm.count("body") != 0, has_file = vm.count("body-file") != 0;
    if (has_body == has_file) throw UsageError("give exactly one of --body or --body-file");
    std::string body =
        has_body ? vm["body"].as<std::string>() : ReadBodyFile(vm["body-file"].as<std::string>());
    if (auto e = mail::ValidateBody(body)) throw UsageError(*e);

    mail::MailClient client(ep, copts);
    mail::MailResult r = client.deliver(id, box, body);
    if (r.status == MailStatus::kOk) {
      std::cout << "OK " << r.msgid << "\n";
    } else if (r.status == MailStatus::kDuplicate) {
      // Already stored (e.g. by an earlier run with the same id): still a success.
      std::cout << "DUP " << r.msgid << "\n";
    } else {
      return Failed(prefix, r);
    }
    return kExitOk;
  }

  if (sub == "fetch") {
    std::string box = Checked(vm, "mailbox", mail::ValidateMailbox);
    int64_t index = InRange(vm, "index", 0, INT64_MAX);
    mail::MailClient client(ep, copts);
    mail::MailResult r = client.fetch(box, uint64_t(index));
    if (r.status == MailStatus::kNone) {
      std::cerr << prefix << "no message at index " << index << " in mailbox '" << box
                << "'\n";
      return kExitFailed;
    }
    if (r.status != MailStatus::kOk) return Failed(prefix, r);
    std::cout.write(r.body.data(), std::streamsize(r.body.size()));  // exact bytes
    std::cout.flush();
    return kExitOk;
  }

  if (sub == "count") {
    std::string box = Checked(vm, "mailbox", mail::ValidateMailbox);
    mail::MailClient client(ep, copts);
    mail::MailResult r = client.count(box);
    if (r.status != MailStatus::kOk) return Failed(prefix, r);
    std::cout << r.count << "\n";
    return kExitOk;
  }

  if (sub == "ping") {
    mail::MailClient client(ep, copts);
    mail::MailResult r = client.ping();
    if (r.status != MailStatus::kOk) return Failed(prefix, r);
    std::cout << "PONG from " << Where(ep) << " in " << r.latency_us << " us ("
              << r.attempts << (r.attempts == 1 ? " attempt" : " attempts") << ")\n";
    return kExitOk;
  }

  // load
  mail::LoadOptions lo;
  lo.rate = vm["rate"].as<double>();
  lo.duration_s = vm["duration"].as<double>();
  lo.mailboxes = static_cast<uint32_t>(InRange(vm, "mailboxes", 1, 1000000));
  lo.window = static_cast<uint32_t>(InRange(vm, "window", 1, 65536));
  lo.body_size = static_cast<uint32_t>(InRange(vm, "body-size", 0, FTVM_MAIL_MAX_BODY));
  lo.seed = static_cast<uint64_t>(InRange(vm, "seed", 0, INT64_MAX));
  ParseMix(vm["mix"].as<std::string>(), &lo);
  if (auto e = mail::ValidateLoadOptions(lo)) throw UsageError(*e);
  mail::MailClient client(ep, copts);
  mail::LoadReport rep = client.run_load(lo);
  PrintReport(ep, lo, rep);
  if (rep.timeouts != 0 || rep.errors != 0) {
    std::cerr << prefix << rep.timeouts << " timeouts, " << rep.errors << " errors\n";
    return kExitFailed;
  }
  return kExitOk;
}

}  // namespace

int MailMain(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "ftvm mail: missing subcommand (one of " << kSubcommands << ")\n";
    return kExitUsage;
  }
  const std::string sub = argv[1];
  if (sub == "--help" || sub == "-h" || sub == "help") {
    PrintUsage(std::cout);
    return kExitOk;
  }
  if (sub != "deliver" && sub != "fetch" && sub != "count" && sub != "ping" && sub != "load") {
    std::cerr << "ftvm mail: unknown subcommand '" << sub << "' (one of " << kSubcommands
              << ")\n";
    return kExitUsage;
  }
  const std::string prefix = "ftvm mail " + sub + ": ";
  try {
    return Run(argc, argv, sub);
  } catch (const UsageError& e) {
    std::cerr << prefix << e.what() << "\n";
    return kExitUsage;
  } catch (const po::error& e) {
    std::cerr << prefix << e.what() << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << prefix << e.what() << "\n";
    return kExitFailed;
  } catch (...) {
    std::cerr << prefix << "unknown error\n";
    return kExitFailed;
  }
}

}  // namespace ftvm
