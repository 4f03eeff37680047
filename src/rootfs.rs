//! The merged root filesystem view of an image's layers.
//!
//! Each layer is scanned once as a tar stream; the scans are then merged from the top
//! layer down with whiteouts and opaque directories applied as the OCI image spec's
//! layer changeset rules define them. The view keeps the metadata of every path but the
//! content of only the files a [`Selector`] asks for, so memory stays bounded by the
//! number of paths and the selected files, never by layer size.

use std::collections::BTreeMap;

/// The type of a filesystem entry, with its link target where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    Directory,
    /// A symbolic link and its target, exactly as stored.
    Symlink(String),
    /// A hard link to another path of the same layer, normalized like every path here.
    Hardlink(String),
    /// Character or block devices, FIFOs and anything else.
    Other,
}

/// Metadata of one path in the merged view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777` mask).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Modification time in seconds since the epoch.
    pub mtime: u64,
    pub size: u64,
    /// MD5 of the content, recorded for regular files the selector hashes.
    pub md5: Option<[u8; 16]>,
}

/// The merged view: metadata of every path plus the content of selected files.
///
/// Paths are relative to the root, without a leading `/` or `./` and without a trailing
/// `/` (`usr/lib/os-release`); the root itself is the empty string.
#[derive(Debug, Default, Clone)]
pub struct RootfsIndex {
    entries: BTreeMap<String, FileInfo>,
    contents: BTreeMap<String, Vec<u8>>,
}

/// The maximum number of symlinks followed while resolving one path, as Linux's
/// `MAXSYMLINKS` (40).
const MAX_SYMLINK_HOPS: usize = 40;

impl RootfsIndex {
    /// Looks up a path's metadata without following symlinks.
    pub fn get(&self, path: &str) -> Option<&FileInfo> {
        self.entries.get(path)
    }

    /// Returns the captured content of a selected regular file.
    pub fn content(&self, path: &str) -> Option<&[u8]> {
        self.contents.get(path).map(Vec::as_slice)
    }

    /// Iterates over every path and its metadata in byte order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FileInfo)> {
        self.entries
            .iter()
            .map(|(path, info)| (path.as_str(), info))
    }

    /// Iterates over the direct children of `dir` (a normalized path, `""` for the root).
    pub fn children<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a FileInfo)> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let start = prefix.len();
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(path, _)| path.starts_with(&prefix))
            .filter(move |(path, _)| !path.is_empty() && !path[start..].contains('/'))
            .map(|(path, info)| (path.as_str(), info))
    }

    /// Iterates over the captured files whose path starts with `prefix`.
    pub fn contents_under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.contents
            .range(prefix.to_owned()..)
            .take_while(move |(path, _)| path.starts_with(prefix))
            .map(|(path, data)| (path.as_str(), data.as_slice()))
    }

    /// Resolves the symlinks among the parent directories of `path`, as the kernel would
    /// when a file is created at `path` inside this root, and returns the normalized path
    /// the file really lands at. The last component is not followed.
    ///
    /// Merged-`/usr` images need this: a package's `/lib/x86_64-linux-gnu/libz.so.1` is
    /// really `usr/lib/x86_64-linux-gnu/libz.so.1`, and a layer entry under `lib/` would
    /// create a directory that hides the `lib -> usr/lib` symlink in overlay snapshotters.
    /// Absolute link targets are taken relative to this root, never to the host's.
    pub fn resolve_parent(&self, path: &str) -> String {
        let path = normalize(path);
        match path.rsplit_once('/') {
            Some((parent, name)) => {
                let parent = self.resolve(parent);
                if parent.is_empty() {
                    name.to_owned()
                } else {
                    format!("{parent}/{name}")
                }
            }
            None => path,
        }
    }

    /// Resolves every symlink in `path`, the last component included. A dangling or
    /// looping link stops the resolution where it is.
    pub fn resolve(&self, path: &str) -> String {
        let mut pending: Vec<String> = normalize(path)
            .split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(str::to_owned)
            .collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(component) = pending.pop() {
            match component.as_str() {
                "." => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            resolved.push(component);
            let current = resolved.join("/");
            let Some(FileInfo {
                kind: FileKind::Symlink(target),
                ..
            }) = self.entries.get(&current)
            else {
                continue;
            };
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                break;
            }
            resolved.pop();
            if target.starts_with('/') {
                resolved.clear();
            }
            pending.extend(
                target
                    .split('/')
                    .filter(|c| !c.is_empty())
                    .rev()
                    .map(str::to_owned),
            );
        }
        resolved.join("/")
    }

    /// Inserts or replaces a path; used while merging layers and by tests.
    pub fn insert(&mut self, path: &str, info: FileInfo, content: Option<Vec<u8>>) {
        let path = normalize(path);
        match content {
            Some(data) => {
                self.contents.insert(path.clone(), data);
            }
            None => {
                self.contents.remove(&path);
            }
        }
        self.entries.insert(path, info);
    }
}

/// Normalizes a path from a tar entry, a package or a user: strips `./` and `/` prefixes
/// and a trailing `/`, and collapses repeated slashes.
pub fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for component in path.split('/') {
        if component.is_empty() || component == "." {
            continue;
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(component);
    }
    out
}
