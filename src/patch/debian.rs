//! The Debian patch: from the image's dpkg database and apt sources to a built layer.

use std::path::Path;

use super::{FailedPackage, PackageUpdate, PatchSettings, Reporter, ScriptsNotRun, SkippedPackage};
use crate::layer::BuiltLayer;
use crate::osrelease::OsRelease;
use crate::report::Report;
use crate::rootfs::RootfsIndex;

/// What the Debian patch reads.
pub struct DebianInputs<'a> {
    pub rootfs: &'a RootfsIndex,
    pub os: &'a OsRelease,
    pub report: &'a Report,
    pub settings: &'a PatchSettings,
    pub work_dir: &'a Path,
    /// The image config's `architecture`, used when the dpkg database names none.
    pub platform_arch: Option<String>,
    /// The mtime of files the patch writes itself (dpkg metadata), seconds since the epoch.
    pub created_epoch: u64,
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
    #[error("the Debian patch is not available in this build")]
    Unavailable,
}

impl DebianError {
    pub fn is_user_error(&self) -> bool {
        false
    }
}

pub async fn patch_debian(
    _inputs: &DebianInputs<'_>,
    _reporter: &dyn Reporter,
) -> Result<DebianResult, DebianError> {
    Err(DebianError::Unavailable)
}
