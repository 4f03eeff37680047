//! Binary package indexes (`Packages` files) and package relationship fields.
//!
//! A `Packages` index of a full suite is about 50 MB once decompressed, so [`PackagesReader`]
//! scans it line by line and keeps only the fields the resolver and the downloader need.
//! The relationship syntax (`Depends`, `Pre-Depends`, `Breaks`, `Provides` and so on)
//! follows Debian Policy section 7.1 and is shared with the dpkg status side through
//! [`Relation`] and [`parse_relations`].

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::str::FromStr;

use debversion::Version;

/// An error in a `Packages` index or in a relationship field.
#[derive(Debug, thiserror::Error)]
pub enum PackagesError {
    #[error("failed to read the package index {index}")]
    Read {
        index: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid stanza in {index} at line {line}: {reason}")]
    Stanza {
        index: String,
        line: u64,
        reason: String,
    },
    #[error("invalid relationship {text:?}: {reason}")]
    Relation { text: String, reason: String },
    #[error("invalid version {text:?}")]
    Version {
        text: String,
        #[source]
        source: debversion::ParseError,
    },
}

/// Parses a Debian version as dpkg does, accepting the underscores found in old archives.
pub fn parse_version(text: &str) -> Result<Version, PackagesError> {
    Version::parse_lenient(text.trim()).map_err(|source| PackagesError::Version {
        text: text.to_owned(),
        source,
    })
}

/// Compares two versions exactly as dpkg's `verrevcmp` does.
///
/// `debversion` 0.5.5 orders an empty digit run before `0`, so it sorts `1.` before `1.0`
/// and `1a` before `1a0`, which dpkg 1.21 treats as equal. Compare versions with this
/// function rather than with `Version`'s `Ord`.
pub fn compare_versions(a: &Version, b: &Version) -> std::cmp::Ordering {
    a.epoch
        .unwrap_or(0)
        .cmp(&b.epoch.unwrap_or(0))
        .then_with(|| compare_part(&a.upstream_version, &b.upstream_version))
        .then_with(|| {
            compare_part(
                a.debian_revision.as_deref().unwrap_or(""),
                b.debian_revision.as_deref().unwrap_or(""),
            )
        })
}

/// The sort weight of a non-digit character: `~` before the end, letters before the rest.
fn char_order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_part(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        // Non-digit prefixes, character by character; the end of a prefix weighs 0.
        loop {
            let ca = a.first().copied().filter(|c| !c.is_ascii_digit());
            let cb = b.first().copied().filter(|c| !c.is_ascii_digit());
            if ca.is_none() && cb.is_none() {
                break;
            }
            let ordering = char_order(ca).cmp(&char_order(cb));
            if ordering.is_ne() {
                return ordering;
            }
            a = &a[1..];
            b = &b[1..];
        }
        // Digit runs as numbers of any length; an empty run counts as 0.
        let digits_a = a.iter().take_while(|c| c.is_ascii_digit()).count();
        let digits_b = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let number_a = trim_zeros(&a[..digits_a]);
        let number_b = trim_zeros(&b[..digits_b]);
        let ordering = number_a
            .len()
            .cmp(&number_b.len())
            .then(number_a.cmp(number_b));
        if ordering.is_ne() {
            return ordering;
        }
        a = &a[digits_a..];
        b = &b[digits_b..];
    }
    std::cmp::Ordering::Equal
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let start = digits.iter().take_while(|&&c| c == b'0').count();
    &digits[start..]
}

/// A version comparison operator of a relationship, Debian Policy section 7.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `<<`
    Lt,
    /// `<=`, also the obsolete `<`
    Le,
    /// `=`
    Eq,
    /// `>=`, also the obsolete `>`
    Ge,
    /// `>>`
    Gt,
}

impl Op {
    fn parse(text: &str) -> Option<Op> {
        match text {
            "<<" => Some(Op::Lt),
            "<=" | "<" => Some(Op::Le),
            "=" => Some(Op::Eq),
            ">=" | ">" => Some(Op::Ge),
            ">>" => Some(Op::Gt),
            _ => None,
        }
    }

    /// Tells whether `version` is in this relation to `reference`.
    pub fn matches(self, version: &Version, reference: &Version) -> bool {
        let ordering = compare_versions(version, reference);
        match self {
            Op::Lt => ordering.is_lt(),
            Op::Le => ordering.is_le(),
            Op::Eq => ordering.is_eq(),
            Op::Ge => ordering.is_ge(),
            Op::Gt => ordering.is_gt(),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        })
    }
}

/// One alternative of a relationship: `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    /// The architecture qualifier after `:`, such as `any` or `amd64`.
    pub arch: Option<String>,
    pub constraint: Option<(Op, Version)>,
}

impl Relation {
    /// Tells whether `version` meets the version constraint; no constraint matches any version.
    pub fn matches_version(&self, version: &Version) -> bool {
        match &self.constraint {
            None => true,
            Some((op, reference)) => op.matches(version, reference),
        }
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(arch) = &self.arch {
            write!(f, ":{arch}")?;
        }
        if let Some((op, version)) = &self.constraint {
            write!(f, " ({op} {version})")?;
        }
        Ok(())
    }
}

/// A parsed relationship field: groups joined by `,`, each a list of `|` alternatives.
pub type Relations = Vec<Vec<Relation>>;

/// Formats relationship groups back into the field syntax.
pub fn format_relations(groups: &[Vec<Relation>]) -> String {
    groups
        .iter()
        .map(|group| {
            group
                .iter()
                .map(Relation::to_string)
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a relationship field such as `libc6 (>= 2.34), debconf | debconf-2.0`.
///
/// Architecture restrictions (`[amd64 !i386]`) drop an alternative that does not apply
/// to `host_arch`; with no `host_arch` every alternative is kept. Build profiles
/// (`<!nocheck>`) are ignored, so the alternative is kept. A group left empty by
/// architecture restrictions is dropped, as dpkg-checkbuilddeps does.
pub fn parse_relations(text: &str, host_arch: Option<&str>) -> Result<Relations, PackagesError> {
    let mut groups = Vec::new();
    for group_text in text.split(',') {
        if group_text.trim().is_empty() {
            continue;
        }
        let mut group = Vec::new();
        for alternative in group_text.split('|') {
            if let Some(relation) = parse_alternative(alternative, host_arch)? {
                group.push(relation);
            }
        }
        if !group.is_empty() {
            groups.push(group);
        }
    }
    Ok(groups)
}

fn relation_error(text: &str, reason: &str) -> PackagesError {
    PackagesError::Relation {
        text: text.trim().to_owned(),
        reason: reason.to_owned(),
    }
}

fn parse_alternative(
    text: &str,
    host_arch: Option<&str>,
) -> Result<Option<Relation>, PackagesError> {
    let mut rest = text.trim();

    // Build profiles always come last: cut at the first `<` outside the version constraint.
    let mut depth = 0usize;
    for (position, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '<' if depth == 0 => {
                rest = rest[..position].trim_end();
                break;
            }
            _ => {}
        }
    }

    let mut arch_list = None;
    if let Some(start) = rest.find('[') {
        let end = rest
            .rfind(']')
            .ok_or_else(|| relation_error(text, "unterminated architecture list"))?;
        arch_list = Some(rest[start + 1..end].to_owned());
        rest = rest[..start].trim_end();
    }

    let mut constraint = None;
    if let Some(start) = rest.find('(') {
        let end = rest
            .rfind(')')
            .ok_or_else(|| relation_error(text, "unterminated version constraint"))?;
        let inner = rest[start + 1..end].trim();
        let op_len = inner
            .find(|c: char| !matches!(c, '<' | '>' | '='))
            .ok_or_else(|| relation_error(text, "version constraint without a version"))?;
        let op = Op::parse(&inner[..op_len])
            .ok_or_else(|| relation_error(text, "unknown version operator"))?;
        let version = parse_version(inner[op_len..].trim())?;
        constraint = Some((op, version));
        rest = rest[..start].trim_end();
    }

    if rest.is_empty() {
        return Err(relation_error(text, "missing package name"));
    }
    if rest.contains(char::is_whitespace) {
        return Err(relation_error(
            text,
            "unexpected text after the package name",
        ));
    }
    let (name, arch) = match rest.split_once(':') {
        Some((name, arch)) => (name.to_owned(), Some(arch.to_owned())),
        None => (rest.to_owned(), None),
    };

    if let (Some(list), Some(host)) = (arch_list, host_arch)
        && !arch_list_matches(&list, host)
    {
        return Ok(None);
    }
    Ok(Some(Relation {
        name,
        arch,
        constraint,
    }))
}

/// Applies an architecture restriction list: either all positive or all negated names.
fn arch_list_matches(list: &str, host: &str) -> bool {
    let mut any_positive = false;
    for arch in list.split_whitespace() {
        match arch.strip_prefix('!') {
            Some(negated) if negated == host || negated == "any" => return false,
            Some(_) => {}
            None if arch == host || arch == "any" || arch == format!("linux-{host}") => {
                return true;
            }
            None => any_positive = true,
        }
    }
    !any_positive
}

/// The `Multi-Arch` field of a binary package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MultiArch {
    #[default]
    No,
    Same,
    Foreign,
    Allowed,
}

impl FromStr for MultiArch {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "no" | "" => Ok(MultiArch::No),
            "same" => Ok(MultiArch::Same),
            "foreign" => Ok(MultiArch::Foreign),
            "allowed" => Ok(MultiArch::Allowed),
            other => Err(format!("unknown Multi-Arch value {other:?}")),
        }
    }
}

/// One binary package stanza of a `Packages` index.
///
/// Relationship fields are kept as the raw field text, which keeps a full suite's index
/// small in memory. The `*_relations` methods parse them when the resolver needs them.
#[derive(Debug, Clone)]
pub struct PackageEntry {
    pub package: String,
    pub version: Version,
    pub architecture: String,
    pub multi_arch: MultiArch,
    /// The source package name, from `Source:` or else the binary package name.
    pub source: String,
    /// The source version, from `Source: name (version)` or else the binary version.
    pub source_version: Version,
    pub depends: String,
    pub pre_depends: String,
    pub breaks: String,
    pub conflicts: String,
    pub provides: String,
    pub replaces: String,
    pub essential: bool,
    pub priority: Option<String>,
    /// The path of the .deb relative to the repository URI.
    pub filename: String,
    pub size: u64,
    /// The lowercase hex SHA-256 of the .deb.
    pub sha256: String,
}

impl PackageEntry {
    pub fn depends_relations(&self) -> Result<Relations, PackagesError> {
        parse_relations(&self.depends, None)
    }

    pub fn pre_depends_relations(&self) -> Result<Relations, PackagesError> {
        parse_relations(&self.pre_depends, None)
    }

    pub fn breaks_relations(&self) -> Result<Relations, PackagesError> {
        parse_relations(&self.breaks, None)
    }

    pub fn conflicts_relations(&self) -> Result<Relations, PackagesError> {
        parse_relations(&self.conflicts, None)
    }

    /// Parses `Provides`, which has no alternatives, into a flat list.
    pub fn provides_relations(&self) -> Result<Vec<Relation>, PackagesError> {
        Ok(parse_relations(&self.provides, None)?
            .into_iter()
            .flatten()
            .collect())
    }

    pub fn replaces_relations(&self) -> Result<Relations, PackagesError> {
        parse_relations(&self.replaces, None)
    }
}

/// Wraps a `Packages` index in the decompressor its file name calls for.
pub fn decompress<'a, R: Read + 'a>(file_name: &str, reader: R) -> Box<dyn BufRead + 'a> {
    if file_name.ends_with(".xz") {
        Box::new(BufReader::new(liblzma::read::XzDecoder::new(reader)))
    } else if file_name.ends_with(".gz") {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(reader)))
    } else {
        Box::new(BufReader::new(reader))
    }
}

/// A streaming scanner that yields one [`PackageEntry`] per stanza.
pub struct PackagesReader<R> {
    reader: R,
    index: String,
    line_number: u64,
    line: Vec<u8>,
    /// The raw lines of the current stanza.
    stanza: Vec<u8>,
    done: bool,
    filter: Option<PackageFilter>,
}

/// Keeps the stanzas whose `Package` is one of `names` or whose `Provides` names one.
struct PackageFilter {
    names: std::collections::HashSet<String>,
}

impl PackageFilter {
    /// Decides from the raw stanza, looking only at its `Package` and `Provides` lines,
    /// so rejected stanzas are never parsed.
    fn wants_stanza(&self, stanza: &[u8]) -> bool {
        let mut lines = stanza.split(|b| *b == b'\n').peekable();
        while let Some(line) = lines.next() {
            if let Some(value) = line.strip_prefix(b"Package:") {
                if self.names.contains(String::from_utf8_lossy(value).trim()) {
                    return true;
                }
            } else if let Some(value) = line.strip_prefix(b"Provides:") {
                let mut provides = String::from_utf8_lossy(value).into_owned();
                while let Some(next) =
                    lines.next_if(|l| l.starts_with(b" ") || l.starts_with(b"\t"))
                {
                    provides.push_str(&String::from_utf8_lossy(next));
                }
                if provided_names(&provides).any(|name| self.names.contains(name)) {
                    return true;
                }
            }
        }
        false
    }
}

/// The package names in a raw `Provides` value, without versions or qualifiers.
pub fn provided_names(provides: &str) -> impl Iterator<Item = &str> {
    provides.split(',').filter_map(|item| {
        let name = item
            .split(['(', ' ', ':', '\t'])
            .find(|part| !part.is_empty())?;
        Some(name.trim())
    })
}

#[derive(Default)]
struct StanzaFields {
    start_line: u64,
    package: Option<String>,
    version: Option<String>,
    architecture: Option<String>,
    multi_arch: Option<String>,
    source: Option<String>,
    depends: String,
    pre_depends: String,
    breaks: String,
    conflicts: String,
    provides: String,
    replaces: String,
    essential: bool,
    priority: Option<String>,
    filename: Option<String>,
    size: Option<String>,
    sha256: Option<String>,
}

impl<R: BufRead> PackagesReader<R> {
    /// Creates a scanner; `index` names the index (its URL or path) in error messages.
    pub fn new(reader: R, index: impl Into<String>) -> Self {
        Self {
            reader,
            index: index.into(),
            line_number: 0,
            line: Vec::with_capacity(256),
            stanza: Vec::with_capacity(4096),
            done: false,
            filter: None,
        }
    }

    /// Yields only the stanzas whose `Package` is in `names` or whose `Provides` names
    /// one of them; the others are skipped without being parsed.
    pub fn with_names(mut self, names: std::collections::HashSet<String>) -> Self {
        self.filter = Some(PackageFilter { names });
        self
    }

    fn read_raw_stanza(&mut self) -> Result<Option<u64>, PackagesError> {
        self.stanza.clear();
        let mut start = None;
        loop {
            self.line.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(|source| PackagesError::Read {
                    index: self.index.clone(),
                    source,
                })?;
            if read == 0 {
                self.done = true;
                return Ok(start);
            }
            self.line_number += 1;
            if self.line.iter().all(u8::is_ascii_whitespace) {
                if start.is_some() {
                    return Ok(start);
                }
                continue;
            }
            if self.line.starts_with(b"#") {
                continue;
            }
            start.get_or_insert(self.line_number);
            self.stanza.extend_from_slice(&self.line);
            if !self.stanza.ends_with(b"\n") {
                self.stanza.push(b'\n');
            }
        }
    }

    /// Parses the fields this scanner keeps from the stanza in `self.stanza`.
    fn parse_stanza(&self, start_line: u64) -> Result<StanzaFields, PackagesError> {
        let mut fields = StanzaFields {
            start_line,
            ..StanzaFields::default()
        };
        // The field that continuation lines extend, if it is one this scanner keeps.
        let mut continued: Option<&'static str> = None;
        let text = String::from_utf8_lossy(&self.stanza);
        for (offset, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.starts_with([' ', '\t']) {
                if let Some(name) = continued {
                    let target = fields.relation_field(name);
                    target.push(' ');
                    target.push_str(line.trim());
                }
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(PackagesError::Stanza {
                    index: self.index.clone(),
                    line: start_line + offset as u64,
                    reason: format!("line {line:?} is not a field"),
                });
            };
            let value = value.trim().to_owned();
            continued = None;
            match name {
                "Package" => fields.package = Some(value),
                "Version" => fields.version = Some(value),
                "Architecture" => fields.architecture = Some(value),
                "Multi-Arch" => fields.multi_arch = Some(value),
                "Source" => fields.source = Some(value),
                "Essential" => fields.essential = value == "yes",
                "Priority" => fields.priority = Some(value),
                "Filename" => fields.filename = Some(value),
                "Size" => fields.size = Some(value),
                "SHA256" => fields.sha256 = Some(value),
                "Depends" | "Pre-Depends" | "Breaks" | "Conflicts" | "Provides" | "Replaces" => {
                    let key = match name {
                        "Depends" => "Depends",
                        "Pre-Depends" => "Pre-Depends",
                        "Breaks" => "Breaks",
                        "Conflicts" => "Conflicts",
                        "Provides" => "Provides",
                        _ => "Replaces",
                    };
                    *fields.relation_field(key) = value;
                    continued = Some(key);
                }
                _ => {}
            }
        }
        Ok(fields)
    }

    fn build_entry(&self, fields: StanzaFields) -> Result<PackageEntry, PackagesError> {
        let line = fields.start_line;
        let missing = |field: &str| PackagesError::Stanza {
            index: self.index.clone(),
            line,
            reason: format!("missing {field} field"),
        };
        let invalid = |reason: String| PackagesError::Stanza {
            index: self.index.clone(),
            line,
            reason,
        };
        let package = fields.package.ok_or_else(|| missing("Package"))?;
        let version_text = fields.version.ok_or_else(|| missing("Version"))?;
        let version = parse_version(&version_text)?;
        let (source, source_version) = match fields.source.as_deref() {
            None => (package.clone(), version.clone()),
            Some(text) => match text.split_once('(') {
                None => (text.trim().to_owned(), version.clone()),
                Some((name, rest)) => {
                    let source_version = rest.trim_end().trim_end_matches(')');
                    (name.trim().to_owned(), parse_version(source_version)?)
                }
            },
        };
        let multi_arch = match fields.multi_arch.as_deref() {
            None => MultiArch::No,
            Some(text) => text
                .parse()
                .map_err(|reason| invalid(format!("package {package}: {reason}")))?,
        };
        let size_text = fields.size.ok_or_else(|| missing("Size"))?;
        let size = size_text
            .parse()
            .map_err(|_| invalid(format!("package {package}: invalid Size {size_text:?}")))?;
        let sha256 = fields.sha256.ok_or_else(|| missing("SHA256"))?;
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!(
                "package {package}: invalid SHA256 {sha256:?}"
            )));
        }
        Ok(PackageEntry {
            architecture: fields.architecture.ok_or_else(|| missing("Architecture"))?,
            filename: fields.filename.ok_or_else(|| missing("Filename"))?,
            package,
            version,
            multi_arch,
            source,
            source_version,
            depends: fields.depends,
            pre_depends: fields.pre_depends,
            breaks: fields.breaks,
            conflicts: fields.conflicts,
            provides: fields.provides,
            replaces: fields.replaces,
            essential: fields.essential,
            priority: fields.priority,
            size,
            sha256: sha256.to_ascii_lowercase(),
        })
    }
}

impl StanzaFields {
    fn relation_field(&mut self, name: &str) -> &mut String {
        match name {
            "Depends" => &mut self.depends,
            "Pre-Depends" => &mut self.pre_depends,
            "Breaks" => &mut self.breaks,
            "Conflicts" => &mut self.conflicts,
            "Provides" => &mut self.provides,
            _ => &mut self.replaces,
        }
    }
}

impl<R: BufRead> Iterator for PackagesReader<R> {
    type Item = Result<PackageEntry, PackagesError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let start = match self.read_raw_stanza() {
                Ok(Some(start)) => start,
                Ok(None) => return None,
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            };
            if let Some(filter) = &self.filter
                && !filter.wants_stanza(&self.stanza)
            {
                continue;
            }
            return Some(
                self.parse_stanza(start)
                    .and_then(|fields| self.build_entry(fields)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;

    const EXCERPT: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/apt/bookworm-security-main-amd64-Packages"
    );

    fn read_excerpt() -> Vec<PackageEntry> {
        let data = fs_err::read(EXCERPT).unwrap();
        PackagesReader::new(data.as_slice(), EXCERPT)
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A linear congruential generator, so the generated versions are the same on every run.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, bound: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % bound
        }

        fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
            choices[self.next(choices.len())]
        }
    }

    fn generate_part(rng: &mut Lcg, chars: &str, length: usize) -> String {
        let chars: Vec<char> = chars.chars().collect();
        let mut text = String::new();
        for _ in 0..length {
            if rng.next(12) == 0 {
                // Digit runs longer than any machine integer.
                for _ in 0..(20 + rng.next(15)) {
                    text.push(char::from(b'0' + rng.next(10) as u8));
                }
            } else {
                text.push(chars[rng.next(chars.len())]);
            }
        }
        text
    }

    fn generate_version(rng: &mut Lcg) -> String {
        let mut version = String::new();
        if rng.next(4) == 0 {
            version.push_str(rng.pick(&["0:", "1:", "2:", "10:"]));
        }
        version.push(char::from(b'0' + rng.next(10) as u8));
        let upstream_chars = "0123456789..++~~~abzAZ";
        let length = rng.next(6);
        version.push_str(&generate_part(rng, upstream_chars, length));
        if rng.next(3) > 0 {
            if rng.next(4) == 0 {
                // A hyphen inside the upstream version, allowed when a revision follows.
                version.push('-');
                version.push_str(&generate_part(rng, "0123456789.", 2));
            }
            version.push('-');
            let length = 1 + rng.next(5);
            version.push_str(&generate_part(rng, "0123456789.+~ab", length));
        }
        version
    }

    /// Derives a version close to `base`, so that many pairs differ in one detail.
    fn mutate(rng: &mut Lcg, base: &str) -> String {
        let mut text = base.to_owned();
        match rng.next(6) {
            0 => text.push('~'),
            1 => text.push_str(rng.pick(&["+b1", ".1", "a", "~rc1", "+deb12u1", "0"])),
            2 => {
                if let Some(position) = text.rfind(|c: char| c.is_ascii_digit()) {
                    text.insert(position + 1, char::from(b'0' + rng.next(10) as u8));
                }
            }
            3 => text = format!("1:{}", text.split_once(':').map_or(base, |(_, rest)| rest)),
            _ => text = generate_version(rng),
        }
        text
    }

    /// Runs the real `dpkg --compare-versions` over `pairs` in one shell loop.
    fn dpkg_compare(pairs: &[(String, String)]) -> std::process::Child {
        let script = r#"while read a b; do
            if dpkg --compare-versions "$a" lt "$b"; then echo "<";
            elif dpkg --compare-versions "$a" eq "$b"; then echo "=";
            else echo ">"; fi
        done"#;
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = String::new();
        for (a, b) in pairs {
            input.push_str(&format!("{a} {b}\n"));
        }
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
        child
    }

    #[test]
    fn version_order_matches_dpkg() {
        let mut rng = Lcg(0x6c61_7965_726d_656e);
        let mut pairs = Vec::new();
        while pairs.len() < 4000 {
            let a = generate_version(&mut rng);
            let b = mutate(&mut rng, &a);
            pairs.push((a, b));
        }
        // Two shells in parallel halve the wall time on a two-core machine.
        let (first, second) = pairs.split_at(pairs.len() / 2);
        let children = [dpkg_compare(first), dpkg_compare(second)];
        let mut verdicts = Vec::new();
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success());
            verdicts.extend(
                String::from_utf8(output.stdout)
                    .unwrap()
                    .lines()
                    .map(str::to_owned),
            );
        }
        assert_eq!(verdicts.len(), pairs.len());

        let mut mismatches = Vec::new();
        for ((a, b), dpkg) in pairs.iter().zip(&verdicts) {
            let ours =
                match compare_versions(&parse_version(a).unwrap(), &parse_version(b).unwrap()) {
                    std::cmp::Ordering::Less => "<",
                    std::cmp::Ordering::Equal => "=",
                    std::cmp::Ordering::Greater => ">",
                };
            if ours != dpkg {
                mismatches.push(format!("{a} {dpkg} {b} but ours {ours}"));
            }
        }
        assert!(
            mismatches.is_empty(),
            "{} mismatches: {mismatches:#?}",
            mismatches.len()
        );
    }

    #[test]
    fn empty_digit_run_equals_zero() {
        let a = parse_version("1.").unwrap();
        let b = parse_version("1.0").unwrap();
        assert_eq!(compare_versions(&a, &b), std::cmp::Ordering::Equal);
        let a = parse_version("1.0").unwrap();
        let b = parse_version("1.0-0").unwrap();
        assert_eq!(compare_versions(&a, &b), std::cmp::Ordering::Equal);
    }

    #[test]
    fn relations_parse_alternatives_and_constraints() {
        let groups = parse_relations(
            "libc-bin (>> 2.36), debconf (>= 0.5) | debconf-2.0, perl:any",
            None,
        )
        .unwrap();
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0][0].name, "libc-bin");
        assert_eq!(groups[0][0].constraint.as_ref().unwrap().0, Op::Gt);
        assert_eq!(groups[1].len(), 2);
        assert_eq!(groups[1][1].name, "debconf-2.0");
        assert_eq!(groups[1][1].constraint, None);
        assert_eq!(groups[2][0].name, "perl");
        assert_eq!(groups[2][0].arch.as_deref(), Some("any"));
        assert_eq!(
            format_relations(&groups),
            "libc-bin (>> 2.36), debconf (>= 0.5) | debconf-2.0, perl:any"
        );
    }

    #[test]
    fn relations_apply_arch_lists_and_drop_profiles() {
        let text = "foo [amd64] | bar [!amd64], baz (<< 2) <!nocheck>, qux [i386]";
        let host = parse_relations(text, Some("amd64")).unwrap();
        assert_eq!(host.len(), 2);
        assert_eq!(host[0].len(), 1);
        assert_eq!(host[0][0].name, "foo");
        assert_eq!(host[1][0].name, "baz");
        assert_eq!(host[1][0].constraint.as_ref().unwrap().0, Op::Lt);
        let any = parse_relations(text, None).unwrap();
        assert_eq!(any.len(), 3);
        assert_eq!(any[0].len(), 2);
    }

    #[test]
    fn relations_reject_garbage() {
        assert!(parse_relations("foo (>= )", None).is_err());
        assert!(parse_relations("foo (~ 1)", None).is_err());
        assert!(parse_relations("foo bar", None).is_err());
        assert!(parse_relations("foo (>= 1", None).is_err());
    }

    #[test]
    fn obsolete_operators_mean_or_equal() {
        let relation = &parse_relations("foo (< 2)", None).unwrap()[0][0];
        assert!(relation.matches_version(&parse_version("2").unwrap()));
        assert!(!relation.matches_version(&parse_version("2.1").unwrap()));
    }

    #[test]
    fn packages_excerpt_fields() {
        let entries = read_excerpt();
        assert_eq!(entries.len(), 11);
        let libssl = entries.iter().find(|e| e.package == "libssl3").unwrap();
        assert_eq!(libssl.version.to_string(), "3.0.22-1~deb12u2");
        assert_eq!(libssl.source, "openssl");
        assert_eq!(libssl.source_version, libssl.version);
        assert_eq!(libssl.multi_arch, MultiArch::Same);
        assert_eq!(libssl.architecture, "amd64");
        assert!(
            libssl
                .filename
                .starts_with("pool/updates/main/o/openssl/libssl3_")
        );
        assert_eq!(libssl.sha256.len(), 64);
        assert!(libssl.size > 0);
        assert_eq!(libssl.depends_relations().unwrap()[0][0].name, "libc6");

        let telnet = entries.iter().find(|e| e.package == "telnet").unwrap();
        assert_eq!(telnet.source, "inetutils");
        assert_eq!(telnet.source_version.to_string(), "2:2.4-2+deb12u3");
        assert_eq!(telnet.version.to_string(), "0.17+2.4-2+deb12u3");
        assert_eq!(telnet.multi_arch, MultiArch::Foreign);

        let apache = entries.iter().find(|e| e.package == "apache2").unwrap();
        let provides = apache.provides_relations().unwrap();
        assert_eq!(provides.len(), 2);
        assert_eq!(provides[0].name, "httpd");
        assert_eq!(
            apache.pre_depends_relations().unwrap()[0][0].name,
            "init-system-helpers"
        );

        let libc = entries.iter().find(|e| e.package == "libc6").unwrap();
        assert!(libc.breaks_relations().unwrap().len() > 20);
        assert_eq!(libc.priority.as_deref(), Some("optional"));
    }

    #[test]
    fn packages_decompress_xz_and_gz() {
        let plain = fs_err::read(EXCERPT).unwrap();
        let mut xz = Vec::new();
        let mut encoder = liblzma::write::XzEncoder::new(&mut xz, 6);
        encoder.write_all(&plain).unwrap();
        encoder.finish().unwrap();
        let mut gz = Vec::new();
        let mut encoder = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::default());
        encoder.write_all(&plain).unwrap();
        encoder.finish().unwrap();

        for (name, data) in [
            ("Packages.xz", &xz),
            ("Packages.gz", &gz),
            ("Packages", &plain),
        ] {
            let reader = PackagesReader::new(decompress(name, data.as_slice()), name);
            let entries: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
            assert_eq!(entries.len(), 11, "{name}");
        }
    }

    #[test]
    fn packages_continuation_lines_extend_relations() {
        let text = "Package: a\nVersion: 1\nArchitecture: all\nDepends: b,\n c (>= 2)\n\
                    Description: x\n more text\nFilename: a.deb\nSize: 1\nSHA256: "
            .to_owned()
            + &"0".repeat(64)
            + "\n";
        let entries: Vec<_> = PackagesReader::new(text.as_bytes(), "inline")
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(entries[0].depends_relations().unwrap().len(), 2);
    }

    #[test]
    fn packages_missing_field_names_line() {
        let text = "Package: a\nVersion: 1\n";
        let error = PackagesReader::new(text.as_bytes(), "inline")
            .next()
            .unwrap()
            .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("inline at line 1"), "{message}");
    }
}
