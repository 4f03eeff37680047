//! The patch: from a source image and a report to a pushed image with one more layer.

mod alpine;
mod debian;
mod events;
mod layers;
mod outcome;
mod push;

use std::path::PathBuf;
use std::time::Duration;

use crate::deb::repo::MirrorRewrite;
use crate::digest::Digest;
use crate::image::{self, HistoryEntry, ImageError, PATCH_LABEL, PatchRecord, PatchedPackage};
use crate::osrelease::OsRelease;
use crate::reference::{self, Reference, ReferenceError};
use crate::registry::auth::AuthEnv;
use crate::registry::{
    InvalidPlatform, Platform, RegistryClient, RegistryError, RegistryOptions, ResolvedImage,
};
use crate::report::{Report, ReportError, ReportFormat};
use crate::rootfs::{self, ScanError};

pub use events::{Event, NoReporter, Phase, Reporter, Transfer};
pub use outcome::{
    Distro, FailedPackage, OUTCOME_SCHEMA_VERSION, PackageUpdate, PatchOutcome, PatchStatus,
    ScriptsNotRun, SkippedPackage,
};

/// Everything a patch needs, resolved from flags, environment and files by the caller.
#[derive(Debug, Clone)]
pub struct PatchSettings {
    /// The source image reference.
    pub image: String,
    /// The scanner report; `None` updates every installed package that has a newer
    /// version, as `apt-get upgrade` would.
    pub report: Option<PathBuf>,
    /// The report's format; `None` detects it from the content.
    pub scanner: Option<ReportFormat>,
    /// Resolve the updates and stop before downloading packages or pushing.
    pub dry_run: bool,
    /// A directory of verified package files named by SHA-256, shared between patches;
    /// `None` keeps downloads in the work directory only.
    pub package_cache: Option<PathBuf>,
    /// `-t`: a bare tag or a full reference for the result.
    pub tag: Option<String>,
    /// Appended to the source tag as `TAG-SUFFIX` when `tag` is `None`.
    pub tag_suffix: String,
    /// Patch what can be patched when some reported packages cannot be.
    pub ignore_errors: bool,
    /// The limit for the whole patch.
    pub timeout: Duration,
    /// `os/arch[/variant]` for multi-platform images; `None` means the host's.
    pub platform: Option<String>,
    /// Registry hosts reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// PEM files with extra CA certificates.
    pub ca_files: Vec<PathBuf>,
    /// Repository base URL replacements.
    pub repo_mirrors: Vec<MirrorRewrite>,
    /// Accept apk indexes with a missing, bad or untrusted signature.
    pub allow_untrusted_repo: bool,
    /// Where downloads and the new layer go; `None` for a temporary directory.
    pub work_dir: Option<PathBuf>,
    /// One-line apt sources (`deb [signed-by=FILE] URI SUITE COMPONENT…`) used instead of
    /// the image's; `signed-by` files are read on the host.
    pub apt_sources: Vec<String>,
    /// Host keyring files trusted for every repository.
    pub keyrings: Vec<PathBuf>,
}

/// A patch that failed; [`PatchError::is_user_error`] tells bad input from failures.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Platform(#[from] InvalidPlatform),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("failed to read layer {digest}")]
    Layer {
        digest: String,
        #[source]
        source: ScanError,
    },
    #[error(
        "layer {digest} has media type {media_type:?}, which is not a tar layer \
         (plain, gzip or zstd)"
    )]
    UnsupportedLayer { digest: String, media_type: String },
    #[error(
        "the image has no /etc/os-release or /usr/lib/os-release, so its distribution is \
         unknown\nhint: only Debian, Ubuntu and Alpine images can be patched"
    )]
    NoOsRelease,
    #[error("{os} images are not supported; supported: Debian, Debian-based and Alpine")]
    UnsupportedOs { os: String },
    #[error(
        "{os} images are patched from a report only\n\
         hint: pass a Trivy report with -r; updating every package works for Debian and Ubuntu"
    )]
    ReportRequired { os: String },
    #[error(
        "the report is for {report_os}, but the image is {image_os}\n\
         hint: scan this image and pass that report"
    )]
    ReportOsMismatch { report_os: String, image_os: String },
    #[error(transparent)]
    Debian(#[from] debian::DebianError),
    #[error(transparent)]
    Alpine(#[from] alpine::AlpineError),
    #[error("failed to use the work directory {path}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the patch did not finish within {}\nhint: raise --timeout",
        humantime::format_duration(*limit)
    )]
    TimedOut { limit: Duration },
    #[error("internal error: {0}")]
    Internal(String),
}

impl PatchError {
    /// Whether the error comes from the user's input (flags, reference, report) rather
    /// than from a failure while reading or writing.
    pub fn is_user_error(&self) -> bool {
        match self {
            PatchError::Reference(_)
            | PatchError::Report(_)
            | PatchError::Platform(_)
            | PatchError::NoOsRelease
            | PatchError::UnsupportedOs { .. }
            | PatchError::ReportRequired { .. }
            | PatchError::ReportOsMismatch { .. } => true,
            PatchError::Registry(err) => matches!(
                err,
                RegistryError::NotFound { .. }
                    | RegistryError::Unauthorized { .. }
                    | RegistryError::Denied { .. }
                    | RegistryError::CaFile { .. }
                    | RegistryError::CaFileEmpty { .. }
            ),
            PatchError::Debian(err) => err.is_user_error(),
            PatchError::Alpine(err) => err.is_user_error(),
            _ => false,
        }
    }
}

/// Patches the image `settings` names and pushes the result, within `settings.timeout`.
///
/// Nothing is pushed unless every step before the push succeeded, and the manifest is
/// pushed only after every blob it references is in the destination repository.
pub async fn patch(
    settings: &PatchSettings,
    reporter: &dyn Reporter,
) -> Result<PatchOutcome, PatchError> {
    match tokio::time::timeout(settings.timeout, run(settings, reporter)).await {
        Ok(result) => result,
        Err(_) => Err(PatchError::TimedOut {
            limit: settings.timeout,
        }),
    }
}

async fn run(
    settings: &PatchSettings,
    reporter: &dyn Reporter,
) -> Result<PatchOutcome, PatchError> {
    let source = Reference::parse(&settings.image)?;
    let destination =
        reference::destination(&source, settings.tag.as_deref(), &settings.tag_suffix)?;
    let report = settings
        .report
        .as_deref()
        .map(|path| Report::from_file(path, settings.scanner))
        .transpose()?;
    let platform = settings
        .platform
        .as_deref()
        .map(str::parse::<Platform>)
        .transpose()?;
    let client = RegistryClient::new(RegistryOptions {
        insecure_registries: settings.insecure_registries.clone(),
        ca_files: settings.ca_files.clone(),
        timeout: Some(settings.timeout),
        auth_env: AuthEnv::from_process_env(),
        ..RegistryOptions::default()
    })?;

    reporter.event(Event::Phase(Phase::ResolveImage));
    let image = client.resolve_image(&source, platform.as_ref()).await?;
    reporter.event(Event::Phase(Phase::ReadLayers));
    reporter.event(Event::Planned {
        transfer: Transfer::Layers,
        items: image.layers.len(),
        bytes: image.layers.iter().map(|layer| layer.size).sum(),
    });
    let scans = layers::read_layers(&client, &source, &image.layers, reporter).await?;
    let earlier = earlier_patch(&image, reporter)?;
    let base_rootfs = earlier
        .as_ref()
        .map(|earlier| rootfs::merge_layers(scans[..earlier.layer_index].iter().cloned()));
    let rootfs = rootfs::merge_layers(scans);
    let os = OsRelease::from_rootfs(&rootfs).ok_or(PatchError::NoOsRelease)?;
    if let Some(report) = &report {
        check_report_os(report, &os)?;
    }
    let work = WorkDir::new(settings.work_dir.as_deref())?;
    let created = history_time(&image.config_bytes);
    let result = if os.is_like("alpine") {
        let Some(report) = &report else {
            return Err(PatchError::ReportRequired {
                os: os.display_name(),
            });
        };
        alpine::patch_alpine(
            &alpine::AlpineInputs {
                rootfs: &rootfs,
                report,
                settings,
                work_dir: work.path(),
                platform_arch: image_architecture(&image.config_bytes),
                created_epoch: created.epoch,
            },
            reporter,
        )
        .await?
    } else if os.is_like("debian") {
        debian::patch_debian(
            &debian::DebianInputs {
                rootfs: &rootfs,
                base_rootfs: base_rootfs.as_ref(),
                previous: earlier
                    .as_ref()
                    .map_or(&[][..], |earlier| &earlier.record.packages),
                report: report.as_ref(),
                settings,
                work_dir: work.path(),
                platform_arch: image_architecture(&image.config_bytes),
                created_epoch: created.epoch,
            },
            reporter,
        )
        .await?
    } else {
        return Err(PatchError::UnsupportedOs {
            os: os.display_name(),
        });
    };

    let mut outcome = PatchOutcome {
        schema_version: OUTCOME_SCHEMA_VERSION,
        status: PatchStatus::NothingToPatch,
        source: source.to_string(),
        source_digest: image.manifest.digest.to_string(),
        destination: destination.to_string(),
        manifest_digest: None,
        layer_digest: None,
        os: os.display_name(),
        distro: Distro {
            id: os.id.clone(),
            version_id: os.version_id.clone(),
        },
        architecture: image_architecture(&image.config_bytes),
        report_format: report
            .as_ref()
            .and_then(|report| report.format)
            .map_or("", ReportFormat::name)
            .to_owned(),
        updates: result.updates,
        skipped: result.skipped,
        failed: result.failed,
        scripts_not_run: result.scripts_not_run,
        warnings: result.warnings,
    };
    if let Some(report) = &report {
        add_unfixable(&mut outcome, report);
    }
    if settings.dry_run && !outcome.updates.is_empty() {
        outcome.status = PatchStatus::Planned;
    }
    let Some(layer) = result.layer else {
        return Ok(outcome);
    };
    // The new layer replaces the earlier patch layer: the image to extend is the one
    // without it.
    let image = match &earlier {
        Some(earlier) => without_top_layer(&image, earlier)?,
        None => image,
    };

    let record = PatchRecord {
        diff_id: layer.diff_id.clone(),
        packages: outcome
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
        created: created.rfc3339,
        created_by: format!(
            "layermend patch: {} package(s) updated without running maintainer scripts",
            outcome.updates.len()
        ),
        comment: outcome
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

    reporter.event(Event::Phase(Phase::Push));
    // The source layers count too: they are mounted or copied when the destination is
    // another repository, and only checked for when it is the same one.
    reporter.event(Event::Planned {
        transfer: Transfer::Push,
        items: image.layers.len() + 2,
        bytes: image.layers.iter().map(|l| l.size).sum::<u64>() + layer.size + config.len() as u64,
    });
    push::push_image(
        &client,
        &source,
        &destination,
        &image,
        &layer,
        &config,
        work.path(),
        reporter,
    )
    .await?;
    let digest = client
        .push_manifest(&destination, &manifest, &image.manifest.media_type)
        .await?;
    outcome.status = PatchStatus::Patched;
    outcome.manifest_digest = Some(digest.to_string());
    outcome.layer_digest = Some(layer.digest.to_string());
    Ok(outcome)
}

/// An earlier layermend patch layer at the top of the image.
struct EarlierPatch {
    record: PatchRecord,
    /// The position of the patch layer, which is the last layer.
    layer_index: usize,
}

/// Finds the layermend patch record of the image. Only a patch layer that is still the
/// top layer is replaced; a record whose layer is gone or has layers above it gives a
/// warning, and the new layer is added on top.
fn earlier_patch(
    image: &ResolvedImage,
    reporter: &dyn Reporter,
) -> Result<Option<EarlierPatch>, PatchError> {
    let Some(found) = image::read_patch_record(&image.config_bytes)? else {
        return Ok(None);
    };
    match found.layer_index {
        Some(index) if index + 1 == image.layers.len() && index > 0 => {
            tracing::debug!(
                layer = index,
                packages = found.record.packages.len(),
                "replacing the earlier patch layer"
            );
            Ok(Some(EarlierPatch {
                record: found.record,
                layer_index: index,
            }))
        }
        _ => {
            reporter.event(Event::Warning(format!(
                "the image carries a layermend patch record for layer {}, which is not its \
                 top layer; the new patch layer is added on top",
                found.record.diff_id
            )));
            Ok(None)
        }
    }
}

/// Returns the image without its top layer: manifest, config (diff_id, history entry,
/// patch label) and layer list.
fn without_top_layer(
    image: &ResolvedImage,
    earlier: &EarlierPatch,
) -> Result<ResolvedImage, PatchError> {
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

/// Lists the reported packages whose vulnerabilities have no fixed version as skipped,
/// so a run with nothing fixable says why.
fn add_unfixable(outcome: &mut PatchOutcome, report: &Report) {
    for vulnerability in &report.unfixable {
        let name = &vulnerability.package;
        let known = outcome.updates.iter().any(|u| &u.name == name)
            || outcome.skipped.iter().any(|s| &s.name == name)
            || outcome.failed.iter().any(|f| &f.name == name);
        if !known {
            outcome.skipped.push(SkippedPackage {
                name: name.clone(),
                reason: "the report names no fixed version".to_owned(),
            });
        }
    }
}

/// Compares the report's OS with the image's. Family must match. Debian releases are
/// numbered by major version and Trivy writes Debian 12 as `12.8`, so only the major
/// versions must match there. Ubuntu (`22.04`) and Alpine (`3.21.0` in both Trivy and
/// os-release) releases are `MAJOR.MINOR`, so both parts must match.
fn check_report_os(report: &Report, os: &OsRelease) -> Result<(), PatchError> {
    let Some(report_os) = &report.os else {
        return Ok(());
    };
    let family_matches = report_os.family == os.id;
    let parts = if os.id == "ubuntu" || os.id == "alpine" {
        2
    } else {
        1
    };
    let release = |version: &str| version.split('.').take(parts).collect::<Vec<_>>().join(".");
    let version_matches =
        os.version_id.is_empty() || release(&report_os.version) == release(&os.version_id);
    if family_matches && version_matches {
        return Ok(());
    }
    Err(PatchError::ReportOsMismatch {
        report_os: format!("{} {}", report_os.family, report_os.version),
        image_os: os.display_name(),
    })
}

/// The time stamp recorded for the new layer.
struct HistoryTime {
    rfc3339: String,
    epoch: u64,
}

/// Uses `SOURCE_DATE_EPOCH` when set, else the source config's `created`, so the same
/// inputs give the same config and manifest digests.
fn history_time(config: &[u8]) -> HistoryTime {
    let from_env = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0));
    let from_config = || {
        serde_json::from_slice::<serde_json::Value>(config)
            .ok()
            .and_then(|v| v.get("created")?.as_str().map(str::to_owned))
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let time = from_env
        .or_else(from_config)
        .unwrap_or(chrono::DateTime::UNIX_EPOCH);
    HistoryTime {
        rfc3339: time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        epoch: time.timestamp().max(0) as u64,
    }
}

/// The image's `architecture` in OCI terms (`amd64`), from its config.
fn image_architecture(config: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(config)
        .ok()?
        .get("architecture")?
        .as_str()
        .map(str::to_owned)
}

/// The directory for downloads and the new layer: the user's, or a temporary one removed
/// on drop.
struct WorkDir {
    _temp: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl WorkDir {
    fn new(requested: Option<&std::path::Path>) -> Result<Self, PatchError> {
        match requested {
            Some(path) => {
                fs_err::create_dir_all(path).map_err(|source| PatchError::WorkDir {
                    path: path.to_owned(),
                    source,
                })?;
                Ok(WorkDir {
                    _temp: None,
                    path: path.to_owned(),
                })
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("layermend-")
                    .tempdir()
                    .map_err(|source| PatchError::WorkDir {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                let path = temp.path().to_owned();
                Ok(WorkDir {
                    _temp: Some(temp),
                    path,
                })
            }
        }
    }

    fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ReportOs;

    fn report_for(family: &str, version: &str) -> Report {
        Report {
            os: Some(ReportOs {
                family: family.to_owned(),
                version: version.to_owned(),
            }),
            ..Report::default()
        }
    }

    #[test]
    fn report_os_accepts_trivy_names() {
        let debian = OsRelease::parse("ID=debian\nVERSION_ID=\"12\"\n");
        let ubuntu = OsRelease::parse("ID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"22.04\"\n");
        assert!(check_report_os(&report_for("debian", "12.8"), &debian).is_ok());
        assert!(check_report_os(&report_for("ubuntu", "22.04"), &ubuntu).is_ok());
        assert!(ubuntu.is_like("debian"));
    }

    #[test]
    fn report_os_rejects_other_release() {
        let ubuntu = OsRelease::parse("ID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"22.04\"\n");
        let debian = OsRelease::parse("ID=debian\nVERSION_ID=\"12\"\n");
        assert!(check_report_os(&report_for("ubuntu", "22.10"), &ubuntu).is_err());
        assert!(check_report_os(&report_for("debian", "11.9"), &debian).is_err());
        assert!(check_report_os(&report_for("debian", "12.8"), &ubuntu).is_err());
    }
}
