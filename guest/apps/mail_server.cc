#include "guest/apps/mail_server.h"

#include "guest/apps/mail_proto.h"

namespace ftvm::guest {

size_t MailServer::handle(const uint8_t* req, size_t len, char* out, size_t cap) {
  ++stats_.requests;
  MailRequest r = mail_parse(req, len);
  MailReply reply(out, cap);
  reply.put(r.reqid).put(" ");
  switch (r.cmd) {
    case MailCmd::kPing:
      ++stats_.pings;
      reply.put("PONG");
      break;
    case MailCmd::kDeliver: {
      if (index_->contains(r.msgid)) {
        ++stats_.duplicates;
        reply.put("DUP ").put(r.msgid);
        break;
      }
      // Both the index and the journal must have room before either changes.
      if (!index_->can_add(r.mailbox, r.msgid.n, r.body.n) ||
          !journal_->stage(r.msgid, r.mailbox, r.body)) {
        ++stats_.errors;
        reply.put("ERR " FTVM_MAIL_ERR_FULL);
        break;
      }
      index_->add(r.msgid, r.mailbox, r.body);  // cannot fail after can_add()
      ++stats_.delivered;
      reply.put("OK ").put(r.msgid);
      break;
    }
    case MailCmd::kFetch: {
      ++stats_.fetches;
      const MailMessage* m = index_->fetch(r.mailbox, r.index);
      if (m == nullptr) {
        reply.put("NONE");
      } else {
        reply.put("MSG ").put(m->msgid).put("\n").put(m->body);
      }
      break;
    }
    case MailCmd::kCount:
      ++stats_.counts;
      reply.put("COUNT ").put_u64(index_->count(r.mailbox));
      break;
    case MailCmd::kInvalid:
      ++stats_.errors;
      reply.put("ERR ").put(r.error);
      break;
  }
  return reply.len();
}

bool MailServer::commit() {
  if (!journal_->has_staged()) return true;
  ++stats_.commits;
  return journal_->commit();
}

}  // namespace ftvm::guest
