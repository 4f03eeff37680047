//! Patching one image manifest: read its layers, build the patch layer, amend config and
//! manifest, and write them to a destination.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::buildkit::{self, BuildkitError};
use super::debian::{self, DebianResult, SharedDownloads};
use super::reports::Reports;
use super::{
    Backend, Distro, EarlierPatch, Event, OUTCOME_SCHEMA_VERSION, PatchError, PatchOutcome,
    PatchSettings, PatchStatus, Phase, Reporter, SkippedPackage, Transfer, alpine, check_report_os,
    earlier_patch, history_time, image_architecture, layers, push,
};
use crate::digest::Digest;
use crate::image::{self, HistoryEntry, PATCH_LABEL, PatchRecord, PatchedPackage};
use crate::layer::BuiltLayer;
use crate::osrelease::OsRelease;
use crate::registry::{Descriptor, FetchedManifest, MAX_CONFIG_SIZE, Platform};
use crate::report::{Report, ReportFormat};
use crate::rootfs;
use crate::transport::{ImageStore, Location, PutManifest};

/// The inputs every platform of one run shares.
pub struct PatchContext<'a> {
    pub settings: &'a PatchSettings,
    pub source: &'a ImageStore,
    pub downloads: &'a SharedDownloads,
    pub reporter: &'a dyn Reporter,
}

/// A source image manifest with its config.
#[derive(Clone)]
pub struct SourceImage {
    pub manifest: FetchedManifest,
    pub config_bytes: Vec<u8>,
    pub layers: Vec<Descriptor>,
}

/// The new blobs and manifest of a patched image, not yet written anywhere.
pub struct PatchedImage {
    pub layer: BuiltLayer,
    pub config_path: PathBuf,
    pub config_digest: Digest,
    pub config_size: u64,
    pub manifest: Vec<u8>,
}

/// The result of patching one manifest.
pub struct ManifestJob {
    /// The image the patch extends: the source, or the source without its earlier patch
    /// layer when the new layer replaces that one. The manifest digest is the source's.
    pub image: SourceImage,
    pub platform: Option<Platform>,
    pub os: OsRelease,
    pub architecture: Option<String>,
    pub report_format: Option<ReportFormat>,
    pub result: DebianResult,
    pub patched: Option<PatchedImage>,
}

impl ManifestJob {
    /// Returns the outcome of this job alone, before anything is written. A dry run
    /// that found updates is `Planned`.
    pub fn outcome(
        &self,
        settings: &PatchSettings,
        source: &Location,
        destination: &Location,
    ) -> PatchOutcome {
        let status = if settings.dry_run && !self.result.updates.is_empty() {
            PatchStatus::Planned
        } else {
            PatchStatus::NothingToPatch
        };
        PatchOutcome {
            schema_version: OUTCOME_SCHEMA_VERSION,
            status,
            source: source.to_string(),
            source_digest: self.image.manifest.digest.to_string(),
            destination: destination.to_string(),
            manifest_digest: None,
            layer_digest: self.patched.as_ref().map(|p| p.layer.digest.to_string()),
            os: self.os.display_name(),
            distro: Distro {
                id: self.os.id.clone(),
                version_id: self.os.version_id.clone(),
            },
            architecture: self.architecture.clone(),
            report_format: self.report_format.map_or("", ReportFormat::name).to_owned(),
            updates: self.result.updates.clone(),
            skipped: self.result.skipped.clone(),
            failed: self.result.failed.clone(),
            scripts_not_run: self.result.scripts_not_run.clone(),
            warnings: self.result.warnings.clone(),
            platforms: Vec::new(),
        }
    }
}

impl PatchContext<'_> {
    /// Patches one image manifest: Debian and Debian-based images with dpkg, Alpine
    /// images with apk. `platform` comes from the index entry; without it the config's
    /// `os` and `architecture` pick the report from a directory. Without reports every
    /// package with a newer version is updated (Debian only). The layer and config are
    /// written into `work_dir`. A layermend patch layer on top is replaced.
    pub async fn patch_manifest(
        &self,
        manifest: &FetchedManifest,
        platform: Option<Platform>,
        reports: Option<&Reports>,
        work_dir: &Path,
    ) -> Result<ManifestJob, PatchError> {
        fs_err::create_dir_all(work_dir).map_err(|source| PatchError::WorkDir {
            path: work_dir.to_owned(),
            source,
        })?;
        let image = self.read_image(manifest).await?;
        let platform = platform.or_else(|| config_platform(&image.config_bytes));
        // The engine builds only for its own platform: fail before resolving packages.
        if let Backend::BuildKit(endpoint) = &self.settings.backend
            && !self.settings.dry_run
        {
            buildkit::check_platform(endpoint, platform.as_ref()).await?;
        }
        let report = reports
            .map(|reports| reports.for_platform(platform.as_ref()))
            .transpose()?;

        self.reporter.event(Event::Phase(Phase::ReadLayers));
        self.reporter.event(Event::Planned {
            transfer: Transfer::Layers,
            items: image.layers.len(),
            bytes: image.layers.iter().map(|layer| layer.size).sum(),
        });
        let scans = layers::read_layers(self.source, &image.layers, self.reporter).await?;
        let earlier = earlier_patch(&image.config_bytes, image.layers.len(), self.reporter)?;
        let base_rootfs = earlier
            .as_ref()
            .map(|earlier| rootfs::merge_layers(scans[..earlier.layer_index].iter().cloned()));
        let rootfs = rootfs::merge_layers(scans);
        let os = OsRelease::from_rootfs(&rootfs).ok_or(PatchError::NoOsRelease)?;
        if let Some(report) = report {
            check_report_os(report, &os)?;
        }
        let created = history_time(&image.config_bytes);
        let architecture = image_architecture(&image.config_bytes);
        let mut result = if os.is_like("alpine") {
            if let Backend::BuildKit(_) = self.settings.backend {
                return Err(BuildkitError::UnsupportedOs {
                    distribution: os.display_name(),
                }
                .into());
            }
            let Some(report) = report else {
                return Err(PatchError::ReportRequired {
                    os: os.display_name(),
                });
            };
            alpine::patch_alpine(
                &alpine::AlpineInputs {
                    rootfs: &rootfs,
                    report,
                    settings: self.settings,
                    work_dir,
                    platform_arch: architecture.clone(),
                    created_epoch: created.epoch,
                },
                self.reporter,
            )
            .await?
        } else if os.is_like("debian") {
            // The BuildKit backend needs only the plan: resolving without downloading is
            // what a dry run does.
            let resolve_only;
            let settings = match &self.settings.backend {
                Backend::BuildKit(_) => {
                    resolve_only = PatchSettings {
                        dry_run: true,
                        ..self.settings.clone()
                    };
                    &resolve_only
                }
                _ => self.settings,
            };
            debian::patch_debian(
                &debian::DebianInputs {
                    rootfs: &rootfs,
                    base_rootfs: base_rootfs.as_ref(),
                    previous: earlier
                        .as_ref()
                        .map_or(&[][..], |earlier| &earlier.record.packages),
                    report,
                    settings,
                    work_dir,
                    platform_arch: architecture.clone(),
                    created_epoch: created.epoch,
                    downloads: self.downloads,
                },
                self.reporter,
            )
            .await?
        } else {
            return Err(PatchError::UnsupportedOs {
                os: os.display_name(),
            });
        };
        if let Some(report) = report {
            add_unfixable(&mut result, report);
        }
        let endpoint = self.buildkit_endpoint(&os, &mut result);
        // The new layer replaces the earlier patch layer: the image to extend is the one
        // without it.
        let image = match (&earlier, result.layer.is_some() || endpoint.is_some()) {
            (Some(earlier), true) => without_top_layer(&image, earlier)?,
            _ => image,
        };
        let mut created_by = format!(
            "layermend patch: {} package(s) updated without running maintainer scripts",
            result.updates.len()
        );
        if let Some(endpoint) = endpoint {
            self.reporter.event(Event::Phase(Phase::BuildLayer));
            let layer =
                buildkit::build_layer(endpoint, self.source, &image, &result.updates, work_dir)
                    .await?;
            result.layer = Some(layer);
            result.scripts_not_run.clear();
            created_by = format!(
                "layermend patch: {} package(s) updated with apt-get in a BuildKit build",
                result.updates.len()
            );
        }
        let patched = result
            .layer
            .as_ref()
            .map(|layer| {
                amend(
                    &image,
                    layer,
                    &result,
                    created_by,
                    created.rfc3339,
                    work_dir,
                )
            })
            .transpose()?;
        Ok(ManifestJob {
            image,
            platform,
            os,
            architecture,
            report_format: report.and_then(|report| report.format),
            result,
            patched,
        })
    }

    /// Returns the engine to build the layer on: always with `--backend buildkit` when
    /// there is something to install, and with `--backend auto` when the in-process
    /// build skipped maintainer scripts or triggers, which it names in a warning.
    fn buildkit_endpoint<'s>(
        &'s self,
        os: &OsRelease,
        result: &mut DebianResult,
    ) -> Option<&'s buildkit::Endpoint> {
        if self.settings.dry_run || result.updates.is_empty() || !os.is_like("debian") {
            return None;
        }
        match &self.settings.backend {
            Backend::InProcess => None,
            Backend::BuildKit(endpoint) => Some(endpoint),
            Backend::Auto(_) if result.scripts_not_run.is_empty() => None,
            Backend::Auto(endpoint) => {
                let names: Vec<&str> = result
                    .scripts_not_run
                    .iter()
                    .map(|skipped| skipped.package.as_str())
                    .collect();
                // NOTE: every update is installed again in BuildKit, also those without
                // scripts, because one layer cannot come from both backends.
                let warning = format!(
                    "{} have maintainer scripts or triggers that the in-process build does \
                     not run; installing every update with apt-get in a BuildKit build on \
                     {endpoint} instead",
                    names.join(", ")
                );
                self.reporter.event(Event::Warning(warning.clone()));
                result.warnings.push(warning);
                Some(endpoint)
            }
        }
    }

    /// Reads an image manifest's descriptors and its config.
    pub async fn read_image(&self, manifest: &FetchedManifest) -> Result<SourceImage, PatchError> {
        let (config, layers) = parse_image_manifest(manifest)?;
        if config.size > MAX_CONFIG_SIZE {
            return Err(invalid(
                manifest,
                format!(
                    "config {} has {} bytes, more than the {MAX_CONFIG_SIZE} allowed",
                    config.digest, config.size
                ),
            ));
        }
        let config_bytes = self.source.read_blob(&config.digest, config.size).await?;
        Ok(SourceImage {
            manifest: manifest.clone(),
            config_bytes,
            layers,
        })
    }

    /// Writes a patched image: the source layers, the new layer and config, then the
    /// manifest, tagged or by digest.
    pub async fn write_patched(
        &self,
        destination: &ImageStore,
        image: &SourceImage,
        patched: &PatchedImage,
        tagged: bool,
    ) -> Result<PutManifest, PatchError> {
        // The source layers count too: they are mounted or copied when the destination
        // is another repository, and only checked for when it is the same one.
        self.reporter.event(Event::Planned {
            transfer: Transfer::Push,
            items: image.layers.len() + 2,
            bytes: image.layers.iter().map(|l| l.size).sum::<u64>()
                + patched.layer.size
                + patched.config_size,
        });
        push::push_blobs(self.source, destination, image, patched, self.reporter).await?;
        Ok(destination
            .put_manifest(&patched.manifest, &image.manifest.media_type, tagged)
            .await?)
    }
}

/// Lists the reported packages whose vulnerabilities have no fixed version as skipped,
/// so a run with nothing fixable says why.
fn add_unfixable(result: &mut DebianResult, report: &Report) {
    for vulnerability in &report.unfixable {
        let name = &vulnerability.package;
        let known = result.updates.iter().any(|u| &u.name == name)
            || result.skipped.iter().any(|s| &s.name == name)
            || result.failed.iter().any(|f| &f.name == name);
        if !known {
            result.skipped.push(SkippedPackage {
                name: name.clone(),
                reason: "the report names no fixed version".to_owned(),
            });
        }
    }
}

/// Returns the image without its top layer: manifest, config (diff_id, history entry,
/// patch label) and layer list. The manifest digest stays the source's.
fn without_top_layer(
    image: &SourceImage,
    earlier: &EarlierPatch,
) -> Result<SourceImage, PatchError> {
    let config = image::remove_top_layer_from_config(
        &image.config_bytes,
        &earlier.record.diff_id,
        &[PATCH_LABEL.to_owned()],
    )?;
    let manifest = image::remove_top_layer_from_manifest(&image.manifest.bytes)?;
    let mut base = image.clone();
    base.config_bytes = config;
    base.manifest.bytes = manifest.into();
    base.layers.truncate(earlier.layer_index);
    Ok(base)
}

/// Amends config and manifest for the new layer and writes the config into `work_dir`.
fn amend(
    image: &SourceImage,
    layer: &BuiltLayer,
    result: &DebianResult,
    created_by: String,
    created: String,
    work_dir: &Path,
) -> Result<PatchedImage, PatchError> {
    let record = PatchRecord {
        diff_id: layer.diff_id.clone(),
        packages: result
            .updates
            .iter()
            .map(|u| PatchedPackage {
                name: u.name.clone(),
                from_version: u.installed_version.clone().unwrap_or_default(),
                to_version: u.new_version.clone(),
            })
            .collect(),
    };
    let history = HistoryEntry {
        created,
        created_by,
        comment: result
            .updates
            .iter()
            .map(|u| format!("{} {}", u.name, u.new_version))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let config = image::append_layer_to_config(
        &image.config_bytes,
        &layer.diff_id,
        &history,
        &[(PATCH_LABEL.to_owned(), record.to_label_value())],
    )?;
    let config_digest = Digest::of(&config);
    let manifest = image::append_layer_to_manifest(
        &image.manifest.bytes,
        (&layer.digest, layer.size),
        (&config_digest, config.len() as u64),
        &[],
    )?;
    let config_path = work_dir.join("config.json");
    fs_err::write(&config_path, &config).map_err(|source| PatchError::WorkDir {
        path: config_path.clone(),
        source,
    })?;
    Ok(PatchedImage {
        layer: layer.clone(),
        config_path,
        config_digest,
        config_size: config.len() as u64,
        manifest,
    })
}

/// Returns the platform an image config records.
pub(super) fn config_platform(config: &[u8]) -> Option<Platform> {
    let value: Value = serde_json::from_slice(config).ok()?;
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    Some(Platform {
        os: text("os")?,
        architecture: text("architecture")?,
        variant: text("variant").filter(|v| !v.is_empty()),
    })
}

fn invalid(manifest: &FetchedManifest, reason: String) -> PatchError {
    PatchError::InvalidManifest {
        digest: manifest.digest.to_string(),
        reason,
    }
}

/// Reads the config and layer descriptors of an image manifest.
fn parse_image_manifest(
    manifest: &FetchedManifest,
) -> Result<(Descriptor, Vec<Descriptor>), PatchError> {
    let value: Value = serde_json::from_slice(&manifest.bytes)
        .map_err(|error| invalid(manifest, format!("not JSON: {error}")))?;
    let config = value
        .get("config")
        .ok_or_else(|| invalid(manifest, "it has no config descriptor".to_owned()))
        .and_then(|config| parse_descriptor(config, manifest, "config"))?;
    let layers = value
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(manifest, "it has no layers array".to_owned()))?
        .iter()
        .enumerate()
        .map(|(i, layer)| parse_descriptor(layer, manifest, &format!("layer {i}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((config, layers))
}

/// Parses a content descriptor (`digest`, `size`, `mediaType`).
pub fn parse_descriptor(
    value: &Value,
    manifest: &FetchedManifest,
    what: &str,
) -> Result<Descriptor, PatchError> {
    Descriptor::from_json(value)
        .map_err(|reason| invalid(manifest, format!("{what} descriptor {reason}")))
}
