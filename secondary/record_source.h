// Where a replayer's records come from: an event-log file, or the stream arriving
// from a live primary over the logging channel.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "eventlog/eventlog.pb.h"
#include "eventlog/reader.h"
#include "eventlog/stream.h"

namespace ftvm::secondary {

class RecordSource {
 public:
  enum class Next {
    kRecord,  // `out` holds the next record (valid until the next call)
    kNotYet,  // nothing buffered, and nothing more can come at or before `position`
    kEnd,     // the log has ended; `error` says how if not cleanly
  };
  virtual ~RecordSource() = default;
  virtual const eventlog::LogHeader& header() const = 0;
  // Blocks (a live stream) until one of the three is true.
  virtual Next next(eventlog::Record& out, uint64_t position, eventlog::ReadResult& error) = 0;
  // Log bytes consumed so far (what a secondary reports as replayed).
  virtual uint64_t offset() const = 0;
  virtual uint64_t last_position() const = 0;
  // Makes a blocked next() return kEnd soon (stop requests).
  virtual void interrupt() {}
};

// A whole file: never kNotYet.
class FileSource final : public RecordSource {
 public:
  explicit FileSource(eventlog::LogReader& reader) : reader_(reader) {}
  const eventlog::LogHeader& header() const override { return reader_.header(); }
  Next next(eventlog::Record& out, uint64_t, eventlog::ReadResult& error) override {
    error = reader_.next(out);
    return error.is_record() ? Next::kRecord : Next::kEnd;
  }
  uint64_t offset() const override { return reader_.offset(); }
  uint64_t last_position() const override { return reader_.last_position(); }

 private:
  eventlog::LogReader& reader_;
};

// The stream from a live primary: records as they arrive, and the primary's
// promise of how far its log is complete (ByteStream::complete_below).
class StreamSource final : public RecordSource {
 public:
  // The stream must already hold the file header. Throws ftvm::Error if it is bad.
  StreamSource(std::shared_ptr<eventlog::ByteStream> stream, std::string name)
      : stream_(stream), reader_(eventlog::LogReader::OpenStream(stream, std::move(name))) {}
  const eventlog::LogHeader& header() const override { return reader_.header(); }
  Next next(eventlog::Record& out, uint64_t position, eventlog::ReadResult& error) override {
    for (;;) {
      // Both read before the records: no byte can arrive unseen. The receiver
      // appends a batch before it raises complete_below, so a promise read first
      // covers only records the reader below can see; read after, it could cover
      // a batch that landed in between, and the replica would run past records
      // still in the stream (a divergence seen once in CI, after a re-protection).
      const bool finished = stream_->finished();
      const uint64_t complete_below = stream_->complete_below();
      error = reader_.next(out);
      if (error.is_record()) return Next::kRecord;
      if (error.is_error()) return Next::kEnd;
      if (after_empty_look_) after_empty_look_();
      if (finished) return Next::kEnd;
      if (complete_below > position) return Next::kNotYet;
      if (interrupted_) return Next::kEnd;
      if (on_caught_up_ && reader_.offset() != caught_up_at_) {
        caught_up_at_ = reader_.offset();
        on_caught_up_(caught_up_at_);
      }
      // Beyond what the reader saw: part of a record may be there already.
      stream_->wait(reader_.data_end(), position, std::chrono::milliseconds(100));
    }
  }
  uint64_t offset() const override { return reader_.offset(); }
  uint64_t last_position() const override { return reader_.last_position(); }
  // Called on the replaying thread when the replica has taken every record that
  // arrived (up to `offset`) and is about to wait for more: the moment to tell the
  // primary, whose strict output rule and lag figures wait on exactly that. Once
  // per offset.
  void set_on_caught_up(std::function<void(uint64_t offset)> f) { on_caught_up_ = std::move(f); }
  // Tests: runs when a look for records found none, before the source decides what
  // that means (the moment a batch from the receiver can land).
  void set_after_empty_look(std::function<void()> f) { after_empty_look_ = std::move(f); }
  void interrupt() override {
    interrupted_ = true;
    stream_->interrupt();
  }

 private:
  std::shared_ptr<eventlog::ByteStream> stream_;
  eventlog::LogReader reader_;
  std::atomic<bool> interrupted_{false};
  std::function<void()> after_empty_look_;
  std::function<void(uint64_t)> on_caught_up_;
  uint64_t caught_up_at_ = 0;
};

}  // namespace ftvm::secondary
