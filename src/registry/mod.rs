//! Registry access: manifests and blobs over the OCI distribution API.
//!
//! [`RegistryClient`] wraps oci-client and uses only its streaming and raw-manifest calls:
//! whole-image pulls and pushes hold layers in memory, and its typed manifest push
//! re-serializes the manifest, which changes the digest.
//!
//! Transport rule, as docker and skopeo apply it to insecure registries: the first request to
//! a host is `GET /v2/` over HTTPS, trusting the platform's roots plus
//! [`RegistryOptions::ca_files`]. Loopback hosts (`localhost`, `127.0.0.0/8`, `[::1]`) and
//! hosts in [`RegistryOptions::insecure_registries`] fall back to plain HTTP when the server
//! replies to the TLS handshake in plain HTTP. A host in [`RegistryOptions::tls_registries`]
//! never falls back. Any other handshake failure, such as an untrusted certificate, is an error.
//!
//! Authentication follows the challenge of that first `GET /v2/`: basic credentials go to
//! oci-client as they are, and for a bearer challenge this module gets a token per
//! repository scope from the token server ([`token`]) and hands it to oci-client.

pub mod auth;
mod blob;
mod confirm;
mod error;
mod platform;
mod retry;
mod token;

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use oci_client::Client;
use oci_client::RegistryOperation;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

pub use blob::BlobReader;
pub use error::RegistryError;
pub use platform::{InvalidPlatform, Platform};
pub use retry::{RetryPolicy, transient_cause};

use self::auth::{AuthEnv, Credential};
use self::blob::{CheckedStream, FailureSlot, Reopen, Reopened};
use self::error::{Context, classify, is_plain_http_reply};
use self::retry::{Operation, with_retries};
use self::token::{Challenge, TokenCache, TokenRequest};
use crate::digest::Digest;
use crate::image::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, ImageFamily, OCI_INDEX, OCI_MANIFEST};
use crate::reference::Reference;

/// The manifest media types requested from registries, in order of preference.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Maximum size of an image config read into memory, the limit containers/image
/// (`iolimits.MaxConfigBodySize`) applies.
pub const MAX_CONFIG_SIZE: u64 = 4 * 1024 * 1024;

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Hosts (with port, as written in references) that may be reached over plain HTTP
    /// when they reply to the TLS handshake in plain HTTP, as loopback hosts may.
    pub insecure_registries: Vec<String>,
    /// Hosts, loopback ones included, reached over HTTPS only.
    pub tls_registries: Vec<String>,
    /// PEM files of extra trusted CA certificates, such as `SSL_CERT_FILE`.
    pub ca_files: Vec<PathBuf>,
    /// Limit for connecting and for each read; a whole transfer may take longer.
    pub timeout: Option<Duration>,
    pub auth_env: AuthEnv,
    /// Retries of requests that failed for a transient reason.
    pub retry: RetryPolicy,
}

/// A manifest or index exactly as the registry returned it.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

/// A content descriptor from a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// One image manifest, chosen for a platform, with its config.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    pub manifest: FetchedManifest,
    pub family: ImageFamily,
    pub config: Descriptor,
    /// The config blob, digest and size verified.
    pub config_bytes: Vec<u8>,
    pub layers: Vec<Descriptor>,
    /// The index or manifest list the manifest was chosen from, if any.
    pub index: Option<FetchedManifest>,
    /// The platform of the chosen index entry, if an index was followed.
    pub platform: Option<Platform>,
}

/// Outcome of [`RegistryClient::push_blob_file`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobPush {
    AlreadyPresent,
    Uploaded,
}

/// Outcome of [`RegistryClient::copy_blob`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobCopy {
    AlreadyPresent,
    /// Mounted from another repository of the same registry without a transfer.
    Mounted,
    /// Streamed through this process.
    Streamed,
}

/// A registry client with transport and credentials resolved once per registry host.
pub struct RegistryClient {
    http: Client,
    https: Client,
    /// Client for the first `GET /v2/` of each host and for token servers.
    api: reqwest::Client,
    insecure_registries: Vec<String>,
    tls_registries: Vec<String>,
    auth_env: AuthEnv,
    hosts: std::sync::Mutex<HashMap<String, Arc<Host>>>,
    /// Held while a host is probed, so concurrent tasks probe each host once.
    probe_lock: Mutex<()>,
    tokens: TokenCache,
    retry: RetryPolicy,
}

/// The transport and auth challenge found by the first `GET /v2/` to a registry host, and
/// the host's credential.
struct Host {
    tls: bool,
    challenge: Challenge,
    /// Replaced when a token server rotates an identity token.
    credential: std::sync::Mutex<Credential>,
}

/// The access a request needs, which selects the bearer token scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Pull,
    Push,
}

impl Access {
    fn scope(self, repository: &str) -> String {
        match self {
            Access::Pull => format!("repository:{repository}:pull"),
            Access::Push => format!("repository:{repository}:pull,push"),
        }
    }

    /// Lists the oci-client operations that a token for this access covers.
    fn operations(self) -> &'static [RegistryOperation] {
        match self {
            Access::Pull => &[RegistryOperation::Pull],
            Access::Push => &[RegistryOperation::Pull, RegistryOperation::Push],
        }
    }
}

/// One prepared request target: the oci-client for its scheme and the converted reference.
struct Target<'a> {
    client: &'a Client,
    reference: oci_client::Reference,
    auth: RegistryAuth,
}

impl RegistryClient {
    /// Builds the client; reads the CA files and installs the rustls ring provider.
    pub fn new(options: RegistryOptions) -> Result<Self, RegistryError> {
        // Another part of the process may have installed a provider already; either way
        // one is in place afterwards.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let mut certificates = Vec::new();
        let mut api = reqwest::Client::builder();
        for path in &options.ca_files {
            let from_file = read_ca_file(path)?;
            for certificate in &from_file {
                let parsed =
                    reqwest::Certificate::from_pem(&certificate.data).map_err(|source| {
                        RegistryError::CaCertificate {
                            path: path.clone(),
                            source,
                        }
                    })?;
                api = api.tls_certs_merge([parsed]);
            }
            certificates.extend(from_file);
        }
        if let Some(timeout) = options.timeout {
            api = api.connect_timeout(timeout).read_timeout(timeout);
        }
        let api = api.build().map_err(|source| RegistryError::Setup {
            source: Box::new(OciDistributionError::RequestError(source)),
        })?;
        let config = |protocol, extra_root_certificates| ClientConfig {
            protocol,
            extra_root_certificates,
            // One PUT per blob with a streamed body, in place of 4 MiB PATCH requests.
            use_monolithic_push: true,
            read_timeout: options.timeout,
            connect_timeout: options.timeout,
            platform_resolver: None,
            ..ClientConfig::default()
        };
        // `Client::new` falls back to a default client on errors, dropping the CA files.
        let build = |config| {
            Client::try_from(config).map_err(|source| RegistryError::Setup {
                source: Box::new(source),
            })
        };
        Ok(RegistryClient {
            http: build(config(ClientProtocol::Http, Vec::new()))?,
            https: build(config(ClientProtocol::Https, certificates))?,
            api,
            insecure_registries: options.insecure_registries,
            tls_registries: options.tls_registries,
            auth_env: options.auth_env,
            hosts: std::sync::Mutex::new(HashMap::new()),
            probe_lock: Mutex::new(()),
            tokens: TokenCache::default(),
            retry: options.retry,
        })
    }

    /// Returns whether `registry` (a host with optional port) may fall back to plain HTTP
    /// when it replies to the TLS handshake in plain HTTP.
    pub fn may_use_plain_http(&self, registry: &str) -> bool {
        if self.tls_registries.iter().any(|host| host == registry) {
            return false;
        }
        is_loopback(registry) || self.insecure_registries.iter().any(|host| host == registry)
    }

    /// Fetches a manifest or index by tag or digest, verifying the digest when the
    /// reference pins one.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<FetchedManifest, RegistryError> {
        let target = self.target(reference, Access::Pull).await?;
        let what = match (&reference.digest, reference.tag_or_default()) {
            (Some(digest), _) => format!("manifest {digest}"),
            (None, tag) => format!("manifest for tag {:?}", tag.unwrap_or_default()),
        };
        let operation = Operation {
            name: "fetch manifest",
            registry: &reference.registry,
            subject: &what,
        };
        let (bytes, _) = with_retries(&self.retry, operation, || async {
            target
                .client
                .pull_manifest_raw(&target.reference, &target.auth, &MANIFEST_MEDIA_TYPES)
                .await
                .map_err(|error| self.classify(error, reference, "pull", what.clone()))
        })
        .await?;

        let digest = Digest::of(&bytes);
        if let Some(expected) = &reference.digest
            && *expected != digest
        {
            return Err(RegistryError::DigestMismatch {
                registry: reference.registry.clone(),
                repository: reference.repository.clone(),
                expected: expected.clone(),
                actual: digest.to_string(),
            });
        }
        let media_type = manifest_media_type(&bytes, reference)?;
        tracing::debug!(%reference, %digest, media_type, "fetched manifest");
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Resolves a reference to one image manifest, following an index to the entry for
    /// `platform` (the host's platform when `None`), and reads its config.
    pub async fn resolve_image(
        &self,
        reference: &Reference,
        platform: Option<&Platform>,
    ) -> Result<ResolvedImage, RegistryError> {
        let top = self.fetch_manifest(reference).await?;
        let (manifest, index, chosen) = if is_index(&top.media_type) {
            let requested = platform.cloned().unwrap_or_else(Platform::host);
            let (digest, found) = select_platform(&top, reference, &requested)?;
            let child = self.fetch_manifest(&reference.with_digest(digest)).await?;
            if is_index(&child.media_type) {
                return Err(invalid_manifest(
                    reference,
                    "an index entry for the platform is itself an index",
                ));
            }
            tracing::debug!(%reference, platform = %found, digest = %child.digest, "selected manifest from index");
            (child, Some(top), Some(found))
        } else {
            (top, None, None)
        };

        let family = ImageFamily::from_manifest_media_type(&manifest.media_type).map_err(|_| {
            RegistryError::UnsupportedMediaType {
                reference: reference.to_string(),
                media_type: manifest.media_type.clone(),
            }
        })?;
        let (config, layers) = parse_image_manifest(&manifest.bytes, reference)?;
        if config.size > MAX_CONFIG_SIZE {
            return Err(invalid_manifest(
                reference,
                &format!(
                    "config {} has {} bytes, more than the {MAX_CONFIG_SIZE} allowed",
                    config.digest, config.size
                ),
            ));
        }
        let config_bytes = self
            .read_blob(reference, &config.digest, config.size)
            .await?;
        Ok(ResolvedImage {
            manifest,
            family,
            config,
            config_bytes,
            layers,
            index,
            platform: chosen,
        })
    }

    /// Opens a blob for streaming. The reader fails, with a [`RegistryError`] inside the
    /// `io::Error`, on a digest mismatch at the end, as soon as more than `size` bytes arrive,
    /// or when fewer arrive. Read it to the end: only then is the digest checked.
    pub async fn open_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<BlobReader, RegistryError> {
        Ok(BlobReader::new(
            self.blob_stream(reference, digest, size).await?,
        ))
    }

    /// Reads a whole blob into memory, checked as [`Self::open_blob`] checks it.
    pub async fn read_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut reader = self.open_blob(reference, digest, size).await?;
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 20));
        reader
            .read_to_end(&mut bytes)
            .await
            .map_err(|error| into_registry_error(error, reference, digest))?;
        Ok(bytes)
    }

    /// Checks whether the repository has the blob.
    pub async fn blob_exists(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let target = self.target(reference, Access::Pull).await?;
        let operation = Operation {
            name: "check blob",
            registry: &reference.registry,
            subject: digest,
        };
        with_retries(&self.retry, operation, || async {
            target
                .client
                .blob_exists(&target.reference, digest.as_str())
                .await
                .map_err(|error| self.classify(error, reference, "check", format!("blob {digest}")))
        })
        .await
    }

    /// Uploads a file as a blob, streaming it, unless the repository already has the blob.
    pub async fn push_blob_file(
        &self,
        target_ref: &Reference,
        path: &Path,
        digest: &Digest,
        size: u64,
    ) -> Result<BlobPush, RegistryError> {
        if self.blob_exists(target_ref, digest).await? {
            tracing::debug!(target = %target_ref, %digest, "blob already present, skipping upload");
            return Ok(BlobPush::AlreadyPresent);
        }
        let operation = Operation {
            name: "push blob",
            registry: &target_ref.registry,
            subject: digest,
        };
        // Each try opens the file again, so the upload restarts from its first byte.
        with_retries(&self.retry, operation, || {
            self.upload_file(target_ref, path, digest, size)
        })
        .await?;
        Ok(BlobPush::Uploaded)
    }

    async fn upload_file(
        &self,
        target_ref: &Reference,
        path: &Path,
        digest: &Digest,
        size: u64,
    ) -> Result<(), RegistryError> {
        let file_error = |source| RegistryError::BlobFile {
            path: path.to_owned(),
            digest: digest.clone(),
            source,
        };
        let file = tokio::fs::File::open(path).await.map_err(file_error)?;
        let actual = file.metadata().await.map_err(file_error)?.len();
        if actual != size {
            return Err(RegistryError::BlobFileSize {
                path: path.to_owned(),
                digest: digest.clone(),
                expected: size,
                actual,
            });
        }
        let path_for_errors = path.to_owned();
        let stream = tokio_util::io::ReaderStream::new(file).map_err(move |source| {
            OciDistributionError::IoError(std::io::Error::new(
                source.kind(),
                format!("failed to read {}: {source}", path_for_errors.display()),
            ))
        });
        tracing::debug!(target = %target_ref, %digest, size, path = %path.display(), "uploading blob");
        self.push_stream(target_ref, stream, digest, size).await
    }

    /// Copies a blob between repositories: nothing when the target has it, a cross-repository
    /// mount within one registry, and a streamed download and upload otherwise or when the
    /// mount fails.
    pub async fn copy_blob(
        &self,
        from: &Reference,
        to: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<BlobCopy, RegistryError> {
        if self.blob_exists(to, digest).await? {
            tracing::debug!(target = %to, %digest, "blob already present, skipping copy");
            return Ok(BlobCopy::AlreadyPresent);
        }
        if from.registry == to.registry && from.repository != to.repository {
            let target = self.target(to, Access::Push).await?;
            let source = oci_reference(from);
            // A mount can fail where a copy works: bearer tokens are scoped to the target
            // repository, and registries may answer 202 to start a normal upload instead.
            match target
                .client
                .mount_blob(&target.reference, &source, digest.as_str())
                .await
            {
                Ok(()) => {
                    tracing::debug!(from = %from, to = %to, %digest, "mounted blob");
                    return Ok(BlobCopy::Mounted);
                }
                Err(error) => {
                    tracing::debug!(from = %from, to = %to, %digest, %error, "blob mount failed, streaming instead");
                }
            }
        }
        let operation = Operation {
            name: "copy blob",
            registry: &to.registry,
            subject: digest,
        };
        // A failed upload restarts the download too, because the body stream is spent.
        with_retries(&self.retry, operation, || {
            self.stream_blob(from, to, digest, size)
        })
        .await?;
        Ok(BlobCopy::Streamed)
    }

    /// Streams a blob from one repository into another through this process.
    async fn stream_blob(
        &self,
        from: &Reference,
        to: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<(), RegistryError> {
        tracing::debug!(from = %from, to = %to, %digest, size, "streaming blob");
        let failure = FailureSlot::default();
        let stream = self
            .blob_stream(from, digest, size)
            .await?
            .with_failure_slot(failure.clone())
            .map_err(OciDistributionError::IoError);
        let pushed = self.push_stream(to, stream, digest, size).await;
        let download_failure = failure
            .lock()
            .expect("no code panics while holding the failure slot")
            .take();
        match (pushed, download_failure) {
            (Ok(()), _) => Ok(()),
            // A failed download aborts the upload; its own error is the one to report.
            (Err(_), Some(download)) => Err(download),
            // The upload can complete before the download reaches its digest check, and
            // then the target registry rejects the content.
            (Err(error), None) if is_digest_invalid(&error) => Err(RegistryError::DigestMismatch {
                registry: from.registry.clone(),
                repository: from.repository.clone(),
                expected: digest.clone(),
                actual: format!("content that {} rejected with DIGEST_INVALID", to.registry),
            }),
            (Err(error), None) => Err(error),
        }
    }

    /// Pushes manifest bytes unchanged under the reference's tag (or digest) and returns
    /// their digest. An image manifest is pushed only after a check that the repository
    /// has every blob it references.
    pub async fn push_manifest(
        &self,
        target_ref: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of(bytes);
        let content_type = reqwest::header::HeaderValue::from_str(media_type).map_err(|_| {
            RegistryError::UnsupportedMediaType {
                reference: target_ref.to_string(),
                media_type: media_type.to_owned(),
            }
        })?;
        self.confirm_blobs(target_ref, bytes, media_type).await?;
        let target = self.target(target_ref, Access::Push).await?;
        let operation = Operation {
            name: "push manifest",
            registry: &target_ref.registry,
            subject: &digest,
        };
        with_retries(&self.retry, operation, || async {
            target
                .client
                .push_manifest_raw(&target.reference, bytes.to_vec(), content_type.clone())
                .await
                .map_err(|error| {
                    self.classify(error, target_ref, "push", format!("manifest {digest}"))
                })
        })
        .await?;
        tracing::debug!(target = %target_ref, %digest, media_type, "pushed manifest");
        Ok(digest)
    }

    async fn blob_stream(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<CheckedStream, RegistryError> {
        let target = self.target(reference, Access::Pull).await?;
        let operation = Operation {
            name: "read blob",
            registry: &reference.registry,
            subject: digest,
        };
        let sized = with_retries(&self.retry, operation, || async {
            target
                .client
                .pull_blob_stream(&target.reference, digest.as_str())
                .await
                .map_err(|error| self.classify(error, reference, "pull", format!("blob {digest}")))
        })
        .await?;
        if sized.content_length.is_some_and(|length| length > size) {
            return Err(RegistryError::SizeExceeded {
                registry: reference.registry.clone(),
                repository: reference.repository.clone(),
                digest: digest.clone(),
                expected: size,
            });
        }
        let reopen = reopen_blob(target.client.clone(), reference, target.reference, digest);
        Ok(CheckedStream::new(
            sized.stream,
            &reference.registry,
            &reference.repository,
            digest,
            size,
        )
        .with_resume(reopen, &self.retry))
    }

    async fn push_stream<S>(
        &self,
        target_ref: &Reference,
        stream: S,
        digest: &Digest,
        size: u64,
    ) -> Result<(), RegistryError>
    where
        S: futures_util::Stream<Item = oci_client::errors::Result<Bytes>> + Send + 'static,
    {
        let target = self.target(target_ref, Access::Push).await?;
        target
            .client
            .push_blob_stream(
                &target.reference,
                stream.boxed(),
                digest.as_str(),
                Some(size),
            )
            .await
            .map_err(|error| self.classify(error, target_ref, "push", format!("blob {digest}")))?;
        Ok(())
    }

    /// Picks the client for the host, converts the reference and makes sure oci-client
    /// holds the credential or bearer token for `access` to the repository.
    async fn target(
        &self,
        reference: &Reference,
        access: Access,
    ) -> Result<Target<'_>, RegistryError> {
        let host = self.host(reference).await?;
        let client = if host.tls { &self.https } else { &self.http };
        let oci = oci_reference(reference);
        if let Challenge::Bearer { realm, service } = &host.challenge {
            // oci-client falls back to the host's stored credential when its token cache has
            // no entry. Storing anonymous there keeps a token for one scope from serving
            // another.
            client
                .store_auth_if_needed(oci.resolve_registry(), &RegistryAuth::Anonymous)
                .await;
            let token = self
                .bearer_token(reference, &host, realm, service.as_deref(), access)
                .await?;
            let bearer = RegistryAuth::Bearer(token);
            for operation in access.operations() {
                // With a bearer credential this only fills oci-client's token cache.
                client
                    .auth(&oci, &bearer, *operation)
                    .await
                    .map_err(|error| {
                        self.classify(error, reference, "authenticate", "a bearer token".into())
                    })?;
            }
            return Ok(Target {
                client,
                reference: oci,
                auth: RegistryAuth::Anonymous,
            });
        }
        let auth = match host.credential() {
            Credential::Anonymous => RegistryAuth::Anonymous,
            Credential::Basic { username, password } => RegistryAuth::Basic(username, password),
            // An identity token is a refresh token for a token server. A registry that
            // requests basic auth gets it as the password of docker's `<token>` user, the form
            // in which credential helpers store it.
            Credential::IdentityToken(token) => RegistryAuth::Basic("<token>".to_owned(), token),
        };
        client
            .store_auth_if_needed(oci.resolve_registry(), &auth)
            .await;
        Ok(Target {
            client,
            reference: oci,
            auth,
        })
    }

    /// Returns the host's transport, challenge and credential, probing the host on first
    /// use.
    ///
    /// NOTE: the credential is looked up once per host, so a repository-scoped entry in
    /// auth.json applies to every repository of the host once the first one has used it.
    async fn host(&self, reference: &Reference) -> Result<Arc<Host>, RegistryError> {
        if let Some(host) = self.cached_host(&reference.registry) {
            return Ok(host);
        }
        let _probing = self.probe_lock.lock().await;
        if let Some(host) = self.cached_host(&reference.registry) {
            return Ok(host);
        }
        let (tls, response) = self.probe(reference).await?;
        let challenge = match response.headers().get(reqwest::header::WWW_AUTHENTICATE) {
            Some(header) if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
                Challenge::parse(&String::from_utf8_lossy(header.as_bytes()))
            }
            _ => Challenge::None,
        };
        let credential = self.lookup_credential(reference).await?;
        tracing::debug!(registry = %reference.registry, tls, ?challenge, ?credential, "probed registry");
        let host = Arc::new(Host {
            tls,
            challenge,
            credential: std::sync::Mutex::new(credential),
        });
        self.hosts
            .lock()
            .expect("no code panics holding the lock")
            .insert(reference.registry.clone(), host.clone());
        Ok(host)
    }

    fn cached_host(&self, registry: &str) -> Option<Arc<Host>> {
        let hosts = self.hosts.lock().expect("no code panics holding the lock");
        hosts.get(registry).cloned()
    }

    /// Sends `GET /v2/` over HTTPS and, where the transport rule allows, over plain HTTP
    /// after a plain HTTP reply to the handshake. Returns whether HTTPS worked.
    ///
    /// NOTE: unlike docker, an insecure registry's HTTPS certificate is still verified, so
    /// a self-signed one fails the handshake until its CA is passed with `--ca-file`.
    async fn probe(
        &self,
        reference: &Reference,
    ) -> Result<(bool, reqwest::Response), RegistryError> {
        let api_host = reference.api_host();
        let failed = |error| {
            self.classify(
                OciDistributionError::RequestError(error),
                reference,
                "query",
                "the API endpoint /v2/".to_owned(),
            )
        };
        match self.api.get(format!("https://{api_host}/v2/")).send().await {
            Ok(response) => Ok((true, response)),
            Err(error)
                if self.may_use_plain_http(&reference.registry) && is_plain_http_reply(&error) =>
            {
                tracing::debug!(registry = %reference.registry, "TLS handshake got a plain HTTP reply, using HTTP");
                let response = self
                    .api
                    .get(format!("http://{api_host}/v2/"))
                    .send()
                    .await
                    .map_err(failed)?;
                Ok((false, response))
            }
            Err(error) => Err(failed(error)),
        }
    }

    /// Looks up the credential in the auth files and credential helpers.
    async fn lookup_credential(&self, reference: &Reference) -> Result<Credential, RegistryError> {
        let env = self.auth_env.clone();
        let registry = reference.registry.clone();
        let repository = reference.repository.clone();
        // The lookup reads files and may run a credential helper, so it leaves the runtime.
        tokio::task::spawn_blocking(move || auth::lookup(&env, &registry, &repository))
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))
            .map_err(|source| RegistryError::Credentials {
                registry: reference.registry.clone(),
                source,
            })
    }

    /// Returns a cached bearer token for `access` to the repository, or gets one from the
    /// token server.
    async fn bearer_token(
        &self,
        reference: &Reference,
        host: &Host,
        realm: &str,
        service: Option<&str>,
        access: Access,
    ) -> Result<String, RegistryError> {
        let scope = access.scope(&reference.repository);
        if let Some(token) = self.tokens.get(&reference.registry, &scope) {
            return Ok(token);
        }
        let credential = host.credential();
        let request = TokenRequest {
            registry: &reference.registry,
            realm,
            service,
            scope: &scope,
        };
        let token = token::fetch(&self.api, &request, &credential).await?;
        if let (Some(rotated), Credential::IdentityToken(_)) = (&token.refresh_token, &credential) {
            *host
                .credential
                .lock()
                .expect("no code panics holding the lock") =
                Credential::IdentityToken(rotated.clone());
        }
        let value = token.value.clone();
        self.tokens.insert(&reference.registry, &scope, token);
        Ok(value)
    }

    fn classify(
        &self,
        error: OciDistributionError,
        reference: &Reference,
        operation: &'static str,
        what: String,
    ) -> RegistryError {
        let mut classified = classify(
            error,
            Context {
                registry: &reference.registry,
                repository: &reference.repository,
                operation,
                what,
            },
        );
        let Some(host) = self.cached_host(&reference.registry) else {
            return classified;
        };
        // Without credentials, a 401 means some are needed, not that they were wrong.
        if let RegistryError::Unauthorized {
            registry,
            repository,
            source,
        } = classified
        {
            if matches!(host.credential(), Credential::Anonymous) {
                return RegistryError::CredentialsRequired {
                    registry,
                    repository,
                    source,
                };
            }
            classified = RegistryError::Unauthorized {
                registry,
                repository,
                source,
            };
        }
        // A 401 under bearer auth means the registry rejected the token, not the password
        // that the token server already accepted.
        let realm = match &host.challenge {
            Challenge::Bearer { realm, .. } => realm.clone(),
            _ => return classified,
        };
        match classified {
            RegistryError::Unauthorized {
                registry,
                repository,
                source,
            } => RegistryError::TokenNotAccepted {
                registry,
                repository,
                realm,
                operation,
                source,
            },
            other => other,
        }
    }
}

/// Returns the function a [`CheckedStream`] calls to request the rest of a blob.
fn reopen_blob(
    client: Client,
    reference: &Reference,
    oci: oci_client::Reference,
    digest: &Digest,
) -> Reopen {
    let registry = reference.registry.clone();
    let repository = reference.repository.clone();
    let digest = digest.clone();
    std::sync::Arc::new(move |offset| {
        let client = client.clone();
        let oci = oci.clone();
        let registry = registry.clone();
        let repository = repository.clone();
        let digest = digest.clone();
        Box::pin(async move {
            let response = client
                .pull_blob_stream_partial(&oci, digest.as_str(), offset, None)
                .await
                .map_err(|error| {
                    classify(
                        error,
                        Context {
                            registry: &registry,
                            repository: &repository,
                            operation: "pull",
                            what: format!("blob {digest} from byte {offset}"),
                        },
                    )
                })?;
            Ok(match response {
                oci_client::client::BlobResponse::Partial(sized) => {
                    Reopened::FromOffset(sized.stream)
                }
                oci_client::client::BlobResponse::Full(sized) => Reopened::FromStart(sized.stream),
            })
        })
    })
}

/// Converts a reference to oci-client's form, addressed to the API host.
fn oci_reference(reference: &Reference) -> oci_client::Reference {
    let host = reference.api_host().to_owned();
    let repository = reference.repository.clone();
    match (&reference.digest, reference.tag_or_default()) {
        (Some(digest), _) => {
            oci_client::Reference::with_digest(host, repository, digest.to_string())
        }
        (None, tag) => {
            oci_client::Reference::with_tag(host, repository, tag.unwrap_or_default().to_owned())
        }
    }
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.split(':').next().unwrap_or(registry),
    };
    host == "localhost"
        || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
        || host.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

fn invalid_manifest(reference: &Reference, reason: &str) -> RegistryError {
    RegistryError::InvalidManifest {
        reference: reference.to_string(),
        reason: reason.to_owned(),
    }
}

/// Reads the media type from the manifest body; an OCI document may omit it, and then its
/// fields tell an index from a manifest.
fn manifest_media_type(bytes: &[u8], reference: &Reference) -> Result<String, RegistryError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|error| invalid_manifest(reference, &format!("not JSON: {error}")))?;
    let media_type = match value.get("mediaType").and_then(Value::as_str) {
        Some(media_type) => media_type.to_owned(),
        None if value.get("manifests").is_some() => OCI_INDEX.to_owned(),
        None if value.get("config").is_some() => OCI_MANIFEST.to_owned(),
        None => {
            return Err(invalid_manifest(
                reference,
                "it has no mediaType, manifests or config field",
            ));
        }
    };
    if !MANIFEST_MEDIA_TYPES.contains(&media_type.as_str()) {
        return Err(RegistryError::UnsupportedMediaType {
            reference: reference.to_string(),
            media_type,
        });
    }
    Ok(media_type)
}

/// Chooses the index entry for `requested` and returns its digest and platform.
fn select_platform(
    index: &FetchedManifest,
    reference: &Reference,
    requested: &Platform,
) -> Result<(Digest, Platform), RegistryError> {
    let value: Value = serde_json::from_slice(&index.bytes)
        .map_err(|error| invalid_manifest(reference, &format!("not JSON: {error}")))?;
    let entries = platform::image_entries(&value);
    let Some(entry) = entries
        .iter()
        .find(|entry| requested.matches(&entry.platform))
    else {
        let available: Vec<String> = entries.iter().map(|e| e.platform.to_string()).collect();
        return Err(RegistryError::NoMatchingPlatform {
            reference: reference.to_string(),
            requested: requested.to_string(),
            available: if available.is_empty() {
                "none".to_owned()
            } else {
                available.join(", ")
            },
        });
    };
    if let Some(media_type) = &entry.media_type
        && !MANIFEST_MEDIA_TYPES.contains(&media_type.as_str())
    {
        return Err(RegistryError::UnsupportedMediaType {
            reference: reference.to_string(),
            media_type: media_type.clone(),
        });
    }
    let digest = entry.digest.parse().map_err(|error| {
        invalid_manifest(
            reference,
            &format!("index entry for {}: {error}", entry.platform),
        )
    })?;
    tracing::trace!(size = ?entry.size, "index entry chosen");
    Ok((digest, entry.platform.clone()))
}

/// Reads the config and layer descriptors of an image manifest.
fn parse_image_manifest(
    bytes: &[u8],
    reference: &Reference,
) -> Result<(Descriptor, Vec<Descriptor>), RegistryError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|error| invalid_manifest(reference, &format!("not JSON: {error}")))?;
    let config = value
        .get("config")
        .ok_or_else(|| invalid_manifest(reference, "it has no config descriptor"))
        .and_then(|config| parse_descriptor(config, reference, "config"))?;
    let layers = value
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid_manifest(reference, "it has no layers array"))?
        .iter()
        .enumerate()
        .map(|(i, layer)| parse_descriptor(layer, reference, &format!("layer {i}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((config, layers))
}

fn parse_descriptor(
    value: &Value,
    reference: &Reference,
    what: &str,
) -> Result<Descriptor, RegistryError> {
    let descriptor = Descriptor::from_json(value)
        .map_err(|reason| invalid_manifest(reference, &format!("{what} descriptor {reason}")))?;
    if descriptor.media_type.is_empty() {
        return Err(invalid_manifest(
            reference,
            &format!("{what} descriptor has no mediaType"),
        ));
    }
    Ok(descriptor)
}

impl Host {
    fn credential(&self) -> Credential {
        self.credential
            .lock()
            .expect("no code panics holding the lock")
            .clone()
    }
}

impl Descriptor {
    /// Parses the `digest`, `size` and `mediaType` of a JSON content descriptor; a missing
    /// `mediaType` is left empty. The error completes "descriptor …", as in "has no digest".
    pub fn from_json(value: &Value) -> Result<Descriptor, String> {
        let digest = value
            .get("digest")
            .and_then(Value::as_str)
            .ok_or("has no digest")?
            .parse()
            .map_err(|error| format!("has an invalid digest: {error}"))?;
        let size = value
            .get("size")
            .and_then(Value::as_u64)
            .ok_or("has no valid size")?;
        let media_type = value
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(Descriptor {
            digest,
            size,
            media_type,
        })
    }
}

/// Reads a PEM file and returns each certificate in it separately, because oci-client
/// reads only the first certificate of a PEM buffer.
fn read_ca_file(path: &Path) -> Result<Vec<Certificate>, RegistryError> {
    let text = fs_err::read_to_string(path).map_err(|source| RegistryError::CaFile {
        path: path.to_owned(),
        source,
    })?;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut certificates = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(BEGIN) {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let block = &rest[start..start + end + END.len()];
        certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data: format!("{block}\n").into_bytes(),
        });
        rest = &rest[start + end + END.len()..];
    }
    if certificates.is_empty() {
        return Err(RegistryError::CaFileEmpty {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// Unwraps the [`RegistryError`] that a [`BlobReader`] puts inside its `io::Error`.
fn into_registry_error(
    error: std::io::Error,
    reference: &Reference,
    digest: &Digest,
) -> RegistryError {
    let is_registry_error = error
        .get_ref()
        .is_some_and(|inner| inner.is::<RegistryError>());
    if is_registry_error {
        let inner = error.into_inner().expect("checked above");
        return *inner.downcast::<RegistryError>().expect("checked above");
    }
    RegistryError::BlobRead {
        registry: reference.registry.clone(),
        repository: reference.repository.clone(),
        digest: digest.clone(),
        source: error,
    }
}

/// Checks whether an upload failed because the registry computed another digest.
fn is_digest_invalid(error: &RegistryError) -> bool {
    match error {
        RegistryError::Request { source, .. } => match source.as_ref() {
            OciDistributionError::ServerError { message, .. } => message.contains("DIGEST_INVALID"),
            OciDistributionError::RegistryError { envelope, .. } => envelope
                .errors
                .iter()
                .any(|e| e.code == oci_client::errors::OciErrorCode::DigestInvalid),
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "example.com",
            "10.0.0.1:5000",
            "[::2]:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn transport_rule() {
        let client = RegistryClient::new(RegistryOptions {
            insecure_registries: vec!["10.0.0.1:5000".to_owned()],
            tls_registries: vec!["127.0.0.1:5443".to_owned()],
            ..RegistryOptions::default()
        })
        .unwrap();
        assert!(client.may_use_plain_http("127.0.0.1:5000"));
        assert!(client.may_use_plain_http("localhost:5000"));
        assert!(!client.may_use_plain_http("127.0.0.1:5443"));
        assert!(client.may_use_plain_http("10.0.0.1:5000"));
        assert!(!client.may_use_plain_http("example.com"));
    }

    #[test]
    fn ca_file_splits_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        let block = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        fs_err::write(&path, format!("junk\n{block}{block}")).unwrap();
        assert_eq!(read_ca_file(&path).unwrap().len(), 2);

        fs_err::write(&path, "no certificates").unwrap();
        let error = read_ca_file(&path).unwrap_err();
        assert!(error.to_string().contains("bundle.pem"), "{error}");
    }

    #[test]
    fn media_type_from_body() {
        let reference = Reference::parse("127.0.0.1:5000/a:b").unwrap();
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(manifest_media_type(index, &reference).unwrap(), OCI_INDEX);
        let manifest = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(
            manifest_media_type(manifest, &reference).unwrap(),
            OCI_MANIFEST
        );
        let schema1 =
            br#"{"mediaType":"application/vnd.docker.distribution.manifest.v1+prettyjws"}"#;
        assert!(matches!(
            manifest_media_type(schema1, &reference),
            Err(RegistryError::UnsupportedMediaType { .. })
        ));
    }
}
