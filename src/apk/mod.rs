//! Alpine's apk: versions, the installed database, signed indexes, packages, and the
//! layer an upgrade leaves.

pub mod index;
pub mod install;
pub mod installed;
pub mod package;
pub mod resolve;
pub mod version;

#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    /// Builds (or reuses) the Alpine fixture and returns its directory.
    pub fn alpine_fixture() -> PathBuf {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/alpine.sh");
            let output = std::process::Command::new("bash")
                .arg(script)
                .output()
                .expect("bash must run tests/fixtures/alpine.sh");
            assert!(
                output.status.success(),
                "alpine.sh failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
        })
        .clone()
    }

    /// The fixture's real Alpine 3.23 root filesystem.
    pub fn alpine_rootfs() -> PathBuf {
        alpine_fixture().join("rootfs")
    }
}
