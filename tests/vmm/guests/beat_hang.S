/* A guest for the health tests: ring 0 only, no kit. It counts its boots in RAM
 * and prints "B<count>\n" ("B1" on every boot when a reset really restores RAM),
 * beats once through the health device and then hangs: a spin without a single
 * exit, which only a guest reset (or a stop) ends. */
.code64
.globl _start
_start:
  lea stack_top(%rip), %rsp
  mov $0xd0000000, %rsi     /* MMIO console putc */
  movq $'B', (%rsi)
  incq boots(%rip)
  mov boots(%rip), %rax
  add $'0', %rax
  mov %rax, (%rsi)
  movq $'\n', (%rsi)
  mov $0xd0008000, %rsi     /* health HEARTBEAT: the first beat makes it watched */
  movq $1, (%rsi)
1:
  pause
  jmp 1b

.data
.align 16
boots: .quad 0
stack: .fill 4096, 1, 0
stack_top:
