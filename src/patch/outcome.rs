//! What a patch did, for the caller to render.

use serde::Serialize;

/// One package the patch layer installs.
#[derive(Debug, Clone, Serialize)]
pub struct PackageUpdate {
    pub name: String,
    pub arch: String,
    /// The version in the source image; `None` for a package newly installed because an
    /// update depends on it.
    pub installed_version: Option<String>,
    pub new_version: String,
    /// The vulnerabilities from the report that this update fixes.
    pub vulnerabilities: Vec<String>,
    /// Why the package is in the patch: `requested` by the report, or pulled in as a
    /// dependency of another update.
    pub reason: String,
    /// The size of the package file in bytes, as the repository index gives it.
    pub size: u64,
}

/// A reported package the patch leaves alone, and why.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedPackage {
    pub name: String,
    pub reason: String,
}

/// A reported package that could not be updated; only with `ignore_errors`.
#[derive(Debug, Clone, Serialize)]
pub struct FailedPackage {
    pub name: String,
    pub error: String,
}

/// Maintainer scripts and triggers of one package that dpkg or apk would have run.
#[derive(Debug, Clone, Serialize)]
pub struct ScriptsNotRun {
    pub package: String,
    pub scripts: Vec<String>,
    pub triggers: Vec<String>,
}

/// Whether a new image was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatchStatus {
    Patched,
    NothingToPatch,
    /// A dry run found updates to install; nothing was downloaded or pushed.
    Planned,
}

/// The image's distribution, from `os-release`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Distro {
    /// `ID` (`debian`, `ubuntu`, `alpine`).
    pub id: String,
    /// `VERSION_ID` (`12`, `3.21.0`); empty on Debian testing and sid.
    pub version_id: String,
}

/// The version of the JSON result's layout; it grows when a field changes meaning or is
/// removed, not when one is added.
pub const OUTCOME_SCHEMA_VERSION: u32 = 1;

/// The result of one patch.
#[derive(Debug, Clone, Serialize)]
pub struct PatchOutcome {
    /// [`OUTCOME_SCHEMA_VERSION`].
    pub schema_version: u32,
    pub status: PatchStatus,
    /// The source image reference as given.
    pub source: String,
    /// The manifest digest of the source image (the platform manifest, not an index).
    pub source_digest: String,
    /// The reference the result was written to.
    pub destination: String,
    /// The manifest digest of the result; `None` when nothing was written.
    pub manifest_digest: Option<String>,
    /// The digest of the added layer; `None` when nothing was written.
    pub layer_digest: Option<String>,
    /// The distribution of the image, as `os-release`'s `PRETTY_NAME` names it.
    pub os: String,
    pub distro: Distro,
    /// The image's architecture from its config (`amd64`), when it names one.
    pub architecture: Option<String>,
    /// The scanner format the report was read as (`trivy`, `grype`, `native`).
    pub report_format: String,
    pub updates: Vec<PackageUpdate>,
    pub skipped: Vec<SkippedPackage>,
    pub failed: Vec<FailedPackage>,
    pub scripts_not_run: Vec<ScriptsNotRun>,
    pub warnings: Vec<String>,
    /// One entry per patched platform of an index; empty for a single manifest.
    pub platforms: Vec<PlatformOutcome>,
}

/// What happened to one platform of an index.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformOutcome {
    /// `os/architecture[/variant]`.
    pub platform: String,
    /// The platform's source manifest digest.
    pub source_digest: String,
    /// The platform's new manifest digest; `None` when it needed no patch.
    pub manifest_digest: Option<String>,
    pub layer_digest: Option<String>,
    /// The number of packages updated for this platform.
    pub updates: usize,
}
