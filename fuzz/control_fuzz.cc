// Fuzz target for the control socket (control/control.h): the bytes a client sends
// a VMM (Requests), and those a VMM sends back (Replies), framed as on the socket.
//
// Input: the byte stream: length-prefixed messages back to back. Each is decoded as
// the server decodes a Request (and, the same bytes, as the client decodes a Reply).
// Invariants: a length above the limit is refused before anything is read; a body
// that parses re-encodes (EncodeMessage) to a frame that decodes to the same
// message; the version check accepts exactly kControlVersion and says why not
// otherwise.
#include "control/control.h"
#include "eventlog/format.h"
#include "fuzz/harness.h"

namespace {

using namespace ftvm::control;
using ftvm::fuzz::Require;

template <typename Proto>
void CheckFrameRoundTrip(const Proto& m) {
  const std::string frame = EncodeMessage(m);
  const auto* p = reinterpret_cast<const uint8_t*>(frame.data());
  uint32_t length = 0;
  Require(frame.size() >= kLengthBytes && DecodeLength(std::span<const uint8_t, kLengthBytes>(p, kLengthBytes), length).empty(),
          "an encoded message has a valid length");
  Require(length == frame.size() - kLengthBytes, "the length is the body's");
  Proto again;
  Require(DecodeBody({p + kLengthBytes, length}, again).empty(), "an encoded body decodes");
  Require(again.SerializeAsString() == m.SerializeAsString(), "a message survives encoding");
}

void Run(std::span<const uint8_t> input) {
  size_t off = 0;
  while (input.size() - off >= kLengthBytes) {
    uint32_t length = 0;
    const std::string problem =
        DecodeLength(std::span<const uint8_t, kLengthBytes>(input.data() + off, kLengthBytes), length);
    Require(problem.empty() == (length <= kMaxMessageBytes), "lengths above the limit are refused");
    if (!problem.empty()) return;  // the server answers the error and hangs up
    off += kLengthBytes;
    if (input.size() - off < length) return;  // the client hung up mid-message
    const std::span<const uint8_t> body = input.subspan(off, length);
    off += length;
    Request request;
    if (DecodeBody(body, request).empty()) {
      ftvm::fuzz::ParseProto(body, request);
      const std::string version_problem = CheckVersion(request);
      Require(version_problem.empty() == (request.version() == kControlVersion), "the version check");
      CheckFrameRoundTrip(request);
    }
    Reply reply;
    if (DecodeBody(body, reply).empty()) CheckFrameRoundTrip(reply);
  }
}

std::vector<uint8_t> Seed(std::minstd_rand& rng) {
  std::string out;
  for (int n = int(rng() % 3); n >= 0; --n) {
    if (rng() % 2) {
      Request r;
      r.set_version(rng() % 4 == 0 ? 2 : kControlVersion);
      if (rng() % 2) {
        r.mutable_move_disk()->set_new_path("/tmp/new.img");
        r.mutable_move_disk()->set_rate_mib(double(rng() % 100));
      } else {
        r.mutable_status();
      }
      out += EncodeMessage(r);
    } else {
      Reply r;
      r.set_version(kControlVersion);
      r.set_done(rng() % 2);
      r.mutable_progress()->set_line("copied 10 MiB");
      out += EncodeMessage(r);
    }
  }
  return {out.begin(), out.end()};
}

}  // namespace

const ftvm::fuzz::Target ftvm::fuzz::kTarget = {"control", Run, Seed, nullptr};
