//! Scanner reports: which packages to update, to which minimum versions.

pub mod trivy;
