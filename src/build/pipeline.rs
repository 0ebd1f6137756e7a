//! The ordered build steps and their timing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::layout::{self, Role};
use super::manifest::{self, Artifact, Manifest};
use super::{base, disk, esp, host, initramfs, rootimg, services, tree, uki, BuildError};
use crate::config::Loaded;

/// Path of the update verification key inside the root image.
pub const UPDATE_KEY_PATH: &str = "etc/ztms/update.pub";

/// Inputs of one build besides the definition.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// The static ztms-init binary to install.
    pub init_binary: PathBuf,
    pub source_date_epoch: u64,
}

/// What `ztms build` prints at the end.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub steps: Vec<(String, Duration)>,
    pub artifacts: Vec<Artifact>,
    pub root_hash: String,
    pub root_size: u64,
    pub base_reused: bool,
}

/// Times steps and shows progress on a terminal.
struct Steps {
    done: Vec<(String, Duration)>,
    spinner: indicatif::ProgressBar,
}

impl Steps {
    fn new() -> Self {
        let spinner = indicatif::ProgressBar::new_spinner();
        spinner.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        spinner.enable_steady_tick(Duration::from_millis(120));
        Self { done: Vec::new(), spinner }
    }

    fn run<T>(&mut self, name: &str, work: impl FnOnce() -> Result<T, BuildError>) -> Result<T, BuildError> {
        self.spinner.set_message(name.to_string());
        let started = Instant::now();
        let result = work();
        let elapsed = started.elapsed();
        let line = format!("  {name:<10} {:>7.1} s", elapsed.as_secs_f64());
        if self.spinner.is_hidden() {
            eprintln!("{line}");
        } else {
            self.spinner.println(line);
        }
        self.done.push((name.to_string(), elapsed));
        result
    }
}

/// Removes the work directory unless the build succeeded and took it apart.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds the image of `loaded` into `options.out_dir`.
pub fn build(loaded: &Loaded, options: &BuildOptions) -> Result<BuildReport, BuildError> {
    let definition = &loaded.definition;
    let name = definition.image.name.get_ref().as_str();
    let epoch = options.source_date_epoch;
    let seed = definition_seed(loaded);
    let mut steps = Steps::new();

    host::preflight()?;
    let init = std::fs::read(&options.init_binary)
        .map_err(|_| BuildError::InitMissing(options.init_binary.clone()))?;
    services::check_images(loaded)?;
    let plan = crate::init::plan::from_definition(definition).map_err(|e| BuildError::Plan(e.to_string()))?;
    let network = crate::net::ApplianceNetwork::from_definition(definition).map_err(|e| BuildError::Plan(e.to_string()))?;

    base::remove_stale(&options.cache_dir.join("work"));
    let work = options.cache_dir.join("work").join(format!("{name}-{}", super::unique_suffix()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| BuildError::io("create work directory", &work, e))?;
    let work = WorkDir(work);
    let work_path = work.0.clone();

    let base = steps.run("base", || base::ensure(loaded, &options.cache_dir, epoch))?;

    let tree_dir = work_path.join("tree");
    steps.run("tree", || {
        tree::link_copy(&base.tree(), &tree_dir)?;
        for overlay in &definition.base.overlays {
            tree::apply_overlay(&loaded.resolve(overlay.get_ref()), &tree_dir)?;
        }
        services::lay_services(loaded, &tree_dir)?;
        super::accounts::add_service_accounts(loaded, &tree_dir)?;
        tree::write_file(&tree_dir, tree::INIT_PATH, &init, 0o755)?;
        let plan_json = serde_json::to_vec_pretty(&plan).unwrap_or_default();
        tree::write_file(&tree_dir, tree::PLAN_PATH, &plan_json, 0o644)?;
        let network_json = serde_json::to_vec_pretty(&network).unwrap_or_default();
        tree::write_file(&tree_dir, crate::net::NETWORK_PATH.trim_start_matches('/'), &network_json, 0o644)?;
        let hosts = crate::net::hosts::render(&network.plan);
        tree::write_file(&tree_dir, crate::net::hosts::HOSTS_PATH.trim_start_matches('/'), hosts.as_bytes(), 0o644)?;
        tree::write_file(&tree_dir, crate::net::UDHCPC_SCRIPT_PATH.trim_start_matches('/'), crate::net::UDHCPC_SCRIPT.as_bytes(), 0o755)?;
        let hostname = definition.base.hostname.as_deref().unwrap_or(name);
        tree::write_file(&tree_dir, "etc/hostname", format!("{hostname}\n").as_bytes(), 0o644)?;
        tree::write_file(&tree_dir, "etc/os-release", os_release(loaded).as_bytes(), 0o644)?;
        if let Some(public_key) = &definition.update.public_key {
            let path = loaded.resolve(public_key);
            crate::update::keys::load_verifying(&path).map_err(|e| BuildError::Plan(e.to_string()))?;
            let text = std::fs::read(&path).map_err(|e| BuildError::io("read update key", &path, e))?;
            tree::write_file(&tree_dir, UPDATE_KEY_PATH, &text, 0o644)?;
        }
        Ok(())
    })?;

    let root_image = work_path.join("root.img");
    let verity = steps.run("erofs", || {
        rootimg::make_erofs(&tree_dir, &root_image, epoch, &layout::derived_uuid(&seed, "erofs"))?;
        let salt = hex::encode(&Sha256::digest(format!("{seed}\0verity-salt").as_bytes())[..32]);
        let verity = rootimg::append_verity(&root_image, &salt, &layout::derived_uuid(&seed, "verity"))?;
        check_fits("the root filesystem with its hash tree", "disk.root", verity.total_size, definition.disk.root.get_ref().bytes())?;
        Ok(verity)
    })?;
    let _ = std::fs::remove_dir_all(&tree_dir);

    let layout = layout::plan(
        name,
        &seed,
        definition.disk.esp.get_ref().bytes(),
        definition.disk.root.get_ref().bytes(),
        definition.disk.data.get_ref().bytes(),
    );
    let cmdline = kernel_cmdline(loaded, &layout, &verity, Role::RootA);
    // "+3": systemd-boot's boot counter. The first boot that reaches every
    // service healthy is blessed by ztms-init, which drops the counter.
    let uki_name = format!("{name}-{}+3.efi", definition.image.version);
    let uki_path = work_path.join(&uki_name);
    // The same root image boots from slot B when an update writes it there,
    // with a command line that names root-b; only bundles carry this UKI.
    let uki_b_path = work_path.join("uki-b.efi");
    let build_bundle = definition.update.signing_key.is_some();
    steps.run("uki", || {
        let initrd = initramfs::build(&init, &base.modules_dir(), &base.info.stage1_modules, epoch)?;
        let initrd_path = work_path.join("initrd.cpio");
        let osrel_path = work_path.join("os-release");
        write(&initrd_path, &initrd)?;
        write(&osrel_path, os_release(loaded).as_bytes())?;
        let mut targets = vec![(cmdline.clone(), &uki_path, "cmdline-a")];
        if build_bundle {
            targets.push((kernel_cmdline(loaded, &layout, &verity, Role::RootB), &uki_b_path, "cmdline-b"));
        }
        for (slot_cmdline, output, cmdline_file) in targets {
            let cmdline_path = work_path.join(cmdline_file);
            write(&cmdline_path, slot_cmdline.as_bytes())?;
            uki::build(
                &[
                    uki::Section { name: ".osrel", file: &osrel_path },
                    uki::Section { name: ".cmdline", file: &cmdline_path },
                    uki::Section { name: ".linux", file: &base.vmlinuz() },
                    uki::Section { name: ".initrd", file: &initrd_path },
                ],
                output,
            )?;
        }
        Ok(())
    })?;

    let esp_image = work_path.join("esp.img");
    steps.run("esp", || {
        let boot = std::fs::read(host::SYSTEMD_BOOT_EFI)
            .map_err(|e| BuildError::io("read systemd-boot", Path::new(host::SYSTEMD_BOOT_EFI), e))?;
        let uki_bytes = std::fs::read(&uki_path).map_err(|e| BuildError::io("read UKI", &uki_path, e))?;
        let files = vec![
            ("EFI/BOOT/BOOTX64.EFI".to_string(), boot.clone()),
            ("EFI/systemd/systemd-bootx64.efi".to_string(), boot),
            ("loader/loader.conf".to_string(), b"timeout 0\neditor no\nauto-entries no\nauto-firmware no\n".to_vec()),
            (format!("EFI/Linux/{uki_name}"), uki_bytes),
        ];
        let volume_id = u32::from_le_bytes(Sha256::digest(seed.as_bytes())[..4].try_into().unwrap_or([0; 4]));
        let esp_size = layout.partition(Role::Esp).size;
        let needed: u64 = files.iter().map(|(_, data)| data.len() as u64).sum();
        // FAT32 metadata takes about 1% of the partition; a boot needs room
        // for the next slot's UKI during an update too.
        check_fits("two UKIs and systemd-boot", "disk.esp", needed * 2 + esp_size / 50, esp_size)?;
        esp::build(&esp_image, esp_size, volume_id, epoch, &files)
    })?;

    let raw = work_path.join(format!("{name}.raw"));
    let qcow2 = work_path.join(format!("{name}.qcow2"));
    steps.run("disk", || {
        disk::write_raw(&raw, &layout, &esp_image, &root_image)?;
        disk::write_qcow2(&raw, &qcow2)
    })?;

    let mut artifacts = Vec::new();
    steps.run("manifest", || {
        artifacts.push(manifest::artifact(&raw)?);
        artifacts.push(manifest::artifact(&qcow2)?);
        artifacts.push(manifest::artifact(&uki_path)?);
        let manifest = Manifest {
            name,
            version: &definition.image.version,
            ztms_version: env!("CARGO_PKG_VERSION"),
            source_date_epoch: epoch,
            kernel_release: &base.info.kernel_release,
            cmdline: &cmdline,
            uki: &uki_name,
            verity: &verity,
            partitions: &layout,
            packages: &base.info.packages,
            artifacts: artifacts.clone(),
        };
        let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
        write(&work_path.join("manifest.json"), text.as_bytes())
    })?;

    let mut published = vec![format!("{name}.raw"), format!("{name}.qcow2"), uki_name.clone(), "manifest.json".to_string()];
    if let Some(signing_key) = &definition.update.signing_key {
        let bundle_name = format!("{name}-{}.ztmsb", definition.image.version);
        steps.run("bundle", || {
            let key = crate::update::keys::load_signing(&loaded.resolve(signing_key))
                .map_err(|e| BuildError::Plan(e.to_string()))?;
            let files = [
                (crate::update::bundle::ROOT_IMAGE.to_string(), root_image.clone()),
                (crate::update::bundle::uki_member("a"), uki_path.clone()),
                (crate::update::bundle::uki_member("b"), uki_b_path.clone()),
            ];
            let mut described = Vec::new();
            for (file, path) in &files {
                described.push(crate::update::bundle::describe(file, path).map_err(|e| BuildError::Plan(e.to_string()))?);
            }
            let manifest = crate::update::bundle::BundleManifest {
                format: crate::update::bundle::FORMAT,
                name: name.to_string(),
                version: definition.image.version.clone(),
                root_hash: verity.root_hash.clone(),
                artifacts: described,
            };
            crate::update::bundle::write(&work_path.join(&bundle_name), &manifest, &key, &files)
                .map_err(|e| BuildError::Plan(e.to_string()))
        })?;
        published.push(bundle_name);
    }

    std::fs::create_dir_all(&options.out_dir).map_err(|e| BuildError::io("create output directory", &options.out_dir, e))?;
    for file in published {
        publish(&work_path.join(&file), &options.out_dir.join(&file))?;
    }
    steps.spinner.finish_and_clear();

    Ok(BuildReport {
        steps: steps.done,
        artifacts,
        root_hash: verity.root_hash.clone(),
        root_size: verity.total_size,
        base_reused: base.reused,
    })
}

/// Moves a finished artifact into place with one rename; across file
/// systems it copies to a temporary name beside the target first.
fn publish(from: &Path, to: &Path) -> Result<(), BuildError> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    let partial = to.with_extension("partial");
    std::fs::copy(from, &partial).map_err(|e| BuildError::io("copy artifact", &partial, e))?;
    std::fs::rename(&partial, to).map_err(|e| BuildError::io("publish artifact", to, e))
}

fn write(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    std::fs::write(path, data).map_err(|e| BuildError::io("write", path, e))
}

fn check_fits(what: &str, key: &str, needed: u64, available: u64) -> Result<(), BuildError> {
    if needed <= available {
        return Ok(());
    }
    let mib = |bytes: u64| bytes.div_ceil(1 << 20);
    Err(BuildError::TooSmall {
        what: what.into(),
        key: key.into(),
        needed: mib(needed),
        available: mib(available),
        suggested: (mib(needed) * 5 / 4).div_ceil(16) * 16,
    })
}

/// Seed for UUIDs and the verity salt: the definition's canonical JSON, so
/// comments and key order do not change the image.
pub fn definition_seed(loaded: &Loaded) -> String {
    let json = serde_json::to_string(&loaded.definition).unwrap_or_default();
    hex::encode(Sha256::digest(json.as_bytes()))
}

/// Returns the kernel command line that boots the root image from the
/// partition of `slot` (`Role::RootA` or `Role::RootB`).
pub fn kernel_cmdline(loaded: &Loaded, layout: &layout::Layout, verity: &rootimg::Verity, slot: Role) -> String {
    let definition = &loaded.definition;
    let letter = if slot == Role::RootB { "b" } else { "a" };
    let mut args = vec![
        "console=ttyS0,115200".to_string(),
        "panic=10".to_string(),
        format!("ztms.slot={letter}"),
        format!("ztms.root={}", layout.partition(slot).label),
        verity.cmdline(),
        format!("ztms.data={}", layout.partition(Role::Data).label),
    ];
    args.extend(definition.kernel.cmdline.iter().cloned());
    args.join(" ")
}

fn os_release(loaded: &Loaded) -> String {
    let image = &loaded.definition.image;
    format!(
        "NAME=ztms\nID=ztms\nPRETTY_NAME=\"ztms {name} {version}\"\nIMAGE_ID={name}\nIMAGE_VERSION={version}\nVERSION_ID={version}\n",
        name = image.name.get_ref(),
        version = image.version,
    )
}
