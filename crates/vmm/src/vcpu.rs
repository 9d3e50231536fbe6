//! vCPU threads: per-vCPU setup (CPUID, MSRs, FPU, LAPIC, boot registers),
//! the `KVM_RUN` exit loop dispatching port and MMIO accesses to the buses,
//! power/reset/crash exits, pause parking, and the kvm_pvm emulation
//! fallbacks from `x86::emulate`.

use std::sync::Arc;

use kvm_bindings::{
    CpuId, KVM_INTERNAL_ERROR_EMULATION, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;

use crate::bus::Bus;
use crate::control::{self, ExitReason, VmControl};
use crate::snapshot;
use crate::x86::cpu::{self, CpuError, EntryMode};
use crate::x86::emulate::{self, Fallback, FpuMemOp, PagingState};

/// One vCPU and what its exits need.
pub struct Vcpu {
    pub index: u32,
    pub fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    mem: GuestMemoryMmap,
    control: Arc<VmControl>,
    pvm: bool,
    seen_fallbacks: [bool; emulate::FALLBACK_KINDS],
}

impl Vcpu {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: u32,
        fd: VcpuFd,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        mem: GuestMemoryMmap,
        control: Arc<VmControl>,
        pvm: bool,
    ) -> Self {
        Vcpu {
            index,
            fd,
            pio,
            mmio,
            mem,
            control,
            pvm,
            seen_fallbacks: [false; emulate::FALLBACK_KINDS],
        }
    }

    /// CPUID, MSRs, FPU and LAPIC for every vCPU; registers for the boot vCPU.
    pub fn configure(
        &self,
        base_cpuid: &CpuId,
        count: u32,
        entry: Option<EntryMode>,
    ) -> Result<(), CpuError> {
        let mut cpuid = base_cpuid.clone();
        cpu::filter_cpuid(&mut cpuid, self.index, count, self.pvm);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| CpuError::Kvm("KVM_SET_CPUID2", e))?;
        cpu::setup_msrs(&self.fd)?;
        cpu::setup_fpu(&self.fd)?;
        cpu::setup_lapic(&self.fd)?;
        if let Some(mode) = entry {
            cpu::setup_sregs(&self.mem, &self.fd, mode)?;
            cpu::setup_regs(&self.fd, mode)?;
        }
        Ok(())
    }

    /// The exit loop; returns when the VM stops.
    pub fn run(&mut self) {
        control::register_vcpu_thread(self.fd.get_kvm_run() as *mut _);
        while !self.control.should_stop() {
            if self.control.is_paused() {
                let st = self.quiesce_and_save();
                self.control.store_state(self.index as usize, st);
                self.control.park();
                continue;
            }
            if let Err(reason) = self.run_once() {
                self.control.request_exit(reason);
                break;
            }
        }
        control::register_vcpu_thread(std::ptr::null_mut());
    }

    /// Completes any pending port/MMIO read (KVM finishes it on the next
    /// `KVM_RUN`, which `immediate_exit` turns into an immediate return) and
    /// captures the vCPU's state.
    fn quiesce_and_save(&mut self) -> Result<snapshot::VcpuState, String> {
        self.fd.set_kvm_immediate_exit(1);
        let r = self.fd.run().map(|_| ());
        self.fd.set_kvm_immediate_exit(0);
        match r {
            Ok(()) => {}
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(format!("completing pending I/O: {e}")),
        }
        snapshot::save_vcpu(&self.fd).map_err(|e| e.to_string())
    }

    fn run_once(&mut self) -> Result<(), ExitReason> {
        let idx = self.index;
        match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    self.pio.read(u64::from(port), data);
                }
                VcpuExit::IoOut(port, data) => {
                    self.pio.write(u64::from(port), data);
                }
                VcpuExit::MmioRead(addr, data) => {
                    self.mmio.read(addr, data);
                }
                VcpuExit::MmioWrite(addr, data) => {
                    self.mmio.write(addr, data);
                }
                // With the in-kernel irqchip HLT is handled by KVM; a HLT exit
                // only happens without it. Nothing to do but run again.
                VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
                VcpuExit::Shutdown => {
                    return Err(ExitReason::Reset(format!(
                        "vcpu {idx}: triple fault (KVM_EXIT_SHUTDOWN)"
                    )))
                }
                VcpuExit::SystemEvent(kind, _) => {
                    return Err(match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                        KVM_SYSTEM_EVENT_RESET => {
                            ExitReason::Reset(format!("vcpu {idx}: system reset event"))
                        }
                        KVM_SYSTEM_EVENT_CRASH => {
                            ExitReason::Error(format!("vcpu {idx}: guest reported a crash"))
                        }
                        other => {
                            ExitReason::Error(format!("vcpu {idx}: unknown system event {other}"))
                        }
                    })
                }
                VcpuExit::InternalError => return self.handle_internal_error(),
                VcpuExit::FailEntry(reason, cpu) => {
                    return Err(ExitReason::Error(format!(
                        "vcpu {idx}: KVM entry failed (hardware reason {reason:#x}, cpu {cpu})"
                    )))
                }
                other => {
                    return Err(ExitReason::Error(format!(
                        "vcpu {idx}: unexpected exit {other:?}"
                    )))
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked (pause/stop) or interrupted: clear the flag the
                // signal handler set and re-check the run state.
                self.fd.set_kvm_immediate_exit(0);
            }
            Err(e) => {
                return Err(ExitReason::Error(format!(
                    "vcpu {idx}: KVM_RUN failed: {e}"
                )));
            }
        }
        Ok(())
    }

    /// Moves FPU/SSE state between the vCPU and guest memory for `op`.
    fn fpu_mem(&self, op: FpuMemOp, addr: u64, ps: &PagingState) -> Result<(), String> {
        let mut fpu = self.fd.get_fpu().map_err(|e| format!("KVM_GET_FPU: {e}"))?;
        let size = op.size();
        match op {
            FpuMemOp::Ldmxcsr | FpuMemOp::Fxrstor => {
                let mut buf = [0u8; 512];
                if emulate::fetch(&self.mem, ps, addr, &mut buf[..size]) != size {
                    return Err(format!("{op:?} operand at {addr:#x} is not mapped"));
                }
                if op == FpuMemOp::Ldmxcsr {
                    let v = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    if v & 0xffff_0000 != 0 {
                        return Err(format!("ldmxcsr with reserved bits {v:#x}"));
                    }
                    fpu.mxcsr = v;
                } else {
                    emulate::fxrstor_image(&buf, &mut fpu);
                }
                self.fd
                    .set_fpu(&fpu)
                    .map_err(|e| format!("KVM_SET_FPU: {e}"))
            }
            FpuMemOp::Stmxcsr | FpuMemOp::Fxsave => {
                let img = emulate::fxsave_image(&fpu);
                let data: &[u8] = if op == FpuMemOp::Stmxcsr {
                    &img[24..28]
                } else {
                    &img
                };
                if emulate::write_virt(&self.mem, ps, addr, data) {
                    Ok(())
                } else {
                    Err(format!("{op:?} operand at {addr:#x} is not mapped"))
                }
            }
        }
    }

    fn handle_internal_error(&mut self) -> Result<(), ExitReason> {
        let idx = self.index;
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal`
        // is the active member of the kvm_run union.
        let (suberror, ndata, d0) = unsafe {
            let i = &self.fd.get_kvm_run().__bindgen_anon_1.internal;
            (i.suberror, i.ndata, i.data[0])
        };
        let regs = self
            .fd
            .get_regs()
            .map_err(|e| ExitReason::Error(format!("vcpu {idx}: KVM_GET_REGS: {e}")))?;
        if suberror != KVM_INTERNAL_ERROR_EMULATION {
            return Err(ExitReason::Error(format!(
                "vcpu {idx}: KVM internal error (suberror {suberror}, {ndata} data words, first {d0:#x}) at RIP {:#x}",
                regs.rip
            )));
        }
        let sregs = self
            .fd
            .get_sregs()
            .map_err(|e| ExitReason::Error(format!("vcpu {idx}: KVM_GET_SREGS: {e}")))?;
        let ps = PagingState {
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
        };
        let linear = if sregs.cs.l == 1 {
            regs.rip
        } else {
            sregs.cs.base.wrapping_add(regs.rip) & 0xffff_ffff
        };
        let mut bytes = [0u8; 15];
        let n = emulate::fetch(&self.mem, &ps, linear, &mut bytes);
        let bytes = &bytes[..n];
        let mut fallback = if self.pvm {
            emulate::decode(bytes)
        } else {
            None
        };
        if fallback.is_none() && self.pvm && sregs.cs.l == 1 {
            let ctx = emulate::DecodeCtx {
                regs,
                fs_base: sregs.fs.base,
                gs_base: sregs.gs.base,
            };
            fallback = emulate::decode_mem(bytes, &ctx);
        }
        if fallback == Some(Fallback::Fwait) {
            // FWAIT is a no-op unless an unmasked x87 exception is pending
            // (FSW.ES); that case is left to the report below.
            let fsw = self.fd.get_fpu().map(|f| f.fsw).unwrap_or(0x80);
            if fsw & 0x80 != 0 {
                fallback = None;
            }
        }
        let Some(f) = fallback else {
            return Err(ExitReason::Error(format!(
                "vcpu {idx}: unhandled emulation failure at RIP {:#x}: bytes {}",
                regs.rip,
                if bytes.is_empty() {
                    "(unreadable)".to_string()
                } else {
                    emulate::hex_bytes(bytes)
                }
            )));
        };
        let slot = f.kind_index();
        self.control.count_fallback(slot);
        if !self.seen_fallbacks[slot] {
            self.seen_fallbacks[slot] = true;
            tracing::warn!(
                "vcpu {idx}: kvm_pvm could not emulate {f:?} at RIP {:#x}; handled by the monitor (reported once)",
                regs.rip
            );
        }
        let mut new = regs;
        emulate::apply(f, &mut new);
        self.fd
            .set_regs(&new)
            .map_err(|e| ExitReason::Error(format!("vcpu {idx}: KVM_SET_REGS: {e}")))?;
        if let Fallback::FpuMem { op, addr, .. } = f {
            self.fpu_mem(op, addr, &ps).map_err(|e| {
                ExitReason::Error(format!("vcpu {idx}: {e} at RIP {:#x}", regs.rip))
            })?;
        }
        if f == Fallback::Breakpoint {
            let mut ev = self
                .fd
                .get_vcpu_events()
                .map_err(|e| ExitReason::Error(format!("vcpu {idx}: KVM_GET_VCPU_EVENTS: {e}")))?;
            ev.exception.injected = 1;
            ev.exception.nr = 3;
            ev.exception.has_error_code = 0;
            ev.exception.pending = 0;
            ev.exception.error_code = 0;
            self.fd
                .set_vcpu_events(&ev)
                .map_err(|e| ExitReason::Error(format!("vcpu {idx}: KVM_SET_VCPU_EVENTS: {e}")))?;
        }
        Ok(())
    }
}
