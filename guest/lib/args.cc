#include "guest/lib/args.h"

namespace ftvm::guest {

bool Args::get(const char* key, Str* value) const {
  Str k = Str::of(key);
  Str rest = line_;
  Str word;
  bool found = false;
  while (next_token(rest, ' ', &word, &rest)) {
    size_t eq = word.find('=');
    if (!word.sub(0, eq).eq(k)) continue;
    *value = word.sub(eq + 1);  // empty for a bare word
    found = true;
  }
  return found;
}

Str Args::get_str(const char* key, Str def) const {
  Str v;
  return get(key, &v) ? v : def;
}

uint64_t Args::get_u64(const char* key, uint64_t def, bool* ok) const {
  if (ok != nullptr) *ok = true;
  Str v;
  if (!get(key, &v)) return def;
  uint64_t n;
  if (!parse_u64(v, &n)) {
    if (ok != nullptr) *ok = false;
    return def;
  }
  return n;
}

}  // namespace ftvm::guest
