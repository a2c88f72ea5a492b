#include "guest/net/arp_cache.h"

#include "guest/lib/mem.h"

namespace ftvm::net {

ArpCache::Entry* ArpCache::find(uint32_t ip) {
  for (Entry& e : entries_) {
    if (e.stamp != 0 && e.ip == ip) return &e;
  }
  return nullptr;
}

bool ArpCache::lookup(uint32_t ip, uint8_t mac[6]) const {
  for (const Entry& e : entries_) {
    if (e.stamp != 0 && e.ip == ip) {
      memcpy(mac, e.mac, 6);
      return true;
    }
  }
  return false;
}

bool ArpCache::refresh(uint32_t ip, const uint8_t mac[6]) {
  Entry* e = find(ip);
  if (e == nullptr) return false;
  memcpy(e->mac, mac, 6);
  e->stamp = ++clock_;
  return true;
}

void ArpCache::update(uint32_t ip, const uint8_t mac[6]) {
  if (refresh(ip, mac)) return;
  Entry* victim = &entries_[0];
  for (Entry& e : entries_) {
    if (e.stamp < victim->stamp) victim = &e;  // unused entries (stamp 0) win
  }
  victim->ip = ip;
  memcpy(victim->mac, mac, 6);
  victim->stamp = ++clock_;
}

}  // namespace ftvm::net
