//! Reproducible OCI layer tarballs.
//!
//! [`LayerBuilder`] collects entries by path (a later entry for a path replaces the earlier
//! one) and writes them as one gzip-compressed tar whose bytes depend only on the entries:
//! paths sorted by bytes, numeric owners with empty user and group names, no access or
//! change times, PAX records for names that do not fit a ustar header, and gzip members
//! with mtime 0, no file name and compression level 6 (see [`crate::gzip`]). Whiteouts follow the OCI image
//! spec's layer changeset rules (`.wh.NAME`, `.wh..wh..opq`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use crate::digest::{Digest, HashingWriter};
use crate::gzip::ParallelGzWriter;
use crate::rootfs::normalize;

/// The gzip level of layers: the default of gzip(1) and of Go's `compress/gzip`.
const GZIP_LEVEL: u32 = 6;

/// Content up to this size stays in memory; larger content goes to the spool file.
const INLINE_LIMIT: u64 = 4 * 1024;

/// The maximum name length a ustar header stores without a prefix split.
const USTAR_NAME_MAX: usize = 100;

/// An error while collecting or writing layer entries.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("failed to spool content of layer entry {path:?}")]
    Spool {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("content of layer entry {path:?} is {actual} bytes, expected {expected}")]
    ShortContent {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("hard link {path:?} targets {target:?}, which is not in the layer")]
    HardlinkTargetMissing { path: String, target: String },
    #[error("failed to read layer tar {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to write layer {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Ownership, permissions and modification time of a layer entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// Permission bits including setuid, setgid and sticky (`0o7777` mask).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Modification time in seconds since the epoch.
    pub mtime: u64,
}

/// The kind of a layer entry and the source of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryContent {
    /// A regular file whose content is held in memory.
    Bytes(Vec<u8>),
    /// A regular file whose content is a range of the spool file.
    Spooled {
        offset: u64,
        len: u64,
    },
    Directory,
    /// A symbolic link and its target, exactly as it is to be stored.
    Symlink(String),
    /// A hard link to another path of this layer (normalized).
    Hardlink(String),
    /// Deletes the path from the lower layers (`DIR/.wh.NAME`).
    Whiteout,
    /// Hides every lower-layer entry under a directory (`DIR/.wh..wh..opq`); the
    /// directory itself is not changed by this entry.
    Opaque,
}

/// One collected entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    pub meta: EntryMeta,
    pub content: EntryContent,
}

/// The written layer blob and its identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltLayer {
    /// The gzip blob, inside the directory given to [`LayerBuilder::finish`].
    pub path: PathBuf,
    /// SHA-256 of the gzip blob: the layer's descriptor digest.
    pub digest: Digest,
    /// SHA-256 of the uncompressed tar: the config's `rootfs.diff_ids` entry.
    pub diff_id: Digest,
    /// Size of the gzip blob in bytes.
    pub size: u64,
    /// Size of the uncompressed tar in bytes.
    pub uncompressed_size: u64,
}

/// Collects entries of one layer and writes them reproducibly.
pub struct LayerBuilder {
    entries: BTreeMap<String, LayerEntry>,
    spool: Option<std::fs::File>,
    spool_len: u64,
    default_mtime: u64,
}

impl std::fmt::Debug for LayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerBuilder")
            .field("entries", &self.entries.len())
            .field("spool_len", &self.spool_len)
            .finish()
    }
}

impl LayerBuilder {
    /// Creates an empty builder. `default_mtime` is the modification time of the parent
    /// directories that [`finish`](Self::finish) adds because no entry names them.
    pub fn new(default_mtime: u64) -> Self {
        Self {
            entries: BTreeMap::new(),
            spool: None,
            spool_len: 0,
            default_mtime,
        }
    }

    /// Returns the entry collected for a path (normalized), if any.
    pub fn get(&self, path: &str) -> Option<&LayerEntry> {
        self.entries.get(&normalize(path))
    }

    /// Iterates over the collected entries in path order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &LayerEntry)> {
        self.entries
            .iter()
            .map(|(path, entry)| (path.as_str(), entry))
    }

    /// Returns the number of collected entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns whether no entry was collected.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a directory entry.
    pub fn add_dir(&mut self, path: &str, meta: EntryMeta) {
        self.insert(path, meta, EntryContent::Directory);
    }

    /// Adds a regular file whose content is in memory.
    pub fn add_bytes(&mut self, path: &str, meta: EntryMeta, data: Vec<u8>) {
        self.insert(path, meta, EntryContent::Bytes(data));
    }

    /// Adds a regular file of `size` bytes read from `reader`; content above 64 KiB goes
    /// to an anonymous spool file instead of memory.
    pub fn add_file(
        &mut self,
        path: &str,
        meta: EntryMeta,
        size: u64,
        reader: &mut dyn Read,
    ) -> Result<(), LayerError> {
        let path = normalize(path);
        let content = if size <= INLINE_LIMIT {
            let mut data = Vec::with_capacity(size as usize);
            reader
                .take(size)
                .read_to_end(&mut data)
                .map_err(|source| LayerError::Spool {
                    path: path.clone(),
                    source,
                })?;
            check_length(&path, size, data.len() as u64)?;
            EntryContent::Bytes(data)
        } else {
            let offset = self.spool_len;
            let spool = self.spool_file(&path)?;
            let copied =
                io::copy(&mut reader.take(size), spool).map_err(|source| LayerError::Spool {
                    path: path.clone(),
                    source,
                })?;
            self.spool_len += copied;
            check_length(&path, size, copied)?;
            EntryContent::Spooled { offset, len: size }
        };
        self.insert(&path, meta, content);
        Ok(())
    }

    /// Adds a symbolic link.
    pub fn add_symlink(&mut self, path: &str, meta: EntryMeta, target: &str) {
        self.insert(path, meta, EntryContent::Symlink(target.to_owned()));
    }

    /// Adds a hard link to another path of this layer.
    pub fn add_hardlink(&mut self, path: &str, meta: EntryMeta, target: &str) {
        self.insert(path, meta, EntryContent::Hardlink(normalize(target)));
    }

    /// Deletes `path` from the lower layers. Entries collected at or under `path` are
    /// dropped, because a whiteout and an entry for the same path in one layer conflict.
    pub fn add_whiteout(&mut self, path: &str, mtime: u64) {
        let path = normalize(path);
        let prefix = format!("{path}/");
        self.entries
            .retain(|existing, _| existing != &path && !existing.starts_with(&prefix));
        let meta = EntryMeta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime,
        };
        self.entries.insert(
            path,
            LayerEntry {
                meta,
                content: EntryContent::Whiteout,
            },
        );
    }

    /// Hides every lower-layer entry under the directory `path`.
    pub fn add_opaque(&mut self, path: &str, mtime: u64) {
        let meta = EntryMeta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime,
        };
        let key = opaque_key(&normalize(path));
        self.entries.insert(
            key,
            LayerEntry {
                meta,
                content: EntryContent::Opaque,
            },
        );
    }

    fn insert(&mut self, path: &str, meta: EntryMeta, content: EntryContent) {
        let path = normalize(path);
        tracing::trace!(%path, ?content, "layer entry");
        self.entries.insert(path, LayerEntry { meta, content });
    }

    fn spool_file(&mut self, path: &str) -> Result<&mut std::fs::File, LayerError> {
        if self.spool.is_none() {
            let file = tempfile::tempfile().map_err(|source| LayerError::Spool {
                path: path.to_owned(),
                source,
            })?;
            self.spool = Some(file);
        }
        let spool = self.spool.as_mut().expect("spool file was just created");
        spool
            .seek(SeekFrom::End(0))
            .map_err(|source| LayerError::Spool {
                path: path.to_owned(),
                source,
            })?;
        Ok(spool)
    }

    /// Writes the layer as `layer.tar.gz` in `dir` and returns its identities.
    pub fn finish(mut self, dir: &Path) -> Result<BuiltLayer, LayerError> {
        let path = dir.join("layer.tar.gz");
        tracing::debug!(entries = self.entries.len(), "writing layer");
        let write_error = |source| LayerError::Write {
            path: path.clone(),
            source,
        };
        let file = fs_err::File::create(&path).map_err(write_error)?;
        let compressed = HashingWriter::new(io::BufWriter::new(file));
        let gzip = ParallelGzWriter::new(compressed, GZIP_LEVEL);
        let mut tar = tar::Builder::new(HashingWriter::new(gzip));

        let order = self.emission_order()?;
        for (name, key) in &order {
            let entry = &self.entries[key];
            write_entry(&mut tar, self.spool.as_mut(), name, entry).map_err(write_error)?;
        }

        let uncompressed = tar.into_inner().map_err(write_error)?;
        let (gzip, diff_id, uncompressed_size) = uncompressed.finish();
        let compressed = gzip.finish().map_err(write_error)?;
        let (buffered, digest, size) = compressed.finish();
        buffered
            .into_inner()
            .map_err(|error| write_error(error.into_error()))?;
        tracing::debug!(path = %path.display(), %digest, %diff_id, size, entries = order.len(), "layer written");
        Ok(BuiltLayer {
            path,
            digest,
            diff_id,
            size,
            uncompressed_size,
        })
    }

    /// Adds the missing parent directories, then orders the entries by their tar name,
    /// moving each hard link right after its target. Returns (tar name, entry key) pairs.
    fn emission_order(&mut self) -> Result<Vec<(String, String)>, LayerError> {
        let mut missing = BTreeSet::new();
        for path in self.entries.keys() {
            let mut parent = path.as_str();
            while let Some((up, _)) = parent.rsplit_once('/') {
                if !self.entries.contains_key(up) {
                    missing.insert(up.to_owned());
                }
                parent = up;
            }
        }
        for path in missing {
            let meta = EntryMeta {
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: self.default_mtime,
            };
            self.entries.insert(
                path,
                LayerEntry {
                    meta,
                    content: EntryContent::Directory,
                },
            );
        }

        let mut named: Vec<(String, String)> = self
            .entries
            .iter()
            .map(|(key, entry)| (tar_name(key, &entry.content), key.clone()))
            .collect();
        // Sorting by the name without a trailing `/` keeps every directory before its
        // children, because a parent's name is a prefix of its children's names.
        named.sort_by(|a, b| a.0.trim_end_matches('/').cmp(b.0.trim_end_matches('/')));

        let mut emitted: BTreeSet<&str> = BTreeSet::new();
        let mut waiting: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        let mut order = Vec::with_capacity(named.len());
        for (name, key) in named {
            if let EntryContent::Hardlink(target) = &self.entries[&key].content
                && !emitted.contains(target.as_str())
            {
                waiting.entry(target.clone()).or_default().push((name, key));
                continue;
            }
            let mut ready = vec![(name, key)];
            while let Some((name, key)) = ready.pop() {
                if let Some(links) = waiting.remove(&key) {
                    ready.extend(links.into_iter().rev());
                }
                let (stored, _) = self.entries.get_key_value(&key).expect("key exists");
                emitted.insert(stored.as_str());
                order.push((name, key));
            }
        }
        if let Some((target, links)) = waiting.into_iter().next() {
            return Err(LayerError::HardlinkTargetMissing {
                path: links[0].1.clone(),
                target,
            });
        }
        Ok(order)
    }
}

/// Compresses an existing uncompressed layer tar, such as one `docker save` wrote, into
/// `layer.tar.gz` in `dir`, the same way [`LayerBuilder::finish`] compresses its own.
pub fn compress_tar(tar_path: &Path, dir: &Path) -> Result<BuiltLayer, LayerError> {
    let path = dir.join("layer.tar.gz");
    let write_error = |source| LayerError::Write {
        path: path.clone(),
        source,
    };
    let mut input = fs_err::File::open(tar_path).map_err(|source| LayerError::Read {
        path: tar_path.to_owned(),
        source,
    })?;
    let file = fs_err::File::create(&path).map_err(write_error)?;
    let compressed = HashingWriter::new(io::BufWriter::new(file));
    let mut uncompressed = HashingWriter::new(ParallelGzWriter::new(compressed, GZIP_LEVEL));
    io::copy(&mut input, &mut uncompressed).map_err(write_error)?;
    let (gzip, diff_id, uncompressed_size) = uncompressed.finish();
    let compressed = gzip.finish().map_err(write_error)?;
    let (buffered, digest, size) = compressed.finish();
    buffered
        .into_inner()
        .map_err(|error| write_error(error.into_error()))?;
    tracing::debug!(path = %path.display(), %digest, %diff_id, size, "layer compressed");
    Ok(BuiltLayer {
        path,
        digest,
        diff_id,
        size,
        uncompressed_size,
    })
}

fn write_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    spool: Option<&mut std::fs::File>,
    name: &str,
    entry: &LayerEntry,
) -> io::Result<()> {
    let mut header = Header::new_ustar();
    header.set_mode(entry.meta.mode & 0o7777);
    header.set_uid(entry.meta.uid);
    header.set_gid(entry.meta.gid);
    header.set_mtime(entry.meta.mtime);
    header.set_size(0);
    let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
    let (entry_type, link) = match &entry.content {
        EntryContent::Bytes(_) | EntryContent::Spooled { .. } => (EntryType::Regular, None),
        EntryContent::Whiteout | EntryContent::Opaque => (EntryType::Regular, None),
        EntryContent::Directory => (EntryType::Directory, None),
        EntryContent::Symlink(target) => (EntryType::Symlink, Some(target.as_str())),
        EntryContent::Hardlink(target) => (EntryType::Link, Some(target.as_str())),
    };
    header.set_entry_type(entry_type);
    if name.len() > USTAR_NAME_MAX || header.set_path(name).is_err() {
        pax.push(("path", name.as_bytes().to_vec()));
        header.set_path(truncate_name(name))?;
    }
    if let Some(link) = link
        && (link.len() > USTAR_NAME_MAX || header.set_link_name_literal(link).is_err())
    {
        pax.push(("linkpath", link.as_bytes().to_vec()));
        header.set_link_name_literal(truncate_name(link))?;
    }
    if !pax.is_empty() {
        tar.append_pax_extensions(pax.iter().map(|(key, value)| (*key, value.as_slice())))?;
    }
    match &entry.content {
        EntryContent::Bytes(data) => {
            header.set_size(data.len() as u64);
            header.set_cksum();
            tar.append(&header, data.as_slice())
        }
        EntryContent::Spooled { offset, len } => {
            header.set_size(*len);
            header.set_cksum();
            let spool = spool.expect("spooled content implies a spool file");
            spool.seek(SeekFrom::Start(*offset))?;
            tar.append(&header, spool.take(*len))
        }
        _ => {
            header.set_cksum();
            tar.append(&header, io::empty())
        }
    }
}

fn check_length(path: &str, expected: u64, actual: u64) -> Result<(), LayerError> {
    if expected == actual {
        Ok(())
    } else {
        Err(LayerError::ShortContent {
            path: path.to_owned(),
            expected,
            actual,
        })
    }
}

fn opaque_key(dir: &str) -> String {
    if dir.is_empty() {
        ".wh..wh..opq".to_owned()
    } else {
        format!("{dir}/.wh..wh..opq")
    }
}

/// Returns the name an entry has in the tar stream: directories end in `/`, whiteouts
/// become `DIR/.wh.NAME`.
fn tar_name(key: &str, content: &EntryContent) -> String {
    match content {
        EntryContent::Directory if key.is_empty() => "./".to_owned(),
        EntryContent::Directory => format!("{key}/"),
        EntryContent::Whiteout => match key.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{key}"),
        },
        _ => key.to_owned(),
    }
}

/// Shortens a name for the ustar field that a PAX record overrides; readers that ignore
/// PAX still see a recognizable prefix.
fn truncate_name(name: &str) -> &str {
    let mut end = name.len().min(USTAR_NAME_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mode: u32, mtime: u64) -> EntryMeta {
        EntryMeta {
            mode,
            uid: 0,
            gid: 0,
            mtime,
        }
    }

    fn sample_layer() -> LayerBuilder {
        let mut layer = LayerBuilder::new(7);
        layer.add_bytes("usr/bin/tool", meta(0o755, 100), b"#!/bin/sh\n".to_vec());
        layer.add_hardlink("usr/bin/a-link", meta(0o755, 100), "usr/bin/tool");
        layer.add_symlink("usr/bin/alias", meta(0o777, 100), "tool");
        let big = vec![b'x'; 200_000];
        layer
            .add_file(
                "usr/share/big",
                meta(0o644, 5),
                big.len() as u64,
                &mut big.as_slice(),
            )
            .unwrap();
        layer.add_whiteout("etc/old.conf", 0);
        let long = format!("usr/share/{}/file", "d".repeat(120));
        layer.add_bytes(&long, meta(0o644, 1), b"long".to_vec());
        layer.add_dir("usr", meta(0o755, 50));
        layer
    }

    fn read_entries(path: &Path) -> Vec<(String, EntryType, u32, u64, u64, Option<String>)> {
        let file = std::fs::File::open(path).unwrap();
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let header = entry.header();
                (
                    entry.path().unwrap().to_string_lossy().into_owned(),
                    header.entry_type(),
                    header.mode().unwrap(),
                    header.uid().unwrap(),
                    header.mtime().unwrap(),
                    entry
                        .link_name()
                        .unwrap()
                        .map(|l| l.to_string_lossy().into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn layer_build_is_reproducible() {
        let first_dir = tempfile::tempdir().unwrap();
        let second_dir = tempfile::tempdir().unwrap();
        let first = sample_layer().finish(first_dir.path()).unwrap();
        let second = sample_layer().finish(second_dir.path()).unwrap();
        assert_eq!(first.digest, second.digest);
        assert_eq!(first.diff_id, second.diff_id);
        let first_bytes = std::fs::read(&first.path).unwrap();
        assert_eq!(first_bytes, std::fs::read(&second.path).unwrap());
        assert_eq!(Digest::of(&first_bytes), first.digest);
        assert_eq!(first.size, first_bytes.len() as u64);
    }

    #[test]
    fn layer_entry_order_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let built = sample_layer().finish(dir.path()).unwrap();
        let entries = read_entries(&built.path);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let long = format!("usr/share/{}", "d".repeat(120));
        assert_eq!(
            names,
            [
                "etc/",
                "etc/.wh.old.conf",
                "usr/",
                "usr/bin/",
                "usr/bin/alias",
                "usr/bin/tool",
                "usr/bin/a-link",
                "usr/share/",
                "usr/share/big",
                &format!("{long}/"),
                &format!("{long}/file"),
            ]
        );
        let usr = &entries[2];
        assert_eq!(usr.1, EntryType::Directory);
        assert_eq!(usr.4, 50, "explicit directory keeps its mtime");
        let etc = &entries[0];
        assert_eq!(etc.2, 0o755);
        assert_eq!(etc.4, 7, "synthesized directory uses the default mtime");
        let link = &entries[6];
        assert_eq!(link.1, EntryType::Link);
        assert_eq!(link.5.as_deref(), Some("usr/bin/tool"));
        let alias = &entries[4];
        assert_eq!(alias.1, EntryType::Symlink);
        assert_eq!(alias.5.as_deref(), Some("tool"));
    }

    #[test]
    fn layer_headers_have_no_names_or_times() {
        let dir = tempfile::tempdir().unwrap();
        let built = sample_layer().finish(dir.path()).unwrap();
        let file = std::fs::File::open(&built.path).unwrap();
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            assert_eq!(entry.header().username().unwrap(), Some(""));
            assert_eq!(entry.header().groupname().unwrap(), Some(""));
            if let Some(pax) = entry.pax_extensions().unwrap() {
                for record in pax {
                    let key = record.unwrap().key().unwrap().to_owned();
                    assert!(
                        key == "path" || key == "linkpath",
                        "unexpected pax key {key}"
                    );
                }
            }
        }
        let raw = std::fs::read(&built.path).unwrap();
        assert_eq!(&raw[4..8], &[0, 0, 0, 0], "gzip mtime is zero");
        assert_eq!(raw[3] & 0x08, 0, "gzip header has no file name");
    }

    #[test]
    fn whiteout_replaces_entries_below() {
        let mut layer = LayerBuilder::new(0);
        layer.add_bytes("opt/app/file", meta(0o644, 1), b"x".to_vec());
        layer.add_whiteout("opt/app", 0);
        assert!(layer.get("opt/app/file").is_none());
        assert_eq!(
            layer.get("opt/app").unwrap().content,
            EntryContent::Whiteout
        );
        layer.add_bytes("opt/app", meta(0o644, 1), b"y".to_vec());
        assert_eq!(
            layer.get("opt/app").unwrap().content,
            EntryContent::Bytes(b"y".to_vec())
        );
    }

    #[test]
    fn hardlink_without_target_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut layer = LayerBuilder::new(0);
        layer.add_hardlink("a", meta(0o644, 1), "missing");
        let error = layer.finish(dir.path()).unwrap_err();
        assert!(matches!(error, LayerError::HardlinkTargetMissing { .. }));
    }
}
