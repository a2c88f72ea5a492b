#include "vmm/loader.h"

#include <elf.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "common/error.h"
#include "vmm/abi/ftvm_abi.h"

namespace ftvm::vmm {
namespace {

// A well-formed one-segment ELF64 executable: code at 1 MiB, entry inside it.
std::vector<uint8_t> MakeElf(uint64_t paddr = 0x100000, uint64_t filesz = 16, uint64_t memsz = 64) {
  std::vector<uint8_t> img(sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr) + filesz, 0);
  Elf64_Ehdr eh{};
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_ident[EI_VERSION] = EV_CURRENT;
  eh.e_type = ET_EXEC;
  eh.e_machine = EM_X86_64;
  eh.e_version = EV_CURRENT;
  eh.e_entry = paddr;
  eh.e_phoff = sizeof(Elf64_Ehdr);
  eh.e_ehsize = sizeof(Elf64_Ehdr);
  eh.e_phentsize = sizeof(Elf64_Phdr);
  eh.e_phnum = 1;
  Elf64_Phdr ph{};
  ph.p_type = PT_LOAD;
  ph.p_flags = PF_R | PF_X;
  ph.p_offset = sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr);
  ph.p_vaddr = ph.p_paddr = paddr;
  ph.p_filesz = filesz;
  ph.p_memsz = memsz;
  std::memcpy(img.data(), &eh, sizeof eh);
  std::memcpy(img.data() + sizeof eh, &ph, sizeof ph);
  for (uint64_t i = 0; i < filesz; ++i) img[ph.p_offset + i] = uint8_t(0x90 + i);
  return img;
}

Elf64_Ehdr& Header(std::vector<uint8_t>& img) { return *reinterpret_cast<Elf64_Ehdr*>(img.data()); }
Elf64_Phdr& Phdr(std::vector<uint8_t>& img) {
  return *reinterpret_cast<Elf64_Phdr*>(img.data() + sizeof(Elf64_Ehdr));
}

std::string LoadError(const std::vector<uint8_t>& img, uint64_t mem = 16 << 20) {
  GuestMemory m = GuestMemory::Create(mem);
  try {
    LoadElf(img, "img", m);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Loader, LoadsSegmentsAndZeroesBss) {
  GuestMemory m = GuestMemory::Create(16 << 20);
  std::memset(m.ptr(0x100000, 64), 0xaa, 64);
  auto img = MakeElf();
  LoadedImage li = LoadElf(img, "img", m);
  EXPECT_EQ(li.boot.rip, 0x100000u);
  EXPECT_EQ(li.image_end, 0x101000u);
  EXPECT_EQ(*m.ptr(0x100000, 1), 0x90);
  EXPECT_EQ(*m.ptr(0x10000f, 1), 0x9f);
  EXPECT_EQ(*m.ptr(0x100010, 1), 0);  // bss zeroed
  EXPECT_EQ(*m.ptr(0x10003f, 1), 0);
}

TEST(Loader, RejectsNonElf) {
  std::vector<uint8_t> img = {'#', '!', '/', 'b', 'i', 'n'};
  EXPECT_NE(LoadError(img).find("not an ELF file"), std::string::npos);
  EXPECT_NE(LoadError({}).find("not an ELF file"), std::string::npos);
}

TEST(Loader, RejectsTruncatedHeader) {
  auto img = MakeElf();
  img.resize(20);
  EXPECT_NE(LoadError(img).find("truncated ELF header"), std::string::npos);
}

TEST(Loader, RejectsTruncatedProgramHeaders) {
  auto img = MakeElf();
  img.resize(sizeof(Elf64_Ehdr) + 10);
  EXPECT_NE(LoadError(img).find("truncated: program header table"), std::string::npos);
}

TEST(Loader, RejectsTruncatedSegment) {
  auto img = MakeElf();
  img.resize(img.size() - 4);
  EXPECT_NE(LoadError(img).find("truncated: segment 0"), std::string::npos);
}

TEST(Loader, RejectsWrongClassAndMachine) {
  auto img = MakeElf();
  Header(img).e_ident[EI_CLASS] = ELFCLASS32;
  EXPECT_NE(LoadError(img).find("not a 64-bit ELF"), std::string::npos);
  img = MakeElf();
  Header(img).e_machine = EM_AARCH64;
  EXPECT_NE(LoadError(img).find("not an x86-64 image"), std::string::npos);
  img = MakeElf();
  Header(img).e_type = ET_DYN;
  EXPECT_NE(LoadError(img).find("not a static executable"), std::string::npos);
}

TEST(Loader, RejectsSegmentOutsideRam) {
  auto img = MakeElf(0x100000, 16, 32ull << 20);
  EXPECT_NE(LoadError(img).find("does not fit in 16 MiB of guest RAM"), std::string::npos);
  img = MakeElf(0x80000);
  EXPECT_NE(LoadError(img).find("below the 1 MiB load floor"), std::string::npos);
  img = MakeElf(~0ull - 8);
  EXPECT_FALSE(LoadError(img).empty());  // address overflow is caught, not wrapped
}

TEST(Loader, RejectsEntryOutsideCode) {
  auto img = MakeElf();
  Header(img).e_entry = 0x200000;
  EXPECT_NE(LoadError(img).find("entry point 0x200000"), std::string::npos);
  img = MakeElf();
  Phdr(img).p_flags = PF_R;  // not executable
  EXPECT_NE(LoadError(img).find("not inside an executable segment"), std::string::npos);
}

TEST(Loader, RejectsVirtualAddressOtherThanPhysical) {
  auto img = MakeElf();
  Phdr(img).p_vaddr = 0xffffffff80100000ull;  // a higher-half kernel
  EXPECT_NE(LoadError(img).find("differs from the physical one"), std::string::npos);
}

TEST(Loader, RejectsFileSizeLargerThanMemSize) {
  auto img = MakeElf(0x100000, 16, 8);
  EXPECT_NE(LoadError(img).find("file size exceeds memory size"), std::string::npos);
}

TEST(Loader, PrepareBootWritesBootInfoAndIdentityMap) {
  GuestMemory m = GuestMemory::Create(16 << 20);
  auto img = MakeElf();
  LoadedImage li = LoadElf(img, "img", m);
  PrepareBoot(li, m, "app=compute iters=5", 0x3f);
  ftvm_bootinfo info{};
  ASSERT_TRUE(m.read_obj(FTVM_BOOTINFO_GPA, info));
  EXPECT_EQ(info.magic, FTVM_BOOTINFO_MAGIC);
  EXPECT_EQ(info.abi_version, FTVM_ABI_VERSION);
  EXPECT_EQ(info.ram_bytes, 16u << 20);
  EXPECT_EQ(info.present_slots, 0x3fu);
  EXPECT_STREQ(info.cmdline, "app=compute iters=5");
  EXPECT_EQ(li.boot.rdi, FTVM_BOOTINFO_GPA);
  EXPECT_EQ(li.boot.cr3, FTVM_PAGETABLE_GPA);
  // The MMIO window is mapped: walk PML4 -> PDPT[3] -> PD entry for 0xd0000000.
  uint64_t pml4e = 0, pdpte = 0, pde = 0;
  m.read_obj(FTVM_PAGETABLE_GPA, pml4e);
  m.read_obj((pml4e & ~0xfffull) + 3 * 8, pdpte);
  m.read_obj((pdpte & ~0xfffull) + ((FTVM_MMIO_BASE >> 21) & 511) * 8, pde);
  EXPECT_EQ(pde & ~0xfffull, FTVM_MMIO_BASE);
  EXPECT_EQ(pde & 0x87, 0x87u);  // present, writable, user, 2 MiB
}

TEST(Loader, RejectsOverlongCommandLine) {
  GuestMemory m = GuestMemory::Create(16 << 20);
  auto img = MakeElf();
  LoadedImage li = LoadElf(img, "img", m);
  EXPECT_THROW(PrepareBoot(li, m, std::string(FTVM_CMDLINE_MAX, 'x'), 0), Error);
}

TEST(Loader, ReadImageFileNamesMissingFile) {
  try {
    ReadImageFile("/nonexistent/guest.elf");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/guest.elf: No such file"), std::string::npos);
  }
}

}  // namespace
}  // namespace ftvm::vmm
