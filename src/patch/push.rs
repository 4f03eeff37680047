//! Sending the patched image's blobs to the destination repository.

use std::path::Path;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::{Event, PatchError, Reporter};
use crate::digest::Digest;
use crate::layer::BuiltLayer;
use crate::reference::Reference;
use crate::registry::{BlobCopy, BlobPush, RegistryClient, ResolvedImage};

/// Blob transfers run at the same time.
const PARALLEL_BLOBS: usize = 3;

/// Puts every blob the new manifest references into the destination repository: the
/// source layers (skipped when present, mounted or streamed otherwise), the new layer and
/// the new config. The caller pushes the manifest afterwards.
#[allow(clippy::too_many_arguments)]
pub async fn push_image(
    client: &RegistryClient,
    source: &Reference,
    destination: &Reference,
    image: &ResolvedImage,
    layer: &BuiltLayer,
    config: &[u8],
    work_dir: &Path,
    reporter: &dyn Reporter,
) -> Result<(), PatchError> {
    stream::iter(image.layers.iter())
        .map(|descriptor| async move {
            let copy = client
                .copy_blob(source, destination, &descriptor.digest, descriptor.size)
                .await?;
            reporter.event(Event::BlobPushed {
                digest: descriptor.digest.to_string(),
                bytes: descriptor.size,
                existed: copy == BlobCopy::AlreadyPresent,
            });
            Ok::<_, PatchError>(())
        })
        .buffer_unordered(PARALLEL_BLOBS)
        .try_collect::<Vec<()>>()
        .await?;

    push_file(
        client,
        destination,
        &layer.path,
        &layer.digest,
        layer.size,
        reporter,
    )
    .await?;

    let config_digest = Digest::of(config);
    let config_path = work_dir.join("config.json");
    fs_err::write(&config_path, config).map_err(|source| PatchError::WorkDir {
        path: config_path.clone(),
        source,
    })?;
    push_file(
        client,
        destination,
        &config_path,
        &config_digest,
        config.len() as u64,
        reporter,
    )
    .await
}

async fn push_file(
    client: &RegistryClient,
    destination: &Reference,
    path: &Path,
    digest: &Digest,
    size: u64,
    reporter: &dyn Reporter,
) -> Result<(), PatchError> {
    let pushed = client
        .push_blob_file(destination, path, digest, size)
        .await?;
    reporter.event(Event::BlobPushed {
        digest: digest.to_string(),
        bytes: size,
        existed: pushed == BlobPush::AlreadyPresent,
    });
    Ok(())
}
