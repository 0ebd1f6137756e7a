//! Service root filesystems in the image: OCI images unpacked under
//! `/usr/lib/ztms/services/<name>/rootfs`, the mount points every
//! container needs, created before the image is sealed read-only, and each
//! service's OCI spec at `/usr/lib/ztms/bundles/<name>/config.json` with
//! its AppArmor profile beside it.

use std::path::{Path, PathBuf};

use super::oci::ImageConfig;
use super::tree::resolve_in_root;
use super::BuildError;
use crate::config::Loaded;
use crate::runtime::{self, RootfsDir, ServiceInput};

/// Mount points of the kernel filesystems in every container.
const SYSTEM_MOUNT_POINTS: &[&str] = &["/proc", "/dev", "/sys"];

/// Checks that the OCI image of every service exists, before the build
/// spends minutes on the base tree.
pub fn check_images(loaded: &Loaded) -> Result<(), BuildError> {
    for service in &loaded.definition.services {
        let Some(oci) = &service.oci else { continue };
        let path = loaded.resolve(oci.get_ref());
        if !path.exists() {
            return Err(BuildError::Oci {
                service: service.name.get_ref().clone(),
                error: format!(
                    "{} not found; save the image there with `docker save -o FILE IMAGE` or `skopeo copy docker://IMAGE oci-archive:FILE`, or give the path of an OCI layout directory",
                    path.display()
                ),
            });
        }
    }
    Ok(())
}

/// Unpacks each service's OCI image into `tree`, creates the mount points
/// of every service and writes its spec. Returns the number of images
/// imported.
pub fn lay_services(loaded: &Loaded, tree: &Path) -> Result<usize, BuildError> {
    let mut imported = 0;
    for service in &loaded.definition.services {
        let name = service.name.get_ref();
        let mut input = ServiceInput::new(service);
        let relative_rootfs = input.rootfs.strip_prefix("/").unwrap_or(&input.rootfs).to_path_buf();
        let rootfs = tree.join(&relative_rootfs);

        if let Some(oci) = &service.oci {
            let source = loaded.resolve(oci.get_ref());
            let config = crate::build::oci::import(&source, &rootfs).map_err(|error| BuildError::Oci {
                service: name.clone(),
                error: error.to_string(),
            })?;
            let image_json = rootfs.with_file_name("image.json");
            let text = serde_json::to_vec_pretty(&config).unwrap_or_default();
            std::fs::write(&image_json, text).map_err(|e| BuildError::io("write image config", &image_json, e))?;
            apply_image_config(&mut input, &config);
            imported += 1;
        }

        let spec = runtime::bundle_spec(&input, &RootfsDir(rootfs.clone()))
            .map_err(|error| BuildError::Plan(error.to_string()))?;
        let mut points = runtime::mount_points(&spec);
        // The Debian root has /proc, /dev and /sys, but an image built
        // FROM scratch may lack them, and crun cannot create them on the
        // read-only root.
        if service.oci.is_some() {
            points.extend(SYSTEM_MOUNT_POINTS.iter().map(PathBuf::from));
        }
        // Every mount point is a directory but the resolver file's, which
        // a file bind needs as a file.
        let resolver_target = spec
            .mounts()
            .iter()
            .flatten()
            .find(|mount| mount.source().as_ref().is_some_and(|source| source.starts_with(crate::net::resolv::RESOLV_DIR)))
            .map(|mount| mount.destination().clone());
        for point in points {
            let target = resolve_in_root(&rootfs, &point);
            if target.exists() || target.is_symlink() {
                continue;
            }
            if resolver_target.as_ref() == Some(&point) {
                create_empty_file(&target)?;
            } else {
                std::fs::create_dir_all(&target).map_err(|e| BuildError::io("create mount point", &target, e))?;
            }
        }

        // Device grants stay in an annotation: ztms-init fills in their
        // numbers at boot.
        let bundle = tree.join(runtime::BUNDLES_DIR.trim_start_matches('/')).join(name);
        std::fs::create_dir_all(&bundle).map_err(|e| BuildError::io("create bundle directory", &bundle, e))?;
        let config = bundle.join("config.json");
        let text = serde_json::to_vec_pretty(&spec).map_err(|e| BuildError::Plan(format!("service {name:?}: {e}")))?;
        std::fs::write(&config, text).map_err(|e| BuildError::io("write bundle spec", &config, e))?;

        let profile = runtime::profile_text(name, &spec).map_err(|error| BuildError::Plan(error.to_string()))?;
        let profile_path = bundle.join(runtime::PROFILE_FILE);
        std::fs::write(&profile_path, profile).map_err(|e| BuildError::io("write AppArmor profile", &profile_path, e))?;
    }

    // Mount point of the data volume, which every image has and which the
    // read-only root cannot gain at boot.
    let data = tree.join(runtime::DATA_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&data).map_err(|e| BuildError::io("create mount point", &data, e))?;
    Ok(imported)
}

/// Creates an empty file with mode 0644 and its parent directories.
fn create_empty_file(path: &Path) -> Result<(), BuildError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| BuildError::io("create mount point", parent, e))?;
    }
    std::fs::write(path, b"").map_err(|e| BuildError::io("create mount point", path, e))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(|e| BuildError::io("create mount point", path, e))
}

/// Passes an OCI image's environment to its container and sets `PUID` and
/// `PGID` to the service's `user`. Images that follow the linuxserver.io
/// conventions read those two variables to pick the user that owns
/// `/config`; here the container already runs as that user.
fn apply_image_config(input: &mut ServiceInput<'_>, config: &ImageConfig) {
    input.image_env = config.env.clone();
    input.puid_pgid = true;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Service;

    fn oci_service() -> Service {
        let text = r#"
name = "jellyfin"
segment = "frontend"
oci = "oci/jellyfin.tar"
command = ["/init"]
user = "1001:1002"
"#;
        toml::from_str(text).unwrap()
    }

    fn environment(input: &ServiceInput<'_>) -> Vec<String> {
        let spec = runtime::bundle_spec(input, &runtime::NoImage).unwrap();
        spec.process().as_ref().unwrap().env().clone().unwrap()
    }

    #[test]
    fn oci_service_gets_puid_pgid_of_user() {
        let service = oci_service();
        let mut input = ServiceInput::new(&service);
        apply_image_config(&mut input, &ImageConfig::default());
        let env = environment(&input);
        assert!(env.contains(&"PUID=1001".to_string()), "{env:?}");
        assert!(env.contains(&"PGID=1002".to_string()), "{env:?}");
    }

    #[test]
    fn oci_service_keeps_image_env() {
        let service = oci_service();
        let mut input = ServiceInput::new(&service);
        let config = ImageConfig {
            env: vec!["HOME=/config".into(), "PUID=911".into()],
            ..ImageConfig::default()
        };
        apply_image_config(&mut input, &config);
        let env = environment(&input);
        assert!(env.contains(&"HOME=/config".to_string()), "{env:?}");
        // The service's user wins over the image's default PUID.
        assert!(env.contains(&"PUID=1001".to_string()), "{env:?}");
        assert!(!env.contains(&"PUID=911".to_string()), "{env:?}");
    }

    #[test]
    fn package_service_has_no_puid() {
        let text = "name = \"media\"\nsegment = \"frontend\"\ncommand = [\"/bin/true\"]\n";
        let service: Service = toml::from_str(text).unwrap();
        let env = environment(&ServiceInput::new(&service));
        assert!(!env.iter().any(|entry| entry.starts_with("PUID=")), "{env:?}");
    }
}
