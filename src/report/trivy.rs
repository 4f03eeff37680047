//! Trivy JSON reports, schema version 2 (`trivy image --format json`).
//!
//! Only results of class `os-pkgs` drive a patch; the rest are recorded as skipped.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{PackageFix, Report, ReportError, ReportOs, UnfixableVulnerability};

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

/// Parses a Trivy report already read as JSON.
pub fn parse(value: &Value, path: &Path) -> Result<Report, ReportError> {
    let not_trivy = |reason: &str| ReportError::NotTrivy {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let Value::Object(fields) = value else {
        return Err(not_trivy("the top level is not an object"));
    };
    // Trivy leaves `Results` out of the report of an image with nothing to list, but it
    // always writes `ArtifactName` and `Metadata`.
    let has_trivy_body = ["Results", "ArtifactName", "Metadata"]
        .iter()
        .any(|key| fields.contains_key(*key));
    if !fields.contains_key("SchemaVersion") || !has_trivy_body {
        return Err(not_trivy(
            "it lacks `SchemaVersion` or all of `Results`, `ArtifactName` and `Metadata`",
        ));
    }
    let report: TrivyReport = serde_json::from_value(value.clone())
        .map_err(|err| not_trivy(&format!("unexpected field shape: {err}")))?;
    match report.schema_version {
        Some(2) => {}
        Some(version) => {
            return Err(ReportError::UnsupportedSchema {
                path: path.to_owned(),
                version,
            });
        }
        None => return Err(not_trivy("`SchemaVersion` is missing")),
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
        if result.class.as_deref() != Some("os-pkgs") {
            if result
                .vulnerabilities
                .as_ref()
                .is_some_and(|v| !v.is_empty())
            {
                out.skipped_language_targets.push(result.target);
            }
            continue;
        }
        for vulnerability in result.vulnerabilities.unwrap_or_default() {
            add_vulnerability(&mut out, vulnerability);
        }
    }
    Ok(out)
}

fn add_vulnerability(report: &mut Report, vulnerability: Vulnerability) {
    let fixed: Vec<String> = vulnerability
        .fixed_version
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    if fixed.is_empty() {
        report.unfixable.push(UnfixableVulnerability {
            package: vulnerability.pkg_name,
            id: vulnerability.vulnerability_id,
        });
        return;
    }
    let arch = vulnerability
        .pkg_identifier
        .and_then(|id| id.purl)
        .and_then(|purl| purl_qualifier(&purl, "arch"));
    let existing = report
        .packages
        .iter_mut()
        .find(|p| p.name == vulnerability.pkg_name && p.arch == arch);
    let package = match existing {
        Some(package) => package,
        None => {
            report.packages.push(PackageFix {
                name: vulnerability.pkg_name,
                arch,
                installed_version: vulnerability.installed_version,
                fixed_versions: Vec::new(),
                vulnerabilities: Vec::new(),
            });
            report.packages.last_mut().expect("just pushed")
        }
    };
    for version in fixed {
        if !package.fixed_versions.contains(&version) {
            package.fixed_versions.push(version);
        }
    }
    if !package
        .vulnerabilities
        .contains(&vulnerability.vulnerability_id)
    {
        package.vulnerabilities.push(vulnerability.vulnerability_id);
    }
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
        Report::from_slice(text.as_bytes(), Path::new("inline.json"))
    }

    #[test]
    fn nginx_debian_report_lists_fixable_packages() {
        let report =
            Report::from_file(&shared_report("trivy-nginx-1.21.6-debian-11.3.json")).unwrap();
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
        let report = Report::from_file(&shared_report("trivy-alpine-3.21.0.json")).unwrap();
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
        let report = Report::from_file(&shared_report("trivy-node-app-lang-only.json")).unwrap();
        assert!(report.packages.is_empty());
        assert_eq!(report.skipped_language_targets, ["Node.js"]);
    }

    #[test]
    fn rpm_report_parses_with_its_family() {
        let report = Report::from_file(&shared_report(
            "trivy-cbl-mariner-distroless-2.0-arm64.json",
        ))
        .unwrap();
        assert_eq!(report.os.as_ref().unwrap().family, "cbl-mariner");
        assert!(!report.packages.is_empty());
    }

    #[test]
    fn python_alpine_report_merges_vulnerabilities_per_package() {
        let report =
            Report::from_file(&shared_report("trivy-python-3.10.10-alpine-3.17.3.json")).unwrap();
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
            let err = parse_str(text).unwrap_err();
            assert!(matches!(err, ReportError::NotTrivy { .. }), "{text}: {err}");
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
