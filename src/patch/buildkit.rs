//! The BuildKit backend: the distribution's package manager installs the resolved
//! versions in a build on a Docker engine, and the build's one new layer becomes the
//! patch layer.
//!
//! The BuildKit that Docker 20.10 embeds is older than 0.10: it has no MergeOp or DiffOp
//! and exports no OCI image. So the base is loaded with `POST /images/load`, a Dockerfile
//! `FROM base` + `RUN apt-get install pkg=version…` is built, and the layer is taken from
//! `docker save` of the result, where the one layer beyond the base's is the `RUN` step's.

mod cleanup;
mod platform;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::models::{BuildInfo, BuildInfoAux};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, BuilderVersion, ImportImageOptionsBuilder,
};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::PackageUpdate;
use super::manifest::{self, SourceImage};
use crate::layer::{self, BuiltLayer, LayerError};
use crate::registry::Platform;
use crate::transport::{ImageStore, TransportError};

mod tls;

pub use tls::{ClientCertificate, TlsFiles, TlsSettings};

/// Seconds a single engine API request may take. Builds stream their progress, so for
/// them this bounds a silence rather than the whole build.
const REQUEST_TIMEOUT_SECS: u64 = 600;
/// Lines of the build's own output kept for an error message.
const OUTPUT_TAIL_LINES: usize = 30;

/// A Docker engine endpoint, the place the build runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `docker://`: the local engine, at `DOCKER_HOST` when that is a `unix://` address,
    /// else at /var/run/docker.sock.
    LocalDefault,
    /// `unix:///path/docker.sock`.
    Unix(PathBuf),
    /// `tcp://host:port`, plain HTTP.
    Tcp(String),
    /// `tcp://host:port` over TLS. The settings are boxed to keep the errors that carry
    /// an endpoint small.
    TcpTls { host: String, tls: Box<TlsSettings> },
}

impl Endpoint {
    /// Parses `docker://`, `unix:///PATH` or `tcp://HOST:PORT`.
    pub fn parse(address: &str) -> Result<Endpoint, BuildkitError> {
        let invalid = |reason: &str| BuildkitError::InvalidAddress {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };
        if address == "docker://" || address == "docker" {
            return Ok(Endpoint::LocalDefault);
        }
        if let Some(path) = address.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(invalid("a unix socket path must be absolute: unix:///PATH"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(host) = address.strip_prefix("tcp://") {
            if host.is_empty() || host.contains('/') {
                return Err(invalid("expected tcp://HOST:PORT"));
            }
            return Ok(Endpoint::Tcp(host.to_owned()));
        }
        Err(invalid(
            "expected docker://, unix:///PATH/docker.sock or tcp://HOST:PORT",
        ))
    }

    /// Returns this endpoint with TLS when any of `files` is given, after checking the
    /// files. Only a `tcp://` endpoint takes TLS files.
    pub fn with_tls(self, files: &TlsFiles) -> Result<Endpoint, BuildkitError> {
        if files.is_empty() {
            return Ok(self);
        }
        match self {
            Endpoint::Tcp(host) => Ok(Endpoint::TcpTls {
                host,
                tls: Box::new(files.check()?),
            }),
            other => Err(BuildkitError::TlsNeedsTcp { endpoint: other }),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::LocalDefault => f.write_str("docker://"),
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(host) | Endpoint::TcpTls { host, .. } => write!(f, "tcp://{host}"),
        }
    }
}

/// A failure of the BuildKit backend. Every variant about the engine names its endpoint,
/// and every variant about a TLS flag names the flag.
#[derive(Debug, thiserror::Error)]
pub enum BuildkitError {
    #[error("invalid BuildKit address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error(
        "the Docker engine at {endpoint} is not reachable\n\
         hint: start dockerd, or pass its socket with --buildkit unix:///PATH/docker.sock"
    )]
    Unreachable {
        endpoint: Endpoint,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "--cacert, --cert and --key apply to tcp:// addresses only, not {endpoint}\n\
         hint: a unix socket or docker:// address connects without TLS; drop the TLS flags"
    )]
    TlsNeedsTcp { endpoint: Endpoint },
    #[error(
        "{needed_by} needs {flag}\n\
         hint: --cacert is the CA certificate that signed the engine's certificate, and \
         --cert and --key are the client certificate and its key"
    )]
    TlsFlagMissing {
        flag: &'static str,
        needed_by: &'static str,
    },
    #[error("failed to read the {flag} file {path}")]
    TlsFileUnreadable {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {flag} file {path} is invalid: {reason}")]
    TlsFileInvalid {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "the TLS connection to the Docker engine at {endpoint} failed\n\
         hint: check --cacert, --cert and --key: the engine's certificate must be signed by \
         the --cacert CA, and an engine started with --tlsverify needs a client certificate \
         it trusts"
    )]
    TlsHandshake {
        endpoint: Endpoint,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("failed to set up TLS for the Docker engine at {endpoint}")]
    TlsSetup {
        endpoint: Endpoint,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "{endpoint} is not a Docker engine with BuildKit: {reason}\n\
         hint: only Docker engine endpoints (API 1.39 or later) are supported; a standalone \
         buildkitd is not"
    )]
    NotSupported { endpoint: Endpoint, reason: String },
    #[error("{distribution} images cannot be patched with BuildKit; only Debian-based ones can")]
    UnsupportedOs { distribution: String },
    #[error(
        "the Docker engine at {endpoint} runs {engine} images and cannot build for {platform}: \
         it has no emulation\n\
         hint: limit the run to the engine's platform with --platform {engine}, or patch \
         {platform} with the in-process backend (--backend inprocess)"
    )]
    ForeignPlatform {
        endpoint: Endpoint,
        platform: String,
        engine: String,
    },
    #[error("failed to load the base image into the Docker engine at {endpoint}: {message}")]
    Load { endpoint: Endpoint, message: String },
    #[error(
        "the base image loaded as {tag} is not usable in the Docker engine at {endpoint}: \
         {reason}; the build did not start, so the engine cannot look for it in a registry"
    )]
    LoadedBaseMissing {
        endpoint: Endpoint,
        tag: String,
        reason: String,
    },
    #[error("the package manager failed in the build on {endpoint}: {message}\n{output}")]
    BuildFailed {
        endpoint: Endpoint,
        message: String,
        output: String,
    },
    #[error("the build on {endpoint} failed before apt-get ran, at the step {step:?}: {message}")]
    BuildSetup {
        endpoint: Endpoint,
        step: String,
        message: String,
    },
    #[error("failed to save the built image from {endpoint}")]
    Save {
        endpoint: Endpoint,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the image {endpoint} saved is not usable: {reason}")]
    InvalidSave { endpoint: Endpoint, reason: String },
    #[error("failed to read source blob for the engine")]
    Source(#[source] TransportError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("failed to write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Connects to the engine and checks that it builds with BuildKit.
pub async fn connect(endpoint: &Endpoint) -> Result<Docker, BuildkitError> {
    let docker = open_client(endpoint)?;
    // Docker 20.10 serves API 1.41 at most, newer engines reject old versions, so the
    // version is agreed with the engine rather than fixed.
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|source| connection_error(endpoint, source))?;
    let api = docker.client_version();
    // BuildKit builds through `POST /build?version=2` need API 1.39 (Docker 18.09).
    let (major, minor) = (api.major_version, api.minor_version);
    if (major, minor) < (1, 39) {
        return Err(BuildkitError::NotSupported {
            endpoint: endpoint.clone(),
            reason: format!("its API version {major}.{minor} is older than 1.39"),
        });
    }
    tracing::debug!(%endpoint, api = %format!("{major}.{minor}"), "connected to the Docker engine");
    Ok(docker)
}

/// Creates the bollard client for `endpoint` without sending a request.
fn open_client(endpoint: &Endpoint) -> Result<Docker, BuildkitError> {
    let version = bollard::API_DEFAULT_VERSION;
    let client = match endpoint {
        Endpoint::LocalDefault => Docker::connect_with_local_defaults(),
        Endpoint::Unix(path) => {
            Docker::connect_with_socket(&path.to_string_lossy(), REQUEST_TIMEOUT_SECS, version)
        }
        Endpoint::Tcp(host) => {
            Docker::connect_with_http(&format!("http://{host}"), REQUEST_TIMEOUT_SECS, version)
        }
        Endpoint::TcpTls { host, tls } => {
            return tls::connect(host, tls, REQUEST_TIMEOUT_SECS).map_err(|source| {
                BuildkitError::TlsSetup {
                    endpoint: endpoint.clone(),
                    source,
                }
            });
        }
    };
    client.map_err(|source| connection_error(endpoint, source))
}

/// Returns the error for a failed connection: a TLS failure on a TLS endpoint, else an
/// unreachable engine.
fn connection_error(endpoint: &Endpoint, source: bollard::errors::Error) -> BuildkitError {
    let endpoint = endpoint.clone();
    if matches!(endpoint, Endpoint::TcpTls { .. }) && tls::is_tls_failure(&source) {
        BuildkitError::TlsHandshake { endpoint, source }
    } else {
        BuildkitError::Unreachable { endpoint, source }
    }
}

/// Checks that the engine at `endpoint` runs images of `platform`, so that a run fails
/// before resolving packages it could not install.
pub async fn check_platform(
    endpoint: &Endpoint,
    platform: Option<&Platform>,
) -> Result<(), BuildkitError> {
    let docker = connect(endpoint).await?;
    let engine = platform::engine_platform(&docker, endpoint).await?;
    platform::check_runs(endpoint, &engine, platform)
}

/// Installs `updates` at their exact versions with apt-get in a build on `image` and
/// returns the build's new layer, written into `work_dir`. The images it creates in the
/// engine are removed afterwards, whether the build worked, failed or was cancelled.
pub async fn build_layer(
    endpoint: &Endpoint,
    source: &ImageStore,
    image: &SourceImage,
    updates: &[PackageUpdate],
    work_dir: &Path,
) -> Result<BuiltLayer, BuildkitError> {
    let docker = connect(endpoint).await?;
    let platform = platform::engine_platform(&docker, endpoint).await?;
    let image_platform = manifest::config_platform(&image.config_bytes);
    platform::check_runs(endpoint, &platform, image_platform.as_ref())?;
    let mut images = cleanup::TempImages::new(endpoint);
    let engine = Engine {
        docker,
        endpoint,
        platform,
        base_tag: images.base_tag.clone(),
        built_tag: images.built_tag.clone(),
    };
    let result = build_in_engine(&engine, source, image, updates, work_dir).await;
    images.remove(&engine.docker).await;
    result
}

/// A connected engine, its platform, and the tags of the temporary images one build
/// creates there.
struct Engine<'a> {
    docker: Docker,
    endpoint: &'a Endpoint,
    platform: Platform,
    base_tag: String,
    built_tag: String,
}

async fn build_in_engine(
    engine: &Engine<'_>,
    source: &ImageStore,
    image: &SourceImage,
    updates: &[PackageUpdate],
    work_dir: &Path,
) -> Result<BuiltLayer, BuildkitError> {
    let dir = work_dir.join("buildkit");
    create_dir(&dir)?;
    let archive = dir.join("base.tar");
    write_load_archive(source, image, &engine.base_tag, &dir, &archive).await?;
    load(engine, &archive).await?;
    platform::check_loaded(
        &engine.docker,
        engine.endpoint,
        &engine.base_tag,
        &image.config_bytes,
        &engine.platform,
    )
    .await?;
    build(engine, updates).await?;
    let saved = dir.join("saved.tar");
    save(engine, &saved).await?;
    let layer_tar = dir.join("layer.tar");
    tokio::task::block_in_place(|| {
        extract_new_layer(engine.endpoint, &saved, image, &layer_tar)?;
        Ok(layer::compress_tar(&layer_tar, work_dir)?)
    })
}

/// Returns the Dockerfile that installs `updates`. `--force-confold` keeps the image's
/// changed configuration files, as the in-process backend does. The package lists that
/// apt-get downloads are removed in the same step, so they never reach the layer.
///
/// NOTE: packages the plan adds as new dependencies are named too, so apt marks them
/// manually installed, where the in-process backend marks them automatic.
pub fn dockerfile(base_tag: &str, updates: &[PackageUpdate]) -> String {
    let pins: Vec<String> = updates
        .iter()
        .map(|update| format!("{}={}", update.name, update.new_version))
        .collect();
    format!(
        "FROM {base_tag}\n\
         RUN apt-get update \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         -o Dpkg::Options::=--force-confold {} \
         && apt-get clean && rm -rf /var/lib/apt/lists/*\n",
        pins.join(" ")
    )
}

/// Writes the base as a classic `docker save` archive (`manifest.json`, config, and the
/// compressed layer blobs as they are, which `docker load` decompresses itself).
///
/// NOTE: Docker 20.10 decompresses gzip layers only, so it rejects a zstd-compressed base.
async fn write_load_archive(
    source: &ImageStore,
    image: &SourceImage,
    tag: &str,
    dir: &Path,
    archive: &Path,
) -> Result<(), BuildkitError> {
    let mut names = Vec::new();
    for (i, layer) in image.layers.iter().enumerate() {
        let name = format!("layer{i}.tar");
        let path = dir.join(&name);
        let mut reader = source
            .open_blob(&layer.digest, layer.size)
            .await
            .map_err(BuildkitError::Source)?;
        let io_error = |source| BuildkitError::Io {
            path: path.clone(),
            source,
        };
        let mut file = tokio::fs::File::create(&path).await.map_err(io_error)?;
        tokio::io::copy(&mut reader, &mut file)
            .await
            .map_err(io_error)?;
        file.flush().await.map_err(io_error)?;
        names.push(name);
    }
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [tag],
        "Layers": names,
    }]);
    let io_error = |source| BuildkitError::Io {
        path: archive.to_owned(),
        source,
    };
    let file = fs_err::File::create(archive).map_err(io_error)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    append_bytes(
        &mut tar,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap_or_default(),
    )
    .map_err(io_error)?;
    append_bytes(&mut tar, "config.json", &image.config_bytes).map_err(io_error)?;
    for name in &names {
        tar.append_path_with_name(dir.join(name), name)
            .map_err(io_error)?;
    }
    tar.into_inner()
        .map_err(io_error)?
        .into_inner()
        .map_err(|error| io_error(error.into_error()))?;
    Ok(())
}

fn append_bytes<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, name, data)
}

async fn load(engine: &Engine<'_>, archive: &Path) -> Result<(), BuildkitError> {
    let endpoint = engine.endpoint;
    let file = tokio::fs::File::open(archive)
        .await
        .map_err(|source| BuildkitError::Io {
            path: archive.to_owned(),
            source,
        })?;
    let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(file));
    let options = ImportImageOptionsBuilder::new().quiet(true).build();
    let mut stream = engine.docker.import_image(options, body, None);
    while let Some(item) = stream.next().await {
        let info = item.map_err(|error| BuildkitError::Load {
            endpoint: endpoint.clone(),
            message: error.to_string(),
        })?;
        if let Some(message) = info.error_detail.and_then(|detail| detail.message) {
            return Err(BuildkitError::Load {
                endpoint: endpoint.clone(),
                message,
            });
        }
    }
    Ok(())
}

/// Runs the build, keeping the tail of the steps' output for the error message.
async fn build(engine: &Engine<'_>, updates: &[PackageUpdate]) -> Result<(), BuildkitError> {
    let endpoint = engine.endpoint;
    let dockerfile = dockerfile(&engine.base_tag, updates);
    tracing::debug!(%endpoint, %dockerfile, "building");
    let mut context = tar::Builder::new(Vec::new());
    append_bytes(&mut context, "Dockerfile", dockerfile.as_bytes()).map_err(|source| {
        BuildkitError::Io {
            path: PathBuf::from("Dockerfile"),
            source,
        }
    })?;
    let context = context.into_inner().unwrap_or_default();
    // The engine may run without a bridge network (`dockerd --bridge=none`), and the
    // step needs the package archive, so it shares the engine host's network.
    let options = BuildImageOptionsBuilder::new()
        .dockerfile("Dockerfile")
        .t(&engine.built_tag)
        .networkmode("host")
        .rm(true)
        .version(BuilderVersion::BuilderBuildKit)
        .session(&engine.built_tag)
        .build();
    let mut output = BuildOutput::default();
    let mut stream =
        engine
            .docker
            .build_image(options, None, Some(bollard::body_full(context.into())));
    let mut failure = None;
    // The stream is read to its end even after an error, because the engine can send
    // the failed step's last output after the error itself.
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => output.record(&info),
            Err(error) if failure.is_none() => {
                failure = Some(match error {
                    bollard::errors::Error::DockerStreamError { error } => error,
                    other => other.to_string(),
                });
            }
            Err(error) => tracing::debug!(%endpoint, %error, "further build error"),
        }
    }
    let Some(message) = failure else {
        return Ok(());
    };
    // A failure before the `RUN` step, such as resolving `FROM`, has no apt-get output.
    if output.run_started {
        return Err(BuildkitError::BuildFailed {
            endpoint: endpoint.clone(),
            message,
            output: output.text(),
        });
    }
    Err(BuildkitError::BuildSetup {
        endpoint: endpoint.clone(),
        step: output.failed_step.unwrap_or_default(),
        message,
    })
}

/// The last lines the build steps wrote to stdout and to stderr, and the steps' progress.
/// The streams are kept apart because apt-get writes its `E:` lines to stderr, after pages
/// of stdout.
#[derive(Default)]
struct BuildOutput {
    stdout: OutputTail,
    stderr: OutputTail,
    /// Whether the `RUN` step, the one that runs apt-get, started.
    run_started: bool,
    /// The name of the first step that reported an error.
    failed_step: Option<String>,
}

impl BuildOutput {
    fn record(&mut self, info: &BuildInfo) {
        let Some(BuildInfoAux::BuildKit(status)) = &info.aux else {
            return;
        };
        for log in &status.logs {
            // BuildKit numbers the streams as file descriptors: 1 stdout, 2 stderr.
            let tail = if log.stream == 2 {
                &mut self.stderr
            } else {
                &mut self.stdout
            };
            tail.add(&log.msg);
        }
        for vertex in &status.vertexes {
            // BuildKit names a Dockerfile step `[N/M] INSTRUCTION ARGS`.
            if vertex.started.is_some() && vertex.name.contains("] RUN ") {
                self.run_started = true;
            }
            if !vertex.error.is_empty() {
                tracing::debug!(step = %vertex.name, error = %vertex.error, "build step failed");
                if self.failed_step.is_none() {
                    self.failed_step = Some(vertex.name.clone());
                }
            }
        }
    }

    fn text(self) -> String {
        format!(
            "the step's last lines on stdout:\n{}\nthe step's last lines on stderr:\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

/// The last [`OUTPUT_TAIL_LINES`] lines of one output stream.
#[derive(Default)]
struct OutputTail {
    lines: VecDeque<String>,
    partial: String,
}

impl OutputTail {
    fn add(&mut self, bytes: &[u8]) {
        self.partial.push_str(&String::from_utf8_lossy(bytes));
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            self.push(line.trim_end().to_owned());
        }
    }

    fn push(&mut self, line: String) {
        self.lines.push_back(line);
        if self.lines.len() > OUTPUT_TAIL_LINES {
            self.lines.pop_front();
        }
    }

    fn text(mut self) -> String {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.push(rest);
        }
        Vec::from(self.lines).join("\n")
    }
}

async fn save(engine: &Engine<'_>, path: &Path) -> Result<(), BuildkitError> {
    let io_error = |source| BuildkitError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::create(path).await.map_err(io_error)?;
    let mut stream = engine.docker.export_image(&engine.built_tag);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| BuildkitError::Save {
            endpoint: engine.endpoint.clone(),
            source,
        })?;
        file.write_all(&chunk).await.map_err(io_error)?;
    }
    file.flush().await.map_err(io_error)
}

/// One image of a classic archive's `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    layers: Vec<String>,
}

/// Copies the one layer the build added out of the saved archive into `layer_tar`,
/// after checking that the layers below it are the base's.
fn extract_new_layer(
    endpoint: &Endpoint,
    saved: &Path,
    base: &SourceImage,
    layer_tar: &Path,
) -> Result<(), BuildkitError> {
    let invalid = |reason: String| BuildkitError::InvalidSave {
        endpoint: endpoint.clone(),
        reason,
    };
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| BuildkitError::Io { path, source }
    };
    let dir = saved.with_extension("d");
    create_dir(&dir)?;
    let file = fs_err::File::open(saved).map_err(io_error(saved))?;
    tar::Archive::new(file)
        .unpack(&dir)
        .map_err(|error| invalid(format!("failed to unpack: {error}")))?;
    let manifest_path = dir.join("manifest.json");
    let manifest = fs_err::read(&manifest_path).map_err(io_error(&manifest_path))?;
    let images: Vec<SavedImage> = serde_json::from_slice(&manifest)
        .map_err(|error| invalid(format!("manifest.json is invalid: {error}")))?;
    let [image] = images.as_slice() else {
        return Err(invalid(format!("it lists {} images, not 1", images.len())));
    };
    let config_path = dir.join(&image.config);
    let config = fs_err::read(&config_path).map_err(io_error(&config_path))?;
    let built_ids = diff_ids(&config);
    let base_ids = diff_ids(&base.config_bytes);
    if built_ids.len() != base_ids.len() + 1 || built_ids[..base_ids.len()] != base_ids[..] {
        return Err(invalid(format!(
            "expected the base's {} layers and one more, found {} layers",
            base_ids.len(),
            built_ids.len()
        )));
    }
    let Some(last) = image.layers.last() else {
        return Err(invalid("it has no layers".to_owned()));
    };
    let from = dir.join(last);
    fs_err::rename(&from, layer_tar).map_err(io_error(layer_tar))?;
    Ok(())
}

fn diff_ids(config: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Value>(config)
        .ok()
        .and_then(|value| value.pointer("/rootfs/diff_ids").cloned())
        .and_then(|ids| serde_json::from_value(ids).ok())
        .unwrap_or_default()
}

fn create_dir(path: &Path) -> Result<(), BuildkitError> {
    fs_err::create_dir_all(path).map_err(|source| BuildkitError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parses_forms() {
        assert_eq!(
            Endpoint::parse("docker://").unwrap(),
            Endpoint::LocalDefault
        );
        assert_eq!(
            Endpoint::parse("unix:///run/docker.sock").unwrap(),
            Endpoint::Unix(PathBuf::from("/run/docker.sock"))
        );
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:2375").unwrap(),
            Endpoint::Tcp("127.0.0.1:2375".to_owned())
        );
        assert!(Endpoint::parse("unix://relative.sock").is_err());
        assert!(Endpoint::parse("ssh://host").is_err());
    }

    fn status(name: &str, started: bool, error: &str) -> BuildInfo {
        let vertex = bollard::moby::buildkit::v1::Vertex {
            name: name.to_owned(),
            started: started.then(Default::default),
            error: error.to_owned(),
            ..Default::default()
        };
        let response = bollard::moby::buildkit::v1::StatusResponse {
            vertexes: vec![vertex],
            ..Default::default()
        };
        BuildInfo {
            aux: Some(BuildInfoAux::BuildKit(response)),
            ..Default::default()
        }
    }

    #[test]
    fn build_output_failure_before_run() {
        let mut output = BuildOutput::default();
        let step = "[internal] load metadata for docker.io/library/base:1";
        output.record(&status(step, true, "no such host"));
        output.record(&status("[2/2] RUN apt-get update", false, ""));
        assert!(!output.run_started);
        assert_eq!(output.failed_step.as_deref(), Some(step));
    }

    #[test]
    fn build_output_failure_in_run() {
        let mut output = BuildOutput::default();
        let step = "[2/2] RUN apt-get update";
        output.record(&status(step, true, ""));
        output.record(&status(step, true, "exit code: 100"));
        assert!(output.run_started);
        assert_eq!(output.failed_step.as_deref(), Some(step));
    }

    #[test]
    fn tls_files_need_tcp() {
        let files = TlsFiles {
            ca_cert: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..TlsFiles::default()
        };
        for address in ["unix:///run/docker.sock", "docker://"] {
            let endpoint = Endpoint::parse(address).unwrap();
            let error = endpoint.with_tls(&files).unwrap_err();
            assert!(
                matches!(error, BuildkitError::TlsNeedsTcp { .. }),
                "{address}: {error}"
            );
            assert!(error.to_string().contains(address), "{error}");
        }
        let plain = Endpoint::parse("tcp://127.0.0.1:2376").unwrap();
        assert_eq!(plain.clone().with_tls(&TlsFiles::default()).unwrap(), plain);
    }

    #[test]
    fn dockerfile_pins_versions() {
        let update = PackageUpdate {
            name: "zlib1g".into(),
            arch: "amd64".into(),
            installed_version: Some("1:1.2.13.dfsg-1".into()),
            new_version: "1:1.2.13.dfsg-1+deb12u1".into(),
            vulnerabilities: Vec::new(),
            reason: String::new(),
            size: 0,
        };
        let text = dockerfile("base:1", &[update]);
        assert!(text.starts_with("FROM base:1\n"));
        assert!(text.contains(" zlib1g=1:1.2.13.dfsg-1+deb12u1 "));
    }
}
