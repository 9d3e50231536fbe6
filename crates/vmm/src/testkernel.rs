//! Tiny hand-assembled PVH kernels for tests of the monitor itself: a
//! 64-bit ELF with a `XEN_ELFNOTE_PHYS32_ENTRY` note whose 32-bit code prints
//! a message on COM1 and then ends the VM in a chosen way. No toolchain is
//! needed to build them, so unit tests can boot real VMs anywhere KVM exists.

/// How the test kernel ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Write SLP_EN | SLP_TYP=5 to the ACPI sleep control register.
    PowerOff,
    /// Write 0xFE to the i8042 command port.
    I8042Reset,
    /// Halt forever (the test stops it through the control socket).
    Halt,
    /// Print '.' forever (for pause/snapshot/restore tests: a restored VM
    /// continues the loop without printing the message again).
    Dots,
    /// Echo every byte received on COM1 back to it, forever (polling LSR.DR).
    Echo,
}

/// Bytes of code before the message.
const CODE_SLOT: usize = 64;

const LOAD: u32 = 0x10_0000;
const CODE_OFFSET: usize = 0x100;

fn code(msg: &[u8], ending: Ending) -> Vec<u8> {
    let msg_addr = LOAD + CODE_SLOT as u32;
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    c.push(0xbe); // mov esi, msg
    c.extend_from_slice(&msg_addr.to_le_bytes());
    c.extend_from_slice(&[
        0xac, // 9: lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz +3 (done at 17)
        0xee, // out dx, al
        0xeb, 0xf8, // jmp 9
    ]);
    match ending {
        Ending::PowerOff => c.extend_from_slice(&[0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee]),
        Ending::I8042Reset => c.extend_from_slice(&[0x66, 0xba, 0x64, 0x00, 0xb0, 0xfe, 0xee]),
        Ending::Halt => {}
        Ending::Dots => c.extend_from_slice(&[0xb0, b'.', 0xee, 0xeb, 0xfb]), // mov al,'.'; out; jmp
        Ending::Echo => c.extend_from_slice(&[
            0x66, 0xba, 0xfd, 0x03, // L: mov dx, 0x3fd (LSR)
            0xec, // in al, dx
            0xa8, 0x01, // test al, 1 (data ready)
            0x74, 0xf7, // jz L
            0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
            0xec, // in al, dx (RBR)
            0xee, // out dx, al (THR)
            0xeb, 0xef, // jmp L
        ]),
    }
    c.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    assert!(c.len() <= CODE_SLOT, "test kernel code outgrew its slot");
    c.resize(CODE_SLOT, 0x90);
    c.extend_from_slice(msg);
    c.push(0);
    c
}

/// 32-bit code that enables SSE (CR4.OSFXSR, CR0.MP, clears EM/TS), runs
/// `movd xmm0, eax` and `paddq xmm0, xmm0`, prints the low byte of xmm0
/// ('A' + 'A' = 0x82) on COM1 and powers off. kvm_pvm cannot run SSE.
pub fn sse_probe() -> Vec<u8> {
    let mut c = vec![
        0x0f, 0x20, 0xc0, // mov eax, cr0
        0x25, 0xf3, 0xff, 0xff, 0xff, // and eax, ~(EM|TS)
        0x0d, 0x22, 0x00, 0x00, 0x00, // or eax, MP|NE
        0x0f, 0x22, 0xc0, // mov cr0, eax
        0x0f, 0x20, 0xe0, // mov eax, cr4
        0x0d, 0x00, 0x06, 0x00, 0x00, // or eax, OSFXSR|OSXMMEXCPT
        0x0f, 0x22, 0xe0, // mov cr4, eax
        0xb8, 0x41, 0x00, 0x00, 0x00, // mov eax, 'A'
        0x66, 0x0f, 0x6e, 0xc0, // movd xmm0, eax
        0x66, 0x0f, 0xd4, 0xc0, // paddq xmm0, xmm0
        0x66, 0x0f, 0x7e, 0xc1, // movd ecx, xmm0
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0x88, 0xc8, // mov al, cl
        0xee, // out dx, al
    ];
    c.extend_from_slice(&[0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4]);
    elf(&c)
}

/// The ELF image.
pub fn pvh_elf(msg: &[u8], ending: Ending) -> Vec<u8> {
    elf(&code(msg, ending))
}

fn elf(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    // ELF header.
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]);
    f.extend_from_slice(&[0u8; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&u64::from(LOAD).to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    let phdr = |f: &mut Vec<u8>, ty: u32, off: u64, paddr: u64, size: u64| {
        f.extend_from_slice(&ty.to_le_bytes());
        f.extend_from_slice(&5u32.to_le_bytes()); // R+X
        f.extend_from_slice(&off.to_le_bytes());
        f.extend_from_slice(&paddr.to_le_bytes());
        f.extend_from_slice(&paddr.to_le_bytes());
        f.extend_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&4u64.to_le_bytes());
    };
    let note_off = 64 + 2 * 56;
    phdr(
        &mut f,
        1,
        CODE_OFFSET as u64,
        u64::from(LOAD),
        body.len() as u64,
    ); // PT_LOAD
    phdr(&mut f, 4, note_off as u64, 0, 20); // PT_NOTE
                                             // Note: namesz 4 ("Xen\0"), descsz 4, type 18 (PHYS32_ENTRY), entry.
    f.extend_from_slice(&4u32.to_le_bytes());
    f.extend_from_slice(&4u32.to_le_bytes());
    f.extend_from_slice(&18u32.to_le_bytes());
    f.extend_from_slice(b"Xen\0");
    f.extend_from_slice(&LOAD.to_le_bytes());
    f.resize(CODE_OFFSET, 0);
    f.extend_from_slice(body);
    f
}
