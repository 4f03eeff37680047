//! Renders progress events and results for people (stderr, stdout) or machines (JSON).
//!
//! On a terminal, progress is a phase line and a bar per transfer (layers read, packages
//! downloaded, blobs pushed); elsewhere, as in CI, it is one plain line per phase. `-q`
//! silences both.

use std::error::Error;
use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use layermend::patch::{Event, PatchOutcome, PatchStatus, Reporter, Transfer};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A phase spinner and transfer bars, redrawn in place; for terminals.
    Bars,
    /// One line per phase change and per warning; for logs.
    Lines,
    /// Nothing.
    Quiet,
}

impl ProgressMode {
    /// Bars when stderr is a terminal, plain lines otherwise, nothing with `-q`.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            ProgressMode::Quiet
        } else if io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Lines
        }
    }
}

/// Draws the events of one patch on stderr.
pub struct ProgressPrinter {
    mode: ProgressMode,
    /// Put before every plain line, to tell images apart in a bulk run.
    prefix: String,
    multi: MultiProgress,
    phase: Option<ProgressBar>,
    transfer: Mutex<Option<ProgressBar>>,
}

impl ProgressPrinter {
    pub fn new(mode: ProgressMode, prefix: Option<&str>) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let phase = (mode == ProgressMode::Bars).then(|| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            mode,
            prefix: prefix.map(|p| format!("[{p}] ")).unwrap_or_default(),
            multi,
            phase,
            transfer: Mutex::new(None),
        }
    }

    /// Removes the bars, so that the summary prints below the last plain line.
    pub fn finish(&self) {
        if let Some(bar) = self.transfer.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
        if let Some(phase) = &self.phase {
            phase.finish_and_clear();
        }
    }

    fn line(&self, text: &str) {
        match self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Bars => {
                let _ = self.multi.println(format!("{}{text}", self.prefix));
            }
            ProgressMode::Lines => {
                let _ = writeln!(io::stderr().lock(), "{}{text}", self.prefix);
            }
        }
    }

    fn start_transfer(&self, transfer: Transfer, items: usize, bytes: u64) {
        let label = match transfer {
            Transfer::Layers => "layers",
            Transfer::Packages => "packages",
            Transfer::Push => "push",
        };
        let bar = self.multi.add(ProgressBar::new(bytes));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>9} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(label);
        bar.set_message(format!("0/{items}"));
        let mut current = self.transfer.lock().expect("progress lock");
        if let Some(previous) = current.replace(bar) {
            previous.finish_and_clear();
        }
    }

    fn advance(&self, bytes: u64, item: &str) {
        if let Some(bar) = self.transfer.lock().expect("progress lock").as_ref() {
            bar.inc(bytes);
            bar.set_message(item.to_owned());
        }
    }
}

impl Reporter for ProgressPrinter {
    fn event(&self, event: Event) {
        match (self.mode, event) {
            (ProgressMode::Quiet, _) => {}
            (_, Event::Warning(message)) => self.line(&format!("warning: {message}")),
            (ProgressMode::Lines, Event::Phase(phase)) => self.line(phase.describe()),
            (ProgressMode::Lines, _) => {}
            (ProgressMode::Bars, Event::Phase(phase)) => {
                if let Some(bar) = self.transfer.lock().expect("progress lock").take() {
                    bar.finish_and_clear();
                }
                if let Some(spinner) = &self.phase {
                    spinner.set_message(format!("{}{}", self.prefix, phase.describe()));
                }
            }
            (
                ProgressMode::Bars,
                Event::Planned {
                    transfer,
                    items,
                    bytes,
                },
            ) => self.start_transfer(transfer, items, bytes),
            (ProgressMode::Bars, Event::LayerRead { digest, bytes }) => {
                self.advance(bytes, &short_digest(&digest));
            }
            (ProgressMode::Bars, Event::PackageDownloaded { name, bytes, .. }) => {
                self.advance(bytes, &name);
            }
            (ProgressMode::Bars, Event::BlobPushed { digest, bytes, .. }) => {
                self.advance(bytes, &short_digest(&digest));
            }
        }
    }
}

impl Drop for ProgressPrinter {
    fn drop(&mut self) {
        self.finish();
    }
}

fn short_digest(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.chars().take(12).collect()
}

/// Writes the human-readable result: one line per package, then the new image.
pub fn write_outcome_text(out: &mut dyn Write, outcome: &PatchOutcome) -> io::Result<()> {
    for skipped in &outcome.skipped {
        writeln!(out, "skipped {}: {}", skipped.name, skipped.reason)?;
    }
    for failed in &outcome.failed {
        writeln!(out, "failed {}: {}", failed.name, failed.error)?;
    }
    for update in &outcome.updates {
        let from = update.installed_version.as_deref().unwrap_or("(new)");
        let cves = if update.vulnerabilities.is_empty() {
            format!("({})", update.reason)
        } else {
            update.vulnerabilities.join(", ")
        };
        writeln!(
            out,
            "{:<28} {:<28} -> {:<28} {}",
            update.name, from, update.new_version, cves
        )?;
    }
    if !outcome.updates.is_empty() {
        let names: Vec<&str> = outcome.updates.iter().map(|u| u.name.as_str()).collect();
        let verb = if outcome.status == PatchStatus::Planned {
            "to update"
        } else {
            "updated"
        };
        writeln!(
            out,
            "{} package(s) {verb}: {}",
            outcome.updates.len(),
            names.join(", ")
        )?;
    }
    for scripts in &outcome.scripts_not_run {
        let mut names = scripts.scripts.clone();
        names.extend(scripts.triggers.iter().map(|t| format!("trigger {t}")));
        writeln!(out, "not run for {}: {}", scripts.package, names.join(", "))?;
    }
    write_outcome_line(out, outcome)?;
    out.flush()
}

/// Writes the one line that says what happened to the image.
pub fn write_outcome_line(out: &mut dyn Write, outcome: &PatchOutcome) -> io::Result<()> {
    match (outcome.status, &outcome.manifest_digest) {
        (PatchStatus::Patched, Some(digest)) => writeln!(
            out,
            "patched {} -> {}@{}",
            outcome.source, outcome.destination, digest
        ),
        (PatchStatus::Planned, _) => {
            let bytes: u64 = outcome.updates.iter().map(|u| u.size).sum();
            writeln!(
                out,
                "dry run: would patch {} -> {} with {} package(s), {} to download; nothing \
                 was downloaded or pushed",
                outcome.source,
                outcome.destination,
                outcome.updates.len(),
                indicatif::HumanBytes(bytes)
            )
        }
        _ => writeln!(out, "nothing to patch in {}", outcome.source),
    }
}

/// Writes a value as one pretty-printed JSON document and a newline.
pub fn write_json<T: serde::Serialize>(out: &mut dyn Write, value: &T) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    out.flush()
}

/// Formats an error with its chain of causes, one `caused by` per source.
pub fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str("\n  caused by: ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The JSON document printed on stdout when a patch fails, in the same layout version as
/// a successful result.
#[derive(Debug, serde::Serialize)]
pub struct Failure<'a> {
    pub schema_version: u32,
    pub status: &'static str,
    pub source: &'a str,
    pub error: String,
    pub exit_code: u8,
}

impl<'a> Failure<'a> {
    pub fn new(source: &'a str, error: String, exit_code: u8) -> Self {
        Failure {
            schema_version: layermend::patch::OUTCOME_SCHEMA_VERSION,
            status: "failed",
            source,
            error,
            exit_code,
        }
    }
}
