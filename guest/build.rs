//! Link the guest binary as a freestanding, static, non-PIE ELF with our own linker
//! script (PVH note, load address 1 MiB). Only the binary gets these flags: the library
//! and its host unit tests link normally.

fn main() {
    // Cargo passes the flags the guest itself is compiled with in this variable.
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    // clippy only checks (nothing is linked or run), so it may go without the flags.
    let clippy =
        std::env::var("RUSTC_WORKSPACE_WRAPPER").is_ok_and(|w| w.contains("clippy-driver"));
    if !clippy
        && !flags
            .split('\x1f')
            .any(|f| f.contains("target-feature=-sse,-sse2"))
    {
        eprintln!(
            "error: bulkhead-guest must be compiled without SSE (guest/.cargo/config.toml): \
             run `cargo build --release` inside guest/, or add \
             `--config guest/.cargo/config.toml` (and do not set RUSTFLAGS)"
        );
        std::process::exit(1);
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
    println!("cargo:rustc-link-arg-bins=-nostartfiles");
    println!("cargo:rustc-link-arg-bins=-static");
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rustc-link-arg-bins=-Wl,--build-id=none");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,noexecstack");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTFLAGS");
}
