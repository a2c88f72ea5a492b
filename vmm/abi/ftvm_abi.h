/*
 * ftvm guest ABI: everything the VMM and the guest kit must agree on.
 *
 * This one header is included by the VMM (C++20, hosted) and by the guest kit
 * (freestanding). It uses only fixed-width integers so both sides lay structs out
 * identically. Bump FTVM_ABI_VERSION on any incompatible change; the loader writes
 * it into the boot info and the guest kernel refuses to run on a mismatch.
 *
 * Why MMIO for devices: under PVM guest ring 3 cannot do port I/O (it faults even
 * with IOPL=3), and an MMIO access to an address with no memslot is the cheapest
 * exit from ring 3. Port I/O exists only for ring-0 paths (panic output, power-off).
 * Every register access is a VM exit (~76 us from ring 3 here), so devices take
 * whole buffers per access (iovec descriptors in guest memory) instead of bytes.
 */
#ifndef FTVM_VMM_ABI_FTVM_ABI_H_
#define FTVM_VMM_ABI_FTVM_ABI_H_

#include <stdint.h>

#define FTVM_ABI_VERSION 1u

/* ---- Guest physical memory map ------------------------------------------------ */
/* RAM starts at GPA 0 and is identity-mapped (virtual == physical) by the loader. */
#define FTVM_BOOT_GDT_GPA      0x1000ull   /* boot GDT written by the loader */
#define FTVM_BOOTINFO_GPA      0x2000ull   /* struct ftvm_bootinfo (one page) */
#define FTVM_PAGETABLE_GPA     0x10000ull  /* PML4, PDPT, PDs: identity map, 2 MiB pages */
#define FTVM_PAGETABLE_BYTES   0x10000ull  /* reserved for page tables (up to 64 KiB) */
#define FTVM_KERNEL_MIN_GPA    0x100000ull /* ELF PT_LOAD segments start at or above 1 MiB */
#define FTVM_MIN_RAM_MIB       16u
#define FTVM_MAX_RAM_MIB       3072u       /* RAM must end below the MMIO window */

/* MMIO window: one 4 KiB slot per device, no RAM behind it (accesses exit). */
#define FTVM_MMIO_BASE         0xd0000000ull
#define FTVM_MMIO_SLOT_SIZE    0x1000ull
#define FTVM_MMIO_SLOTS        16u
#define FTVM_MMIO_SLOT(n)      (FTVM_MMIO_BASE + (uint64_t)(n) * FTVM_MMIO_SLOT_SIZE)

/* Fixed slots. A slot whose device is absent reads as all-ones. */
#define FTVM_SLOT_CONSOLE      0u
#define FTVM_SLOT_CLOCK        1u
#define FTVM_SLOT_TIMER        2u
#define FTVM_SLOT_RNG          3u
#define FTVM_SLOT_IRQ          4u
#define FTVM_SLOT_POWER        5u
#define FTVM_SLOT_VIRTIO_BLK   6u
#define FTVM_SLOT_VIRTIO_NET   7u
#define FTVM_SLOT_HEALTH       8u  /* added compatibly in ABI 1: older VMMs leave it absent */

/* ---- Interrupts --------------------------------------------------------------- */
/* Line n is delivered as vector FTVM_IRQ_VECTOR_BASE + n. Vectors 0..31 are CPU
 * exceptions. Lines are edge-like: a raise while pending coalesces. */
#define FTVM_IRQ_VECTOR_BASE   32u
#define FTVM_IRQ_LINES         32u
#define FTVM_IRQ_TIMER         0u
#define FTVM_IRQ_VIRTIO_BLK    1u
#define FTVM_IRQ_VIRTIO_NET    2u

/* ---- Port I/O (ring 0 only) --------------------------------------------------- */
#define FTVM_PORT_CONSOLE      0x00e9u  /* out8: one character to the console */
#define FTVM_PORT_POWER        0x00f4u  /* out8/out32: power off with this exit code */

/* ---- Shared descriptor -------------------------------------------------------- */
/* A buffer in guest physical memory, passed to a device by writing the GPA of this
 * descriptor to a register: one exit moves a whole buffer. */
struct ftvm_iovec {
    uint64_t gpa;
    uint64_t len;
};

/* ---- Console (slot FTVM_SLOT_CONSOLE) ----------------------------------------- */
#define FTVM_CONSOLE_PUTC      0x00u  /* W: low byte is written */
#define FTVM_CONSOLE_WRITE_IOV 0x08u  /* W: GPA of a struct ftvm_iovec; its bytes are written */
#define FTVM_CONSOLE_MAX_WRITE (64u * 1024u)

/* ---- Clock (slot FTVM_SLOT_CLOCK) --------------------------------------------- */
#define FTVM_CLOCK_MONO_NS     0x00u  /* R64: nanoseconds since the VM started */
#define FTVM_CLOCK_WALL_NS     0x08u  /* R64: nanoseconds since the Unix epoch */

/* ---- One-shot timer (slot FTVM_SLOT_TIMER), raises FTVM_IRQ_TIMER -------------- */
#define FTVM_TIMER_ARM_NS      0x00u  /* W64: fire once after this many ns; 0 cancels */
#define FTVM_TIMER_FIRED       0x08u  /* R64: expiries so far */

/* ---- Random numbers (slot FTVM_SLOT_RNG) -------------------------------------- */
#define FTVM_RNG_DATA          0x00u  /* R64: 64 random bits */
#define FTVM_RNG_FILL_IOV      0x08u  /* W: GPA of a struct ftvm_iovec to fill */
#define FTVM_RNG_MAX_FILL      (64u * 1024u)

/* ---- Interrupt controller (slot FTVM_SLOT_IRQ) -------------------------------- */
#define FTVM_IRQ_PENDING       0x00u  /* R32: bitmask of raised, undelivered lines */
#define FTVM_IRQ_ACK           0x08u  /* W32: clear these pending lines without delivery */
#define FTVM_IRQ_MASK          0x10u  /* RW32: masked lines stay pending, not delivered */
#define FTVM_IRQ_WAIT          0x18u  /* R32: block until an unmasked line is pending;
                                         returns the pending mask (not cleared). The
                                         guest's idle: one exit, and the interrupt is
                                         injected before the guest's next exit (KVM:
                                         right after it; software CPU: at the next
                                         translation-block start). */
#define FTVM_IRQ_DELIVERED     0x20u  /* R64: interrupts injected so far */
#define FTVM_IRQ_WAIT_IF       0x28u  /* W64: WAIT, but only while DELIVERED still equals
                                         the written value. The guest writes the count
                                         of interrupts its handlers have seen, so one
                                         injected after its last look for work ends the
                                         wait at once: no lost wake-up, whatever the
                                         backend's injection point. */

/* ---- Power (slot FTVM_SLOT_POWER) --------------------------------------------- */
#define FTVM_POWER_OFF         0x00u  /* W32: power off; the value is the exit code */

/* ---- Guest health (slot FTVM_SLOT_HEALTH) -------------------------------------- */
/* An app-level "I am alive": the guest writes HEARTBEAT every so often (a counter
 * or any status word). Once a guest has beaten, a VMM run with a health grace
 * period resets (or restarts) the VM when no beat comes for that long. Nothing the
 * guest can read back depends on it: beats are not an input, so record/replay needs
 * nothing for them. A guest that never beats is never reset. */
#define FTVM_HEALTH_HEARTBEAT  0x00u  /* W64: one beat; the value is the guest's own */

/* ---- virtio-mmio (slots FTVM_SLOT_VIRTIO_*) ----------------------------------- */
/* Standard virtio-mmio version 2 register layout (virtio 1.2, section 4.2.2). */
#define VIRTIO_MMIO_MAGIC_VALUE         0x000u  /* 0x74726976 "virt" */
#define VIRTIO_MMIO_VERSION             0x004u  /* 2 */
#define VIRTIO_MMIO_DEVICE_ID           0x008u
#define VIRTIO_MMIO_VENDOR_ID           0x00cu
#define VIRTIO_MMIO_DEVICE_FEATURES     0x010u
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014u
#define VIRTIO_MMIO_DRIVER_FEATURES     0x020u
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024u
#define VIRTIO_MMIO_QUEUE_SEL           0x030u
#define VIRTIO_MMIO_QUEUE_NUM_MAX       0x034u
#define VIRTIO_MMIO_QUEUE_NUM           0x038u
#define VIRTIO_MMIO_QUEUE_READY         0x044u
#define VIRTIO_MMIO_QUEUE_NOTIFY        0x050u
#define VIRTIO_MMIO_INTERRUPT_STATUS    0x060u
#define VIRTIO_MMIO_INTERRUPT_ACK       0x064u
#define VIRTIO_MMIO_STATUS              0x070u
#define VIRTIO_MMIO_QUEUE_DESC_LOW      0x080u
#define VIRTIO_MMIO_QUEUE_DESC_HIGH     0x084u
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW    0x090u
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH   0x094u
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW    0x0a0u
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH   0x0a4u
#define VIRTIO_MMIO_CONFIG_GENERATION   0x0fcu
#define VIRTIO_MMIO_CONFIG              0x100u

#define VIRTIO_MMIO_MAGIC               0x74726976u
#define VIRTIO_ID_NET                   1u
#define VIRTIO_ID_BLOCK                 2u
#define FTVM_VIRTIO_VENDOR              0x4d565446u /* "FTVM" */

#define VIRTIO_STATUS_ACKNOWLEDGE       1u
#define VIRTIO_STATUS_DRIVER            2u
#define VIRTIO_STATUS_DRIVER_OK         4u
#define VIRTIO_STATUS_FEATURES_OK       8u
#define VIRTIO_STATUS_NEEDS_RESET       64u
#define VIRTIO_STATUS_FAILED            128u

/* Feature bits (bit numbers) */
#define VIRTIO_F_RING_EVENT_IDX         29u
#define VIRTIO_F_VERSION_1              32u
#define VIRTIO_BLK_F_FLUSH              9u
#define VIRTIO_NET_F_MAC                5u

#define VIRTQ_DESC_F_NEXT               1u
#define VIRTQ_DESC_F_WRITE              2u
#define FTVM_VIRTQ_MAX_SIZE             256u

struct virtq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
/* Driver area: uint16 flags, uint16 idx, uint16 ring[num], uint16 used_event.
 * Device area: uint16 flags, uint16 idx, virtq_used_elem ring[num], uint16 avail_event. */
struct virtq_used_elem {
    uint32_t id;
    uint32_t len;
};

/* The spec's event-index test (virtio 1.2, 2.7.10): should the side that published
 * `event_idx` be notified now that the other side moved its index from `old_idx` to
 * `new_idx`? Both the guest's drivers and the VMM's devices use this one. */
static inline int vring_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx) {
    return (uint16_t)(new_idx - event_idx - 1) < (uint16_t)(new_idx - old_idx);
}

/* virtio-blk request header (device-readable) + data + status byte (device-writable) */
#define VIRTIO_BLK_T_IN                 0u
#define VIRTIO_BLK_T_OUT                1u
#define VIRTIO_BLK_T_FLUSH              4u
#define VIRTIO_BLK_T_GET_ID             8u
#define VIRTIO_BLK_S_OK                 0u
#define VIRTIO_BLK_S_IOERR              1u
#define VIRTIO_BLK_S_UNSUPP             2u
#define VIRTIO_BLK_SECTOR_SIZE          512u
struct virtio_blk_req_hdr {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};
/* virtio-blk config space: uint64 capacity (in 512-byte sectors) at offset 0. */

/* virtio-net: queue 0 = receive, queue 1 = transmit. Every buffer starts with this
 * header (VIRTIO_F_VERSION_1 => 12 bytes, num_buffers present). */
struct virtio_net_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    uint16_t num_buffers;
};
/* virtio-net config space: uint8 mac[6] at offset 0. */
#define FTVM_NET_MTU                    1500u
#define FTVM_NET_MAX_FRAME              1514u

/* ---- Boot info (at FTVM_BOOTINFO_GPA, written by the loader) ------------------- */
#define FTVM_BOOTINFO_MAGIC             0x42565446u /* "FTVB" */
#define FTVM_CMDLINE_MAX                1024u

/* Entry state: 64-bit long mode, paging on (identity map of RAM and the MMIO window,
 * 2 MiB pages, user-accessible), CS=FTVM_BOOT_CS, DS/ES/SS=FTVM_BOOT_DS from the boot
 * GDT, interrupts disabled, RDI = FTVM_BOOTINFO_GPA, RSP = 0 (kernel sets its own),
 * CR0.PG|PE|MP|ET|NE|WP, CR4.PAE|OSFXSR|OSXMMEXCPT, EFER.LME|LMA|NXE. */
#define FTVM_BOOT_CS                    0x08u
#define FTVM_BOOT_DS                    0x10u

struct ftvm_bootinfo {
    uint32_t magic;
    uint32_t abi_version;
    uint64_t ram_bytes;
    uint64_t image_end;      /* first byte after the loaded image (page aligned) */
    uint32_t present_slots;  /* bit n set: a device is in MMIO slot n */
    uint32_t reserved;
    char cmdline[FTVM_CMDLINE_MAX]; /* NUL-terminated: "app=NAME key=value ..." */
};

#endif /* FTVM_VMM_ABI_FTVM_ABI_H_ */
