//! Reading root filesystems and layer tars for comparisons: path resolution inside a root,
//! the state of one path, dpkg file lists and the entries of a layer blob.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Maximum number of symlinks followed while resolving one path, as Linux's MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` inside `root` the way the kernel would inside `chroot root`. Every
/// directory component that is a symlink is followed, with absolute targets taken
/// relative to `root`, but the last component is not. Returns the path relative to
/// `root`, without a leading slash.
///
/// Packages in merged-/usr images list paths such as `/lib/x86_64-linux-gnu/libz.so.1`
/// where `/lib` is a symlink to `usr/lib`; this gives `usr/lib/x86_64-linux-gnu/libz.so.1`.
pub fn resolve_in_root(root: &Path, path: &str) -> PathBuf {
    let mut pending: Vec<String> = split(path).into_iter().rev().collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut followed = 0;
    while let Some(component) = pending.pop() {
        match component.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let is_last = pending.is_empty();
        let candidate: PathBuf = resolved.iter().chain([&component]).collect();
        let target = if is_last {
            None
        } else {
            std::fs::read_link(root.join(&candidate)).ok()
        };
        match target {
            Some(target) => {
                followed += 1;
                assert!(
                    followed <= MAX_SYMLINKS,
                    "too many symlinks resolving {path} in {}",
                    root.display()
                );
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                }
                pending.extend(split(&target).into_iter().rev());
            }
            None => resolved.push(component),
        }
    }
    resolved.iter().collect()
}

fn split(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_owned()),
            _ => None,
        })
        .collect()
}

/// What one path is in a root filesystem: its type, content, permission bits and owner.
/// Timestamps are left out on purpose: the comparisons check content and metadata that
/// programs depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileState {
    Missing,
    File {
        sha256: String,
        size: u64,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Directory {
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        target: String,
        uid: u32,
        gid: u32,
    },
    /// A device, FIFO or socket, by its `st_mode` type bits.
    Special {
        kind: u32,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

impl fmt::Display for FileState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileState::Missing => write!(f, "missing"),
            FileState::File {
                sha256,
                size,
                mode,
                uid,
                gid,
            } => write!(
                f,
                "file {mode:04o} {uid}:{gid} {size} bytes sha256:{}",
                &sha256[..12]
            ),
            FileState::Directory { mode, uid, gid } => {
                write!(f, "directory {mode:04o} {uid}:{gid}")
            }
            FileState::Symlink { target, uid, gid } => write!(f, "symlink -> {target} {uid}:{gid}"),
            FileState::Special {
                kind,
                mode,
                uid,
                gid,
            } => write!(f, "special {kind:o} {mode:04o} {uid}:{gid}"),
        }
    }
}

/// Reads the state of `relative` (already resolved, see [`resolve_in_root`]) in `root`.
pub fn file_state(root: &Path, relative: &Path) -> FileState {
    let path = root.join(relative);
    let metadata = match std::fs::symlink_metadata(&path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return FileState::Missing,
        Err(error) => panic!("lstat {}: {error}", path.display()),
    };
    let (mode, uid, gid) = (metadata.mode() & 0o7777, metadata.uid(), metadata.gid());
    let file_type = metadata.file_type();
    if file_type.is_symlink() {
        let target = fs_err::read_link(&path).unwrap();
        FileState::Symlink {
            target: target.to_string_lossy().into_owned(),
            uid,
            gid,
        }
    } else if file_type.is_dir() {
        FileState::Directory { mode, uid, gid }
    } else if file_type.is_file() {
        let bytes = fs_err::read(&path).unwrap();
        FileState::File {
            sha256: hex::encode(Sha256::digest(&bytes)),
            size: bytes.len() as u64,
            mode,
            uid,
            gid,
        }
    } else {
        FileState::Special {
            kind: metadata.mode() & 0o170000,
            mode,
            uid,
            gid,
        }
    }
}

/// Lists every path beneath `root/relative` (not following symlinks), relative to `root`.
/// Returns nothing if `root/relative` does not exist.
pub fn walk(root: &Path, relative: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![relative.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for entry in entries {
            let entry = entry.unwrap();
            let child = dir.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                pending.push(child.clone());
            }
            found.push(child);
        }
    }
    found.sort();
    found
}

/// Paths that dpkg lists for `package` in `root` (`info/PACKAGE.list` or, for
/// `Multi-Arch: same` packages, `info/PACKAGE:ARCH.list`), as written, with a leading
/// slash. Returns nothing if the package has no list.
pub fn dpkg_file_list(root: &Path, package: &str) -> Vec<String> {
    let info = root.join("var/lib/dpkg/info");
    let plain = info.join(format!("{package}.list"));
    let list = if plain.exists() {
        Some(plain)
    } else {
        std::fs::read_dir(&info)
            .unwrap_or_else(|error| panic!("read {}: {error}", info.display()))
            .map(|entry| entry.unwrap().path())
            .find(|path| {
                let name = path.file_name().unwrap().to_string_lossy();
                name.starts_with(&format!("{package}:")) && name.ends_with(".list")
            })
    };
    match list {
        Some(list) => fs_err::read_to_string(list)
            .unwrap()
            .lines()
            .filter(|line| !line.is_empty() && *line != "/.")
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    }
}

/// One entry of a layer tar, with its name as stored (a leading `./` removed).
#[derive(Clone, Debug)]
pub struct LayerEntry {
    pub path: String,
    pub kind: tar::EntryType,
    pub link: Option<String>,
}

/// Decompresses a layer blob by its media type and returns the uncompressed tar.
pub fn decompress_layer(blob: &[u8], media_type: &str) -> Vec<u8> {
    let mut tar = Vec::new();
    if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
        flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut tar)
            .expect("layer is valid gzip");
    } else if media_type.ends_with("+zstd") || media_type.ends_with(".tar.zstd") {
        zstd::stream::read::Decoder::new(blob)
            .unwrap()
            .read_to_end(&mut tar)
            .expect("layer is valid zstd");
    } else if media_type.ends_with(".tar") || media_type.ends_with(".diff.tar") {
        tar.extend_from_slice(blob);
    } else {
        panic!("unknown layer media type {media_type}");
    }
    tar
}

/// Lists the entries of an uncompressed layer tar.
pub fn layer_entries(tar_bytes: &[u8]) -> Vec<LayerEntry> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .expect("layer is a tar archive")
        .map(|entry| {
            let entry = entry.expect("valid tar entry");
            let path = entry
                .path()
                .expect("entry path")
                .to_string_lossy()
                .into_owned();
            let path = path
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            let link = entry
                .link_name()
                .expect("entry link name")
                .map(|link| link.to_string_lossy().into_owned());
            LayerEntry {
                path,
                kind: entry.header().entry_type(),
                link,
            }
        })
        .collect()
}

/// Lines of a diff between two texts: each line only in `old` with `-`, only in `new`
/// with `+`, in the order of the texts. A multiset difference, not a minimal diff, which
/// is enough to show which fields of a status file differ.
pub fn line_changes(old: &str, new: &str) -> Vec<String> {
    let mut remaining_new: Vec<&str> = new.lines().collect();
    let mut changes = Vec::new();
    for line in old.lines() {
        match remaining_new
            .iter()
            .position(|candidate| *candidate == line)
        {
            Some(index) => {
                remaining_new.remove(index);
            }
            None => changes.push(format!("-{line}")),
        }
    }
    changes.extend(remaining_new.iter().map(|line| format!("+{line}")));
    changes
}

#[test]
fn resolve_in_root_follows_directory_symlinks() {
    let root = tempfile::tempdir().unwrap();
    fs_err::create_dir_all(root.path().join("usr/lib/x86_64-linux-gnu")).unwrap();
    std::os::unix::fs::symlink("usr/lib", root.path().join("lib")).unwrap();
    std::os::unix::fs::symlink("/usr/lib", root.path().join("usr/abs")).unwrap();
    std::os::unix::fs::symlink("libz.so.1.2.13", root.path().join("usr/lib/libz.so.1")).unwrap();

    let cases = [
        (
            "/lib/x86_64-linux-gnu/libz.so.1",
            "usr/lib/x86_64-linux-gnu/libz.so.1",
        ),
        ("/usr/abs/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"),
        ("/lib", "lib"),
        ("/lib/libz.so.1", "usr/lib/libz.so.1"),
        ("/usr/../lib/a", "usr/lib/a"),
    ];
    for (input, expected) in cases {
        assert_eq!(
            resolve_in_root(root.path(), input),
            PathBuf::from(expected),
            "resolving {input}"
        );
    }
}

#[test]
fn line_changes_lists_only_differences() {
    let changes = line_changes("a\nb\nc\n", "a\nB\nc\nd\n");
    assert_eq!(changes, vec!["-b", "+B", "+d"]);
}
