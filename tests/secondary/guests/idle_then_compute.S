/* A guest for the wait-cut test: ring 0, no kit. It arms its timer for 60 s, prints
 * 'w' and idles in FTVM_IRQ_WAIT_IF. Only the VMM can end that wait early (for a
 * boundary task). Once it returns, a tick must not have come: the guest prints 'c',
 * computes for a while without exits (a task then reaches it by a kick) and
 * powers off with code 42. A tick before that is a failure (power off 99). */
.code64
.globl _start
_start:
  lea stack_top(%rip), %rsp
  lea idt(%rip), %rdi       /* IDT with one gate: vector 32 (timer line 0) -> tick */
  lea tick(%rip), %rax
  mov %ax, 32*16(%rdi)
  movw $0x08, 32*16+2(%rdi)
  movw $0x8e00, 32*16+4(%rdi)
  shr $16, %rax
  mov %ax, 32*16+6(%rdi)
  shr $16, %rax
  mov %eax, 32*16+8(%rdi)
  lidt idtr(%rip)
  mov $0xd0002000, %rsi     /* timer: fire after 60 s */
  movabs $60000000000, %rax
  mov %rax, (%rsi)
  sti
  mov $0xd0000000, %rsi     /* console putc 'w': about to idle */
  movq $'w', (%rsi)
  mov $0xd0004000, %rsi     /* irq WAIT_IF 0: no interrupt came, so it blocks */
  movq $0, 0x28(%rsi)
  cmpq $0, ticks(%rip)
  jne fail
  mov $0xd0000000, %rsi     /* 'c': the wait ended without a tick */
  movq $'c', (%rsi)
  mov $400000000, %rcx      /* compute, no exits */
1:
  dec %rcx
  jnz 1b
  cmpq $0, ticks(%rip)
  jne fail
  mov $0xd0005000, %rsi
  movl $42, (%rsi)
3: jmp 3b
fail:
  mov $0xd0005000, %rsi
  movl $99, (%rsi)
4: jmp 4b

tick:
  incq ticks(%rip)
  iretq

.data
.align 16
ticks: .quad 0
idtr: .word 256*16-1
      .quad idt
.align 16
idt: .fill 256*16, 1, 0
.align 16
stack: .fill 4096, 1, 0
stack_top:
