//! Image references in the Docker form `[host[:port]/]path[:tag][@sha256:hex]`.
//!
//! Parsing follows the normalization of the `distribution/reference` Go package that docker
//! and skopeo use: a name without a host lives on `docker.io`, and a single-component name
//! there gains the `library/` namespace.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// The registry that names without a host refer to.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves the distribution API for [`DOCKER_HUB`].
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The tag that a reference without tag and digest means.
pub const DEFAULT_TAG: &str = "latest";

const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const OFFICIAL_NAMESPACE: &str = "library";
/// Maximum length of host plus repository path, as in `distribution/reference`.
const NAME_MAX_LEN: usize = 255;
const TAG_MAX_LEN: usize = 128;

/// A parsed and normalized image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host with an optional port, such as `docker.io` or `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path inside the registry, such as `library/debian`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// An invalid image reference or destination name.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid image reference {input:?}: {reason}")]
    Invalid { input: String, reason: String },
    #[error(
        "cannot name the destination of {source_ref}: it has a digest but no tag\n\
         hint: pass the destination tag with -t"
    )]
    TagRequired { source_ref: String },
    #[error("invalid destination {input:?}: {reason}")]
    InvalidDestination { input: String, reason: String },
}

impl Reference {
    /// Parses `input` with docker's normalization rules.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let invalid = |reason: &str| ReferenceError::Invalid {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(invalid("the reference is empty"));
        }
        if is_hex_64(input) {
            return Err(invalid(
                "a 64-digit hexadecimal string is an image id, not a repository name",
            ));
        }

        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let digest = parse_digest(digest).map_err(|reason| invalid(&reason))?;
                (rest, Some(digest))
            }
            None => (input, None),
        };

        // A tag follows the last colon, unless that colon is part of the host's port: the
        // tag can contain no slash, so a slash after the colon means it was a port.
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if !rest[colon + 1..].contains('/') => {
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(|reason| invalid(&reason))?;
        }

        let (registry, repository) = split_host(name);
        if !registry.is_empty() && registry != DOCKER_HUB {
            check_host(&registry).map_err(|reason| invalid(&reason))?;
        }
        check_repository(&repository).map_err(|reason| invalid(&reason))?;
        if registry.len() + 1 + repository.len() > NAME_MAX_LEN {
            return Err(invalid(&format!(
                "the repository name is longer than {NAME_MAX_LEN} characters"
            )));
        }

        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// Returns the tag, or `latest` when the reference names neither tag nor digest.
    pub fn tag_or_default(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => Some(tag),
            (None, None) => Some(DEFAULT_TAG),
            (None, Some(_)) => None,
        }
    }

    /// Returns the host that serves the distribution API for this registry.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// Returns the same repository with `tag` and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        }
    }

    /// Returns the same repository pinned to `digest`, without a tag.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// Returns `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Reference::parse(input)
    }
}

/// Writes the fully qualified form, which [`Reference::parse`] reads back unchanged.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Names the patched image.
///
/// Without `tag`, the result is the source repository with tag `{source_tag}-{tag_suffix}`,
/// where the source tag defaults to `latest`. A bare `tag` keeps the source repository. A
/// `tag` that contains a `/` or names a repository and tag (`repo:tag`, `host/repo:tag`) is
/// a full reference and must carry a tag and no digest.
pub fn destination(
    source: &Reference,
    tag: Option<&str>,
    tag_suffix: &str,
) -> Result<Reference, ReferenceError> {
    let Some(tag) = tag else {
        let source_tag = match (&source.tag, &source.digest) {
            (Some(tag), _) => tag.as_str(),
            (None, None) => DEFAULT_TAG,
            (None, Some(_)) => {
                return Err(ReferenceError::TagRequired {
                    source_ref: source.to_string(),
                });
            }
        };
        let new_tag = format!("{source_tag}-{tag_suffix}");
        check_tag(&new_tag).map_err(|reason| ReferenceError::InvalidDestination {
            input: new_tag.clone(),
            reason,
        })?;
        return Ok(source.with_tag(&new_tag));
    };

    let invalid = |reason: String| ReferenceError::InvalidDestination {
        input: tag.to_owned(),
        reason,
    };
    if check_tag(tag).is_ok() {
        return Ok(source.with_tag(tag));
    }
    let target = Reference::parse(tag).map_err(|err| match err {
        ReferenceError::Invalid { reason, .. } => invalid(reason),
        other => other,
    })?;
    if target.digest.is_some() {
        return Err(invalid(
            "a destination cannot carry a digest because the patched image gets a new one"
                .to_owned(),
        ));
    }
    if target.tag.is_none() {
        return Err(invalid(
            "a destination repository needs a tag, as in repo:tag".to_owned(),
        ));
    }
    Ok(target)
}

/// Splits a name into host and repository as `splitDockerDomain` does: the first
/// component is a host when it contains `.` or `:`, is `localhost`, or has upper case.
fn split_host(name: &str) -> (String, String) {
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DOCKER_HUB.to_owned(), name.to_owned()),
    };
    if registry == DOCKER_HUB_LEGACY {
        registry = DOCKER_HUB.to_owned();
    }
    if registry == DOCKER_HUB && !repository.contains('/') {
        repository = format!("{OFFICIAL_NAMESPACE}/{repository}");
    }
    (registry, repository)
}

fn parse_digest(value: &str) -> Result<Digest, String> {
    if let Some((algorithm, _)) = value.split_once(':')
        && algorithm != "sha256"
    {
        return Err(format!(
            "digest algorithm {algorithm:?} is not supported, only sha256"
        ));
    }
    value.parse::<Digest>().map_err(|err| err.to_string())
}

/// Checks a tag against `[\w][\w.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    let valid_first = chars.next().is_some_and(word);
    let valid_rest = chars.all(|c| word(c) || c == '.' || c == '-');
    if !valid_first || !valid_rest || tag.len() > TAG_MAX_LEN {
        return Err(format!(
            "invalid tag {tag:?}: a tag is 1 to {TAG_MAX_LEN} letters, digits, '_', '.' or '-' \
             and starts with a letter, digit or '_'"
        ));
    }
    Ok(())
}

/// Checks a host as `distribution/reference` does: dot-separated labels of letters,
/// digits and inner hyphens, or a bracketed IPv6 address, then an optional port.
fn check_host(host: &str) -> Result<(), String> {
    let invalid = || Err(format!("invalid registry host {host:?}"));
    let (address, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((address, after)) = rest.split_once(']') else {
            return invalid();
        };
        if address.is_empty() || !address.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return invalid();
        }
        match after {
            "" => (address, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (address, Some(port)),
                None => return invalid(),
            },
        }
    } else {
        match host.split_once(':') {
            Some((address, port)) => (address, Some(port)),
            None => (host, None),
        }
    };
    if !host.starts_with('[') {
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !address.split('.').all(label_ok) {
            return invalid();
        }
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|number| number > 0)
    {
        return invalid();
    }
    Ok(())
}

/// Checks each path component against `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
fn check_repository(repository: &str) -> Result<(), String> {
    if repository.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("repository name {repository:?} must be lower case"));
    }
    for component in repository.split('/') {
        if !valid_component(component) {
            return Err(format!(
                "invalid repository path component {component:?}: components are lower-case \
                 letters and digits, separated inside by '.', '_', '__' or hyphens"
            ));
        }
    }
    Ok(())
}

fn valid_component(component: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = component.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: exactly one '.', one or two '_', or any number of '-'.
        let start = i;
        let kind = bytes[i];
        while i < bytes.len() && bytes[i] == kind {
            i += 1;
        }
        let run = i - start;
        let allowed = match kind {
            b'.' => run == 1,
            b'_' => run <= 2,
            b'-' => true,
            _ => false,
        };
        if !allowed {
            return false;
        }
    }
    true
}

fn is_hex_64(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn digest() -> Digest {
        format!("sha256:{HEX}").parse().unwrap()
    }

    #[test]
    fn parse_valid_references() {
        let d = format!("sha256:{HEX}");
        // (input, registry, repository, tag, has digest)
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            ("debian", "docker.io", "library/debian", None, false),
            (
                "debian:bookworm",
                "docker.io",
                "library/debian",
                Some("bookworm"),
                false,
            ),
            ("user/app:1.0", "docker.io", "user/app", Some("1.0"), false),
            (
                "docker.io/debian",
                "docker.io",
                "library/debian",
                None,
                false,
            ),
            (
                "index.docker.io/debian:12",
                "docker.io",
                "library/debian",
                Some("12"),
                false,
            ),
            ("index.docker.io/a/b", "docker.io", "a/b", None, false),
            ("localhost/app", "localhost", "app", None, false),
            (
                "localhost:5000/app:v1",
                "localhost:5000",
                "app",
                Some("v1"),
                false,
            ),
            (
                "127.0.0.1:5000/a/b/c:t",
                "127.0.0.1:5000",
                "a/b/c",
                Some("t"),
                false,
            ),
            ("example.com/app", "example.com", "app", None, false),
            ("Example.com/app", "Example.com", "app", None, false),
            ("[::1]:5000/app:x", "[::1]:5000", "app", Some("x"), false),
            (
                "test.com:tag",
                "docker.io",
                "library/test.com",
                Some("tag"),
                false,
            ),
            (
                "a__b/c-d---e.f_g:T_1.x-y",
                "docker.io",
                "a__b/c-d---e.f_g",
                Some("T_1.x-y"),
                false,
            ),
        ];
        for &(input, registry, repository, tag, has_digest) in cases {
            let parsed = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(parsed.registry, registry, "{input}");
            assert_eq!(parsed.repository, repository, "{input}");
            assert_eq!(parsed.tag.as_deref(), tag, "{input}");
            assert_eq!(parsed.digest.is_some(), has_digest, "{input}");
        }

        let by_digest = Reference::parse(&format!("localhost:5000/app@{d}")).unwrap();
        assert_eq!(by_digest.registry, "localhost:5000");
        assert_eq!(by_digest.tag, None);
        assert_eq!(by_digest.digest, Some(digest()));

        let both = Reference::parse(&format!("debian:12@{d}")).unwrap();
        assert_eq!(both.tag.as_deref(), Some("12"));
        assert_eq!(both.digest, Some(digest()));
    }

    #[test]
    fn parse_rejects_bad_input() {
        let cases = [
            "",
            "Debian",
            "docker.io/Library/debian",
            "debian:",
            "debian:-tag",
            "debian:a/b",
            "debian@sha256:abc",
            "debian@sha512:0000",
            "debian@",
            "a//b",
            "/a",
            "a/",
            "a..b",
            "a___b",
            "-a",
            "exa_mple.com/app",
            "host:port/app",
            "host:99999/app",
            "127.0.0.1:0/app",
            HEX,
        ];
        for input in cases {
            let err = Reference::parse(input).expect_err(input);
            assert!(
                err.to_string().contains(&format!("{input:?}")),
                "error for {input:?} does not name it: {err}"
            );
        }
        let long = format!("example.com/{}", "a".repeat(250));
        assert!(Reference::parse(&long).is_err());
    }

    #[test]
    fn display_round_trips() {
        let d = format!("sha256:{HEX}");
        let inputs = [
            "debian".to_owned(),
            "localhost:5000/app:v1".to_owned(),
            format!("example.com/a/b:t@{d}"),
            format!("app@{d}"),
        ];
        for input in inputs {
            let parsed = Reference::parse(&input).unwrap();
            let reparsed = Reference::parse(&parsed.to_string()).unwrap();
            assert_eq!(parsed, reparsed, "{input}");
        }
        assert_eq!(
            Reference::parse("debian:12").unwrap().to_string(),
            "docker.io/library/debian:12"
        );
    }

    #[test]
    fn api_host_maps_docker_hub() {
        assert_eq!(
            Reference::parse("debian").unwrap().api_host(),
            DOCKER_HUB_API_HOST
        );
        assert_eq!(
            Reference::parse("localhost:5000/a").unwrap().api_host(),
            "localhost:5000"
        );
    }

    #[test]
    fn destination_naming() {
        let source = Reference::parse("127.0.0.1:5000/app:1.2").unwrap();

        let default = destination(&source, None, "patched").unwrap();
        assert_eq!(default.to_string(), "127.0.0.1:5000/app:1.2-patched");

        let untagged = Reference::parse("127.0.0.1:5000/app").unwrap();
        let latest = destination(&untagged, None, "patched").unwrap();
        assert_eq!(latest.tag.as_deref(), Some("latest-patched"));

        let bare = destination(&source, Some("fixed"), "patched").unwrap();
        assert_eq!(bare.to_string(), "127.0.0.1:5000/app:fixed");

        let full = destination(&source, Some("127.0.0.1:6000/other:t"), "patched").unwrap();
        assert_eq!(full.to_string(), "127.0.0.1:6000/other:t");

        let hub = destination(&source, Some("user/app:t"), "patched").unwrap();
        assert_eq!(hub.to_string(), "docker.io/user/app:t");
    }

    #[test]
    fn destination_rejects_missing_tag() {
        let pinned = Reference::parse(&format!("127.0.0.1:5000/app@sha256:{HEX}")).unwrap();
        let err = destination(&pinned, None, "patched").unwrap_err();
        assert!(matches!(err, ReferenceError::TagRequired { .. }));
        assert!(err.to_string().contains("-t"));

        // A digest-pinned source with an explicit tag is fine.
        let tagged = destination(&pinned, Some("fixed"), "patched").unwrap();
        assert_eq!(tagged.tag.as_deref(), Some("fixed"));

        let source = Reference::parse("127.0.0.1:5000/app:1").unwrap();
        let no_tag = destination(&source, Some("127.0.0.1:5000/other"), "patched").unwrap_err();
        assert!(no_tag.to_string().contains("needs a tag"), "{no_tag}");

        let with_digest =
            destination(&source, Some(&format!("other:t@sha256:{HEX}")), "patched").unwrap_err();
        assert!(with_digest.to_string().contains("digest"), "{with_digest}");

        let bad = destination(&source, Some("Bad Name"), "patched").unwrap_err();
        assert!(bad.to_string().contains("\"Bad Name\""), "{bad}");
    }
}
