//! Command-line definitions. Every flag maps one-to-one onto a field here; `main.rs`
//! resolves them, with the environment, into the library's settings.
//!
//! `--help`, the shell completions (`layermend completions`) and the man page
//! (`layermend man`) are all generated from these definitions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// Exit-code table shown in `--help`; `main.rs` uses the same numbers.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  the image was patched and the result written (with --dry-run: there is something
     to patch)
  1  failure: a registry, repository or package could not be read or written; with
     --config, at least one image failed
  2  user error: invalid flags, reference, report or configuration file; credentials
     a registry or token server rejects; a missing image or repository
  3  nothing to patch: every reported package is already fixed or none is fixable
  130  interrupted by SIGINT or SIGTERM; no manifest of an unfinished image is pushed";

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

    /// Log more detail on stderr: -v for debug, -vv for trace. `RUST_LOG` (an
    /// `EnvFilter` directive such as `layermend=debug`) overrides both. Default: warnings.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Print only errors on stderr: no progress, no summary, no warnings. The JSON result
    /// (`--output-format json`) is still printed on stdout.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add one layer with fixed OS packages to an image and push the result.
    #[command(after_help = EXIT_CODES)]
    Patch(Box<PatchArgs>),
    /// Print a shell completion script on stdout.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff) on stdout, for `man -l -` or a file in man1/.
    Man {
        /// The subcommand whose page to print, as `layermend-COMMAND(1)`. Default: the
        /// page of `layermend` itself.
        #[arg(value_name = "COMMAND")]
        command: Option<String>,
    },
}

/// `-f/--format`: copa's VEX format flag, which also takes the result formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatFlag {
    /// An OpenVEX v0.2.0 document, written to the file `-o` names (copa's meaning).
    Openvex,
    /// Same as `--output-format json`.
    Json,
    /// Same as `--output-format text`.
    Text,
}

/// The format of the result printed when the patch ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A human-readable summary on stdout.
    Text,
    /// One JSON document on stdout; the human-readable summary goes to stderr.
    Json,
}

/// The scanner that wrote the report, spelled as copa's `--scanner` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScannerFlag {
    /// Trivy JSON, schema 2 or the older top-level array of results.
    Trivy,
    /// Grype JSON (`grype -o json`).
    Grype,
    /// copa's scanner-plugin JSON (apiVersion v1alpha1 or v1alpha2).
    Native,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("target")
        .args(["image", "config"])
        .required(true)
))]
pub struct PatchArgs {
    /// The image to patch: a registry reference (`registry/repo:tag`, `repo@sha256:…`
    /// or `docker://REF`; `docker.io/library/` is the default prefix), an OCI image
    /// layout `oci:DIR[:TAG]`, or a `docker save` tarball `docker-archive:FILE[:REF]`.
    /// Required unless `--config` is given.
    #[arg(short, long, value_name = "IMAGE", conflicts_with = "config")]
    pub image: Option<String>,

    /// The scanner report of the image's vulnerabilities (Trivy, Grype or copa
    /// scanner-plugin JSON), or a directory of reports matched to an index's platforms
    /// by the architecture each records. Without it, every installed package with a
    /// newer version in the repositories is updated, as `apt-get upgrade` would: upgrades
    /// that need a package the image lacks are kept back.
    #[arg(short, long, value_name = "FILE|DIR", conflicts_with = "config")]
    pub report: Option<PathBuf>,

    /// The report's format. Default: detected from the content.
    #[arg(long, value_enum, value_name = "SCANNER")]
    pub scanner: Option<ScannerFlag>,

    /// A YAML file listing images to patch concurrently, each with its own report and
    /// optional tag and platforms (see the README). Replaces `--image` and `--report`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The number of images patched at the same time with `--config`.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,

    /// Where the patched image goes: a bare tag in the source repository or layout, a
    /// full `[registry/]repo:tag`, or a location with a transport prefix (`oci:DIR:TAG`,
    /// `docker-archive:FILE:REF`, `docker://REF`). Required when the image is given by
    /// digest only. Default: the source tag plus `-` and `--tag-suffix`.
    #[arg(short, long, value_name = "TAG", conflicts_with = "config")]
    pub tag: Option<String>,

    /// Write the patched image as an OCI image layout in DIR, tagged with `-t` or else the
    /// derived tag, in place of the destination.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["push", "config"])]
    pub oci_dir: Option<PathBuf>,

    /// The suffix appended to the source tag when `--tag` is not given.
    #[arg(long, value_name = "SUFFIX", default_value = "patched")]
    pub tag_suffix: String,

    /// Resolve the report, indexes, versions and dependencies and print the plan, without
    /// downloading packages or pushing. Exit code 0 when there is something to patch.
    #[arg(long)]
    pub dry_run: bool,

    /// Carry on when a reported package cannot be updated, patching the others.
    #[arg(long)]
    pub ignore_errors: bool,

    /// The time limit for one image's patch, such as `300s` or `5m`.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Push the result to the registry. Accepted for compatibility with copa: a registry
    /// destination is always pushed to.
    #[arg(long)]
    pub push: bool,

    /// A platform to patch in a multi-platform image, as `os/arch[/variant]`.
    /// Repeatable. Default: every platform; the others stay in the index unchanged.
    #[arg(long = "platform", value_name = "PLATFORM", conflicts_with = "config")]
    pub platforms: Vec<String>,

    /// A registry host (`host[:port]`) that falls back to plain HTTP when it replies to
    /// HTTPS in plain HTTP, as loopback registries always may. Repeatable.
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

    /// A repository to take updates from instead of the image's apt sources, as a
    /// one-line apt source: `deb [signed-by=FILE] URL SUITE COMPONENT…`, where FILE is a
    /// keyring on this host. Repeatable. Needed for images without apt sources, such as
    /// distroless ones.
    #[arg(long = "apt-source", value_name = "LINE")]
    pub apt_sources: Vec<String>,

    /// A keyring file on this host (binary `.gpg` or armored `.asc`) trusted for every
    /// repository. Repeatable.
    #[arg(long = "keyring", value_name = "FILE")]
    pub keyrings: Vec<PathBuf>,

    /// Use apk repository indexes whose signature is missing, bad or made by a key the
    /// image does not trust. Default: such an index is an error.
    #[arg(long)]
    pub allow_untrusted_repo: bool,

    /// `openvex` writes an OpenVEX document of the fixed vulnerabilities to `--output`
    /// (copa's `-f`). `json` and `text` set the result format like `--output-format`.
    #[arg(short = 'f', long = "format", value_enum, value_name = "FORMAT")]
    pub format: Option<FormatFlag>,

    /// The file the VEX document is written to. Without it no VEX document is written.
    /// The author is `LAYERMEND_VEX_AUTHOR` or `COPA_VEX_AUTHOR`; default: layermend.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        conflicts_with = "config"
    )]
    pub output: Option<PathBuf>,

    /// The format of the result printed when the patch ends.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Text)]
    pub output_format: OutputFormat,

    /// A directory for downloads and the new layer while the patch runs. Default: a
    /// temporary directory that is removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,

    /// The Docker engine whose BuildKit installs the packages with apt-get, so maintainer
    /// scripts run: `docker://` (the local engine: `DOCKER_HOST` when it is a `unix://`
    /// address, else /var/run/docker.sock), `unix:///PATH/docker.sock` or `tcp://HOST:PORT`
    /// (plain HTTP, or TLS with `--cacert`). Implies `--backend buildkit` unless `--backend`
    /// is given. A standalone buildkitd is not supported.
    #[arg(long, short = 'a', visible_alias = "addr", value_name = "ADDR")]
    pub buildkit: Option<String>,

    /// A PEM file of the CA certificates that the `tcp://` engine's certificate must chain
    /// to, besides the system's. Makes the connection use TLS.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// A PEM client certificate presented to the `tcp://` engine, as `dockerd
    /// --tlsverify` requires. Needs `--key` and `--cacert`.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,

    /// The PEM private key of `--cert`.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,

    /// The backend that installs the packages. `inprocess` unpacks them without running
    /// maintainer scripts. `buildkit` runs apt-get in a BuildKit build on `--buildkit`.
    /// `auto` builds in-process, then again with BuildKit when a package has scripts or
    /// triggers that the in-process build skips. Default: `buildkit` with `--buildkit`,
    /// else `inprocess`.
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub backend: Option<BackendFlag>,
}

/// `--backend`: the backend that installs the packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendFlag {
    /// Unpack the packages in-process, without running maintainer scripts.
    Inprocess,
    /// Run apt-get in a BuildKit build on the `--buildkit` engine.
    Buildkit,
    /// Build in-process, or with BuildKit when a package has scripts that the in-process
    /// build skips.
    Auto,
}

impl PatchArgs {
    /// Returns the result format, with `-f json|text` taking precedence over `--output-format`.
    pub fn result_format(&self) -> OutputFormat {
        match self.format {
            Some(FormatFlag::Json) => OutputFormat::Json,
            Some(FormatFlag::Text) => OutputFormat::Text,
            Some(FormatFlag::Openvex) | None => self.output_format,
        }
    }
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

    fn patch_args(args: &[&str]) -> Result<PatchArgs, clap::Error> {
        let cli = Cli::try_parse_from(["layermend", "patch"].iter().chain(args))?;
        match cli.command {
            Command::Patch(args) => Ok(*args),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn image_or_config_is_required() {
        assert!(patch_args(&[]).is_err());
        assert!(
            patch_args(&["-i", "debian:12"]).is_ok(),
            "without --report every package is updated"
        );
        assert!(patch_args(&["-i", "debian:12", "-r", "r.json"]).is_ok());
        assert!(patch_args(&["--config", "images.yaml"]).is_ok());
        assert!(patch_args(&["--config", "c.yaml", "-i", "debian:12", "-r", "r"]).is_err());
    }

    #[test]
    fn format_flag_selects_vex_or_result_format() {
        let json = patch_args(&["-i", "x", "-r", "r", "--format", "json"]).unwrap();
        assert_eq!(json.result_format(), OutputFormat::Json);
        let vex = patch_args(&["-i", "x", "-r", "r", "-f", "openvex", "-o", "v.json"]).unwrap();
        assert_eq!(vex.format, Some(FormatFlag::Openvex));
        assert_eq!(vex.result_format(), OutputFormat::Text);
        let both = patch_args(&[
            "-i",
            "x",
            "-r",
            "r",
            "-f",
            "openvex",
            "-o",
            "v",
            "--output-format",
            "json",
        ])
        .unwrap();
        assert_eq!(both.result_format(), OutputFormat::Json);
    }
}
