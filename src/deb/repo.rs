//! Fetching from apt repositories: signed Release files, `Packages` indexes and .debs.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};
use url::Url;

use super::packages::{
    MultiArch, Op, PackageEntry, PackagesError, PackagesReader, compare_versions, decompress,
};
use super::release::{self, Keyring, Release, ReleaseError};
use super::sources::{AptSource, SignedBy};
use debversion::Version;

/// An error fetching from a repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("failed to set up the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("request for {url} failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("request for {url} failed with HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{url} not found")]
    NotFound { url: String },
    #[error("failed to read {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid URL for {what} under {base}")]
    Url {
        what: String,
        base: String,
        #[source]
        source: url::ParseError,
    },
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("{source_origin}: failed to read keyring {path}")]
    Keyring {
        source_origin: String,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{url}: {reason}")]
    Index { url: String, reason: String },
    #[error("invalid package index {url}")]
    Packages {
        url: String,
        #[source]
        source: PackagesError,
    },
    #[error(transparent)]
    DebMismatch(Box<DebMismatch>),
    #[error(
        "invalid mirror rewrite {value:?}: {reason}\n\
         hint: write FROM=TO with two URLs, such as \
         http://deb.debian.org/debian=file:///srv/mirror/debian"
    )]
    Mirror { value: String, reason: String },
}

/// A downloaded .deb that does not match its index entry.
#[derive(Debug, thiserror::Error)]
#[error(
    "download of {package} {version} from {url} failed verification: {reason} \
     (expected {expected_size} bytes with SHA-256 {expected_sha256}, \
     got {actual_size} bytes with SHA-256 {actual_sha256})"
)]
pub struct DebMismatch {
    pub package: String,
    pub version: String,
    pub url: String,
    pub reason: &'static str,
    pub expected_size: u64,
    pub expected_sha256: String,
    pub actual_size: u64,
    pub actual_sha256: String,
}

/// A version constraint on a virtual package, from `Provides: name (= version)`.
pub type ProvidedVersion = Option<(Op, Version)>;

/// A `--repo-mirror FROM=TO` rule: URLs starting with `from` are fetched from `to` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorRewrite {
    pub from: String,
    pub to: String,
}

impl FromStr for MirrorRewrite {
    type Err = RepoError;

    /// Parses `FROM=TO`. Both sides must be URLs, `TO` with an `http`, `https` or
    /// `file` scheme. A trailing `/` on one side is added to the other, so
    /// `http://a/debian/=file:///m` and `http://a/debian=file:///m/` both map
    /// `http://a/debian/dists/…` to `file:///m/dists/…`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| RepoError::Mirror {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let (from, to) = value
            .split_once('=')
            .ok_or_else(|| invalid("there is no `=` between FROM and TO"))?;
        let (from, to) = (from.trim(), to.trim());
        if Url::parse(from).is_err() {
            return Err(invalid("FROM is not a URL"));
        }
        let target = Url::parse(to).map_err(|_| invalid("TO is not a URL"))?;
        if !matches!(target.scheme(), "http" | "https" | "file") {
            return Err(invalid("TO must be an http, https or file URL"));
        }
        let (mut from, mut to) = (from.to_owned(), to.to_owned());
        if from.ends_with('/') != to.ends_with('/') {
            if !from.ends_with('/') {
                from.push('/');
            }
            if !to.ends_with('/') {
                to.push('/');
            }
        }
        Ok(MirrorRewrite { from, to })
    }
}

/// Settings of a [`Fetcher`].
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The limit for one whole request, including the body.
    pub timeout: Duration,
    /// Retries after a connection error, a timeout, HTTP 429 or a 5xx status.
    pub retries: u32,
    pub mirrors: Vec<MirrorRewrite>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            retries: 3,
            mirrors: Vec::new(),
        }
    }
}

/// Fetches repository files over HTTP(S) or from `file://` URLs.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    options: FetchOptions,
}

impl Fetcher {
    pub fn new(options: FetchOptions) -> Result<Self, RepoError> {
        // reqwest is built without a default rustls provider; installing one twice fails
        // harmlessly when the caller has already chosen it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("layermend/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(RepoError::Client)?;
        Ok(Self { client, options })
    }

    /// Applies the first matching mirror rewrite to `url`.
    pub fn rewrite(&self, url: &Url) -> Url {
        for mirror in &self.options.mirrors {
            if let Some(rest) = url.as_str().strip_prefix(&mirror.from)
                && let Ok(rewritten) = Url::parse(&format!("{}{rest}", mirror.to))
            {
                return rewritten;
            }
        }
        url.clone()
    }

    /// Fetches `url` into memory; a missing file yields `None`.
    pub async fn fetch(&self, url: &Url) -> Result<Option<Bytes>, RepoError> {
        let url = self.rewrite(url);
        if url.scheme() == "file" {
            let path = file_path(&url)?;
            return match tokio::fs::read(&path).await {
                Ok(data) => Ok(Some(Bytes::from(data))),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(RepoError::Io {
                    path: path.display().to_string(),
                    source,
                }),
            };
        }
        let Some(response) = self.send(&url).await? else {
            return Ok(None);
        };
        let body = response
            .bytes()
            .await
            .map_err(|source| RepoError::Request {
                url: url.to_string(),
                source,
            })?;
        Ok(Some(body))
    }

    /// Sends a GET with retries; HTTP 404 and 410 yield `None`.
    async fn send(&self, url: &Url) -> Result<Option<reqwest::Response>, RepoError> {
        let mut attempt = 0;
        loop {
            let (error, retryable) = match self.client.get(url.clone()).send().await {
                Ok(response) if response.status().is_success() => {
                    tracing::debug!(%url, "fetched");
                    return Ok(Some(response));
                }
                Ok(response)
                    if matches!(
                        response.status(),
                        reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::GONE
                    ) =>
                {
                    tracing::debug!(%url, status = %response.status(), "not found");
                    return Ok(None);
                }
                Ok(response) => {
                    let status = response.status();
                    let retryable = status.is_server_error()
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    let error = RepoError::Status {
                        url: url.to_string(),
                        status: status.as_u16(),
                    };
                    (error, retryable)
                }
                Err(source) => {
                    let retryable =
                        source.is_connect() || source.is_timeout() || source.is_request();
                    let error = RepoError::Request {
                        url: url.to_string(),
                        source,
                    };
                    (error, retryable)
                }
            };
            if !retryable || attempt >= self.options.retries {
                return Err(error);
            }
            let delay = Duration::from_millis(500 * 2u64.pow(attempt));
            tracing::debug!(%url, attempt, ?delay, %error, "retrying request");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

fn file_path(url: &Url) -> Result<PathBuf, RepoError> {
    url.to_file_path().map_err(|()| RepoError::Io {
        path: url.to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a local file URL"),
    })
}

/// Read access to files of the image being patched, for keyrings named by apt sources.
pub trait ImageFiles: Sync {
    /// Reads a file by absolute path inside the image; a missing file yields `None`.
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Lists the entries of a directory inside the image; a missing directory is empty.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
}

/// Keyrings apt 2.6 trusts for a source without `Signed-By`, plus the shipped keyrings.
const DEFAULT_KEYRING_DIRS: [&str; 2] = ["/etc/apt/trusted.gpg.d", "/usr/share/keyrings"];

/// Collects the keys that may sign `source`'s Release file, plus `extra` keys from the user.
pub fn load_keyring(
    source: &AptSource,
    files: &dyn ImageFiles,
    extra: &Keyring,
) -> Result<Keyring, RepoError> {
    let read_error = |path: &Path, source_error: io::Error| RepoError::Keyring {
        source_origin: source.origin.clone(),
        path: path.display().to_string(),
        source: source_error,
    };
    let mut keyring = Keyring::new();
    match &source.signed_by {
        SignedBy::Inline(text) => {
            keyring.add_bytes(
                &format!("{} (inline Signed-By)", source.origin),
                text.as_bytes(),
            );
        }
        SignedBy::Files(paths) => {
            for path in paths {
                let data = files
                    .read(path)
                    .map_err(|e| read_error(path, e))?
                    .ok_or_else(|| read_error(path, io::ErrorKind::NotFound.into()))?;
                keyring.add_bytes(&path.display().to_string(), &data);
            }
        }
        SignedBy::Default => {
            let mut paths = vec![PathBuf::from("/etc/apt/trusted.gpg")];
            for dir in DEFAULT_KEYRING_DIRS {
                let mut entries = files
                    .list(Path::new(dir))
                    .map_err(|e| read_error(Path::new(dir), e))?;
                entries.sort();
                paths.extend(
                    entries
                        .into_iter()
                        .filter(|p| p.extension().is_some_and(|e| e == "gpg" || e == "asc")),
                );
            }
            for path in paths {
                if let Some(data) = files.read(&path).map_err(|e| read_error(&path, e))? {
                    keyring.add_bytes(&path.display().to_string(), &data);
                }
            }
        }
    }
    keyring.extend(extra);
    Ok(keyring)
}

/// A package version offered by a repository.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub entry: PackageEntry,
    /// The repository URI that `entry.filename` is relative to.
    pub repo_uri: Url,
    /// The repository and suite, for messages.
    pub origin: String,
}

impl Candidate {
    /// Returns the .deb's URL, before mirror rewriting.
    pub fn deb_url(&self) -> Result<Url, RepoError> {
        // NOTE: for flat repositories this also resolves Filename against the URI, which
        // matches repositories whose Filename includes the suite path.
        self.repo_uri
            .join(self.entry.filename.trim_start_matches("./"))
            .map_err(|source| RepoError::Url {
                what: self.entry.filename.clone(),
                base: self.repo_uri.to_string(),
                source,
            })
    }
}

/// The binary packages of every loaded repository, looked up by name.
#[derive(Debug, Default)]
pub struct RepoIndex {
    candidates: Vec<Arc<Candidate>>,
    by_name: HashMap<String, Vec<usize>>,
    /// Virtual package name -> (candidate, provided version constraint).
    provides: HashMap<String, Vec<(usize, ProvidedVersion)>>,
}

impl RepoIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a candidate; a repeat of the same package, version and architecture is ignored.
    pub fn add(&mut self, candidate: Candidate) -> Result<(), PackagesError> {
        let entry = &candidate.entry;
        let existing = self.by_name.get(&entry.package).into_iter().flatten();
        for &index in existing {
            let other = &self.candidates[index].entry;
            if other.architecture == entry.architecture
                && compare_versions(&other.version, &entry.version).is_eq()
            {
                return Ok(());
            }
        }
        let index = self.candidates.len();
        for provided in entry.provides_relations()? {
            self.provides
                .entry(provided.name)
                .or_default()
                .push((index, provided.constraint));
        }
        self.by_name
            .entry(entry.package.clone())
            .or_default()
            .push(index);
        self.candidates.push(Arc::new(candidate));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// Returns the versions of `name` installable on `arch`, newest first.
    ///
    /// `Architecture: all` packages match every architecture.
    pub fn candidates(&self, name: &str, arch: &str) -> Vec<Arc<Candidate>> {
        let mut found: Vec<Arc<Candidate>> = self
            .by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|&index| Arc::clone(&self.candidates[index]))
            .filter(|c| c.entry.architecture == arch || c.entry.architecture == "all")
            .collect();
        found.sort_by(|a, b| compare_versions(&b.entry.version, &a.entry.version));
        found
    }

    /// Returns the packages that provide the virtual package `name`, with the provided
    /// version constraint (`Provides: name (= version)`), if any.
    pub fn providers(&self, name: &str) -> Vec<(Arc<Candidate>, ProvidedVersion)> {
        self.provides
            .get(name)
            .into_iter()
            .flatten()
            .map(|(index, constraint)| (Arc::clone(&self.candidates[*index]), constraint.clone()))
            .collect()
    }

    /// Tells whether some candidate of `name` on `arch` is `Multi-Arch: same`.
    pub fn is_multi_arch_same(&self, name: &str, arch: &str) -> bool {
        self.candidates(name, arch)
            .iter()
            .any(|c| c.entry.multi_arch == MultiArch::Same)
    }
}

/// Fetches and verifies a source's Release file.
async fn fetch_release(
    fetcher: &Fetcher,
    source: &AptSource,
    keyring: &Keyring,
    now: DateTime<Utc>,
) -> Result<(Release, Url), RepoError> {
    let dist = source.dist_url().map_err(|e| RepoError::Url {
        what: source.suite.clone(),
        base: source.uri.to_string(),
        source: e,
    })?;
    let join = |name: &str| {
        dist.join(name).map_err(|e| RepoError::Url {
            what: name.to_owned(),
            base: dist.to_string(),
            source: e,
        })
    };
    let inrelease_url = join("InRelease")?;
    if let Some(data) = fetcher.fetch(&inrelease_url).await? {
        let url = inrelease_url.to_string();
        let release = if source.trusted {
            match release::verify_inrelease(&data, keyring, now, &url) {
                Ok(release) => release,
                Err(error) => {
                    tracing::debug!(%url, %error, "accepting the unverified InRelease (trusted=yes)");
                    let text = String::from_utf8_lossy(&data);
                    let body = text
                        .split_once("\n\n")
                        .map_or(&*text, |(_, rest)| rest)
                        .split("-----BEGIN PGP SIGNATURE-----")
                        .next()
                        .unwrap_or_default();
                    release::parse_release(body, &url)?
                }
            }
        } else {
            release::verify_inrelease(&data, keyring, now, &url)?
        };
        return Ok((release, dist));
    }

    let release_url = join("Release")?;
    let url = release_url.to_string();
    let data = fetcher
        .fetch(&release_url)
        .await?
        .ok_or_else(|| RepoError::NotFound {
            url: fetcher.rewrite(&inrelease_url).to_string(),
        })?;
    if source.trusted {
        return Ok((
            release::parse_release(&String::from_utf8_lossy(&data), &url)?,
            dist,
        ));
    }
    let signature_url = join("Release.gpg")?;
    let signature = fetcher
        .fetch(&signature_url)
        .await?
        .ok_or_else(|| RepoError::NotFound {
            url: fetcher.rewrite(&signature_url).to_string(),
        })?;
    let release = release::verify_detached(&data, &signature, keyring, now, &url)?;
    Ok((release, dist))
}

/// Fetches the index file `path` listed in `release`, checking its size and SHA-256.
async fn fetch_index_file(
    fetcher: &Fetcher,
    release: &Release,
    dist: &Url,
    path: &str,
) -> Result<Bytes, RepoError> {
    let expected = &release.sha256[path];
    let url = dist.join(path).map_err(|source| RepoError::Url {
        what: path.to_owned(),
        base: dist.to_string(),
        source,
    })?;
    let mut data = None;
    if release.acquire_by_hash {
        // The by-hash name stays valid while the mirror publishes a newer index.
        let directory = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        let by_hash = format!("{directory}/by-hash/SHA256/{}", expected.sha256);
        if let Ok(hash_url) = dist.join(by_hash.trim_start_matches('/')) {
            data = fetcher.fetch(&hash_url).await?;
        }
    }
    let data = match data {
        Some(data) => data,
        None => fetcher
            .fetch(&url)
            .await?
            .ok_or_else(|| RepoError::NotFound {
                url: fetcher.rewrite(&url).to_string(),
            })?,
    };
    let actual = hex::encode(Sha256::digest(&data));
    if data.len() as u64 != expected.size || actual != expected.sha256 {
        return Err(RepoError::Index {
            url: url.to_string(),
            reason: format!(
                "expected {} bytes with SHA-256 {}, got {} bytes with SHA-256 {actual}\n\
                 hint: the mirror may be syncing; retry later",
                expected.size,
                expected.sha256,
                data.len()
            ),
        });
    }
    Ok(data)
}

/// Picks the best compression of a `Packages` index listed in the Release file.
/// Lists the index files of `directory` that the Release file names, in the order they
/// are tried. gzip comes first: bookworm's main index is 37% larger as gzip than as xz,
/// but `zcat` unpacks its 50 MB in 0.23 s where `xz -dc` takes 0.66 s on one core of a
/// 2-core test VM. A mirror that lacks one of them falls through to the next.
fn index_candidates(release: &Release, directory: &str) -> Vec<String> {
    ["Packages.gz", "Packages.xz", "Packages"]
        .into_iter()
        .map(|name| format!("{directory}{name}"))
        .filter(|path| release.sha256.contains_key(path))
        .collect()
}

/// One `Packages` index, fetched and checked against its signed `Release`, still
/// compressed so it can be scanned again with a wider filter.
#[derive(Debug, Clone)]
pub struct FetchedIndex {
    /// The index's URL, for messages.
    pub url: String,
    /// The path relative to the `Release` file; its extension names the compression.
    pub path: String,
    /// The compressed index, in memory or spilled to a temporary file.
    pub data: IndexData,
    /// The repository URI that the index's `Filename` fields are relative to.
    pub repo_uri: Url,
    /// The repository and suite, for messages.
    pub origin: String,
}

/// Where a fetched index's bytes are kept.
#[derive(Debug, Clone)]
pub enum IndexData {
    Memory(Bytes),
    /// A temporary file, removed when the last clone is dropped.
    File(Arc<tempfile::TempPath>),
}

impl FetchedIndex {
    /// Moves the index bytes into a temporary file in `dir`, so an index that may be
    /// scanned again does not stay in memory.
    pub fn spill_to(self, dir: &Path) -> Result<Self, RepoError> {
        let IndexData::Memory(bytes) = &self.data else {
            return Ok(self);
        };
        let io_error = |path: &Path, source| RepoError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(|e| io_error(dir, e))?;
        file.write_all(bytes)
            .map_err(|e| io_error(file.path(), e))?;
        Ok(FetchedIndex {
            data: IndexData::File(Arc::new(file.into_temp_path())),
            ..self
        })
    }

    fn reader(&self) -> Result<Box<dyn io::Read + Send + '_>, RepoError> {
        match &self.data {
            IndexData::Memory(bytes) => Ok(Box::new(bytes.as_ref())),
            IndexData::File(path) => {
                let file =
                    fs_err::File::open(path.to_path_buf()).map_err(|source| RepoError::Io {
                        path: path.display().to_string(),
                        source,
                    })?;
                Ok(Box::new(io::BufReader::with_capacity(256 * 1024, file)))
            }
        }
    }
}

/// Fetches and verifies one source's `Packages` indexes for `arch` (and `all`).
async fn fetch_source(
    fetcher: &Fetcher,
    source: &AptSource,
    arch: &str,
    files: &dyn ImageFiles,
    extra_keys: &Keyring,
    now: DateTime<Utc>,
) -> Result<Vec<FetchedIndex>, RepoError> {
    let keyring = load_keyring(source, files, extra_keys)?;
    let (release, dist) = fetch_release(fetcher, source, &keyring, now).await?;
    let origin = format!("{} {}", source.uri, source.suite);
    if !source.architectures.is_empty() && !source.architectures.iter().any(|a| a == arch) {
        tracing::debug!(%origin, arch, "source excludes the architecture");
        return Ok(Vec::new());
    }

    let mut directories = Vec::new();
    if source.is_flat() {
        directories.push(String::new());
    }
    for component in &source.components {
        directories.push(format!("{component}/binary-{arch}/"));
        if release.separate_arch_all {
            directories.push(format!("{component}/binary-all/"));
        }
    }

    let mut indexes = Vec::new();
    for directory in directories {
        let candidates = index_candidates(&release, &directory);
        if candidates.is_empty() {
            tracing::debug!(%origin, directory, "no Packages index listed");
            continue;
        }
        let mut fetched = None;
        for (position, path) in candidates.iter().enumerate() {
            match fetch_index_file(fetcher, &release, &dist, path).await {
                Ok(data) => {
                    fetched = Some((path.clone(), data));
                    break;
                }
                Err(RepoError::NotFound { url }) if position + 1 < candidates.len() => {
                    tracing::debug!(%url, "index file not on the mirror, trying the next form");
                }
                Err(error) => return Err(error),
            }
        }
        let Some((path, data)) = fetched else {
            continue;
        };
        indexes.push(FetchedIndex {
            url: format!("{dist}{path}"),
            path,
            data: IndexData::Memory(data),
            repo_uri: source.uri.clone(),
            origin: origin.clone(),
        });
    }
    if indexes.is_empty() {
        return Err(RepoError::Index {
            url: dist.to_string(),
            reason: format!(
                "the Release file lists no Packages index for components {:?} on {arch}",
                source.components
            ),
        });
    }
    Ok(indexes)
}

/// Fetches and verifies the `Packages` indexes of every source for `arch`, concurrently.
///
/// `files` reads keyrings from the image; `extra_keys` are trusted for every source.
pub async fn fetch_indexes(
    fetcher: &Fetcher,
    sources: &[AptSource],
    arch: &str,
    files: &dyn ImageFiles,
    extra_keys: &Keyring,
    now: DateTime<Utc>,
) -> Result<Vec<FetchedIndex>, RepoError> {
    let loads = sources
        .iter()
        .map(|source| fetch_source(fetcher, source, arch, files, extra_keys, now));
    let results = futures_util::future::try_join_all(loads).await?;
    Ok(results.into_iter().flatten().collect())
}

/// Parses one fetched index, keeping the packages for `arch` and `all` that `filter`
/// accepts by name or by a name in their `Provides`.
fn scan_index(
    index: &FetchedIndex,
    arch: &str,
    filter: Option<&HashSet<String>>,
) -> Result<Vec<Candidate>, RepoError> {
    let mut reader =
        PackagesReader::new(decompress(&index.path, index.reader()?), index.url.clone());
    if let Some(names) = filter {
        reader = reader.with_names(names.clone());
    }
    let mut candidates = Vec::new();
    for entry in reader {
        let entry = entry.map_err(|source| RepoError::Packages {
            url: index.url.clone(),
            source,
        })?;
        if entry.architecture != arch && entry.architecture != "all" {
            continue;
        }
        candidates.push(Candidate {
            entry,
            repo_uri: index.repo_uri.clone(),
            origin: index.origin.clone(),
        });
    }
    tracing::debug!(url = %index.url, packages = candidates.len(), "parsed package index");
    Ok(candidates)
}

/// Parses fetched indexes into one [`RepoIndex`], each index on a blocking thread so
/// large indexes decompress on every core. With a `filter`, only packages named in it or
/// providing a name in it are kept, which bounds memory by the image instead of the
/// archive.
pub async fn scan_indexes(
    indexes: &[FetchedIndex],
    arch: &str,
    filter: Option<&HashSet<String>>,
) -> Result<RepoIndex, RepoError> {
    let filter = filter.map(|names| Arc::new(names.clone()));
    let scans = indexes.iter().map(|index| {
        let index = index.clone();
        let arch = arch.to_owned();
        let filter = filter.clone();
        tokio::task::spawn_blocking(move || scan_index(&index, &arch, filter.as_deref()))
    });
    let results = futures_util::future::join_all(scans).await;
    let mut repo = RepoIndex::new();
    for result in results {
        let candidates = result.map_err(|error| RepoError::Index {
            url: String::new(),
            reason: format!("index scan task failed: {error}"),
        })??;
        for candidate in candidates {
            let url = candidate.origin.clone();
            repo.add(candidate)
                .map_err(|source| RepoError::Packages { url, source })?;
        }
    }
    Ok(repo)
}

/// Loads the `Packages` indexes of every source for `arch`, keeping every package.
///
/// `files` reads keyrings from the image; `extra_keys` are trusted for every source.
pub async fn load_index(
    fetcher: &Fetcher,
    sources: &[AptSource],
    arch: &str,
    files: &dyn ImageFiles,
    extra_keys: &Keyring,
    now: DateTime<Utc>,
) -> Result<RepoIndex, RepoError> {
    let indexes = fetch_indexes(fetcher, sources, arch, files, extra_keys, now).await?;
    scan_indexes(&indexes, arch, None).await
}

/// Downloads a candidate's .deb into `dest_dir`, checking its size and SHA-256.
///
/// The body streams to a temporary file that is renamed into place only after it
/// verifies, and the download stops once it exceeds the indexed size.
pub async fn download_deb(
    fetcher: &Fetcher,
    candidate: &Candidate,
    dest_dir: &Path,
) -> Result<PathBuf, RepoError> {
    let entry = &candidate.entry;
    let url = fetcher.rewrite(&candidate.deb_url()?);
    let io_error = |path: &Path, source| RepoError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut temp = tempfile::NamedTempFile::new_in(dest_dir).map_err(|e| io_error(dest_dir, e))?;
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    let mut too_large = false;
    let mut write_chunk = |chunk: &[u8], file: &mut std::fs::File| -> io::Result<bool> {
        written += chunk.len() as u64;
        if written > entry.size {
            return Ok(false);
        }
        hasher.update(chunk);
        file.write_all(chunk)?;
        Ok(true)
    };

    if url.scheme() == "file" {
        let path = file_path(&url)?;
        let data = fs_err::read(&path).map_err(|e| io_error(&path, e))?;
        too_large =
            !write_chunk(&data, temp.as_file_mut()).map_err(|e| io_error(temp.path(), e))?;
    } else {
        let mut response = fetcher
            .send(&url)
            .await?
            .ok_or_else(|| RepoError::NotFound {
                url: url.to_string(),
            })?;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|source| RepoError::Request {
                url: url.to_string(),
                source,
            })?
        {
            if !write_chunk(&chunk, temp.as_file_mut()).map_err(|e| io_error(temp.path(), e))? {
                too_large = true;
                break;
            }
        }
    }

    let actual = hex::encode(hasher.finalize());
    let reason = if too_large {
        Some("larger than the index says")
    } else if written != entry.size {
        Some("size mismatch")
    } else if actual != entry.sha256 {
        Some("SHA-256 mismatch")
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(RepoError::DebMismatch(Box::new(DebMismatch {
            package: entry.package.clone(),
            version: entry.version.to_string(),
            url: url.to_string(),
            reason,
            expected_size: entry.size,
            expected_sha256: entry.sha256.clone(),
            actual_size: written,
            actual_sha256: actual,
        })));
    }

    let file_name = entry
        .filename
        .rsplit('/')
        .next()
        .filter(|name| !name.is_empty() && *name != "..")
        .map_or_else(
            || {
                format!(
                    "{}_{}_{}.deb",
                    entry.package, entry.version, entry.architecture
                )
            },
            str::to_owned,
        );
    let destination = dest_dir.join(file_name);
    temp.persist(&destination)
        .map_err(|e| io_error(&destination, e.error))?;
    tracing::debug!(package = %entry.package, version = %entry.version, path = %destination.display(), "downloaded");
    Ok(destination)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Image files served from a directory on the host, as a rootfs would be.
    pub(crate) struct HostFiles(pub PathBuf);

    impl ImageFiles for HostFiles {
        fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
            let full = self.0.join(path.strip_prefix("/").unwrap_or(path));
            match std::fs::read(&full) {
                Ok(data) => Ok(Some(data)),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(error),
            }
        }

        fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
            let full = self.0.join(dir.strip_prefix("/").unwrap_or(dir));
            match std::fs::read_dir(&full) {
                Ok(entries) => Ok(entries
                    .filter_map(Result::ok)
                    .map(|e| dir.join(e.file_name()))
                    .collect()),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(error) => Err(error),
            }
        }
    }

    const EXCERPT: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/apt/bookworm-security-main-amd64-Packages"
    );

    /// Builds a trusted `file://` repository with the Packages excerpt and one fake .deb.
    fn local_repo(root: &Path, deb: &[u8]) -> AptSource {
        let mut packages = fs_err::read_to_string(EXCERPT).unwrap();
        packages.push_str(&format!(
            "\nPackage: hello\nVersion: 1.0-1\nArchitecture: amd64\nFilename: pool/hello_1.0-1_amd64.deb\n\
             Size: {}\nSHA256: {}\n",
            deb.len(),
            hex::encode(Sha256::digest(deb))
        ));
        let dist = root.join("dists/stable/main/binary-amd64");
        fs_err::create_dir_all(&dist).unwrap();
        let mut xz = Vec::new();
        let mut encoder = liblzma::write::XzEncoder::new(&mut xz, 6);
        encoder.write_all(packages.as_bytes()).unwrap();
        encoder.finish().unwrap();
        fs_err::write(dist.join("Packages.xz"), &xz).unwrap();
        let release = format!(
            "Codename: stable\nComponents: main\nSHA256:\n {} {} main/binary-amd64/Packages.xz\n",
            hex::encode(Sha256::digest(&xz)),
            xz.len()
        );
        fs_err::write(root.join("dists/stable/Release"), release).unwrap();
        fs_err::create_dir_all(root.join("pool")).unwrap();
        fs_err::write(root.join("pool/hello_1.0-1_amd64.deb"), deb).unwrap();
        let line = format!("deb [trusted=yes] file://{} stable main", root.display());
        super::super::sources::parse_source_line(&line, "test")
            .unwrap()
            .remove(0)
    }

    #[tokio::test]
    async fn local_repo_loads_and_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let source = local_repo(dir.path(), b"not really a deb");
        let fetcher = Fetcher::new(FetchOptions::default()).unwrap();
        let files = HostFiles(PathBuf::from("/nonexistent"));
        let index = load_index(
            &fetcher,
            &[source],
            "amd64",
            &files,
            &Keyring::new(),
            Utc::now(),
        )
        .await
        .unwrap();
        assert_eq!(index.len(), 12);
        assert_eq!(index.candidates("libssl3", "amd64").len(), 1);
        assert!(index.candidates("libssl3", "arm64").is_empty());
        assert_eq!(index.providers("httpd")[0].0.entry.package, "apache2");

        let hello = &index.candidates("hello", "amd64")[0];
        let out = tempfile::tempdir().unwrap();
        let path = download_deb(&fetcher, hello, out.path()).await.unwrap();
        assert_eq!(fs_err::read(&path).unwrap(), b"not really a deb");
        assert!(path.ends_with("hello_1.0-1_amd64.deb"));
    }

    #[tokio::test]
    async fn download_rejects_wrong_hash() {
        let dir = tempfile::tempdir().unwrap();
        let source = local_repo(dir.path(), b"original");
        fs_err::write(dir.path().join("pool/hello_1.0-1_amd64.deb"), b"tampered").unwrap();
        let fetcher = Fetcher::new(FetchOptions::default()).unwrap();
        let files = HostFiles(PathBuf::from("/nonexistent"));
        let index = load_index(
            &fetcher,
            &[source],
            "amd64",
            &files,
            &Keyring::new(),
            Utc::now(),
        )
        .await
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let error = download_deb(&fetcher, &index.candidates("hello", "amd64")[0], out.path())
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("hello 1.0-1"), "{message}");
        assert!(message.contains("SHA-256 mismatch"), "{message}");
        assert!(fs_err::read_dir(out.path()).unwrap().next().is_none());
    }

    #[tokio::test]
    async fn unsigned_repo_without_trust_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = local_repo(dir.path(), b"x");
        source.trusted = false;
        let fetcher = Fetcher::new(FetchOptions::default()).unwrap();
        let files = HostFiles(PathBuf::from("/nonexistent"));
        let error = load_index(
            &fetcher,
            &[source],
            "amd64",
            &files,
            &Keyring::new(),
            Utc::now(),
        )
        .await
        .unwrap_err();
        assert!(
            error.to_string().contains("Release.gpg not found"),
            "{error}"
        );
    }

    #[test]
    fn mirror_rewrite_replaces_prefix() {
        let options = FetchOptions {
            mirrors: vec![
                "http://a.invalid/debian/=http://127.0.0.1:9/mirror/"
                    .parse()
                    .unwrap(),
            ],
            ..FetchOptions::default()
        };
        let fetcher = Fetcher::new(options).unwrap();
        let url = Url::parse("http://a.invalid/debian/dists/x/InRelease").unwrap();
        assert_eq!(
            fetcher.rewrite(&url).as_str(),
            "http://127.0.0.1:9/mirror/dists/x/InRelease"
        );
        let other = Url::parse("http://b.invalid/debian/x").unwrap();
        assert_eq!(fetcher.rewrite(&other), other);
        assert!("nothing".parse::<MirrorRewrite>().is_err());
    }

    #[test]
    fn mirror_rewrite_rejects_bad_urls() {
        let cases = [
            "http://a.invalid/debian=notaurl",
            "notaurl=http://127.0.0.1/m",
            "http://a.invalid/debian=ftp://127.0.0.1/m",
            "http://a.invalid/debian",
        ];
        for text in cases {
            let error = text.parse::<MirrorRewrite>().unwrap_err();
            assert!(error.to_string().contains(text), "{text}: {error}");
        }
    }

    #[test]
    fn mirror_rewrite_matches_trailing_slashes() {
        let mirror: MirrorRewrite = "http://a.invalid/debian/=http://127.0.0.1:9/x"
            .parse()
            .unwrap();
        assert_eq!(mirror.from, "http://a.invalid/debian/");
        assert_eq!(mirror.to, "http://127.0.0.1:9/x/");
        let mirror: MirrorRewrite = "http://a.invalid/debian=file:///srv/m/".parse().unwrap();
        assert_eq!(mirror.from, "http://a.invalid/debian/");
        assert_eq!(mirror.to, "file:///srv/m/");
    }

    #[test]
    fn default_keyrings_from_image() {
        let source = super::super::sources::parse_source_line("deb http://h.invalid/ x main", "t")
            .unwrap()
            .remove(0);
        let files = HostFiles(PathBuf::from("/"));
        let keyring = load_keyring(&source, &files, &Keyring::new()).unwrap();
        assert!(
            keyring
                .names()
                .iter()
                .any(|n| n == "/usr/share/keyrings/debian-archive-keyring.gpg")
        );
        assert!(!keyring.is_empty());
    }
}
