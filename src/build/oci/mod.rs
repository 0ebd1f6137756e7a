//! Imports a container image into a directory that becomes a service's
//! read-only root filesystem inside the appliance's root image.
//!
//! Accepted inputs, told apart by their top-level members:
//! - a docker-save tar (`manifest.json` with `Config` and `Layers`),
//! - an oci-archive tar (`oci-layout`, `index.json`, `blobs/sha256/…`),
//! - an OCI image layout directory with the same members.
//!
//! When a tar contains both `oci-layout` and `manifest.json` (docker save
//! since Docker 25), the OCI index is used.

mod blob;
mod error;
mod layer;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;
use serde::{Deserialize, Serialize};

use blob::{Digest, HashingReader, Store};
pub use error::OciError;

/// Maximum depth of image indexes that point at other indexes. An
/// oci-archive usually has two levels: index.json and a multi-platform index.
const MAX_INDEX_DEPTH: usize = 4;

/// The runtime settings of an image, from the `config` object of its image
/// config (image-spec config.md). Absent fields are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` entries, in image order.
    pub env: Vec<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, as the image gives it.
    pub user: Option<String>,
    pub working_dir: Option<String>,
    /// Ports as `<port>/<protocol>`, such as `8096/tcp`, sorted.
    pub exposed_ports: Vec<String>,
}

/// Unpacks the linux/amd64 image at `source` into `dest` and returns its
/// config.
///
/// `dest` must be an empty directory or not exist yet. Layers are applied in
/// order with whiteouts, and no member is written outside `dest`. Blobs are
/// checked against the digests that reference them (descriptors in an OCI
/// layout, `blobs/sha256/<hex>` and `<hex>.json` names in a docker-save
/// archive), and every layer's tar stream against the config's
/// `rootfs.diff_ids`; `index.json` and `manifest.json` have no digest.
/// Setuid and setgid bits are removed, device nodes and FIFOs are skipped
/// with a warning, extended attributes are ignored, and ownership is copied
/// from the layers, which needs root unless every member belongs to the
/// importing user.
///
/// A layer is checked after it is unpacked, so on error `dest` holds a
/// partial tree: the caller must delete it.
pub fn import(source: &Path, dest: &Path) -> Result<ImageConfig, OciError> {
    let dest = &prepare_destination(dest)?;
    let store = Store::open(source)?;
    let image = if store.contains("oci-layout") {
        read_oci_image(&store)?
    } else if store.contains("manifest.json") {
        read_docker_image(&store)?
    } else {
        return Err(OciError::UnknownFormat {
            archive: source.to_path_buf(),
        });
    };

    let config: RawImageConfig = parse_json(&store, &image.config_member, &image.config_bytes)?;
    let platform = (config.os.as_deref(), config.architecture.as_deref());
    if !matches!(platform, (None | Some("linux"), None | Some("amd64"))) {
        return Err(OciError::WrongPlatform {
            archive: source.to_path_buf(),
            member: image.config_member.clone(),
            platform: format!(
                "{}/{}",
                platform.0.unwrap_or("?"),
                platform.1.unwrap_or("?")
            ),
        });
    }
    let diff_ids = match &config.rootfs {
        Some(rootfs) => {
            if rootfs.diff_ids.len() != image.layers.len() {
                return Err(OciError::LayerCountMismatch {
                    archive: source.to_path_buf(),
                    diff_ids: rootfs.diff_ids.len(),
                    layers: image.layers.len(),
                });
            }
            let parsed: Result<Vec<Digest>, OciError> = rootfs
                .diff_ids
                .iter()
                .map(|value| Digest::parse(source, &image.config_member, value))
                .collect();
            parsed?.into_iter().map(Some).collect()
        }
        None => vec![None; image.layers.len()],
    };

    for (layer, diff_id) in image.layers.iter().zip(&diff_ids) {
        apply_layer(&store, layer, diff_id.as_ref(), dest)?;
    }
    Ok(config.config.unwrap_or_default().into())
}

/// Creates `dest` if missing, checks that it is an empty directory and
/// returns its canonical path, so that no symbolic link is left in it.
fn prepare_destination(dest: &Path) -> Result<PathBuf, OciError> {
    let io_error = |action, source| OciError::Io {
        action,
        path: dest.to_path_buf(),
        source,
    };
    fs::create_dir_all(dest).map_err(|source| io_error("create", source))?;
    let mut entries = fs::read_dir(dest).map_err(|source| io_error("read", source))?;
    if entries.next().is_some() {
        return Err(OciError::DestinationNotEmpty {
            path: dest.to_path_buf(),
        });
    }
    fs::canonicalize(dest).map_err(|source| io_error("resolve", source))
}

/// An image found in the store: its verified config and its layers in
/// application order.
struct ImageRef {
    config_member: String,
    config_bytes: Vec<u8>,
    layers: Vec<LayerRef>,
}

struct LayerRef {
    member: String,
    /// The digest or, without one, the member path; used in messages.
    label: String,
    digest: Option<Digest>,
    size: Option<u64>,
}

#[derive(Deserialize)]
struct OciLayout {
    #[serde(rename = "imageLayoutVersion")]
    _image_layout_version: String,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Platform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Platform {
    fn is_linux_amd64(&self) -> bool {
        self.os == "linux" && self.architecture == "amd64"
    }

    fn name(&self) -> String {
        match &self.variant {
            Some(variant) => format!("{}/{}/{variant}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// An image index or an image manifest; the present fields tell which.
#[derive(Deserialize)]
struct IndexOrManifest {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawImageConfig {
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    config: Option<RawContainerConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawContainerConfig {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

impl From<RawContainerConfig> for ImageConfig {
    fn from(raw: RawContainerConfig) -> Self {
        Self {
            entrypoint: raw.entrypoint.unwrap_or_default(),
            cmd: raw.cmd.unwrap_or_default(),
            env: raw.env.unwrap_or_default(),
            user: raw.user.filter(|user| !user.is_empty()),
            working_dir: raw.working_dir.filter(|directory| !directory.is_empty()),
            exposed_ports: raw.exposed_ports.unwrap_or_default().into_keys().collect(),
        }
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    store: &Store,
    member: &str,
    bytes: &[u8],
) -> Result<T, OciError> {
    serde_json::from_slice(bytes).map_err(|source| OciError::InvalidJson {
        archive: store.archive().to_path_buf(),
        member: member.to_string(),
        source,
    })
}

/// Reads an image from an OCI layout, choosing linux/amd64 in indexes.
fn read_oci_image(store: &Store) -> Result<ImageRef, OciError> {
    let layout = store.read_json("oci-layout", "the OCI layout", None, None)?;
    let _: OciLayout = parse_json(store, "oci-layout", &layout)?;
    let index = store.read_json("index.json", "the OCI layout", None, None)?;
    let index: IndexOrManifest = parse_json(store, "index.json", &index)?;

    let mut member = "index.json".to_string();
    let mut document = index;
    for _ in 0..=MAX_INDEX_DEPTH {
        if let Some(layers) = document.layers {
            return read_oci_manifest(store, &member, document.config, layers);
        }
        let Some(manifests) = document.manifests else {
            return Err(OciError::NotAManifest {
                archive: store.archive().to_path_buf(),
                member,
            });
        };
        let chosen = choose_descriptor(store, &member, &manifests)?;
        let digest = Digest::parse(store.archive(), &member, &chosen.digest)?;
        let blob = digest.blob_path();
        let bytes = store.read_json(&blob, &member, Some(&digest), Some(chosen.size))?;
        document = parse_json(store, &blob, &bytes)?;
        member = blob;
    }
    Err(OciError::IndexTooDeep {
        archive: store.archive().to_path_buf(),
        member,
        limit: MAX_INDEX_DEPTH,
    })
}

/// Chooses the linux/amd64 entry of an index. An entry without a platform
/// is taken when it is the only candidate, as in the index.json of an
/// oci-archive, whose one entry points at a multi-platform index.
fn choose_descriptor<'a>(
    store: &Store,
    member: &str,
    manifests: &'a [Descriptor],
) -> Result<&'a Descriptor, OciError> {
    let explicit: Vec<&Descriptor> = manifests
        .iter()
        .filter(|descriptor| {
            descriptor
                .platform
                .as_ref()
                .is_some_and(Platform::is_linux_amd64)
        })
        .collect();
    if let Some(first) = explicit.first() {
        // NOTE: several linux/amd64 entries (CPU variants) resolve to the
        // first one listed.
        return Ok(first);
    }
    let unlabelled: Vec<&Descriptor> = manifests
        .iter()
        .filter(|descriptor| descriptor.platform.is_none())
        .collect();
    match unlabelled.as_slice() {
        [only] => Ok(only),
        [] => {
            let available: Vec<String> = manifests
                .iter()
                .filter_map(|descriptor| descriptor.platform.as_ref())
                .map(Platform::name)
                .filter(|name| name != "unknown/unknown")
                .collect();
            Err(OciError::PlatformNotFound {
                archive: store.archive().to_path_buf(),
                member: member.to_string(),
                available: if available.is_empty() {
                    "none".into()
                } else {
                    available.join(", ")
                },
            })
        }
        several => {
            let names: Vec<&str> = several
                .iter()
                .map(|descriptor| {
                    descriptor
                        .annotations
                        .get("org.opencontainers.image.ref.name")
                        .or_else(|| descriptor.annotations.get("io.containerd.image.name"))
                        .map_or(descriptor.digest.as_str(), String::as_str)
                })
                .collect();
            Err(OciError::AmbiguousImage {
                archive: store.archive().to_path_buf(),
                member: member.to_string(),
                count: several.len(),
                names: names.join(", "),
            })
        }
    }
}

fn read_oci_manifest(
    store: &Store,
    member: &str,
    config: Option<Descriptor>,
    layers: Vec<Descriptor>,
) -> Result<ImageRef, OciError> {
    let config = config.ok_or_else(|| OciError::NotAManifest {
        archive: store.archive().to_path_buf(),
        member: member.to_string(),
    })?;
    let config_digest = Digest::parse(store.archive(), member, &config.digest)?;
    let config_member = config_digest.blob_path();
    let config_bytes = store.read_json(
        &config_member,
        member,
        Some(&config_digest),
        Some(config.size),
    )?;

    let layers = layers
        .into_iter()
        .map(|descriptor| {
            let digest = Digest::parse(store.archive(), member, &descriptor.digest)?;
            Ok(LayerRef {
                member: digest.blob_path(),
                label: digest.to_string(),
                digest: Some(digest),
                size: Some(descriptor.size),
            })
        })
        .collect::<Result<_, OciError>>()?;
    Ok(ImageRef {
        config_member,
        config_bytes,
        layers,
    })
}

/// Reads an image from a docker-save archive. Digests come from member names
/// where they carry one (`blobs/sha256/<hex>`, `<hex>.json`); layer contents
/// are checked against the config's `rootfs.diff_ids` in every case.
fn read_docker_image(store: &Store) -> Result<ImageRef, OciError> {
    let bytes = store.read_json("manifest.json", "the docker-save format", None, None)?;
    let entries: Vec<DockerManifestEntry> = parse_json(store, "manifest.json", &bytes)?;
    let entry = match entries.as_slice() {
        [entry] => entry,
        _ => {
            let names: Vec<String> = entries
                .iter()
                .map(|entry| match &entry.repo_tags {
                    Some(tags) if !tags.is_empty() => tags.join(" "),
                    _ => entry.config.clone(),
                })
                .collect();
            return Err(OciError::AmbiguousImage {
                archive: store.archive().to_path_buf(),
                member: "manifest.json".into(),
                count: entries.len(),
                names: if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            });
        }
    };

    let normalize = |value: &str| {
        blob::normalize_member(value).ok_or_else(|| OciError::InvalidReference {
            archive: store.archive().to_path_buf(),
            member: "manifest.json".into(),
            value: value.to_string(),
        })
    };
    let config_member = normalize(&entry.config)?;
    let config_digest = Digest::from_member_name(&config_member);
    let config_bytes = store.read_json(
        &config_member,
        "manifest.json",
        config_digest.as_ref(),
        None,
    )?;

    let layers = entry
        .layers
        .iter()
        .map(|value| {
            let member = normalize(value)?;
            let digest = Digest::from_member_name(&member);
            Ok(LayerRef {
                label: digest
                    .as_ref()
                    .map_or_else(|| member.clone(), Digest::to_string),
                member,
                digest,
                size: None,
            })
        })
        .collect::<Result<_, OciError>>()?;
    Ok(ImageRef {
        config_member,
        config_bytes,
        layers,
    })
}

/// Unpacks one layer blob onto `dest`, then checks the blob against its
/// digest and its uncompressed tar stream against `diff_id`.
///
/// The checks run after unpacking, because the blob is read once; a
/// mismatch still fails the import, and the caller deletes `dest`.
fn apply_layer(
    store: &Store,
    layer: &LayerRef,
    diff_id: Option<&Digest>,
    dest: &Path,
) -> Result<(), OciError> {
    let archive = store.archive();
    let truncated = || OciError::TruncatedLayer {
        archive: archive.to_path_buf(),
        layer: layer.label.clone(),
    };
    let invalid = |source| OciError::InvalidLayer {
        archive: archive.to_path_buf(),
        layer: layer.label.clone(),
        source,
    };

    let (reader, _) = store.open_member(&layer.member, "the image manifest")?;
    let mut compressed = HashingReader::new(reader);
    let mut buffered = BufReader::with_capacity(64 * 1024, &mut compressed);
    let magic = buffered.fill_buf().map_err(invalid)?;
    let compression = blob::compression_of(magic);

    let mut decoder: Box<dyn Read + '_> = match compression {
        None => Box::new(&mut buffered),
        Some("gzip") => Box::new(MultiGzDecoder::new(&mut buffered)),
        Some(compression) => {
            return Err(OciError::UnsupportedCompression {
                archive: archive.to_path_buf(),
                layer: layer.label.clone(),
                compression,
            })
        }
    };
    let mut uncompressed = HashingReader::new(&mut decoder);

    match layer::apply(&mut uncompressed, dest, archive, &layer.label) {
        Err(OciError::InvalidLayer { .. }) if uncompressed.reached_eof() => return Err(truncated()),
        Err(error) => return Err(error),
        Ok(()) if uncompressed.reached_eof() => return Err(truncated()),
        Ok(()) => {}
    }
    // Read past the end-of-archive blocks to the end of the blob, so the
    // digests cover all of it and gzip checks its trailer.
    if let Err(error) = io::copy(&mut uncompressed, &mut io::sink()) {
        return Err(if error.kind() == io::ErrorKind::UnexpectedEof {
            truncated()
        } else {
            invalid(error)
        });
    }

    let uncompressed = uncompressed.finish();
    drop(decoder);
    drop(buffered);
    store.verify(
        &layer.label,
        compressed.finish(),
        layer.digest.as_ref(),
        layer.size,
    )?;
    let uncompressed_label = format!("{} (uncompressed)", layer.label);
    store.verify(&uncompressed_label, uncompressed, diff_id, None)
}
