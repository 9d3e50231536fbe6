//! PVH entry: the 32-bit start code, GDT, identity page tables (first 4 GiB, 2 MiB pages,
//! laid out by the assembler),
//! the switch to long mode, the stack, the exception vectors, and the ELF note
//! (`XEN_ELFNOTE_PHYS32_ENTRY`) that makes the ELF bootable through PVH.
//!
//! Also the application-processor trampoline for the `smp` check: 16-bit real-mode code
//! the BSP copies below 1 MiB and starts with INIT-SIPI-SIPI; each AP switches to long
//! mode on the BSP's page tables, increments `BULKHEAD_AP_COUNT` and halts.
//!
//! On entry (PVH ABI): 32-bit protected mode, paging off, flat segments, `EBX` = guest
//! physical address of `hvm_start_info`. The code keeps `EBX` untouched and passes it to
//! `guest_main` as its first argument. SSE is switched on (CR0.MP, CR4.OSFXSR/OSXMMEXCPT,
//! CR0.EM off) because the compiler targets x86_64-linux, which assumes SSE2.
//! No instruction that kvm_pvm cannot emulate is used (no xsave, cmpxchg16b, int3, clac/stac).

use core::arch::global_asm;

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long pvh_start
    .balign 4

    .section .data.pvh_gdt, "aw", @progbits
    .balign 16
pvh_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
pvh_gdt_end:
    .balign 4
pvh_gdt_ptr:
    .word pvh_gdt_end - pvh_gdt - 1
    .long pvh_gdt
    .balign 8
pvh_idt_ptr:
    .word 32 * 16 - 1
    .quad pvh_idt

    # Identity page tables for the first 4 GiB with 2 MiB pages, built by the
    # assembler rather than by a loop at boot: on kvm_pvm every guest
    # instruction before long mode is emulated (about 1 us each), and filling
    # 2048 entries took about 5000 of them. 0-3 GiB write-back; the 4th GiB
    # (MMIO, APICs) with PCD|PWT.
    .section .data.pvh_pt, "aw", @progbits
    .balign 4096
pvh_pml4:
    .quad pvh_pdpt + 3
    .fill 511, 8, 0
pvh_pdpt:
    .quad pvh_pd + 3
    .quad pvh_pd + 0x1000 + 3
    .quad pvh_pd + 0x2000 + 3
    .quad pvh_pd + 0x3000 + 3
    .fill 508, 8, 0
pvh_pd:
    .set pvh_pd_page, 0
    .rept 1536
    .quad pvh_pd_page | 0x83
    .set pvh_pd_page, pvh_pd_page + 0x200000
    .endr
    .rept 512
    .quad pvh_pd_page | 0x9b
    .set pvh_pd_page, pvh_pd_page + 0x200000
    .endr

    .section .bss.pvh, "aw", @nobits
    .balign 4096
pvh_idt:
    .skip 32 * 16

    .section .noinit.stack, "aw", @nobits
    .balign 4096
pvh_stack:
    .skip 131072
pvh_stack_top:

    .section .text.pvh_start, "ax", @progbits
    .code32
    .globl pvh_start
pvh_start:
    cli
    cld
    lgdt pvh_gdt_ptr
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs

    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl

    movl %cr4, %eax
    orl $0x620, %eax
    movl %eax, %cr4
    movl $pvh_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    andl $0xfffffffb, %eax
    orl $0x80000003, %eax
    movl %eax, %cr0
    ljmp $0x10, $pvh_long

    .code64
pvh_long:
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $pvh_stack_top, %esp

    leaq pvh_idt(%rip), %rdi
    leaq pvh_isr_table(%rip), %rsi
    movl $32, %ecx
.Lpvh_idt_loop:
    movq (%rsi), %rax
    movw %ax, (%rdi)
    movw $0x10, 2(%rdi)
    movw $0x8e00, 4(%rdi)
    shrq $16, %rax
    movw %ax, 6(%rdi)
    shrq $16, %rax
    movl %eax, 8(%rdi)
    movl $0, 12(%rdi)
    addq $8, %rsi
    addq $16, %rdi
    decl %ecx
    jnz .Lpvh_idt_loop
    lidt pvh_idt_ptr(%rip)

    movl %ebx, %edi
    call guest_main
.Lpvh_hang:
    cli
    hlt
    jmp .Lpvh_hang

    .macro PVH_ISR_NOERR n
pvh_isr\n:
    pushq $0
    pushq $\n
    jmp pvh_isr_common
    .endm
    .macro PVH_ISR_ERR n
pvh_isr\n:
    pushq $\n
    jmp pvh_isr_common
    .endm

    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    PVH_ISR_NOERR \n
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
    PVH_ISR_ERR \n
    .endr

pvh_isr_common:
    movq %rsp, %rdi
    andq $-16, %rsp
    call guest_exception
.Lpvh_isr_hang:
    cli
    hlt
    jmp .Lpvh_isr_hang

pvh_ap_long:
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    lock incl BULKHEAD_AP_COUNT(%rip)
.Lpvh_ap_hang:
    cli
    hlt
    jmp .Lpvh_ap_hang

    # Copied to a page below 1 MiB and entered by SIPI in real mode with
    # CS = page >> 4, IP = 0. Position independent: the far-jump target is computed
    # from CS at run time; everything else it names lives in the main image.
    .section .rodata.pvh_ap_tramp, "a", @progbits
    .balign 16
    .globl pvh_ap_tramp_start
    .globl pvh_ap_tramp_end
pvh_ap_tramp_start:
    .code16
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    movzwl %ax, %ebx
    shll $4, %ebx                     # ebx = trampoline base
    leal (.Lap_pm - pvh_ap_tramp_start)(%ebx), %eax
    movl %eax, (.Lap_far - pvh_ap_tramp_start)
    lgdtl (.Lap_gdt_ptr - pvh_ap_tramp_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl *(.Lap_far - pvh_ap_tramp_start)
    .code32
.Lap_pm:
    movw $0x18, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $pvh_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ljmp $0x10, $pvh_ap_long
    .balign 4
.Lap_far:
    .long 0
    .word 0x08
    .balign 4
.Lap_gdt_ptr:
    .word pvh_gdt_end - pvh_gdt - 1
    .long pvh_gdt
pvh_ap_tramp_end:
    .code64

    .section .rodata.pvh_isr_table, "a", @progbits
    .balign 8
pvh_isr_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad pvh_isr\n
    .endr

    .text
"#,
    options(att_syntax)
);
