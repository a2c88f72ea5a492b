// Boot entry. The loader enters here in 64-bit mode with interrupts off,
// RDI = boot info GPA and RSP = 0 (see vmm/abi/ftvm_abi.h).
    .section .ktext.entry, "ax"
    .code64
    .globl _start
_start:
    lea     ftvm_kstack_top(%rip), %rsp
    mov     %rdi, %r12
    // Zero .bss (8-byte aligned both ends, see link.ld). Stacks are outside it.
    lea     __bss_start(%rip), %rdi
    lea     __bss_end(%rip), %rcx
    sub     %rdi, %rcx
    shr     $3, %rcx
    xor     %eax, %eax
    cld
    rep stosq
    mov     %r12, %rdi
    call    kmain
1:  cli
    hlt
    jmp     1b

// enter_user(rip, rsp, arg): iretq to ring 3 with interrupts enabled.
    .globl  enter_user
enter_user:
    mov     $0x1b, %eax          // user data selector (GDT index 3, RPL 3)
    mov     %eax, %ds
    mov     %eax, %es
    pushq   $0x1b                // SS
    pushq   %rsi                 // RSP
    pushq   $0x202               // RFLAGS: IF=1, IOPL=0
    pushq   $0x23                // CS: user code (GDT index 4, RPL 3)
    pushq   %rdi                 // RIP
    mov     %rdx, %rdi
    iretq

// load_gdt(gdtr*, tss_selector): switch to our GDT, reload segments, load TR.
    .globl  load_gdt
load_gdt:
    lgdt    (%rdi)
    pushq   $0x08
    lea     1f(%rip), %rax
    pushq   %rax
    lretq
1:  mov     $0x10, %eax
    mov     %eax, %ds
    mov     %eax, %es
    mov     %eax, %ss
    xor     %eax, %eax
    mov     %eax, %fs
    mov     %eax, %gs
    ltr     %si
    ret

    .section .stack, "aw", @nobits
    .balign 4096
    .space  16384
    .globl  ftvm_kstack_top
ftvm_kstack_top:
    .space  4096
    .globl  ftvm_dfstack_top
ftvm_dfstack_top:

    .section .note.GNU-stack, "", @progbits
