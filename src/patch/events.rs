//! Progress events the patch emits; the caller decides how to show them.

/// A phase of the patch, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    ResolveImage,
    ReadLayers,
    ReadRepositories,
    Resolve,
    Download,
    BuildLayer,
    Push,
}

impl Phase {
    /// A short lower-case name, as the machine-readable progress lines print it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::ResolveImage => "resolve-image",
            Phase::ReadLayers => "read-layers",
            Phase::ReadRepositories => "read-repositories",
            Phase::Resolve => "resolve",
            Phase::Download => "download",
            Phase::BuildLayer => "build-layer",
            Phase::Push => "push",
        }
    }

    /// A phrase for progress lines, such as "reading the image's layers".
    pub fn describe(self) -> &'static str {
        match self {
            Phase::ResolveImage => "resolving the image",
            Phase::ReadLayers => "reading the image's layers",
            Phase::ReadRepositories => "reading the package repositories",
            Phase::Resolve => "resolving package updates",
            Phase::Download => "downloading packages",
            Phase::BuildLayer => "building the patch layer",
            Phase::Push => "pushing the patched image",
        }
    }
}

/// A phase that moves files, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// Source layers read from the registry ([`Event::LayerRead`]).
    Layers,
    /// Packages downloaded from the repositories ([`Event::PackageDownloaded`]).
    Packages,
    /// Blobs sent to the destination registry ([`Event::BlobPushed`]).
    Push,
}

/// One thing worth telling the user while a patch runs.
#[derive(Debug, Clone)]
pub enum Event {
    Phase(Phase),
    /// The work of a transfer phase is known: `items` files of `bytes` in total. Comes
    /// before the per-item events of that phase.
    Planned {
        transfer: Transfer,
        items: usize,
        bytes: u64,
    },
    /// A layer of the source image was read.
    LayerRead {
        digest: String,
        bytes: u64,
    },
    /// A package file was downloaded and verified.
    PackageDownloaded {
        name: String,
        version: String,
        bytes: u64,
    },
    /// A blob was sent to the destination registry, or found there already.
    BlobPushed {
        digest: String,
        bytes: u64,
        existed: bool,
    },
    /// Something the user should know that does not stop the patch.
    Warning(String),
}

/// Receives events; implementations must be cheap, since events come from async tasks.
pub trait Reporter: Send + Sync {
    fn event(&self, event: Event);
}

/// A reporter that drops every event.
pub struct NoReporter;

impl Reporter for NoReporter {
    fn event(&self, _event: Event) {}
}
