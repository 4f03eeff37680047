//! The Debian patch: from the image's dpkg database and apt sources to a built layer.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::{
    Event, FailedPackage, PackageUpdate, PatchSettings, Phase, Reporter, ScriptsNotRun,
    SkippedPackage, Transfer,
};
use crate::deb::debfile;
use crate::deb::install::{self, InstallError, InstallOptions, PackageToInstall};
use crate::deb::packages::{self, MultiArch, PackagesError};
use crate::deb::release::Keyring;
use crate::deb::repo::{self, Candidate, FetchOptions, Fetcher, ImageFiles, RepoError};
use crate::deb::resolve::{
    self, InstalledPackage, Plan, Request, ResolveError, ResolveOptions, SkipReason,
};
use crate::deb::sources::{self, AptSource, SourcesError};
use crate::deb::status::{StatusError, StatusStore};
use crate::image::PatchedPackage;
use crate::layer::{BuiltLayer, LayerError};
use crate::report::Report;
use crate::rootfs::{FileKind, RootfsIndex};

/// Package downloads at the same time.
const PARALLEL_DOWNLOADS: usize = 4;

/// The inputs of the Debian patch.
pub struct DebianInputs<'a> {
    pub rootfs: &'a RootfsIndex,
    /// The image without its earlier layermend patch layer, when it has one: the new
    /// layer replaces that one, so it is planned against this view.
    pub base_rootfs: Option<&'a RootfsIndex>,
    /// The packages the earlier patch layer updated; they stay updated.
    pub previous: &'a [PatchedPackage],
    /// The scanner report; `None` updates every package with a newer version.
    pub report: Option<&'a Report>,
    pub settings: &'a PatchSettings,
    pub work_dir: &'a Path,
    /// The image config's `architecture`, used when the dpkg database names none.
    pub platform_arch: Option<String>,
    /// The mtime of files the patch writes itself (dpkg metadata), seconds since the epoch.
    pub created_epoch: u64,
    /// The repository client and the package files shared by every platform of a run.
    pub downloads: &'a SharedDownloads,
}

/// Package downloads shared by the platforms of one run: one repository client, and
/// each .deb file fetched once per SHA-256, however many platforms install it.
pub struct SharedDownloads {
    fetcher: Fetcher,
    dir: PathBuf,
    files: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<PathBuf>>>>,
    /// One decompression per core, because each xz decoder keeps its dictionary (8 MiB for
    /// Debian's packages) in memory.
    decompressions: tokio::sync::Semaphore,
}

impl SharedDownloads {
    /// Creates the client; downloads go to `dir`, created by the first download, so a
    /// dry run leaves no trace of it.
    pub fn new(settings: &PatchSettings, dir: &Path) -> Result<Self, DebianError> {
        let fetcher = Fetcher::new(FetchOptions {
            timeout: settings.timeout,
            mirrors: settings.repo_mirrors.clone(),
            ..FetchOptions::default()
        })?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(SharedDownloads {
            fetcher,
            dir: dir.to_owned(),
            files: Mutex::new(HashMap::new()),
            decompressions: tokio::sync::Semaphore::new(cores),
        })
    }

    /// Returns a candidate's .deb file with a plain data member, downloading it (or
    /// copying it from the package cache) and decompressing it unless this run already
    /// has it.
    async fn download(
        &self,
        settings: &PatchSettings,
        candidate: &Candidate,
    ) -> Result<PathBuf, DebianError> {
        let cell = self
            .files
            .lock()
            .expect("no panic while holding the download map")
            .entry(candidate.entry.sha256.clone())
            .or_default()
            .clone();
        let path = cell
            .get_or_try_init(|| async {
                create_dir(&self.dir)?;
                let path = download_one(settings, &self.fetcher, candidate, &self.dir).await?;
                // Decompress the data member now, on a blocking thread, so the ordered
                // unpacking that follows reads plain tar.
                let _permit = self.decompressions.acquire().await;
                let plain = path.with_extension("plain.deb");
                let (from, to) = (path, plain.clone());
                tokio::task::spawn_blocking(move || debfile::decompress_data_member(&from, &to))
                    .await
                    .map_err(|error| DebianError::Task(error.to_string()))??;
                Ok::<_, DebianError>(plain)
            })
            .await?;
        Ok(path.clone())
    }
}

/// The outcome of the Debian patch; `layer` is `None` when there is nothing to patch.
pub struct DebianResult {
    pub layer: Option<BuiltLayer>,
    pub updates: Vec<PackageUpdate>,
    pub skipped: Vec<SkippedPackage>,
    pub failed: Vec<FailedPackage>,
    pub scripts_not_run: Vec<ScriptsNotRun>,
    pub warnings: Vec<String>,
}

/// A failure of the Debian patch.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error("installed package {package} has an invalid relationship field")]
    InstalledRelation {
        package: String,
        #[source]
        source: PackagesError,
    },
    #[error(
        "the report names fixed version {version:?} for {package}, which is not a valid \
         Debian version"
    )]
    InvalidFixedVersion { package: String, version: String },
    #[error(
        "the image has no apt sources (/etc/apt/sources.list or /etc/apt/sources.list.d/), \
         so there is no repository to take updates from\n\
         hint: name the repositories and their keys, for example \
         --apt-source 'deb [signed-by=/path/to/archive-keyring.gpg] \
         http://mirror.example/debian bookworm main' (repeatable), or trust a keyring for \
         every source with --keyring /path/to/archive-keyring.gpg"
    )]
    NoSources,
    #[error("invalid --apt-source {line:?}")]
    AptSource {
        line: String,
        #[source]
        source: SourcesError,
    },
    #[error("failed to read keyring {path}")]
    KeyringFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("keyring {path} contains no OpenPGP public key")]
    EmptyKeyring { path: PathBuf },
    #[error(transparent)]
    Sources(#[from] SourcesError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Deb(#[from] crate::deb::debfile::DebError),
    #[error("a background task failed: {0}")]
    Task(String),
    #[error("failed to write {path}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl DebianError {
    /// Tells whether the error comes from the user's input rather than a failure.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            DebianError::InvalidFixedVersion { .. }
                | DebianError::NoSources
                | DebianError::AptSource { .. }
                | DebianError::KeyringFile { .. }
                | DebianError::EmptyKeyring { .. }
        )
    }
}

/// Resolves, downloads and unpacks the updates the report requests, or every available
/// upgrade without a report, into one layer.
///
/// With `base_rootfs`, the layer replaces the earlier patch layer: when the current image
/// needs nothing new the result has no layer, else the earlier and the new updates are
/// planned together against the base. With `settings.dry_run` it stops after resolving:
/// `updates` lists the plan, and no package is downloaded and no layer built.
pub async fn patch_debian(
    inputs: &DebianInputs<'_>,
    reporter: &dyn Reporter,
) -> Result<DebianResult, DebianError> {
    let mut result = DebianResult {
        layer: None,
        updates: Vec::new(),
        skipped: Vec::new(),
        failed: Vec::new(),
        scripts_not_run: Vec::new(),
        warnings: Vec::new(),
    };
    let Some(resolved) = resolve_updates(inputs, reporter, &mut result).await? else {
        return Ok(result);
    };
    let plan = &resolved.plan;
    result.updates = updates_from_plan(plan, inputs.report);
    if plan.installs.is_empty() || inputs.settings.dry_run {
        return Ok(result);
    }

    reporter.event(Event::Phase(Phase::Download));
    let downloads = download_packages(inputs, &resolved, reporter).await?;

    reporter.event(Event::Phase(Phase::BuildLayer));
    let to_install: Vec<PackageToInstall> = plan
        .installs
        .iter()
        .zip(downloads)
        .map(|(install, deb_path)| PackageToInstall {
            deb_path,
            name: install.name.clone(),
            arch: install.arch.clone(),
            new: install.is_new(),
        })
        .collect();
    let options = InstallOptions {
        mtime: inputs.created_epoch,
    };
    let work_dir = inputs.work_dir;
    let rootfs = resolved.target;
    let (layer, report) = tokio::task::block_in_place(|| {
        let (builder, report) = install::plan_layer(rootfs, &to_install, options)?;
        let layer = builder.finish(work_dir)?;
        Ok::<_, DebianError>((layer, report))
    })?;

    for package in report.packages {
        if package.scripts_not_run.is_empty() && package.triggers.is_empty() {
            continue;
        }
        result.scripts_not_run.push(ScriptsNotRun {
            package: package.name,
            scripts: package.scripts_not_run,
            triggers: package.triggers,
        });
    }
    result.layer = Some(layer);
    Ok(result)
}

/// The resolved plan, the root filesystem it applies to (the image's, or the base below
/// an earlier patch layer).
struct Resolved<'a> {
    plan: Plan,
    target: &'a RootfsIndex,
}

/// Reads the dpkg database and the repositories' indexes and resolves the report's
/// requests, or every available upgrade without a report, into a plan, recording skips
/// and failures in `result`. Returns `None` when the report requests nothing.
async fn resolve_updates<'a>(
    inputs: &DebianInputs<'a>,
    reporter: &dyn Reporter,
    result: &mut DebianResult,
) -> Result<Option<Resolved<'a>>, DebianError> {
    let rootfs = inputs.rootfs;
    let store = StatusStore::load(rootfs)?;
    let arch = native_arch(rootfs, &store, inputs.platform_arch.as_deref());
    let installed = installed_packages(&store, &arch)?;
    let report_requests = inputs
        .report
        .map(requests_from_report)
        .transpose()?
        .map(|requests| match_image_architectures(requests, &installed));
    if report_requests.as_ref().is_some_and(Vec::is_empty) {
        return Ok(None);
    }

    reporter.event(Event::Phase(Phase::ReadRepositories));
    let fetcher = &inputs.downloads.fetcher;
    let fetched = load_repositories(rootfs, inputs.settings, fetcher, &arch)
        .await?
        .into_iter()
        .map(|index| index.spill_to(inputs.work_dir))
        .collect::<Result<Vec<_>, _>>()?;
    let mut index = GrowingIndex::new(fetched, &arch, &installed, &report_requests).await?;

    reporter.event(Event::Phase(Phase::Resolve));
    let options = ResolveOptions {
        arch: arch.clone(),
        ignore_errors: inputs.settings.ignore_errors,
    };
    let requests = match &report_requests {
        Some(requests) => requests.clone(),
        None => upgrade_requests(&installed, index.packages(), &options),
    };
    let mut plan = index.resolve(&installed, &requests, &options).await?;
    let (target, target_requests) = match inputs.base_rootfs {
        Some(base) if !plan.installs.is_empty() => {
            let base_store = StatusStore::load(base)?;
            let base_installed = installed_packages(&base_store, &arch)?;
            let new_requests = match &report_requests {
                Some(requests) => requests.clone(),
                None => upgrade_requests(&base_installed, index.packages(), &options),
            };
            let union = merge_previous(inputs.previous, &base_installed, new_requests);
            plan = index.resolve(&base_installed, &union, &options).await?;
            (base, requests)
        }
        _ => (rootfs, requests),
    };
    record_skips_and_failures(&plan, &target_requests, result, reporter);
    Ok(Some(Resolved { plan, target }))
}

fn updates_from_plan(plan: &Plan, report: Option<&Report>) -> Vec<PackageUpdate> {
    let vulnerabilities = report
        .map(Report::vulnerabilities_by_package)
        .unwrap_or_default();
    plan.installs
        .iter()
        .map(|install| PackageUpdate {
            name: install.name.clone(),
            arch: install.arch.clone(),
            installed_version: install.old_version.as_ref().map(ToString::to_string),
            new_version: install.new_version().to_string(),
            vulnerabilities: vulnerabilities
                .get(&install.name)
                .cloned()
                .unwrap_or_default(),
            reason: install.reason.to_string(),
            size: install.candidate.entry.size,
        })
        .collect()
}

/// Downloads the plan's packages, up to [`PARALLEL_DOWNLOADS`] at a time, in plan order.
///
/// A package another platform of this run already fetched is not fetched again. With a
/// package cache, a package whose SHA-256 is already there is copied from it, and every
/// download is copied into it, so images patched in one run share downloads.
async fn download_packages(
    inputs: &DebianInputs<'_>,
    resolved: &Resolved<'_>,
    reporter: &dyn Reporter,
) -> Result<Vec<PathBuf>, DebianError> {
    let installs = &resolved.plan.installs;
    reporter.event(Event::Planned {
        transfer: Transfer::Packages,
        items: installs.len(),
        bytes: installs.iter().map(|i| i.candidate.entry.size).sum(),
    });
    if let Some(cache) = &inputs.settings.package_cache {
        create_dir(cache)?;
    }
    stream::iter(installs.iter())
        .map(|install| async move {
            let path = inputs
                .downloads
                .download(inputs.settings, &install.candidate)
                .await?;
            reporter.event(Event::PackageDownloaded {
                name: install.name.clone(),
                version: install.new_version().to_string(),
                bytes: install.candidate.entry.size,
            });
            Ok::<_, DebianError>(path)
        })
        .buffered(PARALLEL_DOWNLOADS)
        .try_collect()
        .await
}

async fn download_one(
    settings: &PatchSettings,
    fetcher: &Fetcher,
    candidate: &Candidate,
    deb_dir: &Path,
) -> Result<PathBuf, DebianError> {
    let Some(cache) = &settings.package_cache else {
        return Ok(repo::download_deb(fetcher, candidate, deb_dir).await?);
    };
    // The cache holds only files that download_deb verified against the signed index,
    // named by that SHA-256, so a hit needs no second check.
    let entry = &candidate.entry;
    let cached = cache.join(format!("{}.deb", entry.sha256));
    let local = deb_dir.join(format!(
        "{}_{}_{}.deb",
        entry.package,
        entry.version.to_string().replace(':', "%3a"),
        entry.architecture
    ));
    if cached.is_file() {
        tracing::debug!(package = %entry.package, path = %cached.display(), "package cache hit");
        copy_file(&cached, &local)?;
        return Ok(local);
    }
    let downloaded = repo::download_deb(fetcher, candidate, deb_dir).await?;
    // Copy then rename, so a concurrent reader never sees a partial file.
    let partial = cache.join(format!("{}.deb.{}", entry.sha256, std::process::id()));
    copy_file(&downloaded, &partial)?;
    fs_err::rename(&partial, &cached).map_err(|source| DebianError::WorkDir {
        path: cached.clone(),
        source,
    })?;
    Ok(downloaded)
}

fn create_dir(path: &Path) -> Result<(), DebianError> {
    fs_err::create_dir_all(path).map_err(|source| DebianError::WorkDir {
        path: path.to_owned(),
        source,
    })
}

fn copy_file(from: &Path, to: &Path) -> Result<(), DebianError> {
    fs_err::copy(from, to)
        .map(drop)
        .map_err(|source| DebianError::WorkDir {
            path: to.to_owned(),
            source,
        })
}

/// The repositories' packages, parsed only as far as the image needs them.
///
/// A full index of a Debian suite contains about 63,000 packages, while an image's
/// dependency closure is usually a few hundred. The index starts with the packages the
/// image has or the report names and grows by the names of any dependency the resolver
/// could not satisfy, so memory is bounded by the image rather than by the archive.
struct GrowingIndex {
    fetched: Vec<repo::FetchedIndex>,
    arch: String,
    names: HashSet<String>,
    packages: repo::RepoIndex,
}

impl GrowingIndex {
    async fn new(
        fetched: Vec<repo::FetchedIndex>,
        arch: &str,
        installed: &[InstalledPackage],
        requests: &Option<Vec<Request>>,
    ) -> Result<Self, DebianError> {
        let names: HashSet<String> = installed
            .iter()
            .map(|p| p.name.clone())
            .chain(requests.iter().flatten().map(|r| r.name.clone()))
            .collect();
        let packages = repo::scan_indexes(&fetched, arch, Some(&names)).await?;
        Ok(GrowingIndex {
            fetched,
            arch: arch.to_owned(),
            names,
            packages,
        })
    }

    fn packages(&self) -> &repo::RepoIndex {
        &self.packages
    }

    /// Adds `names` to the index, scanning the fetched indexes again when one is new.
    async fn include(
        &mut self,
        names: impl IntoIterator<Item = String>,
    ) -> Result<bool, DebianError> {
        let before = self.names.len();
        self.names.extend(names);
        if self.names.len() == before {
            return Ok(false);
        }
        tracing::debug!(names = self.names.len(), "widening the package index");
        self.packages = repo::scan_indexes(&self.fetched, &self.arch, Some(&self.names)).await?;
        Ok(true)
    }

    /// Resolves `requests`, widening the index until the plan no longer fails on a
    /// dependency whose packages were left out.
    async fn resolve(
        &mut self,
        installed: &[InstalledPackage],
        requests: &[Request],
        options: &ResolveOptions,
    ) -> Result<Plan, DebianError> {
        let wanted = installed
            .iter()
            .map(|p| p.name.clone())
            .chain(requests.iter().map(|r| r.name.clone()));
        self.include(wanted.collect::<Vec<_>>()).await?;
        loop {
            let result = resolve::resolve(installed, requests, &self.packages, options);
            let missing: Vec<String> = match &result {
                Err(error) => unsatisfied_names(error),
                Ok(plan) => plan.failures.iter().flat_map(unsatisfied_names).collect(),
            };
            if !self.include(missing).await? {
                return Ok(result?);
            }
        }
    }
}

/// Returns the package names in the dependency an unsatisfiable-dependency error names.
fn unsatisfied_names(error: &ResolveError) -> Vec<String> {
    let ResolveError::Unsatisfiable { dependency, .. } = error else {
        return Vec::new();
    };
    match packages::parse_relations(dependency, None) {
        Ok(groups) => groups.into_iter().flatten().map(|r| r.name).collect(),
        Err(_) => Vec::new(),
    }
}

/// Reads the package index of the `--apt-source` repositories, or else of the image's
/// apt sources, trusting the `--keyring` keys for every source.
async fn load_repositories(
    rootfs: &RootfsIndex,
    settings: &PatchSettings,
    fetcher: &Fetcher,
    arch: &str,
) -> Result<Vec<repo::FetchedIndex>, DebianError> {
    let mut keyring = Keyring::new();
    for path in &settings.keyrings {
        let data = fs_err::read(path).map_err(|source| DebianError::KeyringFile {
            path: path.clone(),
            source,
        })?;
        if keyring.add_bytes(&path.display().to_string(), &data) == 0 {
            return Err(DebianError::EmptyKeyring { path: path.clone() });
        }
    }
    let indexes = if settings.apt_sources.is_empty() {
        let sources = image_sources(rootfs)?;
        repo::fetch_indexes(
            fetcher,
            &sources,
            arch,
            &RootfsFiles(rootfs),
            &keyring,
            Utc::now(),
        )
        .await?
    } else {
        let mut sources = Vec::new();
        for line in &settings.apt_sources {
            let parsed = sources::parse_source_line(line, "--apt-source").map_err(|source| {
                DebianError::AptSource {
                    line: line.clone(),
                    source,
                }
            })?;
            sources.extend(parsed);
        }
        repo::fetch_indexes(fetcher, &sources, arch, &HostFiles, &keyring, Utc::now()).await?
    };
    Ok(indexes)
}

/// One request per installed package that has a newer version, as `apt-get upgrade`
/// (apt 2.6) chooses them: an upgrade that needs a package the image does not have, or
/// that cannot be resolved, is kept back. Held packages stay in the list so the plan
/// reports them as held.
fn upgrade_requests(
    installed: &[InstalledPackage],
    index: &repo::RepoIndex,
    options: &ResolveOptions,
) -> Vec<Request> {
    let strict = ResolveOptions {
        ignore_errors: false,
        ..options.clone()
    };
    let mut requests: Vec<Request> = Vec::new();
    for package in installed.iter().filter(|p| p.status_ok) {
        let lookup_arch = if package.arch == "all" {
            options.arch.as_str()
        } else {
            package.arch.as_str()
        };
        let newer = index
            .candidates(&package.name, lookup_arch)
            .first()
            .is_some_and(|c| {
                packages::compare_versions(&c.entry.version, &package.version).is_gt()
            });
        if !newer || requests.iter().any(|r| r.name == package.name) {
            continue;
        }
        let request = Request {
            name: package.name.clone(),
            arch: None,
            fixed: None,
        };
        if !package.hold {
            match resolve::resolve(installed, std::slice::from_ref(&request), index, &strict) {
                Ok(plan) if plan.installs.iter().all(|i| !i.is_new()) => {}
                Ok(_) => {
                    tracing::debug!(package = %package.name, "kept back: the upgrade needs a new package");
                    continue;
                }
                Err(error) => {
                    tracing::debug!(package = %package.name, %error, "kept back");
                    continue;
                }
            }
        }
        requests.push(request);
    }
    requests
}

/// Adds the packages of the earlier patch layer, at least at the versions it installed,
/// to `requests`. Packages the earlier layer added come back through the dependencies
/// that pulled them in.
fn merge_previous(
    previous: &[PatchedPackage],
    base_installed: &[InstalledPackage],
    mut requests: Vec<Request>,
) -> Vec<Request> {
    for package in previous {
        if package.from_version.is_empty() || !base_installed.iter().any(|p| p.name == package.name)
        {
            continue;
        }
        let Ok(version) = packages::parse_version(&package.to_version) else {
            continue;
        };
        match requests.iter_mut().find(|r| r.name == package.name) {
            Some(existing) => {
                if let Some(fixed) = &existing.fixed
                    && packages::compare_versions(&version, fixed).is_gt()
                {
                    existing.fixed = Some(version);
                }
            }
            None => requests.push(Request {
                name: package.name.clone(),
                arch: None,
                fixed: Some(version),
            }),
        }
    }
    requests
}

/// Returns the image's native dpkg architecture: `var/lib/dpkg/arch`'s first line, else the
/// architecture of `dpkg` or `base-files`, else the image config's.
fn native_arch(rootfs: &RootfsIndex, store: &StatusStore, platform: Option<&str>) -> String {
    if let Some(first) = rootfs
        .content("var/lib/dpkg/arch")
        .and_then(|data| {
            String::from_utf8_lossy(data)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .filter(|line| !line.trim().is_empty())
    {
        return first.trim().to_owned();
    }
    for name in ["dpkg", "base-files", "libc6"] {
        if let Some(package) = store.packages().find(|p| p.name == name && p.arch != "all") {
            return package.arch.clone();
        }
    }
    platform.unwrap_or("amd64").to_owned()
}

fn installed_packages(
    store: &StatusStore,
    arch: &str,
) -> Result<Vec<InstalledPackage>, DebianError> {
    store
        .packages()
        .map(|package| {
            let relation_error = |source| DebianError::InstalledRelation {
                package: package.name.clone(),
                source,
            };
            let relations = |text: &Option<String>| {
                packages::parse_relations(text.as_deref().unwrap_or(""), Some(arch))
                    .map_err(relation_error)
            };
            let provides =
                packages::parse_relations(package.provides.as_deref().unwrap_or(""), Some(arch))
                    .map_err(relation_error)?
                    .into_iter()
                    .flatten()
                    .collect();
            Ok(InstalledPackage {
                name: package.name.clone(),
                arch: package.arch.clone(),
                version: packages::parse_version(&package.version).map_err(relation_error)?,
                multi_arch: package
                    .multi_arch
                    .as_deref()
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(MultiArch::No),
                source: package.source.clone(),
                source_version: packages::parse_version(&package.source_version)
                    .map_err(relation_error)?,
                depends: relations(&package.depends)?,
                pre_depends: relations(&package.pre_depends)?,
                breaks: relations(&package.breaks)?,
                provides,
                status_ok: package.status.flag == "ok" && package.status.status == "installed",
                hold: package.status.want == "hold",
            })
        })
        .collect()
}

/// One request per reported package, at the highest fixed version named for it, since
/// only that version fixes every listed vulnerability.
fn requests_from_report(report: &Report) -> Result<Vec<Request>, DebianError> {
    report
        .packages
        .iter()
        .map(|package| {
            let mut fixed = None;
            for text in &package.fixed_versions {
                let version = packages::parse_version(text).map_err(|_| {
                    DebianError::InvalidFixedVersion {
                        package: package.name.clone(),
                        version: text.clone(),
                    }
                })?;
                let higher = match &fixed {
                    None => true,
                    Some(current) => packages::compare_versions(&version, current).is_gt(),
                };
                if higher {
                    fixed = Some(version);
                }
            }
            Ok(Request {
                name: package.name.clone(),
                arch: package.arch.clone(),
                fixed,
            })
        })
        .collect()
}

/// Drops the architecture of each request for an architecture that no installed package
/// has, because one report may serve every platform of an index. A report of the amd64
/// image names `liblzma5` with `arch=amd64`, and the arm64 image has `liblzma5:arm64`,
/// so the name alone selects it there. A multi-arch image keeps the architecture of
/// requests for any architecture it has packages of.
fn match_image_architectures(
    requests: Vec<Request>,
    installed: &[InstalledPackage],
) -> Vec<Request> {
    requests
        .into_iter()
        .map(|mut request| {
            let foreign = request
                .arch
                .as_deref()
                .is_some_and(|arch| !installed.iter().any(|package| package.arch == arch));
            if foreign {
                tracing::debug!(
                    package = %request.name,
                    arch = ?request.arch,
                    "the image has no package of the reported architecture; matching by name"
                );
                request.arch = None;
            }
            request
        })
        .collect()
}

/// Reads the apt sources of the image, `sources.list` first as apt does.
fn image_sources(rootfs: &RootfsIndex) -> Result<Vec<AptSource>, DebianError> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(data) = rootfs.content("etc/apt/sources.list") {
        files.push(("/etc/apt/sources.list".to_owned(), data.to_vec()));
    }
    for (path, data) in rootfs.contents_under("etc/apt/sources.list.d/") {
        let name = &path["etc/apt/sources.list.d/".len()..];
        // apt reads only `*.list` and `*.sources` files from this directory.
        if !name.contains('/') && (name.ends_with(".list") || name.ends_with(".sources")) {
            files.push((format!("/{path}"), data.to_vec()));
        }
    }
    let sources = sources::parse_source_files(files)?;
    if sources.is_empty() {
        return Err(DebianError::NoSources);
    }
    Ok(sources)
}

/// Records the plan's skips and failures of `requests`, leaving out those of requests
/// carried over from an earlier patch.
fn record_skips_and_failures(
    plan: &Plan,
    requests: &[Request],
    result: &mut DebianResult,
    reporter: &dyn Reporter,
) {
    for skipped in &plan.skipped {
        if !requests.iter().any(|r| r.name == skipped.request.name) {
            continue;
        }
        let reason = match &skipped.reason {
            SkipReason::AlreadyFixed { installed } => {
                format!("installed version {installed} is already fixed")
            }
            SkipReason::NotInstalled => {
                let message = format!(
                    "{} is in the report but not installed in the image",
                    skipped.request.name
                );
                reporter.event(Event::Warning(message.clone()));
                result.warnings.push(message);
                "not installed".to_owned()
            }
            SkipReason::Held { installed } => {
                format!("held at {installed} (dpkg selection `hold`)")
            }
        };
        result.skipped.push(SkippedPackage {
            name: skipped.request.name.clone(),
            reason,
        });
    }
    for failure in &plan.failures {
        result.failed.push(FailedPackage {
            name: failure_package(failure),
            error: failure.to_string(),
        });
    }
}

fn failure_package(error: &ResolveError) -> String {
    match error {
        ResolveError::NoFixedVersion { package, .. } => package.clone(),
        other => other
            .to_string()
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned(),
    }
}

/// Gives the apt code read access to the keyrings an `--apt-source` line names on the
/// host. Sources without `signed-by` trust only the `--keyring` keys, so the host's own
/// apt keyrings are never listed.
struct HostFiles;

impl ImageFiles for HostFiles {
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        if path.starts_with("/etc/apt/trusted.gpg") {
            return Ok(None);
        }
        fs_err::read(path).map(Some)
    }

    fn list(&self, _dir: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
}

/// Gives the apt code read access to keyrings inside the image.
struct RootfsFiles<'a>(&'a RootfsIndex);

impl ImageFiles for RootfsFiles<'_> {
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let resolved = self.0.resolve(&path.to_string_lossy());
        Ok(self.0.content(&resolved).map(<[u8]>::to_vec))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let resolved = self.0.resolve(&dir.to_string_lossy());
        Ok(self
            .0
            .children(&resolved)
            .filter(|(_, info)| info.kind != FileKind::Directory)
            .map(|(path, _)| {
                let name = path.rsplit('/').next().unwrap_or(path);
                dir.join(name)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deb::resolve::tests::{index, installed};

    fn options() -> ResolveOptions {
        ResolveOptions {
            arch: "amd64".to_owned(),
            ignore_errors: false,
        }
    }

    fn names(requests: &[Request]) -> Vec<&str> {
        requests.iter().map(|r| r.name.as_str()).collect()
    }

    fn request(name: &str, arch: &str) -> Request {
        Request {
            name: name.to_owned(),
            arch: Some(arch.to_owned()),
            fixed: None,
        }
    }

    #[test]
    fn foreign_report_arch_matches_by_name() {
        let image = [
            installed("zlib1g", "1.0", &[("Architecture", "arm64")]),
            installed("tzdata", "1.0", &[("Architecture", "all")]),
        ];
        let requests = vec![
            request("zlib1g", "amd64"),
            request("tzdata", "all"),
            request("zlib1g", "arm64"),
        ];
        let matched = match_image_architectures(requests, &image);
        assert_eq!(matched[0].arch, None);
        assert_eq!(matched[1].arch.as_deref(), Some("all"));
        assert_eq!(matched[2].arch.as_deref(), Some("arm64"));
    }

    #[test]
    fn multiarch_image_keeps_report_arch() {
        let image = [
            installed("libc6", "1.0", &[("Architecture", "amd64")]),
            installed("libc6", "1.0", &[("Architecture", "i386")]),
        ];
        let matched = match_image_architectures(vec![request("libc6", "i386")], &image);
        assert_eq!(matched[0].arch.as_deref(), Some("i386"));
    }

    #[test]
    fn upgrade_keeps_back_new_dependencies() {
        let image = [
            installed("plain", "1.0", &[]),
            installed("needs-new", "1.0", &[]),
            installed("held", "1.0", &[("Hold", "")]),
            installed("current", "2.0", &[]),
        ];
        let repo = index(&[
            "Package: plain\nVersion: 1.1\nArchitecture: amd64",
            "Package: needs-new\nVersion: 2.0\nArchitecture: amd64\nDepends: brand-new",
            "Package: brand-new\nVersion: 1.0\nArchitecture: amd64",
            "Package: held\nVersion: 2.0\nArchitecture: amd64",
            "Package: current\nVersion: 1.0\nArchitecture: amd64",
        ]);
        let requests = upgrade_requests(&image, &repo, &options());
        assert_eq!(names(&requests), ["plain", "held"]);
        let plan = resolve::resolve(&image, &requests, &repo, &options()).unwrap();
        let planned: Vec<&str> = plan.installs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(planned, ["plain"]);
        assert!(matches!(
            plan.skipped[0].reason,
            resolve::SkipReason::Held { .. }
        ));
    }

    #[test]
    fn previous_patch_versions_are_kept() {
        let base = [installed("a", "1.0", &[]), installed("b", "1.0", &[])];
        let previous = [
            PatchedPackage {
                name: "a".into(),
                from_version: "1.0".into(),
                to_version: "1.1".into(),
            },
            PatchedPackage {
                name: "pulled-in".into(),
                from_version: String::new(),
                to_version: "1.0".into(),
            },
        ];
        let new = vec![Request {
            name: "b".into(),
            arch: None,
            fixed: Some(packages::parse_version("1.2").unwrap()),
        }];
        let merged = merge_previous(&previous, &base, new);
        assert_eq!(names(&merged), ["b", "a"]);
        assert_eq!(merged[1].fixed.as_ref().unwrap().to_string(), "1.1");
    }
}
