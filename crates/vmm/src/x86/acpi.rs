//! ACPI tables for the guest (RSDP, XSDT, FADT, MADT, DSDT), built with the
//! `acpi_tables` crate and placed at `0xE_0000` per `docs/vmm-design.md`.
//! The platform is hardware-reduced: power-off and reset go through the FADT
//! sleep-control and reset registers; a Generic Event Device raises the
//! power-button notification used for graceful shutdown.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

const OEM_ID: [u8; 6] = *b"BLKHD ";
const OEM_TABLE_ID: [u8; 8] = *b"BULKHEAD";
const OEM_REVISION: u32 = 1;

/// GSI of the Generic Event Device (power button). Pin 3 is free: COM2 does
/// not exist, and virtio slots start at 5.
pub const GED_GSI: u32 = 3;

#[derive(Debug, Error)]
pub enum AcpiError {
    #[error("ACPI tables ({0} bytes) do not fit in 0xE0000-0xFFFFF")]
    TooLarge(usize),
    #[error("cannot write ACPI tables to guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// One virtio-mmio device as the DSDT describes it.
#[derive(Clone, Copy, Debug)]
pub struct MmioDeviceInfo {
    pub base: u64,
    pub gsi: u32,
}

/// Builds the DSDT (as a complete table, header included).
pub fn build_dsdt(devices: &[MmioDeviceInfo]) -> Vec<u8> {
    let mut body = Vec::new();

    // \_S5_: SLP_TYP 5 for power-off.
    let s5 = aml::Package::new(vec![
        &layout::S5_SLP_TYP,
        &aml::ZERO,
        &aml::ZERO,
        &aml::ZERO,
    ]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);

    // COM1.
    let com1_hid = aml::EISAName::new("PNP0501");
    let com1_io = aml::IO::new(layout::COM1_BASE, layout::COM1_BASE, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, layout::COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid_name = aml::Name::new("_HID".into(), &com1_hid);
    let com1_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let com1_crs_name = aml::Name::new("_CRS".into(), &com1_crs);
    let com1 = aml::Device::new(
        "COM1".into(),
        vec![&com1_hid_name, &com1_uid, &com1_crs_name],
    );

    // Power button, notified by the GED's _EVT method.
    let pwrb_hid = aml::EISAName::new("PNP0C0C");
    let pwrb_hid_name = aml::Name::new("_HID".into(), &pwrb_hid);
    let pwrb_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let pwrb = aml::Device::new("PWRB".into(), vec![&pwrb_hid_name, &pwrb_uid]);

    let ged_hid: &'static str = "ACPI0013";
    let ged_hid_name = aml::Name::new("_HID".into(), &ged_hid);
    let ged_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let ged_irq = aml::Interrupt::new(true, true, false, false, GED_GSI);
    let ged_crs = aml::ResourceTemplate::new(vec![&ged_irq]);
    let ged_crs_name = aml::Name::new("_CRS".into(), &ged_crs);
    let pwrb_path = aml::Path::new("\\_SB_.PWRB");
    let notify_value: u8 = 0x80;
    let notify = aml::Notify::new(&pwrb_path, &notify_value);
    let arg0 = aml::Arg(0);
    let is_ged = aml::Equal::new(&arg0, &GED_GSI);
    let if_ged = aml::If::new(&is_ged, vec![&notify]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&if_ged]);
    let ged = aml::Device::new(
        "GED_".into(),
        vec![&ged_hid_name, &ged_uid, &ged_crs_name, &evt],
    );

    // virtio-mmio devices, VR00, VR01, ...
    let names: Vec<String> = (0..devices.len()).map(|i| format!("VR{i:02X}")).collect();
    let hid: &'static str = "LNRO0005";
    let uids: Vec<u32> = (0..devices.len() as u32).collect();
    let mems: Vec<aml::Memory32Fixed> = devices
        .iter()
        .map(|d| aml::Memory32Fixed::new(true, d.base as u32, layout::VIRTIO_MMIO_SIZE as u32))
        .collect();
    let irqs: Vec<aml::Interrupt> = devices
        .iter()
        .map(|d| aml::Interrupt::new(true, true, false, false, d.gsi))
        .collect();
    let crss: Vec<aml::ResourceTemplate> = mems
        .iter()
        .zip(irqs.iter())
        .map(|(m, i)| aml::ResourceTemplate::new(vec![m, i]))
        .collect();
    let hid_names: Vec<aml::Name> = (0..devices.len())
        .map(|_| aml::Name::new("_HID".into(), &hid))
        .collect();
    let uid_names: Vec<aml::Name> = uids
        .iter()
        .map(|u| aml::Name::new("_UID".into(), u))
        .collect();
    let crs_names: Vec<aml::Name> = crss
        .iter()
        .map(|c| aml::Name::new("_CRS".into(), c))
        .collect();
    let vdevs: Vec<aml::Device> = (0..devices.len())
        .map(|i| {
            aml::Device::new(
                names[i].as_str().into(),
                vec![&hid_names[i], &uid_names[i], &crs_names[i]],
            )
        })
        .collect();

    let mut sb_children: Vec<&dyn Aml> = vec![&com1, &pwrb, &ged];
    for d in &vdevs {
        sb_children.push(d);
    }
    aml::Scope::new("\\_SB_".into(), sb_children).to_aml_bytes(&mut body);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    let io8 = |port: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            port.into(),
        )
    };
    f.sleep_control_reg = io8(layout::ACPI_SLEEP_CONTROL);
    f.sleep_status_reg = io8(layout::ACPI_SLEEP_STATUS);
    f.reset_reg = io8(layout::ACPI_RESET_REG);
    f.reset_value = layout::ACPI_RESET_VALUE;
    // "BLKHDVMM": identifies the hypervisor to the guest.
    f.hypervisor_vendor_identity = u64::from_le_bytes(*b"BLKHDVMM").into();
    let mut out = Vec::new();
    f.finalize().to_aml_bytes(&mut out);
    out
}

fn madt(vcpus: u32) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(layout::LAPIC_ADDR as u32),
    );
    for i in 0..vcpus {
        m.add_structure(ProcessorLocalApic::new(
            i as u8,
            i as u8,
            EnabledStatus::Enabled,
        ));
    }
    m.add_structure(IoApic::new(0, layout::IOAPIC_ADDR as u32, 0));
    let mut out = Vec::new();
    m.to_aml_bytes(&mut out);
    out
}

fn align16(x: u64) -> u64 {
    (x + 15) & !15
}

/// Writes all tables into guest memory. Returns the DSDT bytes and the RSDP
/// address.
pub fn write_tables(
    mem: &GuestMemoryMmap,
    vcpus: u32,
    devices: &[MmioDeviceInfo],
) -> Result<(Vec<u8>, u64), AcpiError> {
    let rsdp_addr = layout::ACPI_START;
    let xsdt_addr = align16(rsdp_addr + Rsdp::len() as u64);
    // XSDT with two entries: 36-byte header + 2 * 8.
    let fadt_addr = align16(xsdt_addr + 36 + 16);
    let madt_bytes = madt(vcpus);
    let fadt_size = acpi_tables::fadt::FADT::len() as u64;
    let madt_addr = align16(fadt_addr + fadt_size);
    let dsdt_addr = align16(madt_addr + madt_bytes.len() as u64);
    let fadt_bytes = fadt(dsdt_addr);
    let dsdt_bytes = build_dsdt(devices);

    let end = dsdt_addr + dsdt_bytes.len() as u64;
    if end > layout::ACPI_END {
        return Err(AcpiError::TooLarge((end - layout::ACPI_START) as usize));
    }

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let mut rsdp_bytes = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp_bytes);

    for (addr, bytes) in [
        (rsdp_addr, &rsdp_bytes),
        (xsdt_addr, &xsdt_bytes),
        (fadt_addr, &fadt_bytes),
        (madt_addr, &madt_bytes),
        (dsdt_addr, &dsdt_bytes),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
    }
    Ok((dsdt_bytes, rsdp_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn tables_have_valid_checksums_and_links() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let devs = [
            MmioDeviceInfo {
                base: layout::virtio_slot_base(0),
                gsi: 5,
            },
            MmioDeviceInfo {
                base: layout::virtio_slot_base(1),
                gsi: 6,
            },
        ];
        let (dsdt, rsdp_addr) = write_tables(&mem, 2, &devs).unwrap();
        assert_eq!(rsdp_addr, 0xE_0000);
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(rsdp_addr)).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let read_table = |addr: u64| {
            let mut hdr = [0u8; 8];
            mem.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
            let len = u32::from_le_bytes(hdr[4..8].try_into().unwrap()) as usize;
            let mut t = vec![0u8; len];
            mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
            assert_eq!(sum(&t), 0, "checksum of {:?}", std::str::from_utf8(&t[..4]));
            t
        };
        let xsdt = read_table(xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries.len(), 2);
        let fadt = read_table(entries[0]);
        assert_eq!(&fadt[..4], b"FACP");
        // Flags at offset 112: HW_REDUCED_ACPI (bit 20) and RESET_REG_SUP (bit 10).
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0);
        assert_ne!(flags & (1 << 10), 0);
        // SLEEP_CONTROL_REG at 244: system I/O, port 0x600.
        assert_eq!(fadt[244], 1);
        assert_eq!(
            u64::from_le_bytes(fadt[248..256].try_into().unwrap()),
            0x600
        );
        // SLEEP_STATUS_REG at 256: port 0x601.
        assert_eq!(
            u64::from_le_bytes(fadt[260..268].try_into().unwrap()),
            0x601
        );
        // RESET_REG at 116, value at 128.
        assert_eq!(
            u64::from_le_bytes(fadt[120..128].try_into().unwrap()),
            0xCF9
        );
        assert_eq!(fadt[128], 6);
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt_mem = read_table(x_dsdt);
        assert_eq!(dsdt_mem, dsdt);
        let madt = read_table(entries[1]);
        assert_eq!(&madt[..4], b"APIC");
        assert_eq!(
            u32::from_le_bytes(madt[36..40].try_into().unwrap()),
            0xFEE0_0000
        );
        // Two local APICs (type 0, len 8) then one IOAPIC (type 1, len 12).
        assert_eq!(&madt[44..48], &[0, 8, 0, 0]);
        assert_eq!(&madt[52..56], &[0, 8, 1, 1]);
        assert_eq!(madt[60], 1);
        assert_eq!(
            u32::from_le_bytes(madt[64..68].try_into().unwrap()),
            0xFEC0_0000
        );
        assert_eq!(madt.len(), 44 + 8 + 8 + 12);

        // DSDT: the test guest's scan finds both devices with their bases.
        let mut pos = 0;
        for d in &devs {
            let at = find(&dsdt[pos..], b"LNRO0005").unwrap() + pos;
            let tag = find(&dsdt[at..], &[0x86]).unwrap() + at;
            let base = u32::from_le_bytes(dsdt[tag + 4..tag + 8].try_into().unwrap());
            assert_eq!(base as u64, d.base);
            pos = tag;
        }
        assert!(find(&dsdt, b"_S5_").is_some());
        assert!(find(&dsdt, b"COM1").is_some());
    }
}
