//! Registry access: manifests and blobs over the OCI distribution API.

pub mod auth;
