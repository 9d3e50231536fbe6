//! Small hardening steps against known runtime escapes:
//! CVE-2019-5736 (re-exec from a sealed memfd copy of our own binary so a zone
//! cannot overwrite it through /proc/<pid>/exe) and CVE-2024-21626 (no host
//! descriptors leak into the zone: every fd ≥ 3 is made close-on-exec except
//! the preserved ones).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::{Result, ZoneError};

/// Environment marker set on the sealed re-exec so it happens once.
pub const SEALED_ENV: &str = "_BULKHEAD_RUNC_SEALED";

const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// Whether the descriptor is a memfd carrying all our seals.
pub fn is_sealed(fd: &impl AsRawFd) -> bool {
    // SAFETY: F_GET_SEALS only reads the seal set of a valid descriptor.
    let s = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    s >= 0 && (s & SEALS) == SEALS
}

/// Whether the running binary is a sealed memfd copy.
pub fn self_exe_sealed() -> bool {
    match std::fs::File::open("/proc/self/exe") {
        Ok(f) => is_sealed(&f),
        Err(_) => false,
    }
}

/// Copy `src` into a new sealed memfd.
pub fn sealed_copy(src: &std::fs::File) -> Result<OwnedFd> {
    let name = c"bulkhead-runc";
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is
    // checked and then owned.
    let raw =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(ZoneError::io(
            "memfd_create",
            std::path::Path::new("bulkhead-runc"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let mem = unsafe { OwnedFd::from_raw_fd(raw) };
    let full = src
        .metadata()
        .map_err(|e| ZoneError::io("stat", std::path::Path::new("/proc/self/exe"), e))?
        .len();
    // Only the part of an ELF file that segments refer to is needed to
    // execute it; the symbol and section tables after it are skipped.
    let len = elf_load_end(src)
        .filter(|&e| e > 0 && e <= full)
        .unwrap_or(full);
    // sendfile into the memfd: measured faster here than read/write chunks.
    let mut done: u64 = 0;
    while done < len {
        // SAFETY: both descriptors are valid; null offsets use the file positions.
        let n = unsafe {
            libc::sendfile(
                mem.as_raw_fd(),
                src.as_raw_fd(),
                std::ptr::null_mut(),
                (len - done) as usize,
            )
        };
        if n < 0 {
            return Err(ZoneError::io(
                "copy binary into memfd",
                std::path::Path::new("/proc/self/exe"),
                std::io::Error::last_os_error(),
            ));
        }
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    // SAFETY: F_ADD_SEALS on our own memfd.
    if unsafe { libc::fcntl(mem.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(ZoneError::io(
            "seal memfd",
            std::path::Path::new("bulkhead-runc"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(mem)
}

/// End offset in the file of the last segment with file contents of a
/// 64-bit little-endian ELF file (None when the file is not one).
pub fn elf_load_end(f: &std::fs::File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut eh = [0u8; 64];
    f.read_exact_at(&mut eh, 0).ok()?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let phoff = u64_at(&eh, 32);
    let phentsize = u16_at(&eh, 54);
    let phnum = u16_at(&eh, 56);
    if phentsize < 56 || phnum == 0 || phnum > 256 {
        return None;
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.read_exact_at(&mut ph, phoff).ok()?;
    let mut end = phoff + phentsize * phnum;
    for i in 0..phnum as usize {
        let e = &ph[i * phentsize as usize..];
        // Every segment with file contents (LOAD, INTERP, NOTE, …) is kept.
        if u32_at(e, 0) == 0 {
            continue;
        }
        let off = u64_at(e, 8);
        let filesz = u64_at(e, 32);
        end = end.max(off.checked_add(filesz)?);
    }
    Some(end)
}

/// Re-execute the current program from a sealed memfd unless that already
/// happened (marker in the environment or the binary is sealed). Returns only
/// when no re-exec is needed; on success it does not return.
pub fn ensure_sealed_exe() -> Result<()> {
    if std::env::var_os(SEALED_ENV).is_some() {
        std::env::remove_var(SEALED_ENV);
        return Ok(());
    }
    if self_exe_sealed() {
        return Ok(());
    }
    let exe = std::fs::File::open("/proc/self/exe")
        .map_err(|e| ZoneError::io("open", std::path::Path::new("/proc/self/exe"), e))?;
    let mem = sealed_copy(&exe)?;
    drop(exe);
    let args: Vec<CString> = std::env::args_os()
        .map(|a| {
            CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())).unwrap_or_default()
        })
        .collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut b = std::os::unix::ffi::OsStrExt::as_bytes(k.as_os_str()).to_vec();
            b.push(b'=');
            b.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()));
            CString::new(b).ok()
        })
        .collect();
    env.push(CString::new(format!("{SEALED_ENV}=1")).unwrap_or_default());
    let empty: &CStr = c"";
    let err = nix::unistd::execveat(&mem, empty, &args, &env, nix::fcntl::AtFlags::AT_EMPTY_PATH);
    Err(ZoneError::sys(
        "re-exec from sealed memfd",
        err.unwrap_err(),
    ))
}

/// Mark every descriptor ≥ `first` close-on-exec.
pub fn cloexec_from(first: u32) -> Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes fd flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Fallback for kernels before 5.11: walk /proc/self/fd.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| ZoneError::io("read", std::path::Path::new("/proc/self/fd"), e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first as i32)
        .collect();
    for fd in fds {
        // SAFETY: setting FD_CLOEXEC on a descriptor number is harmless even if
        // it was the directory stream's own (already closed) descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn sealed_copy_is_sealed_and_identical() {
        let path = std::env::temp_dir().join(format!("bh-seal-{}", std::process::id()));
        std::fs::write(&path, b"hello sealed world").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        assert!(!is_sealed(&f));
        let mem = sealed_copy(&f).unwrap();
        assert!(is_sealed(&mem));
        let mut m = std::fs::File::from(mem);
        let mut s = String::new();
        m.seek(std::io::SeekFrom::Start(0)).unwrap();
        m.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello sealed world");
        // Writes are refused by the seals.
        assert!(m.write_all(b"x").is_err());
        std::fs::remove_file(&path).unwrap();
        // The test binary itself is not sealed.
        assert!(!self_exe_sealed());
    }

    #[test]
    fn elf_load_end_covers_segments_only() {
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        let full = exe.metadata().unwrap().len();
        let end = elf_load_end(&exe).unwrap();
        assert!(end > 0 && end <= full, "{end} {full}");
        let not_elf = std::fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(elf_load_end(&not_elf), None);
    }

    #[test]
    fn cloexec_marks_high_fds() {
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        let fd = f.as_raw_fd();
        // SAFETY: clearing FD_CLOEXEC on our own open descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        // SAFETY: reading the flags of our own descriptor.
        assert_eq!(
            unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC,
            0
        );
        cloexec_from(fd as u32).unwrap();
        // SAFETY: as above.
        assert_ne!(
            unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC,
            0
        );
    }
}
