//! `os-release` files (freedesktop.org `os-release(5)`): which distribution an image is.

use crate::rootfs::RootfsIndex;

/// The fields of `os-release` that decide how an image is patched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`, lower-case (`debian`, `ubuntu`, `alpine`).
    pub id: String,
    /// `ID_LIKE`, split on spaces.
    pub id_like: Vec<String>,
    /// `VERSION_ID` (`12`, `22.04`, `3.21.0`); empty on Debian testing and sid.
    pub version_id: String,
    /// `VERSION_CODENAME` (`bookworm`), when present.
    pub codename: Option<String>,
    /// `PRETTY_NAME`, for messages.
    pub pretty_name: Option<String>,
}

impl OsRelease {
    /// Parses the shell-style `KEY=value` lines of an `os-release` file.
    pub fn parse(text: &str) -> Self {
        let mut release = OsRelease::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = unquote(value.trim());
            match key.trim() {
                "ID" => release.id = value.to_ascii_lowercase(),
                "ID_LIKE" => {
                    release.id_like = value.split_whitespace().map(str::to_owned).collect();
                }
                "VERSION_ID" => release.version_id = value,
                "VERSION_CODENAME" if !value.is_empty() => release.codename = Some(value),
                "PRETTY_NAME" => release.pretty_name = Some(value),
                _ => {}
            }
        }
        release
    }

    /// Reads `etc/os-release`, falling back to `usr/lib/os-release` as `os-release(5)`
    /// specifies, following symlinks inside the image.
    pub fn from_rootfs(rootfs: &RootfsIndex) -> Option<Self> {
        ["etc/os-release", "usr/lib/os-release"]
            .iter()
            .find_map(|path| rootfs.content(&rootfs.resolve(path)))
            .map(|data| Self::parse(&String::from_utf8_lossy(data)))
    }

    /// The name used in messages: `PRETTY_NAME`, else `ID VERSION_ID`.
    pub fn display_name(&self) -> String {
        self.pretty_name
            .clone()
            .unwrap_or_else(|| format!("{} {}", self.id, self.version_id).trim().to_owned())
    }

    /// Whether this release is `family` or declares itself like it.
    pub fn is_like(&self, family: &str) -> bool {
        self.id == family || self.id_like.iter().any(|like| like == family)
    }
}

fn unquote(value: &str) -> String {
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKWORM: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"#;

    #[test]
    fn parses_debian_bookworm() {
        let release = OsRelease::parse(BOOKWORM);
        assert_eq!(release.id, "debian");
        assert_eq!(release.version_id, "12");
        assert_eq!(release.codename.as_deref(), Some("bookworm"));
        assert_eq!(release.display_name(), "Debian GNU/Linux 12 (bookworm)");
    }

    #[test]
    fn parses_ubuntu_id_like_and_escapes() {
        let release = OsRelease::parse("ID=ubuntu\nID_LIKE=debian\nNAME='A \\\"b\\\"'\n");
        assert!(release.is_like("debian"));
        assert!(!release.is_like("alpine"));
    }

    #[test]
    fn missing_fields_stay_empty() {
        let release = OsRelease::parse("# comment\nID=alpine\n");
        assert_eq!(release.version_id, "");
        assert_eq!(release.codename, None);
        assert_eq!(release.display_name(), "alpine");
    }
}
