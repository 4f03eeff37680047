//! The reports of one run: one file for every platform, or a directory of reports
//! matched to platforms by the architecture they record.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::PatchError;
use crate::registry::Platform;
use crate::report::{Report, ReportError, ReportFormat};

/// One report and the OCI architecture it records, if any.
#[derive(Debug)]
pub struct ArchReport {
    path: PathBuf,
    architecture: Option<String>,
    report: Report,
}

/// The reports `-r` names.
#[derive(Debug)]
pub enum Reports {
    /// One report used for every platform.
    Single(Report),
    /// Reports from a directory, each matched to a platform.
    Directory {
        dir: PathBuf,
        reports: Vec<ArchReport>,
    },
}

impl Reports {
    /// Reads `path`: a report file, or every `*.json` file of a directory, each in
    /// `format`, or in the format its content shows when `format` is `None`.
    pub fn load(path: &Path, format: Option<ReportFormat>) -> Result<Self, PatchError> {
        if !path.is_dir() {
            return Ok(Reports::Single(Report::from_file(path, format)?));
        }
        let read_error = |source| {
            PatchError::Report(ReportError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let mut files: Vec<PathBuf> = fs_err::read_dir(path)
            .map_err(read_error)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|file| file.extension().is_some_and(|ext| ext == "json"))
            .collect();
        files.sort();
        let mut reports = Vec::new();
        for file in files {
            let data = fs_err::read(&file).map_err(|source| ReportError::Read {
                path: file.clone(),
                source,
            })?;
            let report = Report::from_slice(&data, &file, format)?;
            let architecture = serde_json::from_slice::<Value>(&data)
                .ok()
                .and_then(|value| recorded_architecture(&value, &report));
            tracing::debug!(path = %file.display(), ?architecture, "read report");
            reports.push(ArchReport {
                path: file,
                architecture,
                report,
            });
        }
        if reports.is_empty() {
            return Err(PatchError::NoReportForPlatform {
                dir: path.to_owned(),
                platform: "any platform".to_owned(),
                available: "none: the directory has no .json files".to_owned(),
            });
        }
        Ok(Reports::Directory {
            dir: path.to_owned(),
            reports,
        })
    }

    /// Returns the report for a platform. A directory's only report also serves an image
    /// that records no platform.
    pub fn for_platform(&self, platform: Option<&Platform>) -> Result<&Report, PatchError> {
        let (dir, reports) = match self {
            Reports::Single(report) => return Ok(report),
            Reports::Directory { dir, reports } => (dir, reports),
        };
        let found = match platform {
            Some(platform) => reports
                .iter()
                .find(|entry| entry.architecture.as_deref() == Some(&platform.architecture)),
            None if reports.len() == 1 => reports.first(),
            None => None,
        };
        if let Some(entry) = found {
            tracing::debug!(path = %entry.path.display(), ?platform, "matched report to platform");
            return Ok(&entry.report);
        }
        Err(PatchError::NoReportForPlatform {
            dir: dir.clone(),
            platform: platform.map_or_else(|| "the image".to_owned(), ToString::to_string),
            available: reports
                .iter()
                .map(|entry| {
                    format!(
                        "{} ({})",
                        entry.path.display(),
                        entry
                            .architecture
                            .as_deref()
                            .unwrap_or("architecture unknown")
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// Returns the architecture a report records: the image config's (Trivy's
/// `Metadata.ImageConfig.architecture`, Grype's `source.target.architecture`, the
/// scanner plugin's `metadata.config.arch`), else the `arch` qualifier of its package
/// URLs mapped to the OCI name.
fn recorded_architecture(value: &Value, report: &Report) -> Option<String> {
    let recorded = [
        "/Metadata/ImageConfig/architecture",
        "/source/target/architecture",
        "/metadata/config/arch",
    ]
    .iter()
    .find_map(|pointer| value.pointer(pointer).and_then(Value::as_str))
    .filter(|arch| !arch.is_empty());
    if let Some(arch) = recorded {
        return Some(oci_architecture(arch).to_owned());
    }
    report
        .packages
        .iter()
        .filter_map(|package| package.arch.as_deref())
        .find(|arch| *arch != "all")
        .map(|arch| oci_architecture(arch).to_owned())
}

/// Maps a Debian architecture to the OCI name.
fn oci_architecture(debian: &str) -> &str {
    match debian {
        "armhf" | "armel" => "arm",
        "i386" => "386",
        "ppc64el" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, arch: &str) {
        let report = serde_json::json!({
            "SchemaVersion": 2,
            "ArtifactName": "image",
            "Metadata": {"ImageConfig": {"architecture": arch}},
            "Results": []
        });
        fs_err::write(dir.join(name), report.to_string()).unwrap();
    }

    #[test]
    fn directory_reports_match_architecture() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "amd64.json", "amd64");
        write(dir.path(), "arm64.json", "arm64");
        let reports = Reports::load(dir.path(), None).unwrap();
        let arm64: Platform = "linux/arm64".parse().unwrap();
        assert!(reports.for_platform(Some(&arm64)).is_ok());
        let s390x: Platform = "linux/s390x".parse().unwrap();
        let error = reports.for_platform(Some(&s390x)).unwrap_err();
        assert!(error.to_string().contains("linux/s390x"), "{error}");
        assert!(error.to_string().contains("arm64.json"), "{error}");
    }

    #[test]
    fn debian_architectures_map_to_oci() {
        assert_eq!(oci_architecture("armhf"), "arm");
        assert_eq!(oci_architecture("arm64"), "arm64");
        assert_eq!(oci_architecture("ppc64el"), "ppc64le");
    }
}
