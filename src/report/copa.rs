//! copa's scanner-plugin JSON (`apiVersion` `v1alpha1` and `v1alpha2`), the update
//! manifest a copa scanner plugin writes.
//!
//! `v1alpha1` lists OS updates in `updates`. `v1alpha2` lists them in `osupdates` and
//! language updates in `langupdates`, which are recorded as skipped.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::{Report, ReportError, ReportFormat, ReportOs, split_versions};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateManifest {
    api_version: String,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    updates: Option<Vec<UpdatePackage>>,
    #[serde(default)]
    osupdates: Option<Vec<UpdatePackage>>,
    #[serde(default)]
    langupdates: Option<Vec<UpdatePackage>>,
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    os: Option<PluginOs>,
}

#[derive(Deserialize)]
struct PluginOs {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdatePackage {
    name: String,
    #[serde(default)]
    installed_version: String,
    #[serde(default)]
    fixed_version: String,
    #[serde(rename = "vulnerabilityID", default)]
    vulnerability_id: String,
    /// `v1alpha2` only: the package type of a language update, such as `python-pkg`.
    #[serde(rename = "type", default)]
    kind: String,
}

/// Parses a copa scanner-plugin document already read as JSON.
pub fn parse(value: &Value, path: &Path) -> Result<Report, ReportError> {
    let manifest: UpdateManifest = super::decode(value).map_err(|err| ReportError::Invalid {
        path: path.to_owned(),
        format: ReportFormat::Native,
        reason: format!("unexpected field shape at {err}"),
    })?;
    let (os_updates, lang_updates) = match manifest.api_version.as_str() {
        "v1alpha1" => (manifest.updates, None),
        "v1alpha2" => (manifest.osupdates, manifest.langupdates),
        _ => {
            return Err(ReportError::UnsupportedApiVersion {
                path: path.to_owned(),
                version: manifest.api_version,
            });
        }
    };

    // The plugin format names the image's architecture in `metadata.config.arch`, not
    // each package's, so requests carry none: an `Architecture: all` package matches too.
    let mut out = Report {
        os: manifest
            .metadata
            .os
            .filter(|os| !os.kind.is_empty())
            .map(|os| ReportOs {
                family: os.kind.to_ascii_lowercase(),
                version: os.version,
            }),
        ..Report::default()
    };
    for update in os_updates.unwrap_or_default() {
        let fixed = split_versions(&update.fixed_version);
        if fixed.is_empty() {
            out.add_unfixable(&update.name, &update.vulnerability_id);
            continue;
        }
        let installed = Some(update.installed_version).filter(|v| !v.is_empty());
        out.add_fix(
            &update.name,
            None,
            installed,
            fixed,
            &update.vulnerability_id,
        );
    }
    for update in lang_updates.unwrap_or_default() {
        let kind = if update.kind.is_empty() {
            "language"
        } else {
            &update.kind
        };
        out.add_skipped_target(&format!("{} ({kind})", update.name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Report, ReportError> {
        crate::report::Report::from_slice(text.as_bytes(), Path::new("plugin.json"), None)
    }

    #[test]
    fn v1alpha1_updates_parse() {
        let report = parse_str(
            r#"{"apiVersion": "v1alpha1",
                "metadata": {"os": {"type": "debian", "version": "12.8"},
                             "config": {"arch": "amd64"}},
                "updates": [
                  {"name": "libssl3", "installedVersion": "3.0.11-1~deb12u2",
                   "fixedVersion": "3.0.15-1~deb12u1", "vulnerabilityID": "CVE-2024-1"},
                  {"name": "libssl3", "installedVersion": "3.0.11-1~deb12u2",
                   "fixedVersion": "3.0.14-1~deb12u1", "vulnerabilityID": "CVE-2024-2"},
                  {"name": "libc6", "installedVersion": "2.36-9",
                   "fixedVersion": "", "vulnerabilityID": "CVE-2024-3"}]}"#,
        )
        .unwrap();
        let os = report.os.as_ref().unwrap();
        assert_eq!(
            (os.family.as_str(), os.version.as_str()),
            ("debian", "12.8")
        );
        assert_eq!(report.packages.len(), 1);
        assert_eq!(report.packages[0].arch, None);
        assert_eq!(
            report.packages[0].fixed_versions,
            ["3.0.15-1~deb12u1", "3.0.14-1~deb12u1"]
        );
        assert_eq!(
            report.packages[0].vulnerabilities,
            ["CVE-2024-1", "CVE-2024-2"]
        );
        assert_eq!(report.unfixable.len(), 1);
    }

    #[test]
    fn v1alpha2_skips_language_updates() {
        let report = parse_str(
            r#"{"apiVersion": "v1alpha2",
                "metadata": {"os": {"type": "debian", "version": "12"},
                             "config": {"arch": "arm64", "variant": "v8"}},
                "osupdates": [
                  {"name": "zlib1g", "installedVersion": "1:1.2.13.dfsg-1",
                   "fixedVersion": "1:1.2.13.dfsg-1+deb12u1", "vulnerabilityID": "CVE-1",
                   "type": "deb", "class": "os-pkgs"}],
                "langupdates": [
                  {"name": "requests", "installedVersion": "2.0", "fixedVersion": "2.32",
                   "vulnerabilityID": "CVE-2", "type": "python-pkg", "class": "lang-pkgs"}]}"#,
        )
        .unwrap();
        assert_eq!(report.packages.len(), 1);
        assert_eq!(report.packages[0].name, "zlib1g");
        assert_eq!(report.skipped_language_targets, ["requests (python-pkg)"]);
    }

    #[test]
    fn unknown_api_version_is_rejected() {
        let err = parse_str(r#"{"apiVersion": "v2", "updates": []}"#).unwrap_err();
        assert!(
            matches!(err, ReportError::UnsupportedApiVersion { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("v1alpha2"), "{err}");
    }
}
