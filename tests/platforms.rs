//! End-to-end tests of multi-platform images: an OCI index with the bookworm amd64
//! fixture, the bookworm arm64 fixture (built without emulation), an attestation manifest
//! as BuildKit writes it and index annotations, patched from a directory of per-platform
//! Trivy reports.
//!
//! Needs root, the network access apt is configured for, and the tools `.ci/run` installs.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

use common::tree::decompress_layer;
use common::{
    BookwormFixture, Manifest, Registry, bookworm_fixture, fixture_script, layermend, run,
    run_stdout, security_fixture, sha256_digest,
};

const REPOSITORY: &str = "debian";
const INDEX_TAG: &str = "multi";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// `e_machine` values of the ELF header (System V ABI, processor supplements).
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// The arm64 image built by `tests/fixtures/arm64.sh`.
struct Arm64Fixture {
    /// Cache directory of this fixture build.
    dir: PathBuf,
    rootfs: PathBuf,
    layout: PathBuf,
}

fn arm64_fixture() -> &'static Arm64Fixture {
    static FIXTURE: OnceLock<Arm64Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let stdout = run_stdout(&mut Command::new(fixture_script("arm64.sh")));
        let dir = PathBuf::from(stdout.trim());
        Arm64Fixture {
            rootfs: dir.join("rootfs"),
            layout: dir.join("layout"),
            dir,
        }
    })
}

/// A directory with one Trivy report per platform: `amd64.json` from the security
/// fixture and `arm64.json` derived from the current arm64 bookworm-security index. It
/// is made once per test process in the arm64 fixture's cache directory, which the
/// fixture script deletes with the cache.
fn reports_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = arm64_fixture()
            .dir
            .join(format!("reports-{}", std::process::id()));
        let _ = fs_err::remove_dir_all(&dir);
        fs_err::create_dir_all(&dir).unwrap();
        fs_err::copy(&security_fixture().report, dir.join("amd64.json")).unwrap();
        run(Command::new(fixture_script("security-report.sh"))
            .env("ARCH", "arm64")
            .env("ARTIFACT_NAME", "debian:bookworm")
            .arg(&arm64_fixture().rootfs)
            .arg(dir.join("arm64.json")));
        dir
    })
}

/// Names and fixed versions the report of `arch` lists.
fn report_updates(arch: &str) -> BTreeSet<(String, String)> {
    let report: Value =
        serde_json::from_slice(&fs_err::read(reports_dir().join(format!("{arch}.json"))).unwrap())
            .unwrap();
    report["Results"][0]["Vulnerabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["PkgName"].as_str().unwrap().to_owned(),
                v["FixedVersion"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Names of the `Architecture: all` packages the report of `arch` lists, from the `arch`
/// qualifier of their package URLs.
fn arch_all_packages(arch: &str) -> BTreeSet<String> {
    let report: Value =
        serde_json::from_slice(&fs_err::read(reports_dir().join(format!("{arch}.json"))).unwrap())
            .unwrap();
    report["Results"][0]["Vulnerabilities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| {
            v["PkgIdentifier"]["PURL"]
                .as_str()
                .is_some_and(|purl| purl.contains("arch=all"))
        })
        .map(|v| v["PkgName"].as_str().unwrap().to_owned())
        .collect()
}

/// The two-platform index in an OCI layout, tagged [`INDEX_TAG`].
struct IndexFixture {
    dir: tempfile::TempDir,
    /// The index as written, compact JSON.
    index: Vec<u8>,
    amd64: String,
    arm64: String,
    attestation: String,
}

impl IndexFixture {
    fn layout(&self) -> PathBuf {
        self.dir.path().join("layout")
    }
}

/// Writes `bytes` as a blob of the layout at `layout` and returns its descriptor.
fn write_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let digest = sha256_digest(bytes);
    let path = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    fs_err::write(path, bytes).unwrap();
    json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
}

/// Builds the index from the two fixture layouts: an attestation manifest for the amd64
/// image as BuildKit writes it (platform `unknown/unknown`, an in-toto layer, the
/// `vnd.docker.reference.*` annotations) and index annotations.
fn index_fixture() -> IndexFixture {
    let amd64_layout = &bookworm_fixture().layout;
    let arm64_layout = &arm64_fixture().layout;
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let blobs = layout.join("blobs/sha256");
    fs_err::create_dir_all(&blobs).unwrap();
    for source in [amd64_layout, arm64_layout] {
        for entry in fs_err::read_dir(source.join("blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            let target = blobs.join(entry.file_name());
            if !target.exists() {
                fs_err::hard_link(entry.path(), &target)
                    .or_else(|_| fs_err::copy(entry.path(), &target).map(|_| ()))
                    .unwrap();
            }
        }
    }
    let amd64 = layout_manifest(amd64_layout);
    let arm64 = layout_manifest(arm64_layout);
    let amd64_digest = amd64["digest"].as_str().unwrap().to_owned();

    let statement = json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{"name": "pkg:docker/debian@bookworm?platform=linux%2Famd64",
                     "digest": {"sha256": &amd64_digest["sha256:".len()..]}}],
        "predicate": {"builder": {"id": ""}, "buildType": "https://mobyproject.org/buildkit@v1"}
    });
    let mut statement_layer = write_blob(
        &layout,
        "application/vnd.in-toto+json",
        &serde_json::to_vec(&statement).unwrap(),
    );
    statement_layer["annotations"] =
        json!({"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"});
    let attestation_config = json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [statement_layer["digest"]]}
    });
    let config = write_blob(
        &layout,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&attestation_config).unwrap(),
    );
    let attestation_manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": [statement_layer]
    });
    let mut attestation = write_blob(
        &layout,
        OCI_MANIFEST,
        &serde_json::to_vec(&attestation_manifest).unwrap(),
    );
    attestation["annotations"] = json!({
        "vnd.docker.reference.digest": amd64_digest,
        "vnd.docker.reference.type": "attestation-manifest"
    });
    attestation["platform"] = json!({"architecture": "unknown", "os": "unknown"});

    let mut amd64_entry = amd64.clone();
    amd64_entry["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let mut arm64_entry = arm64.clone();
    arm64_entry["platform"] = json!({"architecture": "arm64", "os": "linux", "variant": "v8"});
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [amd64_entry, arm64_entry, attestation],
        "annotations": {
            "org.opencontainers.image.created": "2026-01-01T00:00:00Z",
            "org.layermend.test.fixture": "two-platform"
        }
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let mut top = write_blob(&layout, OCI_INDEX, &index_bytes);
    top["annotations"] = json!({"org.opencontainers.image.ref.name": INDEX_TAG});
    let layout_index = json!({"schemaVersion": 2, "manifests": [top]});
    fs_err::write(layout.join("index.json"), layout_index.to_string()).unwrap();
    fs_err::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();

    IndexFixture {
        dir,
        index: index_bytes,
        amd64: amd64_digest,
        arm64: arm64["digest"].as_str().unwrap().to_owned(),
        attestation: attestation["digest"].as_str().unwrap().to_owned(),
    }
}

/// The descriptor of the only manifest in a fixture layout, without annotations.
fn layout_manifest(layout: &Path) -> Value {
    let index: Value =
        serde_json::from_slice(&fs_err::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    json!({"mediaType": entry["mediaType"], "digest": entry["digest"], "size": entry["size"]})
}

/// Starts a registry and pushes the index with every manifest it lists.
fn push_index(fixture: &IndexFixture) -> Registry {
    let registry = Registry::start();
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{INDEX_TAG}", fixture.layout().display()))
        .arg(format!(
            "docker://{}",
            registry.image(&format!("{REPOSITORY}:{INDEX_TAG}"))
        )));
    registry
}

/// Raw member texts of JSON documents. The functions work on the exact bytes so that tests can
/// compare what a rewrite kept, which a parse and re-serialization would hide.
mod raw {
    /// Returns the end (exclusive) of the JSON value that starts at `start`.
    pub fn value_end(text: &[u8], start: usize) -> usize {
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        for (offset, &byte) in text[start..].iter().enumerate() {
            if in_string {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => {
                        in_string = false;
                        if depth == 0 {
                            return start + offset + 1;
                        }
                    }
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return start + offset + 1;
                    }
                }
                b',' if depth == 0 => return start + offset,
                _ => {}
            }
        }
        text.len()
    }

    fn skip_space(text: &[u8], mut at: usize) -> usize {
        while at < text.len() && text[at].is_ascii_whitespace() {
            at += 1;
        }
        at
    }

    /// Returns the raw text of `key`'s value in the top-level object of `text`.
    pub fn member<'a>(text: &'a [u8], key: &str) -> Option<&'a [u8]> {
        let mut at = skip_space(text, 0) + 1;
        loop {
            at = skip_space(text, at);
            if text.get(at) != Some(&b'"') {
                return None;
            }
            let key_end = value_end(text, at);
            let name: String = serde_json::from_slice(&text[at..key_end]).unwrap();
            at = skip_space(text, key_end) + 1;
            at = skip_space(text, at);
            let end = value_end(text, at);
            if name == key {
                return Some(&text[at..end]);
            }
            at = skip_space(text, end) + 1;
        }
    }

    /// Returns the raw texts of the elements of the array `text`.
    pub fn elements(text: &[u8]) -> Vec<&[u8]> {
        let mut found = Vec::new();
        let mut at = skip_space(text, 0) + 1;
        loop {
            at = skip_space(text, at);
            if at >= text.len() || text[at] == b']' {
                return found;
            }
            let end = value_end(text, at);
            found.push(&text[at..end]);
            at = skip_space(text, end) + 1;
        }
    }
}

/// Returns the raw descriptor texts of an index's `manifests`.
fn raw_entries(index: &[u8]) -> Vec<String> {
    raw::elements(raw::member(index, "manifests").expect("index has manifests"))
        .into_iter()
        .map(|entry| String::from_utf8(entry.to_vec()).unwrap())
        .collect()
}

fn raw_annotations(index: &[u8]) -> String {
    String::from_utf8(raw::member(index, "annotations").unwrap().to_vec()).unwrap()
}

/// A regular file of a layer with the start of its content.
struct LayerFile {
    path: String,
    head: Vec<u8>,
}

/// Lists every entry path of a tar, and the first 64 bytes of each regular file.
fn layer_files(tar_bytes: &[u8]) -> (Vec<String>, Vec<LayerFile>) {
    let mut paths = Vec::new();
    let mut files = Vec::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        paths.push(path.clone());
        if entry.header().entry_type().is_file() {
            let mut head = Vec::new();
            entry.take(64).read_to_end(&mut head).unwrap();
            files.push(LayerFile { path, head });
        }
    }
    (paths, files)
}

/// Reads the `e_machine` of an ELF file's header, `None` for other files. Both platforms are
/// little-endian, so the field is a little-endian u16 at offset 18.
fn elf_machine(head: &[u8]) -> Option<u16> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return None;
    }
    Some(u16::from_le_bytes([head[18], head[19]]))
}

/// Fetches the new (top) layer of a patched image from the registry, uncompressed.
fn top_layer(registry: &Registry, manifest: &Manifest) -> Vec<u8> {
    let layer = manifest.layers().last().unwrap();
    let blob = registry.blob(REPOSITORY, layer["digest"].as_str().unwrap());
    decompress_layer(&blob, layer["mediaType"].as_str().unwrap())
}

/// Checks that the top layer of `manifest` contains ELF files of `machine` only, and at
/// least one, and no entry below a top-level directory that merged /usr makes a symlink.
fn check_top_layer(registry: &Registry, manifest: &Manifest, machine: u16, platform: &str) {
    let (paths, files) = layer_files(&top_layer(registry, manifest));
    let machines: Vec<(String, u16)> = files
        .iter()
        .filter_map(|file| Some((file.path.clone(), elf_machine(&file.head)?)))
        .collect();
    assert!(
        !machines.is_empty(),
        "the {platform} patch layer has no ELF file: {paths:?}"
    );
    let wrong: Vec<_> = machines.iter().filter(|(_, m)| *m != machine).collect();
    assert!(
        wrong.is_empty(),
        "{platform} patch layer has ELF files for another machine than {machine}: {wrong:?}"
    );
    let through_symlink: Vec<&String> = paths
        .iter()
        .filter(|path| {
            let path = path.trim_start_matches("./");
            ["lib", "bin", "sbin", "lib64"]
                .iter()
                .any(|top| path == *top || path.starts_with(&format!("{top}/")))
        })
        .collect();
    assert!(
        through_symlink.is_empty(),
        "{platform} patch layer writes below merged-/usr symlinks: {through_symlink:?}"
    );
}

/// Pulls the arm64 platform of the patched index the way a runtime on an arm64 host
/// selects it and applies its layers with `umoci unpack`. In the result, the merged-/usr
/// symlinks must survive, the patched zlib must be aarch64 code, and dpkg must list the
/// report's fixed versions.
fn check_arm64_unpacked(registry: &Registry) {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    run(Command::new("skopeo")
        .args(["--override-arch", "arm64", "--override-variant", "v8"])
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!(
            "docker://{}",
            registry.image(&format!("{REPOSITORY}:patched"))
        ))
        .arg(format!("oci:{}:arm64", layout.display())));
    let bundle = work.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:arm64", layout.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");

    for (link, target) in [("lib", "usr/lib"), ("bin", "usr/bin"), ("sbin", "usr/sbin")] {
        let found = fs_err::read_link(rootfs.join(link)).unwrap();
        assert_eq!(found, Path::new(target), "/{link} must stay a symlink");
    }
    let libz = rootfs.join("usr/lib/aarch64-linux-gnu/libz.so.1");
    let mut head = Vec::new();
    fs_err::File::open(&libz)
        .unwrap()
        .take(64)
        .read_to_end(&mut head)
        .unwrap();
    assert_eq!(elf_machine(&head), Some(EM_AARCH64), "{}", libz.display());

    let installed = run_stdout(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                rootfs.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${Package}\t${Version}\n"]),
    );
    for (name, fixed) in report_updates("arm64") {
        assert!(
            installed.contains(&format!("{name}\t{fixed}\n")),
            "dpkg-query in the unpacked arm64 image must list {name} {fixed}:\n{installed}"
        );
    }
}

/// Returns the packages a patched image's dpkg status lists at their new versions,
/// read from the patch layer's `var/lib/dpkg/status`.
fn layer_status_versions(registry: &Registry, manifest: &Manifest) -> BTreeSet<(String, String)> {
    let tar_bytes = top_layer(registry, manifest);
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if path.trim_start_matches("./") != "var/lib/dpkg/status" {
            continue;
        }
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        return text
            .split("\n\n")
            .filter_map(|stanza| {
                let field = |name: &str| {
                    stanza
                        .lines()
                        .find_map(|line| line.strip_prefix(&format!("{name}: ")))
                        .map(str::to_owned)
                };
                Some((field("Package")?, field("Version")?))
            })
            .collect();
    }
    panic!("the patch layer has no var/lib/dpkg/status");
}

fn registry_manifest(registry: &Registry, reference: &str) -> Manifest {
    registry
        .manifest(REPOSITORY, reference)
        .unwrap_or_else(|| panic!("{REPOSITORY}:{reference} not found in the registry"))
}

#[test]
fn index_patches_both_platforms() {
    let fixture = index_fixture();
    let registry = push_index(&fixture);
    let source = registry_manifest(&registry, INDEX_TAG);
    assert_eq!(
        source.bytes, fixture.index,
        "skopeo --all must push the index unchanged"
    );
    let reports = reports_dir().to_str().unwrap();

    let outcome = layermend(&[
        "patch",
        "-i",
        &registry.image(&format!("{REPOSITORY}:{INDEX_TAG}")),
        "-r",
        reports,
        "-t",
        "patched",
        "--output-format",
        "json",
        "-v",
    ]);
    assert_eq!(outcome.code, 0, "{outcome}");
    let result: Value = serde_json::from_str(&outcome.stdout).unwrap();

    let patched = registry_manifest(&registry, "patched");
    assert_eq!(patched.media_type(), OCI_INDEX);
    assert_ne!(patched.digest, source.digest);
    assert_eq!(
        result["manifest_digest"].as_str(),
        Some(patched.digest.as_str())
    );

    let before = raw_entries(&source.bytes);
    let after = raw_entries(&patched.bytes);
    assert_eq!(after.len(), 3);
    assert_eq!(
        after[2], before[2],
        "the attestation descriptor must keep its bytes"
    );
    assert!(before[2].contains(&fixture.attestation));
    assert_eq!(
        raw_annotations(&patched.bytes),
        raw_annotations(&source.bytes),
        "the index annotations must keep their bytes"
    );
    let attestation = registry.manifest(REPOSITORY, &fixture.attestation);
    assert!(
        attestation.is_some(),
        "the attestation manifest must stay in the repository"
    );

    let platforms = [
        ("linux/amd64", &fixture.amd64, EM_X86_64, "amd64"),
        ("linux/arm64/v8", &fixture.arm64, EM_AARCH64, "arm64"),
    ];
    for (position, (platform, old_digest, machine, arch)) in platforms.into_iter().enumerate() {
        let entry: Value = serde_json::from_str(&after[position]).unwrap();
        let old_entry: Value = serde_json::from_str(&before[position]).unwrap();
        assert_eq!(
            entry["platform"], old_entry["platform"],
            "{platform} keeps its platform"
        );
        let new_digest = entry["digest"].as_str().unwrap();
        assert_ne!(new_digest, old_digest, "{platform} must be patched");
        let old = registry_manifest(&registry, old_digest);
        let new = registry_manifest(&registry, new_digest);
        assert_eq!(
            new.layers().len(),
            old.layers().len() + 1,
            "{platform} gets exactly one new layer"
        );
        assert_eq!(&new.layers()[..old.layers().len()], old.layers());
        let config = registry.config(REPOSITORY, &new);
        assert_eq!(config["architecture"], arch, "{platform} config");

        check_top_layer(&registry, &new, machine, platform);

        let status = layer_status_versions(&registry, &new);
        for (name, fixed) in report_updates(arch) {
            assert!(
                status.contains(&(name.clone(), fixed.clone())),
                "{platform}: {name} {fixed} missing from the patched dpkg status"
            );
        }
    }

    let outcome_platforms = result["platforms"].as_array().unwrap();
    assert_eq!(outcome_platforms.len(), 2, "{}", outcome.stdout);
    for (position, reported) in outcome_platforms.iter().enumerate() {
        let entry: Value = serde_json::from_str(&after[position]).unwrap();
        assert_eq!(
            reported["manifest_digest"], entry["digest"],
            "the JSON result names the new manifest of {}",
            reported["platform"]
        );
    }

    check_arm64_unpacked(&registry);

    // A package file both platforms install (an `Architecture: all` one such as tzdata)
    // is downloaded once. With `-v`, each download is logged.
    let shared: BTreeSet<String> = arch_all_packages("amd64")
        .intersection(&arch_all_packages("arm64"))
        .cloned()
        .collect();
    assert!(
        !shared.is_empty(),
        "the reports share no Architecture: all package today, so sharing is untested"
    );
    for name in &shared {
        let downloads = outcome
            .stderr
            .lines()
            .filter(|line| line.contains(&format!("downloaded package={name} ")))
            .count();
        assert_eq!(downloads, 1, "{name} must be downloaded once\n{outcome}");
    }
}

#[test]
fn platform_flag_patches_arm64_only() {
    let fixture = index_fixture();
    let registry = push_index(&fixture);
    let source = registry_manifest(&registry, INDEX_TAG);

    let outcome = layermend(&[
        "patch",
        "-i",
        &registry.image(&format!("{REPOSITORY}:{INDEX_TAG}")),
        "-r",
        reports_dir().to_str().unwrap(),
        "-t",
        "arm64-only",
        "--platform",
        "linux/arm64",
    ]);
    assert_eq!(outcome.code, 0, "{outcome}");

    let patched = registry_manifest(&registry, "arm64-only");
    let before = raw_entries(&source.bytes);
    let after = raw_entries(&patched.bytes);
    assert_eq!(after[0], before[0], "amd64 must keep its descriptor bytes");
    assert_eq!(after[2], before[2], "the attestation must keep its bytes");
    assert_ne!(after[1], before[1], "arm64 must be patched");
    assert_eq!(
        raw_annotations(&patched.bytes),
        raw_annotations(&source.bytes)
    );
    let arm64: Value = serde_json::from_str(&after[1]).unwrap();
    let new = registry_manifest(&registry, arm64["digest"].as_str().unwrap());
    check_top_layer(&registry, &new, EM_AARCH64, "linux/arm64");
}

#[test]
fn index_to_layout_and_archive() {
    let fixture = index_fixture();
    let reports = reports_dir().to_str().unwrap();
    let source = format!("oci:{}:{INDEX_TAG}", fixture.layout().display());
    let out = tempfile::tempdir().unwrap();

    // An OCI layout destination: its index.json names the new index, which skopeo reads.
    let layout = out.path().join("layout");
    let destination = format!("oci:{}:patched", layout.display());
    let outcome = layermend(&["patch", "-i", &source, "-r", reports, "-t", &destination]);
    assert_eq!(outcome.code, 0, "{outcome}");
    let raw = run(Command::new("skopeo").args(["inspect", "--raw", &destination])).stdout;
    assert_eq!(
        raw_entries(&raw)[2],
        raw_entries(&fixture.index)[2],
        "the attestation must keep its bytes in a layout"
    );
    assert_eq!(raw_annotations(&raw), raw_annotations(&fixture.index));
    let layout_index: Value =
        serde_json::from_slice(&fs_err::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(layout_index["manifests"][0]["mediaType"], OCI_INDEX);
    assert_eq!(
        layout_index["manifests"][0]["digest"].as_str(),
        Some(sha256_digest(&raw).as_str())
    );

    // A docker archive destination: manifest.json cannot describe an index, so the index
    // is named in index.json only and manifest.json lists no image.
    let archive = out.path().join("patched.tar");
    let destination = format!("docker-archive:{}:{REPOSITORY}:patched", archive.display());
    let outcome = layermend(&["patch", "-i", &source, "-r", reports, "-t", &destination]);
    assert_eq!(outcome.code, 0, "{outcome}");
    let unpacked = out.path().join("archive");
    fs_err::create_dir_all(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked));
    let archive_index: Value =
        serde_json::from_slice(&fs_err::read(unpacked.join("index.json")).unwrap()).unwrap();
    let top = &archive_index["manifests"][0];
    assert_eq!(top["mediaType"], OCI_INDEX, "{archive_index}");
    let index_digest = top["digest"].as_str().unwrap();
    let index_bytes = fs_err::read(
        unpacked
            .join("blobs/sha256")
            .join(&index_digest["sha256:".len()..]),
    )
    .unwrap();
    assert_eq!(raw_entries(&index_bytes).len(), 3);
    assert_eq!(raw_entries(&index_bytes)[2], raw_entries(&fixture.index)[2]);
    let manifest_json: Value =
        serde_json::from_slice(&fs_err::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest_json,
        json!([]),
        "manifest.json cannot list an index"
    );
}

/// Adds an index with the two platform entries only, tagged `list`, to the fixture's
/// layout. skopeo 1.9 rejects the attestation when converting to Docker schema 2,
/// because the in-toto layer media type has no schema 2 equivalent.
fn add_platforms_only_index(fixture: &IndexFixture) -> &'static str {
    let mut index: Value = serde_json::from_slice(&fixture.index).unwrap();
    index["manifests"].as_array_mut().unwrap().truncate(2);
    index.as_object_mut().unwrap().remove("annotations");
    let layout = fixture.layout();
    let mut top = write_blob(&layout, OCI_INDEX, &serde_json::to_vec(&index).unwrap());
    top["annotations"] = json!({"org.opencontainers.image.ref.name": "list"});
    let path = layout.join("index.json");
    let mut layout_index: Value = serde_json::from_slice(&fs_err::read(&path).unwrap()).unwrap();
    layout_index["manifests"].as_array_mut().unwrap().push(top);
    fs_err::write(&path, layout_index.to_string()).unwrap();
    "list"
}

#[test]
fn manifest_list_patches_both_platforms() {
    let fixture = index_fixture();
    let tag = add_platforms_only_index(&fixture);
    let registry = Registry::start();
    // skopeo converts the index to a Docker manifest list and each image to schema 2.
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--format", "v2s2"])
        .arg("--dest-tls-verify=false")
        .arg(format!("oci:{}:{tag}", fixture.layout().display()))
        .arg(format!(
            "docker://{}",
            registry.image(&format!("{REPOSITORY}:{tag}"))
        )));
    let source = registry_manifest(&registry, tag);
    assert_eq!(source.media_type(), DOCKER_MANIFEST_LIST);

    let outcome = layermend(&[
        "patch",
        "-i",
        &registry.image(&format!("{REPOSITORY}:{tag}")),
        "-r",
        reports_dir().to_str().unwrap(),
        "-t",
        "list-patched",
    ]);
    assert_eq!(outcome.code, 0, "{outcome}");

    let patched = registry_manifest(&registry, "list-patched");
    assert_eq!(patched.media_type(), DOCKER_MANIFEST_LIST);
    let before = raw_entries(&source.bytes);
    let after = raw_entries(&patched.bytes);
    assert_eq!(after.len(), 2);
    let machines = [("linux/amd64", EM_X86_64), ("linux/arm64", EM_AARCH64)];
    for (position, (platform, machine)) in machines.into_iter().enumerate() {
        let old_entry: Value = serde_json::from_str(&before[position]).unwrap();
        let entry: Value = serde_json::from_str(&after[position]).unwrap();
        assert_ne!(
            entry["digest"], old_entry["digest"],
            "{platform} must be patched"
        );
        assert_eq!(entry["mediaType"], DOCKER_MANIFEST, "{platform}");
        assert_eq!(entry["platform"], old_entry["platform"], "{platform}");
        let old = registry_manifest(&registry, old_entry["digest"].as_str().unwrap());
        let new = registry_manifest(&registry, entry["digest"].as_str().unwrap());
        assert_eq!(new.media_type(), DOCKER_MANIFEST, "{platform}");
        assert_eq!(new.layers().len(), old.layers().len() + 1, "{platform}");
        check_top_layer(&registry, &new, machine, platform);
    }
}

#[test]
fn single_image_platform_must_match() {
    let fixture = bookworm_fixture();
    let source = format!("oci:{}:{}", fixture.layout.display(), BookwormFixture::TAG);
    let report = security_fixture().report.to_str().unwrap().to_owned();

    let outcome = layermend(&[
        "patch",
        "-i",
        &source,
        "-r",
        &report,
        "--platform",
        "linux/arm64",
        "--dry-run",
    ]);
    assert_eq!(outcome.code, 2, "{outcome}");
    assert!(
        outcome
            .stderr
            .contains("is linux/amd64 only; --platform linux/arm64 matches nothing"),
        "{outcome}"
    );

    let outcome = layermend(&[
        "patch",
        "-i",
        &source,
        "-r",
        &report,
        "--platform",
        "linux/amd64",
        "--dry-run",
    ]);
    assert_eq!(outcome.code, 0, "{outcome}");
}

/// Reads a blob of the OCI layout at `layout`.
fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    fs_err::read(layout.join("blobs/sha256").join(&digest["sha256:".len()..])).unwrap()
}

#[test]
fn one_report_serves_both_platforms() {
    let fixture = index_fixture();
    let source = format!("oci:{}:{INDEX_TAG}", fixture.layout().display());
    // The amd64 report names its packages with arch=amd64; the arm64 image has the same
    // packages as arm64 ones.
    let report = reports_dir().join("amd64.json");
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    let destination = format!("oci:{}:patched", layout.display());
    let outcome = layermend(&[
        "patch",
        "-i",
        &source,
        "-r",
        report.to_str().unwrap(),
        "-t",
        &destination,
    ]);
    assert_eq!(outcome.code, 0, "{outcome}");

    let layout_index: Value =
        serde_json::from_slice(&fs_err::read(layout.join("index.json")).unwrap()).unwrap();
    let index_digest = layout_index["manifests"][0]["digest"].as_str().unwrap();
    let index: Value = serde_json::from_slice(&layout_blob(&layout, index_digest)).unwrap();
    let arm64_entry = &index["manifests"][1];
    assert_eq!(arm64_entry["platform"]["architecture"], "arm64");
    assert_ne!(
        arm64_entry["digest"].as_str(),
        Some(fixture.arm64.as_str()),
        "arm64 must be patched"
    );
    let manifest: Value = serde_json::from_slice(&layout_blob(
        &layout,
        arm64_entry["digest"].as_str().unwrap(),
    ))
    .unwrap();
    let layer = manifest["layers"].as_array().unwrap().last().unwrap();
    let tar_bytes = decompress_layer(
        &layout_blob(&layout, layer["digest"].as_str().unwrap()),
        layer["mediaType"].as_str().unwrap(),
    );
    let (_, files) = layer_files(&tar_bytes);
    let libz = files
        .iter()
        .find(|file| file.path.contains("aarch64-linux-gnu/libz.so"))
        .unwrap_or_else(|| panic!("the arm64 patch layer has no libz\n{outcome}"));
    assert_eq!(elf_machine(&libz.head), Some(EM_AARCH64));

    // Every package both reports list is fixed on arm64 too; none is skipped as
    // missing because the report recorded another architecture.
    let arm64_names: BTreeSet<String> = report_updates("arm64")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let amd64_names: BTreeSet<String> = report_updates("amd64")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let not_installed: Vec<&str> = outcome
        .stderr
        .lines()
        .filter(|line| line.contains("is in the report but not installed"))
        .collect();
    for name in arm64_names.intersection(&amd64_names) {
        assert!(
            !not_installed
                .iter()
                .any(|line| line.contains(&format!(": {name} is in the report"))),
            "{name} reported as not installed: {not_installed:?}"
        );
    }
    // A package of the amd64 image only (apt, for example) gets a warning that names
    // the platform that lacks it.
    let arm64_installed = fs_err::read_to_string(arm64_fixture().dir.join("packages.tsv")).unwrap();
    let arm64_installed: BTreeSet<&str> = arm64_installed
        .lines()
        .filter_map(|line| line.split('\t').next())
        .collect();
    for name in amd64_names
        .iter()
        .filter(|name| !arm64_installed.contains(name.as_str()))
    {
        let expected = format!(
            "warning: linux/arm64/v8: {name} is in the report but not installed in the image"
        );
        assert!(
            not_installed.contains(&expected.as_str()),
            "{expected:?} missing: {not_installed:?}"
        );
    }
}
