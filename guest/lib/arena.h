// Bump allocator over a fixed region: the kit's only dynamic memory (no new/delete,
// no free). The guest's global arena covers RAM from the image end to the top of
// RAM; host tests give it a plain buffer.
#ifndef FTVM_GUEST_LIB_ARENA_H_
#define FTVM_GUEST_LIB_ARENA_H_

#include <stddef.h>
#include <stdint.h>

namespace ftvm::guest {

class Arena {
 public:
  Arena() = default;
  Arena(void* base, size_t size) { init(base, size); }
  // `zeroed`: the whole region is known to hold zeros (the guest's RAM above the
  // image at boot). Since a bump allocator never hands out the same bytes twice,
  // alloc() then skips zeroing what it hands out: on the software CPU each store to
  // guest RAM is costly, and zeroing the mail store's tables and buffers was most
  // of its boot (~0.3-0.6 s of ~0.4-0.7 s to its first line).
  void init(void* base, size_t size, bool zeroed = false) {
    next_ = reinterpret_cast<uintptr_t>(base);
    end_ = next_ + size;
    zeroed_ = zeroed;
  }

  // `size` bytes aligned to `align` (a power of two), zeroed unless `zero` is
  // false (a big region that starts zeroed anyway, where touching every page
  // would cost); nullptr when full.
  void* alloc(size_t size, size_t align = 16, bool zero = true);
  template <typename T>
  T* alloc_array(size_t count, size_t align = alignof(T)) {
    if (count != 0 && sizeof(T) > SIZE_MAX / count) return nullptr;
    return static_cast<T*>(alloc(sizeof(T) * count, align < alignof(T) ? alignof(T) : align));
  }
  size_t remaining() const { return end_ - next_; }

 private:
  uintptr_t next_ = 0;
  uintptr_t end_ = 0;
  bool zeroed_ = false;
};

// The guest's RAM arena (set up by the app runtime before main).
Arena& arena();

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_LIB_ARENA_H_
