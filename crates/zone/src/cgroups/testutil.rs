//! Test helpers (tests only): forked children that wait for a go signal, so
//! a test can put them in a cgroup or under a filter before they act.
//!
//! Code run in a forked child must not allocate (the test harness is
//! multi-threaded): children use raw libc calls only and end in `_exit`.

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

pub(crate) struct Child {
    pub pid: i32,
    go: i32,
    reaped: bool,
}

impl Child {
    /// Lets the child run its body.
    pub fn release(&self) {
        let b = [1u8];
        // SAFETY: writing one byte from a live buffer to our pipe end.
        let n = unsafe { libc::write(self.go, b.as_ptr().cast(), 1) };
        assert_eq!(n, 1, "release child {}", self.pid);
    }

    pub fn wait(&mut self) -> WaitStatus {
        let st = waitpid(Pid::from_raw(self.pid), None).expect("waitpid");
        self.reaped = true;
        st
    }

    /// Waits and returns the exit code; panics if the child was killed.
    pub fn exit_code(&mut self) -> i32 {
        match self.wait() {
            WaitStatus::Exited(_, c) => c,
            other => panic!("child {} did not exit normally: {other:?}", self.pid),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(self.go) };
    }
}

/// Forks a child that waits for `release()` and then `_exit(body())`.
/// `body` must not allocate or take locks.
pub(crate) fn fork_gated(body: impl FnOnce() -> i32) -> Child {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two-element array.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        0,
        "pipe2"
    );
    // SAFETY: the child only makes raw syscalls and calls `body`, which
    // must be async-signal-safe, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let mut b = [0u8];
        // SAFETY: raw syscalls on our own descriptors and buffer.
        unsafe {
            libc::close(fds[1]);
            if libc::read(fds[0], b.as_mut_ptr().cast(), 1) != 1 {
                libc::_exit(200);
            }
            libc::close(fds[0]);
        }
        let code = body();
        // SAFETY: ends the child without running atexit handlers or destructors.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: closing the read end we do not use.
    unsafe { libc::close(fds[0]) };
    Child {
        pid,
        go: fds[1],
        reaped: false,
    }
}

/// errno after a failed libc call, in the child (no allocation).
pub(crate) fn errno() -> i32 {
    nix::errno::Errno::last_raw()
}
