//! Authentication fixtures on loopback: certificates made with openssl, a `docker-registry`
//! served over TLS or with bearer-token auth, and a token server that signs JWTs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use tempfile::TempDir;

use super::{require_tool, run};

/// The `service` the token registry names and the token's audience.
pub const TOKEN_SERVICE: &str = "layermend-test-registry";
/// The token issuer the registry trusts.
pub const TOKEN_ISSUER: &str = "layermend-test-issuer";

/// A test CA, a server certificate it signed for `localhost` and `127.0.0.1`, and a
/// self-signed certificate with its key for signing tokens.
pub struct TestPki {
    pub dir: TempDir,
}

impl TestPki {
    pub fn create() -> TestPki {
        require_tool("openssl");
        let dir = tempfile::Builder::new()
            .prefix("layermend-pki-")
            .tempdir()
            .unwrap();
        let path = |name: &str| dir.path().join(name);
        // rustls rejects a server certificate with CA:TRUE, so the server certificate is a
        // leaf signed by a separate CA.
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=layermend test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(path("ca.key"))
            .arg("-out")
            .arg(path("ca.crt")));
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(path("server.key"))
            .arg("-out")
            .arg(path("server.csr")));
        fs_err::write(
            path("server.ext"),
            "basicConstraints=critical,CA:FALSE\n\
             subjectAltName=DNS:localhost,IP:127.0.0.1\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(path("server.csr"))
            .arg("-CA")
            .arg(path("ca.crt"))
            .arg("-CAkey")
            .arg(path("ca.key"))
            .arg("-extfile")
            .arg(path("server.ext"))
            .arg("-out")
            .arg(path("server.crt")));

        // The token certificate is its own root in the registry's rootcertbundle.
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=layermend test token issuer"])
            .arg("-keyout")
            .arg(path("token.key"))
            .arg("-out")
            .arg(path("token.crt")));
        run(Command::new("openssl")
            .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER"])
            .arg("-in")
            .arg(path("token.key"))
            .arg("-out")
            .arg(path("token.pk8")));
        run(Command::new("openssl")
            .args(["x509", "-outform", "DER"])
            .arg("-in")
            .arg(path("token.crt"))
            .arg("-out")
            .arg(path("token.der")));
        TestPki { dir }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Issues a client certificate (extendedKeyUsage clientAuth) signed by the test CA
    /// and returns the paths of the certificate and its key.
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        let path = |name: &str| self.dir.path().join(name);
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=layermend test client",
            ])
            .arg("-keyout")
            .arg(path("client.key"))
            .arg("-out")
            .arg(path("client.csr")));
        fs_err::write(
            path("client.ext"),
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(path("client.csr"))
            .arg("-CA")
            .arg(path("ca.crt"))
            .arg("-CAkey")
            .arg(path("ca.key"))
            .arg("-extfile")
            .arg(path("client.ext"))
            .arg("-out")
            .arg(path("client.crt")));
        (path("client.crt"), path("client.key"))
    }

    /// Creates a directory with `ca.crt`, as skopeo's `--dest-cert-dir` expects.
    pub fn cert_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("certs.d");
        fs_err::create_dir_all(&dir).unwrap();
        fs_err::copy(self.ca_cert(), dir.join("ca.crt")).unwrap();
        dir
    }
}

/// How an [`AuthRegistry`] authenticates clients.
pub enum RegistryAuth<'a> {
    /// A bcrypt htpasswd file with one user.
    Htpasswd { user: &'a str, password: &'a str },
    /// Bearer tokens from `realm`, signed with the PKI's token key.
    Token { realm: &'a str },
}

/// A `docker-registry` (distribution 2.8) on a free loopback port with authentication and
/// optionally TLS. Dropping it kills the process by PID.
pub struct AuthRegistry {
    child: Child,
    pub port: u16,
    pub tls: bool,
    dir: TempDir,
}

impl AuthRegistry {
    pub fn start(pki: &TestPki, auth: RegistryAuth<'_>, tls: bool) -> AuthRegistry {
        require_tool("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("layermend-auth-registry-")
            .tempdir()
            .unwrap();
        let auth_config = match auth {
            RegistryAuth::Htpasswd { user, password } => {
                require_tool("htpasswd");
                let entry = run(Command::new("htpasswd").args(["-Bbn", user, password])).stdout;
                let path = dir.path().join("htpasswd");
                fs_err::write(&path, entry).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: layermend-test\n    path: {}\n",
                    path.display()
                )
            }
            RegistryAuth::Token { realm } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    \
                 issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                pki.dir.path().join("token.crt").display()
            ),
        };
        let tls_config = if tls {
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                pki.dir.path().join("server.crt").display(),
                pki.dir.path().join("server.key").display()
            )
        } else {
            String::new()
        };
        let port = free_port();
        let config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n\
             http:\n  addr: 127.0.0.1:{port}\n{tls_config}{auth_config}",
            storage = dir.path().join("storage").display(),
        );
        let (child, log_path) = super::spawn_registry(dir.path(), &config);
        let mut registry = AuthRegistry {
            child,
            port,
            tls,
            dir,
        };
        registry.wait_listening(&log_path);
        registry
    }

    fn wait_listening(&mut self, log_path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "docker-registry exited with {status}; its log:\n{}",
                    fs_err::read_to_string(log_path).unwrap_or_default()
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("docker-registry did not listen on 127.0.0.1:{}", self.port);
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn image(&self, repository_and_tag: &str) -> String {
        format!("{}/{repository_and_tag}", self.host())
    }

    /// Checks whether the registry's storage has any data for `repository`.
    pub fn has_repository(&self, repository: &str) -> bool {
        self.dir
            .path()
            .join("storage/docker/registry/v2/repositories")
            .join(repository)
            .exists()
    }

    /// Reads the registry's log, for failure messages.
    pub fn log(&self) -> String {
        fs_err::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns a TCP port on 127.0.0.1 that is free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How a token request authenticated itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    Basic(String),
    RefreshToken,
    Anonymous,
}

/// One request the token server received.
#[derive(Clone, Debug)]
pub struct TokenRecord {
    pub method: String,
    pub grant: Grant,
    pub scopes: Vec<String>,
    /// The form or query parameters, `refresh_token` left out.
    pub params: BTreeMap<String, String>,
    /// HTTP status of the response.
    pub status: u16,
}

/// What the token server accepts and how it signs.
#[derive(Clone, Default)]
pub struct TokenPolicy {
    pub users: Vec<(String, String)>,
    /// Refresh tokens accepted by the `refresh_token` grant.
    pub refresh_tokens: Vec<String>,
    /// Issue tokens whose `exp` lies an hour in the past.
    pub expired: bool,
}

/// A token server on a free loopback port: `GET /token` with basic auth and
/// `POST /token` with a `refresh_token` grant return RS256 JWTs for the requested scopes,
/// with the signing certificate in the `x5c` header. Dropping it stops the thread.
pub struct TokenServer {
    pub port: u16,
    pub records: Arc<Mutex<Vec<TokenRecord>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    pub fn start(pki: &TestPki, policy: TokenPolicy) -> TokenServer {
        let key = fs_err::read(pki.dir.path().join("token.pk8")).unwrap();
        let key = ring::signature::RsaKeyPair::from_pkcs8(&key).expect("PKCS#8 RSA key");
        let certificate = fs_err::read(pki.dir.path().join("token.der")).unwrap();
        let signer = Signer {
            key,
            x5c: STANDARD.encode(certificate),
            policy,
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let records = records.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            if let Some(record) = signer.serve(stream) {
                                records.lock().unwrap().push(record);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        TokenServer {
            port,
            records,
            stop,
            thread: Some(thread),
        }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    pub fn records(&self) -> Vec<TokenRecord> {
        self.records.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Signer {
    key: ring::signature::RsaKeyPair,
    x5c: String,
    policy: TokenPolicy,
}

impl Signer {
    /// Responds to one request and closes the connection.
    fn serve(&self, stream: TcpStream) -> Option<TokenRecord> {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().ok()?);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).ok()?;
        let mut parts = request_line.split_whitespace();
        let method = parts.next()?.to_owned();
        let target = parts.next()?.to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).ok()?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;

        let query = target.split_once('?').map_or("", |(_, query)| query);
        let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        if method == "POST" {
            pairs.extend(url::form_urlencoded::parse(&body).into_owned());
        }
        let scopes: Vec<String> = pairs
            .iter()
            .filter(|(key, _)| key == "scope")
            .map(|(_, value)| value.clone())
            .collect();
        let param = |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };

        let (grant, subject) = if param("grant_type").as_deref() == Some("refresh_token") {
            let token = param("refresh_token").unwrap_or_default();
            let known = self.policy.refresh_tokens.contains(&token);
            (
                Grant::RefreshToken,
                known.then(|| "refresh-user".to_owned()),
            )
        } else if let Some((user, password)) = headers
            .get("authorization")
            .and_then(|value| value.strip_prefix("Basic "))
            .and_then(|encoded| STANDARD.decode(encoded).ok())
            .and_then(|decoded| String::from_utf8(decoded).ok())
            .and_then(|text| {
                text.split_once(':')
                    .map(|(u, p)| (u.to_owned(), p.to_owned()))
            })
        {
            let known = self
                .policy
                .users
                .iter()
                .any(|(u, p)| *u == user && *p == password);
            (Grant::Basic(user.clone()), known.then_some(user))
        } else {
            (Grant::Anonymous, None)
        };

        let (status, response) = match subject {
            Some(subject) if target.starts_with("/token") => {
                let jwt = self.sign(&subject, &scopes, param("service").as_deref());
                let body = if method == "POST" {
                    serde_json::json!({"access_token": jwt, "expires_in": 300, "scope": scopes.join(" ")})
                } else {
                    serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300})
                };
                (200, body.to_string())
            }
            _ if grant == Grant::RefreshToken => (400, r#"{"error":"invalid_grant"}"#.to_owned()),
            _ => (401, r#"{"details":"invalid credentials"}"#.to_owned()),
        };
        let mut stream = reader.into_inner();
        let reason = if status == 200 { "OK" } else { "Error" };
        let _ = write!(
            stream,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{response}",
            response.len()
        );
        let _ = stream.flush();
        let params = pairs
            .into_iter()
            .filter(|(key, _)| key != "refresh_token")
            .collect();
        Some(TokenRecord {
            method,
            grant,
            scopes,
            params,
            status,
        })
    }

    /// Signs a JWT granting every action requested in `scopes`.
    fn sign(&self, subject: &str, scopes: &[String], service: Option<&str>) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let exp = if self.policy.expired {
            now - 3600
        } else {
            now + 300
        };
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .flat_map(|scope| scope.split(' '))
            .filter_map(|scope| {
                let mut fields = scope.splitn(3, ':');
                let kind = fields.next()?;
                let name = fields.next()?;
                let actions: Vec<&str> = fields.next()?.split(',').collect();
                Some(serde_json::json!({"type": kind, "name": name, "actions": actions}))
            })
            .collect();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": service.unwrap_or(TOKEN_SERVICE),
            "exp": exp,
            "nbf": now - 60,
            "iat": now - 60,
            "jti": format!("{now}-{}", scopes.join(",")),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .unwrap();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}
