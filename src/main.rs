//! The `layermend` command: parses flags, sets up logging and progress output, runs the
//! library and renders its result.

mod cli;
mod printer;

use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, OutputFormat, PatchArgs};
use layermend::patch::{self, PatchSettings, PatchStatus};

/// Exit codes, as listed in `--help` and the README.
const EXIT_PATCHED: u8 = 0;
const EXIT_FAILURE: u8 = 1;
const EXIT_USER_ERROR: u8 = 2;
const EXIT_NOTHING_TO_PATCH: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let code = match cli.command {
        Command::Patch(args) => runtime.block_on(run_patch(args, cli.quiet)),
    };
    ExitCode::from(code)
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "layermend=debug,info",
        (false, _) => "layermend=trace,debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_target(false)
        .init();
}

async fn run_patch(args: PatchArgs, quiet: bool) -> u8 {
    let format = args.format;
    let settings = match settings_from_args(args) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: {err:#}");
            return EXIT_USER_ERROR;
        }
    };
    let reporter = printer::ProgressPrinter::new(quiet);
    match patch::patch(&settings, &reporter).await {
        Ok(outcome) => {
            let written = match format {
                OutputFormat::Text => printer::print_outcome_text(&outcome, quiet),
                OutputFormat::Json => printer::print_outcome_json(&outcome),
            };
            if let Err(err) = written
                && err.kind() != io::ErrorKind::BrokenPipe
            {
                eprintln!("error: failed to write the result: {err}");
                return EXIT_FAILURE;
            }
            match outcome.status {
                PatchStatus::Patched => EXIT_PATCHED,
                PatchStatus::NothingToPatch => EXIT_NOTHING_TO_PATCH,
            }
        }
        Err(err) => {
            let mut stderr = io::stderr().lock();
            let _ = writeln!(stderr, "error: {}", printer::error_chain(&err));
            if err.is_user_error() {
                EXIT_USER_ERROR
            } else {
                EXIT_FAILURE
            }
        }
    }
}

fn settings_from_args(args: PatchArgs) -> anyhow::Result<PatchSettings> {
    let mut ca_files = args.ca_files;
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
        image: args.image,
        report: args.report,
        tag: args.tag,
        oci_dir: args.oci_dir,
        tag_suffix: args.tag_suffix,
        ignore_errors: args.ignore_errors,
        timeout: args.timeout,
        platforms: args.platforms,
        insecure_registries: args.insecure_registries,
        ca_files,
        repo_mirrors,
        work_dir: args.work_dir,
    })
}
