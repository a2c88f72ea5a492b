#include "guest/apps/mail_proto.h"

namespace ftvm::guest {
namespace {

// A token: 1..max characters, all printable non-space.
bool valid_token(Str s, size_t max) {
  if (s.n == 0 || s.n > max) return false;
  for (size_t i = 0; i < s.n; ++i) {
    if (!ftvm_mail_token_char(static_cast<unsigned char>(s.p[i]))) return false;
  }
  return true;
}

MailRequest invalid(MailRequest r, const char* why) {
  r.cmd = MailCmd::kInvalid;
  r.error = why;
  return r;
}

}  // namespace

MailRequest mail_parse(const uint8_t* data, size_t len) {
  MailRequest r;
  r.reqid = Str("-", 1);
  Str all(reinterpret_cast<const char*>(data), data == nullptr ? 0 : len);
  size_t nl = all.find('\n');
  Str header = all.sub(0, nl);
  Str body = nl < all.n ? all.sub(nl + 1) : Str();
  if (header.n > 0 && header.p[header.n - 1] == '\r') header = header.sub(0, header.n - 1);

  Str words[5];
  size_t nwords = 0;
  Str rest = header;
  Str tok;
  bool too_many = false;
  while (next_token(rest, ' ', &tok, &rest)) {
    if (nwords == 5) {
      too_many = true;
      break;
    }
    words[nwords++] = tok;
  }
  if (nwords == 0) return invalid(r, FTVM_MAIL_ERR_EMPTY);
  if (!valid_token(words[0], FTVM_MAIL_MAX_REQID)) return invalid(r, FTVM_MAIL_ERR_BAD_REQID);
  r.reqid = words[0];
  if (len > FTVM_MAIL_MAX_DATAGRAM) return invalid(r, FTVM_MAIL_ERR_TOO_LONG);
  if (too_many) return invalid(r, FTVM_MAIL_ERR_BAD_ARGS);
  if (nwords < 2) return invalid(r, FTVM_MAIL_ERR_UNKNOWN_COMMAND);

  Str cmd = words[1];
  if (cmd.eq("PING")) {
    if (nwords != 2) return invalid(r, FTVM_MAIL_ERR_BAD_ARGS);
    r.cmd = MailCmd::kPing;
  } else if (cmd.eq("DELIVER")) {
    if (nwords != 4) return invalid(r, FTVM_MAIL_ERR_BAD_ARGS);
    if (!valid_token(words[2], FTVM_MAIL_MAX_MSGID)) return invalid(r, FTVM_MAIL_ERR_BAD_MSGID);
    if (!valid_token(words[3], FTVM_MAIL_MAX_MAILBOX)) return invalid(r, FTVM_MAIL_ERR_BAD_MAILBOX);
    if (body.n > FTVM_MAIL_MAX_BODY) return invalid(r, FTVM_MAIL_ERR_BODY_TOO_LONG);
    r.msgid = words[2];
    r.mailbox = words[3];
    r.body = body;
    r.cmd = MailCmd::kDeliver;
  } else if (cmd.eq("FETCH")) {
    if (nwords != 4) return invalid(r, FTVM_MAIL_ERR_BAD_ARGS);
    if (!valid_token(words[2], FTVM_MAIL_MAX_MAILBOX)) return invalid(r, FTVM_MAIL_ERR_BAD_MAILBOX);
    // Decimal only: "0x" forms are not part of the protocol.
    for (size_t i = 0; i < words[3].n; ++i) {
      if (words[3].p[i] < '0' || words[3].p[i] > '9') return invalid(r, FTVM_MAIL_ERR_BAD_ARGS);
    }
    if (!parse_u64(words[3], &r.index)) return invalid(r, FTVM_MAIL_ERR_BAD_ARGS);
    r.mailbox = words[2];
    r.cmd = MailCmd::kFetch;
  } else if (cmd.eq("COUNT")) {
    if (nwords != 3) return invalid(r, FTVM_MAIL_ERR_BAD_ARGS);
    if (!valid_token(words[2], FTVM_MAIL_MAX_MAILBOX)) return invalid(r, FTVM_MAIL_ERR_BAD_MAILBOX);
    r.mailbox = words[2];
    r.cmd = MailCmd::kCount;
  } else {
    return invalid(r, FTVM_MAIL_ERR_UNKNOWN_COMMAND);
  }
  return r;
}

MailReply& MailReply::put(Str s) {
  size_t room = cap_ - len_;
  size_t n = s.n;
  if (n > room) {
    n = room;
    truncated_ = true;
  }
  if (n > 0) memcpy(buf_ + len_, s.p, n);
  len_ += n;
  return *this;
}

MailReply& MailReply::put_u64(uint64_t v) {
  char tmp[20];
  size_t n = 0;
  do {
    tmp[sizeof tmp - 1 - n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  return put(Str(tmp + sizeof tmp - n, n));
}

}  // namespace ftvm::guest
