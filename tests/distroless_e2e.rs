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

use common::{
    BookwormFixture, ManifestFormat, Registry, bookworm_fixture, layermend, oracle_rootfs,
    push_layout, require_tool, run, security_fixture, umoci_unpack,
};

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

/// Library packages of the bookworm fixture that bookworm-security updates; the
/// distroless image is built from their archive .debs, plus `libc6` they depend on.
const REAL_LIBRARIES: &[&str] = &["zlib1g", "libzstd1", "liblzma5", "libpcre2-8-0"];

/// Fetches the .deb of `package` at the version the bookworm fixture has installed from
/// the fixture's mirror, and checks its files against the fixture's dpkg md5sums.
fn fetch_installed_deb(fixture: &BookwormFixture, package: &str, dir: &Path) -> PathBuf {
    let admindir = fixture.rootfs.join("var/lib/dpkg");
    let query = run(Command::new("dpkg-query")
        .arg(format!("--admindir={}", admindir.display()))
        .args([
            "-W",
            "-f",
            "${Version} ${source:Package} ${Architecture}",
            package,
        ]));
    let fields = String::from_utf8(query.stdout).unwrap();
    let mut fields = fields.split_whitespace();
    let (version, source, arch) = (
        fields.next().unwrap(),
        fields.next().unwrap(),
        fields.next().unwrap(),
    );
    // Debian's pool layout: pool/main/PREFIX/SOURCE/, where PREFIX is `libX` for
    // sources starting with `lib`, else the first letter. File names drop the epoch.
    let prefix = if source.starts_with("lib") && source.len() > 3 {
        &source[..4]
    } else {
        &source[..1]
    };
    let file_version = version.split_once(':').map_or(version, |(_, rest)| rest);
    let name = format!("{package}_{file_version}_{arch}.deb");
    let url = format!(
        "{}/pool/main/{prefix}/{source}/{name}",
        fixture.env["MIRROR"]
    );
    let deb = dir.join(&name);
    run(Command::new("curl")
        .args(["-fsS", "--retry", "3", "-o"])
        .arg(&deb)
        .arg(&url));

    let extracted = dir.join(format!("{package}-check"));
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted));
    let md5sums = fs_err::read_to_string(admindir.join(format!("info/{package}.md5sums")))
        .or_else(|_| {
            fs_err::read_to_string(admindir.join(format!("info/{package}:{arch}.md5sums")))
        })
        .unwrap();
    for line in md5sums.lines() {
        let (md5, path) = line.split_once("  ").unwrap();
        let data = fs_err::read(extracted.join(path)).unwrap();
        assert_eq!(hex::encode(md5::Md5::digest(&data)), md5, "{url}: {path}");
    }
    deb
}

/// Builds a merged-/usr distroless root from real .debs: files extracted through the
/// `lib -> usr/lib` symlinks, `status.d/SOURCE` holding the control file (a name unlike
/// the package name) and `status.d/SOURCE.md5sums` the package's md5sums member.
fn real_distroless_rootfs(root: &Path, debs: &[PathBuf]) -> Vec<(String, String)> {
    fs_err::create_dir_all(root.join("usr/lib")).unwrap();
    fs_err::create_dir_all(root.join("usr/bin")).unwrap();
    fs_err::create_dir_all(root.join("usr/sbin")).unwrap();
    for dir in ["lib", "bin", "sbin"] {
        std::os::unix::fs::symlink(format!("usr/{dir}"), root.join(dir)).unwrap();
    }
    fs_err::create_dir_all(root.join("etc")).unwrap();
    fs_err::write(
        root.join("etc/os-release"),
        "PRETTY_NAME=\"Distroless\"\nID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
    )
    .unwrap();
    let status_dir = root.join("var/lib/dpkg/status.d");
    fs_err::create_dir_all(&status_dir).unwrap();
    let mut files = Vec::new();
    for deb in debs {
        let extract = "dpkg-deb --fsys-tarfile \"$1\" | tar -x --keep-directory-symlink -C \"$2\"";
        run(Command::new("sh")
            .arg("-c")
            .arg(extract)
            .arg("sh")
            .arg(deb)
            .arg(root));
        let field = |name: &str| {
            let output = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name));
            String::from_utf8(output.stdout).unwrap().trim().to_owned()
        };
        let package = field("Package");
        let source = field("Source");
        let file = source
            .split_whitespace()
            .next()
            .unwrap_or(&package)
            .to_owned();
        let file = if file.is_empty() {
            package.clone()
        } else {
            file
        };
        let control = run(Command::new("dpkg-deb").arg("-f").arg(deb));
        fs_err::write(status_dir.join(&file), control.stdout).unwrap();
        let md5sums = run(Command::new("sh")
            .arg("-c")
            .arg("dpkg-deb --ctrl-tarfile \"$1\" | tar -xO ./md5sums")
            .arg("sh")
            .arg(deb));
        fs_err::write(status_dir.join(format!("{file}.md5sums")), md5sums.stdout).unwrap();
        files.push((package, file));
    }
    files
}

/// Reads `info/PACKAGE.SUFFIX` of the oracle, or `info/PACKAGE:amd64.SUFFIX` for a
/// `Multi-Arch: same` package.
fn oracle_info(oracle: &Path, package: &str, suffix: &str) -> String {
    let info = oracle.join("var/lib/dpkg/info");
    let plain = info.join(format!("{package}.{suffix}"));
    let path = if plain.exists() {
        plain
    } else {
        info.join(format!("{package}:amd64.{suffix}"))
    };
    fs_err::read_to_string(path).unwrap()
}

/// Returns the stanza of `package` in a dpkg status file, without its `Status` line.
fn oracle_stanza(status: &str, package: &str) -> String {
    let start = status
        .find(&format!("Package: {package}\n"))
        .unwrap_or_else(|| panic!("{package} not in the oracle status"));
    let stanza = &status[start..];
    let stanza = &stanza[..stanza.find("\n\n").map_or(stanza.len(), |end| end + 1)];
    stanza
        .lines()
        .filter(|line| !line.starts_with("Status:"))
        .map(|line| format!("{line}\n"))
        .collect()
}

#[test]
fn real_debs_patch_matches_oracle() {
    let fixture = bookworm_fixture();
    let security = security_fixture();
    let oracle = oracle_rootfs();
    let libraries: Vec<&str> = REAL_LIBRARIES
        .iter()
        .copied()
        .filter(|name| security.update(name).is_some())
        .collect();
    assert!(
        !libraries.is_empty(),
        "bookworm-security updates none of {REAL_LIBRARIES:?} any more"
    );

    let work = tempfile::tempdir().unwrap();
    let mut debs = vec![fetch_installed_deb(fixture, "libc6", work.path())];
    for library in &libraries {
        debs.push(fetch_installed_deb(fixture, library, work.path()));
    }
    let root = work.path().join("rootfs");
    let files = real_distroless_rootfs(&root, &debs);
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

    let source = format!(
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} bookworm-security main",
        fixture.env["SECURITY_MIRROR"]
    );
    let outcome = layermend(&[
        "patch",
        "-i",
        &registry.image(&format!("{REPOSITORY}:{LAYOUT_TAG}")),
        "-r",
        security.report.to_str().unwrap(),
        "-t",
        "patched",
        "--apt-source",
        &source,
    ]);
    assert_eq!(outcome.code, 0, "{outcome}");
    for library in &libraries {
        let fixed = &security.update(library).unwrap().fixed;
        assert!(
            outcome.stdout.contains(fixed.as_str()),
            "{library} {fixed} in the output\n{outcome}"
        );
    }

    let bundle = unpacked(&registry, "patched");
    let patched = bundle.path().join("bundle/rootfs");
    assert!(!patched.join("var/lib/dpkg/status").exists());
    assert!(!patched.join("var/lib/dpkg/info").exists());
    let oracle_status = fs_err::read_to_string(oracle.join("var/lib/dpkg/status")).unwrap();
    for (package, file) in &files {
        let stanza =
            fs_err::read_to_string(patched.join(format!("var/lib/dpkg/status.d/{file}"))).unwrap();
        if !libraries.contains(&package.as_str()) {
            assert!(!stanza.contains("Status:"), "{package} left as it was");
            continue;
        }
        assert_eq!(
            stanza,
            oracle_stanza(&oracle_status, package),
            "stanza of {package}"
        );
        let md5sums =
            fs_err::read_to_string(patched.join(format!("var/lib/dpkg/status.d/{file}.md5sums")))
                .unwrap();
        let oracle_md5sums = oracle_info(oracle, package, "md5sums");
        assert_eq!(md5sums, oracle_md5sums, "md5sums of {package}");
        let list = oracle_info(oracle, package, "list");
        for path in list.lines().filter(|p| *p != "/.") {
            let ours_path = common::tree::resolve_in_root(&patched, path);
            let theirs_path = common::tree::resolve_in_root(oracle, path);
            let theirs = common::tree::file_state(oracle, &theirs_path);
            if matches!(theirs, common::tree::FileState::Directory { .. }) {
                continue;
            }
            let ours = common::tree::file_state(&patched, &ours_path);
            assert_eq!(ours, theirs, "{package}: {path}");
        }
    }
}

/// Builds an Ubuntu-style root: `os-release` of Ubuntu 22.04, a dpkg `status` file, and
/// a deb822 `ubuntu.sources` whose `Signed-By` keyring is inside the image.
fn ubuntu_rootfs(root: &Path, deb: &Path, repo: &SignedRepo, suite: &str) {
    fs_err::create_dir_all(root.join("etc/apt/sources.list.d")).unwrap();
    fs_err::write(
        root.join("etc/os-release"),
        "PRETTY_NAME=\"Ubuntu 22.04.5 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"22.04\"\nID=ubuntu\n\
         ID_LIKE=debian\nVERSION_CODENAME=jammy\n",
    )
    .unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root));
    fs_err::create_dir_all(root.join("usr/share/keyrings")).unwrap();
    fs_err::copy(
        &repo.keyring,
        root.join("usr/share/keyrings/test-archive-keyring.gpg"),
    )
    .unwrap();
    fs_err::write(
        root.join("etc/apt/sources.list.d/ubuntu.sources"),
        format!(
            "Types: deb\nURIs: file://{}\nSuites: {suite}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/test-archive-keyring.gpg\n",
            repo.dir.path().join("repo").display()
        ),
    )
    .unwrap();
    let control = run(Command::new("dpkg-deb").arg("-f").arg(deb));
    let control = String::from_utf8(control.stdout).unwrap();
    let stanza = control.replacen("Version:", "Status: install ok installed\nVersion:", 1);
    fs_err::create_dir_all(root.join("var/lib/dpkg")).unwrap();
    fs_err::write(root.join("var/lib/dpkg/status"), format!("{stanza}\n")).unwrap();
}

#[test]
fn ubuntu_image_uses_its_deb822_sources() {
    let demo = demo_packages();
    let repo = SignedRepo::new();
    repo.publish("jammy-updates", &[&demo.v2]);
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("rootfs");
    ubuntu_rootfs(&root, &demo.v1, &repo, "jammy-updates");
    let layout = work.path().join("layout");
    write_layout(&root, &layout);
    let registry = Registry::start();
    push_layout(
        &layout,
        LAYOUT_TAG,
        &registry,
        "ubuntu:jammy",
        ManifestFormat::Oci,
    );

    let outcome = layermend(&["patch", "-i", &registry.image("ubuntu:jammy")]);
    assert_eq!(outcome.code, 0, "{outcome}");
    assert!(
        outcome.stdout.contains("1 package(s) updated: demo"),
        "{outcome}"
    );
    let bundle = tempfile::tempdir().unwrap();
    umoci_unpack(&registry, "ubuntu:jammy-patched", &bundle.path().join("b"));
    let status =
        fs_err::read_to_string(bundle.path().join("b/rootfs/var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Version: 2.0\n"), "{status}");
    assert!(
        status.contains("Status: install ok installed\n"),
        "{status}"
    );
}
