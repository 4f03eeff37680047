//! Registry credentials from the files that podman, skopeo and docker write.
//!
//! The search follows skopeo 1.9 (containers/image): when `REGISTRY_AUTH_FILE` is set, that
//! file is the only one read. Otherwise the files are, in order,
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `$XDG_CONFIG_HOME/containers/auth.json` (or
//! `~/.config/containers/auth.json`) and the docker config (`$DOCKER_CONFIG/config.json`
//! or `~/.docker/config.json`). The first file with an entry for the registry wins.
//!
//! Inside one file, `credHelpers` for the host comes first, then `credsStore` (docker
//! config only, as docker uses it), then `auths`. `auths` keys match the way both tools
//! do: repository-scoped keys (`host/namespace/repo`) first, then the bare host, then
//! legacy keys with the scheme and path stripped, such as `https://index.docker.io/v1/`.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::reference::DOCKER_HUB;

/// The key docker writes for Docker Hub and sends to credential helpers.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";
/// The user name with which credential helpers mark an identity token.
const TOKEN_USERNAME: &str = "<token>";

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token, as `docker login` stores for some registries.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// The environment the lookup reads, passed explicitly so tests leave the process alone.
#[derive(Clone, Debug, Default)]
pub struct AuthEnv {
    /// `REGISTRY_AUTH_FILE`.
    pub registry_auth_file: Option<PathBuf>,
    /// `XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// `XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// `DOCKER_CONFIG`: a directory holding `config.json`.
    pub docker_config: Option<PathBuf>,
    /// `HOME`.
    pub home: Option<PathBuf>,
    /// `PATH`, searched for `docker-credential-NAME` helpers and passed on to them.
    pub path: Option<OsString>,
}

impl AuthEnv {
    /// Reads the variables from the process environment.
    pub fn from_process_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        AuthEnv {
            registry_auth_file: var("REGISTRY_AUTH_FILE").map(PathBuf::from),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR").map(PathBuf::from),
            xdg_config_home: var("XDG_CONFIG_HOME").map(PathBuf::from),
            docker_config: var("DOCKER_CONFIG").map(PathBuf::from),
            home: var("HOME").map(PathBuf::from),
            path: var("PATH"),
        }
    }

    /// Lists the files to search, in order, with their format.
    fn auth_files(&self) -> Vec<(PathBuf, FileKind)> {
        if let Some(file) = &self.registry_auth_file {
            return vec![(file.clone(), FileKind::Containers)];
        }
        let mut files = Vec::new();
        if let Some(dir) = &self.xdg_runtime_dir {
            files.push((dir.join("containers/auth.json"), FileKind::Containers));
        }
        let config_home = self
            .xdg_config_home
            .clone()
            .or_else(|| self.home.as_ref().map(|home| home.join(".config")));
        if let Some(dir) = config_home {
            files.push((dir.join("containers/auth.json"), FileKind::Containers));
        }
        let docker_dir = self
            .docker_config
            .clone()
            .or_else(|| self.home.as_ref().map(|home| home.join(".docker")));
        if let Some(dir) = docker_dir {
            files.push((dir.join("config.json"), FileKind::Docker));
        }
        files
    }
}

/// A failed credential lookup.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("failed to read credentials file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid credentials file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid entry {key:?} in credentials file {path}: {reason}")]
    InvalidEntry {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error(
        "credential helper {program} for {server} is not in PATH\n\
         hint: install it, or remove the entry from {config}"
    )]
    HelperMissing {
        program: String,
        server: String,
        config: PathBuf,
    },
    #[error("failed to run credential helper {program}")]
    HelperSpawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("credential helper {program} failed for {server}: {message}")]
    HelperFailed {
        program: PathBuf,
        server: String,
        message: String,
    },
    #[error("credential helper {program} returned invalid output for {server}")]
    HelperOutput {
        program: PathBuf,
        server: String,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileKind {
    /// containers-auth.json(5), written by podman and skopeo.
    Containers,
    /// docker's config.json.
    Docker,
}

#[derive(Debug, Default, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: serde_json::Map<String, serde_json::Value>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: std::collections::BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Looks up the credential for `repository` on `registry` (a host with an optional port, as
/// in [`crate::reference::Reference::registry`]).
///
/// Returns [`Credential::Anonymous`] when no file has an entry.
pub fn lookup(env: &AuthEnv, registry: &str, repository: &str) -> Result<Credential, AuthError> {
    for (path, kind) in env.auth_files() {
        let text = match fs_err::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(AuthError::Read { path, source }),
        };
        let file: AuthFile = serde_json::from_str(&text).map_err(|source| AuthError::Parse {
            path: path.clone(),
            source,
        })?;
        if let Some(credential) = lookup_in_file(env, &file, &path, kind, registry, repository)? {
            tracing::debug!(registry, path = %path.display(), ?credential, "found credential");
            return Ok(credential);
        }
    }
    tracing::debug!(registry, "no credential found, using anonymous access");
    Ok(Credential::Anonymous)
}

fn lookup_in_file(
    env: &AuthEnv,
    file: &AuthFile,
    path: &Path,
    kind: FileKind,
    registry: &str,
    repository: &str,
) -> Result<Option<Credential>, AuthError> {
    let is_hub = registry == DOCKER_HUB;
    // docker sends its Docker Hub key to helpers, containers/image sends the host name.
    let server = if is_hub && kind == FileKind::Docker {
        DOCKER_HUB_SERVER
    } else {
        registry
    };

    let helper = file
        .cred_helpers
        .get(registry)
        .or_else(|| {
            is_hub
                .then(|| file.cred_helpers.get(DOCKER_HUB_SERVER))
                .flatten()
        })
        .filter(|name| !name.is_empty());
    if let Some(helper) = helper {
        return run_helper(env, helper, server, path).map(Some);
    }
    if kind == FileKind::Docker
        && let Some(store) = file.creds_store.as_deref().filter(|name| !name.is_empty())
    {
        return run_helper(env, store, server, path).map(Some);
    }

    let Some((key, value)) = find_auths_entry(&file.auths, registry, repository) else {
        return Ok(None);
    };
    let invalid = |reason: &str| AuthError::InvalidEntry {
        path: path.to_owned(),
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let entry: AuthEntry = serde_json::from_value(value.clone())
        .map_err(|err| invalid(&format!("not an object of strings: {err}")))?;
    decode_entry(entry).map_err(|reason| invalid(&reason))
}

/// Finds the `auths` entry for a repository: scoped keys, then the host, then legacy keys.
fn find_auths_entry<'a>(
    auths: &'a serde_json::Map<String, serde_json::Value>,
    registry: &str,
    repository: &str,
) -> Option<(&'a str, &'a serde_json::Value)> {
    let mut scope = format!("{registry}/{repository}");
    loop {
        if let Some((key, value)) = auths.get_key_value(&scope) {
            return Some((key.as_str(), value));
        }
        match scope.rfind('/') {
            Some(slash) => scope.truncate(slash),
            None => break,
        }
    }
    auths
        .iter()
        .find(|(key, _)| normalize_key(key) == registry)
        .map(|(key, value)| (key.as_str(), value))
}

/// Strips a scheme and path from an `auths` key, as docker's `ConvertToHostname` does,
/// and maps the legacy Docker Hub host to `docker.io`.
fn normalize_key(key: &str) -> &str {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    if host == "index.docker.io" || host == "registry-1.docker.io" {
        DOCKER_HUB
    } else {
        host
    }
}

/// Turns an `auths` entry into a credential, or `None` when it holds nothing usable.
fn decode_entry(entry: AuthEntry) -> Result<Option<Credential>, String> {
    if let Some(token) = entry.identitytoken.filter(|token| !token.is_empty()) {
        return Ok(Some(Credential::IdentityToken(token)));
    }
    if let Some(auth) = entry.auth.filter(|auth| !auth.is_empty()) {
        let decoded = decode_base64(auth.trim()).ok_or("the \"auth\" value is not base64")?;
        let decoded = String::from_utf8(decoded).map_err(|_| "the \"auth\" value is not UTF-8")?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or("the \"auth\" value does not decode to username:password")?;
        return Ok(Some(Credential::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    match (entry.username, entry.password) {
        (Some(username), Some(password)) if !username.is_empty() => {
            Ok(Some(Credential::Basic { username, password }))
        }
        _ => Ok(None),
    }
}

/// Runs `docker-credential-NAME get` with `server` on standard input, as the docker
/// credential helper protocol defines.
fn run_helper(
    env: &AuthEnv,
    name: &str,
    server: &str,
    config: &Path,
) -> Result<Credential, AuthError> {
    let program_name = format!("docker-credential-{name}");
    let Some(program) = find_in_path(env.path.as_deref(), &program_name) else {
        return Err(AuthError::HelperMissing {
            program: program_name,
            server: server.to_owned(),
            config: config.to_owned(),
        });
    };
    tracing::debug!(program = %program.display(), server, "running credential helper");

    let mut command = Command::new(&program);
    command
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = &env.path {
        command.env("PATH", path);
    }
    let spawn_error = |source| AuthError::HelperSpawn {
        program: program.clone(),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading reports its failure through the exit status.
        match stdin.write_all(server.as_bytes()) {
            Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(spawn_error(err));
            }
            _ => {}
        }
    }
    let output = child.wait_with_output().map_err(spawn_error)?;

    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // The protocol reports a missing entry as this message on standard output.
        if stdout.contains("credentials not found") {
            return Ok(Credential::Anonymous);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = [stdout.trim(), stderr.trim()]
            .into_iter()
            .filter(|text| !text.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        return Err(AuthError::HelperFailed {
            program,
            server: server.to_owned(),
            message: format!("{}: {message}", output.status),
        });
    }
    let parsed: HelperOutput =
        serde_json::from_slice(&output.stdout).map_err(|source| AuthError::HelperOutput {
            program: program.clone(),
            server: server.to_owned(),
            source,
        })?;
    if parsed.username == TOKEN_USERNAME {
        Ok(Credential::IdentityToken(parsed.secret))
    } else {
        Ok(Credential::Basic {
            username: parsed.username,
            password: parsed.secret,
        })
    }
}

fn find_in_path(path: Option<&std::ffi::OsStr>, program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;

    std::env::split_paths(path?)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// Decodes standard base64 with optional padding.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    };
    let trimmed = text.trim_end_matches('=');
    if text.len() - trimmed.len() > 2 || trimmed.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    for chunk in trimmed.as_bytes().chunks(4) {
        let mut bits = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            bits |= value(c)? << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn basic(username: &str, password: &str) -> Credential {
        Credential::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }
    }

    fn write(path: &Path, text: &str) {
        fs_err::create_dir_all(path.parent().unwrap()).unwrap();
        fs_err::write(path, text).unwrap();
    }

    /// An environment whose home is a fresh temporary directory.
    fn temp_env(dir: &Path) -> AuthEnv {
        AuthEnv {
            home: Some(dir.join("home")),
            path: Some(OsString::new()),
            ..AuthEnv::default()
        }
    }

    #[test]
    fn base64_decoding() {
        assert_eq!(decode_base64("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(decode_base64("YQ==").unwrap(), b"a");
        assert_eq!(decode_base64("YWI").unwrap(), b"ab");
        assert!(decode_base64("Y").is_none());
        assert!(decode_base64("a*b=").is_none());
    }

    #[test]
    fn docker_config_auths_forms() {
        let dir = tempfile::tempdir().unwrap();
        let env = temp_env(dir.path());
        write(
            &dir.path().join("home/.docker/config.json"),
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
                "127.0.0.1:5000": {"username": "alice", "password": "pw"},
                "http://reg.example.test:8443/v2/": {"auth": "Ym9iOnM6ZWM="},
                "token.example.test": {"auth": "", "identitytoken": "tok"}
            }}"#,
        );
        assert_eq!(
            lookup(&env, "docker.io", "library/debian").unwrap(),
            basic("hub", "secret")
        );
        assert_eq!(
            lookup(&env, "127.0.0.1:5000", "app").unwrap(),
            basic("alice", "pw")
        );
        assert_eq!(
            lookup(&env, "reg.example.test:8443", "a/b").unwrap(),
            basic("bob", "s:ec")
        );
        assert_eq!(
            lookup(&env, "token.example.test", "a").unwrap(),
            Credential::IdentityToken("tok".to_owned())
        );
        assert_eq!(
            lookup(&env, "other.example.test", "a").unwrap(),
            Credential::Anonymous
        );
    }

    #[test]
    fn auth_json_precedes_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = temp_env(dir.path());
        env.xdg_runtime_dir = Some(dir.path().join("run"));
        write(
            &dir.path().join("run/containers/auth.json"),
            r#"{"auths": {
                "127.0.0.1:5000/team/app": {"auth": "c2NvcGVkOjE="},
                "127.0.0.1:5000": {"auth": "aG9zdDoy"}
            }}"#,
        );
        write(
            &dir.path().join("home/.docker/config.json"),
            r#"{"auths": {"127.0.0.1:5000": {"auth": "ZG9ja2VyOjM="},
                          "127.0.0.1:6000": {"auth": "ZG9ja2VyOjQ="}}}"#,
        );
        assert_eq!(
            lookup(&env, "127.0.0.1:5000", "team/app").unwrap(),
            basic("scoped", "1")
        );
        assert_eq!(
            lookup(&env, "127.0.0.1:5000", "team/other").unwrap(),
            basic("host", "2")
        );
        assert_eq!(
            lookup(&env, "127.0.0.1:6000", "x").unwrap(),
            basic("docker", "4")
        );

        // REGISTRY_AUTH_FILE replaces every other file, as in skopeo.
        let only = dir.path().join("only.json");
        write(&only, r#"{"auths": {}}"#);
        env.registry_auth_file = Some(only);
        assert_eq!(
            lookup(&env, "127.0.0.1:6000", "x").unwrap(),
            Credential::Anonymous
        );
    }

    #[test]
    fn cred_helpers_run_with_explicit_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs_err::create_dir_all(&bin).unwrap();
        let helper = bin.join("docker-credential-fake");
        // The fake helper echoes the server it was asked for as the password.
        write(
            &helper,
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\n\
             case \"$server\" in\n\
             missing*) echo 'credentials not found in native keychain'; exit 1;;\n\
             token*) echo '{\"Username\":\"<token>\",\"Secret\":\"tok\"}';;\n\
             *) printf '{\"ServerURL\":\"%s\",\"Username\":\"u\",\"Secret\":\"%s\"}' \"$server\" \"$server\";;\n\
             esac\n",
        );
        fs_err::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();

        let mut env = temp_env(dir.path());
        env.path = Some(
            std::env::join_paths([bin.as_path(), Path::new("/usr/bin"), Path::new("/bin")])
                .unwrap(),
        );
        write(
            &dir.path().join("home/.docker/config.json"),
            r#"{"credHelpers": {"127.0.0.1:5000": "fake", "missing.test": "fake",
                                "token.test": "fake", "gone.test": "absent"},
                "auths": {"127.0.0.1:5000": {"auth": "bm90OnVzZWQ="}}}"#,
        );
        assert_eq!(
            lookup(&env, "127.0.0.1:5000", "app").unwrap(),
            basic("u", "127.0.0.1:5000")
        );
        assert_eq!(
            lookup(&env, "missing.test", "a").unwrap(),
            Credential::Anonymous
        );
        assert_eq!(
            lookup(&env, "token.test", "a").unwrap(),
            Credential::IdentityToken("tok".to_owned())
        );
        let err = lookup(&env, "gone.test", "a").unwrap_err();
        assert!(matches!(err, AuthError::HelperMissing { .. }), "{err}");
        assert!(
            err.to_string().contains("docker-credential-absent"),
            "{err}"
        );

        // credsStore covers every host without a credHelpers entry and gets docker's
        // Docker Hub key.
        write(
            &dir.path().join("home/.docker/config.json"),
            r#"{"credsStore": "fake", "auths": {"https://index.docker.io/v1/": {}}}"#,
        );
        assert_eq!(
            lookup(&env, "docker.io", "library/debian").unwrap(),
            basic("u", DOCKER_HUB_SERVER)
        );
    }

    #[test]
    fn invalid_files_name_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let env = temp_env(dir.path());
        let config = dir.path().join("home/.docker/config.json");
        write(&config, "{not json");
        let err = lookup(&env, "127.0.0.1:5000", "a").unwrap_err();
        assert!(
            err.to_string().contains(&config.display().to_string()),
            "{err}"
        );

        write(&config, r#"{"auths": {"127.0.0.1:5000": {"auth": "!!!"}}}"#);
        let err = lookup(&env, "127.0.0.1:5000", "a").unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
    }

    #[test]
    fn debug_redacts_secrets() {
        let shown = format!("{:?}", basic("alice", "hunter2"));
        assert!(shown.contains("alice"));
        assert!(!shown.contains("hunter2"));
        let token = format!("{:?}", Credential::IdentityToken("abc123".to_owned()));
        assert!(!token.contains("abc123"));
    }
}
