//! Service root filesystems in the image: OCI images unpacked under
//! `/usr/lib/ztms/services/<name>/rootfs`, the mount points every
//! container needs, created before the image is sealed read-only, and each
//! service's OCI spec at `/usr/lib/ztms/bundles/<name>/config.json`.

use std::path::Path;

use super::tree::resolve_in_root;
use super::BuildError;
use crate::config::Loaded;
use crate::runtime::{self, RootfsDir, ServiceInput};

/// Unpacks each service's OCI image into `tree`, creates the mount points
/// of every service and writes its spec. Returns the number of images
/// imported.
pub fn lay_services(loaded: &Loaded, tree: &Path) -> Result<usize, BuildError> {
    let mut imported = 0;
    for service in &loaded.definition.services {
        let name = service.name.get_ref();
        let input = ServiceInput::new(service);
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
            imported += 1;
        }

        let spec = runtime::bundle_spec(&input, &RootfsDir(rootfs.clone()))
            .map_err(|error| BuildError::Plan(error.to_string()))?;
        for point in runtime::mount_points(&spec) {
            let target = resolve_in_root(&rootfs, &point);
            if !target.exists() {
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
    }

    // Mount point of the data volume, which every image has and which the
    // read-only root cannot gain at boot.
    let data = tree.join(runtime::DATA_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&data).map_err(|e| BuildError::io("create mount point", &data, e))?;
    Ok(imported)
}
