//! The dpkg status database (`var/lib/dpkg/status`, or `var/lib/dpkg/status.d/` in
//! distroless images).
//!
//! The file is parsed losslessly: [`StatusDb::to_bytes`] returns the input byte for byte
//! except the stanzas replaced or inserted through [`StatusDb::put`]. New stanzas are
//! formatted as dpkg 1.21 writes them (see [`installed_stanza`]).

use std::collections::{BTreeMap, BTreeSet};

use deb822_lossless::Deb822;

use crate::deb::debfile::ControlFields;
use crate::rootfs::RootfsIndex;

/// The status file path inside a root filesystem.
pub const STATUS_PATH: &str = "var/lib/dpkg/status";
/// The one-stanza-per-package directory of distroless images.
pub const STATUS_DIR: &str = "var/lib/dpkg/status.d";

/// An error reading or updating the status database.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status database {path} is not valid UTF-8")]
    NotUtf8 { path: String },
    #[error("invalid stanza in {path}: {message}")]
    Parse { path: String, message: String },
    #[error("new status stanza is invalid: {message}")]
    InvalidStanza { message: String },
    #[error("the image has no dpkg status database ({STATUS_PATH} or {STATUS_DIR}/)")]
    Missing,
}

/// The `Status:` triple: selection (want), error flag and package state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusTriple {
    pub want: String,
    pub flag: String,
    pub status: String,
}

impl StatusTriple {
    fn parse(value: &str) -> Self {
        let mut words = value.split_whitespace();
        let mut next = || words.next().unwrap_or_default().to_owned();
        Self {
            want: next(),
            flag: next(),
            status: next(),
        }
    }
}

/// One `Conffiles:` line: a configuration file and the MD5 of the version the package
/// shipped when it was last installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conffile {
    /// Absolute path as the package names it (`/etc/foo.conf`).
    pub path: String,
    /// Hex MD5, or dpkg's placeholder `newconffile` during an unfinished install.
    pub md5: String,
    /// Set when the package no longer ships the file but dpkg keeps it on disk.
    pub obsolete: bool,
    /// Set when the package asked dpkg to delete the file on upgrade (dpkg 1.20).
    pub remove_on_upgrade: bool,
}

/// A package stanza of the status database as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPackage {
    pub name: String,
    pub arch: String,
    pub version: String,
    pub status: StatusTriple,
    pub multi_arch: Option<String>,
    /// The source package name; the binary name when the stanza has no `Source`.
    pub source: String,
    /// The source version; the binary version when `Source` has none.
    pub source_version: String,
    pub depends: Option<String>,
    pub pre_depends: Option<String>,
    pub breaks: Option<String>,
    pub provides: Option<String>,
    pub conffiles: Vec<Conffile>,
    pub essential: bool,
}

impl InstalledPackage {
    /// Returns whether dpkg names this package's info files `NAME:ARCH.*` in a format 1
    /// database, which it does for `Multi-Arch: same` packages only.
    pub fn is_multi_arch_same(&self) -> bool {
        self.multi_arch.as_deref() == Some("same")
    }

    fn from_paragraph(paragraph: &deb822_lossless::Paragraph) -> Result<Self, String> {
        let get = |key: &str| paragraph.get(key).map(|v| v.trim().to_owned());
        let name = get("Package").ok_or("stanza has no Package field")?;
        let version = get("Version").unwrap_or_default();
        let (source, source_version) = match get("Source") {
            Some(source) => match source.split_once('(') {
                Some((source_name, rest)) => (
                    source_name.trim().to_owned(),
                    rest.trim_end_matches(')').trim().to_owned(),
                ),
                None => (source, version.clone()),
            },
            None => (name.clone(), version.clone()),
        };
        let conffiles = paragraph
            .get("Conffiles")
            .map(|value| parse_conffiles(&value))
            .unwrap_or_default();
        Ok(Self {
            arch: get("Architecture").unwrap_or_default(),
            status: StatusTriple::parse(&get("Status").unwrap_or_default()),
            multi_arch: get("Multi-Arch"),
            depends: get("Depends"),
            pre_depends: get("Pre-Depends"),
            breaks: get("Breaks"),
            provides: get("Provides"),
            essential: get("Essential").is_some_and(|v| v.eq_ignore_ascii_case("yes")),
            name,
            version,
            source,
            source_version,
            conffiles,
        })
    }
}

fn parse_conffiles(value: &str) -> Vec<Conffile> {
    let mut conffiles = Vec::new();
    for line in value.lines() {
        let mut words = line.split_whitespace();
        let (Some(path), Some(md5)) = (words.next(), words.next()) else {
            continue;
        };
        let flags: Vec<&str> = words.collect();
        conffiles.push(Conffile {
            path: path.to_owned(),
            md5: md5.to_owned(),
            obsolete: flags.contains(&"obsolete"),
            remove_on_upgrade: flags.contains(&"remove-on-upgrade"),
        });
    }
    conffiles
}

#[derive(Debug, Clone)]
struct Stanza {
    /// The stanza's bytes, from its first field up to the blank line after it.
    text: String,
    package: InstalledPackage,
    /// The bytes between this stanza and the next (normally one `\n`).
    separator: String,
}

/// A status file: packages as values, bytes kept for everything not replaced.
#[derive(Debug, Clone, Default)]
pub struct StatusDb {
    prefix: String,
    stanzas: Vec<Stanza>,
}

impl StatusDb {
    /// Parses a status file; `origin` names it in errors.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Self, StatusError> {
        let text = std::str::from_utf8(bytes).map_err(|_| StatusError::NotUtf8 {
            path: origin.to_owned(),
        })?;
        let parse_error = |message: String| StatusError::Parse {
            path: origin.to_owned(),
            message,
        };
        let parsed = Deb822::parse(text);
        if let Some(error) = parsed.errors().first() {
            return Err(parse_error(error.clone()));
        }
        let tree = parsed.tree();
        let mut db = StatusDb::default();
        let mut cursor = 0usize;
        for paragraph in tree.paragraphs() {
            let range = paragraph.text_range();
            let (start, end) = (usize::from(range.start()), usize::from(range.end()));
            let between = &text[cursor..start];
            match db.stanzas.last_mut() {
                Some(previous) => previous.separator.push_str(between),
                None => db.prefix.push_str(between),
            }
            let package = InstalledPackage::from_paragraph(&paragraph)
                .map_err(|message| parse_error(format!("{message} at byte {start}")))?;
            db.stanzas.push(Stanza {
                text: text[start..end].to_owned(),
                package,
                separator: String::new(),
            });
            cursor = end;
        }
        match db.stanzas.last_mut() {
            Some(last) => last.separator.push_str(&text[cursor..]),
            None => db.prefix.push_str(&text[cursor..]),
        }
        Ok(db)
    }

    /// Iterates over every stanza's package, in file order.
    pub fn packages(&self) -> impl Iterator<Item = &InstalledPackage> {
        self.stanzas.iter().map(|stanza| &stanza.package)
    }

    /// Finds the stanza of a package instance. Only `Multi-Arch: same` packages can have
    /// several instances, so for any other package the name alone decides and the
    /// architecture may differ (a package can move between `all` and `amd64`).
    pub fn find(&self, name: &str, arch: &str) -> Option<&InstalledPackage> {
        self.position(name, arch)
            .map(|index| &self.stanzas[index].package)
    }

    fn position(&self, name: &str, arch: &str) -> Option<usize> {
        let same_name = || {
            self.stanzas
                .iter()
                .enumerate()
                .filter(|(_, s)| s.package.name == name)
        };
        same_name()
            .find(|(_, s)| s.package.arch == arch)
            .or_else(|| same_name().find(|(_, s)| !s.package.is_multi_arch_same()))
            .map(|(index, _)| index)
    }

    /// Replaces the stanza of the same package (see [`find`](Self::find)) with `text`, or
    /// inserts it before the first stanza that sorts after it by (name, architecture),
    /// which is where dpkg, writing stanzas in that order, puts a new package.
    pub fn put(&mut self, text: &str) -> Result<&InstalledPackage, StatusError> {
        let package = parse_single(text)?;
        let text = text.trim_end_matches('\n').to_owned() + "\n";
        let index = match self.position(&package.name, &package.arch) {
            Some(index) => {
                let stanza = &mut self.stanzas[index];
                stanza.text = text;
                stanza.package = package;
                index
            }
            None => {
                let key = (package.name.as_str(), package.arch.as_str());
                let index = self
                    .stanzas
                    .iter()
                    .position(|s| (s.package.name.as_str(), s.package.arch.as_str()) > key)
                    .unwrap_or(self.stanzas.len());
                if index == self.stanzas.len()
                    && let Some(last) = self.stanzas.last_mut()
                    && last.separator.is_empty()
                {
                    last.separator.push('\n');
                }
                self.stanzas.insert(
                    index,
                    Stanza {
                        text,
                        package,
                        separator: "\n".to_owned(),
                    },
                );
                index
            }
        };
        Ok(&self.stanzas[index].package)
    }

    /// Returns the file's bytes: the input with the replaced and inserted stanzas.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.prefix.clone();
        for stanza in &self.stanzas {
            out.push_str(&stanza.text);
            out.push_str(&stanza.separator);
        }
        out.into_bytes()
    }
}

fn parse_single(text: &str) -> Result<InstalledPackage, StatusError> {
    let invalid = |message: String| StatusError::InvalidStanza { message };
    let parsed = Deb822::parse(text);
    if let Some(error) = parsed.errors().first() {
        return Err(invalid(error.clone()));
    }
    let tree = parsed.tree();
    let mut paragraphs = tree.paragraphs();
    let paragraph = paragraphs
        .next()
        .ok_or_else(|| invalid("empty stanza".to_owned()))?;
    if paragraphs.next().is_some() {
        return Err(invalid("more than one stanza".to_owned()));
    }
    InstalledPackage::from_paragraph(&paragraph).map_err(|m| invalid(m.to_owned()))
}

/// Fields dpkg 1.21 writes first, in this order, when it records an installed package.
/// Every other field follows in control-file order. Measured with `dpkg -i` of packages
/// built by `dpkg-deb --build`.
const DPKG_FIELD_ORDER: &[&str] = &[
    "Package",
    "Essential",
    "Protected",
    "Status",
    "Priority",
    "Section",
    "Installed-Size",
    "Origin",
    "Maintainer",
    "Bugs",
    "Architecture",
    "Multi-Arch",
    "Source",
    "Version",
    "Config-Version",
    "Replaces",
    "Provides",
    "Depends",
    "Pre-Depends",
    "Recommends",
    "Suggests",
    "Breaks",
    "Conflicts",
    "Enhances",
    "Conffiles",
    "Description",
];

/// Fields dpkg recognizes but never copies from a control file into the status file.
const DPKG_DROPPED_FIELDS: &[&str] = &[
    "Filename",
    "Size",
    "MD5sum",
    "MSDOS-Filename",
    "Triggers-Pending",
    "Triggers-Awaited",
    "Revision",
    "Package-Revision",
    "Package_Revision",
];

const RELATION_FIELDS: &[&str] = &[
    "Replaces",
    "Provides",
    "Depends",
    "Pre-Depends",
    "Recommends",
    "Suggests",
    "Breaks",
    "Conflicts",
    "Enhances",
];

/// Formats the status stanza dpkg writes for an installed package, from the package's
/// control file, the `Status:` value and the conffiles (shipped MD5s, then the obsolete
/// ones). The result ends with a newline and has no blank line.
///
/// dpkg reformats on the way: relation fields are reparsed and written as
/// `name[:arch] (op version)` joined by `, ` and ` | `, `0:` epochs are dropped,
/// `Essential`/`Protected` appear only when `yes`, and `Multi-Arch: no` is left out.
pub fn installed_stanza(control: &ControlFields, status: &str, conffiles: &[Conffile]) -> String {
    let mut out = String::new();
    let mut push = |name: &str, value: &str| {
        out.push_str(name);
        out.push(':');
        if !value.starts_with('\n') {
            out.push(' ');
        }
        out.push_str(value);
        out.push('\n');
    };
    for &field in DPKG_FIELD_ORDER {
        let value = control.get(field).unwrap_or_default();
        match field {
            "Status" => push(field, status),
            "Essential" | "Protected" => {
                if value.eq_ignore_ascii_case("yes") {
                    push(field, "yes");
                }
            }
            "Multi-Arch" => {
                if !value.is_empty() && value != "no" {
                    push(field, value);
                }
            }
            "Version" => push(field, &normalize_version(value)),
            "Config-Version" => {}
            "Conffiles" => {
                if !conffiles.is_empty() {
                    let mut lines = String::new();
                    for conffile in conffiles {
                        lines.push_str(&format!("\n {} {}", conffile.path, conffile.md5));
                        if conffile.obsolete {
                            lines.push_str(" obsolete");
                        }
                        if conffile.remove_on_upgrade {
                            lines.push_str(" remove-on-upgrade");
                        }
                    }
                    push(field, &lines);
                }
            }
            _ if RELATION_FIELDS.contains(&field) => {
                let formatted = format_relations(value);
                if !formatted.is_empty() {
                    push(field, &formatted);
                }
            }
            _ => {
                if !value.is_empty() {
                    push(field, value);
                }
            }
        }
    }
    for (name, value) in control.iter() {
        let known = DPKG_FIELD_ORDER
            .iter()
            .chain(DPKG_DROPPED_FIELDS)
            .any(|known| known.eq_ignore_ascii_case(name));
        if !known && !value.is_empty() {
            push(name, value);
        }
    }
    out
}

/// Drops a zero epoch and surrounding whitespace, as dpkg does when it rewrites versions.
fn normalize_version(version: &str) -> String {
    let version = version.trim();
    match version.split_once(':') {
        Some((epoch, rest)) if epoch.bytes().all(|b| b.is_ascii_digit()) => {
            if epoch.parse::<u64>() == Ok(0) {
                rest.to_owned()
            } else {
                format!("{}:{rest}", epoch.trim_start_matches('0'))
            }
        }
        _ => version.to_owned(),
    }
}

/// Rewrites a relation field the way dpkg writes it back: `a(>=1)|b ,c` becomes
/// `a (>= 1) | b, c`; the obsolete `<` and `>` become `<=` and `>=`.
fn format_relations(value: &str) -> String {
    let mut groups = Vec::new();
    for group in value.split(',') {
        let mut alternatives = Vec::new();
        for alternative in group.split('|') {
            let alternative = alternative.split_whitespace().collect::<Vec<_>>().join(" ");
            if alternative.is_empty() {
                continue;
            }
            let (name, restriction) = match alternative.split_once('(') {
                Some((name, rest)) => (name.trim(), Some(rest.trim_end_matches(')').trim())),
                None => (alternative.as_str(), None),
            };
            let mut formatted = name.replace(' ', "");
            if let Some(restriction) = restriction {
                let split = restriction
                    .find(|c: char| !matches!(c, '<' | '>' | '='))
                    .unwrap_or(restriction.len());
                let operator = match &restriction[..split] {
                    "<" => "<=",
                    ">" => ">=",
                    other => other,
                };
                let version = normalize_version(&restriction[split..].replace(' ', ""));
                formatted.push_str(&format!(" ({operator} {version})"));
            }
            alternatives.push(formatted);
        }
        if !alternatives.is_empty() {
            groups.push(alternatives.join(" | "));
        }
    }
    groups.join(", ")
}

/// The location of a package's stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StanzaLocation {
    /// In the single status file.
    StatusFile,
    /// In `status.d/<file>` of a distroless image.
    StatusDir(String),
}

/// The status database of an image in either layout.
#[derive(Debug, Clone)]
pub enum StatusStore {
    /// `var/lib/dpkg/status`.
    File { db: StatusDb, changed: bool },
    /// `var/lib/dpkg/status.d/`, as distroless images write it.
    Directory(StatusDir),
}

/// `var/lib/dpkg/status.d/NAME` files, one stanza each, with the `NAME.md5sums` files
/// beside them.
///
/// Distroless images write a package's control file as its stanza, often without a
/// `Status` field, under a file name that may differ from the package name (`libssl1`
/// for `libssl1.1`). A stanza without `Status` counts as `install ok installed`, as
/// scanners read it, and a replacement stanza keeps that style.
#[derive(Debug, Clone, Default)]
pub struct StatusDir {
    files: BTreeMap<String, StatusDb>,
    /// `NAME.md5sums` contents by stanza file name.
    md5sums: BTreeMap<String, Vec<u8>>,
    /// Stanza file names whose stanza or md5sums changed, in change order.
    changed: Vec<String>,
    /// Stanza file names the patch created.
    added: BTreeSet<String>,
}

impl StatusDir {
    /// Returns the file name whose stanza records `name` on `arch`.
    pub fn file_of(&self, name: &str, arch: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|(_, db)| db.find(name, arch).is_some())
            .map(|(file, _)| file.as_str())
    }

    /// Returns the `NAME.md5sums` content beside stanza file `file`.
    pub fn md5sums(&self, file: &str) -> Option<&[u8]> {
        self.md5sums.get(file).map(Vec::as_slice)
    }

    /// Iterates over (stanza file name, package) pairs.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &InstalledPackage)> {
        self.files
            .iter()
            .flat_map(|(file, db)| db.packages().map(move |p| (file.as_str(), p)))
    }

    /// Whether stanza file `file` gets a `.md5sums` file: when it had one, or, for a
    /// file the patch adds, when any package of the image has one.
    pub fn wants_md5sums(&self, file: &str) -> bool {
        self.md5sums.contains_key(file) || (self.added.contains(file) && !self.md5sums.is_empty())
    }

    /// Sets the `.md5sums` content beside stanza file `file`.
    pub fn put_md5sums(&mut self, file: &str, content: Vec<u8>) {
        self.md5sums.insert(file.to_owned(), content);
        self.mark_changed(file);
    }

    fn mark_changed(&mut self, file: &str) {
        if !self.changed.iter().any(|f| f == file) {
            self.changed.push(file.to_owned());
        }
    }

    fn load(rootfs: &RootfsIndex) -> Result<Option<Self>, StatusError> {
        let prefix = format!("{STATUS_DIR}/");
        let mut dir = StatusDir::default();
        for (path, bytes) in rootfs.contents_under(&prefix) {
            let name = &path[prefix.len()..];
            if name.contains('/') {
                continue;
            }
            if let Some(stanza_file) = name.strip_suffix(".md5sums") {
                dir.md5sums.insert(stanza_file.to_owned(), bytes.to_vec());
                continue;
            }
            let mut db = StatusDb::parse(bytes, path)?;
            for stanza in &mut db.stanzas {
                if !stanza.has_status_field() {
                    stanza.package.status = StatusTriple::parse("install ok installed");
                }
            }
            dir.files.insert(name.to_owned(), db);
        }
        if dir.files.is_empty() && rootfs.get(STATUS_DIR).is_none() {
            return Ok(None);
        }
        Ok(Some(dir))
    }

    fn put(&mut self, text: &str) -> Result<String, StatusError> {
        let package = parse_single(text)?;
        let existing = self.files.iter().find_map(|(file, db)| {
            let index = db.position(&package.name, &package.arch)?;
            Some((file.clone(), db.stanzas[index].has_status_field()))
        });
        // A new package follows the image's style: no `Status` when some stanza has none.
        let (file, keep_status) = existing.unwrap_or_else(|| {
            let all_have_status = self
                .files
                .values()
                .flat_map(|db| &db.stanzas)
                .all(Stanza::has_status_field);
            (package.name.clone(), all_have_status)
        });
        let text = if keep_status {
            text.to_owned()
        } else {
            without_status_field(text)
        };
        if !self.files.contains_key(&file) {
            self.added.insert(file.clone());
        }
        let db = self.files.entry(file.clone()).or_default();
        db.put(&text)?;
        // The in-memory value stays installed even when the file omits `Status`.
        if let Some(index) = db.position(&package.name, &package.arch) {
            db.stanzas[index].package.status = package.status;
        }
        self.mark_changed(&file);
        Ok(file)
    }
}

/// Removes the `Status:` line of a one-stanza text.
fn without_status_field(text: &str) -> String {
    text.lines()
        .filter(|line| !line.starts_with("Status:"))
        .map(|line| format!("{line}\n"))
        .collect()
}

impl Stanza {
    fn has_status_field(&self) -> bool {
        self.text.starts_with("Status:") || self.text.contains("\nStatus:")
    }
}

impl StatusStore {
    /// Loads the status database from an image, preferring `status` over `status.d/`.
    pub fn load(rootfs: &RootfsIndex) -> Result<Self, StatusError> {
        if let Some(bytes) = rootfs.content(STATUS_PATH) {
            let db = StatusDb::parse(bytes, STATUS_PATH)?;
            return Ok(StatusStore::File { db, changed: false });
        }
        match StatusDir::load(rootfs)? {
            Some(dir) => Ok(StatusStore::Directory(dir)),
            None => Err(StatusError::Missing),
        }
    }

    /// Iterates over every package of the database.
    pub fn packages(&self) -> Box<dyn Iterator<Item = &InstalledPackage> + '_> {
        match self {
            StatusStore::File { db, .. } => Box::new(db.packages()),
            StatusStore::Directory(dir) => {
                Box::new(dir.files.values().flat_map(StatusDb::packages))
            }
        }
    }

    /// Finds a package instance (see [`StatusDb::find`]).
    pub fn find(&self, name: &str, arch: &str) -> Option<&InstalledPackage> {
        match self {
            StatusStore::File { db, .. } => db.find(name, arch),
            StatusStore::Directory(dir) => dir.files.values().find_map(|db| db.find(name, arch)),
        }
    }

    /// Replaces or adds a package's stanza and returns where it was written. In the
    /// directory layout the stanza goes to the file that held the package, else to a new
    /// file named after the package.
    pub fn put(&mut self, text: &str) -> Result<StanzaLocation, StatusError> {
        match self {
            StatusStore::File { db, changed } => {
                db.put(text)?;
                *changed = true;
                Ok(StanzaLocation::StatusFile)
            }
            StatusStore::Directory(dir) => Ok(StanzaLocation::StatusDir(dir.put(text)?)),
        }
    }

    /// Returns the changed files as (path in the root filesystem, bytes).
    pub fn changed_files(&self) -> Vec<(String, Vec<u8>)> {
        match self {
            StatusStore::File { db, changed } => {
                if *changed {
                    vec![(STATUS_PATH.to_owned(), db.to_bytes())]
                } else {
                    Vec::new()
                }
            }
            StatusStore::Directory(dir) => {
                let mut out = Vec::new();
                for file in &dir.changed {
                    if let Some(db) = dir.files.get(file) {
                        out.push((format!("{STATUS_DIR}/{file}"), db.to_bytes()));
                    }
                    if let Some(md5sums) = dir.md5sums.get(file) {
                        out.push((format!("{STATUS_DIR}/{file}.md5sums"), md5sums.clone()));
                    }
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real_status() -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/dpkg/status");
        std::fs::read(path).unwrap()
    }

    #[test]
    fn status_round_trip_is_byte_identical() {
        let bytes = real_status();
        let db = StatusDb::parse(&bytes, "status").unwrap();
        assert!(db.packages().count() > 100);
        assert_eq!(db.to_bytes(), bytes);
    }

    #[test]
    fn status_values_of_real_package() {
        let db = StatusDb::parse(&real_status(), "status").unwrap();
        let dpkg = db.find("dpkg", "amd64").unwrap();
        assert_eq!(dpkg.status.status, "installed");
        assert!(dpkg.essential);
        assert!(!dpkg.conffiles.is_empty());
        assert!(dpkg.conffiles.iter().all(|c| c.path.starts_with('/')));
        assert!(dpkg.conffiles.iter().all(|c| c.md5.len() == 32));
        let multi = db.packages().find(|p| p.is_multi_arch_same()).unwrap();
        assert!(db.find(&multi.name, &multi.arch).is_some());
    }

    #[test]
    fn put_replaces_only_its_stanza() {
        let bytes = real_status();
        let mut db = StatusDb::parse(&bytes, "status").unwrap();
        let old = db.find("dpkg", "amd64").unwrap().clone();
        let stanza = "Package: dpkg\nStatus: install ok installed\nArchitecture: amd64\nVersion: 99\nMaintainer: x\nDescription: y\n";
        db.put(stanza).unwrap();
        assert_eq!(db.find("dpkg", "amd64").unwrap().version, "99");
        let out = String::from_utf8(db.to_bytes()).unwrap();
        let original = String::from_utf8(bytes).unwrap();
        let start = original.find("Package: dpkg\n").unwrap();
        let end = start + original[start..].find("\n\n").unwrap() + 1;
        assert_eq!(&out[..start], &original[..start]);
        assert_eq!(&out[start..start + stanza.len()], stanza);
        assert_eq!(&out[start + stanza.len()..], &original[end..]);
        assert_ne!(old.version, "99");
    }

    #[test]
    fn put_inserts_in_name_order() {
        let text = "Package: a\nStatus: install ok installed\nVersion: 1\n\nPackage: c\nStatus: install ok installed\nVersion: 1\n\n";
        let mut db = StatusDb::parse(text.as_bytes(), "status").unwrap();
        db.put("Package: b\nStatus: install ok installed\nVersion: 2\n")
            .unwrap();
        db.put("Package: d\nStatus: install ok installed\nVersion: 2\n")
            .unwrap();
        assert_eq!(
            String::from_utf8(db.to_bytes()).unwrap(),
            "Package: a\nStatus: install ok installed\nVersion: 1\n\nPackage: b\nStatus: install ok installed\nVersion: 2\n\nPackage: c\nStatus: install ok installed\nVersion: 1\n\nPackage: d\nStatus: install ok installed\nVersion: 2\n\n"
        );
    }

    #[test]
    fn relations_formatted_like_dpkg() {
        assert_eq!(
            format_relations("a(>=1)|b ,c:any,   d (<<2.0) , e:amd64 (= 1)"),
            "a (>= 1) | b, c:any, d (<< 2.0), e:amd64 (= 1)"
        );
        assert_eq!(
            format_relations("a (< 1), b (>1), c (= 0:2),\n d (>= 1:2)"),
            "a (<= 1), b (>= 1), c (= 2), d (>= 1:2)"
        );
        assert_eq!(normalize_version("0:1.0-0"), "1.0-0");
    }

    fn status_dir_of(files: &[(&str, &str)]) -> StatusStore {
        let mut rootfs = RootfsIndex::default();
        let info = crate::rootfs::FileInfo {
            kind: crate::rootfs::FileKind::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            md5: None,
        };
        for (name, text) in files {
            let path = format!("{STATUS_DIR}/{name}");
            rootfs.insert(&path, info.clone(), Some(text.as_bytes().to_vec()));
        }
        StatusStore::load(&rootfs).unwrap()
    }

    #[test]
    fn status_dir_updates_file_in_place() {
        let mut store = status_dir_of(&[
            (
                "libssl1",
                "Package: libssl1.1\nVersion: 1.1\nArchitecture: amd64\n",
            ),
            ("libssl1.md5sums", "00  usr/lib/libssl.so.1.1\n"),
            (
                "base",
                "Package: base-files\nStatus: install ok installed\nVersion: 12\n",
            ),
        ]);
        let ssl = store.find("libssl1.1", "amd64").unwrap();
        assert_eq!(
            ssl.status.status, "installed",
            "no Status reads as installed"
        );

        let location = store
            .put("Package: libssl1.1\nStatus: install ok installed\nVersion: 1.2\nArchitecture: amd64\n")
            .unwrap();
        assert_eq!(location, StanzaLocation::StatusDir("libssl1".into()));
        let StatusStore::Directory(dir) = &mut store else {
            panic!("directory layout expected");
        };
        assert!(dir.wants_md5sums("libssl1"));
        dir.put_md5sums("libssl1", b"11  usr/lib/libssl.so.1.1\n".to_vec());
        let changed = store.changed_files();
        assert_eq!(
            changed,
            [
                (
                    format!("{STATUS_DIR}/libssl1"),
                    b"Package: libssl1.1\nVersion: 1.2\nArchitecture: amd64\n".to_vec()
                ),
                (
                    format!("{STATUS_DIR}/libssl1.md5sums"),
                    b"11  usr/lib/libssl.so.1.1\n".to_vec()
                ),
            ]
        );
    }

    #[test]
    fn status_dir_adds_new_package_file() {
        let mut store = status_dir_of(&[
            (
                "base",
                "Package: base-files\nStatus: install ok installed\nVersion: 12\n",
            ),
            ("base.md5sums", "00  etc/issue\n"),
        ]);
        let location = store
            .put("Package: libnew\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n")
            .unwrap();
        assert_eq!(location, StanzaLocation::StatusDir("libnew".into()));
        let StatusStore::Directory(dir) = &store else {
            panic!("directory layout expected");
        };
        assert!(dir.wants_md5sums("libnew"), "the image has md5sums files");
        let changed = store.changed_files();
        assert_eq!(changed.len(), 1);
        assert!(String::from_utf8_lossy(&changed[0].1).contains("Status: install ok installed"));
    }
}
