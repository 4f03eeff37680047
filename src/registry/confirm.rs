//! The check that the destination has every blob an image manifest references before the
//! manifest is pushed, so a failed upload never leaves a tag on an incomplete image.

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::{RegistryClient, RegistryError, is_index, parse_image_manifest};
use crate::digest::Digest;
use crate::reference::Reference;

/// Existence checks run at the same time.
const PARALLEL_CHECKS: usize = 4;

impl RegistryClient {
    /// Checks that the repository of `target_ref` has the config and every layer of the
    /// image manifest `bytes`. An index is not checked, because its entries are manifests,
    /// not blobs.
    pub(super) async fn confirm_blobs(
        &self,
        target_ref: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<(), RegistryError> {
        if is_index(media_type) {
            return Ok(());
        }
        let (config, layers) = parse_image_manifest(bytes, target_ref)?;
        let digests: Vec<Digest> = std::iter::once(config.digest)
            .chain(layers.into_iter().map(|layer| layer.digest))
            .collect();
        stream::iter(&digests)
            .map(|digest| async move {
                if self.blob_exists(target_ref, digest).await? {
                    Ok(())
                } else {
                    Err(RegistryError::BlobMissing {
                        registry: target_ref.registry.clone(),
                        repository: target_ref.repository.clone(),
                        digest: digest.clone(),
                    })
                }
            })
            .buffer_unordered(PARALLEL_CHECKS)
            .try_collect::<Vec<()>>()
            .await?;
        tracing::debug!(target = %target_ref, blobs = digests.len(), "confirmed manifest blobs");
        Ok(())
    }
}
