#include "guest/lib/virtio_blk.h"


namespace ftvm::guest {

bool VirtioBlk::init(Arena& arena) {
  if (!dev_.probe(FTVM_SLOT_VIRTIO_BLK, VIRTIO_ID_BLOCK)) return false;
  uint64_t wanted = (1ull << VIRTIO_F_RING_EVENT_IDX) | (1ull << VIRTIO_BLK_F_FLUSH);
  if (!dev_.begin_init(wanted)) return false;
  if (!dev_.setup_queue(0, FTVM_VIRTQ_MAX_SIZE, &q_, arena)) {
    dev_.fail();
    return false;
  }
  capacity_ = dev_.read_config32(0) | static_cast<uint64_t>(dev_.read_config32(4)) << 32;
  dev_.driver_ok();
  return true;
}

bool VirtioBlk::submit(BlkRequest* r, uint32_t type, uint64_t sector, const void* buf,
                       uint32_t len, bool device_writes) {
  r->hdr.type = type;
  r->hdr.reserved = 0;
  r->hdr.sector = sector;
  r->status = 0xff;  // anything the device does not overwrite reads as failure
  r->done = false;
  VqBuf bufs[3];
  unsigned n = 0;
  bufs[n++] = {&r->hdr, sizeof r->hdr, false};
  if (len > 0) bufs[n++] = {buf, len, device_writes};
  bufs[n++] = {const_cast<uint8_t*>(&r->status), 1, true};
  if (!q_.add(bufs, n, r)) return false;
  ++inflight_;
  return true;
}

bool VirtioBlk::submit_read(BlkRequest* r, uint64_t sector, void* buf, uint32_t len) {
  return submit(r, VIRTIO_BLK_T_IN, sector, buf, len, true);
}
bool VirtioBlk::submit_write(BlkRequest* r, uint64_t sector, const void* buf, uint32_t len) {
  return submit(r, VIRTIO_BLK_T_OUT, sector, buf, len, false);
}
bool VirtioBlk::submit_flush(BlkRequest* r) {
  if (!dev_.has_feature(VIRTIO_BLK_F_FLUSH)) {
    r->status = VIRTIO_BLK_S_OK;
    r->done = true;
    return true;
  }
  return submit(r, VIRTIO_BLK_T_FLUSH, 0, nullptr, 0, false);
}

unsigned VirtioBlk::reap() {
  unsigned n = 0;
  while (void* token = q_.pop_used(nullptr)) {
    auto* r = static_cast<BlkRequest*>(token);
    r->done = true;
    if (r->status != VIRTIO_BLK_S_OK) ++failed_;
    --inflight_;
    ++n;
  }
  return n;
}

bool VirtioBlk::complete_all() {
  if (q_.kick()) ++notifies_;
  reap();
  while (inflight_ > 0) {
    // Not done within the notify exit: sleep until the device interrupts.
    q_.wait_used();
    reap();
  }
  bool ok = failed_ == 0;
  failed_ = 0;
  return ok;
}

bool VirtioBlk::read(uint64_t sector, void* buf, uint32_t len) {
  BlkRequest r;
  return submit_read(&r, sector, buf, len) && complete_all() && r.ok();
}
bool VirtioBlk::write(uint64_t sector, const void* buf, uint32_t len) {
  BlkRequest r;
  return submit_write(&r, sector, buf, len) && complete_all() && r.ok();
}
bool VirtioBlk::flush() {
  BlkRequest r;
  return submit_flush(&r) && complete_all() && r.ok();
}

}  // namespace ftvm::guest
