//! OCI hooks: run a hook binary with the container state JSON on stdin,
//! honour its timeout (killing it when exceeded) and report failures naming
//! the hook path and its exit status.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::error::{Result, ZoneError};

/// Run each hook in order; the first failure stops the list.
pub fn run_hooks(kind: &str, hooks: &[Hook], state_json: &str) -> Result<()> {
    for h in hooks {
        run_hook(kind, h, state_json)?;
    }
    Ok(())
}

/// Run one hook.
pub fn run_hook(kind: &str, h: &Hook, state_json: &str) -> Result<()> {
    let path = h.path();
    let args = h.args().clone().unwrap_or_default();
    let mut cmd = Command::new(path);
    if let Some((first, rest)) = args.split_first() {
        use std::os::unix::process::CommandExt;
        cmd.arg0(first);
        cmd.args(rest);
    }
    cmd.env_clear();
    for kv in h.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| ZoneError::Msg(format!("{kind} hook {}: {e}", path.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine (EPIPE is ignored).
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let status = match h.timeout() {
        Some(t) if t > 0 => {
            // Hand-rolled wait with deadline: std has no waitpid-with-timeout;
            // pidfd + poll gives one without sleeping in a loop.
            let deadline = Instant::now() + Duration::from_secs(t as u64);
            match wait_deadline(&mut child, deadline)? {
                Some(s) => s,
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ZoneError::Msg(format!(
                        "{kind} hook {}: timed out after {t}s and was killed",
                        path.display()
                    )));
                }
            }
        }
        _ => child
            .wait()
            .map_err(|e| ZoneError::Msg(format!("{kind} hook {}: wait: {e}", path.display())))?,
    };
    if status.success() {
        return Ok(());
    }
    let how = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => "failed".into(),
    };
    Err(ZoneError::Msg(format!(
        "{kind} hook {}: {how}",
        path.display()
    )))
}

fn wait_deadline(
    child: &mut std::process::Child,
    deadline: Instant,
) -> Result<Option<std::process::ExitStatus>> {
    let pidfd = crate::process::pidfd_open(child.id() as i32)?;
    loop {
        if let Some(s) = child
            .try_wait()
            .map_err(|e| ZoneError::Msg(format!("wait for hook: {e}")))?
        {
            return Ok(Some(s));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        crate::process::poll_readable(&pidfd, Some(left))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(v: serde_json::Value) -> Hook {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn hook_gets_state_and_reports_status() {
        let out = std::env::temp_dir().join(format!("bh-hook-{}", std::process::id()));
        let h = hook(serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}", out.display())]
        }));
        run_hook("prestart", &h, "{\"id\":\"x\"}").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"id\":\"x\"}");
        std::fs::remove_file(&out).unwrap();

        let h = hook(serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}));
        assert_eq!(
            run_hook("poststart", &h, "{}").unwrap_err().to_string(),
            "poststart hook /bin/sh: exit status 3"
        );
        let h = hook(serde_json::json!({"path": "/nonexistent/hook"}));
        assert!(run_hook("prestart", &h, "{}")
            .unwrap_err()
            .to_string()
            .starts_with("prestart hook /nonexistent/hook: "));
    }

    #[test]
    fn hook_timeout_kills() {
        let h =
            hook(serde_json::json!({"path": "/bin/sleep", "args": ["sleep", "100"], "timeout": 1}));
        assert_eq!(
            run_hook("createRuntime", &h, "{}").unwrap_err().to_string(),
            "createRuntime hook /bin/sleep: timed out after 1s and was killed"
        );
    }
}
