//! OpenVEX documents (specification v0.2.0) that state which vulnerabilities a patch
//! fixed, as `copa patch -f openvex -o FILE` writes them.
//!
//! One statement per fixed vulnerability, with status `fixed`. Its product is the
//! patched image as an OCI package URL, and its subcomponents are the updated OS packages
//! as deb or apk package URLs. Only packages the patch layer installs appear, so a
//! package that failed or was skipped is never claimed as fixed.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::patch::{PatchOutcome, PatchStatus};
use crate::reference::Reference;
use crate::transport::{Location, TransportError};

/// The JSON-LD context of OpenVEX v0.2.0.
pub const OPENVEX_CONTEXT: &str = "https://openvex.dev/ns/v0.2.0";

/// The author and time stamp of a document.
#[derive(Debug, Clone)]
pub struct VexOptions {
    /// The document's `author`.
    pub author: String,
    /// The document's `timestamp`.
    pub timestamp: DateTime<Utc>,
}

/// A VEX document that cannot be written for this outcome.
#[derive(Debug, thiserror::Error)]
pub enum VexError {
    #[error("no image was written, so there is no product for a VEX document")]
    NotPatched,
    #[error(
        "the patch fixed no reported vulnerability, and an OpenVEX document needs at least \
         one statement"
    )]
    NothingFixed,
    #[error("invalid destination {reference:?}")]
    Destination {
        reference: String,
        #[source]
        source: Box<TransportError>,
    },
}

/// An OpenVEX document, in the field order of the specification's examples.
#[derive(Debug, Clone, Serialize)]
pub struct VexDocument {
    #[serde(rename = "@context")]
    pub context: String,
    #[serde(rename = "@id")]
    pub id: String,
    pub author: String,
    pub timestamp: String,
    pub version: u32,
    pub tooling: String,
    pub statements: Vec<Statement>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    pub vulnerability: Vulnerability,
    pub products: Vec<Product>,
    pub status: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Vulnerability {
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Product {
    #[serde(rename = "@id")]
    pub id: String,
    pub subcomponents: Vec<Subcomponent>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Subcomponent {
    #[serde(rename = "@id")]
    pub id: String,
}

/// Builds the OpenVEX document for a pushed patch.
pub fn openvex_document(
    outcome: &PatchOutcome,
    options: &VexOptions,
) -> Result<VexDocument, VexError> {
    let digest = match (&outcome.status, &outcome.manifest_digest) {
        (PatchStatus::Patched, Some(digest)) => digest,
        _ => return Err(VexError::NotPatched),
    };
    let product_id = image_purl(&outcome.destination, digest)?;

    let mut statements: Vec<Statement> = Vec::new();
    for update in &outcome.updates {
        let subcomponent = Subcomponent {
            id: package_purl(outcome, &update.name, &update.new_version, &update.arch),
        };
        for id in &update.vulnerabilities {
            let existing = statements.iter_mut().find(|s| s.vulnerability.name == *id);
            match existing {
                Some(statement) => {
                    let components = &mut statement.products[0].subcomponents;
                    if !components.contains(&subcomponent) {
                        components.push(subcomponent.clone());
                    }
                }
                None => statements.push(Statement {
                    vulnerability: Vulnerability { name: id.clone() },
                    products: vec![Product {
                        id: product_id.clone(),
                        subcomponents: vec![subcomponent.clone()],
                    }],
                    status: "fixed",
                }),
            }
        }
    }
    if statements.is_empty() {
        return Err(VexError::NothingFixed);
    }

    // The document ID is derived from its statements, so the same patch gives the same
    // ID, as OpenVEX's canonical IDs are.
    let canonical = serde_json::to_vec(&statements).expect("statements serialize");
    let id = format!(
        "https://openvex.dev/docs/public/vex-{}",
        hex::encode(Sha256::digest(&canonical))
    );
    Ok(VexDocument {
        context: OPENVEX_CONTEXT.to_owned(),
        id,
        author: options.author.clone(),
        timestamp: options.timestamp.to_rfc3339_opts(SecondsFormat::Secs, true),
        version: 1,
        tooling: concat!("layermend ", env!("CARGO_PKG_VERSION")).to_owned(),
        statements,
    })
}

/// `pkg:oci/NAME@sha256:…?repository_url=REGISTRY/REPOSITORY&tag=TAG`, where NAME is
/// the last path segment of the repository, as the purl `oci` type defines it. An image
/// written to an OCI layout or archive has no repository URL: NAME is the layout
/// directory's or archive reference's last segment, and TAG its tag.
fn image_purl(destination: &str, digest: &str) -> Result<String, VexError> {
    let location = Location::parse(destination).map_err(|source| VexError::Destination {
        reference: destination.to_owned(),
        source: Box::new(source),
    })?;
    let reference = match location {
        Location::Registry(reference) => reference,
        Location::OciLayout { dir, tag } => {
            let name = dir
                .file_name()
                .map_or_else(|| "image".to_owned(), |name| name.to_string_lossy().into());
            return Ok(local_purl(&name, digest, tag.as_deref()));
        }
        Location::DockerArchive { file, reference } => {
            let parsed = reference
                .as_deref()
                .and_then(|text| Reference::parse(text).ok());
            let (name, tag) = match &parsed {
                Some(reference) => (
                    reference
                        .repository
                        .rsplit('/')
                        .next()
                        .unwrap_or(&reference.repository)
                        .to_owned(),
                    reference.tag.as_deref(),
                ),
                None => (
                    file.file_stem()
                        .map_or_else(|| "image".to_owned(), |name| name.to_string_lossy().into()),
                    None,
                ),
            };
            return Ok(local_purl(&name, digest, tag));
        }
    };
    let name = reference
        .repository
        .rsplit('/')
        .next()
        .unwrap_or(&reference.repository);
    let mut purl = format!(
        "pkg:oci/{name}@{digest}?repository_url={}/{}",
        reference.registry, reference.repository
    );
    if let Some(tag) = &reference.tag {
        purl.push_str("&tag=");
        purl.push_str(tag);
    }
    Ok(purl)
}

/// `pkg:oci/NAME@DIGEST[?tag=TAG]` for an image outside any registry.
fn local_purl(name: &str, digest: &str, tag: Option<&str>) -> String {
    match tag {
        Some(tag) => format!("pkg:oci/{name}@{digest}?tag={tag}"),
        None => format!("pkg:oci/{name}@{digest}"),
    }
}

/// `pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12` for dpkg images and
/// `pkg:apk/alpine/NAME@VERSION?arch=ARCH&distro=alpine-3.21.0` for apk images, with
/// the namespace and distro qualifier from `os-release`.
fn package_purl(outcome: &PatchOutcome, name: &str, version: &str, arch: &str) -> String {
    let distro = &outcome.distro;
    let kind = match distro.id.as_str() {
        "alpine" | "wolfi" | "chainguard" => "apk",
        _ => "deb",
    };
    let mut purl = format!("pkg:{kind}/{}/{name}@{version}?arch={arch}", distro.id);
    if !distro.version_id.is_empty() {
        purl.push_str(&format!("&distro={}-{}", distro.id, distro.version_id));
    }
    purl
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::{Distro, OUTCOME_SCHEMA_VERSION, PackageUpdate};

    fn update(name: &str, version: &str, cves: &[&str]) -> PackageUpdate {
        PackageUpdate {
            name: name.to_owned(),
            arch: "amd64".to_owned(),
            installed_version: Some("1".to_owned()),
            new_version: version.to_owned(),
            vulnerabilities: cves.iter().map(|c| (*c).to_owned()).collect(),
            reason: "requested".to_owned(),
            size: 1,
        }
    }

    fn outcome(updates: Vec<PackageUpdate>) -> PatchOutcome {
        PatchOutcome {
            schema_version: OUTCOME_SCHEMA_VERSION,
            status: PatchStatus::Patched,
            source: "127.0.0.1:5000/library/debian:bookworm".to_owned(),
            source_digest: format!("sha256:{}", "a".repeat(64)),
            destination: "127.0.0.1:5000/library/debian:bookworm-patched".to_owned(),
            manifest_digest: Some(format!("sha256:{}", "b".repeat(64))),
            layer_digest: Some(format!("sha256:{}", "c".repeat(64))),
            os: "Debian GNU/Linux 12 (bookworm)".to_owned(),
            distro: Distro {
                id: "debian".to_owned(),
                version_id: "12".to_owned(),
            },
            architecture: Some("amd64".to_owned()),
            report_format: "trivy".to_owned(),
            updates,
            skipped: Vec::new(),
            failed: Vec::new(),
            scripts_not_run: Vec::new(),
            warnings: Vec::new(),
            platforms: Vec::new(),
        }
    }

    fn options() -> VexOptions {
        VexOptions {
            author: "tester".to_owned(),
            timestamp: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn statement_per_vulnerability_with_subcomponents() {
        let outcome = outcome(vec![
            update("libssl3", "3.0.15-1~deb12u1", &["CVE-1", "CVE-2"]),
            update("openssl", "3.0.15-1~deb12u1", &["CVE-1"]),
            update("libcrypt1", "1:4.4.33-2", &[]),
        ]);
        let document = openvex_document(&outcome, &options()).unwrap();
        assert_eq!(document.statements.len(), 2);
        let first = &document.statements[0];
        assert_eq!(first.vulnerability.name, "CVE-1");
        assert_eq!(first.status, "fixed");
        assert_eq!(
            first.products[0].id,
            format!(
                "pkg:oci/debian@sha256:{}?repository_url=127.0.0.1:5000/library/debian\
                 &tag=bookworm-patched",
                "b".repeat(64)
            )
        );
        let ids: Vec<&str> = first.products[0]
            .subcomponents
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "pkg:deb/debian/libssl3@3.0.15-1~deb12u1?arch=amd64&distro=debian-12",
                "pkg:deb/debian/openssl@3.0.15-1~deb12u1?arch=amd64&distro=debian-12",
            ]
        );
        assert_eq!(document.timestamp, "2023-11-14T22:13:20Z");
    }

    #[test]
    fn alpine_packages_get_apk_purls() {
        let mut outcome = outcome(vec![update("libcrypto3", "3.3.3-r0", &["CVE-1"])]);
        outcome.distro = Distro {
            id: "alpine".to_owned(),
            version_id: "3.21.0".to_owned(),
        };
        let document = openvex_document(&outcome, &options()).unwrap();
        assert_eq!(
            document.statements[0].products[0].subcomponents[0].id,
            "pkg:apk/alpine/libcrypto3@3.3.3-r0?arch=amd64&distro=alpine-3.21.0"
        );
    }

    #[test]
    fn layouts_and_archives_get_local_purls() {
        let digest = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            image_purl("oci:/tmp/images/app:1.0-patched", &digest).unwrap(),
            format!("pkg:oci/app@{digest}?tag=1.0-patched")
        );
        assert_eq!(
            image_purl("docker-archive:/tmp/app.tar:example/app:2", &digest).unwrap(),
            format!("pkg:oci/app@{digest}?tag=2")
        );
        assert_eq!(
            image_purl("docker://127.0.0.1:5000/library/debian:x", &digest).unwrap(),
            format!("pkg:oci/debian@{digest}?repository_url=127.0.0.1:5000/library/debian&tag=x")
        );
    }

    #[test]
    fn unpatched_outcome_has_no_document() {
        let mut planned = outcome(vec![update("a", "2", &["CVE-1"])]);
        planned.status = PatchStatus::Planned;
        planned.manifest_digest = None;
        assert!(matches!(
            openvex_document(&planned, &options()),
            Err(VexError::NotPatched)
        ));
        let nothing_fixed = outcome(vec![update("a", "2", &[])]);
        assert!(matches!(
            openvex_document(&nothing_fixed, &options()),
            Err(VexError::NothingFixed)
        ));
    }

    #[test]
    fn document_id_is_stable() {
        let outcome = outcome(vec![update("a", "2", &["CVE-1"])]);
        let first = openvex_document(&outcome, &options()).unwrap();
        let second = openvex_document(&outcome, &options()).unwrap();
        assert_eq!(first.id, second.id);
        assert!(first.id.starts_with("https://openvex.dev/docs/public/vex-"));
    }
}
