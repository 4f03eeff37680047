//! End-to-end tests of sources and destinations in every transport: a registry, an OCI
//! image layout and a docker archive, each pair patched from the bookworm fixture and
//! checked with `skopeo inspect`, `umoci unpack` and the registry-to-registry file tree.
//!
//! Needs root, the network access apt is configured for, and the tools `.ci/run` installs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::tree::{self, FileState};
use common::{
    BookwormFixture, ManifestFormat, Registry, bookworm_fixture, layermend, push_layout, run,
    run_stdout, security_fixture,
};

const REPOSITORY: &str = "debian";
const SOURCE_TAG: &str = "bookworm";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Registry,
    Layout,
    Archive,
}

const KINDS: [Kind; 3] = [Kind::Registry, Kind::Layout, Kind::Archive];

/// The fixture in each transport.
struct Sources {
    registry: Registry,
    dir: tempfile::TempDir,
}

impl Sources {
    fn new() -> Sources {
        let fixture = bookworm_fixture();
        let registry = Registry::start();
        push_layout(
            &fixture.layout,
            BookwormFixture::TAG,
            &registry,
            &format!("{REPOSITORY}:{SOURCE_TAG}"),
            ManifestFormat::Oci,
        );
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("cp")
            .arg("-a")
            .arg(&fixture.layout)
            .arg(dir.path().join("layout")));
        // skopeo writes the classic form: manifest.json and uncompressed layer tars.
        run(Command::new("skopeo").args(["copy", "--quiet"]).args([
            format!("oci:{}:{}", fixture.layout.display(), BookwormFixture::TAG),
            format!(
                "docker-archive:{}:{REPOSITORY}:{SOURCE_TAG}",
                dir.path().join("source.tar").display()
            ),
        ]));
        Sources { registry, dir }
    }

    fn location(&self, kind: Kind) -> String {
        match kind {
            Kind::Registry => self.registry.image(&format!("{REPOSITORY}:{SOURCE_TAG}")),
            Kind::Layout => format!(
                "oci:{}:{SOURCE_TAG}",
                self.dir.path().join("layout").display()
            ),
            Kind::Archive => format!(
                "docker-archive:{}",
                self.dir.path().join("source.tar").display()
            ),
        }
    }

    /// Returns a destination for the pair, and the skopeo name to read it back.
    fn destination(&self, from: Kind, to: Kind) -> (String, String) {
        let name = format!("{from:?}-to-{to:?}").to_lowercase();
        match to {
            Kind::Registry => {
                let image = self.registry.image(&format!("{name}:patched"));
                (format!("docker://{image}"), format!("docker://{image}"))
            }
            Kind::Layout => {
                let dir = self.dir.path().join(&name);
                (
                    format!("oci:{}:patched", dir.display()),
                    format!("oci:{}:patched", dir.display()),
                )
            }
            Kind::Archive => {
                let file = self.dir.path().join(format!("{name}.tar"));
                (
                    format!("docker-archive:{}:{REPOSITORY}:patched", file.display()),
                    format!("docker-archive:{}", file.display()),
                )
            }
        }
    }
}

fn skopeo(args: &[&str]) -> String {
    run_stdout(Command::new("skopeo").args(args))
}

/// Inspects an image with skopeo and unpacks it with umoci; returns the file tree.
fn inspect_and_unpack(name: &str, work: &Path) -> BTreeMap<PathBuf, FileState> {
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", name]);
    let manifest: Value = serde_json::from_str(&raw).unwrap();
    assert!(
        manifest.get("layers").is_some_and(Value::is_array),
        "{name} must have an image manifest\n{raw}"
    );
    let config = skopeo(&["inspect", "--tls-verify=false", "--config", name]);
    assert!(
        config.contains("dev.layermend.patch"),
        "{name} must carry the patch label"
    );
    fs_err::create_dir_all(work).unwrap();
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .args([name.to_owned(), format!("oci:{}:unpack", layout.display())]));
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:unpack", layout.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    tree::walk(&rootfs, Path::new(""))
        .into_iter()
        .map(|path| {
            let state = tree::file_state(&rootfs, &path);
            (path, state)
        })
        .collect()
}

fn differences(
    expected: &BTreeMap<PathBuf, FileState>,
    actual: &BTreeMap<PathBuf, FileState>,
) -> Vec<String> {
    let mut found = Vec::new();
    for (path, state) in expected {
        match actual.get(path) {
            None => found.push(format!("missing {}", path.display())),
            Some(other) if other != state => {
                found.push(format!("{}: {state:?} != {other:?}", path.display()))
            }
            Some(_) => {}
        }
    }
    for path in actual.keys().filter(|path| !expected.contains_key(*path)) {
        found.push(format!("extra {}", path.display()));
    }
    found
}

#[test]
fn every_transport_pair_gives_same_tree() {
    let security = security_fixture();
    let report = security.report.to_str().unwrap();
    let sources = Sources::new();
    let work = tempfile::tempdir().unwrap();

    let mut reference: Option<BTreeMap<PathBuf, FileState>> = None;
    for from in KINDS {
        for to in KINDS {
            let (destination, readable) = sources.destination(from, to);
            let source = sources.location(from);
            let outcome = layermend(&["patch", "-i", &source, "-r", report, "-t", &destination]);
            assert_eq!(
                outcome.code, 0,
                "{from:?} to {to:?} must succeed\n{outcome}"
            );
            if to == Kind::Layout && from != Kind::Archive {
                assert!(
                    !outcome.stderr.contains("converted Docker media types"),
                    "an OCI source needs no conversion\n{outcome}"
                );
            }
            if from == Kind::Archive && to != Kind::Registry {
                // skopeo's classic archive yields a Docker schema 2 manifest.
                assert!(
                    outcome.stderr.contains("converted Docker media types"),
                    "a Docker manifest written to a layout must be reported\n{outcome}"
                );
            }
            let dir = work.path().join(format!("{from:?}-{to:?}"));
            let tree = inspect_and_unpack(&readable, &dir);
            match &reference {
                None => reference = Some(tree),
                Some(expected) => {
                    let found = differences(expected, &tree);
                    assert!(
                        found.is_empty(),
                        "{from:?} to {to:?} differs from registry to registry:\n{}",
                        found.join("\n")
                    );
                }
            }
        }
    }

    // An archive layermend wrote is in the OCI-layout form docker 25 writes; read it back.
    let (written, _) = sources.destination(Kind::Layout, Kind::Archive);
    let written = written
        .trim_end_matches(&format!(":{REPOSITORY}:patched"))
        .to_owned();
    let target = sources.registry.image("from-oci-archive:patched");
    let outcome = layermend(&[
        "patch",
        "-i",
        &written,
        "-r",
        report,
        "-t",
        &format!("docker://{target}"),
    ]);
    // The image is patched already, so there is nothing left to do.
    assert_eq!(
        outcome.code, 3,
        "the OCI-form archive must be readable\n{outcome}"
    );
}

#[test]
fn layout_in_place_and_oci_dir() {
    let security = security_fixture();
    let report = security.report.to_str().unwrap();
    let sources = Sources::new();
    let layout = sources.dir.path().join("layout");
    let index_before: Value =
        serde_json::from_slice(&fs_err::read(layout.join("index.json")).unwrap()).unwrap();

    let outcome = layermend(&["patch", "-i", &sources.location(Kind::Layout), "-r", report]);
    assert_eq!(outcome.code, 0, "{outcome}");
    let index: Value =
        serde_json::from_slice(&fs_err::read(layout.join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|entry| entry.pointer("/annotations/org.opencontainers.image.ref.name"))
        .filter_map(Value::as_str)
        .collect();
    assert!(names.contains(&SOURCE_TAG), "{names:?}");
    assert!(names.contains(&"bookworm-patched"), "{names:?}");
    assert_eq!(
        index["manifests"][0], index_before["manifests"][0],
        "the source entry must stay as it was"
    );
    skopeo(&[
        "inspect",
        &format!("oci:{}:bookworm-patched", layout.display()),
    ]);

    let oci_dir = sources.dir.path().join("copa");
    let outcome = layermend(&[
        "patch",
        "-i",
        &sources.location(Kind::Registry),
        "-r",
        report,
        "--oci-dir",
        oci_dir.to_str().unwrap(),
    ]);
    assert_eq!(outcome.code, 0, "{outcome}");
    skopeo(&[
        "inspect",
        &format!("oci:{}:bookworm-patched", oci_dir.display()),
    ]);
}

#[test]
fn failed_run_leaves_layout_unchanged() {
    let sources = Sources::new();
    let layout = sources.dir.path().join("layout");
    let index_before = fs_err::read(layout.join("index.json")).unwrap();
    let blobs_before = fs_err::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .count();
    let siblings_before = fs_err::read_dir(sources.dir.path()).unwrap().count();

    let outcome = layermend(&[
        "patch",
        "-i",
        &sources.location(Kind::Layout),
        "-r",
        security_fixture().report.to_str().unwrap(),
        "--timeout",
        "1ms",
    ]);
    assert_eq!(outcome.code, 1, "{outcome}");
    assert_eq!(
        fs_err::read(layout.join("index.json")).unwrap(),
        index_before
    );
    let blobs_after = fs_err::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(
        blobs_after, blobs_before,
        "no blob of the failed run may stay"
    );
    let siblings_after = fs_err::read_dir(sources.dir.path()).unwrap().count();
    assert_eq!(
        siblings_after, siblings_before,
        "no staging directory may stay"
    );

    let new_dir = sources.dir.path().join("never");
    let outcome = layermend(&[
        "patch",
        "-i",
        &sources.location(Kind::Registry),
        "-r",
        security_fixture().report.to_str().unwrap(),
        "-t",
        &format!("oci:{}:x", new_dir.display()),
        "--timeout",
        "1ms",
    ]);
    assert_eq!(outcome.code, 1, "{outcome}");
    assert!(!new_dir.exists(), "a failed run must not create the layout");
}
