//! What every check gets to look at: the start info, the command line, the ACPI result.

use crate::acpi::{Acpi, AcpiError};
use crate::cmdline::Cmdline;
use crate::pvh::StartInfo;

/// Shared inputs of the checks.
pub struct Ctx<'a> {
    /// Guest physical address of `hvm_start_info`.
    pub start_info_addr: u64,
    pub start_info: StartInfo,
    pub cmdline: Cmdline<'a>,
    pub acpi: Option<Acpi>,
    pub acpi_error: Option<AcpiError>,
}
