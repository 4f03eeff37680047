//! Registry errors and their classification from oci-client failures.

use std::path::PathBuf;

use oci_client::errors::{OciDistributionError, OciErrorCode};

use super::auth::AuthError;
use crate::digest::Digest;

/// A failed registry operation. Messages name the registry, repository and digest.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("failed to set up the registry client")]
    Setup {
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error("failed to read CA file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid CA file {path}: it contains no PEM certificate")]
    CaFileEmpty { path: PathBuf },
    #[error("invalid certificate in CA file {path}")]
    CaCertificate {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("failed to look up credentials for {registry}")]
    Credentials {
        registry: String,
        #[source]
        source: AuthError,
    },
    #[error("{what} not found in {registry}/{repository}\nhint: check the image name and tag")]
    NotFound {
        registry: String,
        repository: String,
        what: String,
        #[source]
        source: Option<Box<OciDistributionError>>,
    },
    #[error(
        "unauthorized: {registry} rejected the credentials for {repository}\n\
         hint: run `docker login {registry}` or set REGISTRY_AUTH_FILE to a file with credentials for it"
    )]
    Unauthorized {
        registry: String,
        repository: String,
        #[source]
        source: Option<Box<OciDistributionError>>,
    },
    #[error(
        "unauthorized: {registry} requires credentials for {repository}, and none were found\n\
         hint: run `docker login {registry}`, or set REGISTRY_AUTH_FILE or DOCKER_CONFIG to a \
         file with credentials for it"
    )]
    CredentialsRequired {
        registry: String,
        repository: String,
        #[source]
        source: Option<Box<OciDistributionError>>,
    },
    #[error(
        "access denied to {registry}/{repository}\n\
         hint: check that the account from `docker login {registry}` may {operation} this repository"
    )]
    Denied {
        registry: String,
        repository: String,
        operation: &'static str,
        #[source]
        source: Option<Box<OciDistributionError>>,
    },
    #[error("digest mismatch in {registry}/{repository}: expected {expected}, got {actual}")]
    DigestMismatch {
        registry: String,
        repository: String,
        expected: Digest,
        actual: String,
    },
    #[error(
        "blob {digest} in {registry}/{repository} is larger than the {expected} bytes its \
         descriptor states"
    )]
    SizeExceeded {
        registry: String,
        repository: String,
        digest: Digest,
        expected: u64,
    },
    #[error(
        "blob {digest} in {registry}/{repository} ended after {actual} bytes, expected {expected}"
    )]
    Truncated {
        registry: String,
        repository: String,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("failed to read blob {digest} from {registry}/{repository}")]
    BlobRead {
        registry: String,
        repository: String,
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read {path} for upload as blob {digest}")]
    BlobFile {
        path: PathBuf,
        digest: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error("file {path} has {actual} bytes, but blob {digest} should have {expected}")]
    BlobFileSize {
        path: PathBuf,
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error(
        "TLS handshake with {registry} failed\n\
         hint: if {registry} serves plain HTTP, pass --insecure-registry {registry}; if its \
         certificate comes from a private CA, pass that CA file with --ca-file"
    )]
    Tls {
        registry: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error(
        "{registry} expects HTTPS but was contacted over plain HTTP\n\
         hint: check the host and port in the image reference"
    )]
    ExpectsHttps {
        registry: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error(
        "failed to connect to {registry}\n\
         hint: check that the registry is running and reachable from this machine"
    )]
    Connection {
        registry: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error(
        "failed to connect to {registry}: nothing listens there\n\
         hint: start the registry, or correct the host and port in the image reference"
    )]
    NotListening {
        registry: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error(
        "failed to reach the token server {realm} that {registry} sends clients to\n\
         hint: check that the token server is running and reachable from this machine; \
         the registry's token auth configuration sets its URL"
    )]
    TokenServerUnreachable {
        registry: String,
        realm: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "unauthorized: the token server {realm} rejected the credentials for {registry} \
         ({reply})\n\
         hint: run `docker login {registry}` or set REGISTRY_AUTH_FILE to a file with \
         credentials for it"
    )]
    TokenRejected {
        registry: String,
        realm: String,
        /// The status and the start of the body.
        reply: String,
    },
    #[error("the token server {realm} for {registry} failed: {reply}")]
    TokenServerStatus {
        registry: String,
        realm: String,
        reply: String,
    },
    #[error("invalid response from the token server {realm} for {registry}: {reason}")]
    InvalidTokenResponse {
        registry: String,
        realm: String,
        reason: String,
    },
    #[error(
        "the token server {realm} issued an expired token for {registry} (it expired at \
         {expired_at})\n\
         hint: check the clocks of this machine and of the token server"
    )]
    TokenExpired {
        registry: String,
        realm: String,
        expired_at: String,
    },
    #[error(
        "unauthorized: {registry} rejected the bearer token from {realm} for {repository}\n\
         hint: the token may have expired or lack access; check the clocks of this machine \
         and of the token server, and that the account may {operation} {repository}"
    )]
    TokenNotAccepted {
        registry: String,
        repository: String,
        realm: String,
        operation: &'static str,
        #[source]
        source: Option<Box<OciDistributionError>>,
    },
    #[error("request to {registry} timed out")]
    Timeout {
        registry: String,
        #[source]
        source: Box<OciDistributionError>,
    },
    #[error("invalid manifest {reference}: {reason}")]
    InvalidManifest { reference: String, reason: String },
    #[error("unsupported manifest media type {media_type:?} for {reference}")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
    },
    #[error(
        "no image for platform {requested} in {reference}; available: {available}\n\
         hint: pass one of the available platforms with --platform"
    )]
    NoMatchingPlatform {
        reference: String,
        requested: String,
        available: String,
    },
    #[error(
        "blob {digest} is missing from {registry}/{repository} after its upload, so the \
         manifest was not pushed\nhint: run again; if it persists, the registry loses uploads"
    )]
    BlobMissing {
        registry: String,
        repository: String,
        digest: Digest,
    },
    /// A transient failure that lasted through every retry the policy allows.
    #[error("gave up after {attempts} attempts: {source}")]
    RetriesExhausted {
        attempts: u32,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("failed to {operation} {what} in {registry}/{repository}")]
    Request {
        registry: String,
        repository: String,
        operation: &'static str,
        what: String,
        #[source]
        source: Box<OciDistributionError>,
    },
}

/// The request that failed, for classifying an oci-client error.
pub(crate) struct Context<'a> {
    pub registry: &'a str,
    pub repository: &'a str,
    pub operation: &'static str,
    pub what: String,
}

/// Turns an oci-client error into a [`RegistryError`] with the registry and repository.
pub(crate) fn classify(error: OciDistributionError, context: Context<'_>) -> RegistryError {
    let registry = context.registry.to_owned();
    let repository = context.repository.to_owned();
    let status = status_of(&error);

    if let OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
        expected,
        actual,
    }) = &error
        && let Ok(expected) = expected.parse::<Digest>()
    {
        return RegistryError::DigestMismatch {
            actual: actual.clone(),
            registry,
            repository,
            expected,
        };
    }
    if matches!(
        error,
        OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_)
    ) || status == Some(401)
        || has_code(&error, &OciErrorCode::Unauthorized)
    {
        return RegistryError::Unauthorized {
            registry,
            repository,
            source: Some(Box::new(error)),
        };
    }
    if status == Some(403) || has_code(&error, &OciErrorCode::Denied) {
        return RegistryError::Denied {
            registry,
            repository,
            operation: context.operation,
            source: Some(Box::new(error)),
        };
    }
    let unknown = [
        OciErrorCode::ManifestUnknown,
        OciErrorCode::BlobUnknown,
        OciErrorCode::NameUnknown,
        OciErrorCode::NotFound,
    ];
    if status == Some(404)
        || matches!(error, OciDistributionError::ImageManifestNotFoundError(_))
        || unknown.iter().any(|code| has_code(&error, code))
    {
        return RegistryError::NotFound {
            registry,
            repository,
            what: context.what,
            source: Some(Box::new(error)),
        };
    }
    if let OciDistributionError::ServerError {
        code: 400, message, ..
    } = &error
        && message.contains("HTTPS")
    {
        return RegistryError::ExpectsHttps {
            registry,
            source: Box::new(error),
        };
    }
    if let OciDistributionError::RequestError(request) = &error {
        if request.is_timeout() {
            return RegistryError::Timeout {
                registry,
                source: Box::new(error),
            };
        }
        if has_rustls_source(request) {
            return RegistryError::Tls {
                registry,
                source: Box::new(error),
            };
        }
        if request.is_connect() && super::is_loopback(&registry) {
            return RegistryError::NotListening {
                registry,
                source: Box::new(error),
            };
        }
        if request.is_connect() {
            return RegistryError::Connection {
                registry,
                source: Box::new(error),
            };
        }
    }
    RegistryError::Request {
        registry,
        repository,
        operation: context.operation,
        what: context.what,
        source: Box::new(error),
    }
}

fn status_of(error: &OciDistributionError) -> Option<u16> {
    match error {
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::RequestError(request) => request.status().map(|s| s.as_u16()),
        _ => None,
    }
}

fn has_code(error: &OciDistributionError, code: &OciErrorCode) -> bool {
    match error {
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|e| &e.code == code)
        }
        _ => false,
    }
}

/// Checks the cause chain for a rustls error, which marks a failed TLS handshake.
fn has_rustls_source(error: &reqwest::Error) -> bool {
    find_rustls_error(error).is_some()
}

/// Checks whether a TLS handshake failed because the server replied in plain HTTP. The
/// reply starts with `HTTP/`, which rustls reads as a record of an invalid content type.
pub(crate) fn is_plain_http_reply(error: &reqwest::Error) -> bool {
    matches!(
        find_rustls_error(error),
        Some(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType
        ))
    )
}

/// Finds a rustls error in the cause chain. hyper-util wraps it in an `io::Error` inside
/// another `io::Error`, and `io::Error::source` skips such a wrapped error, so each
/// `io::Error` is unwrapped with `get_ref`.
fn find_rustls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    if let Some(found) = error.downcast_ref::<rustls::Error>() {
        return Some(found);
    }
    if let Some(inner) = error
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        && let Some(found) = find_rustls_error(inner)
    {
        return Some(found);
    }
    error.source().and_then(find_rustls_error)
}
