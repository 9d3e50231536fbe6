//! The per-device worker thread (one epoll loop over the queue EventFds, a
//! control EventFd and any backend fds), its pause/resume/snapshot control,
//! and `Chain`: a descriptor chain copied out of guest memory with every
//! descriptor bounds-checked, plus gather/scatter helpers over it.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, Error, Interrupt, VIRTIO_RING_F_EVENT_IDX};

/// Avail ring flag: the driver does not want used-buffer interrupts.
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Worker thread stack: the loop keeps its buffers on the heap.
const WORKER_STACK: usize = 256 * 1024;
/// Chains handled per queue notification before yielding to other fds.
pub const CHAIN_BUDGET: usize = 256;
/// Descriptors accepted in one chain (direct + indirect).
const MAX_CHAIN_DESCS: usize = 1024;
/// epoll token of the control EventFd; queue i uses `QUEUE_TOKEN_BASE + i`;
/// backends use tokens from `BACKEND_TOKEN_BASE`.
const CONTROL_TOKEN: u64 = 0;
const QUEUE_TOKEN_BASE: u64 = 1;
pub const BACKEND_TOKEN_BASE: u64 = 1000;

/// One descriptor of a chain, already checked to lie inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub addr: GuestAddress,
    pub len: u32,
    pub write: bool,
}

/// A descriptor chain popped from a queue.
#[derive(Debug)]
pub struct Chain {
    pub head: u16,
    pub descs: Vec<Desc>,
    /// False when a descriptor pointed outside guest memory or the chain was
    /// too long: such a chain is returned unused (length 0).
    pub valid: bool,
}

impl Chain {
    pub fn readable_len(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| !d.write)
            .map(|d| u64::from(d.len))
            .sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| d.write)
            .map(|d| u64::from(d.len))
            .sum()
    }

    /// Gather device-readable bytes starting at byte `offset` of the readable
    /// part into `buf`; returns how many bytes were copied.
    pub fn read_at(&self, mem: &GuestMemoryMmap, offset: u64, buf: &mut [u8]) -> usize {
        self.copy(false, offset, buf.len(), |addr, range| {
            mem.read_slice(&mut buf[range], addr).is_ok()
        })
    }

    /// Scatter `buf` into the device-writable part starting at byte `offset`;
    /// returns how many bytes were copied.
    pub fn write_at(&self, mem: &GuestMemoryMmap, offset: u64, buf: &[u8]) -> usize {
        self.copy(true, offset, buf.len(), |addr, range| {
            mem.write_slice(&buf[range], addr).is_ok()
        })
    }

    /// Host `iovec`s covering `len` bytes of the device-writable (`write`) or
    /// device-readable part of the chain from byte `offset`, for `preadv` /
    /// `pwritev` straight into or out of guest memory. `None` when the part is
    /// shorter than `offset + len` or a piece is not in guest memory (neither
    /// happens for a valid chain of the right size).
    ///
    /// The pointers stay valid while `mem` (whose regions live as long as the
    /// VM) is alive; the guest may change the bytes concurrently, which the
    /// kernel's copy tolerates as a plain `memcpy` would not.
    pub fn iovecs(
        &self,
        mem: &GuestMemoryMmap,
        write: bool,
        offset: u64,
        len: u64,
    ) -> Option<Vec<libc::iovec>> {
        let mut iov = Vec::new();
        let mut covered = 0u64;
        for (addr, n) in self.spans(write, offset, len) {
            for slice in mem.get_slices(addr, n as usize, perm(write)).ok()? {
                let slice = slice.ok()?;
                iov.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
            covered += n;
        }
        (covered == len).then_some(iov)
    }

    /// The guest ranges holding bytes `offset..offset + len` of the
    /// device-writable (`write`) or device-readable part, in order; shorter
    /// when the part is.
    fn spans(
        &self,
        write: bool,
        offset: u64,
        len: u64,
    ) -> impl Iterator<Item = (GuestAddress, u64)> + '_ {
        let mut skip = offset;
        let mut left = len;
        self.descs
            .iter()
            .filter(move |d| d.write == write)
            .map_while(move |d| {
                if left == 0 {
                    return None;
                }
                let dlen = u64::from(d.len);
                if skip >= dlen {
                    skip -= dlen;
                    return Some(None);
                }
                let n = (dlen - skip).min(left);
                // In range: the descriptor was checked to lie in guest memory.
                let addr = GuestAddress(d.addr.0 + skip);
                left -= n;
                skip = 0;
                Some(Some((addr, n)))
            })
            .flatten()
    }

    fn copy<F>(&self, write: bool, offset: u64, len: usize, mut f: F) -> usize
    where
        F: FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
    {
        let mut done = 0usize;
        for (addr, n) in self.spans(write, offset, len as u64) {
            // Fits in usize: n ≤ len.
            let n = n as usize;
            if !f(addr, done..done + n) {
                break;
            }
            done += n;
        }
        done
    }
}

/// State a backend works with on the worker thread.
pub struct Ctx {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub interrupt: Interrupt,
    pub epoll: Epoll,
    pub acked_features: u64,
    /// Duplicates of the queue notification EventFds (for `requeue`).
    queue_evts: Vec<EventFd>,
    /// Queues that got used buffers since the last `flush_interrupts`.
    used: Vec<bool>,
    broken: bool,
}

impl Ctx {
    pub fn new(
        mem: GuestMemoryMmap,
        mut queues: Vec<Queue>,
        interrupt: Interrupt,
        acked_features: u64,
        queue_evts: Vec<EventFd>,
    ) -> io::Result<Self> {
        let n = queues.len();
        let event_idx = acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        Ok(Ctx {
            mem,
            queues,
            interrupt,
            epoll: Epoll::new()?,
            acked_features,
            queue_evts,
            used: vec![false; n],
            broken: false,
        })
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The driver broke the protocol: set DEVICE_NEEDS_RESET and stop
    /// processing queues until the driver resets the device.
    pub fn fail(&mut self, reason: &str) {
        self.broken = true;
        self.interrupt.set_needs_reset(reason);
    }

    /// Pop the next available chain of queue `q`, copying and checking its
    /// descriptors (indirect tables included). `None` when the queue is empty
    /// or the device is broken.
    ///
    /// With EVENT_IDX, finding the queue empty is when the device asks to be
    /// notified again: it sets `avail_event` to the next index it will look
    /// at, then looks once more, because a chain the driver published before
    /// it saw the new `avail_event` comes with no notification. Backends pop
    /// a queue until it is empty, or pop only when they have something to put
    /// in it (receive queues), so they are never notified for nothing.
    pub fn pop(&mut self, q: usize) -> Option<Chain> {
        if self.broken {
            return None;
        }
        if let Some(c) = self.pop_once(q) {
            return Some(c);
        }
        let queue = self.queues.get_mut(q)?;
        if !queue.event_idx_enabled() {
            return None;
        }
        match queue.enable_notification(&self.mem) {
            Ok(true) => self.pop_once(q),
            Ok(false) => None,
            Err(e) => {
                self.fail(&format!("queue {q}: cannot set avail_event: {e}"));
                None
            }
        }
    }

    /// [`Ctx::pop`] without the EVENT_IDX re-arm; callers check `broken`.
    fn pop_once(&mut self, q: usize) -> Option<Chain> {
        let mem = &self.mem;
        let queue = self.queues.get_mut(q)?;
        let mut iter = match queue.iter(mem) {
            Ok(it) => it,
            Err(e) => {
                // Available index moved by more than the queue size.
                self.fail(&format!("queue {q}: {e}"));
                return None;
            }
        };
        let dc = iter.next()?;
        let head = dc.head_index();
        let mut descs = Vec::new();
        let mut valid = true;
        for d in dc {
            if descs.len() >= MAX_CHAIN_DESCS {
                valid = false;
                break;
            }
            if d.len() > 0 && !mem.check_range(d.addr(), d.len() as usize, perm(d.is_write_only()))
            {
                valid = false;
                break;
            }
            descs.push(Desc {
                addr: d.addr(),
                len: d.len(),
                write: d.is_write_only(),
            });
        }
        Some(Chain { head, descs, valid })
    }

    /// Come back to queue `q` after serving other fds (used when a
    /// notification's chain budget ran out).
    pub fn requeue(&self, q: usize) {
        if let Some(e) = self.queue_evts.get(q) {
            let _ = e.write(1);
        }
    }

    /// Put the last popped chain back (it will be popped again).
    pub fn undo_pop(&mut self, q: usize) {
        if let Some(queue) = self.queues.get_mut(q) {
            queue.go_to_previous_position();
        }
    }

    /// Whether queue `q` has chains available (without consuming them).
    pub fn has_avail(&mut self, q: usize) -> bool {
        if self.broken {
            return false;
        }
        let mem = &self.mem;
        match self.queues.get_mut(q) {
            Some(queue) => queue
                .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                .map(|idx| idx.0 != queue.next_avail())
                .unwrap_or(false),
            None => false,
        }
    }

    /// Return a chain to the driver with `len` bytes written.
    pub fn complete(&mut self, q: usize, head: u16, len: u32) {
        let mem = &self.mem;
        let Some(queue) = self.queues.get_mut(q) else {
            return;
        };
        if let Err(e) = queue.add_used(mem, head, len) {
            self.fail(&format!("queue {q}: cannot add used element: {e}"));
            return;
        }
        if let Some(u) = self.used.get_mut(q) {
            *u = true;
        }
    }

    /// Raise the used-buffer interrupt if any queue got used buffers.
    pub fn flush_interrupts(&mut self) {
        let mut any = false;
        for (q, used) in self.used.iter_mut().enumerate() {
            if std::mem::take(used) {
                let mem = &self.mem;
                if let Some(queue) = self.queues.get_mut(q) {
                    let wanted = queue.needs_notification(mem).unwrap_or(true);
                    // Without EVENT_IDX the driver can still ask for quiet
                    // (VRING_AVAIL_F_NO_INTERRUPT, e.g. while it polls);
                    // virtio-queue ignores that flag, so check it here.
                    let quiet = !queue.event_idx_enabled()
                        && mem
                            .read_obj::<u16>(GuestAddress(queue.avail_ring()))
                            .is_ok_and(|f| u16::from_le(f) & VRING_AVAIL_F_NO_INTERRUPT != 0);
                    any |= wanted && !quiet;
                }
            }
        }
        if any {
            self.interrupt.signal_used();
        }
    }

    /// Register a backend fd in this worker's epoll set.
    pub fn add_fd(&self, fd: &impl AsRawFd, events: EventSet, token: u64) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(events, token),
        )
    }

    pub fn modify_fd(&self, fd: &impl AsRawFd, events: EventSet, token: u64) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd.as_raw_fd(),
            EpollEvent::new(events, token),
        )
    }

    pub fn remove_fd(&self, fd: &impl AsRawFd) {
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            fd.as_raw_fd(),
            EpollEvent::default(),
        );
    }

    fn queue_snapshot(&self) -> Value {
        Value::Array(
            self.queues
                .iter()
                .map(|q| json!({"next_avail": q.next_avail(), "next_used": q.next_used()}))
                .collect(),
        )
    }
}

/// Device-specific half of a worker.
pub trait Backend: Send + 'static {
    /// Called on the worker thread before the loop (register backend fds).
    fn start(&mut self, _ctx: &mut Ctx) -> io::Result<()> {
        Ok(())
    }
    /// Queue `q` was notified.
    fn queue_event(&mut self, ctx: &mut Ctx, q: usize);
    /// A backend fd registered with `token` is ready.
    fn fd_event(&mut self, _ctx: &mut Ctx, _token: u64, _events: EventSet) {}
    /// Device-specific state for a snapshot.
    fn snapshot(&self) -> Value {
        Value::Null
    }
    /// The earliest instant the backend wants [`Backend::timer`] called
    /// (None: no timer). Asked after every round of events, so it must be cheap.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    /// The instant from [`Backend::next_deadline`] has passed. Events handled
    /// since may have made it moot: act only on what has expired by `now`.
    fn timer(&mut self, _ctx: &mut Ctx, _now: Instant) {}
}

/// epoll timeout (ms, rounded up so the deadline has passed on wake-up) until
/// `deadline`; -1 (wait for events only) without one.
fn epoll_timeout(deadline: Option<Instant>, now: Instant) -> i32 {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(now);
            let ms = left
                .as_nanos()
                .div_ceil(Duration::from_millis(1).as_nanos());
            i32::try_from(ms).unwrap_or(i32::MAX)
        }
    }
}

enum Cmd {
    Pause(mpsc::Sender<()>),
    Resume,
    Snapshot(mpsc::Sender<Value>),
    Stop,
}

/// Control handle of a running worker; dropping it stops the worker.
pub struct WorkerHandle {
    ctl: EventFd,
    tx: mpsc::Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    fn send(&self, cmd: Cmd) -> bool {
        if self.tx.send(cmd).is_err() {
            return false;
        }
        self.ctl.write(1).is_ok()
    }

    /// Stop processing; returns when the worker is idle.
    pub fn pause(&self) {
        let (tx, rx) = mpsc::channel();
        if self.send(Cmd::Pause(tx)) {
            let _ = rx.recv();
        }
    }

    pub fn resume(&self) {
        self.send(Cmd::Resume);
    }

    /// Queue indices and device state (`{"queues": [...], "device": ...}`).
    pub fn snapshot(&self) -> Value {
        let (tx, rx) = mpsc::channel();
        if self.send(Cmd::Snapshot(tx)) {
            rx.recv().unwrap_or(Value::Null)
        } else {
            Value::Null
        }
    }

    /// Stop the worker and wait for its thread to exit.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(t) = self.thread.take() {
            self.send(Cmd::Stop);
            let _ = t.join();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Start a worker thread named `name` running `backend` over `act`.
pub fn spawn<B: Backend>(
    name: &str,
    mut backend: B,
    act: Activation,
) -> Result<WorkerHandle, Error> {
    let ctl = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    let ctl_worker = ctl.try_clone().map_err(Error::EventFd)?;
    let mut ctx = Ctx::new(
        act.mem,
        act.queues,
        act.interrupt,
        act.acked_features,
        act.queue_evts,
    )
    .map_err(Error::Worker)?;
    ctx.add_fd(&ctl_worker, EventSet::IN, CONTROL_TOKEN)
        .map_err(Error::Worker)?;
    for (i, evt) in ctx.queue_evts.iter().enumerate() {
        ctx.add_fd(evt, EventSet::IN, QUEUE_TOKEN_BASE + i as u64)
            .map_err(Error::Worker)?;
    }
    backend.start(&mut ctx).map_err(Error::Worker)?;
    // Look at every queue once at start: after a restore, requests that
    // were in flight at snapshot time have no pending notification.
    for q in 0..ctx.queues.len() {
        ctx.requeue(q);
    }
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(WORKER_STACK)
        .spawn(move || run(backend, ctx, ctl_worker, rx))
        .map_err(Error::Worker)?;
    Ok(WorkerHandle {
        ctl,
        tx,
        thread: Some(thread),
    })
}

fn snapshot_of<B: Backend>(backend: &B, ctx: &Ctx) -> Value {
    json!({"queues": ctx.queue_snapshot(), "device": backend.snapshot()})
}

/// Handle control commands; returns false when the worker must exit.
fn control<B: Backend>(backend: &B, ctx: &mut Ctx, rx: &mpsc::Receiver<Cmd>) -> bool {
    let mut paused = false;
    loop {
        let cmd = if paused {
            match rx.recv() {
                Ok(c) => c,
                Err(_) => return false,
            }
        } else {
            match rx.try_recv() {
                Ok(c) => c,
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        };
        match cmd {
            Cmd::Pause(ack) => {
                // Idle means: all completed work has been signalled.
                ctx.flush_interrupts();
                paused = true;
                let _ = ack.send(());
            }
            Cmd::Resume => paused = false,
            Cmd::Snapshot(reply) => {
                let _ = reply.send(snapshot_of(backend, ctx));
            }
            Cmd::Stop => return false,
        }
    }
}

fn run<B: Backend>(mut backend: B, mut ctx: Ctx, ctl: EventFd, rx: mpsc::Receiver<Cmd>) {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let deadline = backend.next_deadline();
        let n = match ctx
            .epoll
            .wait(epoll_timeout(deadline, Instant::now()), &mut events)
        {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for ev in events.iter().take(n) {
            let token = ev.data();
            if token == CONTROL_TOKEN {
                let _ = ctl.read();
                if !control(&backend, &mut ctx, &rx) {
                    return;
                }
            } else if token < BACKEND_TOKEN_BASE {
                let q = (token - QUEUE_TOKEN_BASE) as usize;
                if let Some(evt) = ctx.queue_evts.get(q) {
                    let _ = evt.read();
                }
                if !ctx.broken {
                    backend.queue_event(&mut ctx, q);
                }
            } else if !ctx.broken {
                backend.fd_event(&mut ctx, token, ev.event_set());
            }
        }
        // The deadline the wait was bounded by; the events may have cleared
        // it, so the backend's timer checks for itself what has expired.
        let now = Instant::now();
        if !ctx.broken && deadline.is_some_and(|d| d <= now) {
            backend.timer(&mut ctx, now);
        }
        ctx.flush_interrupts();
        if ctx.broken {
            // Serve only control commands until the transport stops us, so
            // level-triggered backend fds cannot make the loop spin.
            broken_idle(&backend, &ctx, &rx);
            return;
        }
    }
}

fn broken_idle<B: Backend>(backend: &B, ctx: &Ctx, rx: &mpsc::Receiver<Cmd>) {
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Cmd::Pause(ack) => {
                let _ = ack.send(());
            }
            Cmd::Resume => {}
            Cmd::Snapshot(reply) => {
                let _ = reply.send(snapshot_of(backend, ctx));
            }
            Cmd::Stop => return,
        }
    }
}

fn perm(write: bool) -> Permissions {
    if write {
        Permissions::Write
    } else {
        Permissions::Read
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{guest_memory, TestQueue};
    use super::*;

    const QSIZE: u16 = 8;

    /// A synchronous worker context over one queue laid out by `TestQueue`.
    fn ctx_with(features: u64) -> (Ctx, TestQueue) {
        let mem = guest_memory(1 << 20);
        let tq = TestQueue::new(&mem, 0x1000, QSIZE);
        let mut q = Queue::new(QSIZE).unwrap();
        q.try_set_size(QSIZE).unwrap();
        q.try_set_desc_table_address(GuestAddress(tq.desc)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(tq.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(tq.used)).unwrap();
        q.set_ready(true);
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ctx = Ctx::new(mem, vec![q], Interrupt::new().unwrap(), features, vec![evt]).unwrap();
        (ctx, tq)
    }

    fn avail_event(ctx: &Ctx, tq: &TestQueue) -> u16 {
        let at = tq.used + 4 + 8 * u64::from(QSIZE);
        ctx.mem.read_obj::<u16>(GuestAddress(at)).unwrap()
    }

    fn set_used_event(ctx: &Ctx, tq: &TestQueue, v: u16) {
        let at = tq.avail + 4 + 2 * u64::from(QSIZE);
        ctx.mem.write_obj(v, GuestAddress(at)).unwrap();
    }

    fn interrupted(ctx: &Ctx) -> bool {
        ctx.interrupt.event().read().is_ok()
    }

    const EVENT_IDX: u64 = (1 << 32) | (1 << VIRTIO_RING_F_EVENT_IDX);

    #[test]
    fn event_idx_asks_for_the_next_notification_when_the_queue_runs_dry() {
        let (mut ctx, mut tq) = ctx_with(EVENT_IDX);
        for n in 1..=3u16 {
            tq.add_chain(&ctx.mem, &[(0x8000, 16, false)]);
            let c = ctx.pop(0).expect("a chain");
            assert!(ctx.pop(0).is_none());
            // Kick me when the driver publishes index n (the next one I read).
            assert_eq!(avail_event(&ctx, &tq), n);
            ctx.complete(0, c.head, 0);
        }
    }

    #[test]
    fn event_idx_interrupts_only_past_used_event() {
        let (mut ctx, mut tq) = ctx_with(EVENT_IDX);
        // used_event 0: the first used buffer interrupts.
        tq.add_chain(&ctx.mem, &[(0x8000, 16, true)]);
        let c = ctx.pop(0).unwrap();
        ctx.complete(0, c.head, 4);
        ctx.flush_interrupts();
        assert!(interrupted(&ctx));
        // The driver wants an interrupt only once used index passes 5.
        set_used_event(&ctx, &tq, 5);
        for _ in 0..4 {
            tq.add_chain(&ctx.mem, &[(0x8000, 16, true)]);
            let c = ctx.pop(0).unwrap();
            ctx.complete(0, c.head, 4);
            ctx.flush_interrupts();
            assert!(!interrupted(&ctx), "interrupt before used_event");
        }
        // Used index goes 5 -> 6: that crosses used_event.
        tq.add_chain(&ctx.mem, &[(0x8000, 16, true)]);
        let c = ctx.pop(0).unwrap();
        ctx.complete(0, c.head, 4);
        ctx.flush_interrupts();
        assert!(interrupted(&ctx));
    }

    #[test]
    fn without_event_idx_avail_event_is_left_alone() {
        let (mut ctx, mut tq) = ctx_with(1 << 32);
        tq.add_chain(&ctx.mem, &[(0x8000, 16, false)]);
        assert!(ctx.pop(0).is_some());
        assert!(ctx.pop(0).is_none());
        assert_eq!(avail_event(&ctx, &tq), 0);
    }

    #[test]
    fn indirect_tables_are_followed_and_checked() {
        let (mut ctx, mut tq) =
            ctx_with((1 << 32) | (1 << super::super::VIRTIO_RING_F_INDIRECT_DESC));
        let table = 0x9000u64;
        let put = |ctx: &Ctx, i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let at = table + 16 * i;
            ctx.mem.write_obj(addr, GuestAddress(at)).unwrap();
            ctx.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            ctx.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            ctx.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        };
        // Table: a 16-byte device-readable buffer, then a 512-byte writable one.
        put(&ctx, 0, 0xa000, 16, 1, 1);
        put(&ctx, 1, 0xb000, 512, 2, 0);
        tq.write_desc(&ctx.mem, 0, table, 32, 4, 0);
        tq.publish(&ctx.mem, 0);
        let c = ctx.pop(0).expect("chain");
        assert!(c.valid);
        assert_eq!(
            c.descs,
            vec![
                Desc {
                    addr: GuestAddress(0xa000),
                    len: 16,
                    write: false
                },
                Desc {
                    addr: GuestAddress(0xb000),
                    len: 512,
                    write: true
                },
            ]
        );
        // An indirect entry pointing outside guest memory makes the chain invalid.
        put(&ctx, 0, (1 << 20) - 8, 16, 0, 0);
        tq.write_desc(&ctx.mem, 1, table, 16, 4, 0);
        tq.publish(&ctx.mem, 1);
        let c = ctx.pop(0).expect("chain");
        assert!(!c.valid);
    }

    #[test]
    fn epoll_timeout_rounds_up_and_saturates() {
        let now = Instant::now();
        assert_eq!(epoll_timeout(None, now), -1);
        assert_eq!(epoll_timeout(Some(now), now), 0);
        assert_eq!(
            epoll_timeout(now.checked_sub(Duration::from_secs(1)), now),
            0
        );
        assert_eq!(epoll_timeout(Some(now + Duration::from_micros(1)), now), 1);
        assert_eq!(
            epoll_timeout(Some(now + Duration::from_millis(1500)), now),
            1500
        );
        assert_eq!(
            epoll_timeout(Some(now + Duration::from_secs(100 * 86_400)), now),
            i32::MAX
        );
    }
}
