//! Where images come from and go to, in skopeo's transport syntax.
//!
//! A [`Location`] names an image: a registry reference (the default, or `docker://REF`),
//! an OCI image layout (`oci:DIR[:TAG]`) or a `docker save` archive
//! (`docker-archive:FILE[:REF]`). An [`ImageStore`] opens a location and offers the few
//! operations a patch needs (fetch a manifest, open and check blobs, put blobs and
//! manifests), so the patch flow does not depend on the transport.
//!
//! Layouts and archives are written atomically: new blobs go to temporary files renamed
//! into place, `index.json` is replaced by a rename as the last step, a new layout
//! directory and every archive are built beside their final path and renamed onto it.

mod archive;
mod convert;
mod layout;
mod store;

use std::fmt;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::reference::{self, Reference, ReferenceError};
use crate::registry::RegistryError;

pub use convert::to_oci_media_types;
pub use store::{ImageStore, PutManifest};

/// The `oci:` transport prefix.
const OCI_PREFIX: &str = "oci:";
/// The `docker-archive:` transport prefix.
const ARCHIVE_PREFIX: &str = "docker-archive:";
/// The `docker://` transport prefix, optional for registry references.
const DOCKER_PREFIX: &str = "docker://";

/// An image source or destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// An image in a registry.
    Registry(Reference),
    /// An OCI image layout directory; `tag` is the `org.opencontainers.image.ref.name`
    /// annotation of an `index.json` entry.
    OciLayout { dir: PathBuf, tag: Option<String> },
    /// A `docker save` tarball; `reference` picks the image by its `RepoTags` entry.
    DockerArchive {
        file: PathBuf,
        reference: Option<String>,
    },
}

/// A failure to read or write an image outside a registry, or an invalid location.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid image location {input:?}: {reason}")]
    InvalidLocation { input: String, reason: String },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("failed to access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid OCI image layout: {reason}")]
    InvalidLayout { path: PathBuf, reason: String },
    #[error("{path} is not a valid docker archive: {reason}")]
    InvalidArchive { path: PathBuf, reason: String },
    #[error("no image tagged {tag:?} in {path}; tags present: {available}")]
    TagNotFound {
        path: PathBuf,
        tag: String,
        available: String,
    },
    #[error(
        "{path} holds {count} images, so the image to read is ambiguous\n\
         hint: name one as {hint}"
    )]
    Ambiguous {
        path: PathBuf,
        count: usize,
        hint: String,
    },
    #[error("blob {digest} is missing from {path}")]
    BlobMissing { path: PathBuf, digest: Digest },
    #[error("blob {digest} in {path} does not match its descriptor: {reason}")]
    BlobMismatch {
        path: PathBuf,
        digest: Digest,
        reason: String,
    },
    #[error("invalid JSON in {path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl TransportError {
    /// Tells whether the error comes from the user's input rather than a failed read or write.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            TransportError::InvalidLocation { .. }
                | TransportError::Reference(_)
                | TransportError::TagNotFound { .. }
                | TransportError::Ambiguous { .. }
                | TransportError::InvalidLayout { .. }
                | TransportError::InvalidArchive { .. }
        )
    }
}

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TransportError {
    let path = path.into();
    move |source| TransportError::Io { path, source }
}

impl Location {
    /// Parses skopeo's transport syntax; text without a known prefix is a registry
    /// reference. Like skopeo, `oci:` and `docker-archive:` split the path from the tag or
    /// reference at the first `:`, so a path cannot contain one.
    pub fn parse(input: &str) -> Result<Self, TransportError> {
        let invalid = |reason: &str| TransportError::InvalidLocation {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = input.strip_prefix(DOCKER_PREFIX) {
            return Ok(Location::Registry(Reference::parse(rest)?));
        }
        if let Some(rest) = input.strip_prefix(OCI_PREFIX) {
            let (dir, tag) = split_path(rest);
            if dir.is_empty() {
                return Err(invalid(
                    "the layout directory is empty, as in oci:DIR[:TAG]",
                ));
            }
            if let Some(tag) = tag {
                check_layout_tag(tag).map_err(|reason| invalid(&reason))?;
            }
            return Ok(Location::OciLayout {
                dir: PathBuf::from(dir),
                tag: tag.map(str::to_owned),
            });
        }
        if let Some(rest) = input.strip_prefix(ARCHIVE_PREFIX) {
            let (file, reference) = split_path(rest);
            if file.is_empty() {
                return Err(invalid(
                    "the archive path is empty, as in docker-archive:FILE[:REF]",
                ));
            }
            if let Some(reference) = reference {
                let parsed = Reference::parse(reference)?;
                if parsed.digest.is_some() {
                    return Err(invalid("an archive reference cannot carry a digest"));
                }
            }
            return Ok(Location::DockerArchive {
                file: PathBuf::from(file),
                reference: reference.map(str::to_owned),
            });
        }
        Ok(Location::Registry(Reference::parse(input)?))
    }

    /// Whether the text starts with a transport prefix this module supports.
    pub fn has_transport_prefix(input: &str) -> bool {
        [DOCKER_PREFIX, OCI_PREFIX, ARCHIVE_PREFIX]
            .iter()
            .any(|prefix| input.starts_with(prefix))
    }

    /// Names the patched image's location.
    ///
    /// A `tag` with a transport prefix is a location of its own. Otherwise the result
    /// stays in the source's transport: a registry follows [`reference::destination`], a
    /// layout or archive gets the bare `tag`, or the source tag (`latest` when absent)
    /// with `-{tag_suffix}` appended.
    pub fn destination(&self, tag: Option<&str>, tag_suffix: &str) -> Result<Self, TransportError> {
        if let Some(tag) = tag
            && Location::has_transport_prefix(tag)
        {
            return Location::parse(tag);
        }
        match self {
            Location::Registry(source) => Ok(Location::Registry(reference::destination(
                source, tag, tag_suffix,
            )?)),
            Location::OciLayout {
                dir,
                tag: source_tag,
            } => {
                let new_tag = match tag {
                    Some(tag) => tag.to_owned(),
                    None => format!(
                        "{}-{tag_suffix}",
                        source_tag.as_deref().unwrap_or(reference::DEFAULT_TAG)
                    ),
                };
                check_layout_tag(&new_tag).map_err(|reason| TransportError::InvalidLocation {
                    input: new_tag.clone(),
                    reason,
                })?;
                Ok(Location::OciLayout {
                    dir: dir.clone(),
                    tag: Some(new_tag),
                })
            }
            Location::DockerArchive { file, reference } => {
                let source = Reference::parse(reference.as_deref().unwrap_or("image"))?;
                let target = reference::destination(&source, tag, tag_suffix)?;
                Ok(Location::DockerArchive {
                    file: file.clone(),
                    reference: Some(target.to_string()),
                })
            }
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Registry(reference) => write!(f, "{reference}"),
            Location::OciLayout { dir, tag } => {
                write!(f, "{OCI_PREFIX}{}", dir.display())?;
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                Ok(())
            }
            Location::DockerArchive { file, reference } => {
                write!(f, "{ARCHIVE_PREFIX}{}", file.display())?;
                if let Some(reference) = reference {
                    write!(f, ":{reference}")?;
                }
                Ok(())
            }
        }
    }
}

fn split_path(text: &str) -> (&str, Option<&str>) {
    match text.split_once(':') {
        Some((path, rest)) if !rest.is_empty() => (path, Some(rest)),
        Some((path, _)) => (path, None),
        None => (text, None),
    }
}

/// Checks a layout tag against the OCI image layout's `ref.name` grammar, restricted to
/// the characters a tag may have so a tag never looks like a path.
fn check_layout_tag(tag: &str) -> Result<(), String> {
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {tag:?}: use up to 128 letters, digits, '_', '.' and '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_transport() {
        assert_eq!(
            Location::parse("oci:/tmp/layout:v1").unwrap(),
            Location::OciLayout {
                dir: "/tmp/layout".into(),
                tag: Some("v1".to_owned())
            }
        );
        assert_eq!(
            Location::parse("oci:layout").unwrap(),
            Location::OciLayout {
                dir: "layout".into(),
                tag: None
            }
        );
        assert_eq!(
            Location::parse("docker-archive:/tmp/a.tar:debian:12").unwrap(),
            Location::DockerArchive {
                file: "/tmp/a.tar".into(),
                reference: Some("debian:12".to_owned())
            }
        );
        let registry = Location::parse("docker://127.0.0.1:5000/debian:12").unwrap();
        assert_eq!(
            registry,
            Location::parse("127.0.0.1:5000/debian:12").unwrap()
        );
        assert!(matches!(registry, Location::Registry(_)));
    }

    #[test]
    fn rejects_empty_paths_and_bad_tags() {
        for input in ["oci:", "oci::tag", "docker-archive:", "oci:dir:a/b"] {
            let error = Location::parse(input).unwrap_err();
            assert!(error.to_string().contains(input), "{error}");
        }
    }

    #[test]
    fn destination_stays_in_transport() {
        let layout = Location::parse("oci:dir:v1").unwrap();
        assert_eq!(
            layout.destination(None, "patched").unwrap().to_string(),
            "oci:dir:v1-patched"
        );
        assert_eq!(
            layout
                .destination(Some("v2"), "patched")
                .unwrap()
                .to_string(),
            "oci:dir:v2"
        );
        let to_archive = layout
            .destination(Some("docker-archive:out.tar"), "patched")
            .unwrap();
        assert!(matches!(to_archive, Location::DockerArchive { .. }));
        let registry = Location::parse("127.0.0.1:5000/debian:12").unwrap();
        assert_eq!(
            registry.destination(None, "patched").unwrap().to_string(),
            "127.0.0.1:5000/debian:12-patched"
        );
    }
}
