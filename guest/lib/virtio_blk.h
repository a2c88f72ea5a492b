// virtio-blk driver (ring 3). Requests are queued without exits and go to the
// device together with one QUEUE_NOTIFY in complete_all(); the VMM usually
// completes them during that exit, otherwise we idle in FTVM_IRQ_WAIT.
#ifndef FTVM_GUEST_LIB_VIRTIO_BLK_H_
#define FTVM_GUEST_LIB_VIRTIO_BLK_H_

#include <stdint.h>

#include "guest/lib/virtio.h"

namespace ftvm::guest {

// One request; must stay in place (the device reads/writes it) until completed.
struct BlkRequest {
  virtio_blk_req_hdr hdr;
  volatile uint8_t status;
  bool done;
  bool ok() const { return done && status == VIRTIO_BLK_S_OK; }
};

class VirtioBlk {
 public:
  // Probes slot FTVM_SLOT_VIRTIO_BLK and brings the device up.
  bool init(Arena& arena);
  const char* error() const { return dev_.error(); }
  uint64_t capacity_sectors() const { return capacity_; }

  // Queue requests (no exit). len is a multiple of VIRTIO_BLK_SECTOR_SIZE. False
  // when the ring is out of descriptors: complete_all() first.
  bool submit_read(BlkRequest* r, uint64_t sector, void* buf, uint32_t len);
  bool submit_write(BlkRequest* r, uint64_t sector, const void* buf, uint32_t len);
  // Completes at once without a request if the device has no flush (write-through).
  bool submit_flush(BlkRequest* r);
  // Room for this many more read/write requests.
  unsigned free_slots() const { return q_.free_descs() / 3; }

  // Notifies the device and waits until every queued request completed.
  // Returns false if any of them failed.
  bool complete_all();

  // One request + complete_all().
  bool read(uint64_t sector, void* buf, uint32_t len);
  bool write(uint64_t sector, const void* buf, uint32_t len);
  bool flush();

  uint64_t notifies() const { return notifies_; }

 private:
  bool submit(BlkRequest* r, uint32_t type, uint64_t sector, const void* buf, uint32_t len,
              bool device_writes);
  unsigned reap();

  VirtioDevice dev_;
  VirtQueue q_;
  uint64_t capacity_ = 0;
  unsigned inflight_ = 0;
  unsigned failed_ = 0;
  uint64_t notifies_ = 0;
};

}  // namespace ftvm::guest

#endif  // FTVM_GUEST_LIB_VIRTIO_BLK_H_
