// The mail store's durable log: an append-only journal on a block device.
//
// Sector 0 holds a superblock (magic, version, journal id). Records follow from
// sector 1, each starting on a sector boundary: a 128-byte header {magic, body
// length, sequence number, journal id, msgid, mailbox, crc32} and the body, padded
// to whole sectors. A record is valid only if its magic, journal id and the next
// expected sequence number match and its CRC (header with crc=0, then body)
// checks; recovery stops at the first record that is not valid (a torn or never
// written tail), and appends continue from there.
//
// The journal id is random per format, so leftovers of an older journal (or a
// message body that happens to look like a record) are not mistaken for records.
#ifndef FTVM_GUEST_APPS_MAIL_JOURNAL_H_
#define FTVM_GUEST_APPS_MAIL_JOURNAL_H_

#include <stddef.h>
#include <stdint.h>

#include "guest/apps/mailstore_proto.h"
#include "guest/lib/str.h"

namespace ftvm::guest {

constexpr uint32_t kSectorBytes = 512;

// What the journal needs from a disk. Counts are in 512-byte sectors.
class BlockStore {
 public:
  virtual uint64_t capacity_sectors() const = 0;
  virtual bool read(uint64_t sector, void* buf, uint32_t count) = 0;
  // Writes, then flushes, as one batch (one device notification). True only
  // once both completed successfully.
  virtual bool write_flush(uint64_t sector, const void* buf, uint32_t count) = 0;

 protected:
  ~BlockStore() = default;
};

constexpr uint64_t kJournalMagic = 0x314e524a4d565446ull;  // "FTVMJRN1"
constexpr uint32_t kJournalVersion = 1;
constexpr uint32_t kRecordMagic = 0x5243544dul;             // "MTCR"
constexpr uint32_t kRecordHeaderBytes = 128;
constexpr uint32_t kMaxRecordSectors =
    (kRecordHeaderBytes + FTVM_MAIL_MAX_BODY + kSectorBytes - 1) / kSectorBytes;

struct JournalSuperblock {
  uint64_t magic;
  uint32_t version;
  uint32_t record_header_bytes;
  uint64_t journal_id;
  uint64_t first_record_sector;
  uint32_t crc32;  // of the fields above, with this one 0
  uint32_t reserved;
};

struct JournalRecordHeader {
  uint32_t magic;
  uint32_t body_len;
  uint64_t seq;
  uint64_t journal_id;
  uint8_t msgid_len;
  uint8_t mailbox_len;
  uint16_t reserved;
  uint32_t crc32;
  char msgid[FTVM_MAIL_MAX_MSGID];
  char mailbox[FTVM_MAIL_MAX_MAILBOX];
};
static_assert(sizeof(JournalRecordHeader) == kRecordHeaderBytes);

class Journal {
 public:
  enum class OpenResult { kRecovered, kFormatted, kNotAJournal, kBadVersion, kIoError, kTooSmall };
  using RecordFn = void (*)(void* ctx, Str msgid, Str mailbox, Str body);

  // staging: room for one batch of records (>= kMaxRecordSectors sectors);
  // scan: the recovery read window (>= kMaxRecordSectors sectors; bigger means
  // fewer reads). Both must stay valid for the journal's lifetime.
  Journal(BlockStore* disk, uint8_t* staging, size_t staging_bytes, uint8_t* scan,
          size_t scan_bytes);

  // Reads the superblock and replays every valid record into fn. A disk whose
  // sector 0 is all zeros is formatted with journal id new_id; anything else
  // that is not a journal is refused (never overwritten).
  OpenResult open(uint64_t new_id, RecordFn fn, void* ctx);

  // Adds a record to the pending batch (RAM only). False when the batch buffer
  // or the disk is full.
  bool stage(Str msgid, Str mailbox, Str body);
  bool has_staged() const { return staged_records_ > 0; }
  // Writes the batch contiguously and flushes, in one device batch. On failure
  // nothing of the batch counts as written (it will be overwritten next time).
  bool commit();

  uint64_t records() const { return next_seq_; }
  uint64_t next_sector() const { return next_sector_; }
  uint64_t journal_id() const { return journal_id_; }
  // Why recovery stopped (for the boot message): "end", "torn", ...
  const char* stop_reason() const { return stop_reason_; }

 private:
  bool format(uint64_t id);
  bool fill_window(uint64_t sector);

  BlockStore* disk_;
  uint8_t* staging_;
  size_t staging_sectors_;
  uint8_t* scan_;
  size_t scan_sectors_;
  uint64_t window_start_ = 0;
  uint64_t window_len_ = 0;  // sectors in scan_
  uint64_t journal_id_ = 0;
  uint64_t next_sector_ = 1;
  uint64_t next_seq_ = 0;
  uint64_t staged_sectors_ = 0;
  uint64_t staged_records_ = 0;
  const char* stop_reason_ = "";
};

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_APPS_MAIL_JOURNAL_H_
