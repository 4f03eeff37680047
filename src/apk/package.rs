//! Reading `.apk` v2 packages and other apk gzip streams one member at a time.
//!
//! A v2 package is concatenated gzip members: an optional signature member (a tar
//! segment holding `.SIGN.RSA*.<key>`), the control member (`.PKGINFO` and scripts), and
//! the data member (the files, each regular file and symlink with an
//! `APK-TOOLS.checksum.SHA1` PAX record). The first two tar segments have no end-of-archive
//! marker, so each member is decompressed and read on its own. The index `C:` checksum
//! is the SHA-1 of the compressed control member.

use std::io::Read;

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

/// An error while reading a package or index.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{what}: gzip member at byte {offset} is invalid")]
    Gzip {
        what: String,
        offset: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: tar segment is invalid")]
    Tar {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: has no control member with .PKGINFO")]
    NoPkginfo { what: String },
    #[error("{what}: .PKGINFO line {line:?} is not `key = value`")]
    InvalidPkginfo { what: String, line: String },
}

/// Decompresses the gzip member at the start of `data` and returns its content and its
/// compressed length.
pub fn read_member(
    data: &[u8],
    what: &str,
    offset: usize,
) -> Result<(Vec<u8>, usize), PackageError> {
    let mut decoder = flate2::bufread::GzDecoder::new(data);
    let mut out = Vec::new();
    decoder
        .read_to_end(&mut out)
        .map_err(|source| PackageError::Gzip {
            what: what.to_owned(),
            offset,
            source,
        })?;
    let rest = decoder.into_inner();
    Ok((out, data.len() - rest.len()))
}

/// One entry of a tar segment.
#[derive(Debug, Clone)]
pub struct TarEntry {
    pub path: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link_target: Option<String>,
    /// `APK-TOOLS.checksum.SHA1` from the PAX header, hex.
    pub sha1_hex: Option<String>,
    pub data: Vec<u8>,
}

/// Reads every entry of a tar segment, with or without an end-of-archive marker.
pub fn read_tar(segment: &[u8], what: &str) -> Result<Vec<TarEntry>, PackageError> {
    let tar_error = |source| PackageError::Tar {
        what: what.to_owned(),
        source,
    };
    let mut archive = tar::Archive::new(segment);
    let mut entries = Vec::new();
    for entry in archive.entries().map_err(tar_error)? {
        let mut entry = entry.map_err(tar_error)?;
        let mut sha1_hex = None;
        if let Some(extensions) = entry.pax_extensions().map_err(tar_error)? {
            for extension in extensions {
                let extension = extension.map_err(tar_error)?;
                if extension.key_bytes() == b"APK-TOOLS.checksum.SHA1" {
                    sha1_hex = Some(String::from_utf8_lossy(extension.value_bytes()).into_owned());
                }
            }
        }
        let header = entry.header().clone();
        let path = String::from_utf8_lossy(&entry.path_bytes())
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        let link_target = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(tar_error)?;
        entries.push(TarEntry {
            path,
            kind: header.entry_type(),
            mode: header.mode().map_err(tar_error)?,
            uid: header.uid().map_err(tar_error)?,
            gid: header.gid().map_err(tar_error)?,
            mtime: header.mtime().map_err(tar_error)?,
            link_target,
            sha1_hex,
            data,
        });
    }
    Ok(entries)
}

/// Formats a SHA-1 the way apk writes checksums: `Q1` and standard base64.
pub fn q1_checksum(sha1: &[u8]) -> String {
    format!(
        "Q1{}",
        base64::engine::general_purpose::STANDARD.encode(sha1)
    )
}

/// Converts a hex SHA-1 (from a PAX record) to the `Q1` form.
pub fn q1_from_hex(hex_text: &str) -> Option<String> {
    hex::decode(hex_text).ok().map(|bytes| q1_checksum(&bytes))
}

/// A package split into its members.
#[derive(Debug)]
pub struct ApkPackage {
    /// The signature entry of the first member, if the package is signed.
    pub signature: Option<TarEntry>,
    /// The compressed control member (the bytes the signature and `C:` cover).
    pub control_compressed: Vec<u8>,
    /// `Q1` checksum of the control member: the package identity.
    pub checksum: String,
    /// `.PKGINFO` as `(key, value)` lines in order.
    pub pkginfo: Vec<(String, String)>,
    /// Scripts from the control member (`.pre-install`, `.post-upgrade`, `.trigger`, ...).
    pub scripts: Vec<TarEntry>,
    /// The data member's entries, in archive order.
    pub files: Vec<TarEntry>,
}

impl ApkPackage {
    /// Splits a package into its members and reads them. `what` names it in errors.
    pub fn read(data: &[u8], what: &str) -> Result<Self, PackageError> {
        let mut offset = 0;
        let mut signature = None;
        let (mut first, mut used) = read_member(data, what, offset)?;
        let mut entries = read_tar(&first, what)?;
        if entries
            .first()
            .is_some_and(|e| e.path.starts_with(".SIGN."))
        {
            signature = Some(entries.remove(0));
            offset += used;
            (first, used) = read_member(&data[offset..], what, offset)?;
            entries = read_tar(&first, what)?;
        }
        let control_compressed = data[offset..offset + used].to_vec();
        offset += used;
        let Some(info) = entries.iter().find(|e| e.path == ".PKGINFO") else {
            return Err(PackageError::NoPkginfo {
                what: what.to_owned(),
            });
        };
        let pkginfo = parse_pkginfo(&info.data, what)?;
        let scripts = entries
            .iter()
            .filter(|e| e.path.starts_with('.') && e.path != ".PKGINFO")
            .cloned()
            .collect();
        let files = if offset < data.len() {
            let (content, _) = read_member(&data[offset..], what, offset)?;
            read_tar(&content, what)?
        } else {
            Vec::new()
        };
        Ok(ApkPackage {
            signature,
            checksum: q1_checksum(&Sha1::digest(&control_compressed)),
            control_compressed,
            pkginfo,
            scripts,
            files,
        })
    }

    /// Returns the first `.PKGINFO` value of `key`.
    pub fn info(&self, key: &str) -> Option<&str> {
        self.pkginfo
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_pkginfo(data: &[u8], what: &str) -> Result<Vec<(String, String)>, PackageError> {
    let text = String::from_utf8_lossy(data);
    let mut fields = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(" = ") else {
            return Err(PackageError::InvalidPkginfo {
                what: what.to_owned(),
                line: line.to_owned(),
            });
        };
        fields.push((key.to_owned(), value.to_owned()));
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a package of the fixture's test repository, built as abuild does.
    #[test]
    fn fixture_package_reads_member_by_member() {
        let dir = super::super::test_support::alpine_fixture().join("repo/x86_64");
        let path = fs_err::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("zlib-")
            })
            .unwrap();
        let data = fs_err::read(&path).unwrap();
        let package = ApkPackage::read(&data, "zlib").unwrap();
        assert!(package.signature.is_some());
        assert_eq!(package.info("pkgname"), Some("zlib"));
        assert!(package.checksum.starts_with("Q1"));
        let library = package
            .files
            .iter()
            .find(|f| f.path == "usr/lib/libz.so.1.3.2")
            .unwrap();
        let sha = hex::encode(Sha1::digest(&library.data));
        assert_eq!(library.sha1_hex.as_deref(), Some(sha.as_str()));
        let link = package
            .files
            .iter()
            .find(|f| f.path == "usr/lib/libz.so.1")
            .unwrap();
        assert_eq!(link.link_target.as_deref(), Some("libz.so.1.3.2"));
    }
}
