//! Trivy JSON reports (`trivy image --format json`): schema version 2, and the older
//! top-level array of results.
//!
//! Only results of class `os-pkgs` drive a patch; the rest are recorded as skipped.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{Report, ReportError, ReportFormat, ReportOs, purl_qualifier, split_versions};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TrivyReport {
    schema_version: Option<u64>,
    artifact_name: Option<String>,
    #[serde(default)]
    metadata: Metadata,
    results: Option<Vec<TrivyResult>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Metadata {
    #[serde(rename = "OS")]
    os: Option<TrivyOs>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TrivyOs {
    family: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TrivyResult {
    #[serde(default)]
    target: String,
    class: Option<String>,
    /// The OS family or language package type (`debian`, `npm`).
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(default)]
    vulnerabilities: Option<Vec<Vulnerability>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Vulnerability {
    #[serde(rename = "VulnerabilityID")]
    vulnerability_id: String,
    pkg_name: String,
    #[serde(default)]
    installed_version: Option<String>,
    #[serde(default)]
    fixed_version: Option<String>,
    #[serde(default)]
    pkg_identifier: Option<PkgIdentifier>,
}

#[derive(Deserialize)]
struct PkgIdentifier {
    #[serde(rename = "PURL")]
    purl: Option<String>,
}

/// OS families Trivy names in a result's `Type`; results of other types are language
/// packages. Reports older than schema 2 have no `Class` to tell them apart.
const OS_FAMILIES: &[&str] = &[
    "alma",
    "alpine",
    "amazon",
    "azurelinux",
    "cbl-mariner",
    "centos",
    "chainguard",
    "debian",
    "fedora",
    "opensuse",
    "opensuse.leap",
    "opensuse.tumbleweed",
    "oracle",
    "photon",
    "redhat",
    "rocky",
    "sles",
    "ubuntu",
    "wolfi",
];

/// Returns whether a top-level array is the result list of a Trivy report older than schema 2.
pub fn is_legacy_results(results: &[Value]) -> bool {
    !results.is_empty()
        && results
            .iter()
            .all(|result| result.get("Target").is_some_and(Value::is_string))
}

/// Parses a Trivy report already read as JSON, in either shape.
pub fn parse(value: &Value, path: &Path) -> Result<Report, ReportError> {
    let invalid = |reason: &str| ReportError::Invalid {
        path: path.to_owned(),
        format: ReportFormat::Trivy,
        reason: reason.to_owned(),
    };
    let fields = match value {
        Value::Object(fields) => fields,
        Value::Array(results) if is_legacy_results(results) => {
            return parse_legacy(value, path);
        }
        _ => {
            return Err(invalid(
                "the top level is neither an object with `SchemaVersion` nor an array of \
                 results with `Target`",
            ));
        }
    };
    // Trivy leaves `Results` out of the report of an image with nothing to list, but it
    // always writes `ArtifactName` and `Metadata`.
    let has_trivy_body = ["Results", "ArtifactName", "Metadata"]
        .iter()
        .any(|key| fields.contains_key(*key));
    if !fields.contains_key("SchemaVersion") || !has_trivy_body {
        return Err(invalid(
            "it lacks `SchemaVersion` or all of `Results`, `ArtifactName` and `Metadata`",
        ));
    }
    let report: TrivyReport =
        super::decode(value).map_err(|err| invalid(&format!("unexpected field shape at {err}")))?;
    match report.schema_version {
        Some(2) => {}
        Some(version) => {
            return Err(ReportError::UnsupportedSchema {
                path: path.to_owned(),
                version,
            });
        }
        None => return Err(invalid("`SchemaVersion` is missing")),
    }

    let mut out = Report {
        artifact: report.artifact_name,
        os: report.metadata.os.map(|os| ReportOs {
            family: os.family.to_ascii_lowercase(),
            version: os.name,
        }),
        ..Report::default()
    };
    for result in report.results.unwrap_or_default() {
        add_result(&mut out, result);
    }
    Ok(out)
}

/// Parses the report of Trivy before schema 2: a bare array of results, with the OS
/// family in each result's `Type` and its version only in the target text, as in
/// `debian:11 (debian 11.3)`.
fn parse_legacy(value: &Value, path: &Path) -> Result<Report, ReportError> {
    let results: Vec<TrivyResult> = super::decode(value).map_err(|err| ReportError::Invalid {
        path: path.to_owned(),
        format: ReportFormat::Trivy,
        reason: format!("unexpected field shape in the array of results at {err}"),
    })?;
    let mut out = Report::default();
    for mut result in results {
        if result.class.is_none()
            && result
                .kind
                .as_deref()
                .is_some_and(|kind| OS_FAMILIES.contains(&kind))
        {
            result.class = Some("os-pkgs".to_owned());
        }
        if result.class.as_deref() == Some("os-pkgs") && out.os.is_none() {
            let family = result.kind.clone().unwrap_or_default().to_ascii_lowercase();
            out.artifact = result.target.split(" (").next().map(str::to_owned);
            out.os = Some(ReportOs {
                version: legacy_os_version(&result.target, &family).unwrap_or_default(),
                family,
            });
        }
        add_result(&mut out, result);
    }
    Ok(out)
}

/// The version in a legacy target such as `debian:11 (debian 11.3)`.
fn legacy_os_version(target: &str, family: &str) -> Option<String> {
    let inner = target.rsplit_once('(')?.1.strip_suffix(')')?;
    let version = inner.strip_prefix(family)?.trim();
    (!version.is_empty()).then(|| version.to_owned())
}

fn add_result(out: &mut Report, result: TrivyResult) {
    if result.class.as_deref() != Some("os-pkgs") {
        if result
            .vulnerabilities
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        {
            out.add_skipped_target(&result.target);
        }
        return;
    }
    for vulnerability in result.vulnerabilities.unwrap_or_default() {
        add_vulnerability(out, vulnerability);
    }
}

fn add_vulnerability(report: &mut Report, vulnerability: Vulnerability) {
    let fixed = split_versions(vulnerability.fixed_version.as_deref().unwrap_or(""));
    if fixed.is_empty() {
        report.add_unfixable(&vulnerability.pkg_name, &vulnerability.vulnerability_id);
        return;
    }
    let arch = vulnerability
        .pkg_identifier
        .and_then(|id| id.purl)
        .and_then(|purl| purl_qualifier(&purl, "arch"));
    report.add_fix(
        &vulnerability.pkg_name,
        arch,
        vulnerability.installed_version,
        fixed,
        &vulnerability.vulnerability_id,
    );
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn shared_report(name: &str) -> PathBuf {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("shared/reports")
            .join(name);
        assert!(path.exists(), "missing report fixture {}", path.display());
        path
    }

    fn parse_str(text: &str) -> Result<Report, ReportError> {
        Report::from_slice(text.as_bytes(), Path::new("inline.json"), None)
    }

    fn parse_trivy(text: &str) -> Result<Report, ReportError> {
        Report::from_slice(
            text.as_bytes(),
            Path::new("inline.json"),
            Some(ReportFormat::Trivy),
        )
    }

    #[test]
    fn nginx_debian_report_lists_fixable_packages() {
        let report =
            Report::from_file(&shared_report("trivy-nginx-1.21.6-debian-11.3.json"), None).unwrap();
        let os = report.os.as_ref().unwrap();
        assert_eq!(os.family, "debian");
        assert_eq!(os.version, "11.3");
        let curl = report.packages.iter().find(|p| p.name == "curl").unwrap();
        assert_eq!(
            curl.installed_version.as_deref(),
            Some("7.74.0-1.3+deb11u1")
        );
        assert!(
            curl.fixed_versions
                .contains(&"7.74.0-1.3+deb11u2".to_owned())
        );
        assert!(curl.vulnerabilities.contains(&"CVE-2021-22945".to_owned()));
        let fixable: usize = report
            .packages
            .iter()
            .map(|p| p.vulnerabilities.len())
            .sum();
        assert_eq!(fixable, 181);
        assert!(report.unfixable.is_empty());
    }

    #[test]
    fn alpine_report_reads_arch_from_purl() {
        let report = Report::from_file(&shared_report("trivy-alpine-3.21.0.json"), None).unwrap();
        assert_eq!(report.os.as_ref().unwrap().family, "alpine");
        let crypto = report
            .packages
            .iter()
            .find(|p| p.name == "libcrypto3")
            .unwrap();
        assert_eq!(crypto.arch.as_deref(), Some("x86_64"));
        assert!(crypto.fixed_versions.contains(&"3.3.3-r0".to_owned()));
        assert!(crypto.fixed_versions.contains(&"3.3.2-r5".to_owned()));
    }

    #[test]
    fn language_only_report_has_no_packages() {
        let report =
            Report::from_file(&shared_report("trivy-node-app-lang-only.json"), None).unwrap();
        assert!(report.packages.is_empty());
        assert_eq!(report.skipped_language_targets, ["Node.js"]);
    }

    #[test]
    fn rpm_report_parses_with_its_family() {
        let report = Report::from_file(
            &shared_report("trivy-cbl-mariner-distroless-2.0-arm64.json"),
            None,
        )
        .unwrap();
        assert_eq!(report.os.as_ref().unwrap().family, "cbl-mariner");
        assert!(!report.packages.is_empty());
    }

    #[test]
    fn python_alpine_report_merges_vulnerabilities_per_package() {
        let report = Report::from_file(
            &shared_report("trivy-python-3.10.10-alpine-3.17.3.json"),
            None,
        )
        .unwrap();
        let names: Vec<&str> = report.packages.iter().map(|p| p.name.as_str()).collect();
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "{names:?}");
    }

    #[test]
    fn not_json_is_rejected() {
        let err = parse_str("not json {").unwrap_err();
        assert!(matches!(err, ReportError::NotJson { .. }), "{err}");
    }

    #[test]
    fn json_without_trivy_fields_is_rejected() {
        let cases = [
            "[]",
            "{}",
            r#"{"matches": []}"#,
            "42",
            r#"{"SchemaVersion": 2, "packages": []}"#,
            r#"{"Results": []}"#,
        ];
        for text in cases {
            let err = parse_trivy(text).unwrap_err();
            assert!(
                matches!(
                    err,
                    ReportError::Invalid {
                        format: ReportFormat::Trivy,
                        ..
                    }
                ),
                "{text}: {err}"
            );
            assert!(err.to_string().contains("inline.json"), "{err}");
        }
    }

    #[test]
    fn other_schema_version_is_rejected() {
        let err = parse_str(r#"{"SchemaVersion": 3, "Results": []}"#).unwrap_err();
        assert!(
            matches!(err, ReportError::UnsupportedSchema { version: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn comma_separated_fixed_versions_split() {
        let report = parse_str(
            r#"{"SchemaVersion": 2, "Results": [{"Target": "x", "Class": "os-pkgs",
                "Vulnerabilities": [
                  {"VulnerabilityID": "CVE-1", "PkgName": "a", "InstalledVersion": "1",
                   "FixedVersion": "2, 3"},
                  {"VulnerabilityID": "CVE-2", "PkgName": "a", "InstalledVersion": "1",
                   "FixedVersion": ""},
                  {"VulnerabilityID": "CVE-1", "PkgName": "a", "InstalledVersion": "1",
                   "FixedVersion": "2"}]}]}"#,
        )
        .unwrap();
        assert_eq!(report.packages.len(), 1);
        assert_eq!(report.packages[0].fixed_versions, ["2", "3"]);
        assert_eq!(report.packages[0].vulnerabilities, ["CVE-1"]);
        assert_eq!(report.unfixable.len(), 1);
    }

    #[test]
    fn legacy_array_report_parses() {
        let report = parse_str(
            r#"[{"Target": "debian:11 (debian 11.3)", "Type": "debian",
                 "Vulnerabilities": [
                   {"VulnerabilityID": "CVE-1", "PkgName": "curl",
                    "InstalledVersion": "7.74.0-1.3+deb11u1",
                    "FixedVersion": "7.74.0-1.3+deb11u2"},
                   {"VulnerabilityID": "CVE-2", "PkgName": "curl",
                    "InstalledVersion": "7.74.0-1.3+deb11u1"}]},
                {"Target": "app/package-lock.json", "Type": "npm",
                 "Vulnerabilities": [
                   {"VulnerabilityID": "CVE-3", "PkgName": "lodash",
                    "InstalledVersion": "4.17.0", "FixedVersion": "4.17.21"}]}]"#,
        )
        .unwrap();
        let os = report.os.as_ref().unwrap();
        assert_eq!(os.family, "debian");
        assert_eq!(os.version, "11.3");
        assert_eq!(report.artifact.as_deref(), Some("debian:11"));
        assert_eq!(report.packages.len(), 1);
        assert_eq!(report.packages[0].name, "curl");
        assert_eq!(report.packages[0].fixed_versions, ["7.74.0-1.3+deb11u2"]);
        assert_eq!(report.unfixable.len(), 1);
        assert_eq!(report.skipped_language_targets, ["app/package-lock.json"]);
    }

    #[test]
    fn legacy_shape_of_shared_report_matches_schema_2() {
        let path = shared_report("trivy-nginx-1.21.6-debian-11.3.json");
        let modern = Report::from_file(&path, None).unwrap();
        let value: Value = serde_json::from_slice(&fs_err::read(&path).unwrap()).unwrap();
        // The older shape is the `Results` array alone; Class is dropped to match it.
        let mut results = value["Results"].clone();
        for result in results.as_array_mut().unwrap() {
            result.as_object_mut().unwrap().remove("Class");
        }
        let legacy = parse_str(&results.to_string()).unwrap();
        assert_eq!(legacy.packages, modern.packages);
        assert_eq!(legacy.os.as_ref().unwrap().family, "debian");
    }
}
