//! Errors of the OCI image import.

use std::io;
use std::path::PathBuf;

/// An image that could not be imported. `archive` is always the path given to
/// [`super::import`]; `layer` is the layer's digest or, in a docker-save
/// archive without digests in its paths, the layer's member path.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("destination {path} is not an empty directory; import into a new, empty directory")]
    DestinationNotEmpty { path: PathBuf },

    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error(
        "{archive} is neither a docker-save archive (manifest.json) nor an OCI image layout \
         (oci-layout and index.json); create one with `docker save`, \
         `podman save --format oci-archive` or `skopeo copy`"
    )]
    UnknownFormat { archive: PathBuf },

    #[error(
        "{archive} is {compression}-compressed; decompress it first, because the archive \
         itself must be a plain tar (its layers may be gzip-compressed)"
    )]
    CompressedArchive {
        archive: PathBuf,
        compression: &'static str,
    },

    #[error("truncated archive {archive}: {detail}; copy or save the image again")]
    TruncatedArchive { archive: PathBuf, detail: String },

    #[error("{archive} is not a valid tar archive: {source}")]
    InvalidArchive { archive: PathBuf, source: io::Error },

    #[error(
        "{archive}: member {member} is missing but {referenced_by} references it; \
         the image is incomplete, save or copy it again"
    )]
    MissingMember {
        archive: PathBuf,
        member: String,
        referenced_by: String,
    },

    #[error("{archive}: invalid JSON in {member}: {source}")]
    InvalidJson {
        archive: PathBuf,
        member: String,
        source: serde_json::Error,
    },

    #[error(
        "{archive}: {member} is larger than {limit} bytes, the maximum for an image index, \
         manifest or config; check that the archive is an image"
    )]
    JsonTooLarge {
        archive: PathBuf,
        member: String,
        limit: u64,
    },

    #[error(
        "{archive}: invalid path {value:?} in {member}; paths must be relative and \
         must not contain `..`"
    )]
    InvalidReference {
        archive: PathBuf,
        member: String,
        value: String,
    },

    #[error(
        "{archive}: unsupported digest {value:?} in {member}; only \
         sha256:<64 lowercase hex digits> is supported"
    )]
    InvalidDigest {
        archive: PathBuf,
        member: String,
        value: String,
    },

    #[error(
        "{archive}: blob {blob} has digest {actual}, expected {expected}; the archive \
         is corrupt, save or copy the image again"
    )]
    DigestMismatch {
        archive: PathBuf,
        blob: String,
        expected: String,
        actual: String,
    },

    #[error(
        "{archive}: blob {blob} is {actual} bytes, expected {expected}; the archive is \
         corrupt or truncated, save or copy the image again"
    )]
    SizeMismatch {
        archive: PathBuf,
        blob: String,
        expected: u64,
        actual: u64,
    },

    #[error("{archive}: {member} lists {count} images ({names}); save one image per archive")]
    AmbiguousImage {
        archive: PathBuf,
        member: String,
        count: usize,
        names: String,
    },

    #[error(
        "{archive}: {member} has no image for linux/amd64 (available platforms: \
         {available}); pull and save the linux/amd64 image"
    )]
    PlatformNotFound {
        archive: PathBuf,
        member: String,
        available: String,
    },

    #[error(
        "{archive}: image config {member} is for {platform}, expected linux/amd64; \
         pull and save the linux/amd64 image"
    )]
    WrongPlatform {
        archive: PathBuf,
        member: String,
        platform: String,
    },

    #[error(
        "{archive}: {member} is neither an image index nor an image manifest \
         (it has no `manifests` and no `layers`)"
    )]
    NotAManifest { archive: PathBuf, member: String },

    #[error(
        "{archive}: nesting of image indexes in {member} exceeds {limit} levels; \
         check the archive for an index that references itself"
    )]
    IndexTooDeep {
        archive: PathBuf,
        member: String,
        limit: usize,
    },

    #[error(
        "{archive}: the image config lists {diff_ids} layer digests (rootfs.diff_ids) \
         but the manifest lists {layers} layers; the image is inconsistent, rebuild it"
    )]
    LayerCountMismatch {
        archive: PathBuf,
        diff_ids: usize,
        layers: usize,
    },

    #[error(
        "{archive}: layer {layer}: {compression} layers are not supported yet; re-save with gzip"
    )]
    UnsupportedCompression {
        archive: PathBuf,
        layer: String,
        compression: &'static str,
    },

    #[error("truncated layer {layer} in {archive}; save or copy the image again")]
    TruncatedLayer { archive: PathBuf, layer: String },

    #[error("{archive}: layer {layer} is not a valid tar stream: {source}")]
    InvalidLayer {
        archive: PathBuf,
        layer: String,
        source: io::Error,
    },

    /// A member that would write outside the destination if unpacked naively.
    #[error(
        "{archive}: layer {layer}: member {member:?} {reason}; the layer is unsafe to \
         unpack, rebuild the image without it"
    )]
    UnsafeMember {
        archive: PathBuf,
        layer: String,
        member: String,
        reason: String,
    },

    #[error("{archive}: layer {layer}: member {member:?} {reason}; rebuild the image")]
    InvalidMember {
        archive: PathBuf,
        layer: String,
        member: String,
        reason: String,
    },

    #[error("{archive}: layer {layer}: failed to write member {member:?} to {path}: {source}")]
    Write {
        archive: PathBuf,
        layer: String,
        member: String,
        path: PathBuf,
        source: io::Error,
    },

    #[error(
        "{archive}: layer {layer}: failed to set owner {uid}:{gid} of member {member:?}: \
         {source}; run the build as root so file ownership is kept"
    )]
    Ownership {
        archive: PathBuf,
        layer: String,
        member: String,
        uid: u32,
        gid: u32,
        source: io::Error,
    },
}
