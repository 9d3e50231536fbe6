//! Fixed-capacity text buffer (no allocator here) and small formatting helpers.

use core::fmt;

/// A line of text built in place; output beyond the capacity is dropped.
pub struct Line {
    buf: [u8; 1024],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Line {
            buf: [0; 1024],
            len: 0,
        }
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Appends raw bytes, replacing anything that is not printable ASCII with `.`.
    pub fn push_printable(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.push_byte(if (0x20..0x7f).contains(&b) { b } else { b'.' });
        }
    }

    /// Appends one byte.
    pub fn push_byte(&mut self, b: u8) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    /// Appends bytes as lowercase hex.
    pub fn push_hex(&mut self, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &b in bytes {
            self.push_byte(HEX[usize::from(b >> 4)]);
            self.push_byte(HEX[usize::from(b & 15)]);
        }
    }

    /// Forgets the contents.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            self.push_byte(b);
        }
        Ok(())
    }
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub struct Mac<'a>(pub &'a [u8; 6]);

impl fmt::Display for Mac<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Formats an IPv4 address in dotted-quad form.
pub struct Ip<'a>(pub &'a [u8; 4]);

impl fmt::Display for Ip<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}.{}", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// FNV-1a, 32 bit: the checksum the guest reports for disk sectors (documented in README).
pub fn fnv1a32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in data {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn line_truncates_and_sanitizes() {
        let mut l = Line::new();
        l.push_printable(b"ab\x00\xffc");
        assert_eq!(l.as_bytes(), b"ab..c");
        for _ in 0..2000 {
            l.push_byte(b'x');
        }
        assert_eq!(l.as_bytes().len(), 1024);
    }

    #[test]
    fn formats_addresses_and_hex() {
        let mut l = Line::new();
        write!(
            l,
            "{} {}",
            Mac(&[0x52, 0x54, 0, 0x12, 0x34, 0xab]),
            Ip(&[10, 0, 2, 15])
        )
        .unwrap();
        l.push_byte(b' ');
        l.push_hex(&[0x0f, 0xa0]);
        assert_eq!(l.as_bytes(), b"52:54:00:12:34:ab 10.0.2.15 0fa0");
    }

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }
}
