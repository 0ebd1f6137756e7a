//! `ztms build`: definition to disk image.
//!
//! Each step is a function of the definition and the previous step's
//! output. The steps write into a work directory in the cache; only the
//! finished artifacts are renamed into the output directory, so an
//! interrupted build leaves nothing half-written at the output path.

pub mod accounts;
pub mod base;
pub mod cpio;
pub mod disk;
pub mod esp;
pub mod gpt;
pub mod host;
pub mod initramfs;
pub mod layout;
pub mod manifest;
pub mod modules;
pub mod oci;
pub mod rootimg;
pub mod services;
pub mod tree;
pub mod uki;

mod pipeline;

use std::path::{Path, PathBuf};

pub use pipeline::{build, BuildOptions, BuildReport, UPDATE_KEY_PATH};

/// Default SOURCE_DATE_EPOCH (2024-01-01T00:00:00Z) when the environment
/// sets none, so that two builds agree without any setup.
pub const DEFAULT_EPOCH: u64 = 1_704_067_200;

/// A failed build. Messages name the step, the path or value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("missing build tools: {0}")]
    MissingTools(String),
    #[error("{action} failed on {path}: {source}")]
    Io {
        action: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("step {step}: cannot run {command}: {source}")]
    Spawn {
        step: String,
        command: String,
        source: std::io::Error,
    },
    #[error("step {step}: {command} failed ({status}):\n{output}")]
    Command {
        step: String,
        command: String,
        status: String,
        output: String,
    },
    #[error("Debian package {package:?} (requested by {owners}) does not exist in the configured suite; fix its name or remove it. apt said:\n{apt_output}")]
    UnknownPackage {
        package: String,
        owners: String,
        apt_output: String,
    },
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("overlay: {0}")]
    Overlay(String),
    #[error("UKI: {0}")]
    Uki(String),
    #[error("the ESP of {size} bytes cannot hold {needed} bytes of boot files; raise disk.esp")]
    EspFull { needed: u64, size: u64 },
    #[error("{what} needs {needed} MiB but {key} is {available} MiB; set {key} = \"{suggested}M\" or more")]
    TooSmall {
        what: String,
        key: String,
        needed: u64,
        available: u64,
        suggested: u64,
    },
    #[error("service {service:?}: cannot import its OCI image: {error}")]
    Oci { service: String, error: String },
    #[error("runtime plan: {0}")]
    Plan(String),
    #[error("ztms-init binary not found at {0}; build it with `cargo build --release` (it is linked statically)")]
    InitMissing(PathBuf),
}

/// Returns `N-PID`: unique among the builds of this process (N counts
/// them) and of other processes, and ending in the PID so that
/// `base::remove_stale` can tell whether its owner still runs.
pub fn unique_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{count}-{}", std::process::id())
}

impl BuildError {
    pub fn io(action: &str, path: &Path, source: std::io::Error) -> Self {
        BuildError::Io {
            action: action.into(),
            path: path.to_path_buf(),
            source,
        }
    }
}
