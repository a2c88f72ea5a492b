// Interrupt entry stubs.
//
// Ring 0 is emulated instruction by instruction under PVM (~1000x slower), so an
// interrupt does the least possible: count it and return. Ring 3 watches the
// counters (per line, and a total that waiters snapshot). Exceptions are fatal: they save state and call the ring-0 reporter.
#include "guest/kernel/kernel.h"
    .section .ktext, "ax"
    .code64

.macro IRQ line
    .balign 16
irq_stub_\line:
    lock incq ftvm_irq_count + 8 * \line (%rip)
    lock incq ftvm_irq_total(%rip)
    iretq
.endm

// Vectors that push an error code: 8, 10-14, 17, 21, 29, 30.
.macro EXC vec
    .balign 16
exc_stub_\vec:
    .if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
    pushq   $0
    .endif
    pushq   $\vec
    jmp     exc_common
.endm

// One stub per vector (written out: no .altmacro tricks).
    EXC 0
    EXC 1
    EXC 2
    // #BP, from int3 (DPL3: the one `int` ring 3 can use under PVM). With RAX =
    // FTVM_GUEST_HANG_KERNEL_MAGIC it is the hang app's hung kernel: spin here, at
    // ring 0 with interrupts off (the gate cleared IF), never returning and never
    // exiting to the VMM. Two instructions on the way to the fatal report otherwise.
    .balign 16
exc_stub_3:
    cmpq    $FTVM_GUEST_HANG_KERNEL_MAGIC, %rax
    jne     1f
2:  cli
    pause
    jmp     2b
1:  pushq   $0
    pushq   $3
    jmp     exc_common
    EXC 4
    EXC 5
    EXC 6
    EXC 7
    EXC 8
    EXC 9
    EXC 10
    EXC 11
    EXC 12
    EXC 13
    EXC 14
    EXC 15
    EXC 16
    EXC 17
    EXC 18
    EXC 19
    EXC 20
    EXC 21
    EXC 22
    EXC 23
    EXC 24
    EXC 25
    EXC 26
    EXC 27
    EXC 28
    EXC 29
    EXC 30
    EXC 31
    IRQ 0
    IRQ 1
    IRQ 2
    IRQ 3
    IRQ 4
    IRQ 5
    IRQ 6
    IRQ 7
    IRQ 8
    IRQ 9
    IRQ 10
    IRQ 11
    IRQ 12
    IRQ 13
    IRQ 14
    IRQ 15
    IRQ 16
    IRQ 17
    IRQ 18
    IRQ 19
    IRQ 20
    IRQ 21
    IRQ 22
    IRQ 23
    IRQ 24
    IRQ 25
    IRQ 26
    IRQ 27
    IRQ 28
    IRQ 29
    IRQ 30
    IRQ 31

// Frame handed to exception_report (struct ExceptionFrame in idt.cc):
// r15..rax, vector, error, rip, cs, rflags, rsp, ss.
exc_common:
    cld
    pushq   %rax
    pushq   %rbx
    pushq   %rcx
    pushq   %rdx
    pushq   %rsi
    pushq   %rdi
    pushq   %rbp
    pushq   %r8
    pushq   %r9
    pushq   %r10
    pushq   %r11
    pushq   %r12
    pushq   %r13
    pushq   %r14
    pushq   %r15
    mov     %rsp, %rdi
    and     $-16, %rsp
    call    exception_report
1:  cli
    hlt
    jmp     1b

    .section .rodata
    .balign 8
    .globl  ftvm_exc_stubs
ftvm_exc_stubs:
    .quad   exc_stub_0
    .quad   exc_stub_1
    .quad   exc_stub_2
    .quad   exc_stub_3
    .quad   exc_stub_4
    .quad   exc_stub_5
    .quad   exc_stub_6
    .quad   exc_stub_7
    .quad   exc_stub_8
    .quad   exc_stub_9
    .quad   exc_stub_10
    .quad   exc_stub_11
    .quad   exc_stub_12
    .quad   exc_stub_13
    .quad   exc_stub_14
    .quad   exc_stub_15
    .quad   exc_stub_16
    .quad   exc_stub_17
    .quad   exc_stub_18
    .quad   exc_stub_19
    .quad   exc_stub_20
    .quad   exc_stub_21
    .quad   exc_stub_22
    .quad   exc_stub_23
    .quad   exc_stub_24
    .quad   exc_stub_25
    .quad   exc_stub_26
    .quad   exc_stub_27
    .quad   exc_stub_28
    .quad   exc_stub_29
    .quad   exc_stub_30
    .quad   exc_stub_31
    .globl  ftvm_irq_stubs
ftvm_irq_stubs:
    .quad   irq_stub_0
    .quad   irq_stub_1
    .quad   irq_stub_2
    .quad   irq_stub_3
    .quad   irq_stub_4
    .quad   irq_stub_5
    .quad   irq_stub_6
    .quad   irq_stub_7
    .quad   irq_stub_8
    .quad   irq_stub_9
    .quad   irq_stub_10
    .quad   irq_stub_11
    .quad   irq_stub_12
    .quad   irq_stub_13
    .quad   irq_stub_14
    .quad   irq_stub_15
    .quad   irq_stub_16
    .quad   irq_stub_17
    .quad   irq_stub_18
    .quad   irq_stub_19
    .quad   irq_stub_20
    .quad   irq_stub_21
    .quad   irq_stub_22
    .quad   irq_stub_23
    .quad   irq_stub_24
    .quad   irq_stub_25
    .quad   irq_stub_26
    .quad   irq_stub_27
    .quad   irq_stub_28
    .quad   irq_stub_29
    .quad   irq_stub_30
    .quad   irq_stub_31

    .section .note.GNU-stack, "", @progbits
