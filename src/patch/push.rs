//! Sending a patched image's blobs to the destination.

use std::path::Path;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::manifest::{PatchedImage, SourceImage};
use super::{Event, PatchError, Reporter};
use crate::digest::Digest;
use crate::registry::BlobCopy;
use crate::transport::ImageStore;

/// Blob transfers run at the same time.
const PARALLEL_BLOBS: usize = 3;

/// Puts every blob the patched manifest references into the destination: the source
/// layers (skipped when present, mounted or streamed otherwise), the new layer and the
/// new config. The caller puts the manifest afterwards.
pub async fn push_blobs(
    source: &ImageStore,
    destination: &ImageStore,
    image: &SourceImage,
    patched: &PatchedImage,
    reporter: &dyn Reporter,
) -> Result<(), PatchError> {
    copy_blobs(
        source,
        destination,
        image.layers.iter().map(|layer| (&layer.digest, layer.size)),
        reporter,
    )
    .await?;
    let layer = &patched.layer;
    put_file(
        destination,
        &layer.path,
        &layer.digest,
        layer.size,
        reporter,
    )
    .await?;
    put_file(
        destination,
        &patched.config_path,
        &patched.config_digest,
        patched.config_size,
        reporter,
    )
    .await
}

/// Copies blobs from `source` to `destination`, [`PARALLEL_BLOBS`] at a time.
pub async fn copy_blobs<'a>(
    source: &ImageStore,
    destination: &ImageStore,
    blobs: impl Iterator<Item = (&'a Digest, u64)>,
    reporter: &dyn Reporter,
) -> Result<(), PatchError> {
    stream::iter(blobs)
        .map(|(digest, size)| async move {
            let copy = destination.copy_blob_from(source, digest, size).await?;
            reporter.event(Event::BlobPushed {
                digest: digest.to_string(),
                bytes: size,
                existed: copy == BlobCopy::AlreadyPresent,
            });
            Ok::<_, PatchError>(())
        })
        .buffer_unordered(PARALLEL_BLOBS)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn put_file(
    destination: &ImageStore,
    path: &Path,
    digest: &Digest,
    size: u64,
    reporter: &dyn Reporter,
) -> Result<(), PatchError> {
    let sent = destination.put_blob_file(path, digest, size).await?;
    reporter.event(Event::BlobPushed {
        digest: digest.to_string(),
        bytes: size,
        existed: !sent,
    });
    Ok(())
}
