//! [`ImageStore`]: the operations a patch needs, for every transport.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::io::AsyncRead;

use super::layout::{Finish, Layout, REF_NAME};
use super::{Location, TransportError, archive, convert};
use crate::digest::Digest;
use crate::image::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use crate::reference::Reference;
use crate::registry::{BlobCopy, BlobPush, FetchedManifest, RegistryClient};

/// A blob being read; it fails at its end unless size and digest match.
pub type BlobRead = Box<dyn AsyncRead + Send + Unpin>;

/// An opened image source or destination.
pub enum ImageStore {
    Registry {
        client: Arc<RegistryClient>,
        reference: Reference,
    },
    /// An OCI layout, or a docker archive unpacked into one.
    Layout(Layout),
}

/// A manifest as a destination stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutManifest {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// Whether Docker media types were rewritten to OCI ones, which changes the digest.
    pub converted: bool,
}

impl ImageStore {
    /// Opens a location to read from. An archive is unpacked into a temporary directory.
    pub fn open_source(
        location: &Location,
        client: &Arc<RegistryClient>,
    ) -> Result<Self, TransportError> {
        Ok(match location {
            Location::Registry(reference) => ImageStore::Registry {
                client: client.clone(),
                reference: reference.clone(),
            },
            Location::OciLayout { dir, tag } => ImageStore::Layout(Layout::open(dir, tag.clone())?),
            Location::DockerArchive { file, reference } => {
                ImageStore::Layout(archive::open(file, reference.clone())?)
            }
        })
    }

    /// Opens a location to write to; nothing becomes visible before [`Self::commit`].
    pub fn open_destination(
        location: &Location,
        client: &Arc<RegistryClient>,
    ) -> Result<Self, TransportError> {
        Ok(match location {
            Location::Registry(reference) => ImageStore::Registry {
                client: client.clone(),
                reference: reference.clone(),
            },
            Location::OciLayout { dir, tag } => {
                ImageStore::Layout(Layout::create(dir, tag.clone())?)
            }
            Location::DockerArchive { file, reference } => {
                ImageStore::Layout(archive::create(file, reference.clone())?)
            }
        })
    }

    /// Whether a manifest written here must use OCI media types.
    fn requires_oci(&self) -> bool {
        matches!(self, ImageStore::Layout(_))
    }

    /// Fetches the top-level manifest or index (`digest` `None`) or one by digest.
    pub async fn fetch_manifest(
        &self,
        digest: Option<&Digest>,
    ) -> Result<FetchedManifest, TransportError> {
        match self {
            ImageStore::Registry { client, reference } => {
                let target = match digest {
                    Some(digest) => reference.with_digest(digest.clone()),
                    None => reference.clone(),
                };
                Ok(client.fetch_manifest(&target).await?)
            }
            ImageStore::Layout(layout) => {
                let (digest, entry_type) = match digest {
                    Some(digest) => (digest.clone(), None),
                    None => {
                        let entry = layout.top_entry()?;
                        let digest = entry
                            .get("digest")
                            .and_then(Value::as_str)
                            .and_then(|text| text.parse().ok())
                            .ok_or_else(|| TransportError::InvalidLayout {
                                path: layout.shown.clone(),
                                reason: "an index.json entry has no valid digest".to_owned(),
                            })?;
                        let media_type = entry
                            .get("mediaType")
                            .and_then(Value::as_str)
                            .map(str::to_owned);
                        (digest, media_type)
                    }
                };
                let bytes = layout.read_blob(&digest).await?;
                let media_type = body_media_type(&bytes).or(entry_type).ok_or_else(|| {
                    TransportError::InvalidLayout {
                        path: layout.shown.clone(),
                        reason: format!(
                            "manifest {digest} is neither an image manifest nor an index"
                        ),
                    }
                })?;
                tracing::debug!(layout = %layout.shown.display(), %digest, media_type, "read manifest");
                Ok(FetchedManifest {
                    bytes: Bytes::from(bytes),
                    media_type,
                    digest,
                })
            }
        }
    }

    /// Reads a small blob whole, such as a config, checked against digest and size.
    pub async fn read_blob(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, TransportError> {
        match self {
            ImageStore::Registry { client, reference } => {
                Ok(client.read_blob(reference, digest, size).await?)
            }
            ImageStore::Layout(layout) => {
                let bytes = layout.read_blob(digest).await?;
                if bytes.len() as u64 != size {
                    return Err(TransportError::BlobMismatch {
                        path: layout.shown.clone(),
                        digest: digest.clone(),
                        reason: format!("it has {} bytes, not {size}", bytes.len()),
                    });
                }
                Ok(bytes)
            }
        }
    }

    /// Opens a blob for streaming.
    pub async fn open_blob(&self, digest: &Digest, size: u64) -> Result<BlobRead, TransportError> {
        Ok(match self {
            ImageStore::Registry { client, reference } => {
                Box::new(client.open_blob(reference, digest, size).await?)
            }
            ImageStore::Layout(layout) => Box::new(layout.open_blob(digest, size).await?),
        })
    }

    pub async fn has_blob(&self, digest: &Digest) -> Result<bool, TransportError> {
        match self {
            ImageStore::Registry { client, reference } => {
                Ok(client.blob_exists(reference, digest).await?)
            }
            ImageStore::Layout(layout) => Ok(layout.has_blob(digest)),
        }
    }

    /// Stores a local file as a blob unless present; returns whether it was sent.
    pub async fn put_blob_file(
        &self,
        path: &Path,
        digest: &Digest,
        size: u64,
    ) -> Result<bool, TransportError> {
        match self {
            ImageStore::Registry { client, reference } => {
                Ok(client.push_blob_file(reference, path, digest, size).await?
                    == BlobPush::Uploaded)
            }
            ImageStore::Layout(layout) => layout.put_blob_file(path, digest, size).await,
        }
    }

    /// Copies a blob from `source` unless present: a registry mounts or streams it, a
    /// layout file is uploaded, and a layout destination receives a verified stream.
    pub async fn copy_blob_from(
        &self,
        source: &ImageStore,
        digest: &Digest,
        size: u64,
    ) -> Result<BlobCopy, TransportError> {
        match (self, source) {
            (
                ImageStore::Registry { client, reference },
                ImageStore::Registry {
                    reference: from, ..
                },
            ) => Ok(client.copy_blob(from, reference, digest, size).await?),
            (ImageStore::Registry { client, reference }, ImageStore::Layout(from)) => {
                let pushed = client
                    .push_blob_file(reference, &from.blob_path(digest), digest, size)
                    .await?;
                Ok(match pushed {
                    BlobPush::AlreadyPresent => BlobCopy::AlreadyPresent,
                    BlobPush::Uploaded => BlobCopy::Streamed,
                })
            }
            (ImageStore::Layout(layout), _) => {
                if layout.has_blob(digest) {
                    return Ok(BlobCopy::AlreadyPresent);
                }
                let reader = source.open_blob(digest, size).await?;
                layout.put_blob_reader(reader, digest).await?;
                Ok(BlobCopy::Streamed)
            }
        }
    }

    /// Stores a manifest or index, under the destination's tag when `tagged`, else by
    /// digest only. A layout receives OCI media types: Docker ones are converted, and the
    /// result says so.
    pub async fn put_manifest(
        &self,
        bytes: &[u8],
        media_type: &str,
        tagged: bool,
    ) -> Result<PutManifest, TransportError> {
        match self {
            ImageStore::Registry { client, reference } => {
                let target = if tagged {
                    reference.clone()
                } else {
                    reference.with_digest(Digest::of(bytes))
                };
                let digest = client.push_manifest(&target, bytes, media_type).await?;
                Ok(PutManifest {
                    digest,
                    size: bytes.len() as u64,
                    media_type: media_type.to_owned(),
                    converted: false,
                })
            }
            ImageStore::Layout(layout) => {
                let converted = self
                    .requires_oci()
                    .then(|| convert::to_oci_media_types(bytes))
                    .flatten();
                let (bytes, media_type, was_converted) = match &converted {
                    Some((converted, new_type)) => (converted.as_slice(), *new_type, true),
                    None => (bytes, media_type, false),
                };
                let digest = layout.put_blob_bytes(bytes).await?;
                if tagged {
                    let mut descriptor = Map::new();
                    descriptor.insert("mediaType".into(), Value::String(media_type.to_owned()));
                    descriptor.insert("digest".into(), Value::String(digest.to_string()));
                    descriptor.insert("size".into(), Value::from(bytes.len() as u64));
                    layout.set_entry(descriptor, naming_annotations(layout));
                }
                tracing::debug!(layout = %layout.shown.display(), %digest, media_type, tagged, "wrote manifest");
                Ok(PutManifest {
                    digest,
                    size: bytes.len() as u64,
                    media_type: media_type.to_owned(),
                    converted: was_converted,
                })
            }
        }
    }

    /// Makes a written layout or archive visible; a registry needs nothing. Dropping a
    /// store without this call leaves the previous content in place.
    pub fn commit(self) -> Result<(), TransportError> {
        match self {
            ImageStore::Registry { .. } => Ok(()),
            ImageStore::Layout(layout) => layout.commit(),
        }
    }
}

fn naming_annotations(layout: &Layout) -> Map<String, Value> {
    let Some(name) = &layout.name else {
        return Map::new();
    };
    if matches!(layout.finish, Finish::Archive(_)) {
        return archive::entry_annotations(name);
    }
    let mut annotations = Map::new();
    annotations.insert(REF_NAME.to_owned(), Value::String(name.clone()));
    annotations
}

/// The media type a manifest body declares, or that its fields imply when it has none.
fn body_media_type(bytes: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    if let Some(media_type) = value.get("mediaType").and_then(Value::as_str) {
        return [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
        ]
        .contains(&media_type)
        .then(|| media_type.to_owned());
    }
    if value.get("manifests").is_some() {
        Some(OCI_INDEX.to_owned())
    } else if value.get("config").is_some() {
        Some(OCI_MANIFEST.to_owned())
    } else {
        None
    }
}
