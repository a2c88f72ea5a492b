/* A minimal guest for VMM unit tests: ring-0 only, no kit. It prints through both
 * console paths, reads the clock, takes one timer interrupt through its own IDT and
 * powers off with code 42. Exercises loader entry state, MMIO (8-byte and 4-byte),
 * port I/O, interrupt injection and IRETQ on whichever backend runs it. It idles
 * with WAIT_IF: a plain WAIT would sleep forever if the timer fired before it. */
.code64
.globl _start
_start:
  lea stack_top(%rip), %rsp
  mov $0xe9, %dx            /* port console: 'P' */
  mov $'P', %al
  outb %al, %dx
  mov $0xd0000000, %rsi     /* MMIO console putc: 'M' */
  movq $'M', (%rsi)
  lea iov(%rip), %rax       /* console WRITE_IOV: "ok\n" */
  lea msg(%rip), %rbx
  mov %rbx, (%rax)
  movq $3, 8(%rax)
  mov %rax, 8(%rsi)
  mov $0xd0001000, %rsi     /* clock: must be non-decreasing */
  movq (%rsi), %r8
  movq (%rsi), %r9
  cmp %r8, %r9
  jb fail
  /* IDT with one gate: vector 32 (timer line 0) -> tick */
  lea idt(%rip), %rdi
  lea tick(%rip), %rax
  mov %ax, 32*16(%rdi)
  movw $0x08, 32*16+2(%rdi)
  movw $0x8e00, 32*16+4(%rdi)
  shr $16, %rax
  mov %ax, 32*16+6(%rdi)
  shr $16, %rax
  mov %eax, 32*16+8(%rdi)
  lidt idtr(%rip)
  mov $0xd0002000, %rsi     /* timer: fire after 1 ms */
  movq $1000000, (%rsi)
  sti
  mov $0xd0004000, %rsi     /* irq WAIT_IF 0: block unless an interrupt came already */
  movq $0, 0x28(%rsi)       /* (a slow host may fire the 1 ms timer before this exit) */
2:
  cmpq $0, ticks(%rip)      /* the interrupt is injected before the next exit */
  je 2b
  mov $0xd0002000, %rsi
  movq 8(%rsi), %rax        /* FIRED must be 1 */
  cmp $1, %rax
  jne fail
  mov $0xd0005000, %rsi
  movl $42, (%rsi)
3: jmp 3b
fail:
  mov $0xf4, %dx
  mov $99, %al
  outb %al, %dx
4: jmp 4b

tick:
  incq ticks(%rip)
  iretq

.data
.align 16
msg: .ascii "ok\n"
.align 16
iov: .quad 0, 0
ticks: .quad 0
idtr: .word 256*16-1
      .quad idt
.align 16
idt: .fill 256*16, 1, 0
.align 16
stack: .fill 4096, 1, 0
stack_top:
