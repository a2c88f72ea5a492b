// The mail store's request logic over the index and the journal, independent of
// devices (host-testable). The caller batches: handle() every request of a batch,
// commit() once, and only then send the replies — an OK must not leave before
// its record is durable.
#ifndef FTVM_GUEST_APPS_MAIL_SERVER_H_
#define FTVM_GUEST_APPS_MAIL_SERVER_H_

#include <stddef.h>
#include <stdint.h>

#include "guest/apps/mail_index.h"
#include "guest/apps/mail_journal.h"

namespace ftvm::guest {

class MailServer {
 public:
  struct Stats {
    uint64_t requests, delivered, duplicates, fetches, counts, pings, errors, commits;
  };

  MailServer(MailIndex* index, Journal* journal) : index_(index), journal_(journal) {}

  // Handles one request; writes the reply (<= FTVM_MAIL_MAX_DATAGRAM bytes when
  // cap allows) into out and returns its length. A DELIVER of a new msgid is
  // staged in the journal and entered in the index at once (so a retry within
  // the same batch answers DUP).
  size_t handle(const uint8_t* req, size_t len, char* out, size_t cap);
  // Makes the batch durable (one write + flush). False on I/O error: the batch's
  // OK replies must then not be sent.
  bool commit();

  const Stats& stats() const { return stats_; }

 private:
  MailIndex* index_;
  Journal* journal_;
  Stats stats_ = {};
};

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_APPS_MAIL_SERVER_H_
