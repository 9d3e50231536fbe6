//! VM-wide run state shared by vCPU threads, devices, the event loop and the
//! control socket: why the VM stops, pause/resume handshakes, and kicking
//! vCPUs out of `KVM_RUN` with a signal.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use kvm_bindings::kvm_run;
use vmm_sys_util::eventfd::EventFd;

use crate::snapshot::VcpuState;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off through the ACPI sleep register.
    PowerOff,
    /// The guest asked for a reset (or triple-faulted).
    Reset(String),
    /// A `stop` (or timed-out `shutdown`) request.
    Stopped,
    /// SIGTERM, SIGINT or SIGHUP.
    Signal(i32),
    /// Something the monitor cannot continue from.
    Error(String),
}

impl ExitReason {
    /// Process exit code: 0 for a clean end, 2 for reset, 1 for errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff | ExitReason::Stopped => 0,
            ExitReason::Reset(_) => 2,
            ExitReason::Signal(s) => 128 + s,
            ExitReason::Error(_) => 1,
        }
    }
}

#[derive(Default)]
struct PauseState {
    requested: bool,
    parked: usize,
}

/// Shared run state of one VM.
pub struct VmControl {
    stop: AtomicBool,
    exit: Mutex<Option<ExitReason>>,
    /// Written once when the VM stops; the event loop waits on it.
    pub exit_evt: EventFd,
    pause: Mutex<PauseState>,
    pause_cv: Condvar,
    threads: Mutex<Vec<libc::pthread_t>>,
    vcpus: usize,
    /// How often each kvm_pvm emulation fallback ran (`Fallback::kind_index`).
    fallbacks: [std::sync::atomic::AtomicU64; crate::x86::emulate::FALLBACK_KINDS],
    /// Control-socket requests read but not yet answered.
    api_inflight: std::sync::atomic::AtomicUsize,
    /// Each vCPU's state, captured as it parks (for snapshots).
    states: Mutex<Vec<Option<Result<VcpuState, String>>>>,
}

thread_local! {
    // The calling vCPU thread's kvm_run mapping, for the kick signal handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe: a const-initialised thread-local read and a byte store.
    let p = KVM_RUN_PTR.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: `p` is this thread's kvm_run mapping, registered by
        // `register_vcpu_thread` and valid for the thread's lifetime (the
        // VcpuFd outlives the run loop). immediate_exit is a plain u8.
        unsafe { std::ptr::write_volatile(&mut (*p).immediate_exit, 1) };
    }
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// eventfd the termination handler writes (the event loop's stop event).
static TERM_FD: AtomicI32 = AtomicI32::new(-1);
/// The termination signal received, or 0.
static TERM_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn term_handler(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TERM_SIGNAL.store(sig, Ordering::SeqCst);
    let fd = TERM_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `fd` is the VM's exit
        // eventfd, which lives until the process exits, and `one` is 8 bytes.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// SIGTERM, SIGINT and SIGHUP stop the VM (through `exit_evt`) so the
/// monitor can restore the terminal and exit with 128 + signal.
pub fn install_term_handlers(control: &VmControl) -> std::io::Result<()> {
    TERM_FD.store(control.exit_evt.as_raw_fd(), Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        vmm_sys_util::signal::register_signal_handler(sig, term_handler)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    }
    Ok(())
}

/// The termination signal that arrived, if any.
pub fn term_signal() -> Option<i32> {
    match TERM_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Called by each vCPU thread before its first `KVM_RUN`.
pub fn register_vcpu_thread(run: *mut kvm_run) {
    KVM_RUN_PTR.with(|c| c.set(run));
}

impl VmControl {
    pub fn new(vcpus: usize) -> std::io::Result<Self> {
        Ok(VmControl {
            stop: AtomicBool::new(false),
            exit: Mutex::new(None),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            pause: Mutex::new(PauseState::default()),
            pause_cv: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            vcpus,
            states: Mutex::new(vec![None; vcpus]),
            fallbacks: Default::default(),
            api_inflight: Default::default(),
        })
    }

    pub fn vcpu_count(&self) -> usize {
        self.vcpus
    }

    /// Records a vCPU thread so it can be kicked.
    pub fn add_thread(&self, t: libc::pthread_t) {
        lock(&self.threads).push(t);
    }

    /// Stops the VM; the first reason wins.
    pub fn request_exit(&self, reason: ExitReason) {
        let first = {
            let mut e = lock(&self.exit);
            let first = e.is_none();
            if first {
                *e = Some(reason);
            }
            first
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wake parked vCPUs so they can leave.
        {
            let _g = lock(&self.pause);
            self.pause_cv.notify_all();
        }
        if first {
            let _ = self.exit_evt.write(1);
        }
        self.kick_all();
    }

    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn exit_reason(&self) -> Option<ExitReason> {
        lock(&self.exit).clone()
    }

    fn kick_all(&self) {
        for t in lock(&self.threads).iter() {
            // SAFETY: `t` is a live vCPU thread of this process (threads are
            // joined only after the VM stopped and nobody kicks any more);
            // the signal has a handler installed.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    pub fn is_paused(&self) -> bool {
        lock(&self.pause).requested
    }

    /// Asks every vCPU to park and waits until they all have (or the VM
    /// stopped). Returns false if the VM stopped instead.
    pub fn pause(&self) -> bool {
        {
            let mut p = lock(&self.pause);
            if p.requested && p.parked == self.vcpus {
                return true;
            }
            p.requested = true;
        }
        loop {
            self.kick_all();
            let p = lock(&self.pause);
            let (p, _) = self
                .pause_cv
                .wait_timeout(p, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner());
            if self.should_stop() {
                return false;
            }
            if p.parked == self.vcpus {
                return true;
            }
        }
    }

    /// A control-socket request started (`true`) or was answered (`false`).
    pub fn api_request(&self, started: bool) {
        if started {
            self.api_inflight.fetch_add(1, Ordering::SeqCst);
        } else {
            self.api_inflight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Lets an answer to a request that stopped the VM (stop, shutdown)
    /// reach the client before the process exits; bounded by `timeout`.
    pub fn wait_api_idle(&self, timeout: Duration) {
        let start = std::time::Instant::now();
        while self.api_inflight.load(Ordering::SeqCst) > 0 && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Counts one emulation fallback of kind `k`.
    pub fn count_fallback(&self, k: usize) {
        if let Some(c) = self.fallbacks.get(k) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Fallback counts by kind index.
    pub fn fallback_counts(&self) -> Vec<u64> {
        self.fallbacks
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Stores vCPU `index`'s state captured while parking.
    pub fn store_state(&self, index: usize, st: Result<VcpuState, String>) {
        if let Some(slot) = lock(&self.states).get_mut(index) {
            *slot = Some(st);
        }
    }

    /// The states captured at the last pause, in vCPU order.
    pub fn states(&self) -> Result<Vec<VcpuState>, String> {
        lock(&self.states)
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Some(Ok(st)) => Ok(st.clone()),
                Some(Err(e)) => Err(format!("vcpu {i}: {e}")),
                None => Err(format!("vcpu {i}: no state captured")),
            })
            .collect()
    }

    pub fn resume(&self) {
        for s in lock(&self.states).iter_mut() {
            *s = None;
        }
        let mut p = lock(&self.pause);
        p.requested = false;
        self.pause_cv.notify_all();
    }

    /// Called by a vCPU thread that saw a pause request: blocks until resume
    /// or stop.
    pub fn park(&self) {
        let mut p = lock(&self.pause);
        if !p.requested {
            return;
        }
        p.parked += 1;
        self.pause_cv.notify_all();
        while p.requested && !self.should_stop() {
            p = self.pause_cv.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.parked -= 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_exit_reason_wins_and_codes() {
        let c = VmControl::new(1).unwrap();
        c.request_exit(ExitReason::PowerOff);
        c.request_exit(ExitReason::Error("x".into()));
        assert_eq!(c.exit_reason(), Some(ExitReason::PowerOff));
        assert!(c.should_stop());
        assert_eq!(c.exit_evt.read().unwrap(), 1);
        assert_eq!(ExitReason::Reset("r".into()).exit_code(), 2);
        assert_eq!(ExitReason::Error("e".into()).exit_code(), 1);
    }

    #[test]
    fn pause_waits_for_parked_threads() {
        let c = Arc::new(VmControl::new(2).unwrap());
        let mut hs = Vec::new();
        for _ in 0..2 {
            let c = c.clone();
            hs.push(std::thread::spawn(move || {
                let mut parks = 0;
                while !c.should_stop() {
                    if c.is_paused() {
                        c.park();
                        parks += 1;
                    }
                    std::thread::yield_now();
                }
                parks
            }));
        }
        assert!(c.pause());
        assert!(c.is_paused());
        c.resume();
        c.request_exit(ExitReason::Stopped);
        for h in hs {
            assert!(h.join().unwrap() >= 1);
        }
    }
}
