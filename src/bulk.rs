//! `layermend patch --config FILE`: patches the images a YAML file lists, a bounded
//! number at a time, and reports per image.
//!
//! The file is a list of entries, or a mapping with that list under `images`:
//!
//! ```yaml
//! - image: registry.example/app:1.2      # required
//!   report: reports/app-1.2.json         # required; relative to this file
//!   tag: 1.2-patched                     # optional, as --tag
//!   scanner: grype                       # optional, as --scanner
//!   platforms: [linux/amd64, linux/arm64] # optional, as --platform, one patch each
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::ValueEnum;
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use crate::cli::{OutputFormat, PatchArgs, ScannerFlag};
use crate::printer::{self, ProgressMode, ProgressPrinter};
use crate::{
    EXIT_FAILURE, EXIT_NOTHING_TO_PATCH, EXIT_PATCHED, EXIT_USER_ERROR, exit_code, report_format,
    settings_from_args,
};
use layermend::patch::{self, OUTCOME_SCHEMA_VERSION, PatchOutcome};
use layermend::transport::Location;

/// One image of the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    pub image: String,
    pub report: PathBuf,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub scanner: Option<String>,
    #[serde(default)]
    pub platforms: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ConfigFile {
    List(Vec<ImageEntry>),
    Mapping { images: Vec<ImageEntry> },
}

/// The result of one image (and platform) of a bulk run.
#[derive(Debug, Serialize)]
pub struct ImageResult {
    pub image: String,
    pub platform: Option<String>,
    /// `patched`, `nothing-to-patch`, `planned` or `failed`.
    pub status: String,
    /// The exit code a single `layermend patch` of this image would have returned.
    pub exit_code: u8,
    pub result: Option<PatchOutcome>,
    pub error: Option<String>,
}

/// The JSON document of a bulk run.
#[derive(Debug, Serialize)]
struct BulkOutcome {
    schema_version: u32,
    images: Vec<ImageResult>,
    failed: usize,
}

/// Reads the configuration file and resolves each entry's report path against its
/// directory.
pub fn read_config(path: &Path) -> anyhow::Result<Vec<ImageEntry>> {
    let text = fs_err::read_to_string(path)?;
    let config: ConfigFile = serde_norway::from_str(&text).map_err(|err| {
        anyhow::anyhow!(
            "invalid configuration file {}: {err}\nhint: write a list of entries with \
             `image` and `report`, and optional `tag`, `scanner` and `platforms`",
            path.display()
        )
    })?;
    let mut entries = match config {
        ConfigFile::List(entries) | ConfigFile::Mapping { images: entries } => entries,
    };
    if entries.is_empty() {
        anyhow::bail!("configuration file {} lists no images", path.display());
    }
    let base = path.parent().unwrap_or(Path::new("."));
    for entry in &mut entries {
        if entry.report.is_relative() {
            entry.report = base.join(&entry.report);
        }
        if let Some(scanner) = &entry.scanner
            && ScannerFlag::from_str(scanner, true).is_err()
        {
            anyhow::bail!(
                "invalid scanner {scanner:?} for {} in {}; accepted: trivy, grype, native",
                entry.image,
                path.display()
            );
        }
    }
    Ok(entries)
}

/// One patch to run: an entry and one of its platforms.
struct Job {
    entry: ImageEntry,
    platform: Option<String>,
    /// Appended to the tag when the entry lists several platforms, so that each platform's
    /// result gets its own tag.
    tag_platform_suffix: Option<String>,
}

fn jobs(entries: Vec<ImageEntry>) -> Vec<Job> {
    let mut jobs = Vec::new();
    for entry in entries {
        match entry.platforms.len() {
            0 => jobs.push(Job {
                entry,
                platform: None,
                tag_platform_suffix: None,
            }),
            1 => jobs.push(Job {
                platform: entry.platforms.first().cloned(),
                entry,
                tag_platform_suffix: None,
            }),
            _ => {
                for platform in entry.platforms.clone() {
                    // NOTE: each platform is patched under its own tag, in an index
                    // whose other platforms stay unchanged; no index combining the
                    // patched platforms is written.
                    let suffix = platform.split('/').skip(1).collect::<Vec<_>>().join("-");
                    jobs.push(Job {
                        entry: entry.clone(),
                        platform: Some(platform),
                        tag_platform_suffix: Some(suffix),
                    });
                }
            }
        }
    }
    jobs
}

/// Runs the bulk patch and returns the exit code: 1 when any image failed, 3 when none
/// had anything to patch, 0 otherwise.
pub async fn run(args: PatchArgs, quiet: bool) -> u8 {
    let config_path = args.config.clone().expect("bulk run needs --config");
    let entries = match read_config(&config_path) {
        Ok(entries) => entries,
        Err(err) => {
            eprintln!("error: {err:#}");
            return EXIT_USER_ERROR;
        }
    };
    // Downloads are shared between images through one package cache, kept in the work
    // directory when one is given.
    let cache_dir = match &args.work_dir {
        Some(dir) => Ok(CacheDir::Kept(dir.join("packages"))),
        None => tempfile::Builder::new()
            .prefix("layermend-packages-")
            .tempdir()
            .map(CacheDir::Temporary),
    };
    let cache_dir = match cache_dir {
        Ok(dir) => dir,
        Err(err) => {
            eprintln!("error: failed to create a package cache directory: {err}");
            return EXIT_FAILURE;
        }
    };
    let mode = match ProgressMode::detect(quiet) {
        // Several patches run at once, so their progress is plain prefixed lines.
        ProgressMode::Bars => ProgressMode::Lines,
        mode => mode,
    };

    let jobs = jobs(entries);
    let args = &args;
    let cache = cache_dir.path();
    let locks = LocalDestinations::default();
    let locks = &locks;
    let results: Vec<ImageResult> = stream::iter(jobs.into_iter().enumerate())
        .map(|(index, job)| run_job(args, job, index, cache, mode, locks))
        .buffered(usize::from(args.jobs))
        .collect()
        .await;

    let failed = results.iter().filter(|r| r.error.is_some()).count();
    let printed = match args.result_format() {
        OutputFormat::Json => printer::write_json(
            &mut std::io::stdout().lock(),
            &BulkOutcome {
                schema_version: OUTCOME_SCHEMA_VERSION,
                failed,
                images: results_ref(&results),
            },
        ),
        OutputFormat::Text => write_text(&results, quiet),
    };
    if let Err(err) = printed
        && err.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: failed to write the result: {err}");
        return EXIT_FAILURE;
    }
    if failed > 0 {
        EXIT_FAILURE
    } else if results.iter().all(|r| r.exit_code == EXIT_NOTHING_TO_PATCH) {
        EXIT_NOTHING_TO_PATCH
    } else {
        EXIT_PATCHED
    }
}

fn results_ref(results: &[ImageResult]) -> Vec<ImageResult> {
    results
        .iter()
        .map(|r| ImageResult {
            image: r.image.clone(),
            platform: r.platform.clone(),
            status: r.status.clone(),
            exit_code: r.exit_code,
            result: r.result.clone(),
            error: r.error.clone(),
        })
        .collect()
}

/// One lock per local destination (a layout directory or an archive file), so images
/// written to the same one are written one after the other. Each write rewrites the
/// layout's `index.json` or the whole archive, so concurrent writes would drop tags.
#[derive(Default)]
struct LocalDestinations {
    locks: std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl LocalDestinations {
    /// Returns the lock of the local destination of `settings`, if it has one.
    fn lock_for(&self, settings: &patch::PatchSettings) -> Option<Arc<tokio::sync::Mutex<()>>> {
        let path = match &settings.oci_dir {
            Some(dir) => dir.clone(),
            None => {
                let source = Location::parse(&settings.image).ok()?;
                match source
                    .destination(settings.tag.as_deref(), &settings.tag_suffix)
                    .ok()?
                {
                    Location::OciLayout { dir, .. } => dir,
                    Location::DockerArchive { file, .. } => file,
                    Location::Registry(_) => return None,
                }
            }
        };
        let path = std::path::absolute(&path).unwrap_or(path);
        let mut locks = self.locks.lock().expect("no panic while holding the locks");
        Some(locks.entry(path).or_default().clone())
    }
}

async fn run_job(
    args: &PatchArgs,
    job: Job,
    index: usize,
    cache: &Path,
    mode: ProgressMode,
    destinations: &LocalDestinations,
) -> ImageResult {
    let Job {
        entry,
        platform,
        tag_platform_suffix,
    } = job;
    let failed = |exit_code: u8, error: String| ImageResult {
        image: entry.image.clone(),
        platform: platform.clone(),
        status: "failed".to_owned(),
        exit_code,
        result: None,
        error: Some(error),
    };
    let mut settings =
        match settings_from_args(args, entry.image.clone(), Some(entry.report.clone())) {
            Ok(settings) => settings,
            Err(err) => return failed(EXIT_USER_ERROR, format!("{err:#}")),
        };
    settings.platforms = platform.iter().cloned().collect();
    settings.tag = entry.tag.clone();
    if let Some(scanner) = &entry.scanner {
        settings.scanner = report_format(ScannerFlag::from_str(scanner, true).ok());
    }
    if let Some(suffix) = &tag_platform_suffix {
        match &mut settings.tag {
            Some(tag) => tag.push_str(&format!("-{suffix}")),
            None => settings.tag_suffix.push_str(&format!("-{suffix}")),
        }
    }
    settings.package_cache = Some(cache.to_owned());
    settings.work_dir = args
        .work_dir
        .as_ref()
        .map(|dir| dir.join(format!("image-{index}")));

    let label = match &platform {
        Some(platform) => format!("{} {platform}", entry.image),
        None => entry.image.clone(),
    };
    let lock = destinations.lock_for(&settings);
    let _guard = match &lock {
        Some(lock) => Some(lock.lock().await),
        None => None,
    };
    let reporter = ProgressPrinter::new(mode, Some(&label));
    match patch::patch(&settings, &reporter).await {
        Ok(outcome) => ImageResult {
            image: entry.image.clone(),
            platform: platform.clone(),
            status: serde_json::to_value(outcome.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            exit_code: exit_code(outcome.status),
            result: Some(outcome),
            error: None,
        },
        Err(err) => {
            let code = if err.is_user_error() {
                EXIT_USER_ERROR
            } else {
                EXIT_FAILURE
            };
            failed(code, printer::error_chain(&err))
        }
    }
}

fn write_text(results: &[ImageResult], quiet: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for result in results {
        let platform = result
            .platform
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        writeln!(out, "== {}{platform}: {}", result.image, result.status)?;
        if let Some(outcome) = &result.result {
            if quiet {
                printer::write_outcome_line(&mut out, outcome)?;
            } else {
                printer::write_outcome_text(&mut out, outcome)?;
            }
        }
        if let Some(error) = &result.error {
            writeln!(out, "error: {error}")?;
        }
    }
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    writeln!(
        out,
        "{} image(s): {} failed, {} succeeded",
        results.len(),
        failed,
        results.len() - failed
    )?;
    out.flush()
}

enum CacheDir {
    Kept(PathBuf),
    Temporary(tempfile::TempDir),
}

impl CacheDir {
    fn path(&self) -> &Path {
        match self {
            CacheDir::Kept(path) => path,
            CacheDir::Temporary(dir) => dir.path(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.yaml");
        fs_err::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn config_list_resolves_report_paths() {
        let (dir, path) = write(
            "- image: 127.0.0.1:5000/debian:bookworm\n  report: reports/a.json\n  \
             tag: fixed\n  platforms: [linux/amd64, linux/arm64/v8]\n\
             - image: 127.0.0.1:5000/debian:other\n  report: /abs/b.json\n",
        );
        let entries = read_config(&path).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].report, dir.path().join("reports/a.json"));
        assert_eq!(entries[1].report, PathBuf::from("/abs/b.json"));
        assert_eq!(entries[0].tag.as_deref(), Some("fixed"));
        let jobs = jobs(entries);
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[1].tag_platform_suffix.as_deref(), Some("arm64-v8"));
        assert_eq!(jobs[2].platform, None);
    }

    #[test]
    fn config_mapping_form_is_accepted() {
        let (_dir, path) = write("images:\n  - image: a:1\n    report: r.json\n");
        assert_eq!(read_config(&path).unwrap().len(), 1);
    }

    #[test]
    fn config_errors_name_the_file() {
        for text in [
            "- image: a:1\n",
            "[]\n",
            "- image: a\n  report: r\n  colour: red\n",
        ] {
            let (_dir, path) = write(text);
            let err = format!("{:#}", read_config(&path).unwrap_err());
            assert!(err.contains("images.yaml"), "{text}: {err}");
        }
        let (_dir, path) = write("- image: a\n  report: r\n  scanner: snyk\n");
        let err = format!("{:#}", read_config(&path).unwrap_err());
        assert!(err.contains("snyk"), "{err}");
    }
}
