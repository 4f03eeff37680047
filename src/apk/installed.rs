//! The apk installed database (`lib/apk/db/installed`), read and written losslessly.
//!
//! The file is a list of stanzas separated by blank lines. Each line is `K:value` with a
//! one-letter key: package fields (`C P V A S I T U L o m t c k D p i r q`), then the
//! package's directories (`F:` with an optional `M:uid:gid:mode`) each followed by its
//! files (`R:` with optional `a:uid:gid:mode` and the `Z:` checksum). Every line is kept
//! as it was read, so writing back an unchanged database gives the same bytes.

use std::fmt::Write as _;

/// An error in the installed database text.
#[derive(Debug, thiserror::Error)]
pub enum InstalledError {
    #[error("line {line} of the apk installed database is not `K:value`: {text:?}")]
    InvalidLine { line: usize, text: String },
    #[error("stanza at line {line} of the apk installed database has no `P:` (package name)")]
    MissingName { line: usize },
    #[error("the apk installed database is not valid UTF-8")]
    NotUtf8(#[source] std::str::Utf8Error),
}

/// One `K:value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub key: char,
    pub value: String,
}

/// One package's stanza, every line in its original order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledPackage {
    pub fields: Vec<Field>,
}

/// A file a package owns, with the metadata the database records for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedFile {
    /// Path relative to the root, without a leading slash.
    pub path: String,
    /// `a:uid:gid:mode` when the file is not `0:0:644`.
    pub acl: Option<String>,
    /// `Z:` checksum (`Q1` + base64 SHA-1 for v2 packages).
    pub checksum: Option<String>,
}

/// A directory a package owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedDir {
    pub path: String,
    /// `M:uid:gid:mode` when the directory is not `0:0:755`.
    pub acl: Option<String>,
}

impl InstalledPackage {
    /// Returns the first value of `key`.
    pub fn get(&self, key: char) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.key == key)
            .map(|f| f.value.as_str())
    }

    /// The package name (`P:`).
    pub fn name(&self) -> &str {
        self.get('P').unwrap_or("")
    }

    /// The package version (`V:`).
    pub fn version(&self) -> &str {
        self.get('V').unwrap_or("")
    }

    /// The package identity checksum (`C:`).
    pub fn checksum(&self) -> Option<&str> {
        self.get('C')
    }

    /// Space-separated words of `key` (`D:` depends, `p:` provides, `r:` replaces).
    pub fn words(&self, key: char) -> Vec<&str> {
        self.get(key)
            .map(|v| v.split_whitespace().collect())
            .unwrap_or_default()
    }

    /// The directories the package owns, in database order.
    pub fn dirs(&self) -> Vec<OwnedDir> {
        let mut dirs: Vec<OwnedDir> = Vec::new();
        for field in &self.fields {
            match field.key {
                'F' => dirs.push(OwnedDir {
                    path: field.value.clone(),
                    acl: None,
                }),
                'M' => {
                    if let Some(dir) = dirs.last_mut() {
                        dir.acl = Some(field.value.clone());
                    }
                }
                _ => {}
            }
        }
        dirs
    }

    /// The files the package owns, in database order.
    pub fn files(&self) -> Vec<OwnedFile> {
        let mut files: Vec<OwnedFile> = Vec::new();
        let mut dir = String::new();
        for field in &self.fields {
            match field.key {
                'F' => dir = field.value.clone(),
                'R' => files.push(OwnedFile {
                    path: if dir.is_empty() {
                        field.value.clone()
                    } else {
                        format!("{dir}/{}", field.value)
                    },
                    acl: None,
                    checksum: None,
                }),
                'a' => {
                    if let Some(file) = files.last_mut() {
                        file.acl = Some(field.value.clone());
                    }
                }
                'Z' => {
                    if let Some(file) = files.last_mut() {
                        file.checksum = Some(field.value.clone());
                    }
                }
                _ => {}
            }
        }
        files
    }
}

/// The whole installed database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledDb {
    pub packages: Vec<InstalledPackage>,
}

impl InstalledDb {
    /// Parses the database text.
    pub fn parse(data: &[u8]) -> Result<Self, InstalledError> {
        let text = std::str::from_utf8(data).map_err(InstalledError::NotUtf8)?;
        let mut packages = Vec::new();
        let mut current: Vec<Field> = Vec::new();
        let mut start = 1;
        for (index, line) in text.split('\n').enumerate() {
            if line.is_empty() {
                if !current.is_empty() {
                    let package = InstalledPackage {
                        fields: std::mem::take(&mut current),
                    };
                    if package.get('P').is_none() {
                        return Err(InstalledError::MissingName { line: start });
                    }
                    packages.push(package);
                }
                continue;
            }
            if current.is_empty() {
                start = index + 1;
            }
            let mut chars = line.chars();
            let key = chars.next();
            let (Some(key), Some(':')) = (key, chars.next()) else {
                return Err(InstalledError::InvalidLine {
                    line: index + 1,
                    text: line.to_owned(),
                });
            };
            current.push(Field {
                key,
                value: line[key.len_utf8() + 1..].to_owned(),
            });
        }
        if !current.is_empty() {
            let package = InstalledPackage { fields: current };
            if package.get('P').is_none() {
                return Err(InstalledError::MissingName { line: start });
            }
            packages.push(package);
        }
        Ok(InstalledDb { packages })
    }

    /// Writes the database the way apk-tools does: each stanza's lines, then a blank line.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        for package in &self.packages {
            for field in &package.fields {
                let _ = writeln!(out, "{}:{}", field.key, field.value);
            }
            out.push('\n');
        }
        out.into_bytes()
    }

    /// Returns the installed package called `name`.
    pub fn package(&self, name: &str) -> Option<&InstalledPackage> {
        self.packages.iter().find(|p| p.name() == name)
    }

    /// Replaces the stanza of the package called `name` in place, or appends `package`
    /// when none is installed, as apk-tools keeps the order of the packages it upgrades.
    pub fn replace(&mut self, name: &str, package: InstalledPackage) {
        match self.packages.iter_mut().find(|p| p.name() == name) {
            Some(slot) => *slot = package,
            None => self.packages.push(package),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "C:Q1aLuX6lJV53qpdOZUdtZIMq1WKIo=\nP:zlib\nV:1.3.2-r0\nA:x86_64\n\
        D:so:libc.musl-x86_64.so.1\np:so:libz.so.1=1.3.2\nF:usr\nF:usr/lib\nR:libz.so.1\n\
        a:0:0:777\nZ:Q1tB+V0rGZ237TINW/WVwfykixU6w=\nR:libz.so.1.3.2\na:0:0:755\n\
        Z:Q1WbBYB/VjxCEYKB5G0DnNnR3P7L8=\n\nC:Q1x=\nP:musl\nV:1.2.5-r23\nF:lib\nM:0:0:700\n\n";

    #[test]
    fn sample_round_trip_is_identical() {
        let db = InstalledDb::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(db.packages.len(), 2);
        assert_eq!(String::from_utf8(db.to_bytes()).unwrap(), SAMPLE);
    }

    #[test]
    fn files_and_dirs_carry_their_metadata() {
        let db = InstalledDb::parse(SAMPLE.as_bytes()).unwrap();
        let zlib = db.package("zlib").unwrap();
        assert_eq!(zlib.version(), "1.3.2-r0");
        assert_eq!(zlib.words('p'), ["so:libz.so.1=1.3.2"]);
        let files = zlib.files();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, "usr/lib/libz.so.1");
        assert_eq!(files[0].acl.as_deref(), Some("0:0:777"));
        assert_eq!(
            files[1].checksum.as_deref(),
            Some("Q1WbBYB/VjxCEYKB5G0DnNnR3P7L8=")
        );
        let musl = db.package("musl").unwrap();
        assert_eq!(musl.dirs()[0].acl.as_deref(), Some("0:0:700"));
    }

    #[test]
    fn stanza_without_name_is_rejected() {
        let error = InstalledDb::parse(b"V:1.0\n\n").unwrap_err();
        assert!(matches!(error, InstalledError::MissingName { line: 1 }));
    }

    #[test]
    fn line_without_colon_is_rejected() {
        let error = InstalledDb::parse(b"P:zlib\nbroken\n\n").unwrap_err();
        assert!(matches!(error, InstalledError::InvalidLine { line: 2, .. }));
    }

    /// The real database of Alpine 3.23 (written by apk-tools 3.0.8) round-trips byte
    /// for byte.
    #[test]
    fn real_database_round_trip_is_identical() {
        let rootfs = super::super::test_support::alpine_rootfs();
        let path = rootfs.join("lib/apk/db/installed");
        let data = fs_err::read(&path).unwrap();
        let db = InstalledDb::parse(&data).unwrap();
        assert_eq!(db.packages.len(), 59);
        assert!(
            db.to_bytes() == data,
            "round trip of {} differs",
            path.display()
        );
    }
}
