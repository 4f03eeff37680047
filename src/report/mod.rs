//! Scanner reports: which packages to update, to which minimum versions.
//!
//! Every supported scanner format is parsed into one [`Report`], so the patch logic does
//! not depend on the scanner. [`ReportFormat`] names the formats; without one, the format
//! is detected from the document's top-level shape.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub mod copa;
pub mod grype;
pub mod trivy;

/// The operating system that the report names as scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOs {
    /// The distribution family as the scanner names it (`debian`, `ubuntu`, `alpine`).
    pub family: String,
    /// The distribution version as the scanner names it (`12.8`, `3.21.0`).
    pub version: String,
}

/// One OS package that the report requests an update of.
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
    /// The format the report was read as.
    pub format: Option<ReportFormat>,
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

/// A scanner report format, spelled as copa's `--scanner` flag spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// Trivy JSON: schema version 2, or the older top-level array of results.
    Trivy,
    /// Grype JSON (`grype -o json`).
    Grype,
    /// copa's scanner-plugin JSON, `apiVersion` `v1alpha1` or `v1alpha2`.
    Native,
}

impl ReportFormat {
    pub const ALL: [ReportFormat; 3] = [
        ReportFormat::Trivy,
        ReportFormat::Grype,
        ReportFormat::Native,
    ];

    /// Returns the name `--scanner` takes.
    pub fn name(self) -> &'static str {
        match self {
            ReportFormat::Trivy => "trivy",
            ReportFormat::Grype => "grype",
            ReportFormat::Native => "native",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ReportFormat::Trivy => "Trivy JSON",
            ReportFormat::Grype => "Grype JSON",
            ReportFormat::Native => "copa scanner-plugin JSON",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            ReportFormat::Trivy => "write it with `trivy image --format json --output FILE IMAGE`",
            ReportFormat::Grype => "write it with `grype IMAGE -o json --file FILE`",
            ReportFormat::Native => {
                "a copa scanner plugin writes `apiVersion` v1alpha1 or v1alpha2 with \
                 `metadata.os` and `updates` or `osupdates`"
            }
        }
    }
}

impl fmt::Display for ReportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
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
        "report {path} matches no accepted format; accepted: Trivy JSON (schema 2, or the \
         older top-level array of results), Grype JSON, copa scanner-plugin JSON \
         (v1alpha1, v1alpha2)\nhint: pass --scanner trivy|grype|native to see why it does \
         not parse as one of them"
    )]
    Unrecognized { path: PathBuf },
    #[error("report {path} is not a valid {format} report: {reason}\nhint: {}", format.hint())]
    Invalid {
        path: PathBuf,
        format: ReportFormat,
        reason: String,
    },
    #[error("report {path} has Trivy schema version {version}; supported: 2")]
    UnsupportedSchema { path: PathBuf, version: u64 },
    #[error(
        "report {path} has copa scanner-plugin apiVersion {version:?}; supported: v1alpha1, \
         v1alpha2"
    )]
    UnsupportedApiVersion { path: PathBuf, version: String },
}

impl Report {
    /// Maps each package name to the vulnerability IDs reported for it, without repeats.
    pub fn vulnerabilities_by_package(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut map: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for package in &self.packages {
            let entry = map.entry(package.name.clone()).or_default();
            for id in &package.vulnerabilities {
                if !entry.contains(id) {
                    entry.push(id.clone());
                }
            }
        }
        map
    }

    /// Reads a report file, in `format` or else in the format its content matches.
    pub fn from_file(path: &Path, format: Option<ReportFormat>) -> Result<Self, ReportError> {
        let data = fs_err::read(path).map_err(|source| ReportError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_slice(&data, path, format)
    }

    /// Parses report bytes; `path` names the report in errors.
    pub fn from_slice(
        data: &[u8],
        path: &Path,
        format: Option<ReportFormat>,
    ) -> Result<Self, ReportError> {
        let value: Value = serde_json::from_slice(data).map_err(|source| ReportError::NotJson {
            path: path.to_owned(),
            source,
        })?;
        let format = match format {
            Some(format) => format,
            None => detect(&value).ok_or_else(|| ReportError::Unrecognized {
                path: path.to_owned(),
            })?,
        };
        tracing::debug!(path = %path.display(), format = format.name(), "parsing report");
        let mut report = match format {
            ReportFormat::Trivy => trivy::parse(&value, path),
            ReportFormat::Grype => grype::parse(&value, path),
            ReportFormat::Native => copa::parse(&value, path),
        }?;
        report.format = Some(format);
        Ok(report)
    }

    /// Adds one fixable vulnerability of an OS package, merging it into the package's
    /// entry when the package (and architecture) is already listed.
    fn add_fix(
        &mut self,
        name: &str,
        arch: Option<String>,
        installed_version: Option<String>,
        fixed_versions: Vec<String>,
        vulnerability: &str,
    ) {
        let position = self
            .packages
            .iter()
            .position(|p| p.name == name && p.arch == arch);
        let package = match position {
            Some(index) => &mut self.packages[index],
            None => {
                self.packages.push(PackageFix {
                    name: name.to_owned(),
                    arch,
                    installed_version,
                    fixed_versions: Vec::new(),
                    vulnerabilities: Vec::new(),
                });
                self.packages.last_mut().expect("just pushed")
            }
        };
        for version in fixed_versions {
            if !package.fixed_versions.contains(&version) {
                package.fixed_versions.push(version);
            }
        }
        if !package.vulnerabilities.iter().any(|id| id == vulnerability) {
            package.vulnerabilities.push(vulnerability.to_owned());
        }
    }

    fn add_unfixable(&mut self, package: &str, id: &str) {
        self.unfixable.push(UnfixableVulnerability {
            package: package.to_owned(),
            id: id.to_owned(),
        });
    }

    fn add_skipped_target(&mut self, target: &str) {
        if !self.skipped_language_targets.iter().any(|t| t == target) {
            self.skipped_language_targets.push(target.to_owned());
        }
    }
}

/// Detects the format from the top-level shape: Trivy has `SchemaVersion` (or is an array
/// of results with `Target`), Grype has `matches`, copa's plugin format has `apiVersion`.
pub fn detect(value: &Value) -> Option<ReportFormat> {
    match value {
        Value::Object(fields) if fields.contains_key("SchemaVersion") => Some(ReportFormat::Trivy),
        Value::Object(fields) if fields.contains_key("matches") => Some(ReportFormat::Grype),
        Value::Object(fields) if fields.contains_key("apiVersion") => Some(ReportFormat::Native),
        Value::Array(results) if trivy::is_legacy_results(results) => Some(ReportFormat::Trivy),
        _ => None,
    }
}

/// Splits a fixed-version field that lists several versions (`1.2-3, 1.2-4`).
fn split_versions(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Returns one qualifier of a package URL (`pkg:deb/debian/zlib1g@1.2?arch=amd64`).
fn purl_qualifier(purl: &str, key: &str) -> Option<String> {
    let (_, query) = purl.split_once('?')?;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

/// Decodes `value` into `T`; the error names the JSON path of the offending field, such
/// as `Results[0].Vulnerabilities[3].FixedVersion: invalid type: integer, expected a
/// string`.
pub(crate) fn decode<'a, T: serde::Deserialize<'a>>(value: &'a Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." {
            format!("the top level: {inner}")
        } else {
            format!("{path}: {inner}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Report, ReportError> {
        Report::from_slice(text.as_bytes(), Path::new("inline.json"), None)
    }

    #[test]
    fn unrecognized_shapes_list_accepted_formats() {
        for text in [
            "[]",
            "{}",
            "42",
            r#"{"packages": []}"#,
            r#"[{"name": "x"}]"#,
        ] {
            let err = parse_str(text).unwrap_err();
            assert!(
                matches!(err, ReportError::Unrecognized { .. }),
                "{text}: {err}"
            );
            let message = err.to_string();
            assert!(message.contains("inline.json"), "{message}");
            for format in ["Trivy", "Grype", "copa", "v1alpha2"] {
                assert!(message.contains(format), "{text}: {message}");
            }
        }
    }

    #[test]
    fn forced_format_explains_mismatch() {
        let err = Report::from_slice(
            br#"{"matches": []}"#,
            Path::new("grype.json"),
            Some(ReportFormat::Trivy),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ReportError::Invalid {
                    format: ReportFormat::Trivy,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn detection_picks_format_by_shape() {
        let cases = [
            (r#"{"SchemaVersion": 2}"#, ReportFormat::Trivy),
            (
                r#"[{"Target": "x", "Type": "debian"}]"#,
                ReportFormat::Trivy,
            ),
            (r#"{"matches": []}"#, ReportFormat::Grype),
            (r#"{"apiVersion": "v1alpha1"}"#, ReportFormat::Native),
        ];
        for (text, expected) in cases {
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(detect(&value), Some(expected), "{text}");
        }
    }

    #[test]
    fn purl_qualifier_reads_arch() {
        assert_eq!(
            purl_qualifier(
                "pkg:deb/debian/zlib1g@1.2?arch=amd64&distro=debian-12",
                "arch"
            ),
            Some("amd64".to_owned())
        );
        assert_eq!(purl_qualifier("pkg:deb/debian/zlib1g@1.2", "arch"), None);
    }
}
