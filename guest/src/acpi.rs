//! ACPI discovery: RSDP → XSDT (or RSDT) → FADT, MADT, DSDT. Every table's signature,
//! length and checksum is verified before use. From them the guest takes the number of
//! enabled CPUs (MADT), the sleep control and reset registers (FADT), the `\_S5_` sleep
//! type and the virtio-mmio devices (`_HID "LNRO0005"` + Memory32Fixed in the DSDT).

use crate::mem::{le16, le32, le64, Mem};
use core::fmt;

/// Largest table the guest accepts (a buggy length must not make it read all of RAM).
pub const TABLE_MAX: usize = 1 << 20;
/// Most virtio-mmio devices recorded.
pub const VIRTIO_MAX: usize = 32;
/// Most XSDT/RSDT entries followed (each costs a checksum over up to `TABLE_MAX`).
pub const ROOT_ENTRIES_MAX: usize = 64;
/// Most IOAPICs recorded.
pub const IOAPIC_MAX: usize = 4;
/// Most tables named in the report.
pub const TABLES_MAX: usize = 16;
/// How far after `LNRO0005` the Memory32Fixed descriptor may be.
const CRS_WINDOW: usize = 256;

/// A Generic Address Structure (register location).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gas {
    /// 0 = system memory, 1 = system I/O.
    pub space: u8,
    pub bit_width: u8,
    pub address: u64,
}

impl Gas {
    fn parse(b: &[u8]) -> Gas {
        Gas {
            space: b[0],
            bit_width: b[1],
            address: le64(&b[4..]),
        }
    }
}

impl fmt::Display for Gas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let space = match self.space {
            0 => "mem",
            1 => "io",
            _ => "other",
        };
        write!(f, "{space}:{:#x}", self.address)
    }
}

/// A virtio-mmio device described in the DSDT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioSlot {
    pub base: u64,
    pub size: u32,
    /// Interrupt from the extended interrupt descriptor, if there is one.
    pub gsi: Option<u32>,
}

/// Everything the guest learns from ACPI.
#[derive(Clone, Copy, Debug, Default)]
pub struct Acpi {
    pub rsdp: u64,
    pub revision: u8,
    pub tables: [[u8; 4]; TABLES_MAX],
    pub table_count: usize,
    /// Enabled local APIC / x2APIC entries in the MADT.
    pub cpus: u32,
    pub ioapics: u32,
    /// Local APIC address (MADT, or its address override entry).
    pub lapic_addr: u64,
    /// IOAPICs: (MMIO address, first GSI).
    pub ioapic: [(u64, u32); IOAPIC_MAX],
    /// GSI of the ACPI Generic Event Device (`ACPI0013`), if the DSDT has one.
    pub ged_gsi: Option<u32>,
    pub hw_reduced: bool,
    pub sleep_control: Option<Gas>,
    pub reset: Option<(Gas, u8)>,
    /// SLP_TYP from `\_S5_`.
    pub s5: Option<u8>,
    pub virtio: [VirtioSlot; VIRTIO_MAX],
    pub virtio_count: usize,
    pub have_fadt: bool,
    pub have_madt: bool,
    pub have_dsdt: bool,
}

impl Acpi {
    /// The virtio-mmio devices found.
    pub fn virtio(&self) -> &[VirtioSlot] {
        &self.virtio[..self.virtio_count]
    }

    /// The IOAPICs found (address, first GSI).
    pub fn ioapics(&self) -> &[(u64, u32)] {
        &self.ioapic[..(self.ioapics as usize).min(IOAPIC_MAX)]
    }

    /// Signatures of the tables the XSDT/RSDT listed.
    pub fn tables(&self) -> &[[u8; 4]] {
        &self.tables[..self.table_count]
    }
}

/// Why ACPI discovery failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    NoRsdp,
    RsdpChecksum(u64),
    NoRootTable,
    Unreadable([u8; 4], u64),
    Signature([u8; 4], u64),
    Length([u8; 4], u32),
    Checksum([u8; 4], u64),
    MissingTable([u8; 4]),
    Malformed([u8; 4], &'static str),
}

struct Sig<'a>(&'a [u8; 4]);

impl fmt::Display for Sig<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &c in self.0 {
            let c = if c.is_ascii_graphic() { c as char } else { '?' };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiError::NoRsdp => write!(
                f,
                "no RSDP (start_info.rsdp_paddr is 0 and none in 0xe0000-0xfffff)"
            ),
            AcpiError::RsdpChecksum(a) => write!(f, "RSDP at {a:#x}: bad checksum"),
            AcpiError::NoRootTable => write!(f, "RSDP names neither an XSDT nor an RSDT"),
            AcpiError::Unreadable(s, a) => write!(f, "{} at {a:#x}: not readable", Sig(s)),
            AcpiError::Signature(s, a) => {
                write!(f, "{} expected at {a:#x}: wrong signature", Sig(s))
            }
            AcpiError::Length(s, l) => write!(f, "{}: bad length {l}", Sig(s)),
            AcpiError::Checksum(s, a) => write!(f, "{} at {a:#x}: bad checksum", Sig(s)),
            AcpiError::MissingTable(s) => write!(f, "no {} table", Sig(s)),
            AcpiError::Malformed(s, what) => write!(f, "{}: {what}", Sig(s)),
        }
    }
}

/// The byte sum of `b` is 0 mod 256. Eight bytes per step: on kvm_pvm every guest
/// instruction is emulated, and the byte-at-a-time loop was a third of a boot.
fn checksum_ok(b: &[u8]) -> bool {
    const LANES: u64 = 0x00ff_00ff_00ff_00ff;
    let mut chunks = b.chunks_exact(8);
    let mut sum: u32 = 0;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_le_bytes(w);
        // Four 16-bit lanes of two bytes each (at most 510), then their sum
        // (at most 2040) in the top lane.
        let pairs = (w & LANES) + ((w >> 8) & LANES);
        sum = sum.wrapping_add((pairs.wrapping_mul(0x0001_0001_0001_0001) >> 48) as u32);
    }
    for &x in chunks.remainder() {
        sum = sum.wrapping_add(u32::from(x));
    }
    sum & 0xff == 0
}

/// Finds the RSDP: the start-info hint if valid, else a scan of 0xE0000–0xFFFFF.
pub fn find_rsdp(mem: &impl Mem, hint: u64) -> Result<u64, AcpiError> {
    if hint != 0 {
        return match mem.bytes(hint, 20) {
            Some(b) if &b[..8] == b"RSD PTR " => {
                if checksum_ok(b) {
                    Ok(hint)
                } else {
                    Err(AcpiError::RsdpChecksum(hint))
                }
            }
            Some(_) => Err(AcpiError::Signature(*b"RSD ", hint)),
            None => Err(AcpiError::Unreadable(*b"RSD ", hint)),
        };
    }
    let mut addr = 0xe_0000u64;
    while addr < 0x10_0000 {
        if let Some(b) = mem.bytes(addr, 20) {
            if &b[..8] == b"RSD PTR " && checksum_ok(b) {
                return Ok(addr);
            }
        }
        addr += 16;
    }
    Err(AcpiError::NoRsdp)
}

/// Reads and verifies the table at `addr`; `want` is its expected signature (or `None`
/// to accept any). Returns the whole table.
fn table<'m>(mem: &'m impl Mem, addr: u64, want: Option<&[u8; 4]>) -> Result<&'m [u8], AcpiError> {
    let label = *want.unwrap_or(b"????");
    let h = mem
        .bytes(addr, 36)
        .ok_or(AcpiError::Unreadable(label, addr))?;
    let mut sig = [0u8; 4];
    sig.copy_from_slice(&h[..4]);
    if let Some(w) = want {
        if &sig != w {
            return Err(AcpiError::Signature(*w, addr));
        }
    }
    let len = le32(&h[4..]);
    if (len as usize) < 36 || len as usize > TABLE_MAX {
        return Err(AcpiError::Length(sig, len));
    }
    let t = mem
        .bytes(addr, len as usize)
        .ok_or(AcpiError::Unreadable(sig, addr))?;
    if !checksum_ok(t) {
        return Err(AcpiError::Checksum(sig, addr));
    }
    Ok(t)
}

/// Walks the tables from the RSDP at `rsdp`.
pub fn parse(mem: &impl Mem, rsdp: u64) -> Result<Acpi, AcpiError> {
    let r = mem
        .bytes(rsdp, 20)
        .ok_or(AcpiError::Unreadable(*b"RSD ", rsdp))?;
    if &r[..8] != b"RSD PTR " {
        return Err(AcpiError::Signature(*b"RSD ", rsdp));
    }
    if !checksum_ok(r) {
        return Err(AcpiError::RsdpChecksum(rsdp));
    }
    let mut acpi = Acpi {
        rsdp,
        revision: r[15],
        ..Default::default()
    };
    let rsdt = u64::from(le32(&r[16..]));
    let mut xsdt = 0;
    if acpi.revision >= 2 {
        let r2 = mem
            .bytes(rsdp, 36)
            .ok_or(AcpiError::Unreadable(*b"RSD ", rsdp))?;
        let len = le32(&r2[20..]) as usize;
        if !(36..=4096).contains(&len) {
            return Err(AcpiError::Length(*b"RSD ", len as u32));
        }
        let full = mem
            .bytes(rsdp, len)
            .ok_or(AcpiError::Unreadable(*b"RSD ", rsdp))?;
        if !checksum_ok(full) {
            return Err(AcpiError::RsdpChecksum(rsdp));
        }
        xsdt = le64(&r2[24..]);
    }
    let (root, entry_size) = if xsdt != 0 {
        (table(mem, xsdt, Some(b"XSDT"))?, 8)
    } else if rsdt != 0 {
        (table(mem, rsdt, Some(b"RSDT"))?, 4)
    } else {
        return Err(AcpiError::NoRootTable);
    };

    let mut dsdt_addr = 0u64;
    for e in root[36..].chunks_exact(entry_size).take(ROOT_ENTRIES_MAX) {
        let addr = if entry_size == 8 {
            le64(e)
        } else {
            u64::from(le32(e))
        };
        let t = table(mem, addr, None)?;
        let mut sig = [0u8; 4];
        sig.copy_from_slice(&t[..4]);
        if acpi.table_count < TABLES_MAX {
            acpi.tables[acpi.table_count] = sig;
            acpi.table_count += 1;
        }
        match &sig {
            b"FACP" => {
                dsdt_addr = parse_fadt(t, &mut acpi)?;
                acpi.have_fadt = true;
            }
            b"APIC" => {
                parse_madt(t, &mut acpi)?;
                acpi.have_madt = true;
            }
            _ => {}
        }
    }
    if !acpi.have_fadt {
        return Err(AcpiError::MissingTable(*b"FACP"));
    }
    if !acpi.have_madt {
        return Err(AcpiError::MissingTable(*b"APIC"));
    }
    if dsdt_addr == 0 {
        return Err(AcpiError::MissingTable(*b"DSDT"));
    }
    let dsdt = table(mem, dsdt_addr, Some(b"DSDT"))?;
    acpi.have_dsdt = true;
    parse_dsdt(dsdt, &mut acpi);
    Ok(acpi)
}

/// FADT: flags, reset register, sleep control register; returns the DSDT address.
fn parse_fadt(t: &[u8], acpi: &mut Acpi) -> Result<u64, AcpiError> {
    if t.len() < 116 {
        return Err(AcpiError::Malformed(*b"FACP", "shorter than 116 bytes"));
    }
    let mut dsdt = u64::from(le32(&t[40..]));
    let flags = le32(&t[112..]);
    acpi.hw_reduced = flags & (1 << 20) != 0;
    if t.len() >= 129 && flags & (1 << 10) != 0 {
        let gas = Gas::parse(&t[116..128]);
        if gas.address != 0 {
            acpi.reset = Some((gas, t[128]));
        }
    }
    if t.len() >= 148 {
        let x = le64(&t[140..]);
        if x != 0 {
            dsdt = x;
        }
    }
    if t.len() >= 256 {
        let gas = Gas::parse(&t[244..256]);
        if gas.address != 0 {
            acpi.sleep_control = Some(gas);
        }
    }
    Ok(dsdt)
}

/// MADT: counts enabled processors, records IOAPICs and the local APIC address.
fn parse_madt(t: &[u8], acpi: &mut Acpi) -> Result<(), AcpiError> {
    if t.len() < 44 {
        return Err(AcpiError::Malformed(*b"APIC", "shorter than 44 bytes"));
    }
    acpi.lapic_addr = u64::from(le32(&t[36..]));
    let mut off = 44;
    while off + 2 <= t.len() {
        let (ty, len) = (t[off], usize::from(t[off + 1]));
        if len < 2 || off + len > t.len() {
            return Err(AcpiError::Malformed(*b"APIC", "bad entry length"));
        }
        let e = &t[off..off + len];
        match (ty, len) {
            (0, 8..) if le32(&e[4..]) & 1 != 0 => acpi.cpus += 1,
            (9, 16..) if le32(&e[8..]) & 1 != 0 => acpi.cpus += 1,
            (1, 12..) => {
                if let Some(slot) = acpi.ioapic.get_mut(acpi.ioapics as usize) {
                    *slot = (u64::from(le32(&e[4..])), le32(&e[8..]));
                }
                acpi.ioapics += 1;
            }
            (5, 12..) => acpi.lapic_addr = le64(&e[4..]),
            _ => {}
        }
        off += len;
    }
    Ok(())
}

/// DSDT: `\_S5_` and the `LNRO0005` devices.
fn parse_dsdt(t: &[u8], acpi: &mut Acpi) {
    let body = &t[36..];
    acpi.s5 = find(body, b"_S5_", 0).and_then(|at| parse_s5(&body[at + 4..]));
    acpi.ged_gsi = find(body, b"ACPI0013", 0).and_then(|at| {
        let window = &body[at + 8..body.len().min(at + 8 + CRS_WINDOW)];
        parse_interrupt(window)
    });
    let mut from = 0;
    while let Some(at) = find(body, b"LNRO0005", from) {
        from = at + 8;
        let next = find(body, b"LNRO0005", from).unwrap_or(body.len());
        let end = next.min(from + CRS_WINDOW).min(body.len());
        if let Some(slot) = parse_crs(&body[from..end]) {
            if acpi.virtio_count < VIRTIO_MAX {
                acpi.virtio[acpi.virtio_count] = slot;
                acpi.virtio_count += 1;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from >= hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Parses `PackageOp PkgLength NumElements <first element>` and returns the first
/// element (SLP_TYP) if it is an integer constant.
fn parse_s5(b: &[u8]) -> Option<u8> {
    if *b.first()? != 0x12 {
        return None;
    }
    // PkgLength: bits 6-7 of the lead byte = number of following bytes.
    let extra = usize::from(b.get(1)? >> 6);
    let first = b.get(2 + extra + 1..)?; // skip PkgLength and NumElements
    match *first.first()? {
        0x00 => Some(0),
        0x01 => Some(1),
        0x0a => first.get(1).copied(),
        0x0b | 0x0c => first.get(1).copied(), // word/dword prefix: low byte is the type
        _ => None,
    }
}

/// Finds a Memory32Fixed descriptor (tag 0x86, length 9) and an optional extended
/// interrupt descriptor (tag 0x89) after it.
fn parse_crs(b: &[u8]) -> Option<VirtioSlot> {
    let m = b.windows(3).position(|w| w == [0x86, 0x09, 0x00])?;
    let d = b.get(m..m + 12)?;
    let mut slot = VirtioSlot {
        base: u64::from(le32(&d[4..])),
        size: le32(&d[8..]),
        gsi: None,
    };
    slot.gsi = parse_interrupt(&b[m + 12..]);
    Some(slot)
}

/// The first GSI of the first extended interrupt descriptor (tag 0x89) in `b`.
fn parse_interrupt(b: &[u8]) -> Option<u32> {
    let i = b.iter().position(|&c| c == 0x89)?;
    let irq = b.get(i..i + 9)?;
    (le16(&irq[1..]) >= 6 && irq[4] >= 1).then(|| le32(&irq[5..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_the_byte_sum() {
        // Lengths around the 8-byte steps, bytes that overflow every lane.
        for len in 0..70usize {
            for seed in [0u8, 1, 0x7f, 0xff] {
                let mut b: Vec<u8> = (0..len)
                    .map(|i| {
                        seed.wrapping_mul(31)
                            .wrapping_add((i as u8).wrapping_mul(197))
                    })
                    .collect();
                let naive = b.iter().fold(0u8, |a, &x| a.wrapping_add(x));
                assert_eq!(checksum_ok(&b), naive == 0, "len {len} seed {seed}");
                if let Some(last) = b.last_mut() {
                    *last = last.wrapping_sub(naive);
                    assert!(checksum_ok(&b), "fixed-up len {len} seed {seed}");
                }
            }
        }
        assert!(checksum_ok(&[0xff; 256]));
        assert!(!checksum_ok(&[0xff; 255]));
    }
    use crate::mem::TestMem;
    use std::vec::Vec;

    fn fix_checksum(t: &mut [u8], at: usize) {
        t[at] = 0;
        let s = t.iter().fold(0u8, |a, &x| a.wrapping_add(x));
        t[at] = 0u8.wrapping_sub(s);
    }

    fn header(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(sig);
        t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
        t.push(2);
        t.push(0);
        t.extend_from_slice(b"BULKHD");
        t.extend_from_slice(b"TESTTBL ");
        t.extend_from_slice(&[0; 12]);
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9);
        t
    }

    fn gas(space: u8, addr: u64) -> [u8; 12] {
        let mut g = [0u8; 12];
        g[0] = space;
        g[1] = 8;
        g[3] = 1;
        g[4..].copy_from_slice(&addr.to_le_bytes());
        g
    }

    /// Builds RSDP at 0xe0000, XSDT, FADT, MADT (2 CPUs, 1 disabled), DSDT with two
    /// virtio devices, the way docs/vmm-design.md describes them.
    fn machine() -> TestMem {
        let mut mem = TestMem::new(0xe0000, 0x20000);
        let (xsdt, fadt, madt, dsdt) = (0xe0040u64, 0xe0100u64, 0xe0300u64, 0xe0400u64);

        let mut dsdt_body = Vec::new();
        dsdt_body.extend_from_slice(&[
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x0a, 0x04, 0x0a, 0x05, 0, 0, 0,
        ]);
        for (i, base) in [0xd000_0000u32, 0xd000_1000].iter().enumerate() {
            dsdt_body.extend_from_slice(&[0x5b, 0x82, 0x30, b'V', b'R', b'0', b'0' + i as u8]);
            dsdt_body.extend_from_slice(&[0x08, b'_', b'H', b'I', b'D', 0x0d]);
            dsdt_body.extend_from_slice(b"LNRO0005\0");
            dsdt_body.extend_from_slice(&[0x08, b'_', b'C', b'R', b'S', 0x11, 0x1a, 0x0a, 0x17]);
            dsdt_body.extend_from_slice(&[0x86, 0x09, 0x00, 0x01]);
            dsdt_body.extend_from_slice(&base.to_le_bytes());
            dsdt_body.extend_from_slice(&0x1000u32.to_le_bytes());
            dsdt_body.extend_from_slice(&[0x89, 0x06, 0x00, 0x03, 0x01]);
            dsdt_body.extend_from_slice(&(5 + i as u32).to_le_bytes());
            dsdt_body.extend_from_slice(&[0x79, 0x00]);
        }
        dsdt_body.extend_from_slice(&[
            0x5b, 0x82, 0x20, b'G', b'E', b'D', b'_', 0x08, b'_', b'H', b'I', b'D', 0x0d,
        ]);
        dsdt_body.extend_from_slice(b"ACPI0013\0");
        dsdt_body.extend_from_slice(&[0x08, b'_', b'C', b'R', b'S', 0x11, 0x0e, 0x0a, 0x0b]);
        dsdt_body.extend_from_slice(&[0x89, 0x06, 0x00, 0x03, 0x01, 0x03, 0, 0, 0, 0x79, 0x00]);
        mem.put(dsdt, &header(b"DSDT", &dsdt_body));

        let mut fadt_body = std::vec![0u8; 276 - 36];
        fadt_body[112 - 36..116 - 36].copy_from_slice(&((1u32 << 20) | (1 << 10)).to_le_bytes());
        fadt_body[116 - 36..128 - 36].copy_from_slice(&gas(1, 0xcf9));
        fadt_body[128 - 36] = 6;
        fadt_body[140 - 36..148 - 36].copy_from_slice(&dsdt.to_le_bytes());
        fadt_body[244 - 36..256 - 36].copy_from_slice(&gas(1, 0x600));
        fadt_body[256 - 36..268 - 36].copy_from_slice(&gas(1, 0x601));
        mem.put(fadt, &header(b"FACP", &fadt_body));

        let mut madt_body = Vec::new();
        madt_body.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        madt_body.extend_from_slice(&0u32.to_le_bytes());
        madt_body.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]);
        madt_body.extend_from_slice(&[0, 8, 1, 1, 1, 0, 0, 0]);
        madt_body.extend_from_slice(&[0, 8, 2, 2, 0, 0, 0, 0]);
        madt_body.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]);
        mem.put(madt, &header(b"APIC", &madt_body));

        let mut xsdt_body = Vec::new();
        xsdt_body.extend_from_slice(&fadt.to_le_bytes());
        xsdt_body.extend_from_slice(&madt.to_le_bytes());
        mem.put(xsdt, &header(b"XSDT", &xsdt_body));

        let mut rsdp = std::vec![0u8; 36];
        rsdp[..8].copy_from_slice(b"RSD PTR ");
        rsdp[9..15].copy_from_slice(b"BULKHD");
        rsdp[15] = 2;
        rsdp[20..24].copy_from_slice(&36u32.to_le_bytes());
        rsdp[24..32].copy_from_slice(&xsdt.to_le_bytes());
        fix_checksum(&mut rsdp[..20], 8);
        fix_checksum(&mut rsdp, 32);
        mem.put(0xe0000, &rsdp);
        mem
    }

    #[test]
    fn parses_the_machine_model() {
        let mem = machine();
        assert_eq!(find_rsdp(&mem, 0), Ok(0xe0000));
        assert_eq!(find_rsdp(&mem, 0xe0000), Ok(0xe0000));
        let a = parse(&mem, 0xe0000).unwrap();
        assert_eq!(a.cpus, 2);
        assert_eq!(a.ioapics, 1);
        assert_eq!(a.ioapics(), &[(0xfec0_0000, 0)]);
        assert_eq!(a.lapic_addr, 0xfee0_0000);
        assert_eq!(a.ged_gsi, Some(3));
        assert!(a.hw_reduced);
        assert_eq!(
            a.sleep_control,
            Some(Gas {
                space: 1,
                bit_width: 8,
                address: 0x600
            })
        );
        assert_eq!(
            a.reset,
            Some((
                Gas {
                    space: 1,
                    bit_width: 8,
                    address: 0xcf9
                },
                6
            ))
        );
        assert_eq!(a.s5, Some(5));
        assert_eq!(
            a.virtio(),
            &[
                VirtioSlot {
                    base: 0xd000_0000,
                    size: 0x1000,
                    gsi: Some(5)
                },
                VirtioSlot {
                    base: 0xd000_1000,
                    size: 0x1000,
                    gsi: Some(6)
                }
            ]
        );
        assert_eq!(a.tables(), &[*b"FACP", *b"APIC"]);
    }

    #[test]
    fn rejects_corrupt_tables() {
        let mut mem = machine();
        // Corrupt one MADT byte: checksum must fail.
        let off = (0xe0300 + 50 - mem.base) as usize;
        mem.data[off] ^= 0x40;
        assert_eq!(
            parse(&mem, 0xe0000).unwrap_err(),
            AcpiError::Checksum(*b"APIC", 0xe0300)
        );

        let mut mem = machine();
        // An absurd FADT length must not be followed.
        let off = (0xe0100 + 4 - mem.base) as usize;
        mem.data[off..off + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        assert_eq!(
            parse(&mem, 0xe0000).unwrap_err(),
            AcpiError::Length(*b"FACP", 0x7fff_ffff)
        );

        let mut mem = machine();
        mem.data[0] = b'X';
        assert_eq!(find_rsdp(&mem, 0), Err(AcpiError::NoRsdp));
        assert_eq!(
            find_rsdp(&mem, 0xe0000),
            Err(AcpiError::Signature(*b"RSD ", 0xe0000))
        );
    }

    #[test]
    fn madt_zero_length_entry_is_an_error() {
        let mut acpi = Acpi::default();
        let mut t = std::vec![0u8; 44];
        t.extend_from_slice(&[0, 0, 0, 0]);
        assert!(parse_madt(&t, &mut acpi).is_err());
    }

    #[test]
    fn s5_forms() {
        assert_eq!(
            parse_s5(&[0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00]),
            Some(0)
        );
        assert_eq!(
            parse_s5(&[0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0, 0]),
            Some(5)
        );
        assert_eq!(parse_s5(&[0x12, 0x40, 0x00, 0x04, 0x01]), Some(1));
        assert_eq!(parse_s5(&[0x12]), None);
        assert_eq!(parse_s5(&[0x13, 0, 0, 0]), None);
    }
}
