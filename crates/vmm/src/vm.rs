//! Building and running one VM from a [`VmConfig`], in named steps modelled
//! on Firecracker's `builder.rs`: [`Vm::boot`] (a kernel) and [`Vm::restore`]
//! (a snapshot) check the configuration against the host, create the KVM VM
//! (in-kernel irqchip), guest memory, virtio devices, the console, the port
//! I/O devices and the vCPUs, and bind the control socket; [`Vm::run`] then
//! enters the jail, starts the threads (vCPUs, control socket) and runs the
//! event loop (serial input, stop) on the calling thread until the VM stops.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};
use vmm_proto::{DeviceInfo, DeviceKind, SerialSpec, VmConfig};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::api::{self, ApiContext};
use crate::bus::{Bus, SharedDevice};
use crate::control::{self, ExitReason, VmControl};
use crate::devices::legacy::{AcpiReset, AcpiSleep, SerialDevice, SerialOut, I8042};
use crate::devices::virtio::{self, MmioTransport};
use crate::jail;
use crate::layout;
use crate::snapshot::{self, VmSnapshot};
use crate::vcpu::Vcpu;
use crate::x86::{acpi, boot, cpu};
use vm_superio::serial::SerialState;

/// Stack size of vCPU and control-socket threads: the exit loop and the
/// JSON handling need little, and small stacks keep the RSS down.
const THREAD_STACK: usize = 256 << 10;

/// What a virtio slot holds.
pub enum SlotKind {
    Block { path: PathBuf, read_only: bool },
    Net { tap: String, mac: Option<[u8; 6]> },
    Vsock { cid: u32, uds: PathBuf },
    Rng,
}

impl SlotKind {
    pub fn kind(&self) -> DeviceKind {
        match self {
            SlotKind::Block { .. } => DeviceKind::Block,
            SlotKind::Net { .. } => DeviceKind::Net,
            SlotKind::Vsock { .. } => DeviceKind::Vsock,
            SlotKind::Rng => DeviceKind::Rng,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }
}

/// Slot order: disks, nets, vsock, rng.
pub fn slot_plan(cfg: &VmConfig) -> Vec<SlotKind> {
    let mut v = Vec::new();
    for d in &cfg.disks {
        v.push(SlotKind::Block {
            path: d.path.clone(),
            read_only: d.read_only,
        });
    }
    for n in &cfg.nets {
        v.push(SlotKind::Net {
            tap: n.tap.clone(),
            mac: n.mac,
        });
    }
    if let Some(vs) = &cfg.vsock {
        v.push(SlotKind::Vsock {
            cid: vs.cid,
            uds: vs.uds.clone(),
        });
    }
    if cfg.rng {
        v.push(SlotKind::Rng);
    }
    v
}

fn create_device(kind: &SlotKind) -> Result<Box<dyn virtio::VirtioDevice>> {
    Ok(match kind {
        SlotKind::Block { path, read_only } => {
            Box::new(virtio::Block::new(path, *read_only).map_err(|e| anyhow!("{e}"))?)
        }
        SlotKind::Net { tap, mac } => {
            Box::new(virtio::Net::new(tap, *mac).map_err(|e| anyhow!("{e}"))?)
        }
        SlotKind::Vsock { cid, uds } => {
            Box::new(virtio::Vsock::new(u64::from(*cid), uds.clone()).map_err(|e| anyhow!("{e}"))?)
        }
        SlotKind::Rng => Box::new(virtio::Rng::new()),
    })
}

/// Host memory in bytes (MemTotal).
fn host_mem_total() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Step 0: [`VmConfig::validate`], then the checks that need the host but no
/// KVM: host memory, files. `restore` is the snapshot the VM starts from.
pub fn validate(cfg: &VmConfig, restore: Option<&Path>) -> Result<()> {
    if restore.is_some() && cfg.restore.as_deref() != restore {
        let mut c = cfg.clone();
        c.restore = restore.map(Path::to_path_buf);
        c.validate()?;
    } else {
        cfg.validate()?;
    }
    if restore.is_none() {
        if let Some(total) = host_mem_total() {
            if cfg.memory_bytes > total {
                bail!(
                    "memory_bytes ({} MiB) exceeds the host's memory ({} MiB)",
                    cfg.memory_bytes >> 20,
                    total >> 20
                );
            }
        }
        if let Some(k) = &cfg.kernel {
            if !k.is_file() {
                bail!("kernel {} does not exist or is not a file", k.display());
            }
        }
        if let Some(i) = &cfg.initrd {
            if !i.is_file() {
                bail!("initrd {} does not exist or is not a file", i.display());
            }
        }
    }
    for d in &cfg.disks {
        if !d.path.exists() {
            bail!("disk {} does not exist", d.path.display());
        }
    }
    Ok(())
}

/// KVM memory slots being registered on a helper thread. The first memslot
/// change of a VM waits for an SRCU grace period (about 5 ms on this project's
/// hosts, whatever the memory size); nothing before the first `KVM_RUN` needs the
/// slots except restoring a vCPU's saved state, so the wait overlaps with
/// loading the kernel and building devices, ACPI tables and vCPUs.
/// [`MemslotRegistration::finish`] must return before any vCPU runs.
struct MemslotRegistration(Option<std::thread::JoinHandle<Result<()>>>);

impl MemslotRegistration {
    fn finish(&mut self) -> Result<()> {
        match self.0.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow!("memory slot registration thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for MemslotRegistration {
    /// On an early error the guest memory must outlive the registration.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Guest RAM: anonymous memory, or with `backing` (a snapshot's `memory`
/// file, regions in address order) a private copy-on-write mapping of it.
fn map_guest_memory(mem_size: u64, backing: Option<&File>) -> Result<GuestMemoryMmap> {
    let cannot = || format!("cannot allocate {} MiB of guest memory", mem_size >> 20);
    let ranges = layout::ram_ranges(mem_size);
    let Some(file) = backing else {
        let ranges: Vec<(GuestAddress, usize)> = ranges
            .into_iter()
            .map(|(a, l)| (GuestAddress(a), l as usize))
            .collect();
        return GuestMemoryMmap::from_ranges(&ranges).with_context(cannot);
    };
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (addr, len) in ranges {
        let file = file
            .try_clone()
            .context("duplicating the snapshot memory file")?;
        let region = MmapRegionBuilder::new(len as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .with_file_offset(FileOffset::new(file, offset))
            .build()
            .with_context(cannot)?;
        regions.push(
            GuestRegionMmap::new(region, GuestAddress(addr))
                .context("guest memory region overflows")?,
        );
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).with_context(cannot)
}

fn create_guest_memory(
    kvm: &Kvm,
    vm: &VmFd,
    mem_size: u64,
    backing: Option<&File>,
) -> Result<(GuestMemoryMmap, MemslotRegistration)> {
    let mem = map_guest_memory(mem_size, backing)?;
    let mut regions = Vec::new();
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .context("guest memory region has no host mapping")?;
        regions.push(kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        });
    }
    // A second descriptor of the same VM for the helper thread.
    // SAFETY: F_DUPFD_CLOEXEC on the VM's live descriptor; the result is checked.
    let dup = unsafe { libc::fcntl(vm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error()).context("duplicating the VM descriptor");
    }
    // SAFETY: `dup` is a fresh descriptor of a KVM VM that nothing else owns;
    // the VmFd takes ownership and closes it.
    let vm2 =
        unsafe { kvm.create_vmfd_from_rawfd(dup) }.context("duplicating the VM descriptor")?;
    let handle = std::thread::Builder::new()
        .name("memslots".into())
        .stack_size(THREAD_STACK)
        .spawn(move || -> Result<()> {
            for r in regions {
                // SAFETY: the region is a live mapping owned by the guest
                // memory, which the VM keeps for its whole life (vCPU threads
                // and devices hold clones), so KVM never sees it go away while
                // the VM can run.
                unsafe { vm2.set_user_memory_region(r) }
                    .with_context(|| format!("KVM_SET_USER_MEMORY_REGION slot {}", r.slot))?;
            }
            Ok(())
        })
        .context("cannot start the memory slot registration thread")?;
    Ok((mem, MemslotRegistration(Some(handle))))
}

/// Terminal mode to restore at exit.
struct RawTerminal(libc::termios);

impl RawTerminal {
    /// Puts stdin into non-canonical, no-echo mode (signals still work).
    fn enter() -> Option<Self> {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a valid termios.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO);
            t.c_iflag &= !(libc::ICRNL);
            t.c_cc[libc::VMIN] = 1;
            t.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(RawTerminal(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes saved from the same fd.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.0) };
    }
}

/// A new pseudo-terminal for the serial console: the master (non-blocking,
/// the monitor's side), the slave held open so that the master never reports
/// hang-up while no terminal program is attached, and the slave's path.
/// Both ends are in raw mode: bytes pass unchanged in both directions.
fn open_pty() -> Result<(File, File, PathBuf)> {
    let os_err = |what: &str| anyhow!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: posix_openpt returns a new fd or -1; checked.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os_err("cannot open a pseudo-terminal (posix_openpt)"));
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let master = unsafe { File::from_raw_fd(fd) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt/unlockpt take the master fd; ptsname_r writes at most
    // `name.len()` bytes (NUL included) into the buffer, which outlives the call.
    unsafe {
        if libc::grantpt(fd) != 0 || libc::unlockpt(fd) != 0 {
            return Err(os_err("cannot unlock the pseudo-terminal"));
        }
        if libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) != 0 {
            return Err(os_err("cannot name the pseudo-terminal"));
        }
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(path.to_bytes()));
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: termios calls on the slave fd with a valid, initialised termios;
    // fcntl on the master fd. Results are checked.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(slave.as_raw_fd(), &mut t) != 0 {
            return Err(os_err("tcgetattr on the pseudo-terminal"));
        }
        libc::cfmakeraw(&mut t);
        if libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t) != 0 {
            return Err(os_err("tcsetattr on the pseudo-terminal"));
        }
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(os_err("making the pseudo-terminal non-blocking"));
        }
    }
    Ok((master, slave, path))
}

/// Serial input sources the event loop watches.
enum SerialInput {
    None,
    Stdin,
    /// The pseudo-terminal's master; the slave is only kept open.
    Pty {
        master: Arc<File>,
        _slave: File,
        path: PathBuf,
    },
    Socket {
        listener: UnixListener,
        client: Arc<Mutex<Option<UnixStream>>>,
    },
}

/// The guest's shape from a snapshot: memory size and vCPU count, checked.
fn snapshot_shape(s: &VmSnapshot) -> Result<(u64, u32)> {
    let mem_size = s.mem_size;
    if mem_size < layout::MIN_MEM
        || mem_size & 0xfff != 0
        || host_mem_total().is_some_and(|t| mem_size > t)
    {
        bail!("snapshot memory size {mem_size} bytes is invalid or exceeds the host's memory");
    }
    let vcpus = u32::try_from(s.vcpus.len())
        .ok()
        .filter(|n| (1..=vmm_proto::config::MAX_VCPUS).contains(n))
        .ok_or_else(|| anyhow!("snapshot has {} vCPUs", s.vcpus.len()))?;
    Ok((mem_size, vcpus))
}

/// Step: the VM's architectural setup (KVM's TSS and identity map, the
/// in-kernel irqchip).
fn setup_vm_arch(vm: &VmFd) -> Result<()> {
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
        .context("KVM_SET_IDENTITY_MAP_ADDR")?;
    vm.set_tss_address(layout::KVM_TSS_ADDR as usize)
        .context("KVM_SET_TSS_ADDR")?;
    vm.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
    Ok(())
}

/// The virtio-mmio devices, in slot order.
struct VirtioDevices {
    bus: Bus,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// For the DSDT.
    acpi: Vec<acpi::MmioDeviceInfo>,
    /// For `describe`.
    info: Vec<DeviceInfo>,
}

/// Step: the virtio devices with their ioeventfds and irqfds; on restore
/// each device's state comes from the snapshot, which must list the same
/// devices in the same order.
fn create_virtio_devices(
    cfg: &VmConfig,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    snap: Option<&VmSnapshot>,
) -> Result<VirtioDevices> {
    let mut d = VirtioDevices {
        bus: Bus::new(),
        transports: Vec::new(),
        acpi: Vec::new(),
        info: Vec::new(),
    };
    for (i, kind) in slot_plan(cfg).iter().enumerate() {
        let base = layout::virtio_slot_base(i);
        let gsi = layout::virtio_slot_gsi(i);
        let dev = create_device(kind)?;
        let mut t = MmioTransport::new(dev, mem.clone()).map_err(|e| anyhow!("{e}"))?;
        if let Some(s) = snap {
            let ds = s.devices.get(i).ok_or_else(|| {
                anyhow!(
                    "the configuration has more virtio devices than the snapshot ({})",
                    s.devices.len()
                )
            })?;
            if ds.kind != kind.name() {
                bail!(
                    "virtio slot {i} is {} in the snapshot but {} in the configuration",
                    ds.kind,
                    kind.name()
                );
            }
            t.restore(&ds.state)
                .map_err(|e| anyhow!("virtio slot {i}: {e}"))?;
        }
        for (q, evt) in t.queue_events().iter().enumerate() {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(base + 0x50), q as u32)
                .with_context(|| format!("KVM_IOEVENTFD for virtio slot {i} queue {q}"))?;
        }
        vm.register_irqfd(t.interrupt_event(), gsi)
            .with_context(|| format!("KVM_IRQFD for virtio slot {i} (GSI {gsi})"))?;
        let t = Arc::new(Mutex::new(t));
        d.bus
            .insert(base, layout::VIRTIO_MMIO_SIZE, t.clone() as SharedDevice)?;
        d.transports.push(t);
        d.acpi.push(acpi::MmioDeviceInfo { base, gsi });
        d.info.push(DeviceInfo {
            slot: i,
            kind: kind.kind(),
            base,
            gsi,
        });
    }
    if let Some(s) = snap {
        if s.devices.len() != d.acpi.len() {
            bail!(
                "the snapshot has {} virtio devices, the configuration {}",
                s.devices.len(),
                d.acpi.len()
            );
        }
    }
    Ok(d)
}

fn dump_dsdt(cfg: &VmConfig, dsdt: &[u8]) -> Result<()> {
    if let Some(p) = &cfg.dump_dsdt {
        std::fs::write(p, dsdt).with_context(|| format!("cannot write DSDT to {}", p.display()))?;
    }
    Ok(())
}

/// Step (boot only): ACPI tables and the kernel (and initrd) in guest
/// memory; returns the entry point.
fn load_kernel(
    cfg: &VmConfig,
    mem: &GuestMemoryMmap,
    mem_size: u64,
    vcpus: u32,
    devices: &[acpi::MmioDeviceInfo],
) -> Result<cpu::EntryMode> {
    let kernel = cfg
        .kernel
        .as_deref()
        .ok_or_else(|| anyhow!("a kernel is required to boot"))?;
    let (dsdt, rsdp) = acpi::write_tables(mem, vcpus, devices)?;
    dump_dsdt(cfg, &dsdt)?;
    let info = boot::load(
        mem,
        mem_size,
        kernel,
        cfg.initrd.as_deref(),
        &cfg.cmdline,
        rsdp,
    )?;
    Ok(info.entry)
}

/// COM1 and its host side.
struct Console {
    device: Arc<Mutex<SerialDevice>>,
    input: SerialInput,
    /// `describe`'s spelling: the `--serial` form, with the PTY's path.
    desc: String,
    /// The host path of the PTY, file or socket.
    path: Option<PathBuf>,
}

/// Step: the serial console (COM1) on its backend, restored from the
/// snapshot's registers when there is one.
fn create_console(cfg: &VmConfig, vm: &VmFd, snap: Option<&VmSnapshot>) -> Result<Console> {
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).context("cannot create eventfd")?;
    vm.register_irqfd(&serial_irq, layout::COM1_IRQ)
        .context("KVM_IRQFD for COM1")?;
    let (out, input) = match &cfg.serial {
        SerialSpec::Stdout => (
            SerialOut::Stdout(std::io::stdout()),
            // SAFETY: isatty only inspects fd 0.
            if unsafe { libc::isatty(0) } == 1 {
                SerialInput::Stdin
            } else {
                SerialInput::None
            },
        ),
        SerialSpec::File(p) => (
            SerialOut::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("cannot open serial output file {}", p.display()))?,
            ),
            SerialInput::None,
        ),
        SerialSpec::Socket(p) => {
            let _ = std::fs::remove_file(p);
            let listener = UnixListener::bind(p)
                .with_context(|| format!("cannot listen on serial socket {}", p.display()))?;
            listener.set_nonblocking(true)?;
            let client = Arc::new(Mutex::new(None));
            (
                SerialOut::Socket(client.clone()),
                SerialInput::Socket { listener, client },
            )
        }
        SerialSpec::Pty => {
            let (master, slave, path) = open_pty()?;
            // Operators and tests read this line on stderr.
            tracing::info!("serial console on {}", path.display());
            let master = Arc::new(master);
            (
                SerialOut::Pty(master.clone()),
                SerialInput::Pty {
                    master,
                    _slave: slave,
                    path,
                },
            )
        }
        SerialSpec::None => (SerialOut::Sink, SerialInput::None),
    };
    let (desc, path) = match (&input, &cfg.serial) {
        (SerialInput::Pty { path, .. }, _) => {
            (format!("pty:{}", path.display()), Some(path.clone()))
        }
        (_, SerialSpec::File(p) | SerialSpec::Socket(p)) => {
            (cfg.serial.to_string(), Some(p.clone()))
        }
        _ => (cfg.serial.to_string(), None),
    };
    let device = match snap {
        Some(s) => SerialDevice::from_state(serial_irq, out, &SerialState::from(&s.serial))
            .map_err(anyhow::Error::msg)?,
        None => SerialDevice::new(serial_irq, out).context("cannot create eventfd")?,
    };
    Ok(Console {
        device: Arc::new(Mutex::new(device)),
        input,
        desc,
        path,
    })
}

/// Step: the port I/O bus: COM1, the i8042 reset, ACPI sleep and reset registers.
fn create_pio_bus(serial: &Arc<Mutex<SerialDevice>>, control: &Arc<VmControl>) -> Result<Bus> {
    let mut pio = Bus::new();
    pio.insert(u64::from(layout::COM1_BASE), 8, serial.clone())?;
    pio.insert(
        u64::from(layout::I8042_DATA),
        5,
        Arc::new(Mutex::new(I8042::new(control.clone()))),
    )?;
    pio.insert(
        u64::from(layout::ACPI_SLEEP_CONTROL),
        2,
        Arc::new(Mutex::new(AcpiSleep::new(control.clone()))),
    )?;
    pio.insert(
        u64::from(layout::ACPI_RESET_REG),
        1,
        Arc::new(Mutex::new(AcpiReset::new(control.clone()))),
    )?;
    Ok(pio)
}

/// Step: the ACPI power button's interrupt (GED, GSI 3) for `shutdown`.
fn create_power_button(vm: &VmFd) -> Result<EventFd> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).context("cannot create eventfd")?;
    vm.register_irqfd(&evt, acpi::GED_GSI)
        .context("KVM_IRQFD for the power button")?;
    Ok(evt)
}

/// What every vCPU shares.
struct VcpuShared {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    mem: GuestMemoryMmap,
    control: Arc<VmControl>,
    pvm: bool,
}

/// Step: the vCPUs, configured for the entry point (vCPU 0) or restored
/// from the snapshot.
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    shared: &VcpuShared,
    count: u32,
    entry: Option<cpu::EntryMode>,
    snap: Option<&VmSnapshot>,
) -> Result<Vec<Vcpu>> {
    let base_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .context("KVM_GET_SUPPORTED_CPUID")?;
    let mut vcpus = Vec::new();
    for i in 0..count {
        let fd = vm
            .create_vcpu(u64::from(i))
            .with_context(|| format!("KVM_CREATE_VCPU {i}"))?;
        let v = Vcpu::new(
            i,
            fd,
            shared.pio.clone(),
            shared.mmio.clone(),
            shared.mem.clone(),
            shared.control.clone(),
            shared.pvm,
        );
        v.configure(&base_cpuid, count, if i == 0 { entry } else { None })
            .with_context(|| format!("configuring vcpu {i}"))?;
        if let Some(s) = snap {
            snapshot::restore_vcpu(&v.fd, &s.vcpus[i as usize])
                .with_context(|| format!("restoring vcpu {i}"))?;
        }
        vcpus.push(v);
    }
    if let Some(s) = snap {
        snapshot::restore_vm(vm, &s.irqchip, &s.clock)
            .context("restoring the irqchip and clock")?;
    }
    Ok(vcpus)
}

/// Step: the snapshot directory, created, canonical, and owned by the
/// jail's uid/gid so that the confined monitor can write below it.
fn prepare_snapshot_dir(cfg: &VmConfig) -> Result<Option<PathBuf>> {
    let Some(d) = &cfg.snapshot_dir else {
        return Ok(None);
    };
    std::fs::create_dir_all(d)
        .with_context(|| format!("cannot create snapshot_dir {}", d.display()))?;
    let d = d
        .canonicalize()
        .with_context(|| format!("snapshot_dir {}", d.display()))?;
    let j = &cfg.jail;
    if j.enabled && (j.uid != 0 || j.gid != 0) {
        std::os::unix::fs::chown(&d, Some(j.uid), Some(j.gid)).with_context(|| {
            format!(
                "cannot give snapshot_dir {} to uid {} gid {}",
                d.display(),
                j.uid,
                j.gid
            )
        })?;
    }
    Ok(Some(d))
}

/// Step: the control socket, listening before the jail (so the confined
/// monitor needs no right on its directory). The socket file is left to
/// the monitor's (then) owner, root, with mode 0600: the supervisor
/// connects, other users cannot.
fn bind_api_socket(cfg: &VmConfig) -> Result<Option<UnixListener>> {
    let Some(p) = &cfg.api_socket else {
        return Ok(None);
    };
    let _ = std::fs::remove_file(p);
    let l = UnixListener::bind(p)
        .with_context(|| format!("cannot listen on control socket {}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of control socket {}", p.display()))?;
    Ok(Some(l))
}

/// The jail for `cfg`: which host paths stay reachable, and as whom the
/// monitor runs.
fn jail_config(cfg: &VmConfig, snapshot_dir: Option<&Path>) -> jail::JailConfig {
    let mut keep = Vec::new();
    if let Some(d) = snapshot_dir {
        keep.push(d.to_path_buf());
    }
    if let Some(vs) = &cfg.vsock {
        // Host-initiated connections use <uds>_<port> listeners next to it.
        if let Some(dir) = absolute(&vs.uds).parent() {
            keep.push(dir.to_path_buf());
        }
    }
    jail::JailConfig {
        chroot_base: cfg.jail.dir.clone(),
        id: cfg
            .jail
            .id
            .clone()
            .unwrap_or_else(|| format!("vmm-{}", std::process::id())),
        uid: cfg.jail.uid,
        gid: cfg.jail.gid,
        keep_paths: keep,
    }
}

/// A VM that is fully built (memory, devices, vCPUs, sockets) and not yet
/// running: [`Vm::run`] confines the process and runs it.
pub struct Vm {
    cfg: VmConfig,
    // Declared before `mem`: on an early drop the registration thread is
    // joined while the memory is still mapped.
    memslots: MemslotRegistration,
    _kvm: Kvm,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    mem_size: u64,
    pvm: bool,
    control: Arc<VmControl>,
    vcpus: Vec<Vcpu>,
    vcpu_count: u32,
    devices: Vec<DeviceInfo>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    console: Console,
    power_button: EventFd,
    snapshot_dir: Option<PathBuf>,
    api_listener: Option<UnixListener>,
}

impl Vm {
    /// [`Vm::restore`] from `cfg.restore` when it is set, else [`Vm::boot`].
    pub fn new(cfg: &VmConfig) -> Result<Vm> {
        match &cfg.restore {
            Some(dir) => Vm::restore(cfg, dir),
            None => Vm::boot(cfg),
        }
    }

    /// Builds a VM that boots `cfg.kernel` (`cfg.restore` is not looked at).
    pub fn boot(cfg: &VmConfig) -> Result<Vm> {
        let mut c = cfg.clone();
        c.restore = None;
        Vm::build(c, None)
    }

    /// Builds a VM from the snapshot in `snapshot_dir`: memory size, vCPUs,
    /// device and CPU state come from it; `cfg` gives the host side (devices
    /// in the snapshot's order, console, sockets, jail).
    pub fn restore(cfg: &VmConfig, snapshot_dir: &Path) -> Result<Vm> {
        let mut c = cfg.clone();
        c.restore = Some(snapshot_dir.to_path_buf());
        Vm::build(c, Some(snapshot_dir))
    }

    fn build(cfg: VmConfig, restore: Option<&Path>) -> Result<Vm> {
        validate(&cfg, restore)?;
        let snap = restore.map(snapshot::read_state).transpose()?;
        let (mem_size, vcpu_count) = match &snap {
            Some(s) => snapshot_shape(s)?,
            None => (cfg.memory_bytes, cfg.vcpus),
        };
        // Opened before KVM is touched, so a missing or short file fails early.
        let snap_memory = restore
            .map(|d| snapshot::open_memory(d, mem_size))
            .transpose()?;

        let kvm = Kvm::new().context("cannot open /dev/kvm")?;
        let max_vcpus = kvm.get_max_vcpus();
        if vcpu_count as usize > max_vcpus {
            bail!("vcpus {vcpu_count} exceeds KVM's maximum of {max_vcpus}");
        }
        let pvm = cpu::host_is_pvm();
        let vm = kvm.create_vm().context("KVM_CREATE_VM failed")?;
        // First, so that the memslot registration's wait overlaps everything else.
        let (mem, mut memslots) = create_guest_memory(&kvm, &vm, mem_size, snap_memory.as_ref())?;
        setup_vm_arch(&vm)?;
        let control =
            Arc::new(VmControl::new(vcpu_count as usize).context("cannot create eventfd")?);

        let virtio = create_virtio_devices(&cfg, &vm, &mem, snap.as_ref())?;
        let entry = match &snap {
            // Guest memory already maps the snapshot's `memory`.
            Some(_) => {
                dump_dsdt(&cfg, &acpi::build_dsdt(&virtio.acpi))?;
                None
            }
            None => Some(load_kernel(&cfg, &mem, mem_size, vcpu_count, &virtio.acpi)?),
        };
        let console = create_console(&cfg, &vm, snap.as_ref())?;
        let pio = create_pio_bus(&console.device, &control)?;
        let power_button = create_power_button(&vm)?;

        // Restoring saved vCPU state may make KVM read guest memory (PAE page
        // directory pointers), so the slots must be in place first.
        if snap.is_some() {
            memslots.finish()?;
        }
        let shared = VcpuShared {
            pio: Arc::new(pio),
            mmio: Arc::new(virtio.bus),
            mem: mem.clone(),
            control: control.clone(),
            pvm,
        };
        let vcpus = create_vcpus(&kvm, &vm, &shared, vcpu_count, entry, snap.as_ref())?;
        let snapshot_dir = prepare_snapshot_dir(&cfg)?;
        let api_listener = bind_api_socket(&cfg)?;
        Ok(Vm {
            cfg,
            memslots,
            _kvm: kvm,
            vm: Arc::new(vm),
            mem,
            mem_size,
            pvm,
            control,
            vcpus,
            vcpu_count,
            devices: virtio.info,
            transports: virtio.transports,
            console,
            power_button,
            snapshot_dir,
            api_listener,
        })
    }

    /// The configuration the VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }

    /// The virtio devices, in slot order.
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    /// The console's host path (PTY, file or socket), if it has one.
    pub fn serial_path(&self) -> Option<&Path> {
        self.console.path.as_deref()
    }

    /// The run state shared with the vCPUs and the control socket.
    pub fn control(&self) -> &Arc<VmControl> {
        &self.control
    }

    /// Confines the process (unless the configuration says not to), starts
    /// the vCPU and control-socket threads and runs the event loop on the
    /// calling thread until the VM stops; returns why (already logged).
    /// Must be called from a single-threaded process when jailed.
    pub fn run(mut self) -> Result<ExitReason> {
        control::install_kick_handler().context("cannot install the vCPU kick signal handler")?;
        control::install_term_handlers(&self.control).context("cannot install signal handlers")?;
        // Snapshots (control socket only) skip untouched guest memory through
        // the page map; it must be opened before the jail, which has no /proc.
        // Without it a snapshot reads all of guest memory (correct, only slower).
        let pagemap = self
            .api_listener
            .as_ref()
            .and_then(|_| snapshot::PageMap::open().ok());

        // Everything is open: confine the process while it is single-threaded.
        self.memslots.finish()?;
        let jailed = self.cfg.jail.enabled;
        let mut id = self.cfg.jail.id.clone();
        if jailed {
            let jail = jail_config(&self.cfg, self.snapshot_dir.as_deref());
            jail::enter(&jail)?;
            id = Some(jail.id);
        }

        let api_ctx = Arc::new(ApiContext {
            id,
            control: self.control.clone(),
            vcpus: self.vcpu_count,
            mem_size: self.mem_size,
            devices: self.devices.clone(),
            transports: self.transports.clone(),
            power_button: self.power_button,
            jailed,
            pid: std::process::id(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            pvm: self.pvm,
            vm: self.vm.clone(),
            mem: self.mem.clone(),
            serial: self.console.device.clone(),
            serial_desc: self.console.desc.clone(),
            serial_path: self.console.path.clone(),
            pagemap,
            snapshot_dir: self.snapshot_dir.clone(),
        });

        let control = self.control.clone();
        let handles = spawn_vcpus(std::mem::take(&mut self.vcpus), &control, jailed)?;
        if let Some(l) = self.api_listener.take() {
            spawn_api(l, api_ctx, jailed)?;
        }
        if jailed {
            if let Err(e) = jail::apply_thread_filter(jail::ThreadKind::Vmm) {
                control.request_exit(ExitReason::Error(e.to_string()));
            }
        }

        let _raw = match self.console.input {
            SerialInput::Stdin => RawTerminal::enter(),
            _ => None,
        };
        event_loop(&control, &self.console.device, self.console.input)?;
        for h in handles {
            let _ = h.join();
        }
        control.wait_api_idle(std::time::Duration::from_secs(2));
        let reason = control
            .exit_reason()
            .unwrap_or_else(|| ExitReason::Error("VM stopped without a reason".into()));
        match &reason {
            ExitReason::PowerOff => {}
            ExitReason::Stopped => tracing::info!("VM stopped on request"),
            ExitReason::Signal(sig) => tracing::info!("stopped by signal {sig}"),
            ExitReason::Reset(why) => {
                tracing::warn!("guest requested reset ({why}); stopping")
            }
            ExitReason::Error(why) => tracing::error!("{why}"),
        }
        Ok(reason)
    }
}

/// Step: one thread per vCPU, each under its seccomp filter when jailed.
fn spawn_vcpus(
    vcpus: Vec<Vcpu>,
    control: &Arc<VmControl>,
    jailed: bool,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let mut handles = Vec::new();
    for mut v in vcpus {
        let c = control.clone();
        let h = std::thread::Builder::new()
            .name(format!("vcpu{}", v.index))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                if jailed {
                    if let Err(e) = jail::apply_thread_filter(jail::ThreadKind::Vcpu) {
                        c.request_exit(ExitReason::Error(format!("vcpu {}: {e}", v.index)));
                        return;
                    }
                }
                v.run();
            })
            .context("cannot spawn vcpu thread")?;
        control.add_thread(h.as_pthread_t());
        handles.push(h);
    }
    Ok(handles)
}

/// Step: the control-socket thread.
fn spawn_api(listener: UnixListener, ctx: Arc<ApiContext>, jailed: bool) -> Result<()> {
    std::thread::Builder::new()
        .name("api".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            if jailed {
                if let Err(e) = jail::apply_thread_filter(jail::ThreadKind::Api) {
                    ctx.control
                        .request_exit(ExitReason::Error(format!("control socket: {e}")));
                    return;
                }
            }
            api::serve(listener, &ctx);
        })
        .context("cannot spawn control socket thread")?;
    Ok(())
}

/// Builds and runs the VM `cfg` describes ([`Vm::new`], then [`Vm::run`]).
pub fn run(cfg: &VmConfig) -> Result<ExitReason> {
    Vm::new(cfg)?.run()
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

const TOKEN_EXIT: u64 = 1;
const TOKEN_STDIN: u64 = 2;
const TOKEN_SERIAL_LISTENER: u64 = 3;
const TOKEN_SERIAL_CLIENT: u64 = 4;
const TOKEN_SERIAL_PTY: u64 = 5;
const TOKEN_SERIAL_DRAINED: u64 = 6;

fn epoll_add(ep: &Epoll, fd: RawFd, token: u64) -> Result<()> {
    ep.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(EventSet::IN, token),
    )
    .context("epoll_ctl")
}

/// Serial input and the stop event, on the main thread.
fn event_loop(
    control: &VmControl,
    serial: &Arc<Mutex<SerialDevice>>,
    input: SerialInput,
) -> Result<()> {
    let ep = Epoll::new().context("epoll_create")?;
    epoll_add(&ep, control.exit_evt.as_raw_fd(), TOKEN_EXIT)?;
    let mut stdin_open = false;
    if !matches!(input, SerialInput::None) {
        let fd = serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drained_fd();
        epoll_add(&ep, fd, TOKEN_SERIAL_DRAINED)?;
    }
    match &input {
        SerialInput::Stdin => {
            epoll_add(&ep, 0, TOKEN_STDIN)?;
            stdin_open = true;
        }
        SerialInput::Socket { listener, .. } => {
            epoll_add(&ep, listener.as_raw_fd(), TOKEN_SERIAL_LISTENER)?;
        }
        SerialInput::Pty { master, .. } => {
            epoll_add(&ep, master.as_raw_fd(), TOKEN_SERIAL_PTY)?;
        }
        SerialInput::None => {}
    }
    let mut events = vec![EpollEvent::default(); 8];
    let mut buf = [0u8; 64];
    let feed = |bytes: &[u8]| {
        let mut s = serial.lock().unwrap_or_else(|e| e.into_inner());
        s.enqueue_input(bytes);
    };
    loop {
        if control.should_stop() {
            return Ok(());
        }
        let n = match ep.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_EXIT => {
                    if let Some(sig) = control::term_signal() {
                        control.request_exit(ExitReason::Signal(sig));
                    }
                    return Ok(());
                }
                TOKEN_STDIN if stdin_open => {
                    let r = std::io::stdin().lock().read(&mut buf);
                    match r {
                        Ok(0) | Err(_) => {
                            let _ = ep.ctl(ControlOperation::Delete, 0, EpollEvent::default());
                            stdin_open = false;
                        }
                        Ok(k) => feed(&buf[..k]),
                    }
                }
                TOKEN_SERIAL_DRAINED => {
                    let mut s = serial.lock().unwrap_or_else(|e| e.into_inner());
                    s.input_drained();
                }
                TOKEN_SERIAL_PTY => {
                    if let SerialInput::Pty { master, .. } = &input {
                        match (&**master).read(&mut buf) {
                            Ok(k) if k > 0 => feed(&buf[..k]),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            // Cannot happen while we hold the slave open; do
                            // not spin on a terminal that keeps reporting it.
                            _ => {
                                let _ = ep.ctl(
                                    ControlOperation::Delete,
                                    master.as_raw_fd(),
                                    EpollEvent::default(),
                                );
                            }
                        }
                    }
                }
                TOKEN_SERIAL_LISTENER => {
                    if let SerialInput::Socket { listener, client } = &input {
                        if let Ok((s, _)) = listener.accept() {
                            let mut c = client.lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(old) = c.take() {
                                let _ = ep.ctl(
                                    ControlOperation::Delete,
                                    old.as_raw_fd(),
                                    EpollEvent::default(),
                                );
                            }
                            let _ = s.set_nonblocking(true);
                            epoll_add(&ep, s.as_raw_fd(), TOKEN_SERIAL_CLIENT)?;
                            *c = Some(s);
                        }
                    }
                }
                TOKEN_SERIAL_CLIENT => {
                    if let SerialInput::Socket { client, .. } = &input {
                        let mut c = client.lock().unwrap_or_else(|e| e.into_inner());
                        let mut gone = true;
                        if let Some(s) = c.as_mut() {
                            match s.read(&mut buf) {
                                Ok(0) => {}
                                Ok(k) => {
                                    gone = false;
                                    drop(c);
                                    feed(&buf[..k]);
                                    c = client.lock().unwrap_or_else(|e| e.into_inner());
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                    gone = false
                                }
                                Err(_) => {}
                            }
                        }
                        if gone {
                            if let Some(s) = c.take() {
                                let _ = ep.ctl(
                                    ControlOperation::Delete,
                                    s.as_raw_fd(),
                                    EpollEvent::default(),
                                );
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
