//! End-to-end tests of the BuildKit backend: `layermend patch --buildkit` against a private
//! dockerd (Debian's docker.io, 20.10, whose embedded BuildKit has no MergeOp or DiffOp),
//! compared with the in-process backend on the same bookworm image and report. The
//! comparison reaches the engine on loopback TCP with mutual TLS, the other tests on its
//! unix socket.
//!
//! Needs root, the network access apt is configured for, and the tools `.ci/run` installs
//! (docker.io among them).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::auth::TestPki;
use common::dockerd::Dockerd;
use common::tree::{self, FileState};
use common::{
    BookwormFixture, ManifestFormat, Registry, bookworm_fixture, chroot, layermend, push_layout,
    security_fixture, sha256_digest, umoci_unpack,
};

const REPOSITORY: &str = "debian";
const SOURCE_TAG: &str = "bookworm";

fn registry_with_fixture() -> Registry {
    let registry = Registry::start();
    push_layout(
        &bookworm_fixture().layout,
        BookwormFixture::TAG,
        &registry,
        &format!("{REPOSITORY}:{SOURCE_TAG}"),
        ManifestFormat::Oci,
    );
    registry
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Returns `dpkg-query -W` of the root filesystem: one `name version` line per package.
fn package_versions(rootfs: &Path) -> BTreeMap<String, String> {
    let output = chroot(
        rootfs,
        &["dpkg-query", "-W", "-f", "${Package} ${Version}\\n"],
    );
    assert!(
        output.status.success(),
        "dpkg-query in {}",
        rootfs.display()
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(name, version)| (name.to_owned(), version.to_owned()))
        .collect()
}

/// Returns the paths of the top layer of `tag`, without the `./` prefix.
fn top_layer_paths(registry: &Registry, tag: &str) -> BTreeSet<String> {
    let manifest = registry.manifest(REPOSITORY, tag).unwrap();
    let layer = manifest.layers().last().unwrap();
    let digest = layer["digest"].as_str().unwrap();
    let media_type = layer["mediaType"].as_str().unwrap();
    let blob = registry.blob(REPOSITORY, digest);
    tree::layer_entries(&tree::decompress_layer(&blob, media_type))
        .into_iter()
        .map(|entry| entry.path)
        .collect()
}

/// Paths a package manager run writes besides the packages' own files: dpkg and apt
/// state, logs and caches.
fn is_tool_state(path: &str) -> bool {
    ["var/lib/dpkg/", "var/log/", "var/cache/", "var/lib/apt/"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

#[test]
fn buildkit_patch_matches_inprocess() {
    let security = security_fixture();
    let registry = registry_with_fixture();
    let pki = TestPki::create();
    let (client_cert, client_key) = pki.client_cert();
    let dockerd = Dockerd::start_with_tls(&pki);
    let source = registry.image(&format!("{REPOSITORY}:{SOURCE_TAG}"));
    let report = path_str(&security.report);

    let inprocess = layermend(&["patch", "-i", &source, "-r", report, "-t", "inprocess"]);
    assert_eq!(
        inprocess.code, 0,
        "in-process patch must succeed\n{inprocess}"
    );
    let address = dockerd.tls_address();
    let buildkit = layermend(&[
        "patch",
        "-i",
        &source,
        "-r",
        report,
        "-t",
        "buildkit",
        "--buildkit",
        &address,
        "--cacert",
        path_str(&pki.ca_cert()),
        "--cert",
        path_str(&client_cert),
        "--key",
        path_str(&client_key),
    ]);
    assert_eq!(buildkit.code, 0, "BuildKit patch must succeed\n{buildkit}");
    for update in &security.updates {
        assert!(
            buildkit.stdout.contains(&update.name),
            "the summary must name {}\n{buildkit}",
            update.name
        );
    }

    // One new layer, on top of the unchanged source layers.
    let original = registry.manifest(REPOSITORY, SOURCE_TAG).unwrap();
    let patched = registry.manifest(REPOSITORY, "buildkit").unwrap();
    let reference = registry.manifest(REPOSITORY, "inprocess").unwrap();
    assert_eq!(patched.layers().len(), original.layers().len() + 1);
    assert_eq!(
        &patched.layers()[..original.layers().len()],
        original.layers()
    );
    assert_eq!(patched.media_type(), reference.media_type());

    // Config: one history entry and one diff_id more, the patch label with the same
    // packages as the in-process patch, the source's labels kept.
    let config = registry.config(REPOSITORY, &patched);
    let reference_config = registry.config(REPOSITORY, &reference);
    let history = config["history"].as_array().unwrap();
    let reference_history = reference_config["history"].as_array().unwrap();
    assert_eq!(history.len(), reference_history.len());
    let created_by = history.last().unwrap()["created_by"].as_str().unwrap();
    assert!(
        created_by.contains("BuildKit"),
        "the history entry must say BuildKit built the layer: {created_by}"
    );
    assert_eq!(
        history.last().unwrap()["comment"],
        reference_history.last().unwrap()["comment"],
        "both history entries must list the same packages and versions"
    );
    let labels = config["config"]["Labels"].as_object().unwrap();
    let reference_labels = reference_config["config"]["Labels"].as_object().unwrap();
    let keys = |labels: &serde_json::Map<String, Value>| labels.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(labels), keys(reference_labels));
    let packages = |labels: &serde_json::Map<String, Value>| {
        let record: Value =
            serde_json::from_str(labels["dev.layermend.patch"].as_str().unwrap()).unwrap();
        record["packages"].clone()
    };
    assert_eq!(packages(labels), packages(reference_labels));
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(
        diff_ids.len(),
        reference_config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len()
    );

    // The temporary images are gone from the engine.
    let images = dockerd.docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.status.success());
    let listed = String::from_utf8_lossy(&images.stdout);
    assert!(
        !listed.contains("layermend-buildkit"),
        "temporary images must be removed from the engine: {listed}"
    );

    let bundles = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    umoci_unpack(
        &registry,
        &format!("{REPOSITORY}:buildkit"),
        bundles.0.path(),
    );
    umoci_unpack(
        &registry,
        &format!("{REPOSITORY}:inprocess"),
        bundles.1.path(),
    );
    let (built_root, reference_root) = (
        bundles.0.path().join("rootfs"),
        bundles.1.path().join("rootfs"),
    );
    let versions = package_versions(&built_root);
    assert_eq!(versions, package_versions(&reference_root), "dpkg-query -W");
    for update in &security.updates {
        assert_eq!(
            versions.get(&update.name),
            Some(&update.fixed),
            "{}",
            update.name
        );
    }

    // Every file the in-process layer wrote, apart from dpkg state, is the same in the
    // BuildKit result: both unpacked the same .debs.
    let reference_paths = top_layer_paths(&registry, "inprocess");
    let built_paths = top_layer_paths(&registry, "buildkit");
    let mut differing = Vec::new();
    for path in reference_paths.iter().filter(|path| !is_tool_state(path)) {
        let relative = PathBuf::from(path);
        let built = tree::file_state(&built_root, &relative);
        let expected = tree::file_state(&reference_root, &relative);
        let same = match (&built, &expected) {
            (FileState::File { sha256: a, .. }, FileState::File { sha256: b, .. }) => a == b,
            (FileState::Directory { .. }, FileState::Directory { .. }) => true,
            _ => built == expected,
        };
        if !same {
            differing.push(format!("{path}: buildkit {built}, in-process {expected}"));
        }
    }
    assert!(
        differing.is_empty(),
        "files differ between the backends:\n{}",
        differing.join("\n")
    );

    // The scripts' products: ldconfig's trigger rewrote the linker cache, tzdata's
    // postinst wrote /etc/timezone and libpam-runtime's postinst ran pam-auth-update,
    // none of which the in-process backend does.
    for product in ["etc/ld.so.cache", "etc/timezone", "etc/pam.d/common-auth"] {
        assert!(
            built_paths.contains(product),
            "the BuildKit layer must contain {product}, written by a maintainer script"
        );
        assert!(
            !reference_paths.contains(product),
            "the in-process layer must not contain {product}"
        );
    }
    // The package lists apt-get update fetched are removed in the same step.
    assert!(
        !built_paths
            .iter()
            .any(|path| path.starts_with("var/lib/apt/lists/") && path.ends_with("Packages")),
        "the layer must not contain apt's package lists"
    );
}

#[test]
fn auto_backend_switches_for_scripts() {
    let security = security_fixture();
    let registry = registry_with_fixture();
    let dockerd = Dockerd::start();
    let source = registry.image(&format!("{REPOSITORY}:{SOURCE_TAG}"));
    let address = dockerd.address();
    let outcome = layermend(&[
        "patch",
        "-i",
        &source,
        "-r",
        path_str(&security.report),
        "-t",
        "auto",
        "--backend",
        "auto",
        "--buildkit",
        &address,
    ]);
    assert_eq!(outcome.code, 0, "the patch must succeed\n{outcome}");
    // tzdata's postinst and zlib1g's ldconfig trigger are skipped in-process.
    assert!(
        outcome
            .stderr
            .contains("have maintainer scripts or triggers"),
        "the warning must say why BuildKit runs\n{outcome}"
    );
    for package in ["tzdata", "zlib1g"] {
        assert!(
            outcome.stderr.contains(package),
            "the warning must name {package}\n{outcome}"
        );
    }
    let patched = registry.manifest(REPOSITORY, "auto").unwrap();
    let config = registry.config(REPOSITORY, &patched);
    let created_by = config["history"].as_array().unwrap().last().unwrap()["created_by"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        created_by.contains("BuildKit"),
        "the layer must come from BuildKit: {created_by}"
    );
}

#[test]
fn inprocess_backend_rejects_address() {
    let outcome = layermend(&[
        "patch",
        "-i",
        "oci:/nonexistent:tag",
        "--backend",
        "inprocess",
        "--buildkit",
        "docker://",
    ]);
    assert_eq!(
        outcome.code, 2,
        "conflicting flags are a user error\n{outcome}"
    );
    assert!(
        outcome
            .stderr
            .contains("--buildkit needs --backend buildkit or auto"),
        "{outcome}"
    );
}

#[test]
fn invalid_address_is_user_error() {
    let outcome = layermend(&["patch", "-i", "oci:/nonexistent:tag", "-a", "ssh://host"]);
    assert_eq!(
        outcome.code, 2,
        "an invalid address is a user error\n{outcome}"
    );
    assert!(
        outcome
            .stderr
            .contains("invalid BuildKit address \"ssh://host\""),
        "{outcome}"
    );
}

#[test]
fn tls_handshake_failure_names_flags() {
    let security = security_fixture();
    let registry = registry_with_fixture();
    let pki = TestPki::create();
    let (client_cert, client_key) = pki.client_cert();
    let dockerd = Dockerd::start_with_tls(&pki);
    let source = registry.image(&format!("{REPOSITORY}:{SOURCE_TAG}"));
    let address = dockerd.tls_address();
    let other_ca = TestPki::create();
    let ca_cert = pki.ca_cert();
    let other_ca_cert = other_ca.ca_cert();

    let cases: [(&str, Vec<&Path>); 2] = [
        // The engine runs with --tlsverify, so it rejects a client without a certificate.
        ("no client certificate", vec![&ca_cert]),
        // The engine's certificate is not signed by the CA given.
        (
            "another CA",
            vec![&other_ca_cert, &client_cert, &client_key],
        ),
    ];
    for (case, files) in cases {
        let mut args = vec![
            "patch".to_owned(),
            "-i".to_owned(),
            source.clone(),
            "-r".to_owned(),
            path_str(&security.report).to_owned(),
            "--buildkit".to_owned(),
            address.clone(),
        ];
        for (flag, file) in ["--cacert", "--cert", "--key"].iter().zip(files) {
            args.push((*flag).to_owned());
            args.push(path_str(file).to_owned());
        }
        let outcome = layermend(&args);
        assert_eq!(
            outcome.code, 1,
            "{case}: a rejected connection is a failure\n{outcome}"
        );
        assert!(
            outcome.stderr.contains("TLS connection"),
            "{case}: the error must say TLS failed\n{outcome}"
        );
        assert!(
            outcome.stderr.contains(&address),
            "{case}: the error must name the address\n{outcome}"
        );
        assert!(
            outcome.stderr.contains("check --cacert, --cert and --key"),
            "{case}: the error must point at the TLS flags\n{outcome}"
        );
    }
    assert!(
        registry.manifest(REPOSITORY, "bookworm-patched").is_none(),
        "nothing may be pushed"
    );
}

#[test]
fn tls_flags_need_tcp_address() {
    let pki = TestPki::create();
    let outcome = layermend(&[
        "patch",
        "-i",
        "oci:/nonexistent:tag",
        "--buildkit",
        "unix:///run/docker.sock",
        "--cacert",
        path_str(&pki.ca_cert()),
    ]);
    assert_eq!(
        outcome.code, 2,
        "TLS flags with a unix address are a user error\n{outcome}"
    );
    assert!(
        outcome
            .stderr
            .contains("apply to tcp:// addresses only, not unix:///run/docker.sock"),
        "{outcome}"
    );
}

#[test]
fn tls_file_missing_is_user_error() {
    let missing = tempfile::tempdir().unwrap();
    let ca_cert = missing.path().join("ca.pem");
    let outcome = layermend(&[
        "patch",
        "-i",
        "oci:/nonexistent:tag",
        "--buildkit",
        "tcp://127.0.0.1:2376",
        "--cacert",
        path_str(&ca_cert),
    ]);
    assert_eq!(
        outcome.code, 2,
        "a missing TLS file is a user error\n{outcome}"
    );
    assert!(
        outcome.stderr.contains(&format!(
            "failed to read the --cacert file {}",
            ca_cert.display()
        )),
        "{outcome}"
    );
}

#[test]
fn buildkit_unreachable_address_fails() {
    let security = security_fixture();
    let registry = registry_with_fixture();
    let source = registry.image(&format!("{REPOSITORY}:{SOURCE_TAG}"));
    let missing = tempfile::tempdir().unwrap();
    let address = format!("unix://{}", missing.path().join("docker.sock").display());
    let outcome = layermend(&[
        "patch",
        "-i",
        &source,
        "-r",
        path_str(&security.report),
        "--buildkit",
        &address,
    ]);
    assert_eq!(
        outcome.code, 1,
        "an unreachable engine is a failure\n{outcome}"
    );
    assert!(
        outcome.stderr.contains("not reachable"),
        "the error must say the engine is not reachable\n{outcome}"
    );
    assert!(
        outcome.stderr.contains(&address),
        "the error must name the address\n{outcome}"
    );
    assert!(
        registry.manifest(REPOSITORY, "bookworm-patched").is_none(),
        "nothing may be pushed"
    );
}

#[test]
fn buildkit_apt_failure_reports_output() {
    let fixture = bookworm_fixture();
    let security = security_fixture();
    let dockerd = Dockerd::start();
    let work = tempfile::tempdir().unwrap();
    // The image without apt sources: layermend resolves against --apt-source on the host,
    // but apt-get in the build has only the installed versions, so it cannot find the
    // pinned ones.
    let layout = work.path().join("layout");
    copy_dir(&fixture.layout, &layout);
    add_layer(
        &layout,
        BookwormFixture::TAG,
        "nosources",
        "etc/apt/sources.list.d/.wh.debian.sources",
    );
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let sources = [
        format!(
            "deb [signed-by={keyring}] {} bookworm main",
            fixture.env["MIRROR"]
        ),
        format!(
            "deb [signed-by={keyring}] {} bookworm-security main",
            fixture.env["SECURITY_MIRROR"]
        ),
    ];
    let destination = work.path().join("out");
    let address = dockerd.address();
    let outcome = layermend(&[
        "patch",
        "-i",
        &format!("oci:{}:nosources", layout.display()),
        "-r",
        path_str(&security.report),
        "--apt-source",
        &sources[0],
        "--apt-source",
        &sources[1],
        "-t",
        &format!("oci:{}:patched", destination.display()),
        "--buildkit",
        &address,
    ]);
    assert_eq!(outcome.code, 1, "a failed build is a failure\n{outcome}");
    assert!(
        outcome.stderr.contains("package manager failed"),
        "the error must say the build step failed\n{outcome}"
    );
    assert!(
        outcome.stderr.contains(&address),
        "the error must name the engine\n{outcome}"
    );
    assert!(
        outcome.stderr.contains("E: Version '"),
        "the error must carry apt-get's own message\n{outcome}"
    );
    assert!(!destination.exists(), "nothing may be written\n{outcome}");
}

fn copy_dir(from: &Path, to: &Path) {
    for path in tree::walk(from, Path::new("")) {
        let (source, target) = (from.join(&path), to.join(&path));
        if source.is_dir() {
            fs_err::create_dir_all(&target).unwrap();
        } else {
            fs_err::create_dir_all(target.parent().unwrap()).unwrap();
            fs_err::copy(&source, &target).unwrap();
        }
    }
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let path = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    fs_err::write(path, bytes).unwrap();
    digest
}

fn read_blob(layout: &Path, digest: &str) -> Value {
    let path = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    serde_json::from_slice(&fs_err::read(path).unwrap()).unwrap()
}

/// Adds a layer holding one empty file at `path` to the image `from` in `layout` and
/// tags the result `to`.
fn add_layer(layout: &Path, from: &str, to: &str, path: &str) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(0);
    header.set_mode(0o644);
    tar.append_data(&mut header, path, std::io::empty())
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&tar).unwrap();
    let compressed = gzip.finish().unwrap();
    let layer_digest = write_blob(layout, &compressed);

    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&fs_err::read(&index_path).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == from)
        .unwrap()
        .clone();
    let mut manifest = read_blob(layout, entry["digest"].as_str().unwrap());
    let mut config = read_blob(layout, manifest["config"]["digest"].as_str().unwrap());
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(json!(sha256_digest(&tar)));
    config["history"]
        .as_array_mut()
        .unwrap()
        .push(json!({"created_by": format!("add {path}")}));
    let config_bytes = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = json!(write_blob(layout, &config_bytes));
    manifest["config"]["size"] = json!(config_bytes.len());
    manifest["layers"].as_array_mut().unwrap().push(json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": layer_digest,
        "size": compressed.len(),
    }));
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let mut tagged = entry;
    tagged["digest"] = json!(write_blob(layout, &manifest_bytes));
    tagged["size"] = json!(manifest_bytes.len());
    tagged["annotations"]["org.opencontainers.image.ref.name"] = json!(to);
    index["manifests"].as_array_mut().unwrap().push(tagged);
    fs_err::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Returns the `layermend-buildkit-*` images in the engine, one `REPOSITORY:TAG` a line.
fn temporary_images(dockerd: &Dockerd) -> Vec<String> {
    let output = dockerd.docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(output.status.success(), "docker images: {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with("layermend-buildkit-"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn buildkit_foreign_platform_rejected() {
    let layout = PathBuf::from(
        common::run_stdout(&mut std::process::Command::new(common::fixture_script(
            "arm64.sh",
        )))
        .trim(),
    )
    .join("layout");
    let security = security_fixture();
    let dockerd = Dockerd::start();
    let work = tempfile::tempdir().unwrap();
    let destination = work.path().join("out");
    let address = dockerd.address();
    let outcome = layermend(&[
        "patch",
        "-i",
        &format!("oci:{}:bookworm", layout.display()),
        "-r",
        path_str(&security.report),
        "-t",
        &format!("oci:{}:patched", destination.display()),
        "--buildkit",
        &address,
    ]);
    assert_eq!(
        outcome.code, 2,
        "a foreign platform is a user error\n{outcome}"
    );
    assert!(
        outcome.stderr.contains("cannot build for linux/arm64/v8"),
        "the error must name the image's platform\n{outcome}"
    );
    assert!(
        outcome.stderr.contains("runs linux/amd64 images"),
        "the error must name the engine's platform\n{outcome}"
    );
    assert!(
        outcome.stderr.contains("--platform linux/amd64"),
        "the hint must name --platform\n{outcome}"
    );
    assert!(
        outcome.stderr.contains("--backend inprocess"),
        "the hint must name the in-process backend\n{outcome}"
    );
    assert!(
        !outcome.stderr.contains("package manager failed"),
        "the error must not blame apt-get\n{outcome}"
    );
    assert!(temporary_images(&dockerd).is_empty());
    assert!(!destination.exists(), "nothing may be written\n{outcome}");
}

/// Runs `layermend patch --buildkit` on the bookworm fixture with `extra` arguments,
/// starting it without waiting.
fn spawn_buildkit_patch(
    registry: &Registry,
    dockerd: &Dockerd,
    extra: &[&str],
) -> std::process::Child {
    let binary =
        std::env::var_os("LAYERMEND_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_layermend").into());
    std::process::Command::new(binary)
        .args(["patch", "-i"])
        .arg(registry.image(&format!("{REPOSITORY}:{SOURCE_TAG}")))
        .arg("-r")
        .arg(&security_fixture().report)
        .arg("--buildkit")
        .arg(dockerd.address())
        .args(extra)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the layermend binary")
}

/// Waits until the build's base image is in the engine, which shows the build is running.
/// Returns the time that took, or `None` when `child` exits first.
fn wait_for_base(dockerd: &Dockerd, child: &mut std::process::Child) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(300) {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        let images = temporary_images(dockerd);
        if images
            .iter()
            .any(|image| image.starts_with("layermend-buildkit-base:"))
        {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn buildkit_cancelled_build_removes_images() {
    let registry = registry_with_fixture();
    let dockerd = Dockerd::start();

    // SIGINT while the build runs.
    let mut child = spawn_buildkit_patch(&registry, &dockerd, &[]);
    let Some(to_build) = wait_for_base(&dockerd, &mut child) else {
        panic!("the build never started: {:?}", child.wait_with_output());
    };
    // SAFETY: kill(2) with the PID of the child this test started.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "interrupted run\n{stderr}");
    assert_eq!(
        temporary_images(&dockerd),
        Vec::<String>::new(),
        "an interrupted build must remove its images\n{stderr}"
    );

    // --timeout expiring 2 s after the build started, as measured above: apt-get update
    // and install in the build take longer than that.
    let timeout = format!("{}ms", (to_build + Duration::from_secs(2)).as_millis());
    let mut child = spawn_buildkit_patch(&registry, &dockerd, &["--timeout", &timeout]);
    let base_seen = wait_for_base(&dockerd, &mut child).is_some();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "timed-out run\n{stderr}");
    assert!(
        stderr.contains("did not finish within"),
        "the error must say the run timed out\n{stderr}"
    );
    assert!(
        base_seen,
        "the timeout must expire during the build, after the base was loaded\n{stderr}"
    );
    assert_eq!(
        temporary_images(&dockerd),
        Vec::<String>::new(),
        "a timed-out build must remove its images\n{stderr}"
    );
}
