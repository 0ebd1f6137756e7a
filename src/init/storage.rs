//! The storage phase: provisions the encrypted data partition at first
//! boot, unlocks it at every boot, checks its filesystem and mounts it on
//! `/data` with nodev, nosuid and noexec.
//!
//! Provisioning is safe against power loss. The builder gives the data
//! partition ztms's "unprovisioned" GPT type, the LUKS2 header is created
//! with the label [`plan::PROVISIONING_LABEL`], and only a complete volume
//! gets the "Linux LUKS" GPT type. A boot
//! that finds the unprovisioned type with a blank partition or an
//! unfinished header starts over, and no other content is ever formatted
//! unless the definition sets `storage.wipe`.

mod luks;
pub mod plan;
pub mod prompt;
mod tpm;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount, MsFlags};

use self::luks::Kdf;
use self::plan::{Decision, Probe, TpmToken};
use self::prompt::Console;
use super::block::{self, BlockDevice};
use super::command::Run;
use super::plan::{AppliancePlan, StoragePlan};
use crate::build::layout::TYPE_LUKS;
use crate::config::{KeyFile, Unlock};
use crate::runtime::DATA_DIR;
use crate::status::{StorageStatus, Throughput};

/// Device-mapper name of the opened volume.
pub const MAPPER_NAME: &str = "ztms-data";
/// Kernel modules of the volume and its filesystem, and `nls_ascii` for the
/// FAT key media (Debian's kernel mounts FAT with iocharset=ascii). The
/// cipher adds its own.
const MODULES: &[&str] = &["dm_crypt", "algif_skcipher", "ext4", "nls_ascii"];
/// How long to wait for the data partition and for removable key media.
const DEVICE_WAIT: Duration = Duration::from_secs(15);
/// Steps of provisioning, for the progress lines.
const STEPS: u32 = 5;
/// The persisted log, below `/data`; the logs directory is part of the
/// layout.
pub const LOG_FILE: &str = "logs/ztms.log";
/// Time the offer to re-seal waits for a reply.
const RESEAL_QUESTION_WAIT: Duration = Duration::from_secs(60);

/// Prepares `/data` for `plan`; `data_label` is the GPT label from
/// `ztms.data=` on the kernel command line. `status` records what happened
/// for the status API, also when the phase fails.
pub fn run(plan: &AppliancePlan, data_label: Option<&str>, status: &mut StorageStatus) -> Result<(), String> {
    let started = Instant::now();
    let Some(label) = data_label else {
        status.state = "tmpfs".into();
        return mount_data_tmpfs();
    };
    match unlock_and_mount(&plan.name, &plan.storage, label, status, started) {
        Ok(()) => {
            status.state = "unlocked".into();
            Ok(())
        }
        Err(error) => {
            status.state = "failed".into();
            status.error = Some(error.clone());
            Err(error)
        }
    }
}

fn unlock_and_mount(
    name: &str,
    storage: &StoragePlan,
    label: &str,
    status: &mut StorageStatus,
    started: Instant,
) -> Result<(), String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cipher = plan::choose_cipher(&cpuinfo);
    let mut modules: Vec<&str> = MODULES.to_vec();
    modules.extend(cipher.modules);
    if let Ok(failed) = super::modules::load_by_name(&modules) {
        if !failed.is_empty() {
            log::debug!("storage modules not loaded (built in or not needed): {}", failed.join(", "));
        }
    }

    let partition = block::wait_for_label(label, DEVICE_WAIT).map_err(|e| e.to_string())?;
    let device = partition.node().to_string_lossy().into_owned();
    status.device = Some(device.clone());
    let probe = probe(&device)?;
    let decision = plan::decide(&probe, storage.wipe);
    log::info!(
        "storage: {device} has type {} and holds {}: {decision:?}",
        probe.part_type.as_deref().unwrap_or("?"),
        probe.content.as_deref().unwrap_or("nothing")
    );
    match decision {
        Decision::Refuse(reason) => return Err(reason),
        Decision::Provision { resumed, wiped } => {
            if let Some(found) = wiped {
                log::warn!("storage: formatting {device}, which held {found}, because storage.wipe is set");
            }
            if resumed {
                log::warn!("storage: an earlier first boot stopped before the data volume was complete; starting over");
            }
            status.resumed = resumed;
            status.provisioned = true;
            provision(name, storage, &partition, &device, cipher, status)?;
        }
        Decision::Unlock => unlock(storage, &device, status)?,
    }
    status.unlock_ms = Some(started.elapsed().as_millis() as u64);
    status.cipher = Some(cipher_of(&device));

    let mapped = format!("/dev/mapper/{MAPPER_NAME}");
    check_filesystem(&mapped, status)?;
    mount_data(&mapped)?;
    status.mount_options = mount_options(DATA_DIR);
    status.size_bytes = device_size(&mapped);
    make_layout(storage);
    let log_path = Path::new(DATA_DIR).join(LOG_FILE);
    if let Err(error) = super::logger::persist_to(&log_path) {
        log::warn!("storage: cannot write the persisted log {}: {error}", log_path.display());
    }
    log::info!(
        "storage: {DATA_DIR} mounted from {device} ({}), unlocked by {} in {} ms",
        status.cipher.as_deref().unwrap_or("?"),
        status.unlocked_by.as_deref().unwrap_or("?"),
        status.unlock_ms.unwrap_or(0)
    );
    Ok(())
}

/// Runs `blkid -p` on the partition; exit code 2 means it found nothing.
fn probe(device: &str) -> Result<Probe, String> {
    let (code, output) = Run::new("blkid").args(["-p", "-o", "export", device]).code()?;
    match code {
        Some(0) | Some(2) => Ok(plan::parse_blkid(&output)),
        _ => Err(format!("blkid -p {device} failed ({code:?}): {}", output.trim())),
    }
}

fn step(number: u32, what: &str) {
    log::info!("storage: provisioning step {number} of {STEPS}: {what}");
}

fn random_bytes() -> Result<[u8; 32], String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("reading random bytes failed: {e}"))?;
    Ok(bytes)
}

/// Creates the volume and its filesystem, and leaves it open.
fn provision(
    name: &str,
    storage: &StoragePlan,
    partition: &BlockDevice,
    device: &str,
    cipher: plan::Cipher,
    status: &mut StorageStatus,
) -> Result<(), String> {
    step(1, "growing the partition to the end of the disk");
    status.grown_bytes = grow(partition)?;

    let recovery = plan::format_recovery_key(&random_bytes()?);
    let (primary, kdf, seal) = match storage.unlock {
        Unlock::Tpm2 if tpm::present() => (Some(hex::encode(random_bytes()?).into_bytes()), Kdf::Fast, true),
        Unlock::Tpm2 => {
            log::warn!("storage: no TPM 2.0 found; only the recovery key will unlock the data volume");
            (None, Kdf::Fast, false)
        }
        Unlock::KeyFile => (Some(read_key_file(storage.key_file.as_ref())?), Kdf::Argon2id, false),
        Unlock::RecoveryKey => (None, Kdf::Fast, false),
    };

    let raw_figures = match storage.benchmark_mib {
        0 => None,
        mib => Some(measure(device, mib)?),
    };

    step(2, &format!("creating the LUKS2 header ({})", cipher.name));
    match &primary {
        Some(secret) => {
            luks::format(device, cipher, secret, kdf)?;
            luks::add_key(device, secret, recovery.as_bytes(), 1, Kdf::Argon2id)?;
        }
        None => luks::format(device, cipher, recovery.as_bytes(), Kdf::Argon2id)?,
    }

    step(3, if seal { "sealing the key to the TPM (PCR 7)" } else { "no key to seal" });
    if let (true, Some(secret)) = (seal, &primary) {
        let (public, private) = tpm::seal(secret)?;
        luks::import_token(device, &TpmToken::new(0, &public, &private), None)?;
    }

    step(4, "making the ext4 filesystem");
    let opener: &[u8] = primary.as_deref().unwrap_or(recovery.as_bytes());
    luks::open(device, MAPPER_NAME, opener)?;
    if let Some((raw_write_kib_s, raw_read_kib_s)) = raw_figures {
        let (encrypted_write_kib_s, encrypted_read_kib_s) = measure(&format!("/dev/mapper/{MAPPER_NAME}"), storage.benchmark_mib)?;
        let figures = Throughput {
            mib: storage.benchmark_mib,
            raw_write_kib_s,
            raw_read_kib_s,
            encrypted_write_kib_s,
            encrypted_read_kib_s,
        };
        log::info!("storage: throughput in KiB/s: {figures:?}");
        status.throughput = Some(figures);
    }
    let owner = format!("root_owner={}:{}", storage.owner_uid, storage.owner_gid);
    Run::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "data", "-m", "0", "-E", &owner, &format!("/dev/mapper/{MAPPER_NAME}")])
        .output()?;

    step(5, "marking the volume complete");
    show_recovery_key(name, &recovery);
    status.recovery_key = Some(recovery);
    luks::set_label(device, &format!("{name}-data"))?;
    set_partition_type(partition, TYPE_LUKS)?;
    status.unlocked_by = Some(
        match (seal, storage.unlock) {
            (true, _) => "tpm2",
            (false, Unlock::KeyFile) => "key-file",
            _ => "recovery-key",
        }
        .into(),
    );
    log::info!("storage: data volume provisioned");
    Ok(())
}

/// Prints the recovery key once, on the console only (not in the kernel
/// log, which other programs can read).
fn show_recovery_key(name: &str, key: &str) {
    let text = format!(
        "\n\
         ================================================================\n\
         Recovery key of the {name} data volume:\n\
         \n    {key}\n\n\
         Write it down and keep it away from the appliance. It unlocks the\n\
         data when the TPM cannot (another machine, a firmware or Secure\n\
         Boot change). It is shown only now and stored nowhere in plaintext.\n\
         ================================================================\n\n"
    );
    match Console::open() {
        Ok(mut console) => console.say(&text),
        Err(error) => log::error!("storage: cannot show the recovery key: {error}"),
    }
}

/// Opens the existing volume with the configured key, falling back to the
/// recovery key typed on the console.
fn unlock(storage: &StoragePlan, device: &str, status: &mut StorageStatus) -> Result<(), String> {
    let header = luks::header(device)?;
    let attempt = match storage.unlock {
        Unlock::Tpm2 => unlock_with_tpm(device, header.tpm_token.as_ref()).map(|()| "tpm2"),
        Unlock::KeyFile => read_key_file(storage.key_file.as_ref())
            .and_then(|key| luks::open(device, MAPPER_NAME, &key))
            .map(|()| "key-file"),
        Unlock::RecoveryKey => Err("the definition asks for the recovery key".to_string()),
    };
    match attempt {
        Ok(method) => {
            status.unlocked_by = Some(method.into());
            return Ok(());
        }
        Err(reason) => {
            log::warn!("storage: the data volume did not unlock by itself: {reason}");
            if storage.unlock != Unlock::RecoveryKey {
                status.tpm_error = Some(reason);
            }
        }
    }

    let mut console = Console::open()?;
    let recovery = ask_recovery_key(&mut console, device)?;
    status.unlocked_by = Some("recovery-key".into());
    if storage.unlock == Unlock::Tpm2 && tpm::present() {
        let question = "Seal the data volume's key to this machine's TPM so that the next boots unlock it by themselves? [y/N] ";
        if console.ask_yes(question, RESEAL_QUESTION_WAIT) {
            match reseal(device, &recovery, &header) {
                Ok(()) => {
                    status.resealed = true;
                    console.say("The key is sealed to this TPM.\n");
                    log::info!("storage: key re-sealed to the TPM");
                }
                Err(error) => log::error!("storage: re-sealing to the TPM failed: {error}"),
            }
        }
    }
    Ok(())
}

fn unlock_with_tpm(device: &str, token: Option<&(u32, TpmToken)>) -> Result<(), String> {
    let (_, token) = token.ok_or("the LUKS2 header has no TPM token")?;
    if !tpm::present() {
        return Err("no TPM 2.0 found".into());
    }
    let decode = |text: &str| hex::decode(text).map_err(|e| format!("the TPM token is damaged: {e}"));
    let secret = tpm::unseal(&decode(&token.public)?, &decode(&token.private)?)
        .map_err(|e| format!("the TPM did not release the key (another TPM, or PCR 7 changed): {e}"))?;
    luks::open(device, MAPPER_NAME, &secret)
}

/// Asks for the recovery key until one opens the volume; returns it.
fn ask_recovery_key(console: &mut Console, device: &str) -> Result<String, String> {
    loop {
        let typed = console.ask_secret(&format!(
            "Enter the recovery key of the data volume on {device} (8 groups of 8 hex digits): "
        ))?;
        let Some(key) = plan::normalize_recovery_key(&typed) else {
            console.say("That is not a recovery key: it has 64 hex digits, in groups of 8 separated by dashes.\n");
            continue;
        };
        match luks::open(device, MAPPER_NAME, key.as_bytes()) {
            Ok(()) => {
                console.say("Recovery key accepted.\n");
                log::info!("storage: unlocked with the recovery key");
                return Ok(key);
            }
            Err(error) => {
                log::warn!("storage: the recovery key typed does not unlock the volume: {error}");
                console.say("That key does not unlock the data volume.\n");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Seals a new key to the current TPM state in a new keyslot, then drops
/// the old TPM keyslot: a power loss in between leaves both working keys.
fn reseal(device: &str, recovery: &str, header: &plan::Header) -> Result<(), String> {
    let secret = hex::encode(random_bytes()?).into_bytes();
    let slot = plan::free_keyslot(&header.keyslots).ok_or("every LUKS2 keyslot is in use")?;
    luks::add_key(device, recovery.as_bytes(), &secret, slot, Kdf::Fast)?;
    let (public, private) = tpm::seal(&secret)?;
    let old = header.tpm_token.as_ref();
    luks::import_token(device, &TpmToken::new(slot, &public, &private), old.map(|(id, _)| *id))?;
    let old_slot = old.and_then(|(_, token)| token.keyslots.first()).and_then(|slot| slot.parse::<u32>().ok());
    if let Some(old_slot) = old_slot.filter(|old_slot| *old_slot != slot) {
        luks::kill_slot(device, old_slot)?;
    }
    Ok(())
}

/// Reads the key file from removable media, waiting for the media to
/// appear.
fn read_key_file(key_file: Option<&KeyFile>) -> Result<Vec<u8>, String> {
    let key_file = key_file.ok_or("storage.key_file is not set in the definition")?;
    let started = Instant::now();
    let media = loop {
        let (code, output) = Run::new("blkid").args(["-L", &key_file.label]).code()?;
        if code == Some(0) {
            break output.trim().to_string();
        }
        if started.elapsed() > DEVICE_WAIT {
            return Err(format!(
                "no removable media with the filesystem label {:?} after {} s; insert it, or type the recovery key",
                key_file.label,
                DEVICE_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mount_point = Path::new("/run/ztms/keymedia");
    std::fs::create_dir_all(mount_point).map_err(|e| format!("creating {} failed: {e}", mount_point.display()))?;
    block::mount_removable(&media, mount_point).map_err(|error| format!("the key media: {error}"))?;
    let path = mount_point.join(&key_file.path);
    let key = std::fs::read(&path);
    if let Err(error) = umount(mount_point) {
        log::warn!("storage: unmounting the key media failed: {error}");
    }
    let key = key.map_err(|e| format!("reading the key file {} on {media} failed: {e}", key_file.path))?;
    if key.len() < 32 {
        return Err(format!(
            "the key file {} on {media} has {} bytes; use at least 32 random bytes",
            key_file.path,
            key.len()
        ));
    }
    Ok(key)
}

/// Grows the partition to the end of its disk; returns the bytes added.
fn grow(partition: &BlockDevice) -> Result<u64, String> {
    let (disk, number) = disk_of(partition)?;
    let sysfs = Path::new(block::SYS_CLASS_BLOCK);
    let read = |path: PathBuf| -> Result<u64, String> {
        std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {} failed: {e}", path.display()))?
            .trim()
            .parse()
            .map_err(|e| format!("{} is not a number: {e}", path.display()))
    };
    let disk_sectors = read(sysfs.join(&disk).join("size"))?;
    let start = read(sysfs.join(&partition.name).join("start"))?;
    let size = read(sysfs.join(&partition.name).join("size"))?;
    let Some(added) = plan::growth(disk_sectors, start, size) else {
        log::info!("storage: the data partition already reaches the end of the disk");
        return Ok(0);
    };
    let disk_node = format!("/dev/{disk}");
    Run::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel", "-N", &number.to_string(), &disk_node])
        .stdin(b", +\n")
        .output()?;
    Run::new("partx").args(["-u", "--nr", &number.to_string(), &disk_node]).output()?;
    let new_size = read(sysfs.join(&partition.name).join("size"))?;
    let grown = new_size.saturating_sub(size) * 512;
    log::info!("storage: grew the data partition by {} MiB (up to {} MiB expected)", grown >> 20, (added * 512) >> 20);
    Ok(grown)
}

/// Returns the disk name and partition number of a partition.
fn disk_of(partition: &BlockDevice) -> Result<(String, u32), String> {
    let link = Path::new(block::SYS_CLASS_BLOCK).join(&partition.name);
    let real = std::fs::canonicalize(&link).map_err(|e| format!("resolving {} failed: {e}", link.display()))?;
    let disk = real
        .parent()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{} has no parent disk", real.display()))?;
    let number = std::fs::read_to_string(real.join("partition"))
        .map_err(|e| format!("{} is not a partition: {e}", partition.name))?
        .trim()
        .parse()
        .map_err(|e| format!("partition number of {}: {e}", partition.name))?;
    Ok((disk, number))
}

fn set_partition_type(partition: &BlockDevice, type_guid: &str) -> Result<(), String> {
    let (disk, number) = disk_of(partition)?;
    Run::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel", "--part-type", &format!("/dev/{disk}"), &number.to_string(), type_guid])
        .output()
        .map(drop)
}

fn cipher_of(device: &str) -> String {
    luks::cipher(device).unwrap_or_else(|error| format!("unknown ({error})"))
}

/// Writes `mib` MiB at the start of `device` and reads them back with an
/// empty page cache; returns (write, read) in KiB/s. Only for a device
/// that is about to be formatted.
fn measure(device: &str, mib: u32) -> Result<(u64, u64), String> {
    use std::io::Write;
    let fail = |what: &str, error: std::io::Error| format!("measuring {device}: {what} failed: {error}");
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(device).map_err(|e| fail("open", e))?;
    let mut block = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    for _ in 0..mib {
        file.write_all(&block).map_err(|e| fail("write", e))?;
    }
    file.sync_data().map_err(|e| fail("fdatasync", e))?;
    let write = started.elapsed();
    std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| fail("dropping the page cache", e))?;
    file.seek(SeekFrom::Start(0)).map_err(|e| fail("seek", e))?;
    let started = Instant::now();
    for _ in 0..mib {
        file.read_exact(&mut block).map_err(|e| fail("read", e))?;
    }
    let read = started.elapsed();
    let rate = |elapsed: Duration| (u64::from(mib) * 1024 * 1000) / (elapsed.as_millis().max(1) as u64);
    Ok((rate(write), rate(read)))
}

/// Records whether the filesystem was unmounted cleanly, then runs e2fsck
/// in its automatic mode. Errors that e2fsck cannot repair stop the phase:
/// the services then find no `/data` instead of a damaged one.
fn check_filesystem(mapped: &str, status: &mut StorageStatus) -> Result<(), String> {
    let mut superblock = [0u8; 1024];
    let read = std::fs::File::open(mapped).and_then(|mut file| {
        file.seek(SeekFrom::Start(plan::EXT4_SUPERBLOCK_OFFSET))?;
        file.read_exact(&mut superblock)
    });
    match read.ok().and_then(|()| plan::parse_ext4_superblock(&superblock)) {
        Some(state) => {
            status.clean_at_boot = Some(state.clean());
            if !state.clean() {
                log::warn!("storage: the data filesystem was not unmounted cleanly (power loss?); checking it");
            }
        }
        None => return Err(format!("{mapped} holds no ext4 filesystem; nothing was formatted")),
    }
    let (code, output) = Run::new("e2fsck").args(["-p", mapped]).code()?;
    let summary = output.lines().last().unwrap_or("").trim().to_string();
    let verdict = match code {
        Some(0) => "clean".to_string(),
        Some(1) | Some(2) => format!("errors corrected: {summary}"),
        _ => {
            let message = format!("e2fsck found errors it could not correct ({code:?}): {summary}; /data stays unmounted");
            status.fsck = Some(message.clone());
            return Err(message);
        }
    };
    log::info!("storage: e2fsck: {verdict}");
    status.fsck = Some(verdict);
    Ok(())
}

fn mount_data(mapped: &str) -> Result<(), String> {
    if !Path::new(DATA_DIR).is_dir() {
        return Err(format!(
            "the root image has no {DATA_DIR} directory to mount the data volume on; rebuild the image with this version of ztms"
        ));
    }
    mount(
        Some(mapped),
        DATA_DIR,
        Some("ext4"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("errors=remount-ro"),
    )
    .map_err(|error| format!("mounting {mapped} on {DATA_DIR} failed: {error}"))
}

/// Creates the directories of the layout that do not exist yet.
fn make_layout(storage: &StoragePlan) {
    for dir in plan::data_layout(&storage.config_dirs) {
        let path = Path::new(DATA_DIR).join(&dir.path);
        if path.exists() {
            continue;
        }
        let (uid, gid) = if dir.root_owned { (0, 0) } else { (storage.owner_uid, storage.owner_gid) };
        let made = std::fs::create_dir(&path)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(dir.mode)))
            .and_then(|()| chown(&path, Some(uid), Some(gid)));
        if let Err(error) = made {
            log::warn!("storage: creating {} failed: {error}", path.display());
        }
    }
}

/// Returns the mount options of `point` from `/proc/self/mountinfo`.
fn mount_options(point: &str) -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(4) == Some(&point)).then(|| fields.get(5).map(|options| options.to_string()))?
    })
}

fn device_size(device: &str) -> Option<u64> {
    let mut file = std::fs::File::open(device).ok()?;
    file.seek(SeekFrom::End(0)).ok()
}

/// Closes the data volume at shutdown, after `/data` is unmounted.
pub fn close() {
    if !Path::new("/dev/mapper").join(MAPPER_NAME).exists() {
        return;
    }
    match super::dm::Control::open().and_then(|control| control.remove(MAPPER_NAME)) {
        Ok(()) => log::info!("closed the data volume {MAPPER_NAME}"),
        Err(error) => log::warn!("closing the data volume {MAPPER_NAME} failed: {error}"),
    }
}

/// Mounts a tmpfs on `/data` for an image whose kernel command line names
/// no data partition; everything on it is lost at power-off.
fn mount_data_tmpfs() -> Result<(), String> {
    mount(
        Some("tmpfs"),
        DATA_DIR,
        Some("tmpfs"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )
    .map_err(|error| format!("mounting a tmpfs on {DATA_DIR} failed: {error}"))?;
    log::warn!("no data partition on the kernel command line: {DATA_DIR} is a tmpfs and is lost at power-off");
    Ok(())
}
