//! The exec peers: a runc container from the same busybox bundle (and podman).

use super::*;

// ---------------------------------------------------------------------------------------
// runc and podman (exec peers)

pub(super) struct RuncZone {
    pub(super) state: tempfile::TempDir,
    pub(super) _bundle: Bundle,
    pub(super) id: String,
}

impl RuncZone {
    /// `seccomp`: with the seccomp profile bulkheadd gives its zones (else none).
    pub(super) fn start(seccomp: bool) -> Result<RuncZone, String> {
        let state = tempfile::Builder::new()
            .prefix("bhrunc-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut bundle = Bundle::new();
        bundle.args(&["sleep", "1000000"]);
        // The seccomp profile bulkheadd gives its zones, so both execs load the same filter.
        if seccomp {
            let profile = serde_json::to_value(zone::seccomp::default_profile())
                .map_err(|e| e.to_string())?;
            bundle.set("/linux/seccomp", profile);
        }
        bundle.write();
        let id = unique_id("bench-runc");
        let z = RuncZone {
            state,
            _bundle: bundle,
            id,
        };
        let mut c = z.runc(&["run", "--detach", "--bundle"]);
        c.arg(z._bundle.path()).arg(&z.id);
        // The zone inherits stdio: nothing piped, or output() would wait for it.
        let st = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err("runc run --detach failed".into());
        }
        Ok(z)
    }
    pub(super) fn runc(&self, args: &[&str]) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(self.state.path()).args(args);
        c
    }
    pub(super) fn exec_true(&self) -> Result<Duration, String> {
        timed(&mut self.runc(&["exec", &self.id, "true"]))
    }
}

impl Drop for RuncZone {
    fn drop(&mut self) {
        run_bounded(
            &mut self.runc(&["delete", "--force", &self.id]),
            Duration::from_secs(30),
        );
    }
}
