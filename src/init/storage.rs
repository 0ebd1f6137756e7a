//! The storage phase: unlocking and mounting the encrypted data partition.
//!
//! NOTE: not implemented in this build. The phase keeps its place in the
//! boot order and its signature, so unlocking (TPM2-sealed key with the
//! recovery key as fallback) and mounting `/data` fill in here.

use super::plan::AppliancePlan;

/// Prepares the data partition for `plan`; `data_label` is the GPT label
/// from `ztms.data=` on the kernel command line, if given.
pub fn run(plan: &AppliancePlan, data_label: Option<&str>) -> Result<(), String> {
    let label = data_label.unwrap_or("(none on the kernel command line)");
    log::info!(
        "storage: not configured in this build; data partition {label} of {} left untouched",
        plan.name
    );
    Ok(())
}
