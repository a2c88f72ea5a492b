// First ring-3 instructions (kmain irets here with RDI = boot info): run the app
// and power off with its exit code. Lives in .text, not .ktext: this is ring 3.
    .text
    .code64
    .globl  ftvm_user_entry
ftvm_user_entry:
    xor     %ebp, %ebp
    call    ftvm_user_main
    mov     %eax, %edi
    call    ftvm_user_exit
    ud2

    // The ring-3 stack (not zeroed at boot: see link.ld).
    .section .stack, "aw", @nobits
    .balign 4096
    .space  262144
    .globl  ftvm_ustack_top
ftvm_ustack_top:

    .section .note.GNU-stack, "", @progbits
