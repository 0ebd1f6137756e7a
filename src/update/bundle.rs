//! The bundle file: a tar archive whose first member is the manifest, the
//! second its ed25519 signature, and the rest the artifacts the manifest
//! lists with their sizes and sha256. Verification reads the whole bundle
//! and checks the signature and every hash before anything is written.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{version, UpdateError};

/// Bumped when the layout of bundles changes.
pub const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
const SIGNATURE: &str = "manifest.sig";
/// Bundle member with the root image (EROFS and its dm-verity hash tree).
pub const ROOT_IMAGE: &str = "root.img";

/// Returns the bundle member with the UKI that boots the root image from
/// `slot` (`a` or `b`); the two differ only in their command lines.
pub fn uki_member(slot: &str) -> String {
    format!("uki-{slot}.efi")
}

/// One file carried by the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleArtifact {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

/// The signed description of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub format: u32,
    pub name: String,
    pub version: String,
    pub root_hash: String,
    pub artifacts: Vec<BundleArtifact>,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> UpdateError + 'a {
    move |source| UpdateError::Io { action, path: path.to_path_buf(), source }
}

/// Hashes a file for the manifest.
pub fn describe(file_name: &str, path: &Path) -> Result<BundleArtifact, UpdateError> {
    let mut reader = BufReader::new(File::open(path).map_err(io("open", path))?);
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut reader, &mut HashWriter(&mut hasher)).map_err(io("read", path))?;
    Ok(BundleArtifact { file: file_name.to_string(), size, sha256: hex::encode(hasher.finalize()) })
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.update(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes a signed bundle at `out` (through a temporary file renamed into
/// place). `files` pairs each manifest entry with the file to pack.
pub fn write(out: &Path, manifest: &BundleManifest, key: &SigningKey, files: &[(String, PathBuf)]) -> Result<(), UpdateError> {
    let manifest_bytes = serde_json::to_vec_pretty(manifest).unwrap_or_default();
    let signature = key.sign(&manifest_bytes);
    let partial = out.with_extension("partial");
    let file = File::create(&partial).map_err(io("create", &partial))?;
    let mut builder = tar::Builder::new(file);
    let mut append = |name: &str, data: &mut dyn Read, size: u64| {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, name, data).map_err(io("write", &partial))
    };
    append(MANIFEST, &mut manifest_bytes.as_slice(), manifest_bytes.len() as u64)?;
    let signature_hex = hex::encode(signature.to_bytes());
    append(SIGNATURE, &mut signature_hex.as_bytes(), signature_hex.len() as u64)?;
    for (name, path) in files {
        let size = std::fs::metadata(path).map_err(io("read", path))?.len();
        let mut input = File::open(path).map_err(io("open", path))?;
        append(name, &mut input, size)?;
    }
    builder.into_inner().map_err(io("finish", &partial))?;
    std::fs::rename(&partial, out).map_err(io("publish", out))
}

/// Reads the whole bundle, checks the manifest's signature with `key` and
/// every artifact's size and sha256, and returns the manifest.
pub fn verify(path: &Path, key: &VerifyingKey) -> Result<BundleManifest, UpdateError> {
    let malformed = |reason: String| UpdateError::Malformed { path: path.to_path_buf(), reason };
    let file = File::open(path).map_err(io("open", path))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut entries = archive.entries().map_err(|e| malformed(e.to_string()))?;

    let mut read_member = |expected: &str| -> Result<Vec<u8>, UpdateError> {
        let mut entry = entries
            .next()
            .ok_or_else(|| malformed(format!("{expected} is missing")))?
            .map_err(|e| malformed(e.to_string()))?;
        let name = entry.path().map_err(|e| malformed(e.to_string()))?.to_string_lossy().into_owned();
        if name != expected {
            return Err(malformed(format!("expected {expected}, found {name}")));
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(|e| malformed(format!("truncated {expected}: {e}")))?;
        Ok(data)
    };
    let manifest_bytes = read_member(MANIFEST)?;
    let signature_hex = read_member(SIGNATURE)?;
    let signature_bytes: [u8; 64] = hex::decode(String::from_utf8_lossy(&signature_hex).trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| malformed("the signature is not 64 hex-encoded bytes".into()))?;
    key.verify(&manifest_bytes, &Signature::from_bytes(&signature_bytes))
        .map_err(|_| UpdateError::BadSignature { path: path.to_path_buf() })?;
    let manifest: BundleManifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| malformed(format!("invalid manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(malformed(format!("bundle format {} is not supported (expected {FORMAT})", manifest.format)));
    }

    let mut seen = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| malformed(e.to_string()))?;
        let name = entry.path().map_err(|e| malformed(e.to_string()))?.to_string_lossy().into_owned();
        let expected = manifest
            .artifacts
            .iter()
            .find(|artifact| artifact.file == name)
            .ok_or_else(|| malformed(format!("{name} is not listed in the signed manifest")))?;
        let mut hasher = Sha256::new();
        let size = std::io::copy(&mut entry, &mut HashWriter(&mut hasher))
            .map_err(|e| malformed(format!("truncated {name}: {e}")))?;
        let actual = hex::encode(hasher.finalize());
        if size != expected.size || actual != expected.sha256 {
            return Err(UpdateError::HashMismatch {
                path: path.to_path_buf(),
                file: name,
                expected: expected.sha256.clone(),
                actual,
            });
        }
        seen.push(name);
    }
    if let Some(missing) = manifest.artifacts.iter().find(|a| !seen.contains(&a.file)) {
        return Err(malformed(format!("{} is listed in the manifest but missing (truncated bundle?)", missing.file)));
    }
    Ok(manifest)
}

/// Copies the member `file` of the bundle at `path` into `output` and
/// returns its size and sha256, so the caller can compare them with the
/// manifest once more: the bundle was verified before, but it is read
/// again here.
pub fn extract(path: &Path, file: &str, output: &mut dyn std::io::Write) -> Result<(u64, String), UpdateError> {
    let malformed = |reason: String| UpdateError::Malformed { path: path.to_path_buf(), reason };
    let input = File::open(path).map_err(io("open", path))?;
    let mut archive = tar::Archive::new(BufReader::new(input));
    for entry in archive.entries().map_err(|e| malformed(e.to_string()))? {
        let mut entry = entry.map_err(|e| malformed(e.to_string()))?;
        let name = entry.path().map_err(|e| malformed(e.to_string()))?.to_string_lossy().into_owned();
        if name != file {
            continue;
        }
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let count = entry.read(&mut buffer).map_err(|e| malformed(format!("truncated {file}: {e}")))?;
            if count == 0 {
                break;
            }
            hasher.update(&buffer[..count]);
            output.write_all(&buffer[..count]).map_err(|source| UpdateError::Io {
                action: "write",
                path: PathBuf::from(file),
                source,
            })?;
            size += count as u64;
        }
        return Ok((size, hex::encode(hasher.finalize())));
    }
    Err(malformed(format!("{file} is missing")))
}

/// Checks that a verified bundle fits the running appliance.
pub fn check_applicable(manifest: &BundleManifest, name: &str, current: &str, allow_downgrade: bool) -> Result<(), UpdateError> {
    if manifest.name != name {
        return Err(UpdateError::WrongAppliance { current: name.into(), offered: manifest.name.clone() });
    }
    if !version::accepts(current, &manifest.version, allow_downgrade) {
        return Err(UpdateError::NotNewer { current: current.into(), offered: manifest.version.clone() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        key: SigningKey,
        bundle: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let root = dir.path().join("root.img");
        std::fs::write(&root, vec![1u8; 10_000]).unwrap();
        let uki = dir.path().join("uki-b.efi");
        std::fs::write(&uki, b"MZ fake uki").unwrap();
        let manifest = BundleManifest {
            format: FORMAT,
            name: "media".into(),
            version: "1.1.0".into(),
            root_hash: "00".repeat(32),
            artifacts: vec![describe(ROOT_IMAGE, &root).unwrap(), describe("uki-b.efi", &uki).unwrap()],
        };
        let bundle = dir.path().join("media-1.1.0.ztmsb");
        write(&bundle, &manifest, &key, &[(ROOT_IMAGE.into(), root), ("uki-b.efi".into(), uki)]).unwrap();
        Fixture { dir, key, bundle }
    }

    #[test]
    fn signed_bundle_verifies() {
        let fixture = fixture();
        let manifest = verify(&fixture.bundle, &fixture.key.verifying_key()).unwrap();
        assert_eq!(manifest.version, "1.1.0");
        assert_eq!(manifest.artifacts.len(), 2);
        assert!(fixture.dir.path().exists());
    }

    #[test]
    fn changed_byte_fails_hash_check() {
        let fixture = fixture();
        let mut bytes = std::fs::read(&fixture.bundle).unwrap();
        // The root image is 10,000 bytes of 0x01; flip one in its middle.
        let start = bytes.windows(64).position(|w| w.iter().all(|&b| b == 1)).unwrap();
        bytes[start + 5000] ^= 0xff;
        std::fs::write(&fixture.bundle, bytes).unwrap();
        let error = verify(&fixture.bundle, &fixture.key.verifying_key()).unwrap_err();
        assert!(matches!(error, UpdateError::HashMismatch { .. }), "{error}");
    }

    #[test]
    fn other_key_fails_signature_check() {
        let fixture = fixture();
        let other = SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        let error = verify(&fixture.bundle, &other).unwrap_err();
        assert!(matches!(error, UpdateError::BadSignature { .. }), "{error}");
    }

    #[test]
    fn truncated_bundle_is_malformed() {
        let fixture = fixture();
        let bytes = std::fs::read(&fixture.bundle).unwrap();
        std::fs::write(&fixture.bundle, &bytes[..bytes.len() / 2]).unwrap();
        let error = verify(&fixture.bundle, &fixture.key.verifying_key()).unwrap_err();
        assert!(
            matches!(error, UpdateError::Malformed { .. } | UpdateError::HashMismatch { .. }),
            "{error}"
        );
    }

    #[test]
    fn extract_returns_member_and_hash() {
        let fixture = fixture();
        let manifest = verify(&fixture.bundle, &fixture.key.verifying_key()).unwrap();
        let mut output = Vec::new();
        let (size, sha256) = extract(&fixture.bundle, "uki-b.efi", &mut output).unwrap();
        assert_eq!(output, b"MZ fake uki");
        assert_eq!(size, 11);
        assert_eq!(sha256, manifest.artifacts[1].sha256);
    }

    #[test]
    fn lower_version_rejected_unless_allowed() {
        let fixture = fixture();
        let manifest = verify(&fixture.bundle, &fixture.key.verifying_key()).unwrap();
        let error = check_applicable(&manifest, "media", "1.2.0", false).unwrap_err();
        assert!(error.to_string().contains("--allow-downgrade"), "{error}");
        assert!(check_applicable(&manifest, "media", "1.2.0", true).is_ok());
        assert!(check_applicable(&manifest, "media", "1.0.0", false).is_ok());
        assert!(check_applicable(&manifest, "other", "1.0.0", false).is_err());
    }
}
