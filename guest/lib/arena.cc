#include "guest/lib/arena.h"

#include "guest/lib/mem.h"

namespace ftvm::guest {

void* Arena::alloc(size_t size, size_t align, bool zero) {
  uintptr_t p = (next_ + (align - 1)) & ~static_cast<uintptr_t>(align - 1);
  if (p < next_ || p > end_ || size > end_ - p) return nullptr;
  next_ = p + size;
  // Callers rely on zeroed memory; a region that started zeroed still is (init()).
  if (zero && !zeroed_) memset(reinterpret_cast<void*>(p), 0, size);
  return reinterpret_cast<void*>(p);
}

}  // namespace ftvm::guest
