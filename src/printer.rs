//! Renders progress events and results for people (stderr, stdout) or machines (JSON).

use std::error::Error;
use std::io::{self, IsTerminal, Write};

use layermend::patch::{Event, PatchOutcome, PatchStatus, Reporter};

/// Prints a line per phase change and every warning on stderr.
pub struct ProgressPrinter {
    quiet: bool,
    terminal: bool,
}

impl ProgressPrinter {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            terminal: io::stderr().is_terminal(),
        }
    }
}

impl Reporter for ProgressPrinter {
    fn event(&self, event: Event) {
        if self.quiet {
            return;
        }
        let mut stderr = io::stderr().lock();
        let _ = match event {
            Event::Phase(phase) => writeln!(stderr, "{}", phase.describe()),
            Event::Warning(message) => writeln!(stderr, "warning: {message}"),
            Event::PackageDownloaded {
                name,
                version,
                bytes,
            } if self.terminal => writeln!(stderr, "  fetched {name} {version} ({bytes} bytes)"),
            _ => Ok(()),
        };
    }
}

/// Writes the human-readable result: one line per package, then the new image.
pub fn print_outcome_text(outcome: &PatchOutcome, quiet: bool) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if !quiet {
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
            writeln!(
                out,
                "{} package(s) updated: {}",
                outcome.updates.len(),
                names.join(", ")
            )?;
        }
        for scripts in &outcome.scripts_not_run {
            let mut names = scripts.scripts.clone();
            names.extend(scripts.triggers.iter().map(|t| format!("trigger {t}")));
            writeln!(out, "not run for {}: {}", scripts.package, names.join(", "))?;
        }
    }
    match (outcome.status, &outcome.manifest_digest) {
        (PatchStatus::Patched, Some(digest)) => {
            writeln!(
                out,
                "patched {} -> {}@{}",
                outcome.source, outcome.destination, digest
            )?;
        }
        _ => writeln!(out, "nothing to patch in {}", outcome.source)?,
    }
    out.flush()
}

/// Writes the result as one JSON document.
pub fn print_outcome_json(outcome: &PatchOutcome) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, outcome)?;
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
