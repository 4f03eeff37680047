//! Patch OS packages in container images without a daemon and without root.
//!
//! The library does the work: it reads images from registries, builds the merged view of
//! their layers, resolves package updates against the distribution's signed repositories,
//! writes one new layer and pushes the amended image. It never prints and never exits;
//! progress reaches the caller through [`patch::Reporter`].

pub mod deb;
pub mod digest;
pub mod image;
pub mod layer;
pub mod osrelease;
pub mod patch;
pub mod reference;
pub mod registry;
pub mod report;
pub mod rootfs;
pub mod transport;
