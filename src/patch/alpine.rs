//! The Alpine patch: from the image's apk database and repositories to a built layer.

use std::path::Path;

use url::Url;

use super::debian::DebianResult;
use super::{
    Event, FailedPackage, PackageUpdate, PatchSettings, Phase, Reporter, ScriptsNotRun,
    SkippedPackage,
};
use crate::apk::index::{self, IndexEntry, IndexError, Keys, Trust};
use crate::apk::install::{self, InstallError, PackageToInstall};
use crate::apk::installed::{InstalledDb, InstalledError};
use crate::apk::package::{ApkPackage, PackageError};
use crate::apk::resolve::{self, Request, ResolveError, SkipReason};
use crate::apk::version;
use crate::deb::repo::{FetchOptions, Fetcher, RepoError};
use crate::layer::{LayerBuilder, LayerError};
use crate::report::Report;
use crate::rootfs::RootfsIndex;

/// The inputs of the Alpine patch.
pub struct AlpineInputs<'a> {
    pub rootfs: &'a RootfsIndex,
    pub report: &'a Report,
    pub settings: &'a PatchSettings,
    pub work_dir: &'a Path,
    /// The image config's `architecture` (`amd64`), used when `/etc/apk/arch` is missing.
    pub platform_arch: Option<String>,
    pub created_epoch: u64,
}

/// A failure of the Alpine patch.
#[derive(Debug, thiserror::Error)]
pub enum AlpineError {
    #[error("the image has no /lib/apk/db/installed, so its apk packages are unknown")]
    NoDatabase,
    #[error("failed to read the image's /lib/apk/db/installed")]
    Database(#[source] InstalledError),
    #[error(
        "the report names fixed version {version:?} for {package}, which is not a valid apk version"
    )]
    InvalidFixedVersion { package: String, version: String },
    #[error(
        "the image has no repositories in /etc/apk/repositories, so there is no index to take \
         updates from\nhint: add one to the image, or check --repo-mirror"
    )]
    NoRepositories,
    #[error("repository URL {url:?} in /etc/apk/repositories is invalid")]
    InvalidRepository {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error(transparent)]
    Fetch(#[from] RepoError),
    #[error("{url} was not found\nhint: check the repository URL and --repo-mirror")]
    NotFound { url: String },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("failed to read package {url}")]
    Package {
        url: String,
        #[source]
        source: PackageError,
    },
    /// The source names the package's URL and key.
    #[error(
        "package {package} {version} failed signature verification\n\
         hint: pass --allow-untrusted-repo to accept it anyway"
    )]
    PackageSignature {
        package: String,
        version: String,
        #[source]
        source: Box<IndexError>,
    },
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(transparent)]
    Layer(#[from] LayerError),
}

impl AlpineError {
    /// Tells whether the error comes from the user's input rather than a failure.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            AlpineError::InvalidFixedVersion { .. } | AlpineError::NoRepositories
        )
    }
}

/// Resolves, downloads and unpacks the updates the report requests into one layer.
pub async fn patch_alpine(
    inputs: &AlpineInputs<'_>,
    reporter: &dyn Reporter,
) -> Result<DebianResult, AlpineError> {
    let rootfs = inputs.rootfs;
    let data = rootfs
        .content("lib/apk/db/installed")
        .ok_or(AlpineError::NoDatabase)?;
    let mut db = InstalledDb::parse(data).map_err(AlpineError::Database)?;
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
    let arch = apk_arch(rootfs, inputs.platform_arch.as_deref());
    let repositories = repositories(rootfs)?;
    let keys = image_keys(rootfs);
    let fetcher = Fetcher::new(FetchOptions {
        timeout: inputs.settings.timeout,
        mirrors: inputs.settings.repo_mirrors.clone(),
        ..FetchOptions::default()
    })?;
    let mut available: Vec<(usize, IndexEntry)> = Vec::new();
    for (number, base) in repositories.iter().enumerate() {
        let url = join(base, &format!("{arch}/APKINDEX.tar.gz"))?;
        let bytes = fetcher
            .fetch(&url)
            .await?
            .ok_or_else(|| AlpineError::NotFound {
                url: url.to_string(),
            })?;
        let index = index::read_index(
            &bytes,
            url.as_str(),
            &keys,
            inputs.settings.allow_untrusted_repo,
        )?;
        if let Trust::Untrusted { reason } = &index.trust {
            let message = format!("using untrusted apk index {url}: {reason}");
            reporter.event(Event::Warning(message.clone()));
            result.warnings.push(message);
        }
        available.extend(index.entries.into_iter().map(|e| (number, e)));
    }

    reporter.event(Event::Phase(Phase::Resolve));
    let plan = resolve::resolve(&db, &requests, &available, inputs.settings.ignore_errors)?;
    for (request, reason) in &plan.skipped {
        let reason = match reason {
            SkipReason::AlreadyFixed { installed } => {
                format!("installed version {installed} is already fixed")
            }
            SkipReason::NotInstalled => {
                let message = format!(
                    "{} is in the report but not installed in the image",
                    request.name
                );
                reporter.event(Event::Warning(message.clone()));
                result.warnings.push(message);
                "not installed".to_owned()
            }
        };
        result.skipped.push(SkippedPackage {
            name: request.name.clone(),
            reason,
        });
    }
    for failure in &plan.failures {
        let name = match failure {
            ResolveError::NoFixedVersion { package, .. }
            | ResolveError::Unsatisfied { package, .. } => package.clone(),
        };
        result.failed.push(FailedPackage {
            name,
            error: failure.to_string(),
        });
    }
    if plan.installs.is_empty() {
        return Ok(result);
    }

    let vulnerabilities = inputs.report.vulnerabilities_by_package();
    for install in &plan.installs {
        result.updates.push(PackageUpdate {
            name: install.name.clone(),
            arch: install.entry.get('A').unwrap_or(&arch).to_owned(),
            installed_version: install.old_version.clone(),
            new_version: install.entry.version().to_owned(),
            vulnerabilities: vulnerabilities
                .get(&install.name)
                .cloned()
                .unwrap_or_default(),
            reason: install.reason.clone(),
            size: install
                .entry
                .get('S')
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        });
    }
    if inputs.settings.dry_run {
        return Ok(result);
    }

    reporter.event(Event::Phase(Phase::Download));
    let mut packages = Vec::new();
    for install in &plan.installs {
        let url = join(
            &repositories[install.repository],
            &format!("{arch}/{}", install.entry.file_name()),
        )?;
        let bytes = fetcher
            .fetch(&url)
            .await?
            .ok_or_else(|| AlpineError::NotFound {
                url: url.to_string(),
            })?;
        reporter.event(Event::PackageDownloaded {
            name: install.name.clone(),
            version: install.entry.version().to_owned(),
            bytes: bytes.len() as u64,
        });
        let package = tokio::task::block_in_place(|| ApkPackage::read(&bytes, url.as_str()))
            .map_err(|source| AlpineError::Package {
                url: url.to_string(),
                source,
            })?;
        if let Some(warning) = check_package(install, &package, &keys, url.as_str(), inputs)? {
            reporter.event(Event::Warning(warning.clone()));
            result.warnings.push(warning);
        }
        packages.push(package);
    }

    reporter.event(Event::Phase(Phase::BuildLayer));
    let to_install: Vec<PackageToInstall<'_>> = plan
        .installs
        .iter()
        .zip(&packages)
        .map(|(install, package)| PackageToInstall {
            entry: &install.entry,
            package,
        })
        .collect();
    let mtime = inputs.created_epoch;
    let work_dir = inputs.work_dir;
    let (layer, scripts) = tokio::task::block_in_place(|| {
        let mut builder = LayerBuilder::new(mtime);
        let scripts = install::plan_layer(rootfs, &mut db, &to_install, &mut builder, mtime)?;
        let layer = builder.finish(work_dir)?;
        Ok::<_, AlpineError>((layer, scripts))
    })?;

    for report in scripts {
        result.scripts_not_run.push(ScriptsNotRun {
            package: report.package,
            scripts: report.scripts,
            triggers: report.triggers,
        });
    }
    result.layer = Some(layer);
    Ok(result)
}

/// Checks a downloaded package against the index's `C:` checksum and, when the package
/// is signed, its signature against the image's keys. apk-tools 3.0.8 installs a package
/// from a trusted index without checking its signature, but layermend checks a signature
/// that is present. With `--allow-untrusted-repo` a bad one gives a warning instead.
fn check_package(
    install: &resolve::Install,
    package: &ApkPackage,
    keys: &Keys,
    url: &str,
    inputs: &AlpineInputs<'_>,
) -> Result<Option<String>, AlpineError> {
    let expected = install.entry.get('C').unwrap_or("");
    if package.checksum != expected {
        return Err(InstallError::ChecksumMismatch {
            package: format!("{} {}", install.name, install.entry.version()),
            expected: expected.to_owned(),
            actual: package.checksum.clone(),
        }
        .into());
    }
    let Some(signature) = &package.signature else {
        return Ok(None);
    };
    match index::verify(
        &signature.path,
        &signature.data,
        &package.control_compressed,
        keys,
        url,
    ) {
        Ok(key) => {
            tracing::debug!(package = %install.name, key, "apk package signature verified");
            Ok(None)
        }
        Err(source) if inputs.settings.allow_untrusted_repo => Ok(Some(format!(
            "using package {} {} with an unverified signature: {source}",
            install.name,
            install.entry.version()
        ))),
        Err(source) => Err(AlpineError::PackageSignature {
            package: install.name.clone(),
            version: install.entry.version().to_owned(),
            source: Box::new(source),
        }),
    }
}

/// One request per reported package, at the highest fixed version named for it.
fn requests_from_report(report: &Report) -> Result<Vec<Request>, AlpineError> {
    report
        .packages
        .iter()
        .map(|package| {
            let mut fixed: Option<String> = None;
            for text in &package.fixed_versions {
                if !version::is_valid(text) {
                    return Err(AlpineError::InvalidFixedVersion {
                        package: package.name.clone(),
                        version: text.clone(),
                    });
                }
                if fixed
                    .as_deref()
                    .is_none_or(|current| version::compare(text, current).is_gt())
                {
                    fixed = Some(text.clone());
                }
            }
            Ok(Request {
                name: package.name.clone(),
                fixed,
            })
        })
        .collect()
}

/// The apk architecture: `/etc/apk/arch`, else the image config's, in apk's names.
fn apk_arch(rootfs: &RootfsIndex, platform: Option<&str>) -> String {
    if let Some(line) = rootfs
        .content("etc/apk/arch")
        .and_then(|d| {
            String::from_utf8_lossy(d)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .filter(|l| !l.is_empty())
    {
        return line;
    }
    match platform.unwrap_or("amd64") {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "386" => "x86",
        "arm" => "armv7",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
    .to_owned()
}

/// The repositories in `/etc/apk/repositories`: one URL per line, `#` comments, and an
/// optional `@tag` before the URL.
fn repositories(rootfs: &RootfsIndex) -> Result<Vec<Url>, AlpineError> {
    let text = rootfs
        .content("etc/apk/repositories")
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .unwrap_or_default();
    let mut urls = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(url) = line.split_whitespace().find(|w| !w.starts_with('@')) else {
            continue;
        };
        let mut parsed = Url::parse(url).map_err(|source| AlpineError::InvalidRepository {
            url: url.to_owned(),
            source,
        })?;
        if !parsed.path().ends_with('/') {
            parsed.set_path(&format!("{}/", parsed.path()));
        }
        urls.push(parsed);
    }
    if urls.is_empty() {
        return Err(AlpineError::NoRepositories);
    }
    Ok(urls)
}

fn join(base: &Url, relative: &str) -> Result<Url, AlpineError> {
    base.join(relative)
        .map_err(|source| AlpineError::InvalidRepository {
            url: format!("{base}{relative}"),
            source,
        })
}

/// The keys in the image's `/etc/apk/keys`, by file name.
fn image_keys(rootfs: &RootfsIndex) -> Keys {
    let mut keys = Keys::default();
    for (path, data) in rootfs.contents_under("etc/apk/keys/") {
        let name = &path["etc/apk/keys/".len()..];
        if !name.contains('/') {
            keys.add_pem(name, data);
        }
    }
    keys
}
