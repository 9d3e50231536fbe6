//! Kernel command line: space-separated `key=value` words (a value may be quoted with
//! `"`), `checks=a,b,c` selecting the checks to run, and helpers for the parameters.

/// A parsed view of the command line.
#[derive(Clone, Copy)]
pub struct Cmdline<'a> {
    raw: &'a [u8],
}

/// Checks run when the command line has no `checks=`.
pub const DEFAULT_CHECKS: &[u8] = b"cmdline,memmap,acpi";

impl<'a> Cmdline<'a> {
    /// Wraps the raw bytes.
    pub fn new(raw: &'a [u8]) -> Self {
        Cmdline { raw }
    }

    /// The raw bytes.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The words, with quotes removed from values.
    pub fn words(&self) -> Words<'a> {
        Words { rest: self.raw }
    }

    /// The value of the last `key=value` word with this key.
    pub fn get(&self, key: &str) -> Option<&'a [u8]> {
        let mut found = None;
        for w in self.words() {
            if let Some(v) = w
                .strip_prefix(key.as_bytes())
                .and_then(|r| r.strip_prefix(b"="))
            {
                found = Some(strip_quotes(v));
            }
        }
        found
    }

    /// A decimal number parameter.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(parse_u64)
    }

    /// The names listed in `checks=` (or the defaults).
    pub fn checks(&self) -> impl Iterator<Item = &'a [u8]> {
        self.get("checks")
            .unwrap_or(DEFAULT_CHECKS)
            .split(|&c| c == b',')
            .filter(|s| !s.is_empty())
    }
}

/// Iterator over command-line words; a double-quoted stretch may contain spaces.
pub struct Words<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|c| !c.is_ascii_whitespace())?;
        let s = &self.rest[start..];
        let mut quoted = false;
        let mut end = s.len();
        for (i, &c) in s.iter().enumerate() {
            if c == b'"' {
                quoted = !quoted;
            } else if c.is_ascii_whitespace() && !quoted {
                end = i;
                break;
            }
        }
        self.rest = &s[end..];
        Some(&s[..end])
    }
}

fn strip_quotes(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// Parses a decimal number.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
    })
}

/// Parses a dotted-quad IPv4 address.
pub fn parse_ipv4(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split(|&c| c == b'.');
    for o in out.iter_mut() {
        let p = parts.next()?;
        if p.len() > 3 {
            return None;
        }
        *o = u8::try_from(parse_u64(p)?).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn words_keys_and_checks() {
        let c = Cmdline::new(
            b"  console=ttyS0 checks=cmdline,blk,,rng blk.write=\"hello world\" n=42 n=43 ",
        );
        let words: Vec<&[u8]> = c.words().collect();
        assert_eq!(words.len(), 5);
        assert_eq!(c.get("blk.write"), Some(&b"hello world"[..]));
        assert_eq!(c.get_u64("n"), Some(43));
        assert_eq!(c.get("console"), Some(&b"ttyS0"[..]));
        assert_eq!(c.get("cons"), None);
        let checks: Vec<&[u8]> = c.checks().collect();
        assert_eq!(checks, [&b"cmdline"[..], b"blk", b"rng"]);
        let d: Vec<&[u8]> = Cmdline::new(b"").checks().collect();
        assert_eq!(d, [&b"cmdline"[..], b"memmap", b"acpi"]);
    }

    #[test]
    fn numbers_and_addresses() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), None);
        assert_eq!(parse_u64(b"12a"), None);
        assert_eq!(parse_ipv4(b"10.0.2.15"), Some([10, 0, 2, 15]));
        assert_eq!(parse_ipv4(b"10.0.2"), None);
        assert_eq!(parse_ipv4(b"10.0.2.256"), None);
        assert_eq!(parse_ipv4(b"10.0.2.1.5"), None);
    }
}
