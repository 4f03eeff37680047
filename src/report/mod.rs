//! Scanner reports: which packages to update, to which minimum versions.
//!
//! Every supported scanner format is parsed into one [`Report`], so the patch logic does
//! not depend on the scanner.

use std::path::{Path, PathBuf};

pub mod trivy;

/// The operating system a report says it scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOs {
    /// The distribution family as the scanner names it (`debian`, `ubuntu`, `alpine`).
    pub family: String,
    /// The distribution version as the scanner names it (`12.8`, `3.21.0`).
    pub version: String,
}

/// One OS package the report asks to update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFix {
    /// The binary package name.
    pub name: String,
    /// The architecture from the package URL, when the report gives one.
    pub arch: Option<String>,
    /// The installed version the scanner saw.
    pub installed_version: Option<String>,
    /// The fixed versions named for each vulnerability; any version at least as new as
    /// the highest of them fixes every listed vulnerability.
    pub fixed_versions: Vec<String>,
    /// The vulnerability identifiers with a fix, in report order without repeats.
    pub vulnerabilities: Vec<String>,
}

/// A scanner report reduced to what a patch needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The scanned image's name, as the report gives it.
    pub artifact: Option<String>,
    pub os: Option<ReportOs>,
    /// OS packages with at least one fixable vulnerability, in report order.
    pub packages: Vec<PackageFix>,
    /// OS-package vulnerabilities without a fixed version, which no patch can address.
    pub unfixable: Vec<UnfixableVulnerability>,
    /// The targets of language-package results, which an OS patcher does not change.
    pub skipped_language_targets: Vec<String>,
}

/// A vulnerability the report lists with no fixed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfixableVulnerability {
    pub package: String,
    pub id: String,
}

/// A report that could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("failed to read report {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("report {path} is not valid JSON")]
    NotJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "report {path} is not a Trivy JSON report: {reason}\n\
         hint: write it with `trivy image --format json --output FILE IMAGE`"
    )]
    NotTrivy { path: PathBuf, reason: String },
    #[error("report {path} has Trivy schema version {version}; supported: 2")]
    UnsupportedSchema { path: PathBuf, version: u64 },
}

impl Report {
    /// Reads a report file.
    pub fn from_file(path: &Path) -> Result<Self, ReportError> {
        let data = fs_err::read(path).map_err(|source| ReportError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_slice(&data, path)
    }

    /// Parses report bytes; `path` names the report in errors.
    pub fn from_slice(data: &[u8], path: &Path) -> Result<Self, ReportError> {
        let value: serde_json::Value =
            serde_json::from_slice(data).map_err(|source| ReportError::NotJson {
                path: path.to_owned(),
                source,
            })?;
        trivy::parse(&value, path)
    }
}
