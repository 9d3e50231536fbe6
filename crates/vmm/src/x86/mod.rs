//! x86-64 specifics: CPU state at boot, kernel loading, ACPI tables, and the
//! kvm_pvm emulation fallbacks.

pub mod acpi;
pub mod boot;
pub mod cpu;
pub mod emulate;
