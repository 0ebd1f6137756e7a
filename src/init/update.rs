//! Applies an update bundle received on the virtio-serial status port, or
//! found on an update stick (see [`super::stick`]). It runs on a thread of
//! its own, so PID 1 keeps supervising. The steps are: copy into `/run`,
//! verify the signature and every hash, read the disk state, plan, then
//! write the inactive slot and its UKI.
//!
//! The disk changes in this order, so a power cut at any point leaves a
//! bootable appliance:
//! 1. remove stale UKIs, which boot the inactive slot or nothing;
//! 2. label the inactive partition `pending-...`, a label no UKI names;
//! 3. write and fsync the root image, then read it back;
//! 4. give the partition its slot label;
//! 5. write the UKI under a temporary name, fsync, and rename it to
//!    `NAME-VERSION+3.efi`.
//!
//! Until step 5 ends, systemd-boot finds only the running version. It sorts
//! entries by version and boots the newest, so the new UKI boots next, and
//! its counter sends the appliance back to the running version after 3
//! failed tries.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{bless, block, cmdline};
use crate::build::layout::{self, Role, UPDATER_LABEL_PREFIX};
use crate::build::UPDATE_KEY_PATH;
use crate::update::bundle::{self, BundleManifest, ROOT_IMAGE};
use crate::update::esp::{self, UKI_DIRECTORY};
use crate::update::plan::{self, DiskState, EspUki, Slot, UpdatePlan};
use crate::update::protocol::{ApplyReport, UpdateReply, UpdateRequest, UpdateState};
use crate::update::relabel;

/// Directory that receives the bundle; `/run` is a tmpfs, so the bundle
/// takes memory until the update ends.
const WORK_DIR: &str = "/run/ztms/update";
/// Mount point of the ESP while an update writes it.
const ESP_MOUNT: &str = "/run/ztms/update/esp";
/// Time the host may pause while sending the bundle.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Room left in `/run` beside a received bundle.
const RUN_RESERVE: u64 = 32 << 20;

/// The origin of the bundle.
#[derive(Debug)]
pub enum Source {
    /// The status port, lent to the update thread until it ends, and the
    /// bundle bytes that arrived with the request line.
    Port { port: File, initial: Vec<u8> },
    /// A bundle file on a mounted update stick, which the thread unmounts
    /// once it has copied the bundle.
    Stick { bundle: PathBuf, mount_point: PathBuf },
}

/// Inputs of one update thread, from the main loop.
#[derive(Debug)]
pub struct UpdateJob {
    pub request: UpdateRequest,
    pub source: Source,
    pub name: String,
    pub version: String,
    /// True once every service has been healthy; updates wait for it.
    pub ready: bool,
}

/// The end of an update, as the main loop acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    pub applied: bool,
    pub reboot: bool,
}

/// Starts the update thread, or returns `None` (after replying on the
/// port) when the thread cannot start.
pub fn start(job: UpdateJob) -> Option<std::thread::JoinHandle<Finished>> {
    let port = match &job.source {
        Source::Port { port, .. } => match port.try_clone() {
            Ok(port) => Some(port),
            Err(error) => {
                log::error!("cloning the status port for the update failed: {error}");
                return None;
            }
        },
        Source::Stick { .. } => None,
    };
    let spawned = std::thread::Builder::new().name("update".into()).spawn(move || run(job));
    match spawned {
        Ok(handle) => Some(handle),
        Err(error) => {
            log::error!("starting the update thread failed: {error}");
            let reply = UpdateReply { update: UpdateState::Failed, message: format!("starting the update thread failed: {error}"), report: None };
            if let Some(mut port) = port {
                let _ = write_port(&mut port, reply.line().as_bytes());
            }
            None
        }
    }
}

/// An update that stopped, with the reply state: `Rejected` when nothing
/// was written yet, `Failed` after.
struct Stop(UpdateState, String);

fn rejected(message: impl Into<String>) -> Stop {
    Stop(UpdateState::Rejected, message.into())
}

fn failed(message: impl Into<String>) -> Stop {
    Stop(UpdateState::Failed, message.into())
}

fn run(mut job: UpdateJob) -> Finished {
    let started = Instant::now();
    match &job.source {
        Source::Port { .. } => log::info!("update: receiving a bundle of {} bytes", job.request.size),
        Source::Stick { bundle, .. } => {
            log::info!("update: copying {} ({} bytes) from the update stick", bundle.display(), job.request.size)
        }
    }
    let bundle_path = Path::new(WORK_DIR).join("bundle.ztmsb");
    let mut report = ApplyReport { bundle_bytes: job.request.size, ..ApplyReport::default() };

    let received = receive(&mut job, &bundle_path);
    report.receive_ms = started.elapsed().as_millis() as u64;
    let result = match received {
        Ok(()) => {
            let message = format!("received {} bytes in {} ms", job.request.size, report.receive_ms);
            progress(&mut job, message);
            apply(&mut job, &bundle_path, &mut report)
        }
        Err(stop) => Err(stop),
    };
    let _ = std::fs::remove_file(&bundle_path);

    let (state, message) = match result {
        Ok(message) => (UpdateState::Applied, message),
        Err(Stop(state, message)) => (state, message),
    };
    match state {
        UpdateState::Applied => log::info!("update: {message}"),
        _ => log::error!("update {}: {message}", if state == UpdateState::Rejected { "rejected" } else { "failed" }),
    }
    let applied = state == UpdateState::Applied;
    let reply = UpdateReply { update: state, message, report: applied.then_some(report) };
    if let Source::Port { port, .. } = &mut job.source {
        if let Err(error) = write_port(port, reply.line().as_bytes()) {
            log::warn!("update: sending the result failed: {error}");
        }
    }
    Finished { applied, reboot: applied && job.request.reboot }
}

fn progress(job: &mut UpdateJob, message: String) {
    log::info!("update: {message}");
    let Source::Port { port, .. } = &mut job.source else { return };
    let reply = UpdateReply { update: UpdateState::Progress, message, report: None };
    if let Err(error) = write_port(port, reply.line().as_bytes()) {
        log::warn!("update: sending progress failed: {error}");
    }
}

/// Copies the bundle from the port or the stick into `path`. Every byte
/// announced on the port is read even when it cannot be stored, so no
/// bundle byte is later taken for a request line.
fn receive(job: &mut UpdateJob, path: &Path) -> Result<(), Stop> {
    let size = job.request.size;
    let mut rejection = None;
    if !job.ready {
        rejection = Some("the appliance is not ready yet; wait until every service is healthy and the boot is blessed".to_string());
    }
    let _ = std::fs::create_dir_all(WORK_DIR);
    let free = free_bytes(Path::new(WORK_DIR)).unwrap_or(0);
    if rejection.is_none() && size + RUN_RESERVE > free {
        rejection = Some(format!(
            "the bundle needs {} MiB in /run and {} MiB are free; give the appliance more memory",
            (size + RUN_RESERVE).div_ceil(1 << 20),
            free >> 20
        ));
    }
    let mut output = None;
    if rejection.is_none() {
        match File::create(path) {
            Ok(file) => output = Some(file),
            Err(error) => rejection = Some(format!("creating {} failed: {error}", path.display())),
        }
    }

    let (port, initial) = match &mut job.source {
        Source::Port { port, initial } => (port, std::mem::take(initial)),
        Source::Stick { bundle, mount_point } => {
            // A copy in /run, not the file on the stick, is verified and
            // written: the stick could change its bytes between two reads.
            let copied = match (rejection, output) {
                (Some(message), _) => Err(rejected(message)),
                (None, None) => Err(rejected(format!("{} could not be created", path.display()))),
                (None, Some(mut file)) => File::open(&*bundle)
                    .and_then(|mut input| std::io::copy(&mut input, &mut file))
                    .map_err(|e| rejected(format!("copying {} from the update stick failed: {e}", bundle.display())))
                    .and_then(|copied| {
                        if copied == size {
                            Ok(())
                        } else {
                            Err(rejected(format!("{} changed size while it was copied", bundle.display())))
                        }
                    }),
            };
            super::stick::unmount(mount_point);
            return copied;
        }
    };
    let mut remaining = size;
    let head = &initial[..initial.len().min(size as usize)];
    store(&mut output, &mut rejection, head, path);
    remaining -= head.len() as u64;

    let mut buffer = vec![0u8; 256 * 1024];
    while remaining > 0 {
        let want = buffer.len().min(remaining as usize);
        let count = read_port(port, &mut buffer[..want])
            .map_err(|e| rejected(format!("receiving the bundle failed after {} of {size} bytes: {e}", size - remaining)))?;
        store(&mut output, &mut rejection, &buffer[..count], path);
        remaining -= count as u64;
    }
    match rejection {
        Some(message) => Err(rejected(message)),
        None => Ok(()),
    }
}

/// Appends `data` to the received bundle. A failed write turns into the
/// rejection, and the rest of the bundle is read and dropped.
fn store(output: &mut Option<File>, rejection: &mut Option<String>, data: &[u8], path: &Path) {
    let Some(file) = output else { return };
    if let Err(error) = file.write_all(data) {
        *rejection = Some(format!("writing {} failed: {error}", path.display()));
        *output = None;
    }
}

/// Reads at least one byte from the non-blocking port, waiting up to
/// [`RECEIVE_TIMEOUT`].
fn read_port(port: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match port.read(buffer) {
            Ok(0) => wait_port(port, libc::POLLIN)?,
            Ok(count) => return Ok(count),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => wait_port(port, libc::POLLIN)?,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

fn write_port(port: &mut File, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match port.write(data) {
            Ok(count) => data = &data[count..],
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => wait_port(port, libc::POLLOUT)?,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn wait_port(port: &File, events: i16) -> std::io::Result<()> {
    let mut poll_fd = libc::pollfd { fd: port.as_raw_fd(), events, revents: 0 };
    // SAFETY: `poll_fd` is one valid pollfd that lives through the call.
    let count = unsafe { libc::poll(&mut poll_fd, 1, RECEIVE_TIMEOUT.as_millis() as i32) };
    if count < 0 {
        let error = std::io::Error::last_os_error();
        return if error.kind() == std::io::ErrorKind::Interrupted { Ok(()) } else { Err(error) };
    }
    if count == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("nothing arrived for {} s", RECEIVE_TIMEOUT.as_secs())));
    }
    if poll_fd.revents & libc::POLLHUP != 0 && poll_fd.revents & events == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the host closed the port"));
    }
    // A closed host side reports POLLHUP with no data; pause so the loop
    // does not spin before the next read reports the end.
    if poll_fd.revents & libc::POLLHUP != 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn free_bytes(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// Verifies, plans and writes. Returns the success message.
fn apply(job: &mut UpdateJob, bundle_path: &Path, report: &mut ApplyReport) -> Result<String, Stop> {
    let started = Instant::now();
    let key_path = Path::new("/").join(UPDATE_KEY_PATH);
    if !key_path.exists() {
        return Err(rejected(format!(
            "this image has no update key at {}; build it with update.public_key set",
            key_path.display()
        )));
    }
    let key = crate::update::keys::load_verifying(&key_path).map_err(|e| rejected(e.to_string()))?;
    let manifest = bundle::verify(bundle_path, &key).map_err(|e| rejected(e.to_string()))?;
    report.verify_ms = started.elapsed().as_millis() as u64;
    progress(job, format!("signature and hashes of {} {} verified in {} ms", manifest.name, manifest.version, report.verify_ms));

    let cmdline_text = std::fs::read_to_string("/proc/cmdline").map_err(|e| rejected(format!("reading /proc/cmdline failed: {e}")))?;
    let boot = cmdline::parse(&cmdline_text).map_err(|e| rejected(e.to_string()))?;
    let booted_slot = Slot::from_letter(&boot.slot).ok_or_else(|| rejected(format!("the booted slot {:?} is neither a nor b", boot.slot)))?;
    let target = find_slot_partition(&job.name, booted_slot.other())?;

    let esp_label = layout::label(&job.name, Role::Esp);
    let esp_device = block::find_by_label(Path::new(block::SYS_CLASS_BLOCK), &esp_label)
        .into_iter()
        .next()
        .ok_or_else(|| rejected(format!("the ESP (partition label {esp_label}) was not found")))?;
    std::fs::create_dir_all(ESP_MOUNT).map_err(|e| rejected(format!("creating {ESP_MOUNT} failed: {e}")))?;
    bless::mount_esp_at(&esp_device.node(), ESP_MOUNT).map_err(|e| rejected(e.to_string()))?;
    let result = apply_mounted(job, bundle_path, &manifest, booted_slot, &boot.root_hash, &target, report, started);
    nix::unistd::sync();
    if let Err(error) = nix::mount::umount(ESP_MOUNT) {
        log::warn!("update: unmounting the ESP from {ESP_MOUNT} failed: {error}");
    }
    result
}

/// The inactive slot's partition as sysfs describes it.
#[derive(Debug, Clone)]
struct SlotPartition {
    device: block::BlockDevice,
    /// Partition number in the GPT, 1-based.
    number: u32,
    /// The whole disk's device node.
    disk: PathBuf,
    size: u64,
}

/// Finds the partition of `slot` by its label, or by the pending label an
/// interrupted update left, and its disk, number and size from sysfs.
fn find_slot_partition(name: &str, slot: Slot) -> Result<SlotPartition, Stop> {
    let label = layout::label(name, slot.role());
    let sys = Path::new(block::SYS_CLASS_BLOCK);
    let device = block::find_by_label(sys, &label)
        .into_iter()
        .chain(block::find_by_label(sys, &format!("{UPDATER_LABEL_PREFIX}{label}")))
        .next()
        .ok_or_else(|| rejected(format!("the inactive slot's partition {label} was not found")))?;
    let directory = sys.join(&device.name);
    let read_number = |file: &str| -> Option<u64> { std::fs::read_to_string(directory.join(file)).ok()?.trim().parse().ok() };
    let number = read_number("partition").ok_or_else(|| rejected(format!("{} is not a partition", device.name)))?;
    let sectors = read_number("size").ok_or_else(|| rejected(format!("cannot read the size of {}", device.name)))?;
    // /sys/class/block/vda3 links to .../block/vda/vda3: the parent
    // directory names the disk.
    let disk_name = std::fs::canonicalize(&directory)
        .ok()
        .and_then(|path| path.parent().and_then(|parent| parent.file_name()).map(|name| name.to_string_lossy().into_owned()))
        .ok_or_else(|| rejected(format!("cannot find the disk of {}", device.name)))?;
    Ok(SlotPartition {
        number: number as u32,
        disk: Path::new("/dev").join(disk_name),
        // sysfs sizes are in 512-byte sectors whatever the device's.
        size: sectors * 512,
        device,
    })
}

/// Lists the UKIs on the mounted ESP with the slot and root hash each boots.
fn read_esp_ukis(esp_root: &Path) -> Vec<EspUki> {
    let directory = esp_root.join(UKI_DIRECTORY);
    let mut ukis = Vec::new();
    for entry in std::fs::read_dir(&directory).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if !file.to_ascii_lowercase().ends_with(".efi") {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        let (slot, root_hash) = match read_uki_cmdline(&entry.path()) {
            Ok(text) => esp::boot_target(&text),
            Err(error) => {
                log::warn!("update: reading the command line of {file} failed: {error}");
                (None, None)
            }
        };
        ukis.push(EspUki { file, size, slot, root_hash });
    }
    ukis.sort_by(|a, b| a.file.cmp(&b.file));
    ukis
}

fn read_uki_cmdline(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut headers = vec![0u8; esp::HEADER_BYTES];
    let count = file.read(&mut headers)?;
    headers.truncate(count);
    let (offset, size) = esp::find_section(&headers, ".cmdline")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no .cmdline section"))?;
    let mut text = vec![0u8; size.min(esp::MAX_CMDLINE) as usize];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut text)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

#[allow(clippy::too_many_arguments)]
fn apply_mounted(
    job: &mut UpdateJob,
    bundle_path: &Path,
    manifest: &BundleManifest,
    booted_slot: Slot,
    root_hash: &str,
    target: &SlotPartition,
    report: &mut ApplyReport,
    started: Instant,
) -> Result<String, Stop> {
    let esp_root = Path::new(ESP_MOUNT);
    let state = DiskState {
        name: job.name.clone(),
        version: job.version.clone(),
        booted_slot,
        root_hash: root_hash.to_string(),
        inactive_partition_size: target.size,
        esp_free: free_bytes(esp_root).unwrap_or(0),
        esp_ukis: read_esp_ukis(esp_root),
    };
    let plan = plan::plan(manifest, &state, job.request.allow_downgrade).map_err(|e| rejected(e.to_string()))?;
    progress(
        job,
        format!(
            "writing {} to slot {} ({}, partition {}); {} stays as the fallback",
            manifest.version,
            plan.slot.letter(),
            target.device.node().display(),
            plan.partition_label,
            plan.running_uki
        ),
    );

    // From here on the disk changes: errors are failures, not rejections.
    write_slot(job, bundle_path, manifest, &plan, target, report)?;
    write_uki(bundle_path, manifest, &plan, esp_root)?;
    if plan.downgrade {
        // NOTE: systemd-boot boots the newest version by its sort order, so
        // a downgrade boots once through LoaderEntryOneShot. Once the older
        // version is blessed, later boots choose the newer one again, until
        // the next update removes it.
        match set_one_shot(&plan) {
            Ok(id) => log::info!("update: LoaderEntryOneShot set to {id}, so the older version boots next"),
            Err(error) => log::warn!("update: setting LoaderEntryOneShot failed: {error}; the older version boots only from the boot menu"),
        }
    }

    report.version = manifest.version.clone();
    report.slot = plan.slot.letter().to_string();
    report.uki_file = plan.uki_file.clone();
    report.root_bytes = plan.root_size;
    report.apply_ms = started.elapsed().as_millis() as u64;
    Ok(format!(
        "{} {} written to slot {} in {} ms; it boots next as {} with {} tries",
        manifest.name,
        manifest.version,
        plan.slot.letter(),
        report.apply_ms,
        plan.uki_file,
        plan::BOOT_TRIES
    ))
}

fn expected_sha256<'a>(manifest: &'a BundleManifest, file: &str) -> Result<&'a str, Stop> {
    manifest
        .artifacts
        .iter()
        .find(|artifact| artifact.file == file)
        .map(|artifact| artifact.sha256.as_str())
        .ok_or_else(|| rejected(format!("the manifest lists no {file}")))
}

fn sync_directory(path: &Path) {
    if let Err(error) = File::open(path).and_then(|directory| directory.sync_all()) {
        log::warn!("update: syncing {} failed: {error}", path.display());
    }
}

/// Steps 1 to 4: remove stale UKIs, label the slot pending, write the
/// root, read it back, give the slot its label.
fn write_slot(job: &mut UpdateJob, bundle_path: &Path, manifest: &BundleManifest, plan: &UpdatePlan, target: &SlotPartition, report: &mut ApplyReport) -> Result<(), Stop> {
    let uki_directory = Path::new(ESP_MOUNT).join(UKI_DIRECTORY);
    for file in &plan.remove {
        log::info!("update: removing {file} from the ESP");
        std::fs::remove_file(uki_directory.join(file)).map_err(|e| failed(format!("removing {file} from the ESP failed: {e}")))?;
    }
    sync_directory(&uki_directory);

    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&target.disk)
        .map_err(|e| failed(format!("opening {} failed: {e}", target.disk.display())))?;
    relabel::set_partition_label(&mut disk, target.number, &plan.pending_label)
        .map_err(|e| failed(format!("labelling {} {} failed: {e}", target.device.node().display(), plan.pending_label)))?;

    let node = target.device.node();
    let write_started = Instant::now();
    let mut partition = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&node)
        .map_err(|e| failed(format!("opening {} failed: {e}", node.display())))?;
    let (size, sha256) = bundle::extract(bundle_path, ROOT_IMAGE, &mut partition).map_err(|e| failed(e.to_string()))?;
    partition.sync_all().map_err(|e| failed(format!("syncing {} failed: {e}", node.display())))?;
    drop(partition);
    report.root_write_ms = write_started.elapsed().as_millis() as u64;
    let expected = expected_sha256(manifest, ROOT_IMAGE)?;
    if sha256 != expected || size != plan.root_size {
        return Err(failed(format!("the bundle changed while it was written: {ROOT_IMAGE} has sha256 {sha256}, expected {expected}")));
    }
    progress(job, format!("wrote {size} bytes to {} in {} ms", node.display(), report.root_write_ms));

    let read_started = Instant::now();
    let written = read_back_sha256(&node, size).map_err(|e| failed(format!("reading {} back failed: {e}", node.display())))?;
    report.read_back_ms = read_started.elapsed().as_millis() as u64;
    if written != expected {
        return Err(failed(format!("{} reads back with sha256 {written}, expected {expected}; the disk may be failing", node.display())));
    }

    relabel::set_partition_label(&mut disk, target.number, &plan.partition_label)
        .map_err(|e| failed(format!("labelling {} {} failed: {e}", node.display(), plan.partition_label)))?;
    Ok(())
}

/// Hashes the first `size` bytes of `node` as the disk stores them: the
/// page cache of the device is dropped first, so the read reaches the disk.
fn read_back_sha256(node: &Path, size: u64) -> std::io::Result<String> {
    let mut device = File::open(node)?;
    // SAFETY: posix_fadvise only takes an open descriptor and two offsets.
    let advice = unsafe { libc::posix_fadvise(device.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if advice != 0 {
        log::warn!("update: dropping the cache of {} failed (error {advice}); the read-back may come from memory", node.display());
    }
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let want = buffer.len().min(left as usize);
        device.read_exact(&mut buffer[..want])?;
        hasher.update(&buffer[..want]);
        left -= want as u64;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Step 5: the UKI under a name systemd-boot ignores, then renamed.
fn write_uki(bundle_path: &Path, manifest: &BundleManifest, plan: &UpdatePlan, esp_root: &Path) -> Result<(), Stop> {
    let directory = esp_root.join(UKI_DIRECTORY);
    let partial = directory.join(format!("{}.partial", plan.uki_file));
    let final_path = directory.join(&plan.uki_file);
    let mut file = File::create(&partial).map_err(|e| failed(format!("creating {} failed: {e}", partial.display())))?;
    let (_, sha256) = bundle::extract(bundle_path, &plan.uki_member, &mut file).map_err(|e| failed(e.to_string()))?;
    file.sync_all().map_err(|e| failed(format!("syncing {} failed: {e}", partial.display())))?;
    drop(file);
    let expected = expected_sha256(manifest, &plan.uki_member)?;
    if sha256 != expected {
        let _ = std::fs::remove_file(&partial);
        return Err(failed(format!("the bundle changed while it was written: {} has sha256 {sha256}, expected {expected}", plan.uki_member)));
    }
    std::fs::rename(&partial, &final_path).map_err(|e| failed(format!("renaming {} failed: {e}", partial.display())))?;
    sync_directory(&directory);
    Ok(())
}

/// Asks systemd-boot to boot the new entry once, by its id. The id of
/// Debian 12's systemd-boot (252) is the file name with the boot counter:
/// the name without it was tried first and did not match.
fn set_one_shot(plan: &UpdatePlan) -> std::io::Result<String> {
    let id = plan.uki_file.to_lowercase();
    let path = Path::new(bless::EFIVARS).join(format!("LoaderEntryOneShot-{}", bless::LOADER_GUID));
    // Attributes: non-volatile, boot service and runtime access.
    let mut data = 7u32.to_le_bytes().to_vec();
    for unit in id.encode_utf16().chain([0]) {
        data.extend_from_slice(&unit.to_le_bytes());
    }
    // efivarfs stays read-only but for this one write.
    let remount = |read_only: bool| {
        let mut flags = nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC;
        if read_only {
            flags |= nix::mount::MsFlags::MS_RDONLY;
        }
        nix::mount::mount(None::<&str>, bless::EFIVARS, None::<&str>, flags, None::<&str>).map_err(std::io::Error::from)
    };
    remount(false)?;
    let _ = std::fs::remove_file(&path);
    let written = std::fs::write(path, data);
    if let Err(error) = remount(true) {
        log::warn!("update: making {} read-only again failed: {error}", bless::EFIVARS);
    }
    written.map(|()| id)
}
