//! The guest physical memory map and port assignments: the single place where
//! the numbers from `docs/vmm-design.md` live in code.

/// GDT used for both boot protocols.
pub const GDT_ADDR: u64 = 0x500;
/// PVH `hvm_start_info`, followed by the memory map and module list.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Identity page tables: PML4, PDPT, then four page directories (2 MiB pages)
/// covering the first 4 GiB.
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xA000;
pub const PD_ADDR: u64 = 0xB000;
/// Kernel command line; at most `CMDLINE_MAX` bytes including the NUL.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Extended BIOS data area, reserved in e820.
pub const EBDA_START: u64 = 0x9_FC00;
/// ACPI tables (RSDP first), reserved in e820.
pub const ACPI_START: u64 = 0xE_0000;
pub const ACPI_END: u64 = 0x10_0000;
/// Where kernels load (bzImage protected-mode code; lowest legal ELF address).
pub const KERNEL_START: u64 = 0x10_0000;
/// Low RAM ends at 3 GiB at the latest; the rest continues at 4 GiB.
pub const LOW_RAM_MAX: u64 = 0xC000_0000;
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// virtio-mmio slots.
pub const VIRTIO_MMIO_BASE: u64 = 0xD000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const VIRTIO_FIRST_GSI: u32 = 5;
/// The in-kernel IOAPIC has 24 pins; slots use GSIs 5..=23.
pub const VIRTIO_MAX_SLOTS: usize = vmm_proto::config::MAX_VIRTIO_DEVICES;
pub const IOAPIC_ADDR: u64 = 0xFEC0_0000;
pub const LAPIC_ADDR: u64 = 0xFEE0_0000;
/// KVM's TSS and identity-map pages, just below the IOAPIC (needed by VT-x
/// for real mode; harmless elsewhere).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xFFFB_C000;
pub const KVM_TSS_ADDR: u64 = 0xFFFB_D000;

/// Ports.
pub const COM1_BASE: u16 = 0x3F8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_DATA: u16 = 0x60;
pub const I8042_CMD: u16 = 0x64;
pub const ACPI_SLEEP_CONTROL: u16 = 0x600;
pub const ACPI_SLEEP_STATUS: u16 = 0x601;
pub const ACPI_RESET_REG: u16 = 0xCF9;
pub const ACPI_RESET_VALUE: u8 = 0x06;
/// `SLP_TYP` value of `\_S5_`.
pub const S5_SLP_TYP: u8 = 5;

/// Minimum guest memory we accept.
pub const MIN_MEM: u64 = vmm_proto::config::MIN_MEMORY;

/// Guest address of virtio-mmio slot `i`.
pub fn virtio_slot_base(i: usize) -> u64 {
    VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SIZE
}

/// Interrupt line (GSI) of virtio-mmio slot `i`.
pub fn virtio_slot_gsi(i: usize) -> u32 {
    VIRTIO_FIRST_GSI + i as u32
}

/// e820 types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One e820 / PVH memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// RAM ranges (guest address, length) for `mem` bytes of guest memory.
pub fn ram_ranges(mem: u64) -> Vec<(u64, u64)> {
    let low = mem.min(LOW_RAM_MAX);
    let mut v = vec![(0, low)];
    if mem > LOW_RAM_MAX {
        v.push((HIGH_RAM_START, mem - LOW_RAM_MAX));
    }
    v
}

/// End (exclusive) of low RAM.
pub fn low_ram_end(mem: u64) -> u64 {
    mem.min(LOW_RAM_MAX)
}

/// The memory map the guest is told about.
pub fn e820_map(mem: u64) -> Vec<E820Entry> {
    let low = low_ram_end(mem);
    let mut v = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: 0xA_0000 - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: ACPI_START,
            size: ACPI_END - ACPI_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: KERNEL_START,
            size: low - KERNEL_START,
            kind: E820_RAM,
        },
    ];
    if mem > LOW_RAM_MAX {
        v.push(E820Entry {
            addr: HIGH_RAM_START,
            size: mem - LOW_RAM_MAX,
            kind: E820_RAM,
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_low_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        let map = e820_map(128 << 20);
        assert_eq!(map.len(), 4);
        assert_eq!(map[3].addr + map[3].size, 128 << 20);
    }

    #[test]
    fn large_memory_splits_around_the_hole() {
        let mem = 4u64 << 30;
        assert_eq!(
            ram_ranges(mem),
            vec![(0, LOW_RAM_MAX), (HIGH_RAM_START, 1 << 30)]
        );
        let map = e820_map(mem);
        assert_eq!(
            map.last().map(|e| e.addr + e.size),
            Some(HIGH_RAM_START + (1 << 30))
        );
        // Nothing in the map overlaps the virtio-mmio window or the APICs.
        for e in &map {
            assert!(e.addr + e.size <= VIRTIO_MMIO_BASE || e.addr >= HIGH_RAM_START);
        }
    }

    #[test]
    fn slots_and_gsis() {
        assert_eq!(virtio_slot_base(0), 0xD000_0000);
        assert_eq!(virtio_slot_base(3), 0xD000_3000);
        assert_eq!(virtio_slot_gsi(0), 5);
        assert_eq!(virtio_slot_gsi(VIRTIO_MAX_SLOTS - 1), 23);
    }
}
