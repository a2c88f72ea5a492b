/* Exit-cost benchmark guest, ring 0 only. Times N port-I/O exits and N MMIO exits
 * with the clock device and prints "ring0 pio_ns=<total> mmio_ns=<total> n=<N>".
 * N comes from nowhere but this file: the bench divides by it. */
.code64
.set N, 20000
.globl _start
_start:
  lea stack_top(%rip), %rsp
  mov $0xd0001000, %r12       /* clock */
  mov $0xd0003000, %r13       /* rng: DATA read is a cheap MMIO exit */

  mov (%r12), %r14            /* t0 */
  mov $N, %ecx
  mov $0x80, %dx              /* unassigned port: the cheapest port exit */
1: outb %al, %dx
  dec %ecx
  jnz 1b
  mov (%r12), %r15            /* t1 */
  sub %r14, %r15
  mov %r15, pio_ns(%rip)

  mov (%r12), %r14
  mov $N, %ecx
2: mov 0x40(%r13), %rax       /* an undefined register of the rng: no side effect */
  dec %ecx
  jnz 2b
  mov (%r12), %r15
  sub %r14, %r15
  mov %r15, mmio_ns(%rip)

  /* print "ring0 pio_ns=X mmio_ns=Y n=N\n" through the port console */
  lea s_pio(%rip), %rsi
  call puts
  mov pio_ns(%rip), %rax
  call putu
  lea s_mmio(%rip), %rsi
  call puts
  mov mmio_ns(%rip), %rax
  call putu
  lea s_n(%rip), %rsi
  call puts
  mov $N, %rax
  call putu
  mov $'\n', %al
  mov $0xe9, %dx
  outb %al, %dx
  mov $0xf4, %dx
  xor %eax, %eax
  outb %al, %dx
3: jmp 3b

puts:                          /* rsi = NUL-terminated string */
  mov $0xe9, %dx
4: lodsb
  test %al, %al
  jz 5f
  outb %al, %dx
  jmp 4b
5: ret

putu:                          /* rax = unsigned value, decimal */
  lea numbuf_end(%rip), %rdi
  mov $10, %rbx
6: xor %edx, %edx
  div %rbx
  add $'0', %dl
  dec %rdi
  mov %dl, (%rdi)
  test %rax, %rax
  jnz 6b
  mov %rdi, %rsi
  lea numbuf_end(%rip), %rcx
  mov $0xe9, %dx
7: cmp %rcx, %rsi
  je 8f
  lodsb
  outb %al, %dx
  jmp 7b
8: ret

.data
s_pio: .asciz "ring0 pio_ns="
s_mmio: .asciz " mmio_ns="
s_n: .asciz " n="
.align 8
pio_ns: .quad 0
mmio_ns: .quad 0
numbuf: .fill 24, 1, 0
numbuf_end:
.align 16
stack: .fill 4096, 1, 0
stack_top:
