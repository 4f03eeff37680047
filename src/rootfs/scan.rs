//! Scanning layer tar streams and merging the scans into one [`RootfsIndex`].

use std::io::{self, Read};

use flate2::read::MultiGzDecoder;
use md5::{Digest as _, Md5};
use tar::EntryType;

use super::{FileInfo, FileKind, RootfsIndex, normalize};

/// The OCI whiteout prefix: `.wh.NAME` deletes `NAME` from the layers below.
const WHITEOUT_PREFIX: &str = ".wh.";
/// The OCI opaque-directory marker: the directory hides everything below it.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The largest selected file kept in memory. dpkg status files of large images are a
/// few MiB; anything bigger than this is not a file the patch reads.
pub const MAX_CAPTURED_FILE: u64 = 64 * 1024 * 1024;

/// Layer compression, from the descriptor's media type or the stream's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Derives the compression from an OCI or Docker layer media type.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
            Some(Compression::Gzip)
        } else if media_type.ends_with("+zstd") || media_type.ends_with(".tar.zstd") {
            Some(Compression::Zstd)
        } else if media_type.ends_with(".tar") || media_type.ends_with(".rootfs.diff.tar") {
            Some(Compression::None)
        } else {
            None
        }
    }
}

/// The choice of files a scan keeps: content for `capture`, an MD5 for `hash`.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// Exact paths whose content is kept.
    pub capture_paths: Vec<String>,
    /// Directory prefixes (normalized, without trailing `/`) whose files' content is kept.
    pub capture_dirs: Vec<String>,
    /// Directories whose direct children are kept when their name ends with one of the
    /// suffixes, such as `*.list` files in dpkg's `info/` directory.
    pub capture_suffix_dirs: Vec<(String, Vec<String>)>,
    /// Directory prefixes whose regular files get an MD5 in [`FileInfo::md5`].
    pub hash_dirs: Vec<String>,
}

impl Selector {
    fn captures(&self, path: &str) -> bool {
        if self.capture_paths.iter().any(|p| p == path) {
            return true;
        }
        if self.capture_dirs.iter().any(|dir| is_under(path, dir)) {
            return true;
        }
        self.capture_suffix_dirs.iter().any(|(dir, suffixes)| {
            path.strip_prefix(dir.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|name| {
                    !name.contains('/') && suffixes.iter().any(|s| name.ends_with(s.as_str()))
                })
        })
    }

    fn hashes(&self, path: &str) -> bool {
        self.hash_dirs.iter().any(|dir| is_under(path, dir))
    }
}

fn is_under(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A failure while reading one layer.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("failed to read the layer's tar stream")]
    Read(#[source] io::Error),
    #[error("failed to read tar entry {path:?}")]
    Entry {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "file {path:?} in the layer is {size} bytes, more than the {max} bytes read into memory"
    )]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("tar entry {path:?} climbs out of the root with `..`")]
    UnsafePath { path: String },
}

/// The contribution of one layer: its entries, whiteouts and opaque directories.
#[derive(Debug, Default, Clone)]
pub struct LayerScan {
    entries: Vec<(String, FileInfo, Option<Vec<u8>>)>,
    whiteouts: Vec<String>,
    opaque_dirs: Vec<String>,
}

impl LayerScan {
    /// Returns the number of entries other than whiteouts.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.whiteouts.is_empty() && self.opaque_dirs.is_empty()
    }
}

/// Scans one layer blob: decompresses it, walks the tar entries and keeps what `selector`
/// selects. The underlying reader is drained to its end, past tar's end-of-archive
/// marker, so a digest-checking reader sees every byte.
pub fn scan_layer<R: Read>(
    blob: R,
    compression: Compression,
    selector: &Selector,
) -> Result<LayerScan, ScanError> {
    match compression {
        Compression::None => scan_tar(blob, selector),
        Compression::Gzip => scan_tar(MultiGzDecoder::new(blob), selector),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(blob).map_err(ScanError::Read)?;
            scan_tar(decoder, selector)
        }
    }
}

fn scan_tar<R: Read>(reader: R, selector: &Selector) -> Result<LayerScan, ScanError> {
    let mut archive = tar::Archive::new(reader);
    let mut scan = LayerScan::default();
    for entry in archive.entries().map_err(ScanError::Read)? {
        let mut entry = entry.map_err(ScanError::Read)?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if raw_path.split('/').any(|c| c == "..") {
            return Err(ScanError::UnsafePath { path: raw_path });
        }
        let path = normalize(&raw_path);
        let entry_error = |source| ScanError::Entry {
            path: path.clone(),
            source,
        };

        let (parent, name) = match path.rsplit_once('/') {
            Some((parent, name)) => (parent, name),
            None => ("", path.as_str()),
        };
        if name == OPAQUE_MARKER {
            scan.opaque_dirs.push(parent.to_owned());
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let hidden = if parent.is_empty() {
                hidden.to_owned()
            } else {
                format!("{parent}/{hidden}")
            };
            scan.whiteouts.push(hidden);
            continue;
        }

        let header = entry.header();
        let link_target = || {
            entry
                .link_name_bytes()
                .map(|name| String::from_utf8_lossy(&name).into_owned())
                .unwrap_or_default()
        };
        let kind = match header.entry_type() {
            EntryType::Regular | EntryType::Continuous => FileKind::Regular,
            EntryType::Directory => FileKind::Directory,
            EntryType::Symlink => FileKind::Symlink(link_target()),
            EntryType::Link => FileKind::Hardlink(normalize(&link_target())),
            EntryType::XGlobalHeader | EntryType::XHeader => continue,
            _ => FileKind::Other,
        };
        let mut info = FileInfo {
            kind,
            mode: header.mode().map_err(entry_error)? & 0o7777,
            uid: header.uid().map_err(entry_error)?,
            gid: header.gid().map_err(entry_error)?,
            mtime: header.mtime().map_err(entry_error)?,
            size: entry.size(),
            md5: None,
        };
        let mut content = None;
        if info.kind == FileKind::Regular {
            let capture = selector.captures(&path);
            if capture && info.size > MAX_CAPTURED_FILE {
                return Err(ScanError::TooLarge {
                    path,
                    size: info.size,
                    max: MAX_CAPTURED_FILE,
                });
            }
            if capture {
                let mut data = Vec::with_capacity(info.size as usize);
                entry.read_to_end(&mut data).map_err(entry_error)?;
                if selector.hashes(&path) {
                    info.md5 = Some(Md5::digest(&data).into());
                }
                content = Some(data);
            } else if selector.hashes(&path) {
                let mut hasher = Md5::new();
                let mut buffer = [0u8; 64 * 1024];
                loop {
                    let n = entry.read(&mut buffer).map_err(entry_error)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buffer[..n]);
                }
                info.md5 = Some(hasher.finalize().into());
            }
        }
        scan.entries.push((path, info, content));
    }
    // Drain what follows the end-of-archive marker so the blob reader reaches EOF.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(ScanError::Read)?;
    Ok(scan)
}

/// Merges layer scans given from the bottom layer up, applying each layer's whiteouts
/// and opaque directories to the layers below it before adding its own entries.
pub fn merge_layers(layers: impl IntoIterator<Item = LayerScan>) -> RootfsIndex {
    let mut index = RootfsIndex::default();
    for layer in layers {
        for dir in &layer.opaque_dirs {
            index.remove_children(dir);
        }
        for path in &layer.whiteouts {
            index.remove_tree(path);
        }
        for (path, info, content) in layer.entries {
            // A hard link shares its target's content and digest.
            let (info, content) = match &info.kind {
                FileKind::Hardlink(target) => {
                    let content = content.or_else(|| index.content(target).map(<[u8]>::to_vec));
                    let md5 = index.get(target).and_then(|t| t.md5);
                    (FileInfo { md5, ..info }, content)
                }
                _ => (info, content),
            };
            // A non-directory replacing a directory hides what was below it.
            if info.kind != FileKind::Directory
                && index
                    .get(&path)
                    .is_some_and(|old| old.kind == FileKind::Directory)
            {
                index.remove_tree(&path);
            }
            index.insert(&path, info, content);
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    enum Item<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    fn tar_of(items: &[Item]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for item in items {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1);
            match item {
                Item::Dir(path) => {
                    header.set_entry_type(EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    builder.append_data(&mut header, path, io::empty()).unwrap();
                }
                Item::File(path, data) => {
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, *data).unwrap();
                }
                Item::Symlink(path, target) => {
                    header.set_entry_type(EntryType::Symlink);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target).unwrap();
                }
                Item::Hardlink(path, target) => {
                    header.set_entry_type(EntryType::Link);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn selector() -> Selector {
        Selector {
            capture_paths: vec!["etc/os-release".into()],
            capture_dirs: vec!["etc/apt".into()],
            capture_suffix_dirs: vec![("var/lib/dpkg/info".into(), vec![".list".into()])],
            hash_dirs: vec!["etc".into()],
        }
    }

    fn scan(items: &[Item]) -> LayerScan {
        scan_layer(&tar_of(items)[..], Compression::None, &selector()).unwrap()
    }

    #[test]
    fn selector_captures_and_hashes() {
        let sel = selector();
        assert!(sel.captures("etc/os-release"));
        assert!(sel.captures("etc/apt/sources.list.d/debian.sources"));
        assert!(!sel.captures("etc/aptitude"));
        assert!(sel.captures("var/lib/dpkg/info/zlib1g:amd64.list"));
        assert!(!sel.captures("var/lib/dpkg/info/zlib1g:amd64.md5sums"));
        assert!(!sel.captures("var/lib/dpkg/info/sub/x.list"));
        assert!(sel.hashes("etc/passwd"));
        assert!(!sel.hashes("etcetera/passwd"));
    }

    #[test]
    fn whiteout_removes_lower_tree() {
        let lower = scan(&[
            Item::Dir("usr/"),
            Item::Dir("usr/share/"),
            Item::File("usr/share/a", b"a"),
            Item::File("usr/keep", b"k"),
        ]);
        let upper = scan(&[Item::File("usr/.wh.share", b"")]);
        let index = merge_layers([lower, upper]);
        assert!(index.get("usr/share").is_none());
        assert!(index.get("usr/share/a").is_none());
        assert!(index.get("usr/keep").is_some());
    }

    #[test]
    fn opaque_dir_hides_lower_children_only() {
        let lower = scan(&[Item::Dir("etc/"), Item::File("etc/old", b"o")]);
        let upper = scan(&[
            Item::Dir("etc/"),
            Item::File("etc/.wh..wh..opq", b""),
            Item::File("etc/new", b"n"),
        ]);
        let index = merge_layers([lower, upper]);
        assert!(index.get("etc").is_some());
        assert!(index.get("etc/old").is_none());
        assert!(index.get("etc/new").is_some());
    }

    #[test]
    fn upper_file_replaces_lower_directory() {
        let lower = scan(&[Item::Dir("opt/x/"), Item::File("opt/x/y", b"y")]);
        let upper = scan(&[Item::Symlink("opt/x", "/elsewhere")]);
        let index = merge_layers([lower, upper]);
        assert_eq!(
            index.get("opt/x").unwrap().kind,
            FileKind::Symlink("/elsewhere".into())
        );
        assert!(index.get("opt/x/y").is_none());
    }

    #[test]
    fn captured_content_and_md5() {
        let index = merge_layers([scan(&[
            Item::File("etc/os-release", b"ID=debian\n"),
            Item::File("etc/passwd", b"root\n"),
            Item::File("usr/bin/big", b"not captured"),
        ])]);
        assert_eq!(index.content("etc/os-release"), Some(&b"ID=debian\n"[..]));
        assert_eq!(index.content("usr/bin/big"), None);
        let md5: [u8; 16] = Md5::digest(b"root\n").into();
        assert_eq!(index.get("etc/passwd").unwrap().md5, Some(md5));
        assert_eq!(index.get("usr/bin/big").unwrap().md5, None);
    }

    #[test]
    fn hardlink_shares_target_content() {
        let index = merge_layers([scan(&[
            Item::File("etc/apt/a", b"same"),
            Item::Hardlink("etc/apt/b", "etc/apt/a"),
        ])]);
        assert_eq!(index.content("etc/apt/b"), Some(&b"same"[..]));
        assert_eq!(
            index.get("etc/apt/b").unwrap().md5,
            index.get("etc/apt/a").unwrap().md5
        );
    }

    #[test]
    fn gzip_and_zstd_layers_scan_alike() {
        let tar = tar_of(&[Item::File("etc/os-release", b"ID=alpine\n")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        for (blob, compression) in [(gz, Compression::Gzip), (zst, Compression::Zstd)] {
            let scan = scan_layer(&blob[..], compression, &selector()).unwrap();
            let index = merge_layers([scan]);
            assert_eq!(index.content("etc/os-release"), Some(&b"ID=alpine\n"[..]));
        }
    }

    #[test]
    fn scan_drains_trailing_bytes() {
        let mut blob = tar_of(&[Item::File("a", b"x")]);
        blob.extend_from_slice(&[0u8; 10_000]);
        let mut reader = &blob[..];
        scan_layer(&mut reader, Compression::None, &selector()).unwrap();
        assert!(reader.is_empty());
    }

    #[test]
    fn dot_dot_path_is_rejected() {
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_mode(0o644);
        let name = b"../escape";
        header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, &b"x"[..]).unwrap();
        let blob = builder.into_inner().unwrap();
        let err = scan_layer(&blob[..], Compression::None, &selector()).unwrap_err();
        assert!(matches!(err, ScanError::UnsafePath { .. }), "{err}");
    }

    #[test]
    fn media_types_map_to_compression() {
        let cases = [
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Some(Compression::Zstd),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar",
                Some(Compression::None),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            ("application/vnd.oci.image.config.v1+json", None),
        ];
        for (media_type, expected) in cases {
            assert_eq!(
                Compression::from_media_type(media_type),
                expected,
                "{media_type}"
            );
        }
    }
}
