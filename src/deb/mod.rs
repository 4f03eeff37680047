//! Debian packages: apt repositories, the dpkg database, .deb files and installation.

pub mod debfile;
pub mod install;
pub mod packages;
pub mod release;
pub mod repo;
pub mod resolve;
pub mod sources;
pub mod status;
