//! The Debian patch: from the image's dpkg database and apt sources to a built layer.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::{
    Event, FailedPackage, PackageUpdate, PatchSettings, Phase, Reporter, ScriptsNotRun,
    SkippedPackage,
};
use crate::deb::install::{self, InstallError, InstallOptions, PackageToInstall};
use crate::deb::packages::{self, MultiArch, PackagesError};
use crate::deb::release::Keyring;
use crate::deb::repo::{self, FetchOptions, Fetcher, ImageFiles, RepoError};
use crate::deb::resolve::{
    self, InstalledPackage, Plan, Request, ResolveError, ResolveOptions, SkipReason,
};
use crate::deb::sources::{self, AptSource, SourcesError};
use crate::deb::status::{StatusError, StatusStore};
use crate::layer::{BuiltLayer, LayerError};
use crate::report::Report;
use crate::rootfs::{FileKind, RootfsIndex};

/// Package downloads at the same time.
const PARALLEL_DOWNLOADS: usize = 4;

/// What the Debian patch reads.
pub struct DebianInputs<'a> {
    pub rootfs: &'a RootfsIndex,
    pub report: &'a Report,
    pub settings: &'a PatchSettings,
    pub work_dir: &'a Path,
    /// The image config's `architecture`, used when the dpkg database names none.
    pub platform_arch: Option<String>,
    /// The mtime of files the patch writes itself (dpkg metadata), seconds since the epoch.
    pub created_epoch: u64,
    /// The repository client and the .deb files shared by every platform of a run.
    pub downloads: &'a SharedDownloads,
}

/// Package downloads shared by the platforms of one run: one repository client, and
/// each .deb file fetched once per SHA-256, however many platforms install it.
pub struct SharedDownloads {
    fetcher: Fetcher,
    dir: PathBuf,
    files: std::sync::Mutex<HashMap<String, Arc<tokio::sync::OnceCell<PathBuf>>>>,
}

impl SharedDownloads {
    /// Creates the client; downloads go to `dir`, which must exist.
    pub fn new(settings: &PatchSettings, dir: &Path) -> Result<Self, DebianError> {
        let fetcher = Fetcher::new(FetchOptions {
            timeout: settings.timeout,
            mirrors: settings.repo_mirrors.clone(),
            ..FetchOptions::default()
        })?;
        Ok(SharedDownloads {
            fetcher,
            dir: dir.to_owned(),
            files: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Downloads a candidate's .deb unless this run already has it.
    async fn download(&self, candidate: &repo::Candidate) -> Result<(PathBuf, bool), RepoError> {
        let cell = self
            .files
            .lock()
            .expect("no panic while holding the download map")
            .entry(candidate.entry.sha256.clone())
            .or_default()
            .clone();
        let mut fetched = false;
        let path = cell
            .get_or_try_init(|| {
                fetched = true;
                repo::download_deb(&self.fetcher, candidate, &self.dir)
            })
            .await?;
        Ok((path.clone(), fetched))
    }
}

/// What the Debian patch produced; `layer` is `None` when there is nothing to patch.
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
         so there is no repository to take updates from"
    )]
    NoSources,
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
    #[error("failed to create directory {path}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl DebianError {
    /// Whether the error comes from the user's input rather than a failure.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            DebianError::InvalidFixedVersion { .. } | DebianError::NoSources
        )
    }
}

/// Resolves, downloads and unpacks the updates the report asks for into one layer.
pub async fn patch_debian(
    inputs: &DebianInputs<'_>,
    reporter: &dyn Reporter,
) -> Result<DebianResult, DebianError> {
    let rootfs = inputs.rootfs;
    let store = StatusStore::load(rootfs)?;
    let arch = native_arch(rootfs, &store, inputs.platform_arch.as_deref());
    let installed = installed_packages(&store, &arch)?;
    let requests = requests_from_report(inputs.report)?;
    let mut result = DebianResult {
        layer: None,
        updates: Vec::new(),
        skipped: Vec::new(),
        failed: Vec::new(),
        scripts_not_run: Vec::new(),
        warnings: Vec::new(),
    };
    if requests.is_empty() {
        return Ok(result);
    }

    reporter.event(Event::Phase(Phase::ReadRepositories));
    let sources = image_sources(rootfs)?;
    let fetcher = &inputs.downloads.fetcher;
    let files = RootfsFiles(rootfs);
    let index = repo::load_index(
        fetcher,
        &sources,
        &arch,
        &files,
        &Keyring::new(),
        Utc::now(),
    )
    .await?;

    reporter.event(Event::Phase(Phase::Resolve));
    let plan = resolve::resolve(
        &installed,
        &requests,
        &index,
        &ResolveOptions {
            arch: arch.clone(),
            ignore_errors: inputs.settings.ignore_errors,
        },
    )?;
    record_skips_and_failures(&plan, &mut result, reporter);
    if plan.installs.is_empty() {
        return Ok(result);
    }

    reporter.event(Event::Phase(Phase::Download));
    let downloads: Vec<PathBuf> = stream::iter(plan.installs.iter())
        .map(|install| {
            let shared = inputs.downloads;
            async move {
                let (path, fetched) = shared.download(&install.candidate).await?;
                if fetched {
                    reporter.event(Event::PackageDownloaded {
                        name: install.name.clone(),
                        version: install.new_version().to_string(),
                        bytes: install.candidate.entry.size,
                    });
                }
                Ok::<_, DebianError>(path)
            }
        })
        .buffered(PARALLEL_DOWNLOADS)
        .try_collect()
        .await?;

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
    let (layer, report) = tokio::task::block_in_place(|| {
        let (builder, report) = install::plan_layer(rootfs, &to_install, options)?;
        let layer = builder.finish(work_dir)?;
        Ok::<_, DebianError>((layer, report))
    })?;

    let vulnerabilities = vulnerabilities_by_package(inputs.report);
    for install in &plan.installs {
        result.updates.push(PackageUpdate {
            name: install.name.clone(),
            arch: install.arch.clone(),
            installed_version: install.old_version.as_ref().map(ToString::to_string),
            new_version: install.new_version().to_string(),
            vulnerabilities: vulnerabilities
                .get(&install.name)
                .cloned()
                .unwrap_or_default(),
            reason: install.reason.to_string(),
        });
    }
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

/// The image's native dpkg architecture: `var/lib/dpkg/arch`'s first line, else the
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

fn vulnerabilities_by_package(report: &Report) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for package in &report.packages {
        let entry = map.entry(package.name.clone()).or_default();
        for id in &package.vulnerabilities {
            if !entry.contains(id) {
                entry.push(id.clone());
            }
        }
    }
    map
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

fn record_skips_and_failures(plan: &Plan, result: &mut DebianResult, reporter: &dyn Reporter) {
    for skipped in &plan.skipped {
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
