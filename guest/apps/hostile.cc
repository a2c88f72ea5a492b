// app=hostile: a guest that misbehaves on purpose, to show that it can hurt only
// itself. Against the virtio-blk device, each time on a fresh queue:
//   outside    a buffer past the end of RAM
//   wrap       a buffer whose length runs past the top of the address space
//   loop       a descriptor chain that links back to its start
//   next       a chain that links to a descriptor past the table
//   avail      an avail index far ahead of the ring (more chains than it holds)
//   head       an avail entry naming a descriptor past the table
// After each the device must say NEEDS_RESET, complete nothing, and work again after
// a reset (a good read of sector 0). Then it pokes registers and slots that do not
// exist with every access size, and raises an interrupt storm (the timer re-armed
// at 1 ns, lines acked and masked and unmasked, 20000 times).
// Prints one line per attack and "hostile: survived N attacks, M failed"; exit 0
// when the device refused every bad request and recovered each time.
#include <stdint.h>

#include "guest/apps/app.h"
#include "guest/lib/arena.h"
#include "guest/lib/console.h"
#include "guest/lib/dev.h"
#include "guest/lib/mmio.h"
#include "guest/lib/virtio.h"
#include "guest/lib/virtio_blk.h"

namespace ftvm::guest {
namespace {

// Fills the fresh queue's descriptor table for one attack and publishes it.
using Attack = void (*)(VirtQueue& q, virtio_blk_req_hdr* hdr, uint8_t* status);

uint64_t Addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }

// A well-formed read request's header and status descriptors around a bad data
// buffer (descriptor 1).
void RequestAround(VirtQueue& q, virtio_blk_req_hdr* hdr, uint8_t* status, uint64_t data, uint32_t len) {
  virtq_desc* d = q.raw_descriptors();
  hdr->type = VIRTIO_BLK_T_IN;
  hdr->reserved = 0;
  hdr->sector = 0;
  d[0] = {Addr(hdr), sizeof *hdr, VIRTQ_DESC_F_NEXT, 1};
  d[1] = {data, len, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2};
  d[2] = {Addr(status), 1, VIRTQ_DESC_F_WRITE, 0};
  q.raw_publish(0, 1);
}

struct Named {
  const char* name;
  Attack attack;
};

const Named kAttacks[] = {
    {"outside", [](VirtQueue& q, virtio_blk_req_hdr* h, uint8_t* s) {
       RequestAround(q, h, s, bootinfo().ram_bytes + (1u << 20), 4096);
     }},
    {"wrap", [](VirtQueue& q, virtio_blk_req_hdr* h, uint8_t* s) {
       RequestAround(q, h, s, ~uint64_t(0) - 16, 0xfffff000u);
     }},
    {"loop", [](VirtQueue& q, virtio_blk_req_hdr* h, uint8_t* s) {
       RequestAround(q, h, s, Addr(h), 512);
       q.raw_descriptors()[2].flags = VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT;
       q.raw_descriptors()[2].next = 0;  // status links back to the header
     }},
    {"next", [](VirtQueue& q, virtio_blk_req_hdr* h, uint8_t* s) {
       RequestAround(q, h, s, Addr(h), 512);
       q.raw_descriptors()[1].next = static_cast<uint16_t>(q.size() + 7);
     }},
    {"avail", [](VirtQueue& q, virtio_blk_req_hdr*, uint8_t*) { q.raw_publish(0, 1000); }},
    {"head", [](VirtQueue& q, virtio_blk_req_hdr*, uint8_t*) {
       q.raw_publish(static_cast<uint16_t>(q.size() + 3), 1);
     }},
};

// One attack on a fresh device and queue; then a reset and a good read.
bool Attack1(const Named& a) {
  VirtioDevice dev;
  VirtQueue q;
  if (!dev.probe(FTVM_SLOT_VIRTIO_BLK, VIRTIO_ID_BLOCK) || !dev.begin_init(0) ||
      !dev.setup_queue(0, 16, &q, arena())) {
    con_printf("hostile: %s: cannot set the device up: %s\n", a.name, dev.error());
    return false;
  }
  dev.driver_ok();
  auto* hdr = static_cast<virtio_blk_req_hdr*>(arena().alloc(sizeof(virtio_blk_req_hdr), 16));
  auto* status = static_cast<uint8_t*>(arena().alloc(1, 1));
  *status = 0xee;
  a.attack(q, hdr, status);
  q.force_kick();
  const uint32_t st = dev.status();
  const bool refused = (st & VIRTIO_STATUS_NEEDS_RESET) != 0 && !q.has_used() && *status == 0xee;
  VirtioBlk blk;  // init() resets the device
  static uint8_t sector[512];
  const bool recovered = blk.init(arena()) && blk.read(0, sector, sizeof sector);
  con_printf("hostile: %s: device status 0x%x: %s, %s\n", a.name, st, refused ? "refused" : "NOT REFUSED",
             recovered ? "works again after a reset" : "DOES NOT RECOVER");
  return refused && recovered;
}

// Registers and slots that do not exist, every access size; reads must float high
// or read as the device defines, writes must vanish. Returns the accesses made.
// (Past the last slot nothing is mapped: the guest's own page fault, not the VMM's.)
uint64_t WildMmio() {
  uint64_t n = 0;
  volatile uint32_t sink = 0;
  for (unsigned slot = 0; slot < FTVM_MMIO_SLOTS; ++slot) {
    if (slot == FTVM_SLOT_POWER || slot == FTVM_SLOT_CONSOLE) continue;  // a write there is no attack: it ends or prints
    for (uint32_t reg = 0xf00; reg < 0x1000; reg += 0x28) {
      const uintptr_t at = static_cast<uintptr_t>(FTVM_MMIO_SLOT(slot)) + reg;
      sink = sink + *reinterpret_cast<volatile uint8_t*>(at) + *reinterpret_cast<volatile uint16_t*>(at) +
             *reinterpret_cast<volatile uint32_t*>(at) +
             static_cast<uint32_t>(*reinterpret_cast<volatile uint64_t*>(at));
      *reinterpret_cast<volatile uint8_t*>(at) = 0xa5;
      *reinterpret_cast<volatile uint32_t*>(at) = 0xdeadbeef;
      *reinterpret_cast<volatile uint64_t*>(at) = ~uint64_t(0);
      n += 7;
    }
  }
  (void)sink;
  return n;
}

// The timer re-armed at 1 ns with its line unmasked, acks and mask flips between:
// the VMM must keep up (or coalesce), and the guest keeps running.
uint64_t InterruptStorm() {
  const uint32_t mask = irq_get_mask();
  const uint64_t before = irq_total();
  for (int i = 0; i < 20000; ++i) {
    timer_arm_ns(1);
    irq_ack(~0u);
    irq_set_mask(i & 1 ? 0 : ~0u);
  }
  irq_set_mask(mask);
  timer_arm_ns(0);
  return irq_total() - before;
}

}  // namespace

int app_hostile(const Args&) {
  unsigned survived = 0, failed = 0;
  for (const Named& a : kAttacks) (Attack1(a) ? survived : failed)++;
  con_printf("hostile: wild MMIO: %lu accesses to registers and slots that do not exist\n", WildMmio());
  ++survived;
  con_printf("hostile: interrupt storm: 20000 timer arms at 1 ns, %lu interrupts taken\n", InterruptStorm());
  ++survived;
  con_printf("hostile: survived %u attacks, %u failed\n", survived, failed);
  return failed == 0 ? kExitOk : kExitFailed;
}

}  // namespace ftvm::guest
