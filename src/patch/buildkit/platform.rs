//! Checks that keep a build on images the engine runs natively and has loaded.
//!
//! The engine has no emulation, so it can only run images of its own platform. And when
//! the loaded base's platform differs from the engine's, or the tag is missing, the
//! Dockerfile frontend of Docker 20.10 resolves `FROM` on the remote registry the tag's
//! name implies (Docker Hub for a bare name) instead of failing.

use bollard::Docker;

use super::{BuildkitError, Endpoint};
use crate::digest::Digest;
use crate::registry::Platform;

/// Returns the engine's platform, from `GET /version`.
pub(super) async fn engine_platform(
    docker: &Docker,
    endpoint: &Endpoint,
) -> Result<Platform, BuildkitError> {
    let version = docker
        .version()
        .await
        .map_err(|source| BuildkitError::Unreachable {
            endpoint: endpoint.clone(),
            source,
        })?;
    match (version.os, version.arch) {
        (Some(os), Some(architecture)) => Ok(Platform {
            os,
            architecture,
            variant: None,
        }),
        _ => Err(BuildkitError::NotSupported {
            endpoint: endpoint.clone(),
            reason: "its version response has no Os or Arch".to_owned(),
        }),
    }
}

/// Checks that the engine runs images of `platform`. An image whose config names no
/// platform passes, because there is nothing to compare.
///
/// NOTE: the variant is not compared, so an arm/v6 image passes on an arm/v7 engine.
pub(super) fn check_runs(
    endpoint: &Endpoint,
    engine: &Platform,
    platform: Option<&Platform>,
) -> Result<(), BuildkitError> {
    let Some(platform) = platform else {
        return Ok(());
    };
    if platform.os == engine.os && platform.architecture == engine.architecture {
        return Ok(());
    }
    Err(BuildkitError::ForeignPlatform {
        endpoint: endpoint.clone(),
        platform: platform.to_string(),
        engine: engine.to_string(),
    })
}

/// Checks that `tag` in the engine is the base just loaded: its image ID is the digest
/// of `config` (the image ID a Docker engine gives a loaded image) and its platform is
/// the engine's. Only then does the build's `FROM` resolve to it and not to a registry.
pub(super) async fn check_loaded(
    docker: &Docker,
    endpoint: &Endpoint,
    tag: &str,
    config: &[u8],
    engine: &Platform,
) -> Result<(), BuildkitError> {
    let missing = |reason: String| BuildkitError::LoadedBaseMissing {
        endpoint: endpoint.clone(),
        tag: tag.to_owned(),
        reason,
    };
    let inspect = docker
        .inspect_image(tag)
        .await
        .map_err(|error| missing(format!("inspecting it failed: {error}")))?;
    let expected = Digest::of(config);
    let id = inspect.id.unwrap_or_default();
    if id != expected.as_str() {
        return Err(missing(format!(
            "its image ID is {id:?}, expected {expected} (the digest of the base's config)"
        )));
    }
    let os = inspect.os.unwrap_or_default();
    let architecture = inspect.architecture.unwrap_or_default();
    if os != engine.os || architecture != engine.architecture {
        return Err(missing(format!(
            "it is a {os}/{architecture} image on a {engine} engine"
        )));
    }
    tracing::debug!(%endpoint, tag, %id, "loaded base checked");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(text: &str) -> Platform {
        text.parse().unwrap()
    }

    #[test]
    fn check_runs_compares_os_and_architecture() {
        let endpoint = Endpoint::LocalDefault;
        let engine = platform("linux/amd64");
        assert!(check_runs(&endpoint, &engine, Some(&platform("linux/amd64"))).is_ok());
        assert!(check_runs(&endpoint, &engine, None).is_ok());
        let error = check_runs(&endpoint, &engine, Some(&platform("linux/arm64/v8")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("linux/arm64/v8"), "{error}");
        assert!(error.contains("linux/amd64"), "{error}");
        assert!(error.contains("--platform linux/amd64"), "{error}");
    }
}
