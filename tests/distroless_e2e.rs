//! End-to-end tests of `layermend patch` on a distroless-style image (dpkg database in
//! `var/lib/dpkg/status.d/`, no apt sources) in a real registry, updated from a signed
//! repository the test builds with a throwaway GPG key.
//!
//! Needs root, gpg, dpkg-deb and the tools `.ci/run` installs.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use common::{ManifestFormat, Registry, layermend, push_layout, require_tool, run, umoci_unpack};

const REPOSITORY: &str = "distroless";
const LAYOUT_TAG: &str = "base";

/// A repository signed by a key made for the test, with its public keyring.
struct SignedRepo {
    dir: tempfile::TempDir,
    gnupg_home: PathBuf,
    keyring: PathBuf,
}

impl SignedRepo {
    fn new() -> SignedRepo {
        require_tool("gpg");
        let dir = tempfile::tempdir().unwrap();
        let gnupg_home = dir.path().join("gnupg");
        fs_err::create_dir_all(&gnupg_home).unwrap();
        run(gpg(&gnupg_home).args([
            "--passphrase",
            "",
            "--quick-gen-key",
            "layermend test <test@example.org>",
            "rsa3072",
            "sign",
            "never",
        ]));
        let keyring = dir.path().join("test-keyring.gpg");
        let exported = run(gpg(&gnupg_home).arg("--export"));
        fs_err::write(&keyring, &exported.stdout).unwrap();
        SignedRepo {
            dir,
            gnupg_home,
            keyring,
        }
    }

    /// Publishes `debs` as suite `suite`, component `main`, with a signed `InRelease`.
    fn publish(&self, suite: &str, debs: &[&Path]) -> String {
        let root = self.dir.path().join("repo");
        let pool = root.join("pool");
        fs_err::create_dir_all(&pool).unwrap();
        let mut packages = String::new();
        for deb in debs {
            let name = deb.file_name().unwrap().to_str().unwrap();
            fs_err::copy(deb, pool.join(name)).unwrap();
            let data = fs_err::read(deb).unwrap();
            let control = run(Command::new("dpkg-deb").arg("-f").arg(deb));
            packages.push_str(String::from_utf8(control.stdout).unwrap().trim_end());
            packages.push_str(&format!(
                "\nFilename: pool/{name}\nSize: {}\nSHA256: {}\n\n",
                data.len(),
                hex::encode(Sha256::digest(&data))
            ));
        }
        let dist = root.join("dists").join(suite);
        let binary = dist.join("main/binary-amd64");
        fs_err::create_dir_all(&binary).unwrap();
        fs_err::write(binary.join("Packages"), &packages).unwrap();
        let release = format!(
            "Suite: {suite}\nCodename: {suite}\nArchitectures: amd64\nComponents: main\n\
             Date: Thu, 01 Jan 2026 00:00:00 UTC\nSHA256:\n {} {} main/binary-amd64/Packages\n",
            hex::encode(Sha256::digest(packages.as_bytes())),
            packages.len()
        );
        fs_err::write(dist.join("Release"), release).unwrap();
        let _ = fs_err::remove_file(dist.join("InRelease"));
        run(gpg(&self.gnupg_home)
            .args(["--digest-algo", "SHA256", "--clearsign", "-o"])
            .arg(dist.join("InRelease"))
            .arg(dist.join("Release")));
        format!(
            "deb [signed-by={}] file://{} {suite} main",
            self.keyring.display(),
            root.display()
        )
    }
}

fn gpg(home: &Path) -> Command {
    let mut command = Command::new("gpg");
    command
        .arg("--homedir")
        .arg(home)
        .args(["--batch", "--quiet"]);
    command
}

/// Builds `demo_VERSION_amd64.deb` from `files` (path, content; `->target` is a symlink).
fn build_demo(dir: &Path, version: &str, files: &[(&str, &str)]) -> PathBuf {
    let tree = dir.join(format!("demo-{version}"));
    let control = format!(
        "Package: demo\nVersion: {version}\nArchitecture: amd64\nMaintainer: T <t@example.org>\n\
         Description: demo package\n"
    );
    let mut all = vec![("DEBIAN/control", control.as_str())];
    all.extend_from_slice(files);
    for (path, content) in all {
        let full = tree.join(path);
        fs_err::create_dir_all(full.parent().unwrap()).unwrap();
        match content.strip_prefix("->") {
            Some(target) => std::os::unix::fs::symlink(target, &full).unwrap(),
            None => fs_err::write(&full, content).unwrap(),
        }
    }
    // The archive leaves the epoch out of file names.
    let file_version = version.split_once(':').map_or(version, |(_, rest)| rest);
    let deb = dir.join(format!("demo_{file_version}_amd64.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&tree)
        .arg(&deb));
    deb
}

/// Builds a distroless-style root filesystem: `deb` extracted, its control file as
/// `status.d/demo1` (a file name unlike the package name) with `demo1.md5sums`, and one
/// other package's stanza that the patch must leave alone.
fn distroless_rootfs(root: &Path, deb: &Path) {
    fs_err::create_dir_all(root.join("etc")).unwrap();
    fs_err::write(
        root.join("etc/os-release"),
        "PRETTY_NAME=\"Distroless\"\nID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
    )
    .unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root));
    let status_dir = root.join("var/lib/dpkg/status.d");
    fs_err::create_dir_all(&status_dir).unwrap();
    let control = run(Command::new("dpkg-deb").arg("-f").arg(deb));
    fs_err::write(status_dir.join("demo1"), control.stdout).unwrap();
    // dpkg-deb --build ships no md5sums member; write what dpkg generates at install.
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    let mut md5sums = String::new();
    for line in String::from_utf8(listing.stdout).unwrap().lines() {
        if !line.starts_with('-') {
            continue;
        }
        let path = line
            .split_whitespace()
            .nth(5)
            .unwrap()
            .trim_start_matches("./");
        let data = fs_err::read(root.join(path)).unwrap();
        md5sums.push_str(&format!(
            "{}  {path}\n",
            hex::encode(md5::Md5::digest(&data))
        ));
    }
    fs_err::write(status_dir.join("demo1.md5sums"), md5sums).unwrap();
    assert!(status_dir.join("demo1.md5sums").exists());
    fs_err::write(
        status_dir.join("base"),
        "Package: base-files\nVersion: 12.4\nArchitecture: amd64\nMaintainer: T <t@example.org>\n\
         Description: base\n",
    )
    .unwrap();
}

/// Packs `root` as one gzip layer into a new OCI image layout tagged [`LAYOUT_TAG`].
fn write_layout(root: &Path, layout: &Path) {
    let blobs = layout.join("blobs/sha256");
    fs_err::create_dir_all(&blobs).unwrap();
    let mut tar_bytes = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut tar_bytes);
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Deterministic);
        builder.append_dir_all(".", root).unwrap();
        builder.finish().unwrap();
    }
    let diff_id = hex::encode(Sha256::digest(&tar_bytes));
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(&tar_bytes).unwrap();
    let layer = encoder.finish().unwrap();
    let write_blob = |data: &[u8]| -> (String, usize) {
        let digest = hex::encode(Sha256::digest(data));
        fs_err::write(blobs.join(&digest), data).unwrap();
        (format!("sha256:{digest}"), data.len())
    };
    let (layer_digest, layer_size) = write_blob(&layer);
    let config = json!({
        "created": "2026-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "test fixture"}],
    });
    let (config_digest, config_size) = write_blob(&serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = write_blob(&serde_json::to_vec(&manifest).unwrap());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"org.opencontainers.image.ref.name": LAYOUT_TAG}}],
    });
    fs_err::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    fs_err::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
}

/// The three versions of `demo`: 2.0 drops a file, adds one and turns one into a
/// symlink; `1:3.0` carries an epoch and changes a file again.
struct Demo {
    _dir: tempfile::TempDir,
    v1: PathBuf,
    v2: PathBuf,
    v3: PathBuf,
}

fn demo_packages() -> Demo {
    let dir = tempfile::tempdir().unwrap();
    let v1 = build_demo(
        dir.path(),
        "1.0",
        &[
            ("usr/bin/demo", "demo 1.0\n"),
            ("usr/share/demo/dropped", "dropped\n"),
            ("usr/share/demo/becomes-link", "file\n"),
        ],
    );
    let v2 = build_demo(
        dir.path(),
        "2.0",
        &[
            ("usr/bin/demo", "demo 2.0\n"),
            ("usr/share/demo/added", "added\n"),
            ("usr/share/demo/becomes-link", "->added"),
        ],
    );
    let v3 = build_demo(
        dir.path(),
        "1:3.0",
        &[
            ("usr/bin/demo", "demo 3.0\n"),
            ("usr/share/demo/added", "added in 3\n"),
            ("usr/share/demo/becomes-link", "->added"),
        ],
    );
    Demo {
        _dir: dir,
        v1,
        v2,
        v3,
    }
}

/// Starts a registry holding the distroless image built from `v1` as `distroless:base`.
fn registry_with_image(v1: &Path) -> (Registry, String) {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("rootfs");
    distroless_rootfs(&root, v1);
    let layout = work.path().join("layout");
    write_layout(&root, &layout);
    let registry = Registry::start();
    push_layout(
        &layout,
        LAYOUT_TAG,
        &registry,
        &format!("{REPOSITORY}:{LAYOUT_TAG}"),
        ManifestFormat::Oci,
    );
    let image = registry.image(&format!("{REPOSITORY}:{LAYOUT_TAG}"));
    (registry, image)
}

fn config_of(registry: &Registry, tag: &str) -> Value {
    let manifest = registry.manifest(REPOSITORY, tag).unwrap();
    registry.config(REPOSITORY, &manifest)
}

fn layer_digests(registry: &Registry, tag: &str) -> Vec<String> {
    let manifest = registry.manifest(REPOSITORY, tag).unwrap();
    manifest
        .layers()
        .iter()
        .map(|layer| layer["digest"].as_str().unwrap().to_owned())
        .collect()
}

fn unpacked(registry: &Registry, tag: &str) -> tempfile::TempDir {
    let bundle = tempfile::tempdir().unwrap();
    let target = bundle.path().join("bundle");
    umoci_unpack(registry, &format!("{REPOSITORY}:{tag}"), &target);
    bundle
}

#[test]
fn image_without_sources_names_flags() {
    let demo = demo_packages();
    let (_registry, image) = registry_with_image(&demo.v1);
    let outcome = layermend(&["patch", "-i", &image]);
    assert_eq!(outcome.code, 2, "user error expected\n{outcome}");
    assert!(
        outcome.stderr.contains("--apt-source 'deb [signed-by="),
        "{outcome}"
    );
    assert!(outcome.stderr.contains("--keyring"), "{outcome}");
}

#[test]
fn repatch_replaces_layer_with_newest() {
    let demo = demo_packages();
    let (registry, image) = registry_with_image(&demo.v1);
    let repo = SignedRepo::new();

    // First patch: update-all (no -r) from a repository with 2.0.
    let source_v2 = repo.publish("v2", &[&demo.v2]);
    let first = layermend(&[
        "patch",
        "-i",
        &image,
        "-t",
        "first",
        "--apt-source",
        &source_v2,
    ]);
    assert_eq!(first.code, 0, "first patch\n{first}");
    assert!(
        first.stdout.contains("1 package(s) updated: demo"),
        "{first}"
    );
    let base_layers = layer_digests(&registry, LAYOUT_TAG);
    let first_layers = layer_digests(&registry, "first");
    assert_eq!(first_layers.len(), base_layers.len() + 1);

    let bundle = unpacked(&registry, "first");
    let rootfs = bundle.path().join("bundle/rootfs");
    let status_dir = rootfs.join("var/lib/dpkg/status.d");
    let stanza = fs_err::read_to_string(status_dir.join("demo1")).unwrap();
    assert!(stanza.contains("Version: 2.0\n"), "{stanza}");
    assert!(
        !stanza.contains("Status:"),
        "the image's stanzas have no Status"
    );
    assert!(
        !status_dir.join("demo").exists(),
        "stanza stays in its own file"
    );
    assert!(status_dir.join("base").exists());
    assert!(!rootfs.join("var/lib/dpkg/status").exists());
    assert!(!rootfs.join("var/lib/dpkg/info").exists());
    let md5sums = fs_err::read_to_string(status_dir.join("demo1.md5sums")).unwrap();
    assert!(md5sums.contains("usr/share/demo/added"), "{md5sums}");
    assert!(!md5sums.contains("dropped"), "{md5sums}");
    assert!(!rootfs.join("usr/share/demo/dropped").exists());
    assert_eq!(
        fs_err::read_link(rootfs.join("usr/share/demo/becomes-link")).unwrap(),
        Path::new("added")
    );

    // Second patch of the patched image: a newer version is available.
    let source_v3 = repo.publish("v3", &[&demo.v2, &demo.v3]);
    let second = layermend(&[
        "patch",
        "-i",
        &registry.image(&format!("{REPOSITORY}:first")),
        "-t",
        "second",
        "--apt-source",
        &source_v3,
    ]);
    assert_eq!(second.code, 0, "second patch\n{second}");
    let second_layers = layer_digests(&registry, "second");
    assert_eq!(
        second_layers.len(),
        base_layers.len() + 1,
        "one patch layer"
    );
    assert_eq!(second_layers[..base_layers.len()], base_layers[..]);
    let config = config_of(&registry, "second");
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        base_layers.len() + 1
    );
    assert_eq!(
        config["history"].as_array().unwrap().len(),
        base_layers.len() + 1
    );
    let record = config["config"]["Labels"]["dev.layermend.patch"]
        .as_str()
        .unwrap();
    assert!(record.contains("1:3.0"), "{record}");

    // A single patch of the original image straight to 1:3.0 gives the same layer.
    let direct = layermend(&[
        "patch",
        "-i",
        &image,
        "-t",
        "direct",
        "--apt-source",
        &source_v3,
    ]);
    assert_eq!(direct.code, 0, "direct patch\n{direct}");
    assert_eq!(layer_digests(&registry, "direct"), second_layers);
    let second_tree = unpacked(&registry, "second");
    let direct_tree = unpacked(&registry, "direct");
    let listing = |dir: &Path| {
        run(Command::new("sh")
            .arg("-c")
            .arg("cd \"$1\" && find . -printf '%p %y %m %l\\n' | sort && find . -type f -exec md5sum {} + | sort")
            .arg("sh")
            .arg(dir.join("bundle/rootfs")))
        .stdout
    };
    assert_eq!(listing(second_tree.path()), listing(direct_tree.path()));

    // Nothing new: exit 3 and the tag is not pushed.
    let again = layermend(&[
        "patch",
        "-i",
        &registry.image(&format!("{REPOSITORY}:second")),
        "-t",
        "third",
        "--apt-source",
        &source_v3,
    ]);
    assert_eq!(again.code, 3, "nothing to patch\n{again}");
    assert!(registry.manifest(REPOSITORY, "third").is_none());
}
