/* A guest for the health tests: ring 0 only, no kit. It prints "B\n" (one line per
 * boot), beats once through the health device and then hangs: a spin without a
 * single exit, which only a guest reset (or a stop) ends. */
.code64
.globl _start
_start:
  lea stack_top(%rip), %rsp
  mov $0xd0000000, %rsi     /* MMIO console putc */
  movq $'B', (%rsi)
  movq $'\n', (%rsi)
  mov $0xd0008000, %rsi     /* health HEARTBEAT: the first beat makes it watched */
  movq $1, (%rsi)
1:
  pause
  jmp 1b

.data
.align 16
stack: .fill 4096, 1, 0
stack_top:
