//! Reading binary packages (`.deb`).
//!
//! A .deb is an `ar` archive of `debian-binary`, `control.tar[.gz|.xz|.zst]` and
//! `data.tar[.gz|.xz|.zst]` (deb(5)). The control member is small and read whole; the
//! data member is only ever streamed, one tar entry at a time.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::rootfs::{FileKind, normalize};

/// An error reading a .deb, naming the file and the member.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("failed to read {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read member {member:?} of {path}")]
    Member {
        path: PathBuf,
        member: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} has no {member} member; is it a Debian binary package?")]
    MissingMember { path: PathBuf, member: &'static str },
    #[error(
        "member {member:?} of {path} uses an unsupported compression; expected none, gzip, xz or zstd"
    )]
    UnsupportedCompression { path: PathBuf, member: String },
    #[error("invalid control file in {path}: {message}")]
    InvalidControl { path: PathBuf, message: String },
}

/// The fields of a control file in file order, with values as dpkg reads them: the
/// whitespace after the colon and at the end of the value removed, continuation lines
/// kept with their leading space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlFields {
    fields: Vec<(String, String)>,
}

impl ControlFields {
    /// Parses one deb822 paragraph as dpkg's parser does.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut fields: Vec<(String, String)> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                if fields.is_empty() {
                    continue;
                }
                break;
            }
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                let Some((_, value)) = fields.last_mut() else {
                    return Err(format!(
                        "line {}: continuation line before any field",
                        number + 1
                    ));
                };
                value.push('\n');
                value.push_str(line);
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(format!("line {}: expected `Field: value`", number + 1));
            };
            fields.push((name.trim().to_owned(), value.trim_start().to_owned()));
        }
        for (_, value) in &mut fields {
            value.truncate(value.trim_end().len());
        }
        Ok(Self { fields })
    }

    /// Returns a field's value; names compare case-insensitively as in deb822.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Iterates over (name, value) in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// One entry of the data member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataEntry {
    /// Normalized path (`usr/bin/tool`); the archive root `./` is the empty string.
    pub path: String,
    /// The kind; hard link targets are normalized, symlink targets kept as stored.
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub size: u64,
}

/// A member of the control archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlMember {
    pub data: Vec<u8>,
    pub mode: u32,
    pub mtime: u64,
}

/// An opened .deb: control data in memory, data member streamed on request.
#[derive(Debug, Clone)]
pub struct DebFile {
    path: PathBuf,
    control_raw: Vec<u8>,
    control: ControlFields,
    members: BTreeMap<String, ControlMember>,
}

impl DebFile {
    /// Opens a .deb and reads its control member.
    pub fn open(path: &Path) -> Result<Self, DebError> {
        let mut members = BTreeMap::new();
        let found = with_member(path, "control.tar", |name, reader| {
            let mut archive = tar::Archive::new(reader);
            let entries = archive
                .entries()
                .map_err(|source| member_error(path, name, source))?;
            for entry in entries {
                let mut entry = entry.map_err(|source| member_error(path, name, source))?;
                if entry.header().entry_type() != tar::EntryType::Regular {
                    continue;
                }
                let entry_path = entry
                    .path()
                    .map_err(|source| member_error(path, name, source))?;
                let member = normalize(&entry_path.to_string_lossy());
                let mode = entry.header().mode().unwrap_or(0o644);
                let mtime = entry.header().mtime().unwrap_or(0);
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .map_err(|source| member_error(path, name, source))?;
                members.insert(member, ControlMember { data, mode, mtime });
            }
            Ok(())
        })?;
        if !found {
            return Err(DebError::MissingMember {
                path: path.to_owned(),
                member: "control.tar",
            });
        }
        let control_raw = members
            .remove("control")
            .ok_or_else(|| DebError::InvalidControl {
                path: path.to_owned(),
                message: "control.tar has no control file".to_owned(),
            })?
            .data;
        let text = String::from_utf8_lossy(&control_raw);
        let control = ControlFields::parse(&text).map_err(|message| DebError::InvalidControl {
            path: path.to_owned(),
            message,
        })?;
        for field in ["Package", "Version", "Architecture"] {
            if control.get(field).is_none_or(str::is_empty) {
                return Err(DebError::InvalidControl {
                    path: path.to_owned(),
                    message: format!("missing {field} field"),
                });
            }
        }
        tracing::debug!(path = %path.display(), package = control.get("Package"), "opened deb");
        Ok(Self {
            path: path.to_owned(),
            control_raw,
            control,
            members,
        })
    }

    /// Returns the path this package was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the control file's fields.
    pub fn control(&self) -> &ControlFields {
        &self.control
    }

    /// Returns the control file exactly as shipped.
    pub fn control_raw(&self) -> &[u8] {
        &self.control_raw
    }

    /// Parses the control file as a lossless deb822 paragraph.
    pub fn control_paragraph(&self) -> Option<deb822_lossless::Paragraph> {
        let text = String::from_utf8_lossy(&self.control_raw);
        deb822_lossless::Deb822::parse(&text)
            .tree()
            .paragraphs()
            .next()
    }

    /// Returns the package name (`Package`).
    pub fn name(&self) -> &str {
        self.control.get("Package").unwrap_or_default()
    }

    /// Returns the version string (`Version`).
    pub fn version(&self) -> &str {
        self.control.get("Version").unwrap_or_default()
    }

    /// Returns the architecture (`Architecture`).
    pub fn architecture(&self) -> &str {
        self.control.get("Architecture").unwrap_or_default()
    }

    /// Another control member (`md5sums`, `conffiles`, `postinst`, ...) by name.
    pub fn member(&self, name: &str) -> Option<&ControlMember> {
        self.members.get(name)
    }

    /// Iterates over the control members other than `control`, by name.
    pub fn members(&self) -> impl Iterator<Item = (&str, &ControlMember)> {
        self.members
            .iter()
            .map(|(name, member)| (name.as_str(), member))
    }

    /// Streams the data member: calls `visit` with each entry and a reader of its content
    /// (empty for anything but regular files), in archive order.
    pub fn for_each_data_entry<E>(
        &self,
        mut visit: impl FnMut(&DataEntry, &mut dyn Read) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<DebError>,
    {
        let path = self.path.as_path();
        let mut outcome: Result<(), E> = Ok(());
        let found = with_member(path, "data.tar", |name, reader| {
            let mut archive = tar::Archive::new(reader);
            let entries = archive
                .entries()
                .map_err(|source| member_error(path, name, source))?;
            for entry in entries {
                let mut entry = entry.map_err(|source| member_error(path, name, source))?;
                let data_entry =
                    data_entry(&entry).map_err(|source| member_error(path, name, source))?;
                if let Err(error) = visit(&data_entry, &mut entry) {
                    outcome = Err(error);
                    return Ok(());
                }
            }
            Ok(())
        })
        .map_err(E::from)?;
        if !found {
            return Err(DebError::MissingMember {
                path: path.to_owned(),
                member: "data.tar",
            }
            .into());
        }
        outcome
    }
}

/// Writes a copy of the .deb at `source` to `dest` with its data member decompressed
/// (`data.tar`), keeping every other member as it is. Unpacking the copy then costs no
/// decompression, so the copies of several packages can be made in parallel while the
/// installer, which must go in order, reads them later.
pub fn decompress_data_member(source: &Path, dest: &Path) -> Result<(), DebError> {
    let io_error = |path: &Path, error| DebError::Open {
        path: path.to_owned(),
        source: error,
    };
    let data_path = dest.with_extension("data.tar");
    let mut data_file = fs_err::File::create(&data_path).map_err(|e| io_error(&data_path, e))?;
    let found = with_member(source, "data.tar", |name, reader| {
        io::copy(reader, &mut data_file).map_err(|e| member_error(source, name, e))?;
        Ok(())
    })?;
    if !found {
        return Err(DebError::MissingMember {
            path: source.to_owned(),
            member: "data.tar",
        });
    }
    drop(data_file);

    let input = fs_err::File::open(source).map_err(|e| io_error(source, e))?;
    let output = fs_err::File::create(dest).map_err(|e| io_error(dest, e))?;
    let mut archive = ar::Archive::new(io::BufReader::new(input));
    let mut builder = ar::Builder::new(io::BufWriter::new(output));
    while let Some(entry) = archive.next_entry() {
        let mut entry = entry.map_err(|e| io_error(source, e))?;
        let header = entry.header().clone();
        let name = String::from_utf8_lossy(header.identifier())
            .trim_end_matches('/')
            .to_owned();
        if name.starts_with("data.tar") {
            let data = fs_err::File::open(&data_path).map_err(|e| io_error(&data_path, e))?;
            let size = data.metadata().map_err(|e| io_error(&data_path, e))?.len();
            let mut plain = ar::Header::new(b"data.tar".to_vec(), size);
            plain.set_mode(header.mode());
            plain.set_mtime(header.mtime());
            builder
                .append(&plain, io::BufReader::new(data))
                .map_err(|e| io_error(dest, e))?;
        } else {
            builder
                .append(&header, &mut entry)
                .map_err(|e| io_error(dest, e))?;
        }
    }
    builder
        .into_inner()
        .and_then(|mut writer| writer.flush())
        .map_err(|e| io_error(dest, e))?;
    fs_err::remove_file(&data_path).map_err(|e| io_error(&data_path, e))?;
    Ok(())
}

fn member_error(path: &Path, member: &str, source: io::Error) -> DebError {
    DebError::Member {
        path: path.to_owned(),
        member: member.to_owned(),
        source,
    }
}

fn data_entry<R: Read>(entry: &tar::Entry<R>) -> io::Result<DataEntry> {
    let header = entry.header();
    let path = normalize(&entry.path()?.to_string_lossy());
    let link = || -> io::Result<String> {
        Ok(entry
            .link_name()?
            .map(|target| target.to_string_lossy().into_owned())
            .unwrap_or_default())
    };
    let kind = match header.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => FileKind::Regular,
        tar::EntryType::Directory => FileKind::Directory,
        tar::EntryType::Symlink => FileKind::Symlink(link()?),
        tar::EntryType::Link => FileKind::Hardlink(normalize(&link()?)),
        _ => FileKind::Other,
    };
    Ok(DataEntry {
        path,
        kind,
        mode: header.mode()? & 0o7777,
        uid: header.uid()?,
        gid: header.gid()?,
        mtime: header.mtime()?,
        size: header.entry_size()?,
    })
}

/// Finds the ar member whose name starts with `prefix` and calls `read` with a decompressing
/// reader of it. Returns whether the member was found.
fn with_member(
    path: &Path,
    prefix: &str,
    read: impl FnOnce(&str, &mut dyn Read) -> Result<(), DebError>,
) -> Result<bool, DebError> {
    let file = fs_err::File::open(path).map_err(|source| DebError::Open {
        path: path.to_owned(),
        source,
    })?;
    let mut archive = ar::Archive::new(io::BufReader::new(file));
    while let Some(entry) = archive.next_entry() {
        let entry = entry.map_err(|source| DebError::Open {
            path: path.to_owned(),
            source,
        })?;
        let name = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        let mut reader: Box<dyn Read> = match &name[prefix.len()..] {
            "" => Box::new(entry),
            ".gz" => Box::new(flate2::read::GzDecoder::new(entry)),
            ".xz" => Box::new(liblzma::read::XzDecoder::new(entry)),
            ".zst" => Box::new(
                zstd::stream::read::Decoder::new(entry)
                    .map_err(|source| member_error(path, &name, source))?,
            ),
            _ => {
                return Err(DebError::UnsupportedCompression {
                    path: path.to_owned(),
                    member: name,
                });
            }
        };
        read(&name, &mut reader)?;
        return Ok(true);
    }
    Ok(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// Builds a .deb with the real `dpkg-deb` from a directory tree described by
    /// (path, content) pairs; `DEBIAN/` entries go to the control member.
    pub(crate) fn build_deb(
        dir: &Path,
        name: &str,
        files: &[(&str, &str)],
        compression: &str,
    ) -> PathBuf {
        let root = dir.join(format!("{name}-tree"));
        let _ = std::fs::remove_dir_all(&root);
        for (path, content) in files {
            let full = root.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            if let Some(target) = content.strip_prefix("->") {
                std::os::unix::fs::symlink(target, &full).unwrap();
            } else {
                std::fs::write(&full, content).unwrap();
            }
            if path.starts_with("DEBIAN/p") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let deb = dir.join(format!("{name}.deb"));
        let status = Command::new("dpkg-deb")
            .args(["--root-owner-group", &format!("-Z{compression}"), "--build"])
            .arg(&root)
            .arg(&deb)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("dpkg-deb runs");
        assert!(status.success(), "dpkg-deb --build failed");
        deb
    }

    const CONTROL: &str = "Package: demo\nVersion: 1.0\nArchitecture: all\nMaintainer: T <t@example.org>\nDepends: a(>=1)|b\nDescription: demo  \n second line  \n";

    #[test]
    fn debfile_reads_control_and_data() {
        let dir = tempfile::tempdir().unwrap();
        for compression in ["gzip", "xz", "zstd", "none"] {
            let deb = build_deb(
                dir.path(),
                &format!("demo-{compression}"),
                &[
                    ("DEBIAN/control", CONTROL),
                    ("DEBIAN/postinst", "#!/bin/sh\n"),
                    ("usr/bin/demo", "binary"),
                    ("usr/bin/demo-alias", "->demo"),
                ],
                compression,
            );
            let package = DebFile::open(&deb).unwrap();
            assert_eq!(package.name(), "demo");
            assert_eq!(package.version(), "1.0");
            assert_eq!(package.control().get("depends"), Some("a(>=1)|b"));
            assert_eq!(
                package.control().get("Description"),
                Some("demo  \n second line")
            );
            assert_eq!(package.control_raw(), CONTROL.as_bytes());
            let postinst = package.member("postinst").unwrap();
            assert_eq!(postinst.data, b"#!/bin/sh\n");
            assert_eq!(postinst.mode, 0o755);
            let paragraph = package.control_paragraph().unwrap();
            assert_eq!(paragraph.get("Package").as_deref(), Some("demo"));

            let mut seen = Vec::new();
            package
                .for_each_data_entry(|entry, reader| {
                    let mut content = String::new();
                    reader.read_to_string(&mut content).unwrap();
                    seen.push((entry.path.clone(), entry.kind.clone(), content));
                    Ok::<(), DebError>(())
                })
                .unwrap();
            assert_eq!(seen[0].0, "");
            assert!(seen.contains(&(
                "usr/bin/demo".to_owned(),
                FileKind::Regular,
                "binary".to_owned()
            )));
            assert!(seen.contains(&(
                "usr/bin/demo-alias".to_owned(),
                FileKind::Symlink("demo".to_owned()),
                String::new()
            )));
        }
    }

    #[test]
    fn debfile_error_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("bogus.deb");
        std::fs::write(&bogus, b"not an ar archive").unwrap();
        let message = DebFile::open(&bogus).unwrap_err().to_string();
        assert!(message.contains("bogus.deb"), "{message}");
    }
}
