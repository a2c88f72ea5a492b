// StreamSource (secondary/record_source.h), the replica's view of the live stream.
// The secondary's receiver appends each batch from the primary, then raises
// complete_below (no record will come below that position). A replica told "nothing
// more at or before this position" (kNotYet) runs on, so that promise must never
// cover a record already in the stream. StreamSource used to read complete_below
// after looking for records: a batch landing in between (a second record at the
// replica's position, and the promise past it) was promised but unseen, and the
// replica ran past it (a divergence seen once in CI, after a re-protection). The
// test lands such a batch at exactly that moment, through the source's test hook.
#include <gtest/gtest.h>

#include <memory>

#include "eventlog/format.h"
#include "eventlog/records.h"
#include "eventlog/stream.h"
#include "secondary/record_source.h"

namespace ftvm::secondary {
namespace {

using eventlog::ByteStream;
using eventlog::Record;
using eventlog::RecordType;

void AppendBatch(ByteStream& stream, uint64_t position, uint8_t vector, uint64_t complete_below) {
  std::vector<uint8_t> batch;
  eventlog::AppendRecord(batch, RecordType::kInterrupt, 0, position, eventlog::EncodeInterrupt(vector));
  stream.append(batch);
  stream.set_complete_below(complete_below);
}

TEST(StreamSource, ABatchLandingDuringALookIsSeenBeforeItsPromise) {
  auto stream = std::make_shared<ByteStream>();
  stream->append(eventlog::EncodeFileHeader(eventlog::LogHeader()));
  StreamSource source(stream, "test stream");
  // Position 7: one record, and nothing promised beyond it yet.
  AppendBatch(*stream, 7, 1, 7);
  Record rec;
  eventlog::ReadResult error;
  ASSERT_EQ(source.next(rec, 7, error), StreamSource::Next::kRecord);
  EXPECT_EQ(rec.position, 7u);
  // The replica looks for more at 7; the second record at 7 lands with the promise
  // that nothing more comes below 8, just after the look found nothing.
  bool landed = false;
  source.set_after_empty_look([&] {
    if (!landed) AppendBatch(*stream, 7, 2, 8);
    landed = true;
  });
  const StreamSource::Next n = source.next(rec, 7, error);
  EXPECT_TRUE(landed);
  ASSERT_EQ(n, StreamSource::Next::kRecord) << "the source promised position 7 complete with a record of it unread";
  EXPECT_EQ(rec.position, 7u);
  EXPECT_EQ(eventlog::DecodeInterrupt(rec.payload), 2u);
  // Now nothing more is at 7, and the promise says so.
  EXPECT_EQ(source.next(rec, 7, error), StreamSource::Next::kNotYet);
}

}  // namespace
}  // namespace ftvm::secondary
