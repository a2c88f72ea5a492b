// `ftvm log info FILE` summarizes an event log (header, records by type, bytes,
// whether it is complete); `ftvm log recover FILE` cuts a log whose recorder
// crashed back to its last whole record so it can be replayed that far.
//
// Exit codes: 0 fine, 1 the log is damaged (info) or needed cutting (recover:
// it then was cut), 2 bad command line, 125 not a readable log.
#include <cinttypes>
#include <cstdio>
#include <iostream>
#include <map>

#include "common/error.h"
#include "eventlog/reader.h"
#include "eventlog/records.h"
#include "tools/ftvm/commands.h"
#include "vmm/state_digest.h"

namespace ftvm::cli {
namespace {

int Info(const std::string& path) {
  eventlog::LogReader reader = eventlog::LogReader::OpenFile(path);
  const eventlog::LogHeader& h = reader.header();
  std::printf("log %s: format %u, ftvm %s\n", path.c_str(), h.format_version(), h.ftvm_version().c_str());
  std::printf("vm: app=%s mem=%" PRIu64 "MiB backend=%s disk=%s net=%s image=%s\n", h.vm().app().c_str(),
              h.vm().mem_mib(), h.vm().backend().c_str(), h.vm().has_disk() ? "yes" : "no",
              h.vm().has_net() ? "yes" : "no", h.vm().guest_image().c_str());
  std::printf("initial digest %s\n",
              vmm::DigestHex({reinterpret_cast<const uint8_t*>(h.initial_state_digest().data()),
                              h.initial_state_digest().size()})
                  .c_str());
  struct Count {
    uint64_t records = 0, bytes = 0;
  };
  std::map<std::string, Count> by_type;
  eventlog::Record rec;
  eventlog::ReadResult r;
  uint64_t last_position = 0;
  std::string final_digest;
  while ((r = reader.next(rec)).is_record()) {
    Count& c = by_type[eventlog::RecordTypeName(rec.type)];
    ++c.records;
    c.bytes += rec.stored_bytes;
    last_position = rec.position;
    if (rec.type == eventlog::RecordType::kEnd) final_digest = vmm::DigestHex(rec.payload);
  }
  for (const auto& [name, c] : by_type)
    std::printf("  %-16s %10" PRIu64 " records %12" PRIu64 " bytes\n", name.c_str(), c.records, c.bytes);
  std::printf("records %" PRIu64 ", last position %" PRIu64 ", %" PRIu64 " bytes of log\n", reader.records_read(),
              last_position, reader.offset());
  if (r.is_error()) {
    std::printf("damaged: %s\n", r.message.c_str());
    return 1;
  }
  if (final_digest.empty()) {
    std::printf("incomplete: no End record (the recorder did not finish)\n");
    return 1;
  }
  std::printf("complete: final digest %s\n", final_digest.c_str());
  return 0;
}

// One line per record in [from, to]: position, offset, type, size and a short
// decoding (values, vectors, frame sizes, digests).
int Dump(const std::string& path, uint64_t from, uint64_t to) {
  eventlog::LogReader reader = eventlog::LogReader::OpenFile(path);
  eventlog::Record rec;
  eventlog::ReadResult r;
  while ((r = reader.next(rec)).is_record()) {
    if (rec.position < from || rec.position > to) continue;
    std::string detail;
    switch (rec.type) {
      case eventlog::RecordType::kClockRead:
        detail = std::to_string(eventlog::DecodeClockRead(rec.payload).value_or(0));
        break;
      case eventlog::RecordType::kIrqWaitResult:
        detail = std::to_string(eventlog::DecodeIrqWaitResult(rec.payload).value_or(0));
        break;
      case eventlog::RecordType::kInterrupt:
        detail = "vector " + std::to_string(eventlog::DecodeInterrupt(rec.payload).value_or(0));
        break;
      case eventlog::RecordType::kDiskCompletion: {
        auto c = eventlog::DecodeDiskCompletion(rec.payload);
        if (c) detail = "queue " + std::to_string(c->queue) + " count " + std::to_string(c->count);
        break;
      }
      case eventlog::RecordType::kVerify: {
        auto v = eventlog::DecodeVerify(rec.payload);
        if (v) detail = vmm::DigestHex(v->digest).substr(0, 16) + " pages " + std::to_string(v->dirty_pages);
        break;
      }
      case eventlog::RecordType::kOutputCheck: {
        auto c = eventlog::DecodeOutputCheck(rec.payload);
        if (c) {
          char buf[48];
          std::snprintf(buf, sizeof buf, "%s %016" PRIx64, c->stream == 1 ? "frames" : c->stream == 2 ? "disk" : "?",
                        c->hash);
          detail = buf;
        }
        break;
      }
      case eventlog::RecordType::kEnd: detail = vmm::DigestHex(rec.payload).substr(0, 16); break;
      default: detail = std::to_string(rec.payload.size()) + " bytes"; break;
    }
    std::printf("%10" PRIu64 " @%-10" PRIu64 " %-14s %s\n", rec.position, rec.offset,
                eventlog::RecordTypeName(rec.type).c_str(), detail.c_str());
  }
  if (r.is_error()) {
    std::printf("damaged: %s\n", r.message.c_str());
    return 1;
  }
  return 0;
}

int Recover(const std::string& path) {
  eventlog::Recovery rec = eventlog::RecoverTruncatedTail(path, /*truncate_file=*/true);
  if (!rec.truncated) {
    std::printf("log %s is whole: %" PRIu64 " records, %" PRIu64 " bytes%s\n", path.c_str(), rec.records,
                rec.valid_bytes, rec.saw_end_record ? ", complete" : ", no End record");
    return 0;
  }
  std::printf("log %s cut to %" PRIu64 " bytes (%" PRIu64 " records, last position %" PRIu64 "), %" PRIu64
              " bytes dropped: %s\n",
              path.c_str(), rec.valid_bytes, rec.records, rec.last_position, rec.dropped_bytes(), rec.reason.c_str());
  return 1;
}

}  // namespace

int LogMain(int argc, char** argv) {
  const std::string usage =
      "usage: ftvm log info FILE | ftvm log dump FILE [FROM_POSITION [TO_POSITION]] | ftvm log recover FILE\n";
  if (argc == 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    std::cout << usage;
    return 0;
  }
  if (argc >= 3 && std::string(argv[1]) == "dump" && argc <= 5) {
    try {
      uint64_t from = argc > 3 ? std::stoull(argv[3]) : 0;
      uint64_t to = argc > 4 ? std::stoull(argv[4]) : UINT64_MAX;
      return Dump(argv[2], from, to);
    } catch (const Error& e) {
      std::cerr << "ftvm log dump: " << e.what() << "\n";
      return kExitVmmError;
    } catch (const std::logic_error&) {
      std::cerr << "ftvm log dump: positions must be numbers\n" << usage;
      return kExitUsage;
    }
  }
  if (argc != 3) {
    std::cerr << "ftvm log: expected a subcommand and a file\n" << usage;
    return kExitUsage;
  }
  const std::string sub = argv[1];
  try {
    if (sub == "info") return Info(argv[2]);
    if (sub == "recover") return Recover(argv[2]);
  } catch (const Error& e) {
    std::cerr << "ftvm log " << sub << ": " << e.what() << "\n";
    return kExitVmmError;
  }
  std::cerr << "ftvm log: unknown subcommand '" << sub << "'\n" << usage;
  return kExitUsage;
}

}  // namespace ftvm::cli
