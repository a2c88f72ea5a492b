#include "guest/apps/mail_index.h"

namespace ftvm::guest {
namespace {

uint64_t hash(Str s) {  // FNV-1a
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < s.n; ++i) h = (h ^ static_cast<uint8_t>(s.p[i])) * 0x100000001b3ull;
  return h;
}

// Smallest power of two >= 2n (load factor <= 1/2 keeps probe runs short).
size_t table_size(uint64_t n) {
  size_t size = 16;
  while (size < 2 * n) size *= 2;
  return size;
}

}  // namespace

bool MailIndex::init(Arena* arena, uint32_t max_messages, uint32_t max_mailboxes) {
  arena_ = arena;
  size_t ids = table_size(max_messages);
  size_t boxes = table_size(max_mailboxes);
  ids_ = arena->alloc_array<MailMessage*>(ids);
  boxes_ = arena->alloc_array<Mailbox*>(boxes);
  if (ids_ == nullptr || boxes_ == nullptr) return false;
  ids_mask_ = ids - 1;
  boxes_mask_ = boxes - 1;
  max_messages_ = max_messages;
  max_mailboxes_ = max_mailboxes;
  return true;
}

bool MailIndex::contains(Str msgid) const {
  for (size_t i = hash(msgid) & ids_mask_;; i = (i + 1) & ids_mask_) {
    if (ids_[i] == nullptr) return false;
    if (ids_[i]->msgid.eq(msgid)) return true;
  }
}

bool MailIndex::can_add(Str mailbox, size_t msgid_len, size_t body_len) const {
  if (messages_ >= max_messages_) return false;
  bool new_box = find_mailbox(mailbox) == nullptr;
  if (new_box && mailboxes_ >= max_mailboxes_) return false;
  // Worst case: a new mailbox, a new chunk, the message and its strings, each
  // with up to 15 bytes of alignment padding.
  size_t need = sizeof(Mailbox) + sizeof(Chunk) + sizeof(MailMessage) + msgid_len + body_len + 4 * 16;
  return arena_->remaining() >= need;
}

MailIndex::Mailbox* MailIndex::find_mailbox(Str name) const {
  for (size_t i = hash(name) & boxes_mask_;; i = (i + 1) & boxes_mask_) {
    Mailbox* b = boxes_[i];
    if (b == nullptr) return nullptr;
    if (Str(b->name, b->name_len).eq(name)) return b;
  }
}

MailIndex::Mailbox* MailIndex::add_mailbox(Str name) {
  if (mailboxes_ >= max_mailboxes_ || name.n > FTVM_MAIL_MAX_MAILBOX) return nullptr;
  auto* b = arena_->alloc_array<Mailbox>(1);
  if (b == nullptr) return nullptr;
  memcpy(b->name, name.p, name.n);
  b->name_len = name.n;
  size_t i = hash(name) & boxes_mask_;
  while (boxes_[i] != nullptr) i = (i + 1) & boxes_mask_;
  boxes_[i] = b;
  ++mailboxes_;
  return b;
}

MailIndex::AddResult MailIndex::add(Str msgid, Str mailbox, Str body) {
  if (contains(msgid)) return AddResult::kDuplicate;
  if (messages_ >= max_messages_) return AddResult::kFull;
  Mailbox* box = find_mailbox(mailbox);
  if (box == nullptr && (box = add_mailbox(mailbox)) == nullptr) return AddResult::kFull;
  // Allocate everything before linking anything, so running out of memory
  // leaves the index unchanged. A new chunk is needed when the tail is full
  // (count is a multiple of kChunk) or there is none yet.
  bool need_chunk = box->tail == nullptr || box->count % kChunk == 0;
  Chunk* chunk = need_chunk ? arena_->alloc_array<Chunk>(1) : nullptr;
  auto* m = arena_->alloc_array<MailMessage>(1);
  char* id = static_cast<char*>(arena_->alloc(msgid.n, 1));
  char* text = static_cast<char*>(arena_->alloc(body.n, 1));
  if ((need_chunk && chunk == nullptr) || m == nullptr || id == nullptr || text == nullptr) {
    return AddResult::kFull;
  }
  if (need_chunk) {
    if (box->tail == nullptr) {
      box->head = chunk;
    } else {
      box->tail->next = chunk;
    }
    box->tail = chunk;
  }
  memcpy(id, msgid.p, msgid.n);
  if (body.n > 0) memcpy(text, body.p, body.n);
  m->msgid = Str(id, msgid.n);
  m->body = Str(text, body.n);
  box->tail->msgs[box->count % kChunk] = m;
  ++box->count;
  size_t i = hash(msgid) & ids_mask_;
  while (ids_[i] != nullptr) i = (i + 1) & ids_mask_;
  ids_[i] = m;
  ++messages_;
  return AddResult::kAdded;
}

uint64_t MailIndex::count(Str mailbox) const {
  const Mailbox* b = find_mailbox(mailbox);
  return b == nullptr ? 0 : b->count;
}

const MailMessage* MailIndex::fetch(Str mailbox, uint64_t index) const {
  const Mailbox* b = find_mailbox(mailbox);
  if (b == nullptr || index >= b->count) return nullptr;
  const Chunk* c = b->head;
  for (uint64_t k = index / kChunk; k > 0; --k) c = c->next;
  return c->msgs[index % kChunk];
}

}  // namespace ftvm::guest
