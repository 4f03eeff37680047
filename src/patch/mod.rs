//! The patch: from a source image and a report to a pushed image with one more layer.

mod alpine;
mod buildkit;
mod debian;
mod events;
mod index;
mod layers;
mod manifest;
mod outcome;
mod push;
mod reports;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::deb::repo::MirrorRewrite;
use crate::image::{self, ImageError, PatchRecord};
use crate::osrelease::OsRelease;
use crate::reference::{self, Reference, ReferenceError};
use crate::registry::auth::AuthEnv;
use crate::registry::{InvalidPlatform, Platform, RegistryClient, RegistryError, RegistryOptions};
use crate::report::{Report, ReportError, ReportFormat};
use crate::rootfs::ScanError;
use crate::transport::{ImageStore, Location, TransportError};

use reports::Reports;

pub use buildkit::{BuildkitError, ClientCertificate, Endpoint, TlsFiles, TlsSettings};
pub use events::{Event, NoReporter, Phase, Reporter, Transfer};
pub use outcome::{
    Distro, FailedPackage, OUTCOME_SCHEMA_VERSION, PackageUpdate, PatchOutcome, PatchStatus,
    PlatformOutcome, ScriptsNotRun, SkippedPackage,
};

/// Everything a patch needs, resolved from flags, environment and files by the caller.
#[derive(Debug, Clone)]
pub struct PatchSettings {
    /// The source image: a registry reference or a transport location such as
    /// `oci:DIR:TAG` or `docker-archive:FILE`.
    pub image: String,
    /// The scanner report, or a directory of reports matched to platforms; `None`
    /// updates every installed package that has a newer version, as `apt-get upgrade`
    /// would.
    pub report: Option<PathBuf>,
    /// The report's format; `None` detects it from the content.
    pub scanner: Option<ReportFormat>,
    /// Resolve the updates and stop before downloading packages or pushing.
    pub dry_run: bool,
    /// A directory of verified package files named by SHA-256, shared between patches;
    /// `None` keeps downloads in the work directory only.
    pub package_cache: Option<PathBuf>,
    /// `-t`: a bare tag, a full reference or a transport location for the result.
    pub tag: Option<String>,
    /// `--oci-dir`: write the result as an OCI layout in this directory.
    pub oci_dir: Option<PathBuf>,
    /// Appended to the source tag as `TAG-SUFFIX` when `tag` is `None`.
    pub tag_suffix: String,
    /// Patch what can be patched when some reported packages cannot be.
    pub ignore_errors: bool,
    /// The limit for the whole patch.
    pub timeout: Duration,
    /// `os/arch[/variant]` values that limit which platforms of an index are patched;
    /// empty means every platform.
    pub platforms: Vec<String>,
    /// Registry hosts reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// PEM files with extra CA certificates.
    pub ca_files: Vec<PathBuf>,
    /// Repository base URL replacements.
    pub repo_mirrors: Vec<MirrorRewrite>,
    /// Accept apk indexes with a missing, bad or untrusted signature.
    pub allow_untrusted_repo: bool,
    /// The directory for downloads and the new layer; `None` for a temporary directory.
    pub work_dir: Option<PathBuf>,
    /// One-line apt sources (`deb [signed-by=FILE] URI SUITE COMPONENT…`) used instead of
    /// the image's; `signed-by` files are read on the host.
    pub apt_sources: Vec<String>,
    /// Host keyring files trusted for every repository.
    pub keyrings: Vec<PathBuf>,
    /// The backend that installs the packages into the new layer.
    pub backend: Backend,
}

/// The backend that installs the resolved packages. Every backend resolves the same
/// versions in-process first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// Unpack the packages in-process, without running maintainer scripts.
    #[default]
    InProcess,
    /// Install the packages with apt-get in a BuildKit build on this Docker engine, so
    /// maintainer scripts and triggers run.
    BuildKit(Endpoint),
    /// Build in-process, and again with BuildKit on this engine when a package has
    /// maintainer scripts or triggers the in-process build skipped.
    Auto(Endpoint),
}

/// A patch that failed. [`PatchError::is_user_error`] separates bad input from failures.
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
    Transport(TransportError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("manifest {digest} is invalid: {reason}")]
    InvalidManifest { digest: String, reason: String },
    #[error(
        "{source_image} has no platform matching {requested}; available: {available}\n\
         hint: pick platforms from the available ones with --platform"
    )]
    NoMatchingPlatform {
        source_image: String,
        requested: String,
        available: String,
    },
    #[error(
        "{source_image} is {platform} only; --platform {requested} matches nothing\n\
         hint: drop --platform, or name the image's platform"
    )]
    SinglePlatformMismatch {
        source_image: String,
        platform: String,
        requested: String,
    },
    #[error(
        "no report in {dir} is for {platform}; reports: {available}\n\
         hint: add a report with that platform's architecture, or limit the platforms \
         with --platform"
    )]
    NoReportForPlatform {
        dir: PathBuf,
        platform: String,
        available: String,
    },
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
    #[error(transparent)]
    Buildkit(#[from] BuildkitError),
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
    /// Tells whether the error comes from the user's input (flags, reference, report) rather
    /// than from a failure while reading or writing.
    pub fn is_user_error(&self) -> bool {
        match self {
            PatchError::Reference(_)
            | PatchError::Report(_)
            | PatchError::Platform(_)
            | PatchError::NoMatchingPlatform { .. }
            | PatchError::SinglePlatformMismatch { .. }
            | PatchError::NoReportForPlatform { .. }
            | PatchError::NoOsRelease
            | PatchError::UnsupportedOs { .. }
            | PatchError::ReportRequired { .. }
            | PatchError::ReportOsMismatch { .. } => true,
            PatchError::Registry(err) => matches!(
                err,
                RegistryError::NotFound { .. }
                    | RegistryError::Unauthorized { .. }
                    | RegistryError::CredentialsRequired { .. }
                    | RegistryError::TokenRejected { .. }
                    | RegistryError::TokenNotAccepted { .. }
                    | RegistryError::Denied { .. }
                    | RegistryError::CaFile { .. }
                    | RegistryError::CaFileEmpty { .. }
            ),
            PatchError::Debian(err) => err.is_user_error(),
            PatchError::Alpine(err) => err.is_user_error(),
            PatchError::Buildkit(err) => matches!(
                err,
                BuildkitError::InvalidAddress { .. }
                    | BuildkitError::UnsupportedOs { .. }
                    | BuildkitError::TlsNeedsTcp { .. }
                    | BuildkitError::TlsFlagMissing { .. }
                    | BuildkitError::TlsFileUnreadable { .. }
                    | BuildkitError::TlsFileInvalid { .. }
                    | BuildkitError::ForeignPlatform { .. }
            ),
            PatchError::Transport(err) => err.is_user_error(),
            _ => false,
        }
    }
}

impl From<TransportError> for PatchError {
    fn from(error: TransportError) -> Self {
        match error {
            TransportError::Registry(error) => PatchError::Registry(error),
            TransportError::Reference(error) => PatchError::Reference(error),
            other => PatchError::Transport(other),
        }
    }
}

/// Patches the image `settings` names and writes the result, within `settings.timeout`.
///
/// Nothing is written unless every step before it succeeded, and nothing at all in a dry
/// run. A manifest is put only after every blob it references is in the destination, an
/// index only after every manifest it lists, and a layout or archive becomes visible
/// only at the end.
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
    let source_location = Location::parse(&settings.image)?;
    let destination_location = destination_location(&source_location, settings)?;
    let reports = settings
        .report
        .as_deref()
        .map(|path| Reports::load(path, settings.scanner))
        .transpose()?;
    let platforms = settings
        .platforms
        .iter()
        .map(|text| text.parse::<Platform>())
        .collect::<Result<Vec<_>, _>>()?;
    let client = Arc::new(RegistryClient::new(RegistryOptions {
        insecure_registries: settings.insecure_registries.clone(),
        ca_files: settings.ca_files.clone(),
        timeout: Some(settings.timeout),
        auth_env: AuthEnv::from_process_env(),
        ..RegistryOptions::default()
    })?);

    // An engine that is not there fails the run before anything is resolved.
    if let Backend::BuildKit(endpoint) = &settings.backend
        && !settings.dry_run
    {
        buildkit::connect(endpoint).await?;
    }
    reporter.event(Event::Phase(Phase::ResolveImage));
    let source = ImageStore::open_source(&source_location, &client)?;
    let top = source.fetch_manifest(None).await?;
    let work = WorkDir::new(settings.work_dir.as_deref())?;
    let downloads = debian::SharedDownloads::new(settings, &work.path().join("debs"))?;
    let context = manifest::PatchContext {
        settings,
        source: &source,
        downloads: &downloads,
        reporter,
    };
    let open_destination = || ImageStore::open_destination(&destination_location, &client);

    if index::is_index(&top.media_type) {
        return index::patch_index(
            &context,
            &open_destination,
            &top,
            reports.as_ref(),
            &platforms,
            work.path(),
            (&source_location, &destination_location),
        )
        .await;
    }

    if !platforms.is_empty() {
        let image = context.read_image(&top).await?;
        check_single_platform(&image.config_bytes, &platforms, &source_location)?;
    }
    let job = context
        .patch_manifest(&top, None, reports.as_ref(), &work.path().join("image"))
        .await?;
    let mut outcome = job.outcome(settings, &source_location, &destination_location);
    let Some(patched) = &job.patched else {
        return Ok(outcome);
    };
    reporter.event(Event::Phase(Phase::Push));
    let destination = open_destination()?;
    let put = context
        .write_patched(&destination, &job.image, patched, true)
        .await?;
    if put.converted {
        let warning = converted_warning(&destination_location);
        reporter.event(Event::Warning(warning.clone()));
        outcome.warnings.push(warning);
    }
    destination.commit()?;
    outcome.status = PatchStatus::Patched;
    outcome.manifest_digest = Some(put.digest.to_string());
    Ok(outcome)
}

/// Checks that `--platform` selects the only platform of an image that is not an index.
/// The platform is read from the config's `os` and `architecture`, which the OCI image
/// spec requires, and its optional `variant`. A config without them matches no request.
fn check_single_platform(
    config: &[u8],
    requested: &[Platform],
    source: &Location,
) -> Result<(), PatchError> {
    let platform = manifest::config_platform(config);
    if let Some(platform) = &platform
        && requested.iter().any(|want| want.matches(platform))
    {
        return Ok(());
    }
    Err(PatchError::SinglePlatformMismatch {
        source_image: source.to_string(),
        platform: platform.map_or_else(|| "unknown/unknown".to_owned(), |p| p.to_string()),
        requested: requested
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The warning for a Docker-typed manifest written into a layout or archive.
fn converted_warning(destination: &Location) -> String {
    format!(
        "converted Docker media types to OCI ones for {destination}, because OCI image \
         layouts hold OCI manifests; the manifest digest differs from a registry copy"
    )
}

/// The destination: `--oci-dir`, else `-t` or the name derived from the source.
fn destination_location(
    source: &Location,
    settings: &PatchSettings,
) -> Result<Location, PatchError> {
    let derived = source.destination(settings.tag.as_deref(), &settings.tag_suffix)?;
    if let (Location::Registry(from), Location::Registry(to), Some(tag)) =
        (source, &derived, settings.tag.as_deref())
        && from.registry != to.registry
        && to.registry == reference::DOCKER_HUB
        && !tag.contains(reference::DOCKER_HUB)
    {
        // A name without a host means Docker Hub, as in docker and skopeo. A user who
        // patches an image of a private registry rarely expects a push there.
        tracing::warn!(
            "destination {tag} has no registry host, so it goes to {}; write {}/{tag} to \
             push next to the source",
            reference::DOCKER_HUB,
            from.registry
        );
    }
    let Some(dir) = &settings.oci_dir else {
        return Ok(derived);
    };
    let tag = match &derived {
        Location::Registry(reference) => reference.tag.clone(),
        Location::OciLayout { tag, .. } => tag.clone(),
        Location::DockerArchive { reference, .. } => reference
            .as_deref()
            .and_then(|text| Reference::parse(text).ok())
            .and_then(|reference| reference.tag),
    };
    Ok(Location::OciLayout {
        dir: dir.clone(),
        tag,
    })
}

/// An earlier layermend patch layer at the top of the image.
struct EarlierPatch {
    record: PatchRecord,
    /// The position of the patch layer, which is the last layer.
    layer_index: usize,
}

/// Finds the layermend patch record in an image config. Only a patch layer that is
/// still the top layer is replaced; a record whose layer is gone or has layers above it
/// gives a warning, and the new layer is added on top.
fn earlier_patch(
    config: &[u8],
    layer_count: usize,
    reporter: &dyn Reporter,
) -> Result<Option<EarlierPatch>, PatchError> {
    let Some(found) = image::read_patch_record(config)? else {
        return Ok(None);
    };
    match found.layer_index {
        Some(index) if index + 1 == layer_count && index > 0 => {
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

/// Returns the image's `architecture` in OCI terms (`amd64`), from its config.
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
    fn single_platform_must_match() {
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let source = Location::parse("oci:/images/bookworm:latest").unwrap();
        let amd64: Platform = "linux/amd64".parse().unwrap();
        let arm64: Platform = "linux/arm64".parse().unwrap();
        assert!(check_single_platform(config, std::slice::from_ref(&amd64), &source).is_ok());
        assert!(check_single_platform(config, &[arm64.clone(), amd64], &source).is_ok());

        let error = check_single_platform(config, &[arm64], &source).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("is linux/amd64 only"), "{message}");
        assert!(
            message.contains("--platform linux/arm64 matches nothing"),
            "{message}"
        );
        assert!(error.is_user_error());
    }

    #[test]
    fn config_without_platform_matches_nothing() {
        let source = Location::parse("oci:/images/bookworm:latest").unwrap();
        let amd64: Platform = "linux/amd64".parse().unwrap();
        let error = check_single_platform(b"{}", &[amd64], &source).unwrap_err();
        assert!(
            error.to_string().contains("is unknown/unknown only"),
            "{error}"
        );
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
