//! The `layermend` command: parses flags, sets up logging and progress output, runs the
//! library and renders its result.

mod bulk;
mod cli;
mod printer;

use std::io::{self, IsTerminal};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;

use cli::{BackendFlag, Cli, Command, OutputFormat, PatchArgs, ScannerFlag};
use layermend::patch::{
    self, Backend, Endpoint, PatchOutcome, PatchSettings, PatchStatus, TlsFiles,
};
use layermend::report::ReportFormat;
use layermend::vex::{self, VexError, VexOptions};
use printer::{ProgressMode, ProgressPrinter};

/// Exit codes, as listed in `--help` and the README.
const EXIT_PATCHED: u8 = 0;
const EXIT_FAILURE: u8 = 1;
const EXIT_USER_ERROR: u8 = 2;
const EXIT_NOTHING_TO_PATCH: u8 = 3;
/// 128 + SIGINT, as shells report a process that a Ctrl-C ended.
const EXIT_INTERRUPTED: u8 = 130;

/// Caps glibc's malloc at two arenas. By default it makes up to eight per core, one for
/// each thread that allocates at once, and each keeps the memory freed in it, so the
/// short-lived decompression and compression threads would raise peak RSS by several MiB.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it runs before any other thread
    // starts, as glibc requires for M_ARENA_MAX to take full effect.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Waits for SIGINT or SIGTERM and returns its name.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    // clap checks `conflicts_with` only among flags given at the same level, so
    // `-q patch -v` gets through it.
    if cli.quiet && cli.verbose > 0 {
        eprintln!("error: --quiet and --verbose cannot be used together; pick one");
        return ExitCode::from(EXIT_USER_ERROR);
    }
    let code = match cli.command {
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "layermend", &mut io::stdout());
            EXIT_PATCHED
        }
        Command::Man { command } => write_or_fail(render_man(command.as_deref())),
        Command::Patch(args) => {
            init_logging(cli.verbose, cli.quiet);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("error: failed to start the async runtime: {err}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            };
            let code = if args.config.is_some() {
                runtime.block_on(run_bulk(*args, cli.quiet))
            } else {
                runtime.block_on(run_patch(*args, cli.quiet))
            };
            // After a failure, blocking work of other platforms or images may still run.
            // Its result is no longer needed, so the process exits without waiting for it
            // and hides the panic that its reads raise once the runtime shuts down.
            std::panic::set_hook(Box::new(|_| {}));
            runtime.shutdown_background();
            code
        }
    };
    ExitCode::from(code)
}

/// Renders the man page of `layermend`, or of one subcommand as `layermend-NAME(1)`.
fn render_man(subcommand: Option<&str>) -> io::Result<()> {
    let mut command = Cli::command();
    command.build();
    let page = match subcommand {
        None => command,
        Some(name) => {
            let sub = command
                .find_subcommand(name)
                .cloned()
                .ok_or_else(|| io::Error::other(format!("no subcommand {name:?}")))?;
            // clap takes a static name without its `string` feature; the process prints
            // one page and exits.
            let full_name: &'static str = Box::leak(format!("layermend-{name}").into_boxed_str());
            // The page's header names the source as NAME VERSION; a subcommand has no
            // version of its own.
            sub.name(full_name)
                .bin_name(full_name)
                .version(env!("CARGO_PKG_VERSION"))
        }
    };
    clap_mangen::Man::new(page).render(&mut io::stdout().lock())
}

fn write_or_fail(result: io::Result<()>) -> u8 {
    match result {
        Ok(()) => EXIT_PATCHED,
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => EXIT_PATCHED,
        Err(err) => {
            eprintln!("error: {err}");
            EXIT_USER_ERROR
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        // Errors reach the user through the returned error, printed once by `main`.
        (true, _) => "off",
        (false, 0) => "warn",
        (false, 1) => "layermend=debug,info",
        (false, _) => "layermend=trace,debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_target(false)
        // Colour codes only on a terminal, so logs redirected to a file stay plain text.
        .with_ansi(io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}

/// Runs a `--config` bulk run until it ends or a signal arrives. Dropping the run on a
/// signal removes its work directories; images whose push had finished stay pushed.
async fn run_bulk(args: PatchArgs, quiet: bool) -> u8 {
    tokio::select! {
        code = bulk::run(args, quiet) => code,
        signal = shutdown_signal() => {
            eprintln!(
                "error: interrupted by {signal}; images that finished before it were pushed, \
                 no other manifest was"
            );
            EXIT_INTERRUPTED
        }
    }
}

async fn run_patch(args: PatchArgs, quiet: bool) -> u8 {
    let format = args.result_format();
    let vex_path = args.output.clone();
    let Some(image) = args.image.clone() else {
        eprintln!("error: --image is required without --config");
        return EXIT_USER_ERROR;
    };
    let report = args.report.clone();
    let settings = match settings_from_args(&args, image, report) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: {err:#}");
            return EXIT_USER_ERROR;
        }
    };
    if let Some(path) = &vex_path {
        // Checked before the patch, so a VEX path that cannot be written fails the run
        // before anything is pushed.
        if let Err(message) = check_vex_path(path) {
            eprintln!("error: {message}");
            return EXIT_USER_ERROR;
        }
        if args.dry_run && !quiet {
            eprintln!(
                "warning: a dry run writes no VEX document to {}",
                path.display()
            );
        }
    } else if args.format == Some(cli::FormatFlag::Openvex) && !quiet {
        eprintln!("warning: -f openvex writes a VEX document only with -o FILE");
    }
    let reporter = ProgressPrinter::new(ProgressMode::detect(quiet), None);
    // Dropping the patch future on a signal removes its work directory; a manifest is
    // pushed only as the last step, so an interrupted run leaves no tag behind.
    let result = tokio::select! {
        result = patch::patch(&settings, &reporter) => result,
        signal = shutdown_signal() => {
            reporter.finish();
            let message = format!("interrupted by {signal}; no manifest was pushed");
            eprintln!("error: {message}");
            if format == OutputFormat::Json {
                let failure = printer::Failure::new(&settings.image, message, EXIT_INTERRUPTED);
                let _ = printer::write_json(&mut io::stdout().lock(), &failure);
            }
            return EXIT_INTERRUPTED;
        }
    };
    reporter.finish();
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(err) => {
            let message = printer::error_chain(&err);
            eprintln!("error: {message}");
            let code = if err.is_user_error() {
                EXIT_USER_ERROR
            } else {
                EXIT_FAILURE
            };
            if format == OutputFormat::Json {
                // Scripts that read stdout get a document on failure too.
                let failure = printer::Failure::new(&settings.image, message, code);
                let _ = printer::write_json(&mut io::stdout().lock(), &failure);
            }
            return code;
        }
    };

    let vex_failed = match &vex_path {
        Some(path) => !write_vex(path, &outcome, quiet),
        None => false,
    };
    if let Err(err) = print_outcome(&outcome, format, quiet)
        && err.kind() != io::ErrorKind::BrokenPipe
    {
        eprintln!("error: failed to write the result: {err}");
        return EXIT_FAILURE;
    }
    if vex_failed {
        return EXIT_FAILURE;
    }
    exit_code(outcome.status)
}

fn exit_code(status: PatchStatus) -> u8 {
    match status {
        PatchStatus::Patched | PatchStatus::Planned => EXIT_PATCHED,
        PatchStatus::NothingToPatch => EXIT_NOTHING_TO_PATCH,
    }
}

/// Prints the result: text on stdout, or JSON on stdout with the text on stderr. With
/// `-q` only the JSON, or the text's last line, is printed.
fn print_outcome(outcome: &PatchOutcome, format: OutputFormat, quiet: bool) -> io::Result<()> {
    match (format, quiet) {
        (OutputFormat::Text, false) => {
            printer::write_outcome_text(&mut io::stdout().lock(), outcome)
        }
        (OutputFormat::Text, true) => {
            printer::write_outcome_line(&mut io::stdout().lock(), outcome)
        }
        (OutputFormat::Json, quiet) => {
            if !quiet {
                printer::write_outcome_text(&mut io::stderr().lock(), outcome)?;
            }
            printer::write_json(&mut io::stdout().lock(), outcome)
        }
    }
}

/// Checks that the VEX document can be created at `path`: the path is not a directory,
/// and its directory exists and is writable.
fn check_vex_path(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!(
            "-o {} is a directory; name a file for the VEX document",
            path.display()
        ));
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(format!(
            "-o {}: directory {} does not exist; create it or name another file",
            path.display(),
            parent.display()
        ));
    }
    // A file created and removed at once shows the directory is writable.
    tempfile::NamedTempFile::new_in(parent)
        .map(drop)
        .map_err(|err| {
            format!(
                "-o {}: cannot write in {}: {err}",
                path.display(),
                parent.display()
            )
        })
}

/// Writes the OpenVEX document of `outcome` to `path`. An outcome that fixed nothing gets
/// no document and a warning; returns false only when writing failed.
fn write_vex(path: &Path, outcome: &PatchOutcome, quiet: bool) -> bool {
    let options = VexOptions {
        author: vex_author(),
        timestamp: vex_timestamp(),
    };
    let document = match vex::openvex_document(outcome, &options) {
        Ok(document) => document,
        Err(err @ (VexError::NotPatched | VexError::NothingFixed)) => {
            if !quiet {
                eprintln!(
                    "warning: no VEX document written to {}: {err}",
                    path.display()
                );
            }
            return true;
        }
        Err(err) => {
            eprintln!("error: {}", printer::error_chain(&err));
            return false;
        }
    };
    let written =
        fs_err::File::create(path).and_then(|mut file| printer::write_json(&mut file, &document));
    match written {
        Ok(()) => true,
        Err(err) => {
            eprintln!("error: failed to write the VEX document: {err}");
            false
        }
    }
}

fn vex_author() -> String {
    ["LAYERMEND_VEX_AUTHOR", "COPA_VEX_AUTHOR"]
        .iter()
        .find_map(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "layermend".to_owned())
}

/// `SOURCE_DATE_EPOCH` when set, for reproducible documents; the current time otherwise.
fn vex_timestamp() -> chrono::DateTime<chrono::Utc> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .unwrap_or_else(chrono::Utc::now)
}

fn report_format(flag: Option<ScannerFlag>) -> Option<ReportFormat> {
    flag.map(|flag| match flag {
        ScannerFlag::Trivy => ReportFormat::Trivy,
        ScannerFlag::Grype => ReportFormat::Grype,
        ScannerFlag::Native => ReportFormat::Native,
    })
}

/// Resolves the flags shared by single and bulk runs, with the environment, into the
/// settings of one patch of `image` with `report`.
fn settings_from_args(
    args: &PatchArgs,
    image: String,
    report: Option<std::path::PathBuf>,
) -> anyhow::Result<PatchSettings> {
    let mut ca_files = args.ca_files.clone();
    if let Some(path) = std::env::var_os("SSL_CERT_FILE") {
        ca_files.push(path.into());
    }
    let repo_mirrors = args
        .repo_mirrors
        .iter()
        .map(|text| text.parse())
        .collect::<Result<Vec<_>, _>>()
        .context("invalid --repo-mirror")?;
    Ok(PatchSettings {
        image,
        report,
        scanner: report_format(args.scanner),
        dry_run: args.dry_run,
        package_cache: None,
        tag: args.tag.clone(),
        oci_dir: args.oci_dir.clone(),
        tag_suffix: args.tag_suffix.clone(),
        ignore_errors: args.ignore_errors,
        timeout: args.timeout,
        platforms: args.platforms.clone(),
        insecure_registries: args.insecure_registries.clone(),
        ca_files,
        repo_mirrors,
        allow_untrusted_repo: args.allow_untrusted_repo,
        work_dir: args.work_dir.clone(),
        apt_sources: args.apt_sources.clone(),
        keyrings: args.keyrings.clone(),
        backend: backend(args)?,
    })
}

/// Resolves `--backend`, `--buildkit` and its TLS flags: the address alone selects
/// BuildKit, and `buildkit` or `auto` without an address use the local engine.
fn backend(args: &PatchArgs) -> anyhow::Result<Backend> {
    let tls = TlsFiles {
        ca_cert: args.cacert.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
    };
    let endpoint = || -> anyhow::Result<Endpoint> {
        let address = args.buildkit.as_deref().unwrap_or("docker://");
        Ok(Endpoint::parse(address)?.with_tls(&tls)?)
    };
    Ok(match (args.backend, &args.buildkit) {
        (Some(BackendFlag::Inprocess), Some(_)) => {
            anyhow::bail!("--buildkit needs --backend buildkit or auto, not inprocess")
        }
        (Some(BackendFlag::Inprocess), None) | (None, None) if !tls.is_empty() => {
            anyhow::bail!("--cacert, --cert and --key need a tcp:// address in --buildkit")
        }
        (Some(BackendFlag::Inprocess), None) | (None, None) => Backend::InProcess,
        (Some(BackendFlag::Buildkit), _) | (None, Some(_)) => Backend::BuildKit(endpoint()?),
        (Some(BackendFlag::Auto), _) => Backend::Auto(endpoint()?),
    })
}
