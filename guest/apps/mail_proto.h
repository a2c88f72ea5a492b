// Parsing and formatting of the mail-store datagrams (see mailstore_proto.h).
// Pure functions over byte buffers: host-compilable and unit-tested.
#ifndef FTVM_GUEST_APPS_MAIL_PROTO_H_
#define FTVM_GUEST_APPS_MAIL_PROTO_H_

#include <stddef.h>
#include <stdint.h>

#include "guest/apps/mailstore_proto.h"
#include "guest/lib/str.h"

namespace ftvm::guest {

enum class MailCmd { kPing, kDeliver, kFetch, kCount, kInvalid };

struct MailRequest {
  MailCmd cmd = MailCmd::kInvalid;
  Str reqid;    // "-" when unreadable
  Str msgid;    // DELIVER
  Str mailbox;  // DELIVER, FETCH, COUNT
  uint64_t index = 0;  // FETCH
  Str body;     // DELIVER
  const char* error = "";  // reason for kInvalid (one of FTVM_MAIL_ERR_*)
};

// Parses one request datagram. Never reads outside [data, data+len). Tokens
// (reqid, msgid, mailbox) are 1..max printable non-space ASCII characters; the
// header line ends at the first '\n' (a preceding '\r' is dropped).
MailRequest mail_parse(const uint8_t* data, size_t len);

// Reply builder: appends into a fixed buffer, truncating (never overflowing).
class MailReply {
 public:
  MailReply(char* buf, size_t cap) : buf_(buf), cap_(cap) {}
  MailReply& put(Str s);
  MailReply& put(const char* s) { return put(Str::of(s)); }
  MailReply& put_u64(uint64_t v);
  size_t len() const { return len_; }
  bool truncated() const { return truncated_; }

 private:
  char* buf_;
  size_t cap_;
  size_t len_ = 0;
  bool truncated_ = false;
};

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_APPS_MAIL_PROTO_H_
