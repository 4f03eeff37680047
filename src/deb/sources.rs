//! apt source lists: the one-line `sources.list` format and the deb822 `.sources` format,
//! as described in sources.list(5) of apt 2.6.

use std::path::{Path, PathBuf};

use url::Url;

/// An error in an apt source list.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error("{origin}: {reason}")]
    Invalid { origin: String, reason: String },
    #[error("{origin}: invalid URI {uri:?}")]
    Uri {
        origin: String,
        uri: String,
        #[source]
        source: url::ParseError,
    },
    #[error(
        "{origin}: cdrom sources cannot be read from an image\n\
         hint: remove the cdrom line or pass --apt-source with a network repository"
    )]
    Cdrom { origin: String },
    #[error("{origin}: unsupported URI scheme {scheme:?} (supported: http, https, file)")]
    Scheme { origin: String, scheme: String },
}

/// The keys that may sign a repository's Release file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedBy {
    /// No `Signed-By`: apt's default trusted keyrings.
    Default,
    /// Keyring files, as absolute paths inside the image.
    Files(Vec<PathBuf>),
    /// An ASCII-armored key block written into the `.sources` file.
    Inline(String),
}

/// One repository distribution: a URI and a suite with its components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    /// The repository URI, always ending in `/`.
    pub uri: Url,
    /// The suite or codename; a flat repository has a path ending in `/`.
    pub suite: String,
    /// Components such as `main`; empty for a flat repository.
    pub components: Vec<String>,
    /// Architectures from `arch=` or `Architectures:`; empty means the image's own.
    pub architectures: Vec<String>,
    pub signed_by: SignedBy,
    /// `trusted=yes`: apt accepts the repository without a valid signature.
    pub trusted: bool,
    /// The entry's location as `file:line`, for messages.
    pub origin: String,
}

impl AptSource {
    /// Tells whether this is a flat repository (suite is a path, no components).
    pub fn is_flat(&self) -> bool {
        self.suite.ends_with('/')
    }

    /// Returns the URL of the directory holding `InRelease`: `dists/SUITE/`, or the suite
    /// path itself for a flat repository.
    pub fn dist_url(&self) -> Result<Url, url::ParseError> {
        if self.is_flat() {
            let path = self.suite.trim_start_matches("./");
            if path.is_empty() || path == "/" {
                Ok(self.uri.clone())
            } else {
                self.uri.join(path)
            }
        } else {
            self.uri.join(&format!("dists/{}/", self.suite))
        }
    }
}

/// Parses source list files read from an image, in the order given.
///
/// Each pair is a path as found in the image and the file's bytes. Files ending in
/// `.sources` use the deb822 format; all others the one-line format. Entries for the same
/// URI and suite are merged, keeping the first entry's keys and origin.
pub fn parse_source_files<P, B>(
    files: impl IntoIterator<Item = (P, B)>,
) -> Result<Vec<AptSource>, SourcesError>
where
    P: AsRef<Path>,
    B: AsRef<[u8]>,
{
    let mut sources = Vec::new();
    for (path, bytes) in files {
        let path = path.as_ref();
        let text = String::from_utf8_lossy(bytes.as_ref());
        let name = path.display().to_string();
        let parsed = if path.extension().is_some_and(|e| e == "sources") {
            parse_deb822(&name, &text)?
        } else {
            parse_one_line_file(&name, &text)?
        };
        for source in parsed {
            merge_source(&mut sources, source);
        }
    }
    Ok(sources)
}

/// Parses one `deb …` line given on the command line; `origin` names it in messages.
pub fn parse_source_line(line: &str, origin: &str) -> Result<Vec<AptSource>, SourcesError> {
    let sources = parse_line(line, origin)?;
    if sources.is_empty() {
        return Err(invalid(
            origin,
            "expected a `deb URI SUITE [COMPONENT…]` line",
        ));
    }
    Ok(sources)
}

fn merge_source(sources: &mut Vec<AptSource>, source: AptSource) {
    match sources
        .iter_mut()
        .find(|s| s.uri == source.uri && s.suite == source.suite)
    {
        Some(existing) => {
            for component in source.components {
                if !existing.components.contains(&component) {
                    existing.components.push(component);
                }
            }
            for arch in source.architectures {
                if !existing.architectures.contains(&arch) {
                    existing.architectures.push(arch);
                }
            }
            tracing::debug!(
                origin = %source.origin,
                first = %existing.origin,
                "merged a repeated source entry"
            );
        }
        None => sources.push(source),
    }
}

fn invalid(origin: &str, reason: impl Into<String>) -> SourcesError {
    SourcesError::Invalid {
        origin: origin.to_owned(),
        reason: reason.into(),
    }
}

fn parse_one_line_file(name: &str, text: &str) -> Result<Vec<AptSource>, SourcesError> {
    let mut sources = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let origin = format!("{name}:{}", index + 1);
        sources.extend(parse_line(line, &origin)?);
    }
    Ok(sources)
}

/// Parses one line of the one-line format; comments, blank lines and `deb-src` yield nothing.
fn parse_line(line: &str, origin: &str) -> Result<Vec<AptSource>, SourcesError> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(Vec::new());
    }
    let (kind, mut rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    rest = rest.trim_start();
    match kind {
        "deb" => {}
        "deb-src" => return Ok(Vec::new()),
        other => {
            return Err(invalid(
                origin,
                format!("unknown type {other:?}, expected deb"),
            ));
        }
    }

    let mut options = Options::default();
    if let Some(after) = rest.strip_prefix('[') {
        let end = after
            .find(']')
            .ok_or_else(|| invalid(origin, "unterminated option list `[`"))?;
        for option in after[..end].split_whitespace() {
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| invalid(origin, format!("option {option:?} has no `=`")))?;
            options.set(origin, key, value)?;
        }
        rest = after[end + 1..].trim_start();
    }

    let mut words = rest.split_whitespace();
    let uri = words.next().ok_or_else(|| invalid(origin, "missing URI"))?;
    let suite = words
        .next()
        .ok_or_else(|| invalid(origin, "missing suite"))?;
    let components: Vec<String> = words.map(str::to_owned).collect();
    let source = build_source(origin, uri, suite, components, &options)?;
    Ok(vec![source])
}

/// Options shared by both formats.
#[derive(Default)]
struct Options {
    architectures: Vec<String>,
    signed_by: Option<SignedBy>,
    trusted: bool,
}

impl Options {
    fn set(&mut self, origin: &str, key: &str, value: &str) -> Result<(), SourcesError> {
        let list = || {
            value
                .split(',')
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        match key {
            "arch" => self.architectures = list().collect(),
            "signed-by" => self.signed_by = Some(signed_by_paths(origin, list())?),
            "trusted" => self.trusted = parse_yes_no(origin, key, value)?,
            _ => tracing::debug!(origin, option = key, "ignored an apt source option"),
        }
        Ok(())
    }
}

fn signed_by_paths(
    origin: &str,
    values: impl Iterator<Item = String>,
) -> Result<SignedBy, SourcesError> {
    let mut paths = Vec::new();
    for value in values {
        if !value.starts_with('/') {
            return Err(invalid(
                origin,
                format!(
                    "Signed-By value {value:?} is not an absolute keyring path \
                     (key fingerprints are not supported)"
                ),
            ));
        }
        paths.push(PathBuf::from(value));
    }
    Ok(SignedBy::Files(paths))
}

fn parse_yes_no(origin: &str, key: &str, value: &str) -> Result<bool, SourcesError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "1" => Ok(true),
        "no" | "false" | "0" => Ok(false),
        other => Err(invalid(
            origin,
            format!("{key}: expected yes or no, found {other:?}"),
        )),
    }
}

fn build_source(
    origin: &str,
    uri: &str,
    suite: &str,
    components: Vec<String>,
    options: &Options,
) -> Result<AptSource, SourcesError> {
    if uri.starts_with("cdrom:") {
        return Err(SourcesError::Cdrom {
            origin: origin.to_owned(),
        });
    }
    let with_slash = if uri.ends_with('/') {
        uri.to_owned()
    } else {
        format!("{uri}/")
    };
    let parsed = Url::parse(&with_slash).map_err(|source| SourcesError::Uri {
        origin: origin.to_owned(),
        uri: uri.to_owned(),
        source,
    })?;
    if !matches!(parsed.scheme(), "http" | "https" | "file") {
        return Err(SourcesError::Scheme {
            origin: origin.to_owned(),
            scheme: parsed.scheme().to_owned(),
        });
    }
    let flat = suite.ends_with('/');
    if flat && !components.is_empty() {
        return Err(invalid(
            origin,
            format!("suite {suite:?} is a flat repository path and takes no components"),
        ));
    }
    if !flat && components.is_empty() {
        return Err(invalid(
            origin,
            format!("suite {suite:?} has no components"),
        ));
    }
    Ok(AptSource {
        uri: parsed,
        suite: suite.to_owned(),
        components,
        architectures: options.architectures.clone(),
        signed_by: options.signed_by.clone().unwrap_or(SignedBy::Default),
        trusted: options.trusted,
        origin: origin.to_owned(),
    })
}

/// One deb822 stanza: field names with their values, continuation lines joined by `\n`.
struct Stanza {
    line: usize,
    fields: Vec<(String, String)>,
}

impl Stanza {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn words(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

fn parse_stanzas(name: &str, text: &str) -> Result<Vec<Stanza>, SourcesError> {
    let mut stanzas = Vec::new();
    let mut current: Option<Stanza> = None;
    for (index, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            stanzas.extend(current.take());
            continue;
        }
        let stanza = current.get_or_insert_with(|| Stanza {
            line: index + 1,
            fields: Vec::new(),
        });
        if line.starts_with([' ', '\t']) {
            let Some((_, value)) = stanza.fields.last_mut() else {
                return Err(invalid(
                    &format!("{name}:{}", index + 1),
                    "continuation line before any field",
                ));
            };
            value.push('\n');
            // A lone `.` stands for an empty line inside a multi-line value.
            let content = line.trim();
            if content != "." {
                value.push_str(content);
            }
            continue;
        }
        let (field, value) = line.split_once(':').ok_or_else(|| {
            invalid(
                &format!("{name}:{}", index + 1),
                format!("line {line:?} is not a field"),
            )
        })?;
        stanza
            .fields
            .push((field.trim().to_owned(), value.trim().to_owned()));
    }
    stanzas.extend(current);
    Ok(stanzas)
}

fn parse_deb822(name: &str, text: &str) -> Result<Vec<AptSource>, SourcesError> {
    let mut sources = Vec::new();
    for stanza in parse_stanzas(name, text)? {
        let origin = format!("{name}:{}", stanza.line);
        if let Some(enabled) = stanza.get("Enabled")
            && !parse_yes_no(&origin, "Enabled", enabled)?
        {
            continue;
        }
        let types = stanza.words("Types");
        if types.is_empty() {
            return Err(invalid(&origin, "missing Types field"));
        }
        if !types.iter().any(|t| t == "deb") {
            continue;
        }
        let mut options = Options {
            architectures: stanza.words("Architectures"),
            ..Options::default()
        };
        if let Some(trusted) = stanza.get("Trusted") {
            options.trusted = parse_yes_no(&origin, "Trusted", trusted)?;
        }
        if let Some(value) = stanza.get("Signed-By") {
            options.signed_by = Some(if value.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
                SignedBy::Inline(value.trim_start_matches('\n').to_owned())
            } else {
                signed_by_paths(&origin, value.split_whitespace().map(str::to_owned))?
            });
        }
        let uris = stanza.words("URIs");
        let suites = stanza.words("Suites");
        if uris.is_empty() {
            return Err(invalid(&origin, "missing URIs field"));
        }
        if suites.is_empty() {
            return Err(invalid(&origin, "missing Suites field"));
        }
        let components = stanza.words("Components");
        for uri in &uris {
            for suite in &suites {
                sources.push(build_source(
                    &origin,
                    uri,
                    suite,
                    components.clone(),
                    &options,
                )?);
            }
        }
    }
    Ok(sources)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn one_line_with_options() {
        let text = "# comment\n\
                    deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/x.gpg trusted=yes] \
                    http://repo.invalid/debian bookworm main contrib # trailing\n\
                    deb-src http://repo.invalid/debian bookworm main\n\
                    \n\
                    deb http://repo.invalid/debian-security bookworm-security main\n";
        let sources = parse_source_files([("etc/apt/sources.list", text)]).unwrap();
        assert_eq!(sources.len(), 2);
        let first = &sources[0];
        assert_eq!(first.uri.as_str(), "http://repo.invalid/debian/");
        assert_eq!(first.suite, "bookworm");
        assert_eq!(first.components, ["main", "contrib"]);
        assert_eq!(first.architectures, ["amd64", "arm64"]);
        assert_eq!(
            first.signed_by,
            SignedBy::Files(vec![PathBuf::from("/usr/share/keyrings/x.gpg")])
        );
        assert!(first.trusted);
        assert_eq!(first.origin, "etc/apt/sources.list:2");
        assert_eq!(sources[1].signed_by, SignedBy::Default);
        assert!(!sources[1].trusted);
        assert_eq!(
            sources[1].dist_url().unwrap().as_str(),
            "http://repo.invalid/debian-security/dists/bookworm-security/"
        );
    }

    #[test]
    fn one_line_rejects_cdrom() {
        let text = "deb cdrom:[Debian GNU/Linux 12]/ bookworm main\n";
        let error = parse_source_files([("etc/apt/sources.list", text)]).unwrap_err();
        assert!(matches!(error, SourcesError::Cdrom { .. }));
        assert!(
            error
                .to_string()
                .starts_with("etc/apt/sources.list:1: cdrom")
        );
    }

    #[test]
    fn one_line_flat_repository() {
        let sources = parse_source_line("deb file:///srv/repo ./", "--apt-source").unwrap();
        assert!(sources[0].is_flat());
        assert!(sources[0].components.is_empty());
        assert_eq!(sources[0].dist_url().unwrap().as_str(), "file:///srv/repo/");
        let sources = parse_source_line("deb http://h.invalid/r sub/dir/", "x").unwrap();
        assert_eq!(
            sources[0].dist_url().unwrap().as_str(),
            "http://h.invalid/r/sub/dir/"
        );
    }

    #[test]
    fn one_line_errors_name_origin() {
        for line in [
            "deb http://h.invalid/r",
            "deb http://h.invalid/r bookworm",
            "deb [arch=amd64 http://h.invalid/r bookworm main",
            "deb ftp://h.invalid/r bookworm main",
            "rpm http://h.invalid/r bookworm main",
            "deb [signed-by=ABCDEF0123] http://h.invalid/r bookworm main",
        ] {
            let error = parse_source_line(line, "--apt-source").unwrap_err();
            assert!(
                error.to_string().starts_with("--apt-source: "),
                "{line}: {error}"
            );
        }
        assert!(parse_source_line("# only a comment", "--apt-source").is_err());
    }

    #[test]
    fn deb822_expands_uris_and_suites() {
        let text = "Types: deb deb-src\n\
                    # a comment inside the stanza\n\
                    URIs: http://a.invalid/debian http://b.invalid/debian\n\
                    Suites: bookworm bookworm-updates\n\
                    Components: main\n\
                    Architectures: amd64\n\
                    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
                    \n\
                    Types: deb\n\
                    URIs: http://c.invalid/\n\
                    Suites: stable\n\
                    Components: main\n\
                    Enabled: no\n\
                    \n\
                    Types: deb-src\n\
                    URIs: http://d.invalid/\n\
                    Suites: stable\n\
                    Components: main\n";
        let sources =
            parse_source_files([("etc/apt/sources.list.d/debian.sources", text)]).unwrap();
        assert_eq!(sources.len(), 4);
        assert_eq!(sources[0].uri.as_str(), "http://a.invalid/debian/");
        assert_eq!(sources[1].suite, "bookworm-updates");
        assert_eq!(sources[2].uri.as_str(), "http://b.invalid/debian/");
        assert_eq!(sources[0].architectures, ["amd64"]);
        assert_eq!(sources[0].origin, "etc/apt/sources.list.d/debian.sources:1");
    }

    #[test]
    fn deb822_inline_key_and_flat() {
        let text = "Types: deb\n\
                    URIs: https://e.invalid/repo\n\
                    Suites: ./\n\
                    Trusted: yes\n\
                    Signed-By:\n \
                    -----BEGIN PGP PUBLIC KEY BLOCK-----\n \
                    .\n \
                    mQINBF\n \
                    -----END PGP PUBLIC KEY BLOCK-----\n";
        let sources = parse_source_files([("x.sources", text)]).unwrap();
        assert_eq!(sources.len(), 1);
        assert!(sources[0].trusted);
        assert!(sources[0].is_flat());
        assert_eq!(
            sources[0].signed_by,
            SignedBy::Inline(
                "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBF\n-----END PGP PUBLIC KEY BLOCK-----"
                    .to_owned()
            )
        );
    }

    #[test]
    fn deb822_missing_fields() {
        let error =
            parse_source_files([("x.sources", "Types: deb\nSuites: a\nComponents: main\n")])
                .unwrap_err();
        assert_eq!(error.to_string(), "x.sources:1: missing URIs field");
        let error = parse_source_files([("x.sources", "URIs: http://h.invalid/\n")]).unwrap_err();
        assert_eq!(error.to_string(), "x.sources:1: missing Types field");
    }

    #[test]
    fn duplicate_entries_merge_components() {
        let files = [
            ("a.list", "deb http://h.invalid/d bookworm main\n"),
            ("b.list", "deb http://h.invalid/d/ bookworm contrib main\n"),
        ];
        let sources = parse_source_files(files).unwrap();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].components, ["main", "contrib"]);
        assert_eq!(sources[0].origin, "a.list:1");
    }

    #[test]
    fn machine_apt_config_parses() {
        let files = read_machine_sources();
        let sources = parse_source_files(files).unwrap();
        assert!(!sources.is_empty());
    }

    /// Reads this machine's apt source files, as an image's would be read.
    pub(crate) fn read_machine_sources() -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        let list = PathBuf::from("/etc/apt/sources.list");
        if let Ok(bytes) = fs_err::read(&list) {
            files.push((list, bytes));
        }
        let mut entries: Vec<_> = fs_err::read_dir("/etc/apt/sources.list.d")
            .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for path in entries {
            if path
                .extension()
                .is_some_and(|e| e == "list" || e == "sources")
            {
                let bytes = fs_err::read(&path).unwrap();
                files.push((path, bytes));
            }
        }
        files
    }
}
