// In-memory index of the mail store, rebuilt from the journal at boot:
// mailbox -> messages in delivery order, and the set of message ids (for DUP).
// All memory comes from an arena (sized at init); nothing is ever freed.
#ifndef FTVM_GUEST_APPS_MAIL_INDEX_H_
#define FTVM_GUEST_APPS_MAIL_INDEX_H_

#include <stddef.h>
#include <stdint.h>

#include "guest/apps/mailstore_proto.h"
#include "guest/lib/arena.h"
#include "guest/lib/str.h"

namespace ftvm::guest {

struct MailMessage {
  Str msgid;  // arena copies
  Str body;
};

class MailIndex {
 public:
  enum class AddResult { kAdded, kDuplicate, kFull };

  // Tables for up to max_messages messages in up to max_mailboxes mailboxes.
  bool init(Arena* arena, uint32_t max_messages, uint32_t max_mailboxes);

  bool contains(Str msgid) const;
  // Whether add() of a new message of this shape is sure to succeed (checked
  // before the journal stages it, so "stored" and "indexed" never disagree).
  bool can_add(Str mailbox, size_t msgid_len, size_t body_len) const;
  // Copies msgid and body into the arena.
  AddResult add(Str msgid, Str mailbox, Str body);
  uint64_t count(Str mailbox) const;
  // Message `index` (0-based, delivery order) of mailbox, or nullptr.
  const MailMessage* fetch(Str mailbox, uint64_t index) const;
  uint64_t messages() const { return messages_; }

 private:
  static constexpr unsigned kChunk = 62;  // messages per chunk (chunk = 512 bytes)
  struct Chunk {
    MailMessage* msgs[kChunk];
    Chunk* next;
    uint64_t pad;
  };
  struct Mailbox {
    char name[FTVM_MAIL_MAX_MAILBOX];
    size_t name_len;
    uint64_t count;
    Chunk* head;
    Chunk* tail;
  };

  Mailbox* find_mailbox(Str name) const;
  Mailbox* add_mailbox(Str name);

  Arena* arena_ = nullptr;
  MailMessage** ids_ = nullptr;  // open addressing, by msgid hash
  size_t ids_mask_ = 0;
  Mailbox** boxes_ = nullptr;    // open addressing, by mailbox name hash
  size_t boxes_mask_ = 0;
  uint64_t messages_ = 0;
  uint64_t max_messages_ = 0;
  uint64_t mailboxes_ = 0;
  uint64_t max_mailboxes_ = 0;
};

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_APPS_MAIL_INDEX_H_
