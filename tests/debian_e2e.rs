//! End-to-end tests of `layermend patch` on a real Debian bookworm image in a real
//! registry, with a report of real bookworm-security updates, checked against what
//! `apt-get install` of the same .debs does (the oracle).
//!
//! Needs root, the network access apt is configured for, and the tools `.ci/run` installs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use common::tree::{self, FileState};
use common::{
    BookwormFixture, ManifestFormat, Outcome, Registry, bookworm_fixture, chroot, layermend,
    oracle_rootfs, push_layout, security_fixture, umoci_unpack,
};

const REPOSITORY: &str = "debian";
const SOURCE_TAG: &str = "bookworm";
/// The tag layermend pushes to without `-t`: the source tag plus `-patched`.
const PATCHED_TAG: &str = "bookworm-patched";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Starts a registry and pushes the bookworm fixture to it as `debian:bookworm`.
fn registry_with_fixture(format: ManifestFormat) -> Registry {
    let fixture = bookworm_fixture();
    let registry = Registry::start();
    push_layout(
        &fixture.layout,
        BookwormFixture::TAG,
        &registry,
        &format!("{REPOSITORY}:{SOURCE_TAG}"),
        format,
    );
    registry
}

fn source_image(registry: &Registry) -> String {
    registry.image(&format!("{REPOSITORY}:{SOURCE_TAG}"))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Writes `report` as JSON into a new temporary directory and returns both.
fn write_report(name: &str, report: &Value) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    fs_err::write(&path, serde_json::to_vec_pretty(report).unwrap()).unwrap();
    (dir, path)
}

fn read_report() -> Value {
    let report = fs_err::read(&security_fixture().report).unwrap();
    serde_json::from_slice(&report).unwrap()
}

#[test]
fn patch_oci_image_matches_dpkg() {
    let security = security_fixture();
    let registry = registry_with_fixture(ManifestFormat::Oci);
    let source = source_image(&registry);
    let report = path_str(&security.report);

    let outcome = layermend(&["patch", "-i", &source, "-r", report]);
    assert_eq!(outcome.code, 0, "patch must succeed\n{outcome}");
    check_summary(&outcome);

    let original = registry.manifest(REPOSITORY, SOURCE_TAG).unwrap();
    let patched = registry
        .manifest(REPOSITORY, PATCHED_TAG)
        .unwrap_or_else(|| panic!("{REPOSITORY}:{PATCHED_TAG} was not pushed\n{outcome}"));
    assert!(
        outcome.stdout.contains(&patched.digest),
        "stdout must name the new manifest digest {}\n{outcome}",
        patched.digest
    );
    assert!(
        outcome
            .stdout
            .contains(&format!("{REPOSITORY}:{PATCHED_TAG}")),
        "stdout must name the new reference\n{outcome}"
    );
    assert_eq!(patched.media_type(), OCI_MANIFEST);
    check_image_amended(&registry, &original, &patched, OCI_CONFIG);
    check_manifest_annotations_kept(&original, &patched);
    check_new_layer_entries(&registry, &patched);

    // The same input gives the same bytes: a second run to another tag pushes the same
    // manifest digest.
    let again = layermend(&["patch", "-i", &source, "-r", report, "-t", "bookworm-again"]);
    assert_eq!(again.code, 0, "second patch must succeed\n{again}");
    let again_manifest = registry
        .manifest(REPOSITORY, "bookworm-again")
        .unwrap_or_else(|| panic!("{REPOSITORY}:bookworm-again was not pushed\n{again}"));
    assert_eq!(
        again_manifest.digest, patched.digest,
        "patching the same image with the same report twice must give the same manifest"
    );

    let bundle = tempfile::tempdir().unwrap();
    umoci_unpack(
        &registry,
        &format!("{REPOSITORY}:{PATCHED_TAG}"),
        bundle.path(),
    );
    let rootfs = bundle.path().join("rootfs");
    check_dpkg_accepts(&rootfs);
    compare_with_oracle(&rootfs);
}

/// Checks the printed summary: every package with its installed and new version, and
/// every CVE of the report.
fn check_summary(outcome: &Outcome) {
    let security = security_fixture();
    for update in &security.updates {
        let line = outcome
            .stdout
            .lines()
            .find(|line| names_package(line, &update.name))
            .unwrap_or_else(|| panic!("stdout must list package {}\n{outcome}", update.name));
        assert!(
            line.contains(&update.installed),
            "the line of {} must show the installed version {}: {line}",
            update.name,
            update.installed
        );
        assert!(
            line.contains(&update.fixed),
            "the line of {} must show the new version {}: {line}",
            update.name,
            update.fixed
        );
    }
    let report = read_report();
    let cves: BTreeSet<&str> = report["Results"][0]["Vulnerabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vulnerability| vulnerability["VulnerabilityID"].as_str().unwrap())
        .collect();
    for cve in cves {
        assert!(
            outcome.stdout.contains(cve),
            "stdout must list {cve}\n{outcome}"
        );
    }
}

/// Tells whether `line` contains `package` as a word, alone or with an architecture
/// qualifier (`zlib1g:amd64`), so that `libpam-modules` does not match
/// `libpam-modules-bin`.
fn names_package(line: &str, package: &str) -> bool {
    line.split_whitespace()
        .map(|word| word.trim_matches(|c: char| matches!(c, ',' | ';' | '"' | '(' | ')')))
        .any(|word| {
            word == package
                || word
                    .strip_prefix(package)
                    .is_some_and(|rest| rest.starts_with(':'))
        })
}

/// Checks that `patched` is `original` plus exactly one layer, and that the config keeps
/// every original field.
fn check_image_amended(
    registry: &Registry,
    original: &common::Manifest,
    patched: &common::Manifest,
    config_media_type: &str,
) {
    assert_eq!(
        patched.json["config"]["mediaType"], config_media_type,
        "config media type"
    );
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
    let new_layer = new_layers.last().unwrap();
    let old_layer_type = old_layers[0]["mediaType"].as_str().unwrap();
    let new_layer_type = new_layer["mediaType"].as_str().unwrap();
    let family = |media_type: &str| media_type.starts_with("application/vnd.oci.");
    assert_eq!(
        family(new_layer_type),
        family(old_layer_type),
        "the new layer's media type {new_layer_type} must be of the same family as {old_layer_type}"
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
    let blob = registry.blob(REPOSITORY, new_layer["digest"].as_str().unwrap());
    assert_eq!(
        new_layer["size"].as_u64(),
        Some(blob.len() as u64),
        "new layer size"
    );
    let tar = tree::decompress_layer(&blob, new_layer_type);
    assert_eq!(
        new_diff_ids.last().unwrap(),
        &Value::String(common::sha256_digest(&tar)),
        "the new diff_id must be the sha256 of the uncompressed layer"
    );

    let old_history = old_config["history"].as_array().unwrap();
    let new_history = new_config["history"].as_array().unwrap();
    assert_eq!(
        &new_history[..old_history.len()],
        old_history.as_slice(),
        "history entries of the original image must be kept"
    );
    let added: Vec<&Value> = new_history[old_history.len()..]
        .iter()
        .filter(|entry| !entry["empty_layer"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(added.len(), 1, "one history entry for the new layer");

    // Every original field must be kept: compare the configs without the fields a patch
    // changes (diff_ids, history) and without labels the patch added.
    let strip = |config: &Value, keep_labels: Option<&Value>| {
        let mut config = config.clone();
        config["rootfs"].as_object_mut().unwrap().remove("diff_ids");
        config.as_object_mut().unwrap().remove("history");
        if let (Some(labels), Some(keep)) = (
            config["config"]["Labels"].as_object_mut(),
            keep_labels.and_then(Value::as_object),
        ) {
            labels.retain(|key, _| keep.contains_key(key));
        }
        config
    };
    let old_labels = &old_config["config"]["Labels"];
    assert_eq!(
        strip(&new_config, Some(old_labels)),
        strip(&old_config, None),
        "the config must keep every original field"
    );
}

fn check_manifest_annotations_kept(original: &common::Manifest, patched: &common::Manifest) {
    let old = original.json["annotations"].as_object().unwrap();
    let new = patched.json["annotations"]
        .as_object()
        .unwrap_or_else(|| panic!("the patched manifest lost its annotations"));
    for (key, value) in old {
        assert_eq!(new.get(key), Some(value), "manifest annotation {key}");
    }
}

/// Checks the new layer's own entry names. In a merged-/usr image `lib`, `bin`, `sbin`
/// and `lib64` are symlinks into `usr`. An entry below one of them, or below any other
/// symlink of the base image, makes snapshotters that extract each layer into an empty
/// directory create a real directory, which hides the symlink and everything behind it.
fn check_new_layer_entries(registry: &Registry, patched: &common::Manifest) {
    let fixture = bookworm_fixture();
    let layer = patched.layers().last().unwrap();
    let blob = registry.blob(REPOSITORY, layer["digest"].as_str().unwrap());
    let tar = tree::decompress_layer(&blob, layer["mediaType"].as_str().unwrap());
    let entries = tree::layer_entries(&tar);
    assert!(!entries.is_empty(), "the new layer is empty");

    let mut problems = Vec::new();
    for entry in &entries {
        let components: Vec<&str> = entry.path.split('/').collect();
        if entry.path.starts_with('/') || components.contains(&"..") {
            problems.push(format!("{}: absolute or escaping path", entry.path));
            continue;
        }
        if ["lib", "bin", "sbin", "lib64"].contains(&components[0]) {
            problems.push(format!(
                "{}: top-level entry `{}` where the base image has a symlink into usr",
                entry.path, components[0]
            ));
        }
        // Any parent that is a symlink in the base image.
        for end in 1..components.len() {
            let parent = components[..end].join("/");
            let is_symlink = std::fs::symlink_metadata(fixture.rootfs.join(&parent))
                .map(|metadata| metadata.file_type().is_symlink())
                .unwrap_or(false);
            if is_symlink {
                problems.push(format!("{}: goes through the symlink {parent}", entry.path));
                break;
            }
        }
        if matches!(
            entry.kind,
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
        ) {
            problems.push(format!("{}: device or FIFO entry", entry.path));
        }
    }
    assert!(
        problems.is_empty(),
        "invalid entries in the new layer:\n{}",
        problems.join("\n")
    );
}

/// Runs dpkg's own checks inside the patched root filesystem.
fn check_dpkg_accepts(rootfs: &Path) {
    let security = security_fixture();
    let query = chroot(
        rootfs,
        &["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"],
    );
    assert!(query.status.success(), "dpkg-query -W failed: {query:?}");
    let installed: BTreeMap<String, String> = String::from_utf8_lossy(&query.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(name, version)| (name.to_owned(), version.to_owned()))
        .collect();
    for update in &security.updates {
        assert_eq!(
            installed.get(&update.name),
            Some(&update.fixed),
            "dpkg-query -W {} in the patched image",
            update.name
        );
    }

    let audit = chroot(rootfs, &["dpkg", "--audit"]);
    assert!(audit.status.success(), "dpkg --audit failed: {audit:?}");
    assert_eq!(
        String::from_utf8_lossy(&audit.stdout),
        "",
        "dpkg --audit must report nothing"
    );

    for update in &security.updates {
        let verify = chroot(rootfs, &["dpkg", "--verify", &update.name]);
        assert!(
            verify.status.success() && verify.stdout.is_empty(),
            "dpkg --verify {} must be clean: {}{}",
            update.name,
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    }

    let perl = chroot(rootfs, &["perl", "-e", "1"]);
    assert!(perl.status.success(), "perl -e 1 failed: {perl:?}");
}

/// Paths whose differences from the oracle are expected, with the reason. They come from
/// running maintainer scripts and apt, which layermend does not do, or are dpkg's own
/// transient files.
const ORACLE_EXCLUSIONS: &[(&str, &str)] = &[
    (
        "var/lib/dpkg/status-old",
        "backup dpkg writes before it rewrites status",
    ),
    (
        "var/lib/dpkg/available",
        "record of dselect and `dpkg --update-avail`, not read by dpkg-query or apt",
    ),
    ("var/lib/dpkg/diversions-old", "backup of diversions"),
    ("var/lib/dpkg/statoverride-old", "backup of statoverride"),
    (
        "var/lib/dpkg/lock",
        "lock file apt and dpkg create while running",
    ),
    (
        "var/lib/dpkg/lock-frontend",
        "lock file apt and dpkg create while running",
    ),
    (
        "var/lib/dpkg/triggers/",
        "trigger state: triggers are processed by running maintainer scripts",
    ),
    (
        "var/lib/dpkg/updates/",
        "dpkg's journal, emptied at the end of a complete run",
    ),
    (
        "var/lib/dpkg/alternatives/",
        "written by update-alternatives from maintainer scripts",
    ),
    ("etc/ld.so.cache", "written by the ldconfig trigger"),
    ("var/log/", "apt and dpkg logs"),
    ("var/cache/", "apt, debconf and ldconfig caches"),
    (
        "var/lib/apt/",
        "apt's own state (extended_states, lists), written by apt-get",
    ),
];

fn exclusion_reason(path: &str) -> Option<&'static str> {
    ORACLE_EXCLUSIONS
        .iter()
        .find(|(prefix, _)| {
            path == *prefix
                || (prefix.ends_with('/') && path.starts_with(prefix))
                || path == prefix.trim_end_matches('/')
        })
        .map(|(_, reason)| *reason)
}

/// Compares the patched root filesystem with the oracle for every path of the patched
/// packages and every path under `/var/lib/dpkg`. Each such path must be in the oracle's
/// state, which also catches a path that dpkg left alone but the patch changed.
fn compare_with_oracle(patched: &Path) {
    let fixture = bookworm_fixture();
    let security = security_fixture();
    let original = fixture.rootfs.as_path();
    let oracle = oracle_rootfs();

    let mut paths: BTreeSet<PathBuf> = BTreeSet::new();
    for update in &security.updates {
        for root in [original, oracle] {
            for listed in tree::dpkg_file_list(root, &update.name) {
                paths.insert(tree::resolve_in_root(original, &listed));
            }
        }
    }
    let dpkg_dir = Path::new("var/lib/dpkg");
    for root in [original, oracle, patched] {
        paths.extend(tree::walk(root, dpkg_dir));
    }

    let mut mismatches = Vec::new();
    let mut excluded = Vec::new();
    let mut changed_by_dpkg = 0;
    for path in &paths {
        let before = tree::file_state(original, path);
        let expected = tree::file_state(oracle, path);
        let actual = tree::file_state(patched, path);
        if before != expected {
            changed_by_dpkg += 1;
        }
        if actual == expected {
            continue;
        }
        let display = path.to_string_lossy();
        if let Some(reason) = exclusion_reason(&display) {
            excluded.push(format!(
                "{display}: oracle {expected}, patched {actual} (excluded: {reason})"
            ));
            continue;
        }
        let mut message =
            format!("{display}: original {before}, oracle {expected}, patched {actual}");
        if let (FileState::File { .. }, FileState::File { .. }) = (&expected, &actual) {
            // Text files (status, .list, .md5sums) get the differing lines.
            let want = std::fs::read_to_string(oracle.join(path));
            let got = std::fs::read_to_string(patched.join(path));
            if let (Ok(want), Ok(got)) = (want, got) {
                for change in tree::line_changes(&want, &got).iter().take(40) {
                    message.push_str(&format!("\n    {change}"));
                }
            }
        }
        mismatches.push(message);
    }

    println!(
        "compared {} paths with the oracle: {changed_by_dpkg} changed by dpkg, {} excluded \
         differences, {} mismatches",
        paths.len(),
        excluded.len(),
        mismatches.len()
    );
    for line in &excluded {
        println!("  {line}");
    }
    assert!(
        changed_by_dpkg > 0,
        "the oracle changed nothing: the comparison would be empty"
    );
    const SHOWN: usize = 60;
    let mut shown = mismatches
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    if mismatches.len() > SHOWN {
        shown.push_str(&format!("\n... and {} more", mismatches.len() - SHOWN));
    }
    assert!(
        mismatches.is_empty(),
        "the patched image differs from what apt-get install gives in {} paths \
         (`-` oracle, `+` patched):\n{shown}",
        mismatches.len(),
    );
}

#[test]
fn patch_docker_image_stays_docker() {
    let security = security_fixture();
    let registry = registry_with_fixture(ManifestFormat::DockerV2S2);
    let original = registry.manifest(REPOSITORY, SOURCE_TAG).unwrap();
    assert_eq!(
        original.media_type(),
        DOCKER_MANIFEST,
        "skopeo --format v2s2 must push a Docker manifest"
    );

    let outcome = layermend(&[
        "patch",
        "-i",
        &source_image(&registry),
        "-r",
        path_str(&security.report),
    ]);
    assert_eq!(outcome.code, 0, "patch must succeed\n{outcome}");

    let patched = registry
        .manifest(REPOSITORY, PATCHED_TAG)
        .unwrap_or_else(|| panic!("{REPOSITORY}:{PATCHED_TAG} was not pushed\n{outcome}"));
    assert_eq!(
        patched.media_type(),
        DOCKER_MANIFEST,
        "a Docker image must stay Docker-typed"
    );
    check_image_amended(&registry, &original, &patched, DOCKER_CONFIG);
    for layer in patched.layers() {
        assert_eq!(
            layer["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "Docker schema 2 layers are gzip tars"
        );
    }
}

#[test]
fn names_package_matches_whole_names() {
    assert!(names_package(
        "zlib1g:amd64 1:1.2.13 -> 1:1.2.13+deb12u1",
        "zlib1g"
    ));
    assert!(names_package("  libpam-modules, 1.5.2", "libpam-modules"));
    assert!(!names_package("libpam-modules-bin 1.5.2", "libpam-modules"));
    assert!(!names_package("perl-base-extra 5.36", "perl-base"));
}

#[test]
fn unknown_image_is_reported() {
    let security = security_fixture();
    let registry = Registry::start();
    let missing = registry.image("no-such/image:missing");
    let outcome = layermend(&["patch", "-i", &missing, "-r", path_str(&security.report)]);
    assert!(
        outcome.code == 1 || outcome.code == 2,
        "an unknown image must fail with exit code 1 or 2\n{outcome}"
    );
    assert!(
        outcome.stderr.contains("no-such/image"),
        "the error must name the image\n{outcome}"
    );
}

/// Runs a patch of the fixture with a report file of content `report` and expects exit
/// code 2 and an error that contains each of `expected` (checked case-insensitively).
fn expect_user_error(file_name: &str, report: &[u8], expected: &[&str]) {
    let registry = registry_with_fixture(ManifestFormat::Oci);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file_name);
    fs_err::write(&path, report).unwrap();
    let outcome = layermend(&[
        "patch",
        "-i",
        &source_image(&registry),
        "-r",
        path_str(&path),
    ]);
    assert_eq!(outcome.code, 2, "expected a user error\n{outcome}");
    let stderr = outcome.stderr.to_lowercase();
    for needle in expected {
        assert!(
            stderr.contains(&needle.to_lowercase()),
            "the error must mention {needle:?}\n{outcome}"
        );
    }
    assert!(
        registry.manifest(REPOSITORY, PATCHED_TAG).is_none(),
        "nothing may be pushed on a user error"
    );
}

#[test]
fn report_not_json_is_user_error() {
    expect_user_error("not-json.json", b"this is not JSON\n", &["not-json.json"]);
}

#[test]
fn report_not_trivy_is_user_error() {
    expect_user_error(
        "not-trivy.json",
        br#"{"SchemaVersion": 2, "packages": [{"name": "zlib1g"}]}"#,
        &["not-trivy.json"],
    );
}

#[test]
fn alpine_report_is_user_error() {
    let alpine =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reports/trivy-alpine-3.21.0.json");
    let report = fs_err::read(&alpine)
        .unwrap_or_else(|error| panic!("the Alpine report must be beside the checkout: {error}"));
    expect_user_error("trivy-alpine-3.21.0.json", &report, &["alpine"]);
}

#[test]
fn missing_fixed_version_pushes_nothing() {
    let security = security_fixture();
    // A package without an epoch, so that 99.0 is newer than every real version, and not
    // tzdata, whose newest version may come from bookworm-updates.
    let target = security
        .updates
        .iter()
        .find(|update| !update.fixed.contains(':') && update.name != "tzdata")
        .expect("an update without an epoch");
    let mut report = read_report();
    for vulnerability in report["Results"][0]["Vulnerabilities"]
        .as_array_mut()
        .unwrap()
    {
        if vulnerability["PkgName"] == target.name.as_str() {
            vulnerability["FixedVersion"] = Value::from("99.0");
        }
    }
    let (_dir, path) = write_report("missing-version.json", &report);

    let registry = registry_with_fixture(ManifestFormat::Oci);
    let outcome = layermend(&[
        "patch",
        "-i",
        &source_image(&registry),
        "-r",
        path_str(&path),
    ]);
    assert!(
        outcome.code == 1 || outcome.code == 2,
        "a fixed version missing from the repository must fail\n{outcome}"
    );
    for needle in [&target.name, "99.0", &target.fixed] {
        assert!(
            outcome.stderr.contains(needle),
            "the error must name the package, the requested and the newest available \
             version ({needle})\n{outcome}"
        );
    }
    assert!(
        registry.manifest(REPOSITORY, PATCHED_TAG).is_none(),
        "nothing may be pushed when a fixed version is missing"
    );
}

#[test]
fn empty_report_is_nothing_to_patch() {
    let mut report = read_report();
    report["Results"][0]["Vulnerabilities"] = Value::Array(Vec::new());
    let (_dir, path) = write_report("empty.json", &report);

    let registry = registry_with_fixture(ManifestFormat::Oci);
    let outcome = layermend(&[
        "patch",
        "-i",
        &source_image(&registry),
        "-r",
        path_str(&path),
    ]);
    assert_eq!(outcome.code, 3, "nothing to patch\n{outcome}");
    assert!(
        registry.manifest(REPOSITORY, PATCHED_TAG).is_none(),
        "nothing may be pushed when there is nothing to patch"
    );
}

/// Checks the harness itself: the registry with basic authentication rejects anonymous
/// requests and accepts its credentials.
#[test]
fn registry_with_auth_requires_credentials() {
    let registry = Registry::start_with_auth("tester", "secret-password");
    let anonymous = common::http::request("GET", registry.port(), "/v2/", &[], None).unwrap();
    assert_eq!(anonymous.status, 401, "anonymous GET /v2/");
    let authenticated = registry.request("GET", "/v2/", &[]);
    assert_eq!(authenticated.status, 200, "GET /v2/ with credentials");
}

/// Checks the harness itself: the real dpkg result passes every check the patched image
/// must pass, so a failure of the patch tests points at layermend.
#[test]
fn oracle_passes_dpkg_checks() {
    let oracle = oracle_rootfs();
    check_dpkg_accepts(oracle);
    compare_with_oracle(oracle);
}

/// Checks the harness itself: the comparison with the oracle notices an image that was
/// not patched at all.
#[test]
fn oracle_comparison_rejects_unpatched_rootfs() {
    let original = bookworm_fixture().rootfs.clone();
    let result = std::panic::catch_unwind(|| compare_with_oracle(&original));
    assert!(
        result.is_err(),
        "comparing the unpatched root filesystem with the oracle must fail"
    );
}

/// Checks the harness itself: a missing tool fails the test and names its package.
#[test]
fn missing_tool_fails_with_package_name() {
    let result = std::panic::catch_unwind(|| common::require_tool("layermend-no-such-tool"));
    let message = result
        .expect_err("a missing tool must fail the test")
        .downcast::<String>()
        .expect("a formatted panic message");
    assert!(
        message.contains("layermend-no-such-tool"),
        "the message must name the tool: {message}"
    );
}
