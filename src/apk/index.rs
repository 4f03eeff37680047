//! `APKINDEX.tar.gz`: reading, and verifying its signature against the image's keys.
//!
//! The file is a signature member (a tar segment with one `.SIGN.RSA.<key>` entry, a
//! PKCS#1 v1.5 signature over SHA-1, or `.SIGN.RSA256.<key>` over SHA-256) followed by
//! the index member(s) the signature covers, byte for byte as compressed. `<key>` is the
//! file name of the public key in `/etc/apk/keys`. apk-tools 3.0.8 only warns about a
//! bad signature; this reader rejects it unless the caller allows untrusted indexes.

use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use sha1::Sha1;
use sha2::Digest as _;

use super::installed::Field;
use super::package::{self, PackageError};

/// ASN.1 DigestInfo prefixes of PKCS#1 v1.5 signatures (RFC 8017, section 9.2).
const SHA1_PREFIX: [u8; 15] = [
    0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
];
const SHA256_PREFIX: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
const SHA512_PREFIX: [u8; 19] = [
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

/// An error while reading or verifying an index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Format(#[from] PackageError),
    #[error("{what}: has no signature\nhint: pass --allow-untrusted-repo to use it anyway")]
    Unsigned { what: String },
    #[error(
        "{what}: signed by key {key:?}, which is not in the image's /etc/apk/keys\n\
         hint: add the key to the image, or pass --allow-untrusted-repo"
    )]
    UnknownKey { what: String, key: String },
    #[error(
        "{what}: the signature by key {key:?} does not match the signed data (tampered or corrupt)"
    )]
    BadSignature { what: String, key: String },
    #[error("{what}: signature entry {name:?} has an unsupported type")]
    UnsupportedSignature { what: String, name: String },
    #[error("{what}: has no APKINDEX entry")]
    NoIndex { what: String },
    #[error("{what}: APKINDEX line {line:?} is not `K:value`")]
    InvalidLine { what: String, line: String },
}

/// The RSA public keys an image trusts, by file name.
#[derive(Debug, Default, Clone)]
pub struct Keys {
    keys: Vec<(String, RsaPublicKey)>,
}

impl Keys {
    /// Adds a PEM public key called `name`; keys that do not parse are skipped with a
    /// debug log, as apk-tools skips them.
    pub fn add_pem(&mut self, name: &str, pem: &[u8]) {
        match std::str::from_utf8(pem)
            .ok()
            .and_then(|text| RsaPublicKey::from_public_key_pem(text).ok())
        {
            Some(key) => self.keys.push((name.to_owned(), key)),
            None => tracing::debug!(key = name, "skipping apk key that is not an RSA PEM key"),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn get(&self, name: &str) -> Option<&RsaPublicKey> {
        self.keys.iter().find(|(n, _)| n == name).map(|(_, k)| k)
    }
}

/// The result of checking the index signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Verified with the named key.
    Verified { key: String },
    /// Not verified, and the caller allowed it; the reason explains why.
    Untrusted { reason: String },
}

/// One package stanza of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub fields: Vec<Field>,
}

impl IndexEntry {
    pub fn get(&self, key: char) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.key == key)
            .map(|f| f.value.as_str())
    }

    pub fn name(&self) -> &str {
        self.get('P').unwrap_or("")
    }

    pub fn version(&self) -> &str {
        self.get('V').unwrap_or("")
    }

    pub fn words(&self, key: char) -> Vec<&str> {
        self.get(key)
            .map(|v| v.split_whitespace().collect())
            .unwrap_or_default()
    }

    /// The package file name in its repository: `NAME-VERSION.apk`.
    pub fn file_name(&self) -> String {
        format!("{}-{}.apk", self.name(), self.version())
    }
}

/// A read and checked index.
#[derive(Debug, Clone)]
pub struct ApkIndex {
    pub description: Option<String>,
    pub entries: Vec<IndexEntry>,
    pub trust: Trust,
}

/// Reads `APKINDEX.tar.gz` and verifies its signature with `keys`. With
/// `allow_untrusted`, a missing, unknown or bad signature gives [`Trust::Untrusted`]
/// instead of an error.
pub fn read_index(
    data: &[u8],
    what: &str,
    keys: &Keys,
    allow_untrusted: bool,
) -> Result<ApkIndex, IndexError> {
    let (first, used) = package::read_member(data, what, 0)?;
    let entries = package::read_tar(&first, what)?;
    let (trust, index_start) = match entries.first() {
        Some(entry) if entry.path.starts_with(".SIGN.") => {
            let signed = &data[used..];
            match verify(&entry.path, &entry.data, signed, keys, what) {
                Ok(key) => (Trust::Verified { key }, used),
                Err(error) if allow_untrusted => (
                    Trust::Untrusted {
                        reason: error.to_string(),
                    },
                    used,
                ),
                Err(error) => return Err(error),
            }
        }
        _ if allow_untrusted => (
            Trust::Untrusted {
                reason: "unsigned".to_owned(),
            },
            0,
        ),
        _ => {
            return Err(IndexError::Unsigned {
                what: what.to_owned(),
            });
        }
    };

    // The index itself may span several members; apk reads them as one tar stream.
    let mut content = Vec::new();
    let mut offset = index_start;
    while offset < data.len() {
        let (member, used) = package::read_member(&data[offset..], what, offset)?;
        content.extend_from_slice(&member);
        offset += used;
    }
    let files = package::read_tar(&content, what)?;
    let description = files
        .iter()
        .find(|f| f.path == "DESCRIPTION")
        .map(|f| String::from_utf8_lossy(&f.data).into_owned());
    let Some(index) = files.iter().find(|f| f.path == "APKINDEX") else {
        return Err(IndexError::NoIndex {
            what: what.to_owned(),
        });
    };
    Ok(ApkIndex {
        description,
        entries: parse_entries(&index.data, what)?,
        trust,
    })
}

/// Verifies `signature`, the content of the signature entry `name`
/// (`.SIGN.RSA.KEY`, `.SIGN.RSA256.KEY` or `.SIGN.RSA512.KEY`), over `signed` with the
/// image's key of that name, and returns the key name. `what` names the index or package
/// in errors.
pub fn verify(
    name: &str,
    signature: &[u8],
    signed: &[u8],
    keys: &Keys,
    what: &str,
) -> Result<String, IndexError> {
    let (scheme, digest, key_name) = if let Some(key) = name.strip_prefix(".SIGN.RSA256.") {
        (
            Pkcs1v15Sign {
                hash_len: Some(32),
                prefix: SHA256_PREFIX.into(),
            },
            sha2::Sha256::digest(signed).to_vec(),
            key,
        )
    } else if let Some(key) = name.strip_prefix(".SIGN.RSA512.") {
        (
            Pkcs1v15Sign {
                hash_len: Some(64),
                prefix: SHA512_PREFIX.into(),
            },
            sha2::Sha512::digest(signed).to_vec(),
            key,
        )
    } else if let Some(key) = name.strip_prefix(".SIGN.RSA.") {
        (
            Pkcs1v15Sign {
                hash_len: Some(20),
                prefix: SHA1_PREFIX.into(),
            },
            <Sha1 as sha1::Digest>::digest(signed).to_vec(),
            key,
        )
    } else {
        return Err(IndexError::UnsupportedSignature {
            what: what.to_owned(),
            name: name.to_owned(),
        });
    };
    let Some(public) = keys.get(key_name) else {
        return Err(IndexError::UnknownKey {
            what: what.to_owned(),
            key: key_name.to_owned(),
        });
    };
    public
        .verify(scheme, &digest, signature)
        .map_err(|_| IndexError::BadSignature {
            what: what.to_owned(),
            key: key_name.to_owned(),
        })?;
    tracing::debug!(index = what, key = key_name, "apk index signature verified");
    Ok(key_name.to_owned())
}

fn parse_entries(data: &[u8], what: &str) -> Result<Vec<IndexEntry>, IndexError> {
    let text = String::from_utf8_lossy(data);
    let mut entries = Vec::new();
    let mut fields = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            if !fields.is_empty() {
                entries.push(IndexEntry {
                    fields: std::mem::take(&mut fields),
                });
            }
            continue;
        }
        let mut chars = line.chars();
        let (Some(key), Some(':')) = (chars.next(), chars.next()) else {
            return Err(IndexError::InvalidLine {
                what: what.to_owned(),
                line: line.to_owned(),
            });
        };
        fields.push(Field {
            key,
            value: line[key.len_utf8() + 1..].to_owned(),
        });
    }
    if !fields.is_empty() {
        entries.push(IndexEntry { fields });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;

    fn fixture_keys(rootfs: &Path) -> Keys {
        let mut keys = Keys::default();
        for entry in fs_err::read_dir(rootfs.join("etc/apk/keys")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            keys.add_pem(&name, &fs_err::read(&path).unwrap());
        }
        keys
    }

    fn fixture_index() -> (Vec<u8>, Keys, String) {
        let dir = super::super::test_support::alpine_fixture();
        let data = fs_err::read(dir.join("repo/x86_64/APKINDEX.tar.gz")).unwrap();
        let env = fs_err::read_to_string(dir.join("image.env")).unwrap();
        let key = env
            .lines()
            .find_map(|l| l.strip_prefix("KEY_NAME="))
            .unwrap()
            .to_owned();
        (
            data,
            fixture_keys(&dir.join("rootfs")),
            format!("{key}.pub"),
        )
    }

    #[test]
    fn good_signature_verifies() {
        let (data, keys, key) = fixture_index();
        let index = read_index(&data, "test", &keys, false).unwrap();
        assert_eq!(index.trust, Trust::Verified { key });
        let names: Vec<&str> = index.entries.iter().map(IndexEntry::name).collect();
        assert_eq!(names, ["zlib", "libcrypto3", "libssl3"]);
    }

    #[test]
    fn unknown_key_is_rejected() {
        let (data, _, _) = fixture_index();
        let error = read_index(&data, "test", &Keys::default(), false).unwrap_err();
        assert!(matches!(error, IndexError::UnknownKey { .. }), "{error}");
        let allowed = read_index(&data, "test", &Keys::default(), true).unwrap();
        assert!(matches!(allowed.trust, Trust::Untrusted { .. }));
    }

    #[test]
    fn tampered_index_is_rejected() {
        let (mut data, keys, _) = fixture_index();
        // Flip a byte in the last member's compressed payload: the signature still names
        // a trusted key but no longer matches.
        let at = data.len() - 20;
        data[at] ^= 0x01;
        let error = read_index(&data, "test", &keys, false).unwrap_err();
        assert!(matches!(error, IndexError::BadSignature { .. }), "{error}");
    }

    /// An index signed with `.SIGN.RSA256.` by openssl verifies.
    #[test]
    fn rsa256_signature_verifies() {
        let (data, keys, key) = fixture_index();
        let dir = super::super::test_support::alpine_fixture();
        let (_, used) = package::read_member(&data, "test", 0).unwrap();
        let work = tempfile::tempdir().unwrap();
        let index_member = work.path().join("index.tar.gz");
        fs_err::write(&index_member, &data[used..]).unwrap();
        let private = dir.join("keys").join(key.trim_end_matches(".pub"));
        let signature = work.path().join("sig");
        let status = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&private)
            .arg("-out")
            .arg(&signature)
            .arg(&index_member)
            .status()
            .unwrap();
        assert!(status.success());
        let mut builder = tar::Builder::new(Vec::new());
        let signature_bytes = fs_err::read(&signature).unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(signature_bytes.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(
                &mut header,
                format!(".SIGN.RSA256.{key}"),
                &signature_bytes[..],
            )
            .unwrap();
        let mut segment = builder.into_inner().unwrap();
        segment.truncate(segment.len() - 1024);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut encoder, &segment).unwrap();
        let mut signed = encoder.finish().unwrap();
        signed.extend_from_slice(&data[used..]);
        let index = read_index(&signed, "test", &keys, false).unwrap();
        assert_eq!(index.trust, Trust::Verified { key });
    }
}
