// Boot command line: "app=NAME key=value ..." (space separated, no quoting).
#ifndef FTVM_GUEST_LIB_ARGS_H_
#define FTVM_GUEST_LIB_ARGS_H_

#include <stdint.h>

#include "guest/lib/str.h"

namespace ftvm::guest {

class Args {
 public:
  explicit Args(Str cmdline) : line_(cmdline) {}

  // Value of the last "key=value" for key (later words override earlier ones);
  // false when absent. A bare word "key" counts as "key=" (empty value).
  bool get(const char* key, Str* value) const;
  // The value, or def when absent.
  Str get_str(const char* key, Str def) const;
  // Numeric value; def when absent. *ok (if given) is false on a malformed number.
  uint64_t get_u64(const char* key, uint64_t def, bool* ok = nullptr) const;

  Str line() const { return line_; }

 private:
  Str line_;
};

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_LIB_ARGS_H_
