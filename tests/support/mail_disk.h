// A mail-store disk written on the host: the guest kit's own journal code
// (guest/apps/mail_journal.h, from guest_host_dep) stores `count` messages, so a
// test or benchmark gets a store whose boot replays a long journal without
// delivering each message over the network first. Header-only: users link
// guest_host_dep.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"
#include "guest/apps/mail_journal.h"

namespace ftvm::itest {

// The body of message i: "body-<i>-" then filler up to `len` bytes.
inline std::string MailBody(uint64_t i, size_t len) {
  std::string b = "body-" + std::to_string(i) + "-";
  while (b.size() < len) b += char('a' + (b.size() * 7 + i) % 26);
  b.resize(std::max(len, b.size()));
  return b;
}

// Writes a `bytes`-byte disk image at `path` whose journal holds messages "m0".."m<count-1>"
// in `mailbox`, each with MailBody(i, body_len). Returns the journal's next free
// sector. Throws ftvm::Error when it does not fit.
inline uint64_t MakeMailDisk(const std::string& path, uint64_t bytes, uint64_t count, const std::string& mailbox,
                             size_t body_len) {
  struct MemStore final : guest::BlockStore {
    std::vector<uint8_t> data;
    uint64_t capacity_sectors() const override { return data.size() / guest::kSectorBytes; }
    bool read(uint64_t sector, void* buf, uint32_t n) override {
      if ((sector + n) * guest::kSectorBytes > data.size()) return false;
      std::memcpy(buf, &data[sector * guest::kSectorBytes], size_t(n) * guest::kSectorBytes);
      return true;
    }
    bool write_flush(uint64_t sector, const void* buf, uint32_t n) override {
      if ((sector + n) * guest::kSectorBytes > data.size()) return false;
      std::memcpy(&data[sector * guest::kSectorBytes], buf, size_t(n) * guest::kSectorBytes);
      return true;
    }
  } disk;
  disk.data.assign(bytes, 0);
  std::vector<uint8_t> staging(64 * 1024), scan(256 * 1024);
  guest::Journal j(&disk, staging.data(), staging.size(), scan.data(), scan.size());
  if (j.open(0x5eed1234abcdull | 1, [](void*, guest::Str, guest::Str, guest::Str) {}, nullptr) !=
      guest::Journal::OpenResult::kFormatted)
    throw Error("formatting the mail journal");
  const guest::Str box(mailbox.data(), mailbox.size());
  for (uint64_t i = 0; i < count; ++i) {
    const std::string id = "m" + std::to_string(i), body = MailBody(i, body_len);
    const guest::Str sid(id.data(), id.size()), sbody(body.data(), body.size());
    if (j.stage(sid, box, sbody)) continue;
    if (!j.commit() || !j.stage(sid, box, sbody)) throw Error("mail disk " + path + " is full at message " + id);
  }
  if (j.has_staged() && !j.commit()) throw Error("mail disk " + path + " is full");
  UniqueFd fd(::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644));
  if (!fd || ::write(fd.get(), disk.data.data(), disk.data.size()) != ssize_t(disk.data.size()))
    throw SysError("writing the mail disk " + path);
  return j.next_sector();
}

}  // namespace ftvm::itest
