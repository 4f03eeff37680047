//! TLS for `tcp://` engine endpoints: the files of copa's `--cacert`, `--cert` and
//! `--key`, checked when the flags are read, and the connection through bollard's rustls
//! transport.
//!
//! bollard reads the files again at connection time and presents no client certificate
//! when it cannot use them, so they are checked here first, where an error can name the
//! flag and the file.

use std::path::{Path, PathBuf};

use bollard::Docker;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::BuildkitError;

/// The TLS flags as given: `--cacert`, `--cert` and `--key`, each a PEM file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificates the engine's certificate must chain to.
    pub ca_cert: Option<PathBuf>,
    /// The client certificate presented to the engine.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key.
    pub key: Option<PathBuf>,
}

/// Checked TLS settings of a `tcp://` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The `--cacert` file, which contains at least one certificate.
    pub ca_cert: PathBuf,
    /// The client certificate and key, absent when the engine does not verify clients.
    pub client: Option<ClientCertificate>,
}

/// A client certificate file and the file of its matching private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Returns whether none of the flags is given.
    pub fn is_empty(&self) -> bool {
        self.ca_cert.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// Checks that the flags go together and that each file contains what its flag needs:
    /// certificates in `--cacert` and `--cert`, a private key in `--key` that matches
    /// the `--cert` certificate.
    pub fn check(&self) -> Result<TlsSettings, BuildkitError> {
        let client = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(ClientCertificate {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (Some(_), None) => return Err(missing("--key", "--cert")),
            (None, Some(_)) => return Err(missing("--cert", "--key")),
            (None, None) => None,
        };
        let Some(ca_cert) = &self.ca_cert else {
            let needed_by = if self.cert.is_some() {
                "--cert"
            } else {
                "--key"
            };
            return Err(missing("--cacert", needed_by));
        };
        read_certificates("--cacert", ca_cert)?;
        if let Some(client) = &client {
            let chain = read_certificates("--cert", &client.cert)?;
            let key = read_private_key(&client.key)?;
            CertifiedKey::from_der(chain, key, &provider()).map_err(|error| {
                invalid(
                    "--key",
                    &client.key,
                    format!("{error}; it must be the key of --cert"),
                )
            })?;
        }
        Ok(TlsSettings {
            ca_cert: ca_cert.clone(),
            client,
        })
    }
}

/// Opens a bollard client that speaks HTTPS to `host` (`HOST:PORT`), verifies the engine
/// against `--cacert` and the system's CA certificates, and presents the client
/// certificate when there is one.
pub(super) fn connect(
    host: &str,
    tls: &TlsSettings,
    timeout_secs: u64,
) -> Result<Docker, bollard::errors::Error> {
    // bollard builds its rustls configuration with the process-wide provider, and the
    // project uses ring. An error means a provider is installed already.
    let _ = provider().install_default();
    // bollard's client certificate resolver presents no certificate when it cannot read
    // its files, so empty paths connect without one.
    let (cert, key) = match &tls.client {
        Some(client) => (client.cert.as_path(), client.key.as_path()),
        None => (Path::new(""), Path::new("")),
    };
    Docker::connect_with_ssl(
        &format!("tcp://{host}"),
        key,
        cert,
        &tls.ca_cert,
        timeout_secs,
        bollard::API_DEFAULT_VERSION,
    )
}

/// Returns whether `error` or one of its causes is a TLS failure: a rejected certificate,
/// an alert from the engine, or a peer that does not speak TLS.
pub(super) fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(current) = next {
        if current.is::<rustls::Error>() {
            return true;
        }
        // `io::Error::source` skips the error it wraps, and hyper-rustls wraps tokio-rustls'
        // `io::Error` in another one, so the chain goes on through the wrapped error.
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io_error) => match io_error.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => None,
            },
            None => current.source(),
        };
    }
    false
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn missing(flag: &'static str, needed_by: &'static str) -> BuildkitError {
    BuildkitError::TlsFlagMissing { flag, needed_by }
}

fn invalid(flag: &'static str, path: &Path, reason: String) -> BuildkitError {
    BuildkitError::TlsFileInvalid {
        flag,
        path: path.to_owned(),
        reason,
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, BuildkitError> {
    std::fs::read(path).map_err(|source| BuildkitError::TlsFileUnreadable {
        flag,
        path: path.to_owned(),
        source,
    })
}

fn read_certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, BuildkitError> {
    let pem = read(flag, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(flag, path, format!("invalid PEM: {error}")))?;
    if certificates.is_empty() {
        return Err(invalid(
            flag,
            path,
            "it contains no PEM certificate".to_owned(),
        ));
    }
    Ok(certificates)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, BuildkitError> {
    let pem = read("--key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| {
        let reason = match error {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "it contains no PEM private key".to_owned()
            }
            other => format!("invalid PEM: {other}"),
        };
        invalid("--key", path, reason)
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// Writes a self-signed certificate and its key into `dir` with openssl and returns
    /// their paths.
    fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={name}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl req for {name}");
        (cert, key)
    }

    fn files(ca_cert: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> TlsFiles {
        TlsFiles {
            ca_cert: ca_cert.map(Path::to_owned),
            cert: cert.map(Path::to_owned),
            key: key.map(Path::to_owned),
        }
    }

    #[test]
    fn check_accepts_ca_only_and_client() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = self_signed(dir.path(), "ca");
        let (cert, key) = self_signed(dir.path(), "client");

        let settings = files(Some(&ca), None, None).check().unwrap();
        assert_eq!(settings.ca_cert, ca);
        assert_eq!(settings.client, None);

        let settings = files(Some(&ca), Some(&cert), Some(&key)).check().unwrap();
        assert_eq!(
            settings.client,
            Some(ClientCertificate {
                cert: cert.clone(),
                key
            })
        );
    }

    #[test]
    fn check_rejects_incomplete_flags() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = self_signed(dir.path(), "ca");
        let (cert, key) = self_signed(dir.path(), "client");
        let cases = [
            (files(Some(&ca), Some(&cert), None), "--cert needs --key"),
            (files(Some(&ca), None, Some(&key)), "--key needs --cert"),
            (
                files(None, Some(&cert), Some(&key)),
                "--cert needs --cacert",
            ),
        ];
        for (files, expected) in cases {
            let message = files.check().unwrap_err().to_string();
            assert!(message.starts_with(expected), "{message}");
        }
    }

    #[test]
    fn check_names_flag_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = self_signed(dir.path(), "ca");
        let (cert, _) = self_signed(dir.path(), "client");
        let (_, other_key) = self_signed(dir.path(), "other");
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        fs_err::write(&empty, "").unwrap();

        let error = files(Some(&missing), None, None).check().unwrap_err();
        let message = error.to_string();
        assert!(message.contains("--cacert"), "{message}");
        assert!(
            message.contains(&missing.display().to_string()),
            "{message}"
        );
        assert!(matches!(error, BuildkitError::TlsFileUnreadable { .. }));

        let message = files(Some(&empty), None, None)
            .check()
            .unwrap_err()
            .to_string();
        assert!(message.contains("no PEM certificate"), "{message}");

        // A certificate file given as the key contains no private key.
        let message = files(Some(&ca), Some(&cert), Some(&cert))
            .check()
            .unwrap_err()
            .to_string();
        assert!(message.contains("--key"), "{message}");
        assert!(message.contains("no PEM private key"), "{message}");

        let message = files(Some(&ca), Some(&cert), Some(&other_key))
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("it must be the key of --cert"),
            "{message}"
        );
        assert!(
            message.contains(&other_key.display().to_string()),
            "{message}"
        );
    }
}
