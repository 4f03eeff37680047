//! Grype JSON reports (`grype IMAGE -o json`): `matches[]`, each an `artifact` (the
//! package) and a `vulnerability` with its `fix`.
//!
//! Matches on artifacts of type `deb`, `apk` and `rpm` drive a patch; the rest are
//! language packages and are recorded as skipped.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{Report, ReportError, ReportFormat, ReportOs, purl_qualifier};

/// Syft's package types for OS packages.
const OS_PACKAGE_TYPES: &[&str] = &["deb", "apk", "rpm"];

#[derive(Deserialize)]
struct GrypeReport {
    matches: Vec<Match>,
    #[serde(default)]
    source: Option<Source>,
    #[serde(default)]
    distro: Option<Distro>,
}

#[derive(Deserialize)]
struct Match {
    vulnerability: Vulnerability,
    artifact: Artifact,
}

#[derive(Deserialize)]
struct Vulnerability {
    id: String,
    #[serde(default)]
    fix: Option<Fix>,
}

#[derive(Deserialize)]
struct Fix {
    #[serde(default)]
    versions: Vec<String>,
    /// `fixed`, `not-fixed`, `wont-fix` or `unknown`.
    #[serde(default)]
    state: String,
}

#[derive(Deserialize)]
struct Artifact {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    purl: Option<String>,
    #[serde(default)]
    locations: Vec<Location>,
}

#[derive(Deserialize)]
struct Location {
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
struct Source {
    #[serde(default)]
    target: Value,
}

#[derive(Deserialize)]
struct Distro {
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
}

/// Parses a Grype report already read as JSON.
pub fn parse(value: &Value, path: &Path) -> Result<Report, ReportError> {
    let invalid = |reason: String| ReportError::Invalid {
        path: path.to_owned(),
        format: ReportFormat::Grype,
        reason,
    };
    if value.get("matches").is_none() {
        return Err(invalid("it has no `matches` array".to_owned()));
    }
    let report: GrypeReport =
        super::decode(value).map_err(|err| invalid(format!("unexpected field shape at {err}")))?;

    let mut out = Report {
        // `source.target` is an object with `userInput` for images, a plain string for
        // directories.
        artifact: report.source.and_then(|source| match source.target {
            Value::String(text) => Some(text),
            target => target.get("userInput")?.as_str().map(str::to_owned),
        }),
        os: report
            .distro
            .filter(|distro| !distro.name.is_empty())
            .map(|distro| ReportOs {
                family: distro.name.to_ascii_lowercase(),
                version: distro.version,
            }),
        ..Report::default()
    };
    for found in report.matches {
        let artifact = found.artifact;
        if !OS_PACKAGE_TYPES.contains(&artifact.kind.as_str()) {
            let target = artifact
                .locations
                .first()
                .map(|location| location.path.clone())
                .filter(|path| !path.is_empty())
                .unwrap_or_else(|| format!("{} ({})", artifact.name, artifact.kind));
            out.add_skipped_target(&target);
            continue;
        }
        let fix = found.vulnerability.fix;
        let versions = match fix {
            Some(fix) if fix.state == "fixed" => fix.versions,
            _ => Vec::new(),
        };
        if versions.is_empty() {
            out.add_unfixable(&artifact.name, &found.vulnerability.id);
            continue;
        }
        let arch = artifact
            .purl
            .as_deref()
            .and_then(|purl| purl_qualifier(purl, "arch"));
        out.add_fix(
            &artifact.name,
            arch,
            artifact.version,
            versions,
            &found.vulnerability.id,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Report, ReportError> {
        crate::report::Report::from_slice(text.as_bytes(), Path::new("grype.json"), None)
    }

    const REPORT: &str = r#"{
      "matches": [
        {"vulnerability": {"id": "CVE-2024-1", "fix": {"versions": ["3.0.15-1~deb12u1"], "state": "fixed"}},
         "artifact": {"name": "libssl3", "version": "3.0.11-1~deb12u2", "type": "deb",
                      "purl": "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12"}},
        {"vulnerability": {"id": "CVE-2024-2", "fix": {"versions": ["3.0.14-1~deb12u1"], "state": "fixed"}},
         "artifact": {"name": "libssl3", "version": "3.0.11-1~deb12u2", "type": "deb",
                      "purl": "pkg:deb/debian/libssl3@3.0.11-1~deb12u2?arch=amd64&distro=debian-12"}},
        {"vulnerability": {"id": "CVE-2024-3", "fix": {"versions": [], "state": "wont-fix"}},
         "artifact": {"name": "libc6", "version": "2.36-9", "type": "deb"}},
        {"vulnerability": {"id": "GHSA-1", "fix": {"versions": ["2.0"], "state": "fixed"}},
         "artifact": {"name": "requests", "version": "1.0", "type": "python",
                      "locations": [{"path": "/usr/lib/python3/dist-packages/requests"}]}}
      ],
      "source": {"type": "image", "target": {"userInput": "debian:12"}},
      "distro": {"name": "debian", "version": "12", "idLike": []}
    }"#;

    #[test]
    fn grype_report_lists_os_fixes() {
        let report = parse_str(REPORT).unwrap();
        assert_eq!(report.artifact.as_deref(), Some("debian:12"));
        let os = report.os.as_ref().unwrap();
        assert_eq!((os.family.as_str(), os.version.as_str()), ("debian", "12"));
        assert_eq!(report.packages.len(), 1);
        let ssl = &report.packages[0];
        assert_eq!(ssl.name, "libssl3");
        assert_eq!(ssl.arch.as_deref(), Some("amd64"));
        assert_eq!(ssl.installed_version.as_deref(), Some("3.0.11-1~deb12u2"));
        assert_eq!(ssl.fixed_versions, ["3.0.15-1~deb12u1", "3.0.14-1~deb12u1"]);
        assert_eq!(ssl.vulnerabilities, ["CVE-2024-1", "CVE-2024-2"]);
    }

    #[test]
    fn grype_unfixed_and_language_matches_are_set_aside() {
        let report = parse_str(REPORT).unwrap();
        assert_eq!(report.unfixable.len(), 1);
        assert_eq!(report.unfixable[0].package, "libc6");
        assert_eq!(
            report.skipped_language_targets,
            ["/usr/lib/python3/dist-packages/requests"]
        );
    }

    #[test]
    fn grype_match_without_artifact_is_invalid() {
        let err = parse_str(r#"{"matches": [{"vulnerability": {"id": "CVE-1"}}]}"#).unwrap_err();
        assert!(
            matches!(
                err,
                ReportError::Invalid {
                    format: ReportFormat::Grype,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("artifact"), "{err}");
    }
}
