//! The Debian base tree and kernel, built with mmdebstrap and kept in a
//! cache keyed by everything that goes into them, so that a rebuild after an
//! overlay change neither downloads nor unpacks again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::host::run;
use super::modules::{ModuleIndex, STAGE1_MODULES};
use super::BuildError;
use crate::config::Loaded;

/// Bump when the layout of a cache entry changes.
const CACHE_FORMAT: u32 = 2;

/// Paths dpkg never writes into the tree: documentation, manuals and
/// locales, but keeping the copyright files.
const DPKG_PATH_FILTERS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
];

/// One installed Debian package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// What a cache entry records besides the tree itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseInfo {
    pub kernel_release: String,
    /// Module paths relative to `usr/lib/modules/<release>/`, in load order.
    pub stage1_modules: Vec<String>,
    pub packages: Vec<Package>,
}

/// A complete cache entry.
#[derive(Debug, Clone)]
pub struct Base {
    pub dir: PathBuf,
    pub info: BaseInfo,
    /// True when the entry existed before this build.
    pub reused: bool,
}

impl Base {
    pub fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.tree().join("usr/lib/modules").join(&self.info.kernel_release)
    }
}

/// Debian packages that ztms-init's network phase runs: `ip` (iproute2),
/// `nft` with JSON input (nftables) and `udhcpc` for a DHCP uplink (busybox).
pub const NETWORK_PACKAGES: &[&str] = &["busybox", "iproute2", "nftables"];

/// Debian packages that ztms-init's storage phase runs: `cryptsetup`
/// (cryptsetup-bin), `tpm2_*` (tpm2-tools), `sfdisk` (fdisk) and
/// `mkfs.ext4`/`e2fsck` (e2fsprogs).
pub const STORAGE_PACKAGES: &[&str] = &["cryptsetup-bin", "e2fsprogs", "fdisk", "tpm2-tools"];

/// Debian package of `wg`, which configures the WireGuard interfaces; only
/// definitions with remote-access peers or a `[vpn]` table get it.
pub const WIREGUARD_PACKAGE: &str = "wireguard-tools";

/// Debian package of `apparmor_parser`, which ztms-init runs to load the
/// services' AppArmor profiles; only definitions with services get it.
pub const APPARMOR_PACKAGE: &str = "apparmor";

/// Returns every package the tree gets: the network and storage tools, the base list
/// and each service's.
pub fn package_list(loaded: &Loaded) -> Vec<String> {
    let definition = &loaded.definition;
    let mut packages: BTreeSet<String> =
        NETWORK_PACKAGES.iter().chain(STORAGE_PACKAGES).map(|name| name.to_string()).collect();
    packages.extend(definition.base.packages.iter().cloned());
    for service in &definition.services {
        packages.extend(service.packages.iter().cloned());
    }
    if !definition.wireguard.peers.is_empty() || definition.vpn.is_some() {
        packages.insert(WIREGUARD_PACKAGE.to_string());
    }
    // ztms-init runs every service with crun, and loads each service's
    // AppArmor profile with apparmor_parser (package apparmor).
    if !definition.services.is_empty() {
        packages.insert("crun".to_string());
        packages.insert(APPARMOR_PACKAGE.to_string());
    }
    packages.into_iter().collect()
}

/// Returns the cache key: a hash of every input of the base tree.
pub fn cache_key(loaded: &Loaded, epoch: u64) -> String {
    let definition = &loaded.definition;
    let inputs = serde_json::json!({
        "format": CACHE_FORMAT,
        "suite": definition.base.suite,
        "mirror": definition.base.mirror,
        "packages": package_list(loaded),
        "kernel": definition.kernel.package,
        "module_exclude": definition.kernel.module_exclude,
        "dpkg_filters": DPKG_PATH_FILTERS,
        "epoch": epoch,
    });
    hex::encode(Sha256::digest(inputs.to_string().as_bytes()))[..24].to_string()
}

/// Returns the cached base tree for `loaded`, building it first if needed.
pub fn ensure(loaded: &Loaded, cache: &Path, epoch: u64) -> Result<Base, BuildError> {
    let key = cache_key(loaded, epoch);
    let dir = cache.join("base").join(&key);
    if let Some(info) = read_info(&dir) {
        return Ok(Base { dir, info, reused: true });
    }

    // One builder per entry at a time, across threads and processes: the
    // others wait here and then find the entry complete.
    let base_dir = cache.join("base");
    std::fs::create_dir_all(&base_dir).map_err(|e| BuildError::io("create cache", &base_dir, e))?;
    let lock_path = base_dir.join(format!("{key}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(|e| BuildError::io("create cache lock", &lock_path, e))?;
    lock.lock().map_err(|e| BuildError::io("lock cache entry", &lock_path, e))?;
    if let Some(info) = read_info(&dir) {
        return Ok(Base { dir, info, reused: true });
    }

    remove_stale(&base_dir);
    let partial = base_dir.join(format!("{key}.partial-{}", super::unique_suffix()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| BuildError::io("create cache entry", &partial, e))?;
    let result = assemble(loaded, &partial, epoch);
    if let Err(error) = result {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(error);
    }
    match std::fs::rename(&partial, &dir) {
        Ok(()) => {}
        // Another build finished the same entry first; keep that one.
        Err(_) if read_info(&dir).is_some() => {
            let _ = std::fs::remove_dir_all(&partial);
        }
        Err(e) => return Err(BuildError::io("store cache entry", &dir, e)),
    }
    let info = read_info(&dir).ok_or_else(|| {
        BuildError::io("read cache entry", &dir, std::io::Error::other("info.json missing"))
    })?;
    Ok(Base { dir, info, reused: false })
}

/// Removes the directories that builds killed mid-way left in `parent`:
/// names ending in `-PID` whose process no longer runs.
pub fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.rsplit_once('-').and_then(|(_, pid)| pid.parse::<u32>().ok()) else {
            continue;
        };
        let is_build_dir = name.contains(".partial-") || parent.ends_with("work");
        if is_build_dir && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            log::info!("removing {} left by an interrupted build", entry.path().display());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn read_info(dir: &Path) -> Option<BaseInfo> {
    let text = std::fs::read_to_string(dir.join("info.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn assemble(loaded: &Loaded, dir: &Path, epoch: u64) -> Result<(), BuildError> {
    let definition = &loaded.definition;
    let tarball = dir.join("root.tar");
    let kernel_debs = dir.join("kernel-debs");
    let packages = package_list(loaded);

    let mut command = Command::new("mmdebstrap");
    command
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .arg("--mode=unshare")
        .arg("--variant=minbase")
        // Not --quiet: apt's "Unable to locate package" is only shown without it.
        .arg("--format=tar");
    for filter in DPKG_PATH_FILTERS {
        command.arg(format!("--dpkgopt={filter}"));
    }
    if !packages.is_empty() {
        command.arg(format!("--include={}", packages.join(",")));
    }
    // The kernel is downloaded, not installed: installing it would pull in
    // initramfs-tools, and ztms makes its own initramfs.
    let kernel = &definition.kernel.package;
    command
        .arg(format!(
            "--customize-hook=chroot \"$1\" sh -ec 'mkdir -p /tmp/ztms-kernel && cd /tmp/ztms-kernel && apt-get download -q {kernel} $(apt-cache depends {kernel} | sed -n \"s/^ *Depends: \\(linux-image-[0-9].*\\)/\\1/p\")'"
        ))
        .arg(format!("--customize-hook=copy-out /tmp/ztms-kernel {}", dir.display()))
        .arg("--customize-hook=rm -rf \"$1/tmp/ztms-kernel\"")
        .arg(&definition.base.suite)
        .arg(&tarball)
        .arg(&definition.base.mirror);
    run("debootstrap", &mut command).map_err(|error| unknown_package(loaded, error))?;
    std::fs::rename(dir.join("ztms-kernel"), &kernel_debs)
        .map_err(|e| BuildError::io("collect kernel packages", &kernel_debs, e))?;

    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).map_err(|e| BuildError::io("create tree", &tree, e))?;
    run(
        "unpack",
        Command::new("tar")
            .arg("-C")
            .arg(&tree)
            .args(["--numeric-owner", "-xpf"])
            .arg(&tarball),
    )?;
    std::fs::remove_file(&tarball).map_err(|e| BuildError::io("remove tarball", &tarball, e))?;

    let kernel_release = unpack_kernel(loaded, dir, &kernel_debs, &tree)?;
    let modules_dir = tree.join("usr/lib/modules").join(&kernel_release);
    let index = ModuleIndex::scan(&modules_dir)
        .map_err(|e| BuildError::io("read kernel modules", &modules_dir, e))?;
    let depends = index.modules_dep(&|_| true);
    std::fs::write(modules_dir.join("modules.dep"), depends)
        .map_err(|e| BuildError::io("write modules.dep", &modules_dir, e))?;
    let stage1_modules = index
        .closure(STAGE1_MODULES, false)
        .map_err(|e| BuildError::Kernel(e.to_string()))?;

    let info = BaseInfo {
        kernel_release,
        stage1_modules,
        packages: read_dpkg_status(&tree.join("var/lib/dpkg/status"))?,
    };
    let info_path = dir.join("info.json");
    let text = serde_json::to_string_pretty(&info).unwrap_or_default();
    std::fs::write(&info_path, text).map_err(|e| BuildError::io("write cache info", &info_path, e))
}

/// Unpacks the kernel packages, moves the image to `dir/vmlinuz` and the
/// modules (less the excluded directories) into the tree. Returns the
/// kernel release.
fn unpack_kernel(loaded: &Loaded, dir: &Path, debs: &Path, tree: &Path) -> Result<String, BuildError> {
    let unpacked = dir.join("kernel");
    for entry in std::fs::read_dir(debs).map_err(|e| BuildError::io("list kernel packages", debs, e))? {
        let deb = entry.map_err(|e| BuildError::io("list kernel packages", debs, e))?.path();
        run("kernel", Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    let boot = unpacked.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .map_err(|e| BuildError::io("find kernel image", &boot, e))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .ok_or_else(|| {
            BuildError::Kernel(format!(
                "package {:?} has no /boot/vmlinuz-*; set kernel.package to a Debian kernel image package",
                loaded.definition.kernel.package
            ))
        })?;
    let release = vmlinuz
        .file_name()
        .map(|n| n.to_string_lossy().trim_start_matches("vmlinuz-").to_string())
        .unwrap_or_default();
    std::fs::rename(&vmlinuz, dir.join("vmlinuz")).map_err(|e| BuildError::io("store kernel", &vmlinuz, e))?;

    let source = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|prefix| unpacked.join(prefix).join(&release))
        .find(|path| path.is_dir())
        .ok_or_else(|| BuildError::Kernel(format!("no modules directory for kernel {release}")))?;
    for excluded in &loaded.definition.kernel.module_exclude {
        let path = source.join("kernel").join(excluded);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| BuildError::io("drop modules", &path, e))?;
        }
    }
    let target = tree.join("usr/lib/modules");
    std::fs::create_dir_all(&target).map_err(|e| BuildError::io("create modules dir", &target, e))?;
    run("kernel", Command::new("cp").arg("-a").arg(&source).arg(&target))?;
    std::fs::remove_dir_all(&unpacked).map_err(|e| BuildError::io("clean kernel files", &unpacked, e))?;
    std::fs::remove_dir_all(debs).map_err(|e| BuildError::io("clean kernel packages", debs, e))?;
    Ok(release)
}

/// Reads installed packages and versions from dpkg's status file.
pub fn read_dpkg_status(path: &Path) -> Result<Vec<Package>, BuildError> {
    let text = std::fs::read_to_string(path).map_err(|e| BuildError::io("read dpkg status", path, e))?;
    Ok(parse_dpkg_status(&text))
}

fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut packages = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let installed = field("Status:").is_some_and(|s| s.ends_with(" installed"));
        if let (true, Some(name), Some(version)) = (installed, field("Package:"), field("Version:")) {
            packages.push(Package { name, version });
        }
    }
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    packages
}

/// Turns apt's "Unable to locate package" into an error naming the
/// services that asked for the package.
fn unknown_package(loaded: &Loaded, error: BuildError) -> BuildError {
    let BuildError::Command { output, .. } = &error else { return error };
    let missing = output.lines().find_map(|line| {
        line.split_once("Unable to locate package ")
            .map(|(_, name)| name.trim().to_string())
            .or_else(|| {
                line.split_once("Package '")
                    .filter(|(_, rest)| rest.contains("has no installation candidate"))
                    .and_then(|(_, rest)| rest.split('\'').next().map(String::from))
            })
    });
    let Some(package) = missing else { return error };
    let definition = &loaded.definition;
    let mut owners: Vec<String> = definition
        .services
        .iter()
        .filter(|service| service.packages.contains(&package))
        .map(|service| format!("service {:?}", service.name.get_ref()))
        .collect();
    if definition.base.packages.contains(&package) {
        owners.push("base.packages".into());
    }
    BuildError::UnknownPackage {
        package,
        owners: owners.join(", "),
        apt_output: output.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_keeps_installed_only() {
        let text = "Package: a\nStatus: install ok installed\nVersion: 1.0\n\nPackage: b\nStatus: deinstall ok config-files\nVersion: 2\n";
        let packages = parse_dpkg_status(text);
        assert_eq!(packages, [Package { name: "a".into(), version: "1.0".into() }]);
    }

    fn packages_of(text: &str) -> Vec<String> {
        let loaded = crate::config::parse(Path::new("t.toml"), text.to_string()).expect("valid definition");
        package_list(&loaded)
    }

    #[test]
    fn wireguard_tools_only_with_wireguard() {
        let plain = "[image]\nname = \"t\"\nversion = \"1\"\n";
        assert!(!packages_of(plain).contains(&WIREGUARD_PACKAGE.to_string()));
        let remote = format!(
            "{plain}[[wireguard.peer]]\nname = \"phone\"\npublic_key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"\n"
        );
        assert!(packages_of(&remote).contains(&WIREGUARD_PACKAGE.to_string()));
    }

    #[test]
    fn apparmor_only_with_services() {
        let plain = "[image]\nname = \"t\"\nversion = \"1\"\n";
        assert!(!packages_of(plain).contains(&APPARMOR_PACKAGE.to_string()));
        let with_service = format!("{plain}[[service]]\nname = \"app\"\nsegment = \"backend\"\ncommand = [\"/bin/app\"]\n");
        assert!(packages_of(&with_service).contains(&APPARMOR_PACKAGE.to_string()));
    }
}
