//! ztms: builds immutable, zero-trust media server appliances and is the PID 1
//! that runs them.
//!
//! The host tool (`ztms`) turns a definition into a disk image and boots it
//! under QEMU; `ztms-init` is the appliance's PID 1. Both follow the same
//! pattern: pure functions turn the definition into a plan, and a thin layer
//! applies the plan to the disk or the kernel.

pub mod build;
pub mod config;
pub mod init;
pub mod net;
pub mod run;
pub mod runtime;
pub mod status;
pub mod update;
