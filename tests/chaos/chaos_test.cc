// The chaos run: `ftvm drill --fault random` against a protected mail store under
// client load, one fault per round at a random moment: SIGKILL of the primary or the
// secondary, SIGSTOP of either for less and for more than the failure timeout (a
// stalled host that comes back), host A's cables cut, the primary killed while the
// arbiter is unreachable, host B's disk full, and over TCP the logging link slowed
// (50 ms each way), lossy (3% of its packets dropped, for real, by nftables rules)
// and one bit of the log flipped in flight. After each fault the drill
// checks the invariants: exactly one live VM (no split brain, and no process died
// that was not killed on purpose), every acknowledged message stored exactly once,
// and the mailboxes equal to the clients' ledger. Then it builds a fresh pair (the
// repair) for the next round.
//
// The seed is printed: `ftvm drill --fault random --seed S --rounds N` replays a run.
// A long run (1,000 faults) is `bench/chaos.sh`.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <string>

#include "tests/support/harness.h"

namespace ftvm::itest {
namespace {

using std::chrono::seconds;

void Chaos(const std::string& channel, int rounds) {
  const std::string json = ScratchPath("chaos.json"), workdir = ScratchPath("chaos");
  const uint64_t seed = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count()) | 1;
  std::printf("[          ] chaos over %s, seed %llu\n", channel.c_str(), static_cast<unsigned long long>(seed));
  ProcessResult r = RunProcess({FtvmBinary(), "drill", "--guest", GuestImage(), "--fault", "random", "--rounds",
                                std::to_string(rounds), "--channel", channel, "--after-s", "1", "--seed",
                                std::to_string(seed), "--json", json, "--workdir", workdir},
                               seconds(60 + 40 * rounds), "chaos");
  ASSERT_FALSE(r.timed_out) << r.out;
  std::printf("%s", r.out.c_str());
  EXPECT_EQ(r.exit_code, 0) << "seed " << seed << "\n" << r.out << r.err;
  const std::vector<DrillRound> got = ReadDrillRounds(json);
  ASSERT_EQ(got.size(), size_t(rounds)) << r.out;
  std::map<std::string, int> kinds;
  int failovers = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE("round " + std::to_string(i + 1) + " (" + got[i].fault + "), seed " + std::to_string(seed));
    EXPECT_TRUE(got[i].ok);
    EXPECT_TRUE(got[i].one_live) << "split brain, or a process died unasked";
    EXPECT_EQ(got[i].lost, 0);
    EXPECT_EQ(got[i].duplicates, 0);
    EXPECT_TRUE(got[i].contents_match);
    EXPECT_GT(got[i].acked, 0) << "the clients must have stored mail";
    ++kinds[got[i].fault + (got[i].stop_ms > 0 ? " " + std::to_string(long(got[i].stop_ms)) + "ms" : "")];
    failovers += got[i].failover ? 1 : 0;
  }
  // Every kind of fault came up (the drill deals them out once per set) and some
  // of them were failovers.
  EXPECT_EQ(kinds.size(), channel == "tcp" ? 12u : 8u) << r.out;
  EXPECT_GT(failovers, 0);
}

// 30 faults over TCP, the default channel (about 2 minutes here); FTVM_CHAOS_ROUNDS
// sets another number (scripts/test-asan.sh: 12 under the sanitizers), at least 12
// so that every kind of fault comes up.
TEST(Chaos, EveryKindOfFaultOverTcpLosesNothingAndNeverSplits) {
  const char* env = std::getenv("FTVM_CHAOS_ROUNDS");
  const int rounds = env != nullptr ? std::atoi(env) : 30;
  ASSERT_GE(rounds, 12) << "FTVM_CHAOS_ROUNDS=" << env << ": at least 12, one per kind of fault";
  Chaos("tcp", rounds);
}

}  // namespace
}  // namespace ftvm::itest
