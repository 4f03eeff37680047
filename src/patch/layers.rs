//! Reading the source image's layers into the merged rootfs view.

use futures_util::stream::{self, StreamExt, TryStreamExt};
use tokio_util::io::SyncIoBridge;

use super::{Event, PatchError, Reporter};
use crate::registry::Descriptor;
use crate::rootfs::{self, Compression, LayerScan, Selector};
use crate::transport::ImageStore;

/// Layers downloaded at the same time. Two keep both cores busy decompressing while a
/// third transfer waits on the network.
const PARALLEL_LAYERS: usize = 3;

/// Selects the files that the patch of any supported distribution reads from an image.
pub fn patch_selector() -> Selector {
    let paths = [
        "etc/os-release",
        "usr/lib/os-release",
        "etc/debian_version",
        "etc/alpine-release",
        "var/lib/dpkg/status",
        "var/lib/dpkg/diversions",
        "var/lib/dpkg/arch",
        "var/lib/dpkg/info/format",
        "etc/apt/trusted.gpg",
        "etc/apk/arch",
        "etc/apk/repositories",
    ];
    let dirs = [
        "etc/apt/sources.list.d",
        "etc/apt/trusted.gpg.d",
        "etc/apt/keyrings",
        "usr/share/keyrings",
        "var/lib/dpkg/status.d",
        "lib/apk/db",
        "etc/apk",
    ];
    let info_suffixes = [".list", ".md5sums", ".conffiles"];
    Selector {
        capture_paths: paths
            .iter()
            .map(|p| (*p).to_owned())
            .chain(["etc/apt/sources.list".to_owned()])
            .collect(),
        capture_dirs: dirs.iter().map(|d| (*d).to_owned()).collect(),
        capture_suffix_dirs: vec![(
            "var/lib/dpkg/info".to_owned(),
            info_suffixes.iter().map(|s| (*s).to_owned()).collect(),
        )],
        // Conffiles live under /etc, and their MD5 shows whether the admin changed them.
        hash_dirs: vec!["etc".to_owned()],
    }
}

/// Streams every layer once, scanning up to [`PARALLEL_LAYERS`] at a time, and returns
/// the scans bottom-up, for [`rootfs::merge_layers`].
pub async fn read_layers(
    source: &ImageStore,
    layers: &[Descriptor],
    reporter: &dyn Reporter,
) -> Result<Vec<LayerScan>, PatchError> {
    let selector = patch_selector();
    let scans: Vec<LayerScan> = stream::iter(layers.iter().cloned())
        .map(|layer| {
            let selector = selector.clone();
            async move {
                let scan = scan_one(source, &layer, selector).await?;
                reporter.event(Event::LayerRead {
                    digest: layer.digest.to_string(),
                    bytes: layer.size,
                });
                Ok::<_, PatchError>(scan)
            }
        })
        .buffered(PARALLEL_LAYERS)
        .try_collect()
        .await?;
    Ok(scans)
}

async fn scan_one(
    source: &ImageStore,
    layer: &Descriptor,
    selector: Selector,
) -> Result<LayerScan, PatchError> {
    let compression = Compression::from_media_type(&layer.media_type).ok_or_else(|| {
        PatchError::UnsupportedLayer {
            digest: layer.digest.to_string(),
            media_type: layer.media_type.clone(),
        }
    })?;
    let reader = source.open_blob(&layer.digest, layer.size).await?;
    let digest = layer.digest.to_string();
    tokio::task::spawn_blocking(move || {
        let bridge = SyncIoBridge::new(reader);
        rootfs::scan_layer(bridge, compression, &selector)
    })
    .await
    .map_err(|err| PatchError::Internal(format!("layer scan task failed: {err}")))?
    .map_err(|source| PatchError::Layer { digest, source })
}
