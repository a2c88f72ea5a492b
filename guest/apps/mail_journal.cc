#include "guest/apps/mail_journal.h"

#include "guest/lib/crc32.h"
#include "guest/lib/mem.h"

namespace ftvm::guest {
namespace {

uint64_t record_sectors(uint32_t body_len) {
  return (kRecordHeaderBytes + static_cast<uint64_t>(body_len) + kSectorBytes - 1) / kSectorBytes;
}

uint32_t record_crc(const JournalRecordHeader& h, const uint8_t* body) {
  JournalRecordHeader copy = h;
  copy.crc32 = 0;
  return crc32_update(crc32(&copy, sizeof copy), body, h.body_len);
}

uint32_t super_crc(const JournalSuperblock& s) {
  JournalSuperblock copy = s;
  copy.crc32 = 0;
  return crc32(&copy, sizeof copy);
}

bool all_zero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

}  // namespace

Journal::Journal(BlockStore* disk, uint8_t* staging, size_t staging_bytes, uint8_t* scan,
                 size_t scan_bytes)
    : disk_(disk),
      staging_(staging),
      staging_sectors_(staging_bytes / kSectorBytes),
      scan_(scan),
      scan_sectors_(scan_bytes / kSectorBytes) {}

bool Journal::format(uint64_t id) {
  // Superblock plus a zeroed first record sector, written together.
  memset(staging_, 0, 2 * kSectorBytes);
  JournalSuperblock s = {};
  s.magic = kJournalMagic;
  s.version = kJournalVersion;
  s.record_header_bytes = kRecordHeaderBytes;
  s.journal_id = id;
  s.first_record_sector = 1;
  s.crc32 = super_crc(s);
  memcpy(staging_, &s, sizeof s);
  return disk_->write_flush(0, staging_, 2);
}

bool Journal::fill_window(uint64_t sector) {
  uint64_t count = disk_->capacity_sectors() - sector;
  if (count > scan_sectors_) count = scan_sectors_;
  window_start_ = sector;
  window_len_ = 0;
  if (!disk_->read(sector, scan_, static_cast<uint32_t>(count))) return false;
  window_len_ = count;
  return true;
}

Journal::OpenResult Journal::open(uint64_t new_id, RecordFn fn, void* ctx) {
  uint64_t capacity = disk_->capacity_sectors();
  if (capacity < 2 || staging_sectors_ < kMaxRecordSectors || scan_sectors_ < kMaxRecordSectors) {
    return OpenResult::kTooSmall;
  }
  if (!fill_window(0)) return OpenResult::kIoError;
  JournalSuperblock s;
  memcpy(&s, scan_, sizeof s);
  if (s.magic != kJournalMagic || s.crc32 != super_crc(s)) {
    if (!all_zero(scan_, kSectorBytes)) return OpenResult::kNotAJournal;
    if (!format(new_id)) return OpenResult::kIoError;
    journal_id_ = new_id;
    next_sector_ = 1;
    next_seq_ = 0;
    stop_reason_ = "new";
    return OpenResult::kFormatted;
  }
  if (s.version != kJournalVersion || s.record_header_bytes != kRecordHeaderBytes ||
      s.first_record_sector != 1) {
    return OpenResult::kBadVersion;
  }
  journal_id_ = s.journal_id;

  uint64_t pos = 1;
  uint64_t seq = 0;
  stop_reason_ = "end";
  while (pos < capacity) {
    if (pos < window_start_ || pos >= window_start_ + window_len_) {
      if (!fill_window(pos)) return OpenResult::kIoError;
    }
    JournalRecordHeader h;
    memcpy(&h, scan_ + (pos - window_start_) * kSectorBytes, sizeof h);
    if (h.magic != kRecordMagic || h.journal_id != journal_id_) {
      stop_reason_ = all_zero(reinterpret_cast<uint8_t*>(&h), sizeof h) ? "end" : "invalid";
      break;
    }
    if (h.seq != seq || h.body_len > FTVM_MAIL_MAX_BODY || h.msgid_len == 0 ||
        h.msgid_len > FTVM_MAIL_MAX_MSGID || h.mailbox_len == 0 ||
        h.mailbox_len > FTVM_MAIL_MAX_MAILBOX) {
      stop_reason_ = "invalid";
      break;
    }
    uint64_t n = record_sectors(h.body_len);
    if (pos + n > capacity) {
      stop_reason_ = "torn";
      break;
    }
    if (pos + n > window_start_ + window_len_) {  // record straddles the window
      if (!fill_window(pos)) return OpenResult::kIoError;
    }
    const uint8_t* rec = scan_ + (pos - window_start_) * kSectorBytes;
    const uint8_t* body = rec + kRecordHeaderBytes;
    if (record_crc(h, body) != h.crc32) {
      stop_reason_ = "torn";
      break;
    }
    fn(ctx, Str(h.msgid, h.msgid_len), Str(h.mailbox, h.mailbox_len),
       Str(reinterpret_cast<const char*>(body), h.body_len));
    pos += n;
    ++seq;
  }
  next_sector_ = pos;
  next_seq_ = seq;
  return OpenResult::kRecovered;
}

bool Journal::stage(Str msgid, Str mailbox, Str body) {
  if (msgid.n == 0 || msgid.n > FTVM_MAIL_MAX_MSGID || mailbox.n == 0 ||
      mailbox.n > FTVM_MAIL_MAX_MAILBOX || body.n > FTVM_MAIL_MAX_BODY) {
    return false;
  }
  uint64_t n = record_sectors(static_cast<uint32_t>(body.n));
  if (staged_sectors_ + n > staging_sectors_) return false;
  if (next_sector_ + staged_sectors_ + n > disk_->capacity_sectors()) return false;
  uint8_t* rec = staging_ + staged_sectors_ * kSectorBytes;
  memset(rec, 0, n * kSectorBytes);
  JournalRecordHeader h = {};
  h.magic = kRecordMagic;
  h.body_len = static_cast<uint32_t>(body.n);
  h.seq = next_seq_ + staged_records_;
  h.journal_id = journal_id_;
  h.msgid_len = static_cast<uint8_t>(msgid.n);
  h.mailbox_len = static_cast<uint8_t>(mailbox.n);
  memcpy(h.msgid, msgid.p, msgid.n);
  memcpy(h.mailbox, mailbox.p, mailbox.n);
  if (body.n > 0) memcpy(rec + kRecordHeaderBytes, body.p, body.n);
  h.crc32 = record_crc(h, rec + kRecordHeaderBytes);
  memcpy(rec, &h, sizeof h);
  staged_sectors_ += n;
  ++staged_records_;
  return true;
}

bool Journal::commit() {
  if (staged_records_ == 0) return true;
  bool ok = disk_->write_flush(next_sector_, staging_, static_cast<uint32_t>(staged_sectors_));
  if (ok) {
    next_sector_ += staged_sectors_;
    next_seq_ += staged_records_;
  }
  staged_sectors_ = 0;
  staged_records_ = 0;
  return ok;
}

}  // namespace ftvm::guest
