//! Member access for the three input formats: a directory (OCI layout) or a
//! plain tar file (docker-save or oci-archive), plus digest checking.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::OciError;

/// Maximum size of a JSON document (index, manifest, image config). Real
/// ones are kilobytes; the limit only stops a wrong member from being read
/// into memory whole.
pub(super) const MAX_JSON_BYTES: u64 = 16 << 20;

/// Maximum number of links followed to find a member in a tar archive.
/// docker save links a duplicate layer to its first copy, so one hop is the
/// usual case.
const MAX_MEMBER_LINKS: usize = 8;

/// A `sha256:<hex>` content digest, the only algorithm accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `value`, found in `member` of `archive`.
    pub(super) fn parse(archive: &Path, member: &str, value: &str) -> Result<Self, OciError> {
        match value.strip_prefix("sha256:") {
            Some(hex) if is_sha256_hex(hex) => Ok(Self {
                hex: hex.to_string(),
            }),
            _ => Err(OciError::InvalidDigest {
                archive: archive.to_path_buf(),
                member: member.to_string(),
                value: value.to_string(),
            }),
        }
    }

    /// Extracts the digest that names a member, as in `blobs/sha256/<hex>`
    /// or the `<hex>.json` config of an older docker-save archive.
    pub(super) fn from_member_name(member: &str) -> Option<Self> {
        let hex = match member.strip_prefix("blobs/sha256/") {
            Some(hex) => hex,
            None => member.strip_suffix(".json")?,
        };
        is_sha256_hex(hex).then(|| Self {
            hex: hex.to_string(),
        })
    }

    /// Returns the member path of this blob in an OCI image layout.
    pub(super) fn blob_path(&self) -> String {
        format!("blobs/sha256/{}", self.hex)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A reader that hashes what passes through it and records whether the
/// stream ended, so a caller can tell a clean end of a tar stream (two zero
/// blocks) from a truncated one.
pub(super) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    reached_eof: bool,
}

impl<R> HashingReader<R> {
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
            reached_eof: false,
        }
    }

    /// True once a read returned end of file or failed with `UnexpectedEof`.
    pub(super) fn reached_eof(&self) -> bool {
        self.reached_eof
    }

    /// Returns the digest and the number of bytes read so far.
    pub(super) fn finish(self) -> (Digest, u64) {
        let hex = hex::encode(self.hasher.finalize());
        (Digest { hex }, self.bytes)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.reached_eof = true;
                Ok(0)
            }
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.bytes += n as u64;
                Ok(n)
            }
            Err(error) => {
                if error.kind() == io::ErrorKind::UnexpectedEof {
                    self.reached_eof = true;
                }
                Err(error)
            }
        }
    }
}

/// Seeking passes through, so the tar index can skip member data without
/// reading it; the hash is then meaningless and is not used.
impl<R: Seek> Seek for HashingReader<R> {
    fn seek(&mut self, position: SeekFrom) -> io::Result<u64> {
        self.inner.seek(position)
    }
}

/// Where a member of a tar archive lives.
#[derive(Debug, Clone)]
pub(super) enum TarMember {
    File {
        offset: u64,
        size: u64,
    },
    /// A symbolic or hard link, with its target as a normalized member path.
    Link(String),
}

/// The input image: an OCI layout directory or an indexed tar file.
pub(super) enum Store {
    Directory(PathBuf),
    Tar {
        path: PathBuf,
        members: HashMap<String, TarMember>,
    },
}

impl Store {
    /// Opens `path`, indexing the members if it is a tar file.
    pub(super) fn open(path: &Path) -> Result<Self, OciError> {
        let metadata = std::fs::metadata(path).map_err(|source| OciError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        if metadata.is_dir() {
            return Ok(Self::Directory(path.to_path_buf()));
        }
        let members = index_tar(path, metadata.len())?;
        Ok(Self::Tar {
            path: path.to_path_buf(),
            members,
        })
    }

    pub(super) fn archive(&self) -> &Path {
        match self {
            Self::Directory(path) | Self::Tar { path, .. } => path,
        }
    }

    pub(super) fn contains(&self, member: &str) -> bool {
        match self {
            Self::Directory(root) => root.join(member).is_file(),
            Self::Tar { .. } => self.locate(member).is_some(),
        }
    }

    /// Opens `member` and returns a reader for its bytes and its size.
    /// `referenced_by` names the document that points at the member, for
    /// the error when it is missing.
    pub(super) fn open_member(
        &self,
        member: &str,
        referenced_by: &str,
    ) -> Result<(Box<dyn Read + '_>, u64), OciError> {
        let missing = || OciError::MissingMember {
            archive: self.archive().to_path_buf(),
            member: member.to_string(),
            referenced_by: referenced_by.to_string(),
        };
        match self {
            Self::Directory(root) => {
                let path = root.join(member);
                let file = match File::open(&path) {
                    Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(missing()),
                    result => result.map_err(|source| OciError::Io {
                        action: "open",
                        path: path.clone(),
                        source,
                    })?,
                };
                let size = file
                    .metadata()
                    .map_err(|source| OciError::Io {
                        action: "read",
                        path,
                        source,
                    })?
                    .len();
                Ok((Box::new(file), size))
            }
            Self::Tar { path, .. } => {
                let (offset, size) = self.locate(member).ok_or_else(missing)?;
                let io_error = |source| OciError::Io {
                    action: "read",
                    path: path.clone(),
                    source,
                };
                let mut file = File::open(path).map_err(io_error)?;
                file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
                Ok((Box::new(file.take(size)), size))
            }
        }
    }

    /// Reads a JSON document and checks it against `digest` and `size` when
    /// they are known.
    pub(super) fn read_json(
        &self,
        member: &str,
        referenced_by: &str,
        digest: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<Vec<u8>, OciError> {
        let (reader, actual_size) = self.open_member(member, referenced_by)?;
        if actual_size > MAX_JSON_BYTES {
            return Err(OciError::JsonTooLarge {
                archive: self.archive().to_path_buf(),
                member: member.to_string(),
                limit: MAX_JSON_BYTES,
            });
        }
        let mut reader = HashingReader::new(reader);
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(|source| OciError::Io {
                action: "read",
                path: self.archive().join(member),
                source,
            })?;
        self.verify(member, reader.finish(), digest, size)?;
        Ok(bytes)
    }

    /// Compares the digest and size of what was read, as returned by
    /// [`HashingReader::finish`], with the expected ones.
    pub(super) fn verify(
        &self,
        blob: &str,
        (actual_digest, actual_size): (Digest, u64),
        expected_digest: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(), OciError> {
        if let Some(expected) = expected_digest {
            if *expected != actual_digest {
                return Err(OciError::DigestMismatch {
                    archive: self.archive().to_path_buf(),
                    blob: blob.to_string(),
                    expected: expected.to_string(),
                    actual: actual_digest.to_string(),
                });
            }
        }
        if let Some(expected) = expected_size {
            if expected != actual_size {
                return Err(OciError::SizeMismatch {
                    archive: self.archive().to_path_buf(),
                    blob: blob.to_string(),
                    expected,
                    actual: actual_size,
                });
            }
        }
        Ok(())
    }

    /// Returns the data offset and size of a tar member, following links.
    fn locate(&self, member: &str) -> Option<(u64, u64)> {
        let Self::Tar { members, .. } = self else {
            return None;
        };
        let mut name = normalize_member(member)?;
        for _ in 0..=MAX_MEMBER_LINKS {
            match members.get(&name)? {
                TarMember::File { offset, size } => return Some((*offset, *size)),
                TarMember::Link(target) => name = target.clone(),
            }
        }
        None
    }
}

/// Normalizes a member path: drops `.` components, empty components and a
/// leading `/`, and resolves `..` lexically. Returns `None` when `..` climbs
/// above the top or nothing remains.
pub(super) fn normalize_member(path: &str) -> Option<String> {
    let mut components: Vec<&str> = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                components.pop()?;
            }
            name => components.push(name),
        }
    }
    (!components.is_empty()).then(|| components.join("/"))
}

/// Detects compression of a whole archive from its first bytes.
pub(super) fn compression_of(magic: &[u8]) -> Option<&'static str> {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if magic.starts_with(b"BZh") {
        Some("bzip2")
    } else {
        None
    }
}

/// Records the offset and size of every regular file in the tar at `path`
/// and the target of every link, without reading member data.
fn index_tar(path: &Path, file_len: u64) -> Result<HashMap<String, TarMember>, OciError> {
    let io_error = |source| OciError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let mut magic = [0u8; 6];
    let magic_len = file.read(&mut magic).map_err(io_error)?;
    if let Some(compression) = compression_of(&magic[..magic_len]) {
        return Err(OciError::CompressedArchive {
            archive: path.to_path_buf(),
            compression,
        });
    }
    file.rewind().map_err(io_error)?;

    let mut archive = tar::Archive::new(HashingReader::new(file));
    let mut members = HashMap::new();
    let mut last_member = String::from("(none)");
    let result = (|| -> io::Result<()> {
        for entry in archive.entries_with_seek()? {
            let entry = entry?;
            let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            last_member.clone_from(&raw_name);
            let Some(name) = normalize_member(&raw_name) else {
                continue;
            };
            let header = entry.header();
            let kind = header.entry_type();
            let link_target = entry
                .link_name_bytes()
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
            let member = if kind.is_file() {
                let offset = entry.raw_file_position();
                let size = entry.size();
                if offset.saturating_add(size) > file_len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("member {raw_name} ends after the end of the file"),
                    ));
                }
                TarMember::File { offset, size }
            } else if kind.is_symlink() {
                let base = name.rsplit_once('/').map_or("", |(dir, _)| dir);
                match link_target.and_then(|target| normalize_member(&format!("{base}/{target}"))) {
                    Some(target) => TarMember::Link(target),
                    None => continue,
                }
            } else if kind.is_hard_link() {
                match link_target.and_then(|target| normalize_member(&target)) {
                    Some(target) => TarMember::Link(target),
                    None => continue,
                }
            } else {
                continue;
            };
            members.insert(name, member);
        }
        Ok(())
    })();

    let reached_eof = archive.into_inner().reached_eof();
    match result {
        Err(_) | Ok(()) if reached_eof => Err(OciError::TruncatedArchive {
            archive: path.to_path_buf(),
            detail: format!(
                "it ends without the end-of-archive marker, after member {last_member}"
            ),
        }),
        Err(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
            Err(OciError::TruncatedArchive {
                archive: path.to_path_buf(),
                detail: format!("{source}, after member {last_member}"),
            })
        }
        Err(source) => Err(OciError::InvalidArchive {
            archive: path.to_path_buf(),
            source,
        }),
        Ok(()) => Ok(members),
    }
}
