//! Signal names for `kill`: "KILL", "SIGKILL", "sigkill", "9", and the
//! real-time forms "RTMIN+3"/"SIGRTMAX-1".

use std::str::FromStr;

use nix::sys::signal::Signal;

/// Parse a signal as `runc kill` accepts it; returns the raw signal number.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let bad = || format!("unknown signal {s:?}");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let up = t.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(libc::SIGRTMIN(), rest).ok_or_else(bad);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(libc::SIGRTMAX(), rest).ok_or_else(bad);
    }
    Signal::from_str(&format!("SIG{name}"))
        .map(|sig| sig as i32)
        .map_err(|_| bad())
}

fn rt(base: i32, rest: &str) -> Option<i32> {
    let n = if rest.is_empty() {
        base
    } else if let Some(x) = rest.strip_prefix('+') {
        base + x.parse::<i32>().ok()?
    } else if let Some(x) = rest.strip_prefix('-') {
        base - x.parse::<i32>().ok()?
    } else {
        return None;
    };
    (libc::SIGRTMIN()..=libc::SIGRTMAX())
        .contains(&n)
        .then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("SIGKILL"), Ok(9));
        assert_eq!(parse_signal("sigterm"), Ok(15));
        assert_eq!(parse_signal("15"), Ok(15));
        assert_eq!(parse_signal("HUP"), Ok(1));
        assert_eq!(parse_signal("SIGRTMIN+1"), Ok(libc::SIGRTMIN() + 1));
        assert_eq!(parse_signal("RTMAX"), Ok(libc::SIGRTMAX()));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("65").is_err());
        assert!(parse_signal("").is_err());
        assert_eq!(
            parse_signal("SIGFOO").unwrap_err(),
            "unknown signal \"SIGFOO\""
        );
    }
}
