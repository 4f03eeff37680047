//! Helpers shared by the integration tests: a real registry on loopback, the bookworm
//! fixture with its security report and dpkg oracle, the image tools (skopeo, umoci) and
//! the layermend binary.
//!
//! Every external tool is required: a missing tool fails the test with the package to
//! install, it never skips it.

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

pub mod auth;
pub mod dockerd;
pub mod fault_proxy;
pub mod http;
pub mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// Maximum time one layermend run may take before the test kills it.
const LAYERMEND_TIMEOUT: Duration = Duration::from_secs(900);

/// Debian package that provides each external tool, for the failure message.
const TOOL_PACKAGES: &[(&str, &str)] = &[
    ("docker-registry", "docker-registry"),
    ("dockerd", "docker.io"),
    ("skopeo", "skopeo"),
    ("umoci", "umoci"),
    ("htpasswd", "apache2-utils"),
    ("debootstrap", "debootstrap"),
    ("gpgv", "gpgv"),
    ("xz", "xz-utils"),
    ("jq", "jq"),
    ("curl", "curl"),
    ("chroot", "coreutils"),
    ("unshare", "util-linux"),
    ("flock", "util-linux"),
];

/// Panics unless `tool` is on PATH, naming the Debian package that provides it.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        let package = TOOL_PACKAGES
            .iter()
            .find(|(name, _)| *name == tool)
            .map_or(tool, |(_, package)| package);
        panic!(
            "required tool `{tool}` not found on PATH: install the Debian package `{package}` \
             (.ci/run installs every tool the tests use)"
        );
    }
}

/// Runs `command` to completion and panics with its output unless it exits with 0.
pub fn run(command: &mut Command) -> Output {
    let program = command.get_program().to_string_lossy().into_owned();
    require_tool(&program);
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("failed to start {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    output
}

/// Runs `command` like [`run`] and returns its stdout as text.
pub fn run_stdout(command: &mut Command) -> String {
    String::from_utf8_lossy(&run(command).stdout).into_owned()
}

/// Hex SHA-256 of `bytes`, prefixed with `sha256:` like an OCI digest.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Path of the fixture script `name` in this repository.
pub fn fixture_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A `docker-registry` (distribution 2.8) process on a free loopback port, with
/// filesystem storage in its own temporary directory. Dropping it kills the process.
pub struct Registry {
    child: Child,
    port: u16,
    credentials: Option<(String, String)>,
    // Declared last so the process is killed before its storage is deleted.
    dir: TempDir,
}

impl Registry {
    /// Starts a registry without authentication.
    pub fn start() -> Registry {
        Registry::spawn(None)
    }

    /// Starts a registry that requires HTTP basic authentication with `user` and `password`
    /// (a bcrypt htpasswd file, the only kind distribution accepts).
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::spawn(Some((user.to_owned(), password.to_owned())))
    }

    fn spawn(credentials: Option<(String, String)>) -> Registry {
        require_tool("docker-registry");
        let htpasswd = credentials.as_ref().map(|(user, password)| {
            run_stdout(Command::new("htpasswd").args(["-Bbn", user, password]))
        });
        // A port taken between the probe and the registry's bind makes the registry exit;
        // the loop then tries another port in a fresh directory.
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("layermend-registry-")
                .tempdir()
                .expect("create registry directory");
            let mut auth = String::new();
            if let Some(htpasswd) = &htpasswd {
                let path = dir.path().join("htpasswd");
                fs_err::write(&path, htpasswd).unwrap();
                auth = format!(
                    "auth:\n  htpasswd:\n    realm: layermend-test\n    path: {}\n",
                    path.display()
                );
            }
            let port = free_port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n{auth}",
                storage = dir.path().join("storage").display(),
            );
            let (child, log_path) = spawn_registry(dir.path(), &config);
            let mut registry = Registry {
                child,
                port,
                credentials: credentials.clone(),
                dir,
            };
            if registry.wait_ready(Duration::from_secs(10)) {
                return registry;
            }
            last_log = fs_err::read_to_string(&log_path).unwrap_or_default();
        }
        panic!("docker-registry did not become ready on 127.0.0.1; its last log:\n{last_log}");
    }

    /// Polls `GET /v2/` until it returns 200 (or 401 with authentication).
    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(response) = http::request("GET", self.port, "/v2/", &[], None) {
                let expected = if self.credentials.is_some() { 401 } else { 200 };
                if response.status == expected {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn kill(&mut self) {
        // Child::kill sends SIGKILL to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Full image reference for `repository:tag` in this registry.
    pub fn image(&self, repository_and_tag: &str) -> String {
        format!("{}/{repository_and_tag}", self.host())
    }

    /// User and password of a registry started with [`Registry::start_with_auth`].
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// Sends a request to this registry with its credentials, if any.
    pub fn request(&self, method: &str, path: &str, accept: &[&str]) -> http::Response {
        let credentials = self
            .credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()));
        http::request(method, self.port, path, accept, credentials)
            .unwrap_or_else(|error| panic!("{method} {path} on {}: {error}", self.host()))
    }

    /// Fetches the manifest of `repository:reference`, or `None` on 404.
    pub fn manifest(&self, repository: &str, reference: &str) -> Option<Manifest> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let response = self.request("GET", &path, MANIFEST_MEDIA_TYPES);
        match response.status {
            200 => Some(Manifest::parse(response.body)),
            404 => None,
            status => panic!(
                "GET {path} on {} returned {status}: {}",
                self.host(),
                String::from_utf8_lossy(&response.body)
            ),
        }
    }

    /// Fetches blob `digest` of `repository` and checks its digest.
    pub fn blob(&self, repository: &str, digest: &str) -> Vec<u8> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let response = self.request("GET", &path, &[]);
        assert_eq!(response.status, 200, "GET {path} on {}", self.host());
        assert_eq!(
            sha256_digest(&response.body),
            digest,
            "blob {digest} of {repository}: content does not match its digest"
        );
        response.body
    }

    /// Fetches and parses the config blob of `manifest`.
    pub fn config(&self, repository: &str, manifest: &Manifest) -> Value {
        let digest = manifest.json["config"]["digest"]
            .as_str()
            .expect("manifest config.digest");
        serde_json::from_slice(&self.blob(repository, digest)).expect("config is JSON")
    }

    /// `--dest-creds`/`--src-creds` value for skopeo, if the registry needs one.
    fn skopeo_credentials(&self, flag: &str) -> Vec<String> {
        match &self.credentials {
            Some((user, password)) => vec![format!("--{flag}-creds={user}:{password}")],
            None => Vec::new(),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Accept header values for every manifest type the registry stores.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A manifest as the registry returned it.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// Digest of the exact bytes.
    pub digest: String,
    pub bytes: Vec<u8>,
    pub json: Value,
}

impl Manifest {
    fn parse(bytes: Vec<u8>) -> Manifest {
        let json = serde_json::from_slice(&bytes).expect("manifest is JSON");
        Manifest {
            digest: sha256_digest(&bytes),
            bytes,
            json,
        }
    }

    pub fn media_type(&self) -> &str {
        self.json["mediaType"].as_str().unwrap_or_default()
    }

    pub fn layers(&self) -> &[Value] {
        self.json["layers"].as_array().map_or(&[], Vec::as_slice)
    }
}

/// Starts `docker-registry serve` with `config` written into `dir`, logging to
/// `dir/registry.log`; returns the process and the log path.
pub fn spawn_registry(dir: &Path, config: &str) -> (Child, PathBuf) {
    let config_path = dir.join("config.yml");
    fs_err::write(&config_path, config).unwrap();
    let log_path = dir.join("registry.log");
    let log = fs_err::File::create(&log_path).unwrap().into_parts().0;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start docker-registry");
    (child, log_path)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// Manifest format of a copy made with skopeo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestFormat {
    /// Keep the layout's OCI manifest.
    Oci,
    /// Convert to Docker image manifest schema 2 (`skopeo --format v2s2`).
    DockerV2S2,
}

/// Pushes `layout_dir:tag` (an OCI image layout) to `registry` as `repository:tag`.
pub fn push_layout(
    layout_dir: &Path,
    layout_tag: &str,
    registry: &Registry,
    destination: &str,
    format: ManifestFormat,
) {
    require_tool("skopeo");
    let mut command = Command::new("skopeo");
    command.args(["copy", "--quiet", "--dest-tls-verify=false"]);
    command.args(registry.skopeo_credentials("dest"));
    if format == ManifestFormat::DockerV2S2 {
        command.args(["--format", "v2s2"]);
    }
    command
        .arg(format!("oci:{}:{layout_tag}", layout_dir.display()))
        .arg(format!("docker://{}", registry.image(destination)));
    run(&mut command);
}

/// Copies `repository:tag` from `registry` into a new OCI image layout at `layout_dir`
/// under the tag `tag`.
pub fn pull_layout(registry: &Registry, source: &str, layout_dir: &Path, tag: &str) {
    require_tool("skopeo");
    let mut command = Command::new("skopeo");
    command.args(["copy", "--quiet", "--src-tls-verify=false"]);
    command.args(registry.skopeo_credentials("src"));
    command
        .arg(format!("docker://{}", registry.image(source)))
        .arg(format!("oci:{}:{tag}", layout_dir.display()));
    run(&mut command);
}

/// Pulls `repository:tag` from `registry` and applies its layers with `umoci unpack`
/// (whiteouts included) into the bundle directory `bundle`; the files are in
/// `bundle/rootfs`. A `/dev/null` device is created there, as a container runtime would,
/// because perl and dpkg open it.
pub fn umoci_unpack(registry: &Registry, source: &str, bundle: &Path) {
    require_tool("umoci");
    let layout = tempfile::tempdir().expect("create layout directory");
    pull_layout(registry, source, &layout.path().join("image"), "unpack");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:unpack", layout.path().join("image").display()))
        .arg(bundle));
    let dev = bundle.join("rootfs/dev");
    fs_err::create_dir_all(&dev).unwrap();
    if !dev.join("null").exists() {
        run(Command::new("mknod")
            .args(["-m", "666"])
            .arg(dev.join("null"))
            .args(["c", "1", "3"]));
    }
}

/// Runs `args` inside `chroot root` with a clean environment and returns the output
/// without checking the exit status.
pub fn chroot(root: &Path, args: &[&str]) -> Output {
    require_tool("chroot");
    Command::new("chroot")
        .arg(root)
        .args([
            "/usr/bin/env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("failed to run chroot {}: {error}", root.display()))
}

/// The bookworm minbase image built by `tests/fixtures/bookworm.sh`.
#[derive(Debug)]
pub struct BookwormFixture {
    /// Cache directory of this fixture build.
    pub dir: PathBuf,
    /// The root filesystem the layer was packed from. Never modify it.
    pub rootfs: PathBuf,
    /// OCI image layout with the tag [`BookwormFixture::TAG`].
    pub layout: PathBuf,
    /// Values of `image.env`: MIRROR, SECURITY_MIRROR, DIFF_ID, LAYER_DIGEST,
    /// CONFIG_DIGEST, MANIFEST_DIGEST.
    pub env: BTreeMap<String, String>,
}

impl BookwormFixture {
    pub const TAG: &'static str = "bookworm";
}

/// Builds the bookworm fixture, or reuses today's cached build, once per test process.
pub fn bookworm_fixture() -> &'static BookwormFixture {
    static FIXTURE: OnceLock<BookwormFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        for tool in ["debootstrap", "tar", "gzip", "jq", "flock"] {
            require_tool(tool);
        }
        let started = Instant::now();
        let stdout = run_stdout(&mut Command::new(fixture_script("bookworm.sh")));
        let dir = PathBuf::from(stdout.trim());
        eprintln!(
            "bookworm fixture {} ready in {:.1} s",
            dir.display(),
            started.elapsed().as_secs_f64()
        );
        let env = fs_err::read_to_string(dir.join("image.env"))
            .unwrap()
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        BookwormFixture {
            rootfs: dir.join("rootfs"),
            layout: dir.join("layout"),
            env,
            dir,
        }
    })
}

/// One package update of the security fixture: a line of `updates.tsv`.
#[derive(Clone, Debug)]
pub struct PackageUpdate {
    pub name: String,
    pub installed: String,
    pub fixed: String,
    pub architecture: String,
    /// Path of the .deb in the archive's pool.
    pub filename: String,
    pub sha256: String,
}

/// The security report of the bookworm fixture and the .deb files it names, made by
/// `tests/fixtures/security-report.sh`.
#[derive(Debug)]
pub struct SecurityFixture {
    pub dir: PathBuf,
    /// Trivy JSON report.
    pub report: PathBuf,
    /// Directory of the new .deb files.
    pub debs: PathBuf,
    pub updates: Vec<PackageUpdate>,
}

impl SecurityFixture {
    pub fn update(&self, name: &str) -> Option<&PackageUpdate> {
        self.updates.iter().find(|update| update.name == name)
    }
}

/// Derives the report from today's bookworm-security suite once per test process.
///
/// The result is stored in the fixture's cache directory under the hash of its update
/// list, so identical results share one directory.
pub fn security_fixture() -> &'static SecurityFixture {
    static SECURITY: OnceLock<SecurityFixture> = OnceLock::new();
    SECURITY.get_or_init(|| {
        for tool in ["curl", "gpgv", "xz", "jq"] {
            require_tool(tool);
        }
        let fixture = bookworm_fixture();
        let partial = fixture
            .dir
            .join(format!("security.partial-{}", std::process::id()));
        let _ = fs_err::remove_dir_all(&partial);
        fs_err::create_dir_all(&partial).unwrap();
        let diff_id = &fixture.env["DIFF_ID"];
        run(Command::new(fixture_script("security-report.sh"))
            .env("ARTIFACT_NAME", "debian:bookworm")
            .env("LAYER_DIFF_ID", diff_id)
            .arg(&fixture.rootfs)
            .arg(partial.join("report.json"))
            .arg(&partial));
        let updates_tsv = fs_err::read(partial.join("updates.tsv")).unwrap();
        let key = &sha256_digest(&updates_tsv)["sha256:".len()..][..16];
        let dir = fixture.dir.join(format!("security-{key}"));
        if dir.exists() {
            fs_err::remove_dir_all(&partial).unwrap();
        } else if let Err(error) = std::fs::rename(&partial, &dir) {
            // Another test process stored the same result first.
            assert!(dir.exists(), "rename {}: {error}", partial.display());
            fs_err::remove_dir_all(&partial).unwrap();
        }
        let updates = parse_updates(&String::from_utf8_lossy(&updates_tsv));
        assert!(
            !updates.is_empty(),
            "bookworm-security has no update for the fixture today, so the patch tests \
             have nothing to patch"
        );
        SecurityFixture {
            report: dir.join("report.json"),
            debs: dir.join("debs"),
            updates,
            dir,
        }
    })
}

fn parse_updates(tsv: &str) -> Vec<PackageUpdate> {
    tsv.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 6, "updates.tsv line {line:?}");
            PackageUpdate {
                name: fields[0].to_owned(),
                installed: fields[1].to_owned(),
                fixed: fields[2].to_owned(),
                architecture: fields[3].to_owned(),
                filename: fields[4].to_owned(),
                sha256: fields[5].to_owned(),
            }
        })
        .collect()
}

/// The fixture root filesystem after `apt-get install` of the security fixture's .debs
/// (`tests/fixtures/oracle.sh`): what dpkg itself makes of the update. Built once per
/// fixture and update list, and cached next to them.
pub fn oracle_rootfs() -> &'static Path {
    static ORACLE: OnceLock<PathBuf> = OnceLock::new();
    ORACLE.get_or_init(|| {
        for tool in ["chroot", "unshare", "flock"] {
            require_tool(tool);
        }
        let fixture = bookworm_fixture();
        let security = security_fixture();
        let out = security.dir.join("oracle");
        let lock = security.dir.join("oracle.lock");
        // flock serializes test processes, because oracle.sh rejects an existing OUTDIR.
        let script = "test -f \"$3.complete\" && exit 0; rm -rf \"$3\" \"$3.log\"; \
                      \"$0\" \"$1\" \"$2\" \"$3\" >/dev/null && touch \"$3.complete\"";
        let started = Instant::now();
        run(Command::new("flock")
            .arg(&lock)
            .args(["bash", "-c", script])
            .arg(fixture_script("oracle.sh"))
            .arg(&fixture.rootfs)
            .arg(&security.debs)
            .arg(&out));
        eprintln!(
            "oracle {} ready in {:.1} s",
            out.display(),
            started.elapsed().as_secs_f64()
        );
        out
    })
}

/// Exit code, stdout and stderr of one layermend run.
pub struct Outcome {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "layermend {}", self.args.join(" "))?;
        writeln!(f, "exit code: {}", self.code)?;
        writeln!(f, "--- stdout\n{}", self.stdout)?;
        write!(f, "--- stderr\n{}", self.stderr)
    }
}

/// Runs the layermend binary with `args` and an empty Docker credential store, and kills
/// it after [`LAYERMEND_TIMEOUT`].
pub fn layermend<S: AsRef<str>>(args: &[S]) -> Outcome {
    layermend_with_env(args, &[])
}

/// Runs layermend like [`layermend`] with extra environment variables.
pub fn layermend_with_env<S: AsRef<str>>(args: &[S], env: &[(&str, &str)]) -> Outcome {
    let args: Vec<String> = args.iter().map(|arg| arg.as_ref().to_owned()).collect();
    // An empty DOCKER_CONFIG keeps the host's registry credentials out of the tests.
    let docker_config = tempfile::tempdir().expect("create DOCKER_CONFIG directory");
    // LAYERMEND_BIN names another build of the binary, for a target directory that
    // several checkouts share and where the last build's binary wins the common path.
    let binary =
        std::env::var_os("LAYERMEND_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_layermend").into());
    let mut command = Command::new(binary);
    command
        .args(&args)
        .env("DOCKER_CONFIG", docker_config.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start the layermend binary");

    // Both pipes are drained on threads so a chatty child cannot block on a full pipe.
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stdout_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout_pipe.read_to_string(&mut text);
        text
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });

    let deadline = Instant::now() + LAYERMEND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for layermend") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "layermend {} did not finish within {} s and was killed",
                args.join(" "),
                LAYERMEND_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    let outcome = Outcome {
        args,
        // A signal leaves no exit code: -1 then fails every assertion on the code.
        code: status.code().unwrap_or(-1),
        stdout: stdout_reader.join().unwrap(),
        stderr: stderr_reader.join().unwrap(),
    };
    eprintln!("{outcome}");
    outcome
}
