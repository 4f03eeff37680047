//! Platforms (`os/architecture[/variant]`) and their selection from an image index.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// The annotation that marks attestation manifests in indexes written by BuildKit.
const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";

/// An image platform with OCI names, such as `linux/arm/v7`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// An invalid `--platform` value.
#[derive(Debug, thiserror::Error)]
#[error("invalid platform {input:?}: expected os/architecture[/variant], such as linux/amd64")]
pub struct InvalidPlatform {
    pub input: String,
}

impl Platform {
    /// Returns the platform of the running host: `linux` and the OCI name of the
    /// architecture this binary was built for.
    pub fn host() -> Self {
        let (architecture, variant) = oci_architecture(std::env::consts::ARCH);
        Platform {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Checks whether an index entry's platform satisfies this requested platform.
    ///
    /// A request without variant matches every variant. `arm64` without variant and
    /// `arm64/v8` are the same platform, as containerd treats them.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        let Some(requested) = &self.variant else {
            return true;
        };
        let normalize = |variant: Option<&str>| match self.architecture.as_str() {
            "arm64" => Some(variant.unwrap_or("v8").to_owned()),
            _ => variant.map(str::to_owned),
        };
        normalize(Some(requested)) == normalize(candidate.variant.as_deref())
    }
}

impl FromStr for Platform {
    type Err = InvalidPlatform;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = input.split('/').collect();
        let valid = (2..=3).contains(&parts.len())
            && parts.iter().all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if !valid {
            return Err(InvalidPlatform {
                input: input.to_owned(),
            });
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// Maps a Rust target architecture to the OCI architecture and variant names.
fn oci_architecture(rust_arch: &str) -> (&str, Option<&str>) {
    match rust_arch {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", None),
        // NOTE: a 32-bit ARM build may run on v6 or v8 hardware; v7 is the common case.
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        "loongarch64" => ("loong64", None),
        other => (other, None),
    }
}

/// One entry of an image index, reduced to what platform selection needs.
#[derive(Clone, Debug)]
pub(crate) struct IndexEntry {
    pub digest: String,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    pub platform: Platform,
}

/// Lists the image entries of an index, leaving out attestation manifests and entries
/// without a platform.
pub(crate) fn image_entries(index: &Value) -> Vec<IndexEntry> {
    let Some(manifests) = index.get("manifests").and_then(Value::as_array) else {
        return Vec::new();
    };
    manifests
        .iter()
        .filter(|entry| {
            entry
                .get("annotations")
                .and_then(|a| a.get(REFERENCE_TYPE_ANNOTATION))
                .is_none()
        })
        .filter_map(|entry| {
            let platform = entry.get("platform")?;
            let text = |key: &str| platform.get(key).and_then(Value::as_str).map(str::to_owned);
            let platform = Platform {
                os: text("os")?,
                architecture: text("architecture")?,
                variant: text("variant").filter(|v| !v.is_empty()),
            };
            if platform.os == "unknown" && platform.architecture == "unknown" {
                return None;
            }
            Some(IndexEntry {
                digest: entry.get("digest")?.as_str()?.to_owned(),
                media_type: entry
                    .get("mediaType")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                size: entry.get("size").and_then(Value::as_u64),
                platform,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(text: &str) -> Platform {
        text.parse().unwrap()
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(platform("linux/amd64").to_string(), "linux/amd64");
        assert_eq!(platform("linux/arm/v7").variant.as_deref(), Some("v7"));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            let err = bad.parse::<Platform>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn host_platform_is_linux() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert!(!host.architecture.is_empty());
    }

    #[test]
    fn variant_matching() {
        assert!(platform("linux/arm").matches(&platform("linux/arm/v7")));
        assert!(platform("linux/arm/v7").matches(&platform("linux/arm/v7")));
        assert!(!platform("linux/arm/v7").matches(&platform("linux/arm/v6")));
        assert!(!platform("linux/arm/v7").matches(&platform("linux/arm")));
        assert!(platform("linux/arm64/v8").matches(&platform("linux/arm64")));
        assert!(platform("linux/arm64").matches(&platform("linux/arm64/v8")));
        assert!(!platform("linux/amd64").matches(&platform("linux/arm64")));
        assert!(!platform("windows/amd64").matches(&platform("linux/amd64")));
    }

    #[test]
    fn index_entries_skip_attestations() {
        let index = serde_json::json!({
            "manifests": [
                {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "amd64"}},
                {"digest": "sha256:b", "platform": {"os": "unknown", "architecture": "unknown"}},
                {"digest": "sha256:c", "platform": {"os": "linux", "architecture": "arm64"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
                {"digest": "sha256:d"},
                {"digest": "sha256:e", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}
            ]
        });
        let entries = image_entries(&index);
        let digests: Vec<&str> = entries.iter().map(|e| e.digest.as_str()).collect();
        assert_eq!(digests, ["sha256:a", "sha256:e"]);
    }
}
