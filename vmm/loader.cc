#include "vmm/loader.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "common/error.h"
#include "common/hex.h"
#include "common/unique_fd.h"
#include "vmm/abi/ftvm_abi.h"

namespace ftvm::vmm {
namespace {

constexpr uint64_t kMaxImageBytes = 256ull << 20;

constexpr uint64_t kPageUp(uint64_t v) { return (v + 4095) & ~uint64_t(4095); }

}  // namespace

std::vector<uint8_t> ReadImageFile(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw SysError("guest image " + path);
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) throw SysError("guest image " + path);
  if (!S_ISREG(st.st_mode)) throw Error("guest image " + path + ": not a regular file");
  if (uint64_t(st.st_size) > kMaxImageBytes)
    throw Error("guest image " + path + ": " + std::to_string(st.st_size) + " bytes is larger than the 256 MiB limit");
  std::vector<uint8_t> data(size_t(st.st_size));
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = read(fd.get(), data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw SysError("reading guest image " + path);
    }
    if (n == 0) break;
    done += size_t(n);
  }
  data.resize(done);
  return data;
}

LoadedImage LoadElf(std::span<const uint8_t> image, const std::string& label, GuestMemory& memory) {
  auto fail = [&](const std::string& why) { return Error("guest image " + label + ": " + why); };
  if (image.size() < 4 || std::memcmp(image.data(), ELFMAG, SELFMAG) != 0)
    throw fail("not an ELF file (bad magic)");
  if (image.size() < sizeof(Elf64_Ehdr))
    throw fail("truncated ELF header (" + std::to_string(image.size()) + " bytes)");
  Elf64_Ehdr eh;
  std::memcpy(&eh, image.data(), sizeof eh);
  if (eh.e_ident[EI_CLASS] != ELFCLASS64) throw fail("not a 64-bit ELF (ELFCLASS " + std::to_string(eh.e_ident[EI_CLASS]) + ")");
  if (eh.e_ident[EI_DATA] != ELFDATA2LSB) throw fail("not little-endian");
  if (eh.e_machine != EM_X86_64) throw fail("not an x86-64 image (e_machine " + std::to_string(eh.e_machine) + ")");
  if (eh.e_type != ET_EXEC) throw fail("not a static executable (e_type " + std::to_string(eh.e_type) + "); build it with -static -no-pie");
  if (eh.e_phentsize != sizeof(Elf64_Phdr)) throw fail("unexpected program header size " + std::to_string(eh.e_phentsize));
  if (eh.e_phnum == 0) throw fail("no program headers");
  uint64_t ph_end = eh.e_phoff + uint64_t(eh.e_phnum) * sizeof(Elf64_Phdr);
  if (eh.e_phoff > image.size() || ph_end > image.size())
    throw fail("truncated: program header table ends at offset " + std::to_string(ph_end) +
               " but the file has " + std::to_string(image.size()) + " bytes");

  LoadedImage out;
  bool entry_in_exec_segment = false;
  int loaded = 0;
  for (unsigned i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    std::memcpy(&ph, image.data() + eh.e_phoff + i * sizeof(Elf64_Phdr), sizeof ph);
    if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
    std::string seg = "segment " + std::to_string(i) + " at " + Hex(ph.p_paddr);
    if (ph.p_filesz > ph.p_memsz) throw fail(seg + ": file size exceeds memory size");
    if (ph.p_vaddr != ph.p_paddr)
      throw fail(seg + ": virtual address " + Hex(ph.p_vaddr) +
                 " differs from the physical one (the boot page tables are an identity map)");
    if (ph.p_offset > image.size() || ph.p_filesz > image.size() - ph.p_offset)
      throw fail("truncated: " + seg + " needs " + std::to_string(ph.p_filesz) + " file bytes from offset " +
                 std::to_string(ph.p_offset) + " but the file has " + std::to_string(image.size()));
    if (ph.p_paddr < FTVM_KERNEL_MIN_GPA) throw fail(seg + " is below the 1 MiB load floor");
    if (!memory.contains(ph.p_paddr, ph.p_memsz))
      throw fail(seg + " (" + std::to_string(ph.p_memsz) + " bytes) does not fit in " +
                 std::to_string(memory.size() >> 20) + " MiB of guest RAM (use a larger --mem)");
    memory.write(ph.p_paddr, image.data() + ph.p_offset, ph.p_filesz);
    std::memset(memory.ptr(ph.p_paddr + ph.p_filesz, ph.p_memsz - ph.p_filesz), 0, ph.p_memsz - ph.p_filesz);
    out.image_end = std::max(out.image_end, kPageUp(ph.p_paddr + ph.p_memsz));
    if ((ph.p_flags & PF_X) && eh.e_entry >= ph.p_paddr && eh.e_entry < ph.p_paddr + ph.p_memsz)
      entry_in_exec_segment = true;
    ++loaded;
  }
  if (loaded == 0) throw fail("no loadable segments");
  if (!entry_in_exec_segment) throw fail("entry point " + Hex(eh.e_entry) + " is not inside an executable segment");
  out.boot.rip = eh.e_entry;
  return out;
}

void PrepareBoot(LoadedImage& loaded, GuestMemory& memory, const std::string& cmdline,
                 uint32_t present_slots) {
  if (cmdline.size() >= FTVM_CMDLINE_MAX)
    throw Error("guest command line is " + std::to_string(cmdline.size()) + " bytes; the limit is " +
                std::to_string(FTVM_CMDLINE_MAX - 1));
  // Boot GDT: null, 64-bit code (0x08), data (0x10). The kit installs its own.
  const uint64_t gdt[3] = {0, 0x00af9a000000ffffull, 0x00cf92000000ffffull};
  memory.write(FTVM_BOOT_GDT_GPA, gdt, sizeof gdt);

  // Identity map of the low 4 GiB with 2 MiB pages: RAM plus the MMIO window.
  // User-accessible, because the kit's apps run at ring 3 and reach devices by MMIO.
  // Accessed and Dirty are set from the start, so the CPU never writes the tables:
  // whether it does depends on what its TLB holds, which two copies of a VM (a
  // replica, a guest reset in place while the TLB kept the old walks) do not share.
  constexpr uint64_t kPresent = 1, kWritable = 2, kUser = 4, kAccessed = 0x20, kDirty = 0x40, kLarge = 0x80;
  const uint64_t pml4 = FTVM_PAGETABLE_GPA, pdpt = pml4 + 0x1000, pd0 = pdpt + 0x1000;
  std::memset(memory.ptr(FTVM_PAGETABLE_GPA, FTVM_PAGETABLE_BYTES), 0, FTVM_PAGETABLE_BYTES);
  memory.write_obj(pml4, pdpt | kPresent | kWritable | kUser | kAccessed);
  for (uint64_t g = 0; g < 4; ++g) {
    uint64_t pd = pd0 + g * 0x1000;
    memory.write_obj(pdpt + g * 8, pd | kPresent | kWritable | kUser | kAccessed);
    for (uint64_t i = 0; i < 512; ++i) {
      uint64_t addr = (g << 30) | (i << 21);
      memory.write_obj(pd + i * 8, addr | kPresent | kWritable | kUser | kAccessed | kDirty | kLarge);
    }
  }

  ftvm_bootinfo info{};
  info.magic = FTVM_BOOTINFO_MAGIC;
  info.abi_version = FTVM_ABI_VERSION;
  info.ram_bytes = memory.size();
  info.image_end = loaded.image_end;
  info.present_slots = present_slots;
  std::memcpy(info.cmdline, cmdline.data(), cmdline.size());
  memory.write_obj(FTVM_BOOTINFO_GPA, info);

  BootState& b = loaded.boot;
  b.rdi = FTVM_BOOTINFO_GPA;
  b.rsp = 0;
  b.rflags = 0x2;
  b.cr3 = pml4;
  b.cr0 = (1ull << 0) | (1ull << 1) | (1ull << 4) | (1ull << 5) | (1ull << 16) | (1ull << 31);  // PE MP ET NE WP PG
  b.cr4 = (1ull << 5) | (1ull << 9) | (1ull << 10);                               // PAE OSFXSR OSXMMEXCPT
  b.efer = (1ull << 8) | (1ull << 10) | (1ull << 11);                             // LME LMA NXE
  b.gdt_base = FTVM_BOOT_GDT_GPA;
  b.gdt_limit = sizeof gdt - 1;
  b.code_selector = FTVM_BOOT_CS;
  b.data_selector = FTVM_BOOT_DS;
}

}  // namespace ftvm::vmm
