//! Turning a set of .debs into the filesystem changes `dpkg --force-confold -i` makes.
//!
//! [`plan_layer`] reads the image's dpkg database from a [`RootfsIndex`], unpacks each
//! package into a [`LayerBuilder`] and records what dpkg would record, without running
//! maintainer scripts. Every path goes through the image's symlinks first, so a package's
//! `/lib/x.so` lands at `usr/lib/x.so` in a merged-`/usr` image, as dpkg writes it.
//!
//! The layer carries the package files, whiteouts for files the new versions dropped,
//! `var/lib/dpkg/info/` files and the updated status database. It leaves out the files
//! only dpkg's own bookkeeping touches: `status-old`, `available`, `diversions-old`,
//! `triggers/` (trigger state), `updates/` (journal) and the lock files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read};
use std::path::PathBuf;

use md5::{Digest as _, Md5};

use crate::deb::debfile::{DebError, DebFile};
use crate::deb::status::{
    Conffile, InstalledPackage, StanzaLocation, StatusError, StatusStore, installed_stanza,
};
use crate::layer::{EntryMeta, LayerBuilder, LayerError};
use crate::rootfs::{FileInfo, FileKind, RootfsIndex, normalize};

const INFO_DIR: &str = "var/lib/dpkg/info";
const DIVERSIONS_PATH: &str = "var/lib/dpkg/diversions";

/// An error planning the layer.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("{path} contains package {found}, expected {expected}")]
    WrongPackage {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("failed to read {path:?} from {deb}")]
    ReadEntry {
        deb: PathBuf,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// A package to install, in install order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageToInstall {
    pub deb_path: PathBuf,
    pub name: String,
    pub arch: String,
    /// Set when the image has no version of this package yet.
    pub new: bool,
}

/// Settings of [`plan_layer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstallOptions {
    /// Modification time, in seconds since the epoch, of the files this code writes
    /// itself (`.list`, generated `.md5sums`, the status database, whiteouts).
    pub mtime: u64,
}

/// The outcome of installing one package, with the work left undone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackageReport {
    pub name: String,
    pub arch: String,
    pub old_version: Option<String>,
    pub new_version: String,
    /// Maintainer scripts dpkg would have run, such as `preinst` or `old prerm`.
    pub scripts_not_run: Vec<String>,
    /// The lines of the package's `triggers` file (`interest ...`, `activate ...`).
    // NOTE: triggers that other packages declare on paths this package ships are not
    // looked up.
    pub triggers: Vec<String>,
    /// Conffiles whose image version was kept, with the package's version written next
    /// to them as `PATH.dpkg-dist`.
    pub conffiles_kept: Vec<String>,
    /// Whiteouts written for files of the old version the new one no longer ships.
    pub whiteouts: usize,
    /// Data entries not reproduced (device files, FIFOs).
    pub skipped: Vec<String>,
    /// The location of the written status stanza.
    pub stanza: Option<StanzaLocation>,
}

/// The outcome of [`plan_layer`], one report per package in install order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallReport {
    pub packages: Vec<PackageReport>,
}

/// Plans the layer that installing `debs` (in order) on `rootfs` amounts to.
pub fn plan_layer(
    rootfs: &RootfsIndex,
    debs: &[PackageToInstall],
    options: InstallOptions,
) -> Result<(LayerBuilder, InstallReport), InstallError> {
    let mut planner = Planner::new(rootfs, options)?;
    let mut report = InstallReport::default();
    for package in debs {
        report.packages.push(planner.install(package)?);
    }
    planner.write_status()?;
    Ok((planner.layer, report))
}

/// A configuration file's state on the image.
enum Current {
    Missing,
    Md5(String),
    Unknown,
}

struct Planner<'a> {
    rootfs: &'a RootfsIndex,
    options: InstallOptions,
    layer: LayerBuilder,
    status: StatusStore,
    /// Whether `info/format` is 1, so `Multi-Arch: same` packages use `NAME:ARCH.*`.
    info_format_1: bool,
    /// Whether the image has `var/lib/dpkg/info` (distroless images do not).
    has_info_dir: bool,
    /// Package paths of each info name's `.list`.
    lists: HashMap<String, Vec<String>>,
    /// Info names owning each resolved path.
    owners: HashMap<String, BTreeSet<String>>,
    /// Diverted package path -> (divert-to path, diverting package or `:`).
    diversions: HashMap<String, (String, String)>,
}

impl<'a> Planner<'a> {
    fn new(rootfs: &'a RootfsIndex, options: InstallOptions) -> Result<Self, InstallError> {
        let status = StatusStore::load(rootfs)?;
        let info_format_1 = rootfs
            .content(&format!("{INFO_DIR}/format"))
            .is_some_and(|format| format.trim_ascii() == b"1");
        let mut planner = Planner {
            rootfs,
            options,
            layer: LayerBuilder::new(options.mtime),
            status,
            info_format_1,
            has_info_dir: rootfs.get(INFO_DIR).is_some(),
            lists: HashMap::new(),
            owners: HashMap::new(),
            diversions: parse_diversions(rootfs.content(DIVERSIONS_PATH).unwrap_or_default()),
        };
        let prefix = format!("{INFO_DIR}/");
        for (path, content) in rootfs.contents_under(&prefix) {
            if let Some(info_name) = path[prefix.len()..].strip_suffix(".list") {
                let paths = String::from_utf8_lossy(content)
                    .lines()
                    .map(str::to_owned)
                    .collect();
                planner.set_list(info_name, paths);
            }
        }
        planner.load_status_dir_lists();
        Ok(planner)
    }

    /// Takes the file lists of a `status.d/` database, which has no `.list` files, from
    /// its `NAME.md5sums` files. They name regular files only, so dropped directories and
    /// symlinks of such packages stay in the image.
    fn load_status_dir_lists(&mut self) {
        let StatusStore::Directory(dir) = &self.status else {
            return;
        };
        let mut lists = Vec::new();
        for (file, package) in dir.entries() {
            let Some(md5sums) = dir.md5sums(file) else {
                continue;
            };
            let info_name =
                self.info_name(&package.name, &package.arch, package.is_multi_arch_same());
            if self.lists.contains_key(&info_name) {
                continue;
            }
            let paths: Vec<String> = String::from_utf8_lossy(md5sums)
                .lines()
                .filter_map(|line| {
                    line.split_once("  ")
                        .map(|(_, path)| format!("/{}", normalize(path)))
                })
                .collect();
            lists.push((info_name, paths));
        }
        for (info_name, paths) in lists {
            self.set_list(&info_name, paths);
        }
    }

    /// Returns the conffiles the status database records for `old`. A `status.d/` stanza
    /// is a bare control file without `Conffiles`, so there the MD5s of the package's
    /// conffiles come from its `NAME.md5sums` file.
    fn recorded_conffiles(
        &self,
        old: &InstalledPackage,
        new_conffiles: &[(String, Vec<String>)],
    ) -> Vec<Conffile> {
        let StatusStore::Directory(dir) = &self.status else {
            return old.conffiles.clone();
        };
        if !old.conffiles.is_empty() {
            return old.conffiles.clone();
        }
        let Some(md5sums) = dir
            .file_of(&old.name, &old.arch)
            .and_then(|file| dir.md5sums(file))
        else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(md5sums);
        new_conffiles
            .iter()
            .filter_map(|(path, _)| {
                let md5 = text.lines().find_map(|line| {
                    let (md5, listed) = line.split_once("  ")?;
                    (format!("/{}", normalize(listed)) == *path).then(|| md5.to_owned())
                })?;
                Some(Conffile {
                    path: path.clone(),
                    md5,
                    obsolete: false,
                    remove_on_upgrade: false,
                })
            })
            .collect()
    }

    fn set_list(&mut self, info_name: &str, paths: Vec<String>) {
        if let Some(old) = self.lists.remove(info_name) {
            for path in old {
                if let Some(owners) = self.owners.get_mut(&self.rootfs.resolve_parent(&path)) {
                    owners.remove(info_name);
                }
            }
        }
        for path in &paths {
            self.owners
                .entry(self.rootfs.resolve_parent(path))
                .or_default()
                .insert(info_name.to_owned());
        }
        self.lists.insert(info_name.to_owned(), paths);
    }

    fn info_name(&self, name: &str, arch: &str, multi_arch_same: bool) -> String {
        if self.info_format_1 && multi_arch_same {
            format!("{name}:{arch}")
        } else {
            name.to_owned()
        }
    }

    fn image_meta(info: &FileInfo) -> EntryMeta {
        EntryMeta {
            mode: info.mode,
            uid: info.uid,
            gid: info.gid,
            mtime: info.mtime,
        }
    }

    /// Adds the image's existing ancestors of `resolved` with their own metadata, so the
    /// layer does not change them.
    fn keep_parents(&mut self, resolved: &str) {
        let mut end = 0;
        while let Some(offset) = resolved[end..].find('/') {
            end += offset;
            let ancestor = &resolved[..end];
            if self.layer.get(ancestor).is_none()
                && let Some(info) = self.rootfs.get(ancestor)
                && info.kind == FileKind::Directory
            {
                self.layer.add_dir(ancestor, Self::image_meta(info));
            }
            end += 1;
        }
    }

    fn install(&mut self, request: &PackageToInstall) -> Result<PackageReport, InstallError> {
        let deb = DebFile::open(&request.deb_path)?;
        if deb.name() != request.name {
            return Err(InstallError::WrongPackage {
                path: request.deb_path.clone(),
                expected: request.name.clone(),
                found: deb.name().to_owned(),
            });
        }
        let name = deb.name().to_owned();
        let arch = deb.architecture().to_owned();
        let multi_arch_same = deb.control().get("Multi-Arch") == Some("same");
        let info_name = self.info_name(&name, &arch, multi_arch_same);
        let old: Option<InstalledPackage> = self.status.find(&name, &arch).cloned();
        let old_info_name = old
            .as_ref()
            .map(|old| self.info_name(&name, &old.arch, old.is_multi_arch_same()));
        tracing::debug!(package = %name, %arch, version = deb.version(), old = ?old.as_ref().map(|o| &o.version), "installing");

        let mut report = PackageReport {
            name: name.clone(),
            arch: arch.clone(),
            old_version: old.as_ref().map(|old| old.version.clone()),
            new_version: deb.version().to_owned(),
            ..PackageReport::default()
        };

        let new_conffiles = parse_conffiles_member(
            deb.member("conffiles")
                .map(|m| m.data.as_slice())
                .unwrap_or_default(),
        );
        let recorded = old
            .as_ref()
            .map(|old| self.recorded_conffiles(old, &new_conffiles))
            .unwrap_or_default();
        let old_conffiles: BTreeMap<&str, &Conffile> =
            recorded.iter().map(|c| (c.path.as_str(), c)).collect();

        let unpacked = self.unpack(&deb, &new_conffiles, &old_conffiles, &mut report)?;

        // Conffiles for the status stanza: the shipped ones, then the old ones the new
        // version dropped, which dpkg keeps on disk and marks obsolete.
        let mut conffiles = Vec::new();
        for (path, flags) in &new_conffiles {
            if flags.iter().any(|f| f == "remove-on-upgrade") {
                continue;
            }
            if let Some(md5) = unpacked.md5s.get(path) {
                conffiles.push(Conffile {
                    path: path.clone(),
                    md5: md5.clone(),
                    obsolete: false,
                    remove_on_upgrade: false,
                });
            }
        }
        let mut list = unpacked.list;
        for (path, old) in &old_conffiles {
            let dropped = !new_conffiles.iter().any(|(p, _)| p == path);
            if dropped && !old.remove_on_upgrade {
                conffiles.push(Conffile {
                    obsolete: true,
                    ..(*old).clone()
                });
                if !list.iter().any(|p| p == path) {
                    list.push((*path).to_owned());
                }
            }
        }
        for (path, flags) in &new_conffiles {
            if flags.iter().any(|f| f == "remove-on-upgrade") {
                let resolved = self.rootfs.resolve_parent(path);
                if self.rootfs.get(&resolved).is_some() {
                    self.layer.add_whiteout(&resolved, self.options.mtime);
                    report.whiteouts += 1;
                }
            }
        }

        let removal_exempt: BTreeSet<String> = conffiles.iter().map(|c| c.path.clone()).collect();
        if let Some(old_info_name) = &old_info_name {
            report.whiteouts +=
                self.remove_dropped(old_info_name, &list, &unpacked.resolved, &removal_exempt);
        }

        if self.has_info_dir {
            self.write_info(
                &deb,
                &info_name,
                old_info_name.as_deref(),
                &list,
                &unpacked.md5sums,
            )?;
        }
        self.set_list(&info_name, list);
        if let Some(old_info_name) = &old_info_name
            && old_info_name != &info_name
        {
            self.set_list(old_info_name, Vec::new());
        }

        let stanza = installed_stanza(deb.control(), "install ok installed", &conffiles);
        let location = self.status.put(&stanza)?;
        if let (StanzaLocation::StatusDir(file), StatusStore::Directory(dir)) =
            (&location, &mut self.status)
            && dir.wants_md5sums(file)
        {
            dir.put_md5sums(file, md5sums_member(&deb, &unpacked.md5sums));
        }
        report.stanza = Some(location);

        for script in ["preinst", "postinst"] {
            if deb.member(script).is_some() {
                report.scripts_not_run.push(script.to_owned());
            }
        }
        if let Some(old_info_name) = &old_info_name {
            for script in ["prerm", "postrm"] {
                let path = format!("{INFO_DIR}/{old_info_name}.{script}");
                if self.rootfs.get(&path).is_some() {
                    report.scripts_not_run.push(format!("old {script}"));
                }
            }
        }
        if let Some(triggers) = deb.member("triggers") {
            report.triggers = String::from_utf8_lossy(&triggers.data)
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned)
                .collect();
        }
        Ok(report)
    }

    /// Adds the data member's entries to the layer and returns the `.list` lines, the
    /// resolved paths written and the MD5 of every regular file.
    fn unpack(
        &mut self,
        deb: &DebFile,
        new_conffiles: &[(String, Vec<String>)],
        old_conffiles: &BTreeMap<&str, &Conffile>,
        report: &mut PackageReport,
    ) -> Result<Unpacked, InstallError> {
        let mut unpacked = Unpacked::default();
        let mut layer_paths: HashMap<String, String> = HashMap::new();
        let name = deb.name().to_owned();
        deb.for_each_data_entry(|entry, reader| -> Result<(), InstallError> {
            let package_path = format!("/{}", entry.path);
            unpacked.list.push(if entry.path.is_empty() {
                "/.".to_owned()
            } else {
                package_path.clone()
            });
            if entry.path.is_empty() {
                return Ok(());
            }
            let target = match self.diversions.get(&package_path) {
                Some((to, by)) if by != &name => to.clone(),
                _ => package_path.clone(),
            };
            let resolved = self.rootfs.resolve_parent(&target);
            self.keep_parents(&resolved);
            unpacked.resolved.insert(resolved.clone());
            layer_paths.insert(entry.path.clone(), resolved.clone());
            let meta = EntryMeta {
                mode: entry.mode,
                uid: entry.uid,
                gid: entry.gid,
                mtime: entry.mtime,
            };
            let read_error = |source| InstallError::ReadEntry {
                deb: deb.path().to_owned(),
                path: entry.path.clone(),
                source,
            };
            match &entry.kind {
                FileKind::Directory => match self.rootfs.get(&resolved) {
                    // dpkg keeps an existing directory, and a symlink standing where the
                    // package has a directory, as they are.
                    Some(info) if info.kind == FileKind::Directory => {
                        if self.layer.get(&resolved).is_none() {
                            self.layer.add_dir(&resolved, Self::image_meta(info));
                        }
                    }
                    Some(info) if matches!(info.kind, FileKind::Symlink(_)) => {}
                    _ => {
                        if self.layer.get(&resolved).is_none() {
                            self.layer.add_dir(&resolved, meta);
                        }
                    }
                },
                FileKind::Regular => {
                    let conffile = new_conffiles.iter().find(|(p, _)| p == &package_path);
                    if let Some((_, flags)) = conffile {
                        let mut data = Vec::with_capacity(entry.size as usize);
                        reader.read_to_end(&mut data).map_err(read_error)?;
                        let md5 = hex::encode(Md5::digest(&data));
                        unpacked.md5sums.push((entry.path.clone(), md5.clone()));
                        unpacked.md5s.insert(package_path.clone(), md5.clone());
                        if flags.iter().any(|f| f == "remove-on-upgrade") {
                            return Ok(());
                        }
                        let old_md5 = old_conffiles
                            .get(package_path.as_str())
                            .map(|c| c.md5.as_str())
                            .filter(|md5| *md5 != "newconffile");
                        let current = self.current_state(&resolved);
                        match conffile_action(&current, old_md5, &md5) {
                            ConffileAction::Install => self.layer.add_bytes(&resolved, meta, data),
                            ConffileAction::KeepCurrent => {}
                            ConffileAction::KeepCurrentWriteDist => {
                                report.conffiles_kept.push(package_path.clone());
                                self.layer
                                    .add_bytes(&format!("{resolved}.dpkg-dist"), meta, data);
                            }
                        }
                    } else {
                        let mut hashing = Md5Reader::new(reader);
                        self.layer
                            .add_file(&resolved, meta, entry.size, &mut hashing)?;
                        unpacked
                            .md5sums
                            .push((entry.path.clone(), hashing.finish()));
                    }
                }
                FileKind::Symlink(link) => self.layer.add_symlink(&resolved, meta, link),
                FileKind::Hardlink(link) => {
                    let link = layer_paths
                        .get(link)
                        .cloned()
                        .unwrap_or_else(|| self.rootfs.resolve_parent(link));
                    self.layer.add_hardlink(&resolved, meta, &link);
                }
                FileKind::Other => report.skipped.push(package_path.clone()),
            }
            Ok(())
        })?;
        Ok(unpacked)
    }

    fn current_state(&self, resolved: &str) -> Current {
        match self.rootfs.get(resolved) {
            None => Current::Missing,
            Some(FileInfo {
                kind: FileKind::Regular,
                md5: Some(md5),
                ..
            }) => Current::Md5(hex::encode(md5)),
            // NOTE: the image index hashes regular files under etc/ only; a conffile
            // elsewhere, or a symlink at a conffile path, counts as modified.
            Some(_) => Current::Unknown,
        }
    }

    /// Writes whiteouts for the old version's paths that nothing ships or owns any more
    /// and returns how many.
    fn remove_dropped(
        &mut self,
        old_info_name: &str,
        new_list: &[String],
        new_resolved: &BTreeSet<String>,
        exempt: &BTreeSet<String>,
    ) -> usize {
        let Some(old_list) = self.lists.get(old_info_name) else {
            return 0;
        };
        let new_paths: BTreeSet<&str> = new_list.iter().map(String::as_str).collect();
        let mut candidates: BTreeSet<String> = BTreeSet::new();
        for path in old_list {
            if path == "/." || new_paths.contains(path.as_str()) || exempt.contains(path) {
                continue;
            }
            let resolved = self.rootfs.resolve_parent(path);
            if resolved.is_empty() || new_resolved.contains(&resolved) {
                continue;
            }
            let owned_elsewhere = self
                .owners
                .get(&resolved)
                .is_some_and(|owners| owners.iter().any(|owner| owner != old_info_name));
            if !owned_elsewhere {
                candidates.insert(resolved);
            }
        }
        // Deepest paths first, so a directory is judged after its children, as dpkg
        // removes them.
        let mut removed: BTreeSet<String> = BTreeSet::new();
        for resolved in candidates.iter().rev() {
            let Some(info) = self.rootfs.get(resolved) else {
                continue;
            };
            if info.kind == FileKind::Directory {
                let image_children_gone = self
                    .rootfs
                    .children(resolved)
                    .all(|(child, _)| removed.contains(child));
                let prefix = format!("{resolved}/");
                let layer_adds_below = self.layer.entries().any(|(path, entry)| {
                    path.starts_with(&prefix)
                        && entry.content != crate::layer::EntryContent::Whiteout
                });
                if !image_children_gone || layer_adds_below {
                    continue;
                }
            }
            self.layer.add_whiteout(resolved, self.options.mtime);
            removed.insert(resolved.clone());
        }
        tracing::debug!(
            package = old_info_name,
            whiteouts = removed.len(),
            "dropped paths"
        );
        removed.len()
    }

    fn write_info(
        &mut self,
        deb: &DebFile,
        info_name: &str,
        old_info_name: Option<&str>,
        list: &[String],
        md5sums: &[(String, String)],
    ) -> Result<(), InstallError> {
        let info_dir = self.rootfs.resolve(INFO_DIR);
        self.keep_parents(&format!("{info_dir}/x"));
        let generated = EntryMeta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: self.options.mtime,
        };
        let mut written: BTreeSet<String> = BTreeSet::new();
        for (member, content) in deb.members() {
            if member == "control" || member.contains('/') {
                continue;
            }
            let path = format!("{info_dir}/{info_name}.{member}");
            let meta = EntryMeta {
                mode: content.mode & 0o7777,
                uid: 0,
                gid: 0,
                mtime: content.mtime,
            };
            self.layer.add_bytes(&path, meta, content.data.clone());
            written.insert(path);
        }
        let md5sums_path = format!("{info_dir}/{info_name}.md5sums");
        if !written.contains(&md5sums_path) {
            self.layer
                .add_bytes(&md5sums_path, generated, md5sums_member(deb, md5sums));
            written.insert(md5sums_path);
        }
        let list_path = format!("{info_dir}/{info_name}.list");
        let mut text = list.join("\n");
        text.push('\n');
        self.layer
            .add_bytes(&list_path, generated, text.into_bytes());
        written.insert(list_path);

        if let Some(old_info_name) = old_info_name {
            let stale: Vec<String> = self
                .rootfs
                .children(&info_dir)
                .map(|(path, _)| path)
                .filter(|path| {
                    let file = path.rsplit('/').next().unwrap_or_default();
                    file.rsplit_once('.')
                        .is_some_and(|(stem, _)| stem == old_info_name)
                })
                .filter(|path| !written.contains(*path))
                .map(str::to_owned)
                .collect();
            for path in stale {
                self.layer.add_whiteout(&path, self.options.mtime);
            }
        }
        Ok(())
    }

    fn write_status(&mut self) -> Result<(), InstallError> {
        for (path, bytes) in self.status.changed_files() {
            let resolved = self.rootfs.resolve_parent(&path);
            self.keep_parents(&resolved);
            let (mode, uid, gid) = match self.rootfs.get(&resolved) {
                Some(info) => (info.mode, info.uid, info.gid),
                None => (0o644, 0, 0),
            };
            let meta = EntryMeta {
                mode,
                uid,
                gid,
                mtime: self.options.mtime,
            };
            self.layer.add_bytes(&resolved, meta, bytes);
        }
        Ok(())
    }
}

#[derive(Default)]
struct Unpacked {
    /// `.list` lines in archive order.
    list: Vec<String>,
    /// Resolved layer paths of every entry.
    resolved: BTreeSet<String>,
    /// (package path without `/`, MD5) of regular files in archive order.
    md5sums: Vec<(String, String)>,
    /// MD5 of conffiles by package path.
    md5s: BTreeMap<String, String>,
}

#[derive(Debug, PartialEq, Eq)]
enum ConffileAction {
    Install,
    KeepCurrent,
    KeepCurrentWriteDist,
}

/// Decides a conffile as dpkg 1.21 does with `--force-confold`. `old_md5` is the MD5
/// recorded in the status database, `None` for a conffile new to the package.
///
/// Measured with real dpkg: a modified file is kept. The new one is written as
/// `.dpkg-dist` when the package changed it; a file the admin deleted stays deleted when
/// the package did not change it, and gets a `.dpkg-dist` when it did.
fn conffile_action(current: &Current, old_md5: Option<&str>, new_md5: &str) -> ConffileAction {
    match (current, old_md5) {
        (Current::Missing, None) => ConffileAction::Install,
        (Current::Missing, Some(old)) if old == new_md5 => ConffileAction::KeepCurrent,
        (Current::Missing, Some(_)) => ConffileAction::KeepCurrentWriteDist,
        (Current::Md5(current), _) if current == new_md5 => ConffileAction::Install,
        (Current::Md5(current), Some(old)) if current == old => ConffileAction::Install,
        (_, Some(old)) if old == new_md5 => ConffileAction::KeepCurrent,
        _ => ConffileAction::KeepCurrentWriteDist,
    }
}

/// Returns the package's `md5sums` member, or the text dpkg generates from the unpacked
/// regular files when the package ships none.
fn md5sums_member(deb: &DebFile, unpacked: &[(String, String)]) -> Vec<u8> {
    if let Some(member) = deb.member("md5sums") {
        return member.data.clone();
    }
    unpacked
        .iter()
        .map(|(path, md5)| format!("{md5}  {path}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Parses a `conffiles` control member: one path per line, optionally preceded by flags
/// such as `remove-on-upgrade`.
fn parse_conffiles_member(data: &[u8]) -> Vec<(String, Vec<String>)> {
    String::from_utf8_lossy(data)
        .lines()
        .filter_map(|line| {
            let mut words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            let path = words.pop()?;
            Some((format!("/{}", normalize(&path)), words))
        })
        .collect()
}

/// Parses `var/lib/dpkg/diversions`: groups of three lines (path, divert-to path,
/// diverting package or `:` for a local diversion).
fn parse_diversions(data: &[u8]) -> HashMap<String, (String, String)> {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks_exact(3)
        .map(|group| {
            (
                group[0].to_owned(),
                (group[1].to_owned(), group[2].to_owned()),
            )
        })
        .collect()
}

/// A reader that computes the MD5 of everything read through it.
struct Md5Reader<'r> {
    inner: &'r mut dyn Read,
    hasher: Md5,
}

impl<'r> Md5Reader<'r> {
    fn new(inner: &'r mut dyn Read) -> Self {
        Self {
            inner,
            hasher: Md5::new(),
        }
    }

    fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl Read for Md5Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::deb::debfile::tests::build_deb;

    /// Side files only dpkg's own bookkeeping writes; the layer leaves them out.
    const DPKG_SIDE_FILES: &[&str] = &[
        "var/lib/dpkg/status-old",
        "var/lib/dpkg/lock",
        "var/lib/dpkg/lock-frontend",
        "var/lib/dpkg/triggers",
        "var/lib/dpkg/updates",
    ];

    fn file_info(meta: &std::fs::Metadata, kind: FileKind, md5: Option<[u8; 16]>) -> FileInfo {
        FileInfo {
            kind,
            mode: meta.mode() & 0o7777,
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            mtime: meta.mtime() as u64,
            size: meta.len(),
            md5,
        }
    }

    /// Builds the index of a directory tree the way the image scan does: content of the
    /// dpkg database files, MD5 of regular files under etc/.
    fn snapshot(root: &Path) -> RootfsIndex {
        let mut index = RootfsIndex::default();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let relative = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    index.insert(&relative, file_info(&meta, FileKind::Directory, None), None);
                    pending.push(path);
                } else if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&path).unwrap();
                    let kind = FileKind::Symlink(target.to_string_lossy().into_owned());
                    index.insert(&relative, file_info(&meta, kind, None), None);
                } else {
                    let data = std::fs::read(&path).unwrap();
                    let md5 = relative
                        .starts_with("etc/")
                        .then(|| Md5::digest(&data).into());
                    let selected = relative.starts_with("var/lib/dpkg/");
                    let info = file_info(&meta, FileKind::Regular, md5);
                    index.insert(&relative, info, selected.then_some(data));
                }
            }
        }
        index
    }

    /// Applies a layer tarball to a directory, whiteouts included.
    fn apply(root: &Path, layer: &Path) {
        let file = std::fs::File::open(layer).unwrap();
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let name = normalize(&name);
            let target = root.join(&name);
            let file_name = target.file_name().unwrap().to_string_lossy().into_owned();
            if let Some(hidden) = file_name.strip_prefix(".wh.") {
                let hidden = target.with_file_name(hidden);
                let meta = std::fs::symlink_metadata(&hidden).unwrap();
                if meta.is_dir() {
                    std::fs::remove_dir_all(&hidden).unwrap();
                } else {
                    std::fs::remove_file(&hidden).unwrap();
                }
                continue;
            }
            if entry.header().entry_type() == tar::EntryType::Directory && target.is_dir() {
                continue;
            }
            if std::fs::symlink_metadata(&target).is_ok() {
                std::fs::remove_file(&target).unwrap();
            }
            entry.unpack(&target).unwrap();
        }
    }

    /// Lists (path, kind, mode, content or link target) of a tree, without dpkg's side
    /// files.
    fn tree(root: &Path) -> Vec<(String, String, u32, Vec<u8>)> {
        let output = Command::new("find")
            .arg(root)
            .arg("-mindepth")
            .arg("1")
            .output()
            .unwrap();
        let mut entries = Vec::new();
        for line in String::from_utf8(output.stdout).unwrap().lines() {
            let path = Path::new(line);
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if DPKG_SIDE_FILES
                .iter()
                .any(|side| relative.starts_with(side))
            {
                continue;
            }
            let meta = std::fs::symlink_metadata(path).unwrap();
            let (kind, content) = if meta.is_dir() {
                ("dir", Vec::new())
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(path).unwrap();
                (
                    "symlink",
                    target.to_string_lossy().into_owned().into_bytes(),
                )
            } else {
                ("file", std::fs::read(path).unwrap())
            };
            entries.push((relative, kind.to_owned(), meta.mode() & 0o7777, content));
        }
        entries.sort();
        entries
    }

    fn dpkg_install(root: &Path, debs: &[&Path]) {
        let output = Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--force-confold",
                "-i",
            ])
            .args(debs)
            .output()
            .expect("dpkg runs");
        assert!(
            output.status.success(),
            "dpkg -i failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn empty_root(root: &Path) {
        std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
        std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    }

    fn control(name: &str, version: &str) -> String {
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: T <t@example.org>\n\
             Installed-Size: 12\nHomepage: https://example.org/x\nDepends: libc6(>=2.34),  zlib1g | foo\n\
             Source: srcpkg (0.9)\nMulti-Arch: foreign\nPriority: optional\nSection: misc\n\
             Description: test package\n long line one\n .\n long line two\n"
        )
    }

    fn tpkg(dir: &Path, version: &str, extra: &[(&str, &str)]) -> PathBuf {
        let control = control("tpkg", version);
        let conf = format!("conf {version}\n");
        let mut files = vec![
            ("DEBIAN/control", control.as_str()),
            (
                "DEBIAN/conffiles",
                "/etc/foo/foo.conf\n/etc/foo/other.conf\n",
            ),
            ("DEBIAN/postinst", "#!/bin/sh\nexit 0\n"),
            ("etc/foo/foo.conf", conf.as_str()),
            ("etc/foo/other.conf", "conffile2\n"),
            ("lib/libfoo.so", "lib\n"),
            ("usr/share/doc/tpkg/README", "doc\n"),
        ];
        files.extend_from_slice(extra);
        build_deb(dir, &format!("tpkg-{version}"), &files, "xz")
    }

    #[test]
    fn upgrade_matches_real_dpkg() {
        let work = tempfile::tempdir().unwrap();
        let v1 = tpkg(work.path(), "1.0", &[("usr/share/doc/tpkg/OLD", "old\n")]);
        let v2 = tpkg(work.path(), "2.0", &[]);
        let new_control = control("apkg", "3.0");
        let apkg = build_deb(
            work.path(),
            "apkg",
            &[
                ("DEBIAN/control", new_control.as_str()),
                ("usr/bin/apkg", "tool\n"),
                ("usr/bin/apkg-alias", "->apkg"),
            ],
            "gzip",
        );

        let ours = work.path().join("ours");
        let theirs = work.path().join("theirs");
        empty_root(&ours);
        dpkg_install(&ours, &[&v1]);
        std::fs::write(ours.join("etc/foo/foo.conf"), "edited by admin\n").unwrap();
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&ours)
            .arg(&theirs)
            .status()
            .unwrap();
        assert!(copied.success());

        let index = snapshot(&ours);
        dpkg_install(&theirs, &[&v2, &apkg]);

        let requests = [
            PackageToInstall {
                deb_path: v2.clone(),
                name: "tpkg".into(),
                arch: "amd64".into(),
                new: false,
            },
            PackageToInstall {
                deb_path: apkg.clone(),
                name: "apkg".into(),
                arch: "amd64".into(),
                new: true,
            },
        ];
        let (layer, report) = plan_layer(&index, &requests, InstallOptions { mtime: 0 }).unwrap();

        assert!(
            layer.get("usr/lib/libfoo.so").is_some(),
            "written through lib -> usr/lib"
        );
        assert!(layer.get("lib").is_none(), "lib symlink left alone");
        assert!(layer.get("lib/libfoo.so").is_none());
        assert_eq!(
            layer.get("usr/share/doc/tpkg/OLD").unwrap().content,
            crate::layer::EntryContent::Whiteout
        );
        assert!(
            layer.get("etc/foo/foo.conf").is_none(),
            "modified conffile kept"
        );
        assert!(layer.get("etc/foo/foo.conf.dpkg-dist").is_some());

        let tpkg_report = &report.packages[0];
        assert_eq!(tpkg_report.old_version.as_deref(), Some("1.0"));
        assert_eq!(tpkg_report.conffiles_kept, ["/etc/foo/foo.conf"]);
        assert_eq!(tpkg_report.whiteouts, 1);
        assert_eq!(tpkg_report.scripts_not_run, ["postinst"]);
        assert_eq!(report.packages[1].old_version, None);

        let layer_dir = work.path().join("layer");
        std::fs::create_dir(&layer_dir).unwrap();
        let built = layer.finish(&layer_dir).unwrap();
        apply(&ours, &built.path);

        let ours_tree = tree(&ours);
        let theirs_tree = tree(&theirs);
        let ours_paths: Vec<&str> = ours_tree.iter().map(|e| e.0.as_str()).collect();
        let theirs_paths: Vec<&str> = theirs_tree.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(ours_paths, theirs_paths);
        for expected in [
            "var/lib/dpkg/status",
            "var/lib/dpkg/info/tpkg.list",
            "var/lib/dpkg/info/apkg.md5sums",
            "etc/foo/foo.conf.dpkg-dist",
            "usr/lib/libfoo.so",
            "usr/bin/apkg-alias",
        ] {
            assert!(theirs_paths.contains(&expected), "{expected} compared");
        }
        assert!(!theirs_paths.contains(&"usr/share/doc/tpkg/OLD"));
        for (ours, theirs) in ours_tree.iter().zip(&theirs_tree) {
            assert_eq!(
                String::from_utf8_lossy(&ours.3),
                String::from_utf8_lossy(&theirs.3),
                "content of {}",
                ours.0
            );
            assert_eq!(ours, theirs, "kind and mode of {}", ours.0);
        }
    }

    /// Writes `deb`'s files and a distroless-style `status.d/FILE` (the control file) and
    /// `status.d/FILE.md5sums` (every regular file) into `root`.
    fn distroless_install(root: &Path, deb: &Path, file: &str) {
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(root)
            .status()
            .unwrap();
        assert!(status.success());
        let control = Command::new("dpkg-deb")
            .arg("-f")
            .arg(deb)
            .output()
            .unwrap();
        let dir = root.join("var/lib/dpkg/status.d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), control.stdout).unwrap();
        let listing = Command::new("dpkg-deb")
            .arg("-c")
            .arg(deb)
            .output()
            .unwrap();
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
            let data = std::fs::read(root.join(path)).unwrap();
            md5sums.push_str(&format!("{}  {path}\n", hex::encode(Md5::digest(&data))));
        }
        std::fs::write(dir.join(format!("{file}.md5sums")), md5sums).unwrap();
    }

    fn plain_root(root: &Path, dpkg_db: bool) {
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        if dpkg_db {
            std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
            std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
            std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
        }
    }

    #[test]
    fn status_dir_upgrade_matches_dpkg() {
        let work = tempfile::tempdir().unwrap();
        let v1 = tpkg(work.path(), "1.0", &[("usr/share/doc/tpkg/OLD", "old\n")]);
        let v2 = tpkg(work.path(), "2.0", &[("usr/share/doc/tpkg/NEW", "new\n")]);

        let ours = work.path().join("ours");
        plain_root(&ours, false);
        distroless_install(&ours, &v1, "tpkg1");
        let other = "Package: other\nVersion: 1\nArchitecture: all\nMaintainer: T <t@example.org>\nDescription: x\n";
        std::fs::write(ours.join("var/lib/dpkg/status.d/other"), other).unwrap();
        let index = snapshot(&ours);

        let theirs = work.path().join("theirs");
        plain_root(&theirs, true);
        dpkg_install(&theirs, &[&v1]);
        dpkg_install(&theirs, &[&v2]);

        let request = PackageToInstall {
            deb_path: v2.clone(),
            name: "tpkg".into(),
            arch: "amd64".into(),
            new: false,
        };
        let (layer, report) = plan_layer(&index, &[request], InstallOptions { mtime: 0 }).unwrap();
        assert_eq!(
            report.packages[0].stanza,
            Some(StanzaLocation::StatusDir("tpkg1".into()))
        );
        let layer_paths: Vec<&str> = layer.entries().map(|(path, _)| path).collect();
        assert!(
            !layer_paths
                .iter()
                .any(|p| p.starts_with("var/lib/dpkg/info"))
        );
        assert!(!layer_paths.contains(&"var/lib/dpkg/status"));
        assert!(!layer_paths.contains(&"var/lib/dpkg/status.d/other"));
        assert!(layer_paths.contains(&"var/lib/dpkg/status.d/tpkg1.md5sums"));

        let layer_dir = work.path().join("layer");
        std::fs::create_dir(&layer_dir).unwrap();
        let built = layer.finish(&layer_dir).unwrap();
        apply(&ours, &built.path);

        let outside_dpkg = |root: &Path| -> Vec<(String, String, u32, Vec<u8>)> {
            tree(root)
                .into_iter()
                .filter(|e| !e.0.starts_with("var/lib/dpkg"))
                .collect()
        };
        let ours_tree = outside_dpkg(&ours);
        let theirs_tree = outside_dpkg(&theirs);
        let paths = |t: &[(String, String, u32, Vec<u8>)]| -> Vec<String> {
            t.iter().map(|e| e.0.clone()).collect()
        };
        assert_eq!(paths(&ours_tree), paths(&theirs_tree));
        assert!(!paths(&ours_tree).contains(&"usr/share/doc/tpkg/OLD".to_owned()));
        assert_eq!(ours_tree, theirs_tree);

        let status_dir = ours.join("var/lib/dpkg/status.d");
        assert_eq!(
            std::fs::read_to_string(status_dir.join("other")).unwrap(),
            other
        );
        assert!(!ours.join("var/lib/dpkg/status").exists());
        assert!(!ours.join("var/lib/dpkg/info").exists());
        let stanza = std::fs::read_to_string(status_dir.join("tpkg1")).unwrap();
        let dpkg_status = std::fs::read_to_string(theirs.join("var/lib/dpkg/status")).unwrap();
        let dpkg_stanza: String = dpkg_status
            .lines()
            .filter(|line| !line.starts_with("Status:"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(
            stanza.trim_end(),
            dpkg_stanza.trim_end(),
            "stanza without Status"
        );
        let md5sums = std::fs::read_to_string(status_dir.join("tpkg1.md5sums")).unwrap();
        let dpkg_md5sums =
            std::fs::read_to_string(theirs.join("var/lib/dpkg/info/tpkg.md5sums")).unwrap();
        assert_eq!(md5sums, dpkg_md5sums);
    }

    /// (path, kind, mode, content or link target) of one entry of [`tree`].
    type TreeEntry = (String, String, u32, Vec<u8>);

    /// Installs `old` with real dpkg, runs `prepare` on the root, then installs `new`
    /// once with dpkg and once through [`plan_layer`], and compares the two trees.
    fn compare_upgrade(
        work: &Path,
        old: &[&Path],
        new: &[(&Path, &str, &str)],
        prepare: impl Fn(&Path),
    ) -> (Vec<TreeEntry>, LayerBuilder) {
        let ours = work.join("ours");
        let theirs = work.join("theirs");
        plain_root(&ours, true);
        prepare(&ours);
        dpkg_install(&ours, old);
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&ours)
            .arg(&theirs)
            .status()
            .unwrap();
        assert!(copied.success());
        let index = snapshot(&ours);
        let debs: Vec<&Path> = new.iter().map(|(deb, _, _)| *deb).collect();
        dpkg_install(&theirs, &debs);

        let requests: Vec<PackageToInstall> = new
            .iter()
            .map(|(deb, name, arch)| PackageToInstall {
                deb_path: deb.to_path_buf(),
                name: (*name).into(),
                arch: (*arch).into(),
                new: false,
            })
            .collect();
        let (layer, _) = plan_layer(&index, &requests, InstallOptions { mtime: 0 }).unwrap();
        let kept = layer_copy(&layer);
        let layer_dir = work.join("layer");
        std::fs::create_dir(&layer_dir).unwrap();
        let built = layer.finish(&layer_dir).unwrap();
        apply(&ours, &built.path);
        let ours_tree = tree(&ours);
        let theirs_tree = tree(&theirs);
        let paths = |t: &[(String, String, u32, Vec<u8>)]| -> Vec<String> {
            t.iter().map(|e| e.0.clone()).collect()
        };
        assert_eq!(paths(&ours_tree), paths(&theirs_tree));
        for (ours, theirs) in ours_tree.iter().zip(&theirs_tree) {
            assert_eq!(
                String::from_utf8_lossy(&ours.3),
                String::from_utf8_lossy(&theirs.3),
                "content of {}",
                ours.0
            );
            assert_eq!(ours, theirs, "kind and mode of {}", ours.0);
        }
        (theirs_tree, kept)
    }

    /// The entry paths of a layer, kept as a builder for lookups after `finish`.
    fn layer_copy(layer: &LayerBuilder) -> LayerBuilder {
        let mut copy = LayerBuilder::new(0);
        for (path, entry) in layer.entries() {
            if entry.content == crate::layer::EntryContent::Whiteout {
                copy.add_whiteout(path, 0);
            } else {
                copy.add_dir(path, entry.meta);
            }
        }
        copy
    }

    #[test]
    fn diverted_file_written_where_dpkg_writes() {
        let work = tempfile::tempdir().unwrap();
        let v1 = tpkg(work.path(), "1.0", &[]);
        let v2 = tpkg(
            work.path(),
            "2.0",
            &[("usr/share/doc/tpkg/README", "doc 2\n")],
        );
        let (theirs, layer) =
            compare_upgrade(work.path(), &[&v1], &[(&v2, "tpkg", "amd64")], |root| {
                let status = Command::new("dpkg-divert")
                    .arg(format!("--root={}", root.display()))
                    .args([
                        "--local",
                        "--divert",
                        "/usr/share/doc/tpkg/README.distrib",
                        "--add",
                        "/usr/share/doc/tpkg/README",
                    ])
                    .output()
                    .unwrap();
                assert!(status.status.success(), "{status:?}");
            });
        assert!(layer.get("usr/share/doc/tpkg/README.distrib").is_some());
        assert!(layer.get("usr/share/doc/tpkg/README").is_none());
        assert!(
            theirs
                .iter()
                .any(|e| e.0 == "usr/share/doc/tpkg/README.distrib")
        );
    }

    fn multi_arch_deb(dir: &Path, arch: &str, version: &str) -> PathBuf {
        let triplet = if arch == "amd64" {
            "x86_64-linux-gnu"
        } else {
            "i386-linux-gnu"
        };
        let control = format!(
            "Package: mlib\nVersion: {version}\nArchitecture: {arch}\nMulti-Arch: same\n\
             Maintainer: T <t@example.org>\nDescription: multi-arch library\n"
        );
        let library = format!("usr/lib/{triplet}/libm.so");
        let readme = format!("shared {version}\n");
        build_deb(
            dir,
            &format!("mlib-{arch}-{version}"),
            &[
                ("DEBIAN/control", control.as_str()),
                (library.as_str(), version),
                ("usr/share/doc/mlib/README", readme.as_str()),
            ],
            "gzip",
        )
    }

    #[test]
    fn multi_arch_same_pair_matches_dpkg() {
        let work = tempfile::tempdir().unwrap();
        let old_amd64 = multi_arch_deb(work.path(), "amd64", "1.0");
        let old_i386 = multi_arch_deb(work.path(), "i386", "1.0");
        let new_amd64 = multi_arch_deb(work.path(), "amd64", "2.0");
        let new_i386 = multi_arch_deb(work.path(), "i386", "2.0");
        let (theirs, _) = compare_upgrade(
            work.path(),
            &[&old_amd64, &old_i386],
            &[(&new_amd64, "mlib", "amd64"), (&new_i386, "mlib", "i386")],
            |root| {
                let status = Command::new("dpkg")
                    .arg(format!("--root={}", root.display()))
                    .args(["--add-architecture", "i386"])
                    .status()
                    .unwrap();
                assert!(status.success());
            },
        );
        for expected in [
            "var/lib/dpkg/info/mlib:amd64.list",
            "var/lib/dpkg/info/mlib:i386.md5sums",
        ] {
            assert!(
                theirs.iter().any(|e| e.0 == expected),
                "{expected} compared"
            );
        }
    }

    #[test]
    fn dropped_conffile_becomes_obsolete() {
        let work = tempfile::tempdir().unwrap();
        let v1 = tpkg(work.path(), "1.0", &[]);
        let v2_control = control("tpkg", "2.0");
        let v2 = build_deb(
            work.path(),
            "tpkg-2.0-noother",
            &[
                ("DEBIAN/control", v2_control.as_str()),
                ("DEBIAN/conffiles", "/etc/foo/foo.conf\n"),
                ("etc/foo/foo.conf", "conf 2.0\n"),
            ],
            "gzip",
        );
        let root = work.path().join("root");
        empty_root(&root);
        dpkg_install(&root, &[&v1]);
        std::fs::remove_file(root.join("etc/foo/foo.conf")).unwrap();
        let index = snapshot(&root);
        dpkg_install(&root, &[&v2]);

        let request = PackageToInstall {
            deb_path: v2,
            name: "tpkg".into(),
            arch: "amd64".into(),
            new: false,
        };
        let (layer, _) = plan_layer(&index, &[request], InstallOptions::default()).unwrap();
        let real_status = std::fs::read(root.join("var/lib/dpkg/status")).unwrap();
        let crate::layer::EntryContent::Bytes(status) =
            &layer.get("var/lib/dpkg/status").unwrap().content
        else {
            panic!("status is not inline content");
        };
        assert_eq!(
            String::from_utf8_lossy(status),
            String::from_utf8_lossy(&real_status)
        );
        assert!(
            layer.get("etc/foo/other.conf").is_none(),
            "obsolete conffile left alone"
        );
        assert!(
            layer.get("etc/foo/foo.conf").is_none(),
            "deleted conffile stays deleted"
        );
        let crate::layer::EntryContent::Bytes(list) =
            &layer.get("var/lib/dpkg/info/tpkg.list").unwrap().content
        else {
            panic!("list is not inline content");
        };
        let real_list = std::fs::read(root.join("var/lib/dpkg/info/tpkg.list")).unwrap();
        assert_eq!(
            String::from_utf8_lossy(list),
            String::from_utf8_lossy(&real_list)
        );
    }

    fn dir_info() -> FileInfo {
        FileInfo {
            kind: FileKind::Directory,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 42,
            size: 0,
            md5: None,
        }
    }

    #[test]
    fn merged_usr_paths_resolve_through_symlinks() {
        let work = tempfile::tempdir().unwrap();
        let control = control("solib", "1.0");
        let deb = build_deb(
            work.path(),
            "solib",
            &[
                ("DEBIAN/control", control.as_str()),
                ("lib/foo.so", "elf\n"),
            ],
            "gzip",
        );
        let mut index = RootfsIndex::default();
        for dir in [
            "usr",
            "usr/lib",
            "var",
            "var/lib",
            "var/lib/dpkg",
            "var/lib/dpkg/info",
        ] {
            index.insert(dir, dir_info(), None);
        }
        let link = FileInfo {
            kind: FileKind::Symlink("usr/lib".into()),
            ..dir_info()
        };
        index.insert("lib", link, None);
        let status = FileInfo {
            kind: FileKind::Regular,
            mode: 0o644,
            ..dir_info()
        };
        index.insert("var/lib/dpkg/status", status.clone(), Some(Vec::new()));
        index.insert("var/lib/dpkg/info/format", status, Some(b"1\n".to_vec()));

        let request = PackageToInstall {
            deb_path: deb,
            name: "solib".into(),
            arch: "amd64".into(),
            new: true,
        };
        let (layer, _) = plan_layer(&index, &[request], InstallOptions::default()).unwrap();
        assert!(layer.get("usr/lib/foo.so").is_some());
        assert!(layer.get("lib").is_none());
        assert!(layer.get("lib/foo.so").is_none());
        assert_eq!(
            layer.get("usr/lib").unwrap().meta.mtime,
            42,
            "image dir kept"
        );
        let crate::layer::EntryContent::Bytes(list) =
            &layer.get("var/lib/dpkg/info/solib.list").unwrap().content
        else {
            panic!("list is not inline content");
        };
        assert_eq!(String::from_utf8_lossy(list), "/.\n/lib\n/lib/foo.so\n");
    }

    #[test]
    fn conffile_actions_follow_dpkg() {
        use ConffileAction::*;
        let md5 = |s: &str| Current::Md5(s.to_owned());
        assert_eq!(conffile_action(&md5("a"), Some("a"), "b"), Install);
        assert_eq!(
            conffile_action(&md5("x"), Some("a"), "b"),
            KeepCurrentWriteDist
        );
        assert_eq!(conffile_action(&md5("x"), Some("a"), "a"), KeepCurrent);
        assert_eq!(conffile_action(&md5("b"), Some("a"), "b"), Install);
        assert_eq!(
            conffile_action(&Current::Missing, Some("a"), "a"),
            KeepCurrent
        );
        assert_eq!(
            conffile_action(&Current::Missing, Some("a"), "b"),
            KeepCurrentWriteDist
        );
        assert_eq!(conffile_action(&Current::Missing, None, "b"), Install);
        assert_eq!(conffile_action(&md5("x"), None, "b"), KeepCurrentWriteDist);
    }
}
