//! `docker save` archives: the classic form (`manifest.json` beside the config and
//! uncompressed layer tars) and the OCI-layout form docker 25 and later write (an OCI
//! layout plus `manifest.json`). Both are read by unpacking into a temporary OCI layout;
//! archives are written in the OCI-layout form.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::layout::{self, Finish, IMAGE_NAME, Layout, REF_NAME};
use super::{TransportError, io_error};
use crate::digest::{Digest, HashingWriter};
use crate::image::{DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_MANIFEST};
use crate::reference::Reference;

/// One image of a classic archive's `manifest.json`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveImage {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Opens an archive for reading, unpacked into a temporary layout.
pub(super) fn open(file: &Path, reference: Option<String>) -> Result<Layout, TransportError> {
    let temp = tempfile::Builder::new()
        .prefix("layermend-archive-")
        .tempdir()
        .map_err(io_error(std::env::temp_dir()))?;
    import(file, temp.path())?;
    Layout::from_temp(temp, file, reference, Finish::ReadOnly)
}

/// Opens an archive for writing: a staging layout beside `file`, holding the images of
/// the existing archive, packed and renamed onto `file` at commit.
pub(super) fn create(file: &Path, reference: Option<String>) -> Result<Layout, TransportError> {
    let temp = layout::staging_dir(file)?;
    if file.exists() {
        import(file, temp.path())?;
    }
    layout::init_layout(temp.path())?;
    Layout::from_temp(temp, file, reference, Finish::Archive(file.to_owned()))
}

/// The `index.json` annotations that name an image written into an archive.
pub(super) fn entry_annotations(reference: &str) -> Map<String, Value> {
    let mut annotations = Map::new();
    let parsed = Reference::parse(reference).ok();
    let full = parsed
        .as_ref()
        .map_or_else(|| reference.to_owned(), ToString::to_string);
    annotations.insert(IMAGE_NAME.to_owned(), Value::String(full));
    if let Some(tag) = parsed.and_then(|parsed| parsed.tag) {
        annotations.insert(REF_NAME.to_owned(), Value::String(tag));
    }
    annotations
}

/// Unpacks `file` into `dir` and turns a classic archive into an OCI layout there.
fn import(file: &Path, dir: &Path) -> Result<(), TransportError> {
    let invalid = |reason: String| TransportError::InvalidArchive {
        path: file.to_owned(),
        reason,
    };
    let reader = fs_err::File::open(file).map_err(io_error(file))?;
    // `unpack` refuses entries that would land outside `dir`.
    tar::Archive::new(reader)
        .unpack(dir)
        .map_err(|error| invalid(format!("failed to unpack: {error}")))?;
    if dir.join("index.json").is_file() {
        if !dir.join("oci-layout").is_file() {
            layout::init_layout(dir)?;
        }
        tracing::debug!(archive = %file.display(), "read OCI-layout form of docker archive");
        return Ok(());
    }
    let manifest_path = dir.join("manifest.json");
    let text = fs_err::read(&manifest_path)
        .map_err(|_| invalid("it has neither index.json nor manifest.json".to_owned()))?;
    let images: Vec<ArchiveImage> =
        serde_json::from_slice(&text).map_err(|source| TransportError::Json {
            path: file.join("manifest.json"),
            source,
        })?;
    layout::init_layout(dir)?;
    let mut moved: HashMap<String, (Digest, u64, &'static str)> = HashMap::new();
    let mut entries = Vec::new();
    for image in &images {
        let config = move_blob(dir, &image.config, &mut moved, file)?;
        let mut layers = Vec::new();
        for layer in &image.layers {
            let (digest, size, media_type) = move_blob(dir, layer, &mut moved, file)?;
            layers.push(serde_json::json!({"mediaType": media_type, "size": size, "digest": digest.to_string()}));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": config.1, "digest": config.0.to_string()},
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).expect("JSON values serialize");
        let digest = Digest::of(&bytes);
        let path = dir.join("blobs/sha256").join(digest.hex());
        fs_err::write(&path, &bytes).map_err(io_error(&path))?;
        let names = if image.repo_tags.is_empty() {
            vec![None]
        } else {
            image.repo_tags.iter().map(Some).collect()
        };
        for name in names {
            let mut entry = serde_json::json!({
                "mediaType": DOCKER_MANIFEST,
                "digest": digest.to_string(),
                "size": bytes.len(),
            });
            if let Some(name) = name {
                entry["annotations"] = Value::Object(entry_annotations(name));
            }
            entries.push(entry);
        }
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": entries});
    layout::write_atomic(&dir.join("index.json"), index.to_string().as_bytes())?;
    // Leave only the layout, so a rewritten archive carries nothing stale.
    for entry in fs_err::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        if ["oci-layout", "index.json", "blobs"].contains(&name.to_string_lossy().as_ref()) {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() {
            fs_err::remove_dir_all(&path)
        } else {
            fs_err::remove_file(&path)
        };
        removed.map_err(io_error(&path))?;
    }
    tracing::debug!(archive = %file.display(), images = images.len(), "converted classic docker archive");
    Ok(())
}

/// Moves a file of a classic archive into `blobs/sha256`, returning its digest, size and
/// layer media type (from its first bytes: docker writes plain tars, but accepts gzip).
fn move_blob(
    dir: &Path,
    name: &str,
    moved: &mut HashMap<String, (Digest, u64, &'static str)>,
    file: &Path,
) -> Result<(Digest, u64, &'static str), TransportError> {
    if let Some(known) = moved.get(name) {
        return Ok(known.clone());
    }
    let path = dir.join(name);
    if !path.starts_with(dir) || name.contains("..") {
        return Err(TransportError::InvalidArchive {
            path: file.to_owned(),
            reason: format!("manifest.json names {name:?}, outside the archive"),
        });
    }
    let mut reader =
        fs_err::File::open(&path).map_err(|source| TransportError::InvalidArchive {
            path: file.to_owned(),
            reason: format!("manifest.json names {name:?}, which cannot be read: {source}"),
        })?;
    let mut magic = [0u8; 4];
    let mut writer = HashingWriter::new(std::io::sink());
    let mut buffer = vec![0u8; 1 << 16];
    let mut first = true;
    loop {
        let count = reader.read(&mut buffer).map_err(io_error(&path))?;
        if count == 0 {
            break;
        }
        if first {
            let take = count.min(4);
            magic[..take].copy_from_slice(&buffer[..take]);
            first = false;
        }
        std::io::Write::write_all(&mut writer, &buffer[..count]).map_err(io_error(&path))?;
    }
    let (_, digest, size) = writer.finish();
    let media_type = match magic {
        [0x1f, 0x8b, ..] => DOCKER_LAYER_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.docker.image.rootfs.diff.tar.zstd",
        _ => "application/vnd.docker.image.rootfs.diff.tar",
    };
    let target = dir.join("blobs/sha256").join(digest.hex());
    if !target.exists() {
        fs_err::rename(&path, &target).map_err(io_error(&target))?;
    }
    let result = (digest, size, media_type);
    moved.insert(name.to_owned(), result.clone());
    Ok(result)
}

/// Packs a layout as a docker archive: the layout plus a `manifest.json` listing every
/// image manifest, written to a temporary file beside `file` and renamed onto it.
pub(super) fn write_archive(
    root: &Path,
    entries: &[Value],
    file: &Path,
) -> Result<(), TransportError> {
    let mut images = Vec::new();
    for entry in entries {
        let media_type = entry
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or(OCI_MANIFEST);
        if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
            // NOTE: manifest.json cannot describe an index, so a multi-platform image in
            // an archive is listed in index.json only; `docker load` before 25 skips it.
            continue;
        }
        let Some(digest) = entry.get("digest").and_then(Value::as_str) else {
            continue;
        };
        let blob = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        let path = root.join(blob(digest));
        let manifest: Value = serde_json::from_slice(
            &fs_err::read(&path).map_err(io_error(&path))?,
        )
        .map_err(|source| TransportError::Json {
            path: path.clone(),
            source,
        })?;
        let config = manifest
            .pointer("/config/digest")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let layers = manifest
            .get("layers")
            .and_then(Value::as_array)
            .map(|layers| {
                layers
                    .iter()
                    .filter_map(|layer| layer.get("digest").and_then(Value::as_str))
                    .map(blob)
                    .collect()
            })
            .unwrap_or_default();
        images.push(ArchiveImage {
            config: blob(config),
            repo_tags: layout::annotation(entry, IMAGE_NAME).into_iter().collect(),
            layers,
        });
    }
    let manifest_json = serde_json::to_vec(&images).expect("JSON values serialize");
    layout::write_atomic(&root.join("manifest.json"), &manifest_json)?;

    let parent = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let temp = tempfile::NamedTempFile::new_in(&parent).map_err(io_error(&parent))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(temp.as_file()));
    builder.mode(tar::HeaderMode::Deterministic);
    let tar_error = |source| TransportError::Io {
        path: file.to_owned(),
        source,
    };
    for name in ["oci-layout", "index.json", "manifest.json"] {
        builder
            .append_path_with_name(root.join(name), name)
            .map_err(tar_error)?;
    }
    builder
        .append_dir("blobs", root.join("blobs"))
        .map_err(tar_error)?;
    builder
        .append_dir("blobs/sha256", root.join("blobs/sha256"))
        .map_err(tar_error)?;
    let blobs_dir = root.join("blobs/sha256");
    let mut blobs: Vec<PathBuf> = fs_err::read_dir(&blobs_dir)
        .map_err(io_error(&blobs_dir))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    blobs.sort();
    for path in blobs {
        let name = format!(
            "blobs/sha256/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        builder
            .append_path_with_name(&path, name)
            .map_err(tar_error)?;
    }
    let writer = builder.into_inner().map_err(tar_error)?;
    writer
        .into_inner()
        .map_err(|error| tar_error(error.into_error()))?;
    temp.as_file().sync_all().map_err(tar_error)?;
    temp.persist(file).map_err(|error| TransportError::Io {
        path: file.to_owned(),
        source: error.error,
    })?;
    tracing::debug!(archive = %file.display(), images = images.len(), "wrote docker archive");
    Ok(())
}
