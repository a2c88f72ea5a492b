// IPv4 -> MAC cache. Fixed size; the least recently updated entry is replaced.
// No expiry: peers of a mail server keep their MACs, and any ARP or IPv4 frame
// from a peer refreshes its entry.
#ifndef FTVM_GUEST_NET_ARP_CACHE_H_
#define FTVM_GUEST_NET_ARP_CACHE_H_

#include <stdint.h>

namespace ftvm::net {

class ArpCache {
 public:
  static constexpr unsigned kEntries = 32;

  bool lookup(uint32_t ip, uint8_t mac[6]) const;
  // Inserts or refreshes ip -> mac.
  void update(uint32_t ip, const uint8_t mac[6]);
  // Refreshes only an existing entry; returns whether one existed.
  bool refresh(uint32_t ip, const uint8_t mac[6]);

 private:
  struct Entry {
    uint32_t ip;
    uint32_t stamp;  // 0 = unused
    uint8_t mac[6];
  };
  Entry* find(uint32_t ip);

  Entry entries_[kEntries] = {};
  uint32_t clock_ = 0;
};

}  // namespace ftvm::net

#endif  // FTVM_GUEST_NET_ARP_CACHE_H_
