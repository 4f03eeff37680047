//! Patching an image index or manifest list: every selected platform at the same time,
//! then a new index that keeps every other entry and every annotation.

use std::path::Path;

use futures_util::future::try_join_all;
use serde_json::Value;

use super::manifest::{ManifestJob, PatchContext, parse_descriptor};
use super::reports::Reports;
use super::{
    Event, PatchError, PatchOutcome, PatchSettings, PatchStatus, Phase, PlatformOutcome, Reporter,
    converted_warning, push,
};
use crate::digest::Digest;
use crate::image::{DOCKER_MANIFEST_LIST, OCI_INDEX};
use crate::registry::{FetchedManifest, Platform};
use crate::transport::{ImageStore, Location, PutManifest, TransportError};

/// The annotation that marks attestation manifests in indexes written by BuildKit.
const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// Patches the platforms of `top` that `requested` selects (every platform when empty)
/// and writes the new index to the destination `open_destination` opens, under its tag,
/// then commits it. Nothing is written when no platform needs a patch, or in a dry run.
pub async fn patch_index(
    context: &PatchContext<'_>,
    open_destination: &dyn Fn() -> Result<ImageStore, TransportError>,
    top: &FetchedManifest,
    reports: Option<&Reports>,
    requested: &[Platform],
    work_dir: &Path,
    (source_location, destination_location): (&Location, &Location),
) -> Result<PatchOutcome, PatchError> {
    let index: Value =
        serde_json::from_slice(&top.bytes).map_err(|error| PatchError::InvalidManifest {
            digest: top.digest.to_string(),
            reason: format!("not JSON: {error}"),
        })?;
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();

    let mut available = Vec::new();
    let mut selected = Vec::new();
    for (position, entry) in entries.iter().enumerate() {
        let Some(platform) = image_platform(entry) else {
            continue;
        };
        available.push(platform.to_string());
        if requested.is_empty() || requested.iter().any(|want| want.matches(&platform)) {
            let descriptor = parse_descriptor(entry, top, &format!("index entry {position}"))?;
            selected.push((position, platform, descriptor.digest));
        }
    }
    if selected.is_empty() {
        return Err(PatchError::NoMatchingPlatform {
            source_image: source_location.to_string(),
            requested: requested
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            available: if available.is_empty() {
                "none".to_owned()
            } else {
                available.join(", ")
            },
        });
    }
    tracing::debug!(
        platforms = selected.len(),
        entries = entries.len(),
        "patching index"
    );

    // NOTE: the platforms report to one reporter at the same time, so each platform's
    // `Planned` event restarts the progress bar of that transfer for all of them.
    let jobs: Vec<(usize, ManifestJob)> = try_join_all(selected.iter().map(
        |(position, platform, digest)| async move {
            let child = context.source.fetch_manifest(Some(digest)).await?;
            if is_index(&child.media_type) {
                return Err(PatchError::InvalidManifest {
                    digest: top.digest.to_string(),
                    reason: format!("the entry for {platform} is itself an index"),
                });
            }
            let dir = work_dir.join(format!("platform-{position}"));
            let reporter = PlatformReporter {
                inner: context.reporter,
                platform,
            };
            let platform_context = PatchContext {
                settings: context.settings,
                source: context.source,
                downloads: context.downloads,
                reporter: &reporter,
            };
            let job = platform_context
                .patch_manifest(&child, Some(platform.clone()), reports, &dir)
                .await?;
            Ok::<_, PatchError>((*position, job))
        },
    ))
    .await?;

    let mut outcome = merge_outcomes(
        &jobs,
        context.settings,
        top,
        source_location,
        destination_location,
    );
    if jobs.iter().all(|(_, job)| job.patched.is_none()) {
        return Ok(outcome);
    }

    context.reporter.event(Event::Phase(Phase::Push));
    let store = open_destination()?;
    let destination = &store;
    let mut changes: Vec<(usize, PutManifest)> = Vec::new();
    let mut converted = false;
    for (position, entry) in entries.iter().enumerate() {
        let job = jobs
            .iter()
            .find(|(at, _)| *at == position)
            .map(|(_, job)| job);
        let put = match job.and_then(|job| Some((job, job.patched.as_ref()?))) {
            Some((job, patched)) => {
                let put = context
                    .write_patched(destination, &job.image, patched, false)
                    .await?;
                if let Some(platform) = outcome
                    .platforms
                    .iter_mut()
                    .find(|p| p.source_digest == job.image.manifest.digest.to_string())
                {
                    platform.manifest_digest = Some(put.digest.to_string());
                }
                put
            }
            None => copy_entry(context, destination, top, entry, position).await?,
        };
        converted |= put.converted;
        changes.push((position, put));
    }
    let new_index = rewrite_index(&top.bytes, &index, &changes);
    let put = destination
        .put_manifest(&new_index, &top.media_type, true)
        .await?;
    if converted || put.converted {
        let warning = converted_warning(destination_location);
        context.reporter.event(Event::Warning(warning.clone()));
        outcome.warnings.push(warning);
    }
    store.commit()?;
    outcome.status = PatchStatus::Patched;
    outcome.manifest_digest = Some(put.digest.to_string());
    Ok(outcome)
}

/// Forwards one platform's events, naming the platform in its warnings, because the
/// platforms of an index share one reporter and their packages may differ.
struct PlatformReporter<'a> {
    inner: &'a dyn Reporter,
    platform: &'a Platform,
}

impl Reporter for PlatformReporter<'_> {
    fn event(&self, event: Event) {
        match event {
            Event::Warning(message) => self
                .inner
                .event(Event::Warning(format!("{}: {message}", self.platform))),
            other => self.inner.event(other),
        }
    }
}

/// The platform of an image entry; `None` for attestations, entries without a platform
/// and `unknown/unknown` entries, which the index keeps unchanged.
fn image_platform(entry: &Value) -> Option<Platform> {
    let is_attestation = entry
        .get("annotations")
        .and_then(|annotations| annotations.get(REFERENCE_TYPE_ANNOTATION))
        .is_some();
    if is_attestation {
        return None;
    }
    let platform = entry.get("platform")?;
    let text = |key: &str| platform.get(key).and_then(Value::as_str).map(str::to_owned);
    let platform = Platform {
        os: text("os")?,
        architecture: text("architecture")?,
        variant: text("variant").filter(|variant| !variant.is_empty()),
    };
    (platform.os != "unknown" || platform.architecture != "unknown").then_some(platform)
}

/// Copies an unpatched entry (another platform, an attestation) with everything it
/// references. A registry source and destination in one repository find it all present.
async fn copy_entry(
    context: &PatchContext<'_>,
    destination: &ImageStore,
    top: &FetchedManifest,
    entry: &Value,
    position: usize,
) -> Result<PutManifest, PatchError> {
    let descriptor = parse_descriptor(entry, top, &format!("index entry {position}"))?;
    let manifest = context
        .source
        .fetch_manifest(Some(&descriptor.digest))
        .await?;
    let value: Value =
        serde_json::from_slice(&manifest.bytes).map_err(|error| PatchError::InvalidManifest {
            digest: manifest.digest.to_string(),
            reason: format!("not JSON: {error}"),
        })?;
    if is_index(&manifest.media_type) {
        // NOTE: a nested index is copied with its children as they are; a destination
        // that converts media types converts only the nested index itself.
        let children = value
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (child_position, child) in children.iter().enumerate() {
            Box::pin(copy_entry(
                context,
                destination,
                &manifest,
                child,
                child_position,
            ))
            .await?;
        }
    } else {
        let mut blobs: Vec<(Digest, u64)> = Vec::new();
        if let Some(config) = value.get("config") {
            let config = parse_descriptor(config, &manifest, "config")?;
            blobs.push((config.digest, config.size));
        }
        for (layer_position, layer) in value
            .get("layers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let layer = parse_descriptor(layer, &manifest, &format!("layer {layer_position}"))?;
            blobs.push((layer.digest, layer.size));
        }
        push::copy_blobs(
            context.source,
            destination,
            blobs.iter().map(|(digest, size)| (digest, *size)),
            context.reporter,
        )
        .await?;
    }
    Ok(destination
        .put_manifest(&manifest.bytes, &manifest.media_type, false)
        .await?)
}

/// Points the changed entries at their new manifests. When the source index is compact
/// JSON (as registries and BuildKit write it), only the changed entries' text is
/// replaced, so every other byte stays as it was; otherwise the index is re-serialized
/// with its keys in their original order.
fn rewrite_index(original: &[u8], index: &Value, changes: &[(usize, PutManifest)]) -> Vec<u8> {
    let mut updated = index.clone();
    let mut text = String::from_utf8_lossy(original).into_owned();
    let mut in_place = true;
    for (position, put) in changes {
        let Some(old_entry) = index.pointer(&format!("/manifests/{position}")) else {
            continue;
        };
        let mut new_entry = old_entry.clone();
        new_entry["digest"] = Value::String(put.digest.to_string());
        new_entry["size"] = Value::from(put.size);
        if new_entry.get("mediaType").is_some() || put.converted {
            new_entry["mediaType"] = Value::String(put.media_type.clone());
        }
        if new_entry == *old_entry {
            continue;
        }
        let old_text = serde_json::to_string(old_entry).expect("JSON values serialize");
        let new_text = serde_json::to_string(&new_entry).expect("JSON values serialize");
        if in_place && text.matches(&old_text).count() == 1 {
            text = text.replacen(&old_text, &new_text, 1);
        } else {
            in_place = false;
        }
        updated["manifests"][*position] = new_entry;
    }
    if in_place {
        text.into_bytes()
    } else {
        serde_json::to_vec(&updated).expect("JSON values serialize")
    }
}

/// Combines the platforms' results; an update several platforms share is listed once.
fn merge_outcomes(
    jobs: &[(usize, ManifestJob)],
    settings: &PatchSettings,
    top: &FetchedManifest,
    source: &Location,
    destination: &Location,
) -> PatchOutcome {
    let mut outcome = jobs[0].1.outcome(settings, source, destination);
    outcome.source_digest = top.digest.to_string();
    outcome.layer_digest = None;
    for (_, job) in &jobs[1..] {
        let other = job.outcome(settings, source, destination);
        if other.status == PatchStatus::Planned {
            outcome.status = PatchStatus::Planned;
        }
        for update in other.updates {
            let known = outcome.updates.iter().any(|u| {
                u.name == update.name
                    && u.arch == update.arch
                    && u.new_version == update.new_version
            });
            if !known {
                outcome.updates.push(update);
            }
        }
        for skipped in other.skipped {
            if !outcome.skipped.iter().any(|s| s.name == skipped.name) {
                outcome.skipped.push(skipped);
            }
        }
        for failed in other.failed {
            if !outcome.failed.iter().any(|f| f.name == failed.name) {
                outcome.failed.push(failed);
            }
        }
        for scripts in other.scripts_not_run {
            if !outcome
                .scripts_not_run
                .iter()
                .any(|s| s.package == scripts.package)
            {
                outcome.scripts_not_run.push(scripts);
            }
        }
        for warning in other.warnings {
            if !outcome.warnings.contains(&warning) {
                outcome.warnings.push(warning);
            }
        }
    }
    outcome.platforms = jobs
        .iter()
        .map(|(_, job)| PlatformOutcome {
            platform: job
                .platform
                .as_ref()
                .map_or_else(String::new, ToString::to_string),
            source_digest: job.image.manifest.digest.to_string(),
            manifest_digest: None,
            layer_digest: job.patched.as_ref().map(|p| p.layer.digest.to_string()),
            updates: job.result.updates.len(),
        })
        .collect();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_index_keeps_other_bytes() {
        let original = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"architecture":"amd64","os":"linux"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":2,"annotations":{"vnd.docker.reference.type":"attestation-manifest"}}],"annotations":{"x":"y"}}"#;
        let index: Value = serde_json::from_slice(original).unwrap();
        let digest = Digest::of(b"new");
        let put = PutManifest {
            digest: digest.clone(),
            size: 9,
            media_type: crate::image::OCI_MANIFEST.to_owned(),
            converted: false,
        };
        let rewritten = rewrite_index(original, &index, &[(0, put)]);
        let text = String::from_utf8(rewritten).unwrap();
        let expected = String::from_utf8(original.to_vec())
            .unwrap()
            .replace("sha256:aa\",\"size\":1", &format!("{digest}\",\"size\":9"));
        assert_eq!(text, expected);
    }

    #[test]
    fn attestations_have_no_platform() {
        let attestation = serde_json::json!({
            "platform": {"os": "unknown", "architecture": "unknown"},
            "annotations": {"vnd.docker.reference.type": "attestation-manifest"}
        });
        assert!(image_platform(&attestation).is_none());
        let arm = serde_json::json!({"platform": {"os": "linux", "architecture": "arm64"}});
        assert_eq!(image_platform(&arm).unwrap().to_string(), "linux/arm64");
    }
}
