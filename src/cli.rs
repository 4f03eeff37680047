//! Command-line definitions. Every flag maps one-to-one onto a field here; `main.rs`
//! resolves them, with the environment, into the library's settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit-code table shown in `--help`; `main.rs` uses the same numbers.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  the image was patched and the result written
  1  failure: a registry, repository or package could not be read or written
  2  user error: invalid flags, reference or report
  3  nothing to patch: every reported package is already fixed or none is fixable";

#[derive(Debug, Parser)]
#[command(
    name = "layermend",
    version,
    about = "Patch OS packages in container images in place, with no daemon and no root",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log more detail on stderr: -v for debug, -vv for trace (`RUST_LOG` overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add one layer with fixed OS packages to an image and push the result.
    #[command(after_help = EXIT_CODES)]
    Patch(PatchArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable lines.
    Text,
    /// One JSON document on stdout.
    Json,
}

#[derive(Debug, Args)]
pub struct PatchArgs {
    /// The image to patch: a registry reference (`registry/repo:tag`,
    /// `repo@sha256:…` or `docker://REF`; `docker.io/library/` is the default prefix),
    /// an OCI image layout `oci:DIR[:TAG]`, or a `docker save` tarball
    /// `docker-archive:FILE[:REF]`.
    #[arg(short, long, value_name = "IMAGE")]
    pub image: String,

    /// The Trivy JSON report of the image's vulnerabilities, or a directory of reports
    /// matched to an index's platforms by the architecture each records.
    #[arg(short, long, value_name = "FILE|DIR")]
    pub report: PathBuf,

    /// Where the patched image goes: a bare tag in the source repository or layout, a
    /// full `[registry/]repo:tag`, or a location with a transport prefix (`oci:DIR:TAG`,
    /// `docker-archive:FILE:REF`, `docker://REF`). Required when the image is given by
    /// digest only.
    #[arg(short, long, value_name = "TAG")]
    pub tag: Option<String>,

    /// Write the patched image as an OCI image layout in DIR, tagged as `-t` or the
    /// derived tag says, in place of the destination.
    #[arg(long, value_name = "DIR", conflicts_with = "push")]
    pub oci_dir: Option<PathBuf>,

    /// The suffix appended to the source tag when `--tag` is not given.
    #[arg(long, value_name = "SUFFIX", default_value = "patched")]
    pub tag_suffix: String,

    /// Carry on when a reported package cannot be updated, patching the others.
    #[arg(long)]
    pub ignore_errors: bool,

    /// The time limit for the whole patch, such as `300s` or `5m`.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Push the result to the registry. Accepted for compatibility with copa: a registry
    /// destination is always pushed to.
    #[arg(long)]
    pub push: bool,

    /// A platform to patch in a multi-platform image, as `os/arch[/variant]`.
    /// Repeatable. Default: every platform; the others stay in the index unchanged.
    #[arg(long = "platform", value_name = "PLATFORM")]
    pub platforms: Vec<String>,

    /// A registry host (`host[:port]`) reached over plain HTTP. Loopback registries
    /// always are. Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,

    /// A PEM file of extra CA certificates trusted for registries and repositories.
    /// Repeatable; `SSL_CERT_FILE` adds one more.
    #[arg(long = "ca-file", value_name = "FILE")]
    pub ca_files: Vec<PathBuf>,

    /// Replace a package repository's base URL, as `FROM=TO`; `TO` may be a `file://`
    /// URL of a local mirror. Repeatable.
    #[arg(long = "repo-mirror", value_name = "FROM=TO")]
    pub repo_mirrors: Vec<String>,

    /// The output format of the result.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

    /// A directory for downloads and the new layer while the patch runs. Default: a
    /// temporary directory that is removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|err| format!("invalid duration {text:?}: {err} (examples: 300s, 5m, 1h)"))?;
    if duration.is_zero() {
        return Err(format!("invalid duration {text:?}: must be more than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("300s").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("five").is_err());
    }
}
