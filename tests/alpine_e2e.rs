//! End-to-end tests of `layermend patch` on a real Alpine 3.23 image in a real registry,
//! with a signed test repository of rebuilt packages. The oracle is real apk-tools 3.0.8:
//! `apk upgrade --no-network --no-scripts` of the same packages from the same repository
//! in a chroot copy of the same root filesystem.
//!
//! Needs root (chroot, and the fixture keeps root ownership) and the tools `.ci/run`
//! installs; the fixture comes from `tests/fixtures/alpine.sh`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{Value, json};
use tempfile::TempDir;

use common::tree::{self, FileState};
use common::{
    ManifestFormat, Outcome, Registry, chroot, layermend, push_layout, run, umoci_unpack,
};

const REPOSITORY: &str = "alpine";
const SOURCE_TAG: &str = "3.23";
/// The tag layermend pushes to without `-t`: the source tag plus `-patched`.
const PATCHED_TAG: &str = "3.23-patched";
/// Tags of the fixture's OCI layout.
const LAYOUT_TAG: &str = "alpine";
const DISTROLESS_LAYOUT_TAG: &str = "alpine-distroless";

/// The Alpine fixture built by `tests/fixtures/alpine.sh`.
#[derive(Debug)]
struct AlpineFixture {
    /// The root filesystem the `alpine` tag was packed from. Never modify it.
    rootfs: PathBuf,
    layout: PathBuf,
    /// The key pair that signs the repository: `KEY_NAME` and `KEY_NAME.pub`.
    keys: PathBuf,
    /// The repository directory: `ARCH/APKINDEX.tar.gz` and the .apk files.
    repo: PathBuf,
    /// The repository URL the image's `/etc/apk/repositories` names.
    repo_url: String,
    key_name: String,
    arch: String,
    /// Names of the rebuilt packages.
    packages: Vec<String>,
    /// The rebuilt package that carries a `.post-upgrade` script and a trigger.
    scripted: String,
}

impl AlpineFixture {
    fn index_path(&self) -> PathBuf {
        self.repo.join(&self.arch).join("APKINDEX.tar.gz")
    }
}

/// Builds (or reuses the cached) Alpine fixture once per test process.
fn alpine_fixture() -> &'static AlpineFixture {
    static FIXTURE: OnceLock<AlpineFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let started = Instant::now();
        let output = run(Command::new("bash").arg(common::fixture_script("alpine.sh")));
        let dir = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
        eprintln!(
            "alpine fixture {} ready in {:.1} s",
            dir.display(),
            started.elapsed().as_secs_f64()
        );
        let env: BTreeMap<String, String> = fs_err::read_to_string(dir.join("image.env"))
            .unwrap()
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.trim_matches('"').to_owned()))
            .collect();
        AlpineFixture {
            rootfs: dir.join("rootfs"),
            layout: dir.join("layout"),
            repo: dir.join("repo"),
            keys: dir.join("keys"),
            repo_url: env["REPO_URL"].clone(),
            key_name: env["KEY_NAME"].clone(),
            arch: env["ARCH"].clone(),
            packages: env["PACKAGES"]
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            scripted: env["SCRIPTED"].clone(),
        }
    })
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Package name to version of an apk installed database or APKINDEX text.
fn stanza_versions(text: &str) -> BTreeMap<String, String> {
    let mut versions = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let field = |key: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .map(str::to_owned)
        };
        if let (Some(name), Some(version)) = (field("P:"), field("V:")) {
            versions.insert(name, version);
        }
    }
    versions
}

fn installed_versions(root: &Path) -> BTreeMap<String, String> {
    stanza_versions(&fs_err::read_to_string(root.join("lib/apk/db/installed")).unwrap())
}

/// Splits a concatenation of gzip streams (an .apk or APKINDEX.tar.gz) into its members,
/// as raw compressed bytes.
fn gzip_members(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut members = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let before = rest.len();
        let mut decoder = flate2::bufread::GzDecoder::new(&mut rest);
        std::io::copy(&mut decoder, &mut std::io::sink()).expect("valid gzip member");
        drop(decoder);
        members.push(bytes[bytes.len() - before..bytes.len() - rest.len()].to_vec());
    }
    members
}

fn gunzip(member: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(member)
        .read_to_end(&mut out)
        .expect("valid gzip member");
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Reads the content of `name` from a tar stream (members of an .apk concatenate into
/// one tar stream).
fn tar_file(tar_bytes: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == name {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            return Some(data);
        }
    }
    None
}

/// Versions in the fixture repository's index.
fn repository_versions() -> BTreeMap<String, String> {
    let fixture = alpine_fixture();
    let mut tar_bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(fs_err::File::open(fixture.index_path()).unwrap())
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let index = tar_file(&tar_bytes, "APKINDEX").expect("APKINDEX in the index");
    stanza_versions(&String::from_utf8(index).unwrap())
}

/// Writes a Trivy report for the fixture image that requests `fixed` (package name and
/// fixed version) and returns its directory and path.
fn write_report(fixed: &[(String, String)]) -> (TempDir, PathBuf) {
    let fixture = alpine_fixture();
    let os_release = fs_err::read_to_string(fixture.rootfs.join("etc/os-release")).unwrap();
    let version_id = os_release
        .lines()
        .find_map(|line| line.strip_prefix("VERSION_ID="))
        .expect("VERSION_ID in os-release")
        .trim_matches('"')
        .to_owned();
    let installed = installed_versions(&fixture.rootfs);
    let vulnerabilities: Vec<Value> = fixed
        .iter()
        .enumerate()
        .map(|(number, (name, version))| {
            json!({
                "VulnerabilityID": format!("CVE-2099-{}", 1000 + number),
                "PkgName": name,
                "InstalledVersion": installed[name],
                "FixedVersion": version,
                "Status": "fixed",
                "Severity": "HIGH",
            })
        })
        .collect();
    let report = json!({
        "SchemaVersion": 2,
        "ArtifactName": format!("{REPOSITORY}:{SOURCE_TAG}"),
        "ArtifactType": "container_image",
        "Metadata": {"OS": {"Family": "alpine", "Name": version_id}},
        "Results": [{
            "Target": format!("{REPOSITORY}:{SOURCE_TAG} (alpine {version_id})"),
            "Class": "os-pkgs",
            "Type": "alpine",
            "Vulnerabilities": vulnerabilities,
        }],
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    fs_err::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    (dir, path)
}

/// Writes the report that requests every rebuilt package at its repository version.
fn fixed_report() -> (TempDir, PathBuf) {
    let versions = repository_versions();
    let fixed: Vec<(String, String)> = alpine_fixture()
        .packages
        .iter()
        .map(|name| (name.clone(), versions[name].clone()))
        .collect();
    write_report(&fixed)
}

/// Starts a registry and pushes the fixture's `layout_tag` as `alpine:3.23`.
fn registry_with(layout_tag: &str) -> Registry {
    let registry = Registry::start();
    push_layout(
        &alpine_fixture().layout,
        layout_tag,
        &registry,
        &format!("{REPOSITORY}:{SOURCE_TAG}"),
        ManifestFormat::Oci,
    );
    registry
}

/// Runs `layermend patch` of `alpine:3.23` with `report`, the image's repository
/// mapped to the local directory `repo`, and `extra` arguments.
fn patch(registry: &Registry, report: &Path, repo: &Path, extra: &[&str]) -> Outcome {
    let source = registry.image(&format!("{REPOSITORY}:{SOURCE_TAG}"));
    let mirror = format!(
        "{}=file://{}",
        alpine_fixture().repo_url.trim_end_matches('/'),
        path_str(repo)
    );
    let mut args = vec![
        "patch",
        "-i",
        &source,
        "-r",
        path_str(report),
        "--repo-mirror",
        &mirror,
    ];
    args.extend_from_slice(extra);
    layermend(&args)
}

/// Copies `root` to a new directory with `cp -a`, keeping owners and modes.
fn copy_root(root: &Path, prefix: &str) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(root)
        .arg(dir.path().join("rootfs")));
    dir
}

/// Runs real apk-tools `apk upgrade --no-network --no-scripts` of the fixture's packages
/// from `repo` in a copy of the fixture's root filesystem and returns the copy. The
/// repository is visible to apk only during the upgrade, and `/etc/apk/repositories` is
/// restored afterwards, so the copy differs from the original only by apk's work.
fn apk_oracle(repo: &Path) -> TempDir {
    let fixture = alpine_fixture();
    let started = Instant::now();
    let dir = copy_root(&fixture.rootfs, "layermend-apk-oracle-");
    let root = dir.path().join("rootfs");
    let inside = root.join("tmp/layermend-repo");
    run(Command::new("cp").arg("-a").arg(repo).arg(&inside));
    let repositories = root.join("etc/apk/repositories");
    let saved = fs_err::read(&repositories).unwrap();
    fs_err::write(&repositories, "/tmp/layermend-repo\n").unwrap();

    // apk-tools 3.0.8 skips, without an error, a package whose pinned dependency
    // (libssl3 depends on libcrypto3=VERSION) is not named too, so every package is named.
    let mut args = vec!["/sbin/apk", "upgrade", "--no-network", "--no-scripts"];
    args.extend(fixture.packages.iter().map(String::as_str));
    let upgrade = chroot(&root, &args);
    assert!(
        upgrade.status.success(),
        "apk upgrade in the oracle failed: {}{}",
        String::from_utf8_lossy(&upgrade.stdout),
        String::from_utf8_lossy(&upgrade.stderr)
    );

    fs_err::write(&repositories, saved).unwrap();
    fs_err::remove_dir_all(&inside).unwrap();
    let versions = installed_versions(&root);
    let expected = repository_versions();
    for name in &fixture.packages {
        assert_eq!(
            versions.get(name),
            expected.get(name),
            "apk upgrade in the oracle must install {name} from the repository"
        );
    }
    eprintln!(
        "apk oracle ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    dir
}

/// The oracle of the fixture repository, made once per test process.
fn fixture_oracle() -> &'static Path {
    static ORACLE: OnceLock<TempDir> = OnceLock::new();
    ORACLE
        .get_or_init(|| apk_oracle(&alpine_fixture().repo))
        .path()
}

/// Paths that apk-tools changes which a patch must not reproduce, with the reason.
const ORACLE_EXCLUSIONS: &[(&str, &str)] = &[(
    "var/log/apk.log",
    "apk-tools' own log of the commands it ran",
)];

/// Paths that `apk upgrade` changed: every path whose state differs between `original`
/// and `oracle`, outside the kernel's and the runtime's mount points.
fn changed_paths(original: &Path, oracle: &Path) -> BTreeSet<PathBuf> {
    let mut paths = BTreeSet::new();
    for root in [original, oracle] {
        paths.extend(tree::walk(root, Path::new("")).into_iter().filter(|path| {
            !["dev", "proc", "sys"]
                .iter()
                .any(|top| path.starts_with(top))
        }));
    }
    paths
        .into_iter()
        .filter(|path| tree::file_state(original, path) != tree::file_state(oracle, path))
        .filter(|path| {
            !ORACLE_EXCLUSIONS
                .iter()
                .any(|(excluded, _)| path == Path::new(excluded))
        })
        .collect()
}

/// Lists the paths the last layer of `manifest` writes or removes (whiteouts).
fn new_layer_paths(registry: &Registry, manifest: &common::Manifest) -> BTreeSet<PathBuf> {
    let layer = manifest.layers().last().unwrap();
    let blob = registry.blob(REPOSITORY, layer["digest"].as_str().unwrap());
    let tar_bytes = tree::decompress_layer(&blob, layer["mediaType"].as_str().unwrap());
    tree::layer_entries(&tar_bytes)
        .into_iter()
        .map(|entry| {
            let path = PathBuf::from(&entry.path);
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            match name.strip_prefix(".wh.") {
                Some(".wh..opq") => path.parent().unwrap().to_path_buf(),
                Some(hidden) => path.with_file_name(hidden),
                None => path,
            }
        })
        .collect()
}

/// Reads the entries of a `scripts.tar` or `scripts.tar.gz` (mode and content, by name).
/// Archives that apk and layermend compressed or timestamped differently then compare by
/// what apk reads from them.
fn scripts_entries(path: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let bytes = fs_err::read(path).unwrap();
    let tar_bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes.as_slice())
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        bytes
    };
    let mut entries = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mode = entry.header().mode().unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        entries.insert(name, (mode, data));
    }
    entries
}

/// Compares `patched` with `oracle` on every path the oracle changed and every path the
/// new layer writes. Returns the paths apk changed.
fn compare_with_oracle(
    original: &Path,
    oracle: &Path,
    patched: &Path,
    layer_paths: &BTreeSet<PathBuf>,
) -> BTreeSet<PathBuf> {
    let changed = changed_paths(original, oracle);
    assert!(
        !changed.is_empty(),
        "the oracle changed nothing: the comparison would be empty"
    );
    let paths: BTreeSet<&PathBuf> = changed.iter().chain(layer_paths).collect();
    let mut mismatches = Vec::new();
    for path in &paths {
        let expected = tree::file_state(oracle, path);
        let actual = tree::file_state(patched, path);
        if expected == actual {
            continue;
        }
        let display = path.to_string_lossy();
        // apk rewrites scripts.tar.gz with its own gzip and tar headers; what it reads
        // back is the entry names and contents.
        if display.starts_with("lib/apk/db/scripts.tar")
            && let (
                FileState::File {
                    mode: m1,
                    uid: u1,
                    gid: g1,
                    ..
                },
                FileState::File {
                    mode: m2,
                    uid: u2,
                    gid: g2,
                    ..
                },
            ) = (&expected, &actual)
            && (m1, u1, g1) == (m2, u2, g2)
            && scripts_entries(&oracle.join(path)) == scripts_entries(&patched.join(path))
        {
            continue;
        }
        let mut message = format!(
            "{display}: original {}, oracle {expected}, patched {actual}",
            tree::file_state(original, path)
        );
        if let (FileState::File { .. }, FileState::File { .. }) = (&expected, &actual)
            && let (Ok(want), Ok(got)) = (
                std::fs::read_to_string(oracle.join(path)),
                std::fs::read_to_string(patched.join(path)),
            )
        {
            for change in tree::line_changes(&want, &got).iter().take(40) {
                message.push_str(&format!("\n    {change}"));
            }
        }
        mismatches.push(message);
    }
    println!(
        "compared {} paths with the oracle: {} changed by apk, {} mismatches",
        paths.len(),
        changed.len(),
        mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "the patched image differs from what apk upgrade gives in {} paths \
         (`-` oracle, `+` patched):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    changed
}

/// Output of a real apk-tools command run with `chroot root`, which must succeed.
fn apk_stdout(root: &Path, args: &[&str]) -> String {
    let mut full = vec!["/sbin/apk"];
    full.extend_from_slice(args);
    let output = chroot(root, &full);
    assert!(
        output.status.success(),
        "apk {} in {} failed: {}{}",
        args.join(" "),
        root.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Checks the patched root filesystem with real apk-tools: `apk info -v` lists the same
/// package versions as the oracle, `apk audit` reports the same as for the oracle, and
/// `apk verify` accepts the installed packages' files against the image's keys.
fn check_apk_accepts(root: &Path, oracle: &Path) {
    let sorted = |text: String| {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    assert_eq!(
        sorted(apk_stdout(root, &["info", "-v"])),
        sorted(apk_stdout(oracle, &["info", "-v"])),
        "apk info -v in the patched image and in the oracle"
    );
    let audit = ["audit", "--system", "--check-permissions", "--details"];
    assert_eq!(
        sorted(apk_stdout(root, &audit)),
        sorted(apk_stdout(oracle, &audit)),
        "apk audit --system in the patched image and in the oracle"
    );

    // apk-tools 3.0.8's `apk verify` checks package files, not the database, so it checks
    // the installed packages' .apk files with the patched image's own keys.
    let fixture = alpine_fixture();
    let verify_dir = root.join("tmp/layermend-verify");
    run(Command::new("cp")
        .arg("-a")
        .arg(fixture.repo.join(&fixture.arch))
        .arg(&verify_dir));
    let versions = repository_versions();
    for name in &fixture.packages {
        let file = format!("/tmp/layermend-verify/{name}-{}.apk", versions[name]);
        let output = apk_stdout(root, &["verify", &file]);
        assert!(
            output.contains(&format!("{file}: OK")),
            "apk verify {file} must accept the package: {output}"
        );
    }
    fs_err::remove_dir_all(&verify_dir).unwrap();
}

/// Checks that `patched` is `original` plus exactly one layer, with the earlier layers
/// and diff_ids unchanged.
fn check_one_layer_added(
    registry: &Registry,
    original: &common::Manifest,
    patched: &common::Manifest,
) {
    let (old_layers, new_layers) = (original.layers(), patched.layers());
    assert_eq!(
        new_layers.len(),
        old_layers.len() + 1,
        "exactly one layer must be added"
    );
    assert_eq!(
        &new_layers[..old_layers.len()],
        old_layers,
        "the original layer descriptors must be kept unchanged"
    );
    let old_config = registry.config(REPOSITORY, original);
    let new_config = registry.config(REPOSITORY, patched);
    let old_diff_ids = old_config["rootfs"]["diff_ids"].as_array().unwrap();
    let new_diff_ids = new_config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(
        new_diff_ids.len(),
        old_diff_ids.len() + 1,
        "one diff_id added"
    );
    assert_eq!(&new_diff_ids[..old_diff_ids.len()], old_diff_ids.as_slice());
    let new_layer = new_layers.last().unwrap();
    let blob = registry.blob(REPOSITORY, new_layer["digest"].as_str().unwrap());
    let tar_bytes = tree::decompress_layer(&blob, new_layer["mediaType"].as_str().unwrap());
    assert_eq!(
        new_diff_ids.last().unwrap(),
        &Value::String(common::sha256_digest(&tar_bytes)),
        "the new diff_id must be the sha256 of the uncompressed layer"
    );
}

/// Patches the fixture's `layout_tag`, checks the image and returns the unpacked bundle,
/// the new layer's paths and the first run's outcome.
fn patch_and_unpack(layout_tag: &str) -> (TempDir, BTreeSet<PathBuf>, Outcome) {
    let fixture = alpine_fixture();
    let registry = registry_with(layout_tag);
    let (_report_dir, report) = fixed_report();

    let started = Instant::now();
    let outcome = patch(&registry, &report, &fixture.repo, &[]);
    eprintln!(
        "layermend patch of {layout_tag} took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(outcome.code, 0, "patch must succeed\n{outcome}");
    let versions = repository_versions();
    let installed = installed_versions(&fixture.rootfs);
    for name in &fixture.packages {
        let line = outcome
            .stdout
            .lines()
            .find(|line| line.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("stdout must list package {name}\n{outcome}"));
        assert!(
            line.contains(&installed[name]) && line.contains(&versions[name]),
            "the line of {name} must show {} and {}: {line}",
            installed[name],
            versions[name]
        );
    }

    let original = registry.manifest(REPOSITORY, SOURCE_TAG).unwrap();
    let patched = registry
        .manifest(REPOSITORY, PATCHED_TAG)
        .unwrap_or_else(|| panic!("{REPOSITORY}:{PATCHED_TAG} was not pushed\n{outcome}"));
    assert!(
        outcome.stdout.contains(&patched.digest),
        "stdout must name the new manifest digest {}\n{outcome}",
        patched.digest
    );
    check_one_layer_added(&registry, &original, &patched);

    let again = patch(&registry, &report, &fixture.repo, &["-t", "3.23-again"]);
    assert_eq!(again.code, 0, "second patch must succeed\n{again}");
    let again_manifest = registry
        .manifest(REPOSITORY, "3.23-again")
        .unwrap_or_else(|| panic!("{REPOSITORY}:3.23-again was not pushed\n{again}"));
    assert_eq!(
        again_manifest.digest, patched.digest,
        "patching the same image with the same report twice must give the same manifest"
    );

    let layer_paths = new_layer_paths(&registry, &patched);
    let bundle = tempfile::Builder::new()
        .prefix("layermend-alpine-bundle-")
        .tempdir_in("/var/tmp")
        .unwrap();
    umoci_unpack(
        &registry,
        &format!("{REPOSITORY}:{PATCHED_TAG}"),
        bundle.path(),
    );
    (bundle, layer_paths, outcome)
}

#[test]
fn patch_alpine_matches_apk() {
    let fixture = alpine_fixture();
    let (bundle, layer_paths, outcome) = patch_and_unpack(LAYOUT_TAG);
    let rootfs = bundle.path().join("rootfs");
    let oracle = fixture_oracle().join("rootfs");
    let changed = compare_with_oracle(&fixture.rootfs, &oracle, &rootfs, &layer_paths);
    // The rebuilt packages add usr/share/layermend/NAME.txt, libcrypto3 drops capi.so,
    // and the scripted package adds two scripts and a trigger line.
    for path in [
        "lib/apk/db/installed",
        "lib/apk/db/scripts.tar.gz",
        "lib/apk/db/triggers",
        "usr/share/layermend/zlib.txt",
        "usr/lib/engines-3/capi.so",
    ] {
        assert!(
            changed.contains(Path::new(path)),
            "the oracle must change {path}, or the comparison misses the fixture's changes"
        );
    }
    check_apk_accepts(&rootfs, &oracle);
    check_scripts_listed(&outcome);
}

/// Checks that the output lists the scripted package's scripts and trigger as not run.
fn check_scripts_listed(outcome: &Outcome) {
    let scripted = &alpine_fixture().scripted;
    let line = outcome
        .stdout
        .lines()
        .find(|line| line.contains("not run") && line.contains(scripted.as_str()))
        .unwrap_or_else(|| panic!("stdout must list the scripts of {scripted} not run\n{outcome}"));
    for needle in ["post-upgrade", "/usr/share/layermend"] {
        assert!(
            line.contains(needle),
            "the line of {scripted} must name {needle}: {line}"
        );
    }
}

/// Files of the apk-tools and libapk packages, which the distroless variant lacks.
const APK_TOOLS_FILES: &[&str] = &["sbin/apk", "usr/lib/libapk.so.3.0.0"];

#[test]
fn patch_distroless_matches_apk() {
    let fixture = alpine_fixture();
    let (bundle, layer_paths, outcome) = patch_and_unpack(DISTROLESS_LAYOUT_TAG);
    check_scripts_listed(&outcome);
    let rootfs = bundle.path().join("rootfs");
    for path in APK_TOOLS_FILES {
        assert_eq!(
            tree::file_state(&rootfs, Path::new(path)),
            FileState::Missing,
            "the patched distroless image must not gain {path}"
        );
    }
    let oracle = fixture_oracle().join("rootfs");
    compare_with_oracle(&fixture.rootfs, &oracle, &rootfs, &layer_paths);

    // The image cannot run apk, so the oracle's apk-tools files are copied in to check
    // the database. With them, the tree must pass the same checks as the full image.
    for path in APK_TOOLS_FILES {
        run(Command::new("cp")
            .arg("-a")
            .arg(oracle.join(path))
            .arg(rootfs.join(path)));
    }
    check_apk_accepts(&rootfs, &oracle);
}

/// Checks the harness itself: the unpatched root filesystem differs from the oracle.
#[test]
fn oracle_comparison_rejects_unpatched_rootfs() {
    let fixture = alpine_fixture();
    let oracle = fixture_oracle().join("rootfs");
    let result = std::panic::catch_unwind(|| {
        compare_with_oracle(&fixture.rootfs, &oracle, &fixture.rootfs, &BTreeSet::new())
    });
    assert!(
        result.is_err(),
        "comparing the unpatched root filesystem with the oracle must fail"
    );
}

/// A copy of the fixture repository in a new temporary directory, to make a bad variant
/// of; the repository is at `DIR/repo`.
fn repository_copy() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(&alpine_fixture().repo)
        .arg(dir.path().join("repo")));
    dir
}

/// Gunzips `member`, lets `edit` change the content of the tar entry `name` in place
/// (same length, so the tar headers stay valid) and gzips the result again.
fn edit_tar_member(member: &[u8], name: &str, edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut tar_bytes = gunzip(member);
    let (start, size) = {
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        archive
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|entry| entry.path().unwrap().to_string_lossy() == name)
            .map(|entry| (entry.raw_file_position() as usize, entry.size() as usize))
            .unwrap_or_else(|| panic!("no tar entry {name}"))
    };
    edit(&mut tar_bytes[start..start + size]);
    gzip(&tar_bytes)
}

/// Flips the case of the first letter after `field` in `data`, a one-byte change.
fn flip_after(data: &mut [u8], field: &[u8]) {
    let position = data
        .windows(field.len())
        .position(|window| window == field)
        .unwrap_or_else(|| panic!("no {:?} to change", String::from_utf8_lossy(field)));
    data[position + field.len()] ^= 0x20;
}

/// Builds a gzip member containing one tar entry `.SIGN.RSA.KEY_NAME.pub` with `signature` and no
/// end-of-archive blocks, as abuild-sign writes the signature of an index or package.
fn signature_member(key_name: &str, signature: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header
        .set_path(format!(".SIGN.RSA.{key_name}.pub"))
        .unwrap();
    header.set_size(signature.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_780_000_000);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, signature).unwrap();
    let mut tar_bytes = builder.into_inner().unwrap();
    tar_bytes.truncate(tar_bytes.len() - 1024);
    gzip(&tar_bytes)
}

/// Signs `data` with SHA-1 PKCS#1 v1.5 with the RSA private key `key` (openssl), as
/// abuild-sign does.
fn openssl_sign(key: &Path, data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data");
    let output = dir.path().join("signature");
    fs_err::write(&input, data).unwrap();
    run(Command::new("openssl")
        .args(["dgst", "-sha1", "-sign"])
        .arg(key)
        .arg("-out")
        .arg(&output)
        .arg(&input));
    fs_err::read(&output).unwrap()
}

/// Runs a patch of the fixture with `repo` and `report` and expects a failure (exit
/// code 1 or 2) whose error contains each of `expected`, with nothing pushed.
fn expect_failure(repo: &Path, report: &Path, expected: &[&str]) {
    let registry = registry_with(LAYOUT_TAG);
    let outcome = patch(&registry, report, repo, &[]);
    assert!(
        outcome.code == 1 || outcome.code == 2,
        "expected exit code 1 or 2\n{outcome}"
    );
    for needle in expected {
        assert!(
            outcome.stderr.contains(needle),
            "the error must mention {needle:?}\n{outcome}"
        );
    }
    assert!(
        registry.manifest(REPOSITORY, PATCHED_TAG).is_none(),
        "nothing may be pushed on a failure\n{outcome}"
    );
}

#[test]
fn tampered_index_is_rejected() {
    let fixture = alpine_fixture();
    let dir = repository_copy();
    let repo = dir.path().join("repo");
    let index = repo.join(&fixture.arch).join("APKINDEX.tar.gz");
    let mut members = gzip_members(&fs_err::read(&index).unwrap());
    assert_eq!(
        members.len(),
        2,
        "the index is a signature and one content member"
    );
    members[1] = edit_tar_member(&members[1], "APKINDEX", |data| flip_after(data, b"\nT:"));
    fs_err::write(&index, members.concat()).unwrap();

    let (_report_dir, report) = fixed_report();
    expect_failure(
        &repo,
        &report,
        &["APKINDEX.tar.gz", &fixture.key_name, "does not match"],
    );
}

/// Re-signs the copied repository's index with a new key the image lacks and returns
/// the key's name.
fn sign_with_unknown_key(repo: &Path) -> String {
    let fixture = alpine_fixture();
    let key_name = "layermend-unknown.rsa".to_owned();
    let key = repo.join(&key_name);
    run(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048"));
    let index = repo.join(&fixture.arch).join("APKINDEX.tar.gz");
    let mut members = gzip_members(&fs_err::read(&index).unwrap());
    members[0] = signature_member(&key_name, &openssl_sign(&key, &members[1]));
    fs_err::write(&index, members.concat()).unwrap();
    key_name
}

#[test]
fn unknown_index_key_is_rejected() {
    let dir = repository_copy();
    let repo = dir.path().join("repo");
    let key_name = sign_with_unknown_key(&repo);
    let (_report_dir, report) = fixed_report();
    expect_failure(
        &repo,
        &report,
        &[&key_name, "/etc/apk/keys", "--allow-untrusted-repo"],
    );
}

#[test]
fn unknown_index_key_allowed_when_untrusted() {
    let dir = repository_copy();
    let repo = dir.path().join("repo");
    let key_name = sign_with_unknown_key(&repo);
    let (_report_dir, report) = fixed_report();
    let registry = registry_with(LAYOUT_TAG);
    let outcome = patch(&registry, &report, &repo, &["--allow-untrusted-repo"]);
    assert_eq!(
        outcome.code, 0,
        "--allow-untrusted-repo must accept the index\n{outcome}"
    );
    let output = format!("{}{}", outcome.stdout, outcome.stderr);
    assert!(
        output.contains("untrusted") && output.contains(&key_name),
        "the output must warn about the untrusted index and name its key\n{outcome}"
    );
    assert!(
        registry.manifest(REPOSITORY, PATCHED_TAG).is_some(),
        "the patched image must be pushed\n{outcome}"
    );
}

#[test]
fn package_checksum_mismatch_is_rejected() {
    let fixture = alpine_fixture();
    let dir = repository_copy();
    let repo = dir.path().join("repo");
    let version = &repository_versions()["zlib"];
    let file_name = format!("zlib-{version}.apk");
    let package = repo.join(&fixture.arch).join(&file_name);
    let mut members = gzip_members(&fs_err::read(&package).unwrap());
    assert_eq!(
        members.len(),
        3,
        "{file_name}: signature, control and data members"
    );
    members[1] = edit_tar_member(&members[1], ".PKGINFO", |data| {
        flip_after(data, b"pkgdesc = ")
    });
    fs_err::write(&package, members.concat()).unwrap();

    let (_report_dir, report) = fixed_report();
    expect_failure(&repo, &report, &["zlib", version, "checksum"]);
}

#[test]
fn missing_fixed_version_is_rejected() {
    let available = &repository_versions()["zlib"];
    let (_report_dir, report) = write_report(&[("zlib".to_owned(), "1.3.2-r9".to_owned())]);
    expect_failure(
        &alpine_fixture().repo,
        &report,
        &["zlib", "1.3.2-r9", available],
    );
}

#[test]
fn bad_package_signature_is_rejected() {
    let fixture = alpine_fixture();
    let dir = repository_copy();
    let repo = dir.path().join("repo");
    let version = &repository_versions()["zlib"];
    let package = repo.join(&fixture.arch).join(format!("zlib-{version}.apk"));
    let mut members = gzip_members(&fs_err::read(&package).unwrap());
    // A signature by the image's own key, but over the data member instead of the
    // control member: the key is known, the signature does not match.
    let key = fixture.keys.join(&fixture.key_name);
    members[0] = signature_member(&fixture.key_name, &openssl_sign(&key, &members[2]));
    fs_err::write(&package, members.concat()).unwrap();

    let (_report_dir, report) = fixed_report();
    expect_failure(
        &repo,
        &report,
        &[
            "zlib",
            version,
            "signature",
            &fixture.key_name,
            "--allow-untrusted-repo",
        ],
    );
}
