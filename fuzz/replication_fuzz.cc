// Fuzz target for what a secondary decodes from its primary, and the primary from
// its secondary, on the replication protocol (primary/protocol.h): the Hello and
// HelloReply protobufs, the event-log header inside the Hello, and the binary
// LogData, Ack, Heartbeat and Handover messages.
//
// Input: messages back to back, each a type byte, a u16 little-endian length and the
// payload. The first Hello opens the log stream the way ProtectingSecondary::connect
// does (its log_header into a ByteStream, read by LogReader::OpenStream); every
// LogData after it is appended when its offset is the stream's size, and the reader
// reads the records that arrived, as the replayer would.
// Invariants: every binary decoder accepts exactly its size and re-encodes to the
// bytes it read; a protobuf that parses re-serializes to bytes that parse to the
// same message; records read lie inside the stream; the reader ends cleanly or
// with an error naming the offset where it stopped.
#include <memory>

#include "common/error.h"
#include "eventlog/reader.h"
#include "eventlog/records.h"
#include "eventlog/stream.h"
#include "fuzz/harness.h"
#include "primary/protocol.h"

namespace {

using namespace ftvm;
using fuzz::Require;

template <size_t N>
bool SameBytes(const std::array<uint8_t, N>& encoded, std::span<const uint8_t> payload) {
  return payload.size() >= N && std::equal(encoded.begin(), encoded.end(), payload.begin());
}

struct Session {
  std::shared_ptr<eventlog::ByteStream> stream;
  std::unique_ptr<eventlog::LogReader> reader;
};

void OnHello(std::span<const uint8_t> payload, Session& s) {
  replication::Hello hello;
  if (!fuzz::ParseProto(payload, hello) || s.reader) return;
  auto stream = std::make_shared<eventlog::ByteStream>();
  stream->append({reinterpret_cast<const uint8_t*>(hello.log_header().data()), hello.log_header().size()});
  try {
    s.reader = std::make_unique<eventlog::LogReader>(eventlog::LogReader::OpenStream(stream, "fuzz"));
    s.stream = stream;
    Require(s.reader->first_record_offset() <= hello.log_header().size(), "the header lies inside the hello");
  } catch (const Error&) {
    // A header the secondary refuses ("cannot replicate this VM here").
  }
}

void ReadArrived(Session& s) {
  eventlog::Record rec;
  for (;;) {
    const eventlog::ReadResult res = s.reader->next(rec);
    if (!res.is_record()) {
      Require(res.is_end() == res.message.empty(), "errors have a message, the end has none");
      if (res.is_error()) s.stream->finish(res.message);
      return;
    }
    Require(rec.offset + rec.stored_bytes <= s.stream->size(), "a record lies inside the stream");
    uint64_t sum = 0;  // touches every payload byte, so ASan sees a bad span
    for (uint8_t b : rec.payload) sum += b;
    (void)sum;
  }
}

void OnLogData(std::span<const uint8_t> payload, Session& s) {
  const auto h = replication::DecodeLogDataHeader(payload);
  Require(h.has_value() == (payload.size() >= replication::kLogDataHeaderBytes), "LogData needs its header");
  if (!h) return;
  Require(SameBytes(replication::EncodeLogDataHeader(*h), payload), "LogData header round trip");
  if (!s.reader || s.stream->finished() || h->offset != s.stream->size()) return;  // the secondary stops there
  s.stream->append(payload.subspan(replication::kLogDataHeaderBytes));
  s.stream->set_complete_below(h->complete_below);
  ReadArrived(s);
}

void Run(std::span<const uint8_t> input) {
  Session session;
  size_t off = 0;
  while (off + 3 <= input.size()) {
    const uint8_t type = input[off];
    const size_t len = std::min<size_t>(input[off + 1] | size_t{input[off + 2]} << 8, input.size() - off - 3);
    const std::span<const uint8_t> payload = input.subspan(off + 3, len);
    off += 3 + len;
    switch (type) {
      case replication::kHello: OnHello(payload, session); break;
      case replication::kHelloReply: {
        replication::HelloReply reply;
        fuzz::ParseProto(payload, reply);
        break;
      }
      case replication::kLogData: OnLogData(payload, session); break;
      case replication::kAck: {
        const auto a = replication::DecodeAck(payload);
        Require(a.has_value() == (payload.size() == replication::kAckBytes), "an Ack is 24 bytes");
        if (a) Require(SameBytes(replication::EncodeAck(*a), payload), "Ack round trip");
        break;
      }
      case replication::kHeartbeat: {
        const auto p = replication::DecodeHeartbeat(payload);
        Require(p.has_value() == (payload.size() == 8), "a Heartbeat is 8 bytes");
        if (p) Require(SameBytes(replication::EncodeHeartbeat(*p), payload), "Heartbeat round trip");
        break;
      }
      case replication::kHandover: {
        const auto h = replication::DecodeHandover(payload);
        Require(h.has_value() == (payload.size() == 16), "a Handover is 16 bytes");
        if (h) Require(SameBytes(replication::EncodeHandover(*h), payload), "Handover round trip");
        break;
      }
      default: break;
    }
  }
}

void AppendMessage(std::vector<uint8_t>& out, uint8_t type, std::span<const uint8_t> payload) {
  out.push_back(type);
  fuzz::AppendLe(out, payload.size(), 2);
  out.insert(out.end(), payload.begin(), payload.end());
}

std::span<const uint8_t> Bytes(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

std::vector<uint8_t> Seed(std::minstd_rand& rng) {
  std::vector<uint8_t> out;
  eventlog::LogHeader header;
  header.mutable_vm()->set_app("fuzz");
  header.mutable_vm()->set_mem_mib(rng() % 512);
  const std::vector<uint8_t> header_bytes = eventlog::EncodeFileHeader(header);
  replication::Hello hello;
  hello.set_protocol_version(replication::kProtocolVersion);
  hello.set_ftvm_version("0.1.0");
  hello.set_log_header(header_bytes.data(), header_bytes.size());
  hello.set_generation(rng() % 4);
  hello.set_primary_name("a");
  hello.set_snapshot(rng() % 2);
  AppendMessage(out, replication::kHello, Bytes(hello.SerializeAsString()));
  replication::HelloReply reply;
  reply.set_protocol_version(replication::kProtocolVersion);
  reply.set_accepted(true);
  reply.set_secondary_name("b");
  AppendMessage(out, replication::kHelloReply, Bytes(reply.SerializeAsString()));
  uint64_t offset = header_bytes.size();
  uint64_t position = 0;
  for (int n = int(rng() % 4); n >= 0; --n) {
    std::vector<uint8_t> records;
    for (int r = int(rng() % 4); r >= 0; --r) {
      position += rng() % 3;
      const auto clock = eventlog::EncodeClockRead(rng());
      eventlog::AppendRecord(records, eventlog::RecordType::kClockRead, 0, position, clock);
    }
    const auto h = replication::EncodeLogDataHeader({offset, position});
    std::vector<uint8_t> payload(h.begin(), h.end());
    payload.insert(payload.end(), records.begin(), records.end());
    AppendMessage(out, replication::kLogData, payload);
    offset += records.size();
    const auto ack = replication::EncodeAck({offset, offset, position});
    AppendMessage(out, replication::kAck, ack);
    const auto beat = replication::EncodeHeartbeat(position);
    AppendMessage(out, replication::kHeartbeat, beat);
  }
  const auto handover = replication::EncodeHandover({position, rng()});
  AppendMessage(out, replication::kHandover, handover);
  return out;
}

}  // namespace

const ftvm::fuzz::Target ftvm::fuzz::kTarget = {"replication", Run, Seed, nullptr};
