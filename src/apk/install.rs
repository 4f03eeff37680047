//! The layer an apk upgrade leaves: the new packages' files, whiteouts for files only
//! the old versions owned, and the updated `lib/apk/db` (installed database, scripts
//! archive, triggers). Scripts are never run; they are reported.

use std::collections::BTreeSet;
use std::io::Read;

use sha1::{Digest as _, Sha1};

use super::index::IndexEntry;
use super::installed::{Field, InstalledDb, InstalledPackage};
use super::package::{self, ApkPackage, TarEntry};
use crate::layer::{EntryMeta, LayerBuilder};
use crate::rootfs::RootfsIndex;

const INSTALLED_PATH: &str = "lib/apk/db/installed";
const TRIGGERS_PATH: &str = "lib/apk/db/triggers";

/// An error while planning the layer.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "{package}: the downloaded package has checksum {actual}, but the index says {expected}"
    )]
    ChecksumMismatch {
        package: String,
        expected: String,
        actual: String,
    },
    #[error("failed to read the image's lib/apk/db/scripts archive")]
    Scripts(#[source] std::io::Error),
}

/// One package to install, already downloaded and read.
pub struct PackageToInstall<'a> {
    pub entry: &'a IndexEntry,
    pub package: &'a ApkPackage,
}

/// Scripts and triggers a package carries that apk-tools would have run.
#[derive(Debug, Clone, Default)]
pub struct ScriptsReport {
    pub package: String,
    pub scripts: Vec<String>,
    pub triggers: Vec<String>,
}

/// Adds the upgrade of `packages` to `layer`, with `mtime` for the database files, and
/// returns the scripts and triggers not run.
pub fn plan_layer(
    rootfs: &RootfsIndex,
    db: &mut InstalledDb,
    packages: &[PackageToInstall<'_>],
    layer: &mut LayerBuilder,
    mtime: u64,
) -> Result<Vec<ScriptsReport>, InstallError> {
    let mut reports = Vec::new();
    let mut triggers = rootfs
        .content(TRIGGERS_PATH)
        .map(|d| String::from_utf8_lossy(d).into_owned());
    let mut new_scripts: Vec<(String, Vec<u8>, Option<String>)> = Vec::new();
    for item in packages {
        let expected = item.entry.get('C').unwrap_or("");
        if item.package.checksum != expected {
            return Err(InstallError::ChecksumMismatch {
                package: format!("{} {}", item.entry.name(), item.entry.version()),
                expected: expected.to_owned(),
                actual: item.package.checksum.clone(),
            });
        }
        let old = db.package(item.entry.name()).cloned();
        let mut new_paths = BTreeSet::new();
        for file in &item.package.files {
            add_entry(rootfs, layer, file);
            new_paths.insert(file.path.clone());
        }
        if let Some(old) = &old {
            for file in old.files() {
                if !new_paths.contains(&file.path) {
                    layer.add_whiteout(&rootfs.resolve_parent(&file.path), mtime);
                }
            }
        }
        let stanza = stanza(item.entry, item.package);
        db.replace(item.entry.name(), stanza);

        // Scripts go into the scripts archive as NAME-VERSION.X1<hex SHA-1>.TYPE, the
        // name apk-tools 3.0.8 gives them.
        let hex_id = base64_checksum_hex(&item.package.checksum);
        let mut report = ScriptsReport {
            package: item.entry.name().to_owned(),
            ..ScriptsReport::default()
        };
        for script in &item.package.scripts {
            let kind = script.path.trim_start_matches('.');
            report.scripts.push(kind.to_owned());
            let name = format!(
                "{}-{}.X1{}.{}",
                item.entry.name(),
                item.entry.version(),
                hex_id,
                kind
            );
            let old_prefix = old
                .as_ref()
                .map(|o| format!("{}-{}.", o.name(), o.version()));
            new_scripts.push((name, script.data.clone(), old_prefix));
        }
        let trigger_paths: Vec<String> = item
            .package
            .info("triggers")
            .map(|t| t.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        if let Some(text) = &mut triggers {
            let old_id = old.as_ref().and_then(|o| o.checksum().map(str::to_owned));
            let mut lines: Vec<String> = text
                .lines()
                .filter(|line| {
                    old_id
                        .as_deref()
                        .is_none_or(|id| !line.starts_with(&format!("{id} ")))
                })
                .map(str::to_owned)
                .collect();
            if !trigger_paths.is_empty() {
                lines.push(format!(
                    "{} {}",
                    item.package.checksum,
                    trigger_paths.join(" ")
                ));
            }
            *text = lines.iter().map(|l| format!("{l}\n")).collect();
        }
        report.triggers = trigger_paths;
        if !report.scripts.is_empty() || !report.triggers.is_empty() {
            reports.push(report);
        }
    }

    add_db_file(rootfs, layer, INSTALLED_PATH, db.to_bytes(), mtime);
    if let Some(text) = triggers
        && rootfs.content(TRIGGERS_PATH).map(<[u8]>::to_vec) != Some(text.clone().into_bytes())
    {
        add_db_file(rootfs, layer, TRIGGERS_PATH, text.into_bytes(), mtime);
    }
    if !new_scripts.is_empty() {
        update_scripts(rootfs, layer, &new_scripts, mtime)?;
    }
    Ok(reports)
}

fn base64_checksum_hex(checksum: &str) -> String {
    use base64::Engine as _;
    checksum
        .strip_prefix("Q1")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(hex::encode)
        .unwrap_or_default()
}

fn add_entry(rootfs: &RootfsIndex, layer: &mut LayerBuilder, file: &TarEntry) {
    let path = rootfs.resolve_parent(&file.path);
    let meta = EntryMeta {
        mode: file.mode & 0o7777,
        uid: file.uid,
        gid: file.gid,
        mtime: file.mtime,
    };
    match file.kind {
        tar::EntryType::Directory => {
            // Existing directories stay as they are: apk-tools keeps their metadata.
            if rootfs.get(&rootfs.resolve(&file.path)).is_none() {
                layer.add_dir(&path, meta);
            }
        }
        tar::EntryType::Symlink => {
            layer.add_symlink(&path, meta, file.link_target.as_deref().unwrap_or(""));
        }
        tar::EntryType::Link => {
            let target = rootfs.resolve_parent(file.link_target.as_deref().unwrap_or(""));
            layer.add_hardlink(&path, meta, &target);
        }
        _ => layer.add_bytes(&path, meta, file.data.clone()),
    }
}

fn add_db_file(
    rootfs: &RootfsIndex,
    layer: &mut LayerBuilder,
    path: &str,
    data: Vec<u8>,
    mtime: u64,
) {
    let (mode, uid, gid) = rootfs
        .get(path)
        .map_or((0o644, 0, 0), |info| (info.mode, info.uid, info.gid));
    layer.add_bytes(
        &rootfs.resolve_parent(path),
        EntryMeta {
            mode,
            uid,
            gid,
            mtime,
        },
        data,
    );
}

/// Builds the installed-database stanza of a new package: the index fields, then its
/// directories (`F:`, `M:` unless `0:0:755`) and files (`R:`, `a:` unless `0:0:644`,
/// `Z:`), grouped by directory in archive order as apk-tools writes them.
fn stanza(entry: &IndexEntry, package: &ApkPackage) -> InstalledPackage {
    const ORDER: &str = "CPVASITULomtckDpirq";
    let mut fields: Vec<Field> = Vec::new();
    for key in ORDER.chars() {
        if let Some(value) = entry.get(key) {
            fields.push(Field {
                key,
                value: value.to_owned(),
            });
        }
    }
    let mut groups: Vec<(String, Option<String>, Vec<&TarEntry>)> = Vec::new();
    for file in &package.files {
        if file.kind == tar::EntryType::Directory {
            let acl = acl(file, 0o755);
            groups.push((file.path.clone(), acl, Vec::new()));
            continue;
        }
        let dir = file.path.rsplit_once('/').map_or("", |(d, _)| d);
        match groups.iter_mut().rev().find(|(d, _, _)| d == dir) {
            Some(group) => group.2.push(file),
            None => groups.push((dir.to_owned(), None, vec![file])),
        }
    }
    let push =
        |fields: &mut Vec<Field>, key: char, value: String| fields.push(Field { key, value });
    for (dir, dir_acl, files) in groups {
        push(&mut fields, 'F', dir);
        if let Some(acl) = dir_acl {
            push(&mut fields, 'M', acl);
        }
        for file in files {
            let name = file
                .path
                .rsplit_once('/')
                .map_or(file.path.as_str(), |(_, n)| n);
            push(&mut fields, 'R', name.to_owned());
            if let Some(acl) = acl(file, 0o644) {
                push(&mut fields, 'a', acl);
            }
            let checksum = file
                .sha1_hex
                .as_deref()
                .and_then(package::q1_from_hex)
                .unwrap_or_else(|| {
                    let content = file
                        .link_target
                        .as_deref()
                        .map_or(&file.data[..], str::as_bytes);
                    package::q1_checksum(&Sha1::digest(content))
                });
            push(&mut fields, 'Z', checksum);
        }
    }
    InstalledPackage { fields }
}

fn acl(file: &TarEntry, default_mode: u32) -> Option<String> {
    let mode = file.mode & 0o7777;
    (file.uid != 0 || file.gid != 0 || mode != default_mode)
        .then(|| format!("{}:{}:{:o}", file.uid, file.gid, mode))
}

/// Rewrites the scripts archive (`scripts.tar`, else `scripts.tar.gz`, as apk-tools
/// reads them): the old versions' entries go, the new ones are appended.
fn update_scripts(
    rootfs: &RootfsIndex,
    layer: &mut LayerBuilder,
    scripts: &[(String, Vec<u8>, Option<String>)],
    mtime: u64,
) -> Result<(), InstallError> {
    let (path, gzip) = if rootfs.get("lib/apk/db/scripts.tar").is_some() {
        ("lib/apk/db/scripts.tar", false)
    } else {
        ("lib/apk/db/scripts.tar.gz", true)
    };
    let mut existing = Vec::new();
    if let Some(data) = rootfs.content(path) {
        if gzip {
            flate2::read::MultiGzDecoder::new(data)
                .read_to_end(&mut existing)
                .map_err(InstallError::Scripts)?;
        } else {
            existing = data.to_vec();
        }
    }
    let entries = package::read_tar(&existing, path)
        .map_err(|e| InstallError::Scripts(std::io::Error::other(e)))?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut append = |name: &str, data: &[u8], mode: u32, entry_mtime: u64| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(entry_mtime);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, data)
    };
    for entry in &entries {
        let replaced = scripts.iter().any(|(_, _, old)| {
            old.as_ref()
                .is_some_and(|prefix| entry.path.starts_with(prefix.as_str()))
        });
        if !replaced {
            append(&entry.path, &entry.data, entry.mode, entry.mtime)
                .map_err(InstallError::Scripts)?;
        }
    }
    for (name, data, _) in scripts {
        append(name, data, 0o755, mtime).map_err(InstallError::Scripts)?;
    }
    let mut tar_bytes = builder.into_inner().map_err(InstallError::Scripts)?;
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut encoder, &tar_bytes).map_err(InstallError::Scripts)?;
        tar_bytes = encoder.finish().map_err(InstallError::Scripts)?;
    }
    add_db_file(rootfs, layer, path, tar_bytes, mtime);
    Ok(())
}
