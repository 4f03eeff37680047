//! OCI image layouts on disk (image-spec `image-layout.md`): reading, and writing with
//! atomic renames.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::{TransportError, io_error};
use crate::digest::{Digest, Hasher};
use crate::image::OCI_INDEX;

/// The `oci-layout` marker file's content for layout version 1.0.0.
const LAYOUT_MARKER: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
/// The annotation that names an `index.json` entry, the tag in `oci:DIR:TAG`.
pub(super) const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation with the full image name that docker and containerd write.
pub(super) const IMAGE_NAME: &str = "io.containerd.image.name";

/// The action [`Layout::commit`] takes on a written layout.
#[derive(Debug)]
pub(super) enum Finish {
    /// Nothing: the layout is only read.
    ReadOnly,
    /// The layout existed: new blobs are already in place and `index.json` is replaced.
    InPlace,
    /// The layout is built in a staging directory that is renamed onto this path.
    RenameDir(PathBuf),
    /// The layout is packed as a docker archive and renamed onto this file.
    Archive(PathBuf),
}

/// An OCI image layout directory.
#[derive(Debug)]
pub struct Layout {
    /// The directory holding `index.json` and `blobs/`.
    root: PathBuf,
    /// The path the user named, for messages.
    pub(super) shown: PathBuf,
    /// The name that picks the `index.json` entry: a tag, or an archive's image name.
    pub(super) name: Option<String>,
    pub(super) finish: Finish,
    index: Mutex<Value>,
    /// Blobs this run added to an existing layout, removed again unless committed.
    added: Mutex<Vec<PathBuf>>,
    committed: bool,
    /// Keeps a staging or unpacked directory alive as long as the layout.
    _temp: Option<tempfile::TempDir>,
}

impl Layout {
    /// Opens an existing layout for reading.
    pub fn open(dir: &Path, name: Option<String>) -> Result<Self, TransportError> {
        let index = read_index(dir)?;
        Ok(Layout {
            root: dir.to_owned(),
            shown: dir.to_owned(),
            name,
            finish: Finish::ReadOnly,
            index: Mutex::new(index),
            added: Mutex::new(Vec::new()),
            committed: false,
            _temp: None,
        })
    }

    /// Opens a layout directory that an unpacked archive left in `temp`.
    pub(super) fn from_temp(
        temp: tempfile::TempDir,
        shown: &Path,
        name: Option<String>,
        finish: Finish,
    ) -> Result<Self, TransportError> {
        let root = temp.path().to_owned();
        let index = read_index(&root)?;
        Ok(Layout {
            root,
            shown: shown.to_owned(),
            name,
            finish,
            index: Mutex::new(index),
            added: Mutex::new(Vec::new()),
            committed: false,
            _temp: Some(temp),
        })
    }

    /// Opens `dir` for writing: in place when it contains a layout, else as a staging
    /// directory beside it that [`Self::commit`] renames onto `dir`.
    pub fn create(dir: &Path, tag: Option<String>) -> Result<Self, TransportError> {
        if dir.join("index.json").exists() {
            let mut layout = Layout::open(dir, tag)?;
            layout.finish = Finish::InPlace;
            return Ok(layout);
        }
        if dir.exists()
            && fs_err::read_dir(dir)
                .map_err(io_error(dir))?
                .next()
                .is_some()
        {
            return Err(TransportError::InvalidLayout {
                path: dir.to_owned(),
                reason: "the directory is not empty and has no index.json; \
                         choose a new or empty directory"
                    .to_owned(),
            });
        }
        let temp = staging_dir(dir)?;
        init_layout(temp.path())?;
        Layout::from_temp(temp, dir, tag, Finish::RenameDir(dir.to_owned()))
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    /// The path of a blob inside the layout.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// The `index.json` entry [`Self::name`] picks: the entry with that `ref.name` or
    /// image name, or the only entry when no name is given.
    pub fn top_entry(&self) -> Result<Value, TransportError> {
        let index = self.index.lock().expect("no panic while holding the index");
        let entries = index
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let Some(name) = &self.name else {
            return match entries.as_slice() {
                [only] => Ok(only.clone()),
                _ => Err(TransportError::Ambiguous {
                    path: self.shown.clone(),
                    count: entries.len(),
                    hint: format!("{}:TAG", self.shown.display()),
                }),
            };
        };
        let found = entries.iter().find(|entry| entry_has_name(entry, name));
        found.cloned().ok_or_else(|| TransportError::TagNotFound {
            path: self.shown.clone(),
            tag: name.clone(),
            available: entries
                .iter()
                .filter_map(|entry| annotation(entry, REF_NAME).or(annotation(entry, IMAGE_NAME)))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Reads a small blob whole (a manifest or config), checking its digest.
    pub async fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, TransportError> {
        let path = self.blob_path(digest);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(self.missing(digest));
            }
            Err(source) => return Err(TransportError::Io { path, source }),
        };
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(self.mismatch(digest, format!("its content has digest {actual}")));
        }
        Ok(bytes)
    }

    /// Opens a blob for streaming; the reader fails at its end unless size and digest
    /// match.
    pub async fn open_blob(
        &self,
        digest: &Digest,
        size: u64,
    ) -> Result<VerifyingReader<tokio::fs::File>, TransportError> {
        let path = self.blob_path(digest);
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(self.missing(digest));
            }
            Err(source) => return Err(TransportError::Io { path, source }),
        };
        Ok(VerifyingReader::new(
            file,
            digest.clone(),
            size,
            self.shown.clone(),
        ))
    }

    /// Copies a file in as a blob unless the layout has it.
    pub async fn put_blob_file(
        &self,
        path: &Path,
        digest: &Digest,
        size: u64,
    ) -> Result<bool, TransportError> {
        if self.has_blob(digest) {
            return Ok(false);
        }
        let file = tokio::fs::File::open(path).await.map_err(io_error(path))?;
        self.put_blob_reader(
            VerifyingReader::new(file, digest.clone(), size, path.to_owned()),
            digest,
        )
        .await?;
        Ok(true)
    }

    /// Writes a stream as a blob through a temporary file renamed into place. The
    /// reader must check the content, as [`VerifyingReader`] and registry blob readers do.
    pub async fn put_blob_reader<R>(
        &self,
        mut reader: R,
        digest: &Digest,
    ) -> Result<(), TransportError>
    where
        R: AsyncRead + Unpin,
    {
        let dir = self.root.join("blobs/sha256");
        let temp = tempfile::NamedTempFile::new_in(&dir).map_err(io_error(&dir))?;
        let (file, temp_path) = temp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let copied = tokio::io::copy(&mut reader, &mut file).await;
        copied.map_err(|source| read_failure(source, self, digest))?;
        file.flush()
            .await
            .map_err(io_error(temp_path.to_path_buf()))?;
        file.sync_all()
            .await
            .map_err(io_error(temp_path.to_path_buf()))?;
        let target = self.blob_path(digest);
        temp_path
            .persist(&target)
            .map_err(|error| TransportError::Io {
                path: target.clone(),
                source: error.error,
            })?;
        if matches!(self.finish, Finish::InPlace) {
            self.added
                .lock()
                .expect("no panic while holding the list")
                .push(target);
        }
        tracing::trace!(layout = %self.shown.display(), %digest, "wrote blob");
        Ok(())
    }

    /// Writes bytes as a blob.
    pub async fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest, TransportError> {
        let digest = Digest::of(bytes);
        if !self.has_blob(&digest) {
            let reader = VerifyingReader::new(
                bytes,
                digest.clone(),
                bytes.len() as u64,
                self.shown.clone(),
            );
            self.put_blob_reader(reader, &digest).await?;
        }
        Ok(digest)
    }

    /// Points the `index.json` entry named `name` at a descriptor, replacing any entry
    /// with the same name. `annotations` are the entry's naming annotations.
    pub fn set_entry(&self, descriptor: Map<String, Value>, annotations: Map<String, Value>) {
        let mut index = self.index.lock().expect("no panic while holding the index");
        // An archive names images by their full name, so two images there may share a
        // tag; a layout names them by tag alone.
        let key = if annotations.contains_key(IMAGE_NAME) {
            IMAGE_NAME
        } else {
            REF_NAME
        };
        let new_name = annotations
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned);
        let manifests = index
            .as_object_mut()
            .expect("read_index returns an object")
            .entry("manifests")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(entries) = manifests {
            entries.retain(|entry| new_name.is_none() || annotation(entry, key) != new_name);
            let mut entry = descriptor;
            if !annotations.is_empty() {
                entry.insert("annotations".to_owned(), Value::Object(annotations));
            }
            entries.push(Value::Object(entry));
        }
    }

    /// The entries of `index.json`.
    pub(super) fn entries(&self) -> Vec<Value> {
        let index = self.index.lock().expect("no panic while holding the index");
        index
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// Writes `index.json` through a rename, then finishes as [`Finish`] specifies.
    pub fn commit(mut self) -> Result<(), TransportError> {
        let index = self
            .index
            .lock()
            .expect("no panic while holding the index")
            .clone();
        let mut bytes = serde_json::to_vec(&index).expect("JSON values serialize");
        bytes.push(b'\n');
        write_atomic(&self.root.join("index.json"), &bytes)?;
        match &self.finish {
            Finish::ReadOnly | Finish::InPlace => {}
            Finish::RenameDir(target) => {
                if target.exists() {
                    // `create` accepted only an empty directory here.
                    fs_err::remove_dir(target).map_err(io_error(target))?;
                }
                let temp = self._temp.take().expect("a staged layout has a temp dir");
                let staged = temp.keep();
                fs_err::rename(&staged, target).map_err(io_error(target))?;
            }
            Finish::Archive(file) => {
                super::archive::write_archive(self.root(), &self.entries(), file)?
            }
        }
        self.committed = true;
        tracing::debug!(layout = %self.shown.display(), "committed image layout");
        Ok(())
    }

    fn missing(&self, digest: &Digest) -> TransportError {
        TransportError::BlobMissing {
            path: self.shown.clone(),
            digest: digest.clone(),
        }
    }

    fn mismatch(&self, digest: &Digest, reason: String) -> TransportError {
        TransportError::BlobMismatch {
            path: self.shown.clone(),
            digest: digest.clone(),
            reason,
        }
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let added = std::mem::take(
            self.added
                .get_mut()
                .expect("no panic while holding the list"),
        );
        for path in added {
            if let Err(error) = fs_err::remove_file(&path) {
                tracing::debug!(%error, "failed to remove a blob of an unfinished write");
            }
        }
    }
}

/// Creates a staging directory beside `target`, so a rename onto it stays on one file
/// system.
pub(super) fn staging_dir(target: &Path) -> Result<tempfile::TempDir, TransportError> {
    let parent = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}.layermend-"))
        .tempdir_in(&parent)
        .map_err(io_error(parent))
}

/// Writes the `oci-layout` marker, an empty `index.json` and `blobs/sha256`.
pub(super) fn init_layout(root: &Path) -> Result<(), TransportError> {
    let blobs = root.join("blobs/sha256");
    fs_err::create_dir_all(&blobs).map_err(io_error(&blobs))?;
    let marker = root.join("oci-layout");
    if !marker.exists() {
        fs_err::write(&marker, LAYOUT_MARKER).map_err(io_error(&marker))?;
    }
    let index = root.join("index.json");
    if !index.exists() {
        let empty =
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
        fs_err::write(&index, empty.to_string()).map_err(io_error(&index))?;
    }
    Ok(())
}

/// Replaces a file through a temporary file in the same directory and a rename.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TransportError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io_error(dir))?;
    io::Write::write_all(&mut temp, bytes).map_err(io_error(temp.path()))?;
    temp.as_file().sync_all().map_err(io_error(temp.path()))?;
    temp.persist(path).map_err(|error| TransportError::Io {
        path: path.to_owned(),
        source: error.error,
    })?;
    Ok(())
}

fn read_index(dir: &Path) -> Result<Value, TransportError> {
    let invalid = |reason: &str| TransportError::InvalidLayout {
        path: dir.to_owned(),
        reason: reason.to_owned(),
    };
    if !dir.join("oci-layout").is_file() {
        return Err(invalid("it has no oci-layout file"));
    }
    let path = dir.join("index.json");
    let text = fs_err::read(&path).map_err(io_error(&path))?;
    let index: Value = serde_json::from_slice(&text).map_err(|source| TransportError::Json {
        path: path.clone(),
        source,
    })?;
    if !index.get("manifests").is_some_and(Value::is_array) {
        return Err(invalid("index.json has no manifests array"));
    }
    Ok(index)
}

pub(super) fn annotation(entry: &Value, key: &str) -> Option<String> {
    entry
        .get("annotations")?
        .get(key)?
        .as_str()
        .map(str::to_owned)
}

/// Whether an entry carries `name` as its tag or its image name, also in the
/// normalized form docker writes (`docker.io/library/debian:12` for `debian:12`).
fn entry_has_name(entry: &Value, name: &str) -> bool {
    if annotation(entry, REF_NAME).as_deref() == Some(name) {
        return true;
    }
    let image_name = annotation(entry, IMAGE_NAME);
    let normalized = crate::reference::Reference::parse(name)
        .ok()
        .map(|reference| reference.to_string());
    image_name.is_some() && (image_name.as_deref() == Some(name) || image_name == normalized)
}

/// Unwraps the transport or registry error a blob reader put inside its `io::Error`.
pub(super) fn read_failure(error: io::Error, layout: &Layout, digest: &Digest) -> TransportError {
    let carries_error = error.get_ref().is_some_and(|inner| {
        inner.is::<TransportError>() || inner.is::<crate::registry::RegistryError>()
    });
    if carries_error {
        let inner = error.into_inner().expect("checked above");
        return match inner.downcast::<TransportError>() {
            Ok(error) => *error,
            Err(other) => TransportError::Registry(
                *other
                    .downcast::<crate::registry::RegistryError>()
                    .expect("checked above"),
            ),
        };
    }
    TransportError::Io {
        path: layout.blob_path(digest),
        source: error,
    }
}

/// An `AsyncRead` that fails at the end of its input unless exactly `size` bytes with
/// digest `digest` were read; the error inside the `io::Error` is a [`TransportError`].
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Option<Hasher>,
    digest: Digest,
    size: u64,
    read: u64,
    path: PathBuf,
}

impl<R> VerifyingReader<R> {
    pub fn new(inner: R, digest: Digest, size: u64, path: PathBuf) -> Self {
        VerifyingReader {
            inner,
            hasher: Some(Hasher::default()),
            digest,
            size,
            read: 0,
            path,
        }
    }

    fn failure(&self, reason: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            TransportError::BlobMismatch {
                path: self.path.clone(),
                digest: self.digest.clone(),
                reason,
            },
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for VerifyingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        futures_util::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let chunk = &buf.filled()[before..];
        this.read += chunk.len() as u64;
        if this.read > this.size {
            // A reader returning an error must not have filled the buffer.
            buf.set_filled(before);
            return Poll::Ready(Err(
                this.failure(format!("it is larger than {} bytes", this.size))
            ));
        }
        let Some(hasher) = this.hasher.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        hasher.update(chunk);
        if chunk.is_empty() {
            let actual = this.hasher.take().expect("checked above").finish();
            if this.read != this.size {
                return Poll::Ready(Err(
                    this.failure(format!("it has {} bytes, not {}", this.read, this.size))
                ));
            }
            if actual != this.digest {
                return Poll::Ready(Err(this.failure(format!("its content has digest {actual}"))));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Reads a whole verified blob from any reader, for tests and small blobs.
#[allow(dead_code)]
pub(super) async fn read_all<R: AsyncRead + Unpin>(mut reader: R) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifying_reader_checks_digest_and_size() {
        let data = b"layer".as_slice();
        let good = VerifyingReader::new(data, Digest::of(data), 5, "x".into());
        assert_eq!(read_all(good).await.unwrap(), data);

        let wrong_digest = VerifyingReader::new(data, Digest::of(b"other"), 5, "x".into());
        let error = read_all(wrong_digest).await.unwrap_err();
        assert!(error.to_string().contains("digest"), "{error}");

        let wrong_size = VerifyingReader::new(data, Digest::of(data), 4, "x".into());
        assert!(read_all(wrong_size).await.is_err());
    }

    #[tokio::test]
    async fn failed_write_leaves_new_layout_absent() {
        let parent = tempfile::tempdir().unwrap();
        let target = parent.path().join("layout");
        {
            let layout = Layout::create(&target, Some("v1".to_owned())).unwrap();
            layout.put_blob_bytes(b"{}").await.unwrap();
            // Dropped without commit.
        }
        assert!(!target.exists());
        assert_eq!(fs_err::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn failed_write_keeps_existing_layout() {
        let parent = tempfile::tempdir().unwrap();
        let target = parent.path().join("layout");
        let layout = Layout::create(&target, Some("v1".to_owned())).unwrap();
        let digest = layout.put_blob_bytes(b"{}").await.unwrap();
        let mut descriptor = Map::new();
        descriptor.insert("digest".into(), Value::String(digest.to_string()));
        let mut names = Map::new();
        names.insert(REF_NAME.into(), Value::String("v1".into()));
        layout.set_entry(descriptor, names);
        layout.commit().unwrap();
        let index_before = fs_err::read(target.join("index.json")).unwrap();

        {
            let layout = Layout::create(&target, Some("v2".to_owned())).unwrap();
            let added = layout.put_blob_bytes(b"{\"a\":1}").await.unwrap();
            assert!(layout.has_blob(&added));
        }
        assert_eq!(
            fs_err::read(target.join("index.json")).unwrap(),
            index_before
        );
        let blobs = fs_err::read_dir(target.join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(blobs, 1);
    }
}
