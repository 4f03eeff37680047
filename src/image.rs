//! Image manifest and config editing.
//!
//! Both documents are edited as `serde_json::Value` with key order preserved, never
//! through typed models: typed models drop fields they do not know, and a patched image
//! must keep everything the source had. Output is compact JSON, so the same input always
//! gives the same bytes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The config label that records a layermend patch layer, so a later run can find it.
///
/// The value is a JSON-encoded [`PatchRecord`].
pub const PATCH_LABEL: &str = "dev.layermend.patch";

/// The manifest format family, which decides the media types of new layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFamily {
    /// OCI image spec manifests.
    Oci,
    /// Docker image manifest schema 2.
    Docker,
}

impl ImageFamily {
    /// Returns the family of an image manifest media type.
    pub fn from_manifest_media_type(media_type: &str) -> Result<Self, ImageError> {
        match media_type {
            OCI_MANIFEST => Ok(ImageFamily::Oci),
            DOCKER_MANIFEST => Ok(ImageFamily::Docker),
            other => Err(ImageError::UnsupportedMediaType {
                media_type: other.to_owned(),
            }),
        }
    }

    /// Returns the media type of a gzip-compressed tar layer.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            ImageFamily::Oci => OCI_LAYER_GZIP,
            ImageFamily::Docker => DOCKER_LAYER_GZIP,
        }
    }

    pub fn manifest_media_type(self) -> &'static str {
        match self {
            ImageFamily::Oci => OCI_MANIFEST,
            ImageFamily::Docker => DOCKER_MANIFEST,
        }
    }
}

/// A failed manifest or config edit.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image {document}: not JSON")]
    Json {
        document: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid image {document}: {reason}")]
    Invalid {
        document: &'static str,
        reason: String,
    },
    #[error(
        "unsupported manifest media type {media_type:?}: expected {OCI_MANIFEST} or {DOCKER_MANIFEST}"
    )]
    UnsupportedMediaType { media_type: String },
    #[error("invalid {PATCH_LABEL} label in the image config")]
    PatchRecord {
        #[source]
        source: serde_json::Error,
    },
}

/// The `history` entry that describes a new layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Creation time in RFC 3339 form.
    pub created: String,
    pub created_by: String,
    /// Left out of the entry when empty.
    pub comment: String,
}

/// Appends a layer's `diff_id` and history entry to an image config and sets labels.
///
/// Every other field is kept in its place. `config.Labels` is created when absent or null.
pub fn append_layer_to_config(
    config: &[u8],
    diff_id: &Digest,
    history: &HistoryEntry,
    labels: &[(String, String)],
) -> Result<Vec<u8>, ImageError> {
    const DOC: &str = "config";
    let mut root = parse_object(config, DOC)?;

    let rootfs = object_field(&mut root, "rootfs", DOC)?;
    let diff_ids = array_field(rootfs, "diff_ids", DOC)?;
    diff_ids.push(Value::String(diff_id.to_string()));

    if !labels.is_empty() {
        let container_config = object_field(&mut root, "config", DOC)?;
        let existing = object_field(container_config, "Labels", DOC)?;
        for (key, value) in labels {
            existing.insert(key.clone(), Value::String(value.clone()));
        }
    }

    let mut entry = Map::new();
    entry.insert("created".into(), Value::String(history.created.clone()));
    entry.insert(
        "created_by".into(),
        Value::String(history.created_by.clone()),
    );
    if !history.comment.is_empty() {
        entry.insert("comment".into(), Value::String(history.comment.clone()));
    }
    array_field(&mut root, "history", DOC)?.push(Value::Object(entry));

    Ok(to_bytes(&root))
}

/// Appends a layer descriptor to an image manifest and points it at the new config.
///
/// The layer media type follows the manifest's family (OCI when `mediaType` is absent).
/// `annotations` are merged into the manifest's own annotations for OCI manifests only,
/// because Docker schema 2 defines no annotations. Every other field keeps its place.
pub fn append_layer_to_manifest(
    manifest: &[u8],
    layer: (&Digest, u64),
    config: (&Digest, u64),
    annotations: &[(String, String)],
) -> Result<Vec<u8>, ImageError> {
    const DOC: &str = "manifest";
    let mut root = parse_object(manifest, DOC)?;
    let family = match root.get("mediaType").and_then(Value::as_str) {
        Some(media_type) => ImageFamily::from_manifest_media_type(media_type)?,
        None => ImageFamily::Oci,
    };

    let config_descriptor = object_field(&mut root, "config", DOC)?;
    config_descriptor.insert("digest".into(), Value::String(config.0.to_string()));
    config_descriptor.insert("size".into(), Value::from(config.1));

    let mut descriptor = Map::new();
    descriptor.insert(
        "mediaType".into(),
        Value::String(family.layer_media_type().into()),
    );
    descriptor.insert("digest".into(), Value::String(layer.0.to_string()));
    descriptor.insert("size".into(), Value::from(layer.1));
    array_field(&mut root, "layers", DOC)?.push(Value::Object(descriptor));

    if family == ImageFamily::Oci && !annotations.is_empty() {
        let existing = object_field(&mut root, "annotations", DOC)?;
        for (key, value) in annotations {
            existing.insert(key.clone(), Value::String(value.clone()));
        }
    }

    Ok(to_bytes(&root))
}

/// Removes the last layer from an image config: its `diff_id`, which must be `diff_id`,
/// the last history entry that is not `empty_layer`, and the `labels` given.
pub fn remove_top_layer_from_config(
    config: &[u8],
    diff_id: &Digest,
    labels: &[String],
) -> Result<Vec<u8>, ImageError> {
    const DOC: &str = "config";
    let mut root = parse_object(config, DOC)?;

    let rootfs = object_field(&mut root, "rootfs", DOC)?;
    let diff_ids = array_field(rootfs, "diff_ids", DOC)?;
    if diff_ids.last().and_then(Value::as_str) != Some(diff_id.as_str()) {
        return Err(ImageError::Invalid {
            document: DOC,
            reason: format!("the last diff_id is not {diff_id}"),
        });
    }
    diff_ids.pop();

    let history = array_field(&mut root, "history", DOC)?;
    let layer_entry = history.iter().rposition(|entry| {
        !entry
            .get("empty_layer")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    });
    if let Some(position) = layer_entry {
        history.remove(position);
    }

    if let Some(existing) = root
        .get_mut("config")
        .and_then(|c| c.get_mut("Labels"))
        .and_then(Value::as_object_mut)
    {
        for label in labels {
            existing.remove(label);
        }
    }
    Ok(to_bytes(&root))
}

/// Removes the last layer descriptor from an image manifest. The config descriptor is
/// left for [`append_layer_to_manifest`] to replace.
pub fn remove_top_layer_from_manifest(manifest: &[u8]) -> Result<Vec<u8>, ImageError> {
    const DOC: &str = "manifest";
    let mut root = parse_object(manifest, DOC)?;
    if array_field(&mut root, "layers", DOC)?.pop().is_none() {
        return Err(ImageError::Invalid {
            document: DOC,
            reason: "the manifest has no layers".into(),
        });
    }
    Ok(to_bytes(&root))
}

/// A record of one layermend patch, stored in the [`PATCH_LABEL`] config label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchRecord {
    /// The `diff_id` of the patch layer.
    #[serde(with = "digest_string")]
    pub diff_id: Digest,
    /// The packages the layer updated.
    #[serde(default)]
    pub packages: Vec<PatchedPackage>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchedPackage {
    pub name: String,
    pub from_version: String,
    pub to_version: String,
}

impl PatchRecord {
    /// Returns the label value: compact JSON.
    pub fn to_label_value(&self) -> String {
        serde_json::to_string(self).expect("a patch record always serializes")
    }
}

/// An earlier patch found in an image config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundPatch {
    pub record: PatchRecord,
    /// Position of the patch layer in `rootfs.diff_ids`, or `None` when the recorded layer
    /// is no longer there (for example when a later build squashed the layers).
    pub layer_index: Option<usize>,
}

/// Reads the [`PATCH_LABEL`] label of an image config.
pub fn read_patch_record(config: &[u8]) -> Result<Option<FoundPatch>, ImageError> {
    let root = parse_object(config, "config")?;
    let Some(value) = root
        .get("config")
        .and_then(|c| c.get("Labels"))
        .and_then(|labels| labels.get(PATCH_LABEL))
        .and_then(Value::as_str)
    else {
        return Ok(None);
    };
    let record: PatchRecord =
        serde_json::from_str(value).map_err(|source| ImageError::PatchRecord { source })?;
    let layer_index = root
        .get("rootfs")
        .and_then(|rootfs| rootfs.get("diff_ids"))
        .and_then(Value::as_array)
        .and_then(|ids| {
            ids.iter()
                .position(|id| id.as_str() == Some(record.diff_id.as_str()))
        });
    Ok(Some(FoundPatch {
        record,
        layer_index,
    }))
}

/// Serde adapter for [`Digest`], which has no serde implementation of its own.
mod digest_string {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::digest::Digest;

    pub fn serialize<S: Serializer>(digest: &Digest, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(digest.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn parse_object(bytes: &[u8], document: &'static str) -> Result<Map<String, Value>, ImageError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ImageError::Invalid {
            document,
            reason: "the top level is not a JSON object".into(),
        }),
        Err(source) => Err(ImageError::Json { document, source }),
    }
}

/// Returns the object under `key`, creating it when absent or null.
fn object_field<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
    document: &'static str,
) -> Result<&'a mut Map<String, Value>, ImageError> {
    let slot = map.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().ok_or_else(|| ImageError::Invalid {
        document,
        reason: format!("field {key:?} is not an object"),
    })
}

/// Returns the array under `key`, creating it when absent or null.
fn array_field<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
    document: &'static str,
) -> Result<&'a mut Vec<Value>, ImageError> {
    let slot = map.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().ok_or_else(|| ImageError::Invalid {
        document,
        reason: format!("field {key:?} is not an array"),
    })
}

fn to_bytes(root: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(root).expect("a JSON map always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: char) -> Digest {
        format!("sha256:{}", byte.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn history() -> HistoryEntry {
        HistoryEntry {
            created: "2024-01-02T03:04:05Z".into(),
            created_by: "layermend".into(),
            comment: "patched 2 packages".into(),
        }
    }

    const CONFIG: &str = r#"{
        "zz_unknown": {"keep": [1, 2]},
        "architecture": "amd64",
        "config": {"Env": ["PATH=/bin"], "Labels": {"a": "1"}, "X-Custom": true},
        "created": "2023-01-01T00:00:00Z",
        "history": [{"created": "2023-01-01T00:00:00Z", "created_by": "base"}],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:1111111111111111111111111111111111111111111111111111111111111111"]}
    }"#;

    #[test]
    fn config_append_keeps_fields() {
        let labels = vec![("b".to_owned(), "2".to_owned())];
        let out =
            append_layer_to_config(CONFIG.as_bytes(), &digest('2'), &history(), &labels).unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();

        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "zz_unknown",
                "architecture",
                "config",
                "created",
                "history",
                "os",
                "rootfs"
            ]
        );
        assert_eq!(value["zz_unknown"]["keep"], serde_json::json!([1, 2]));
        assert_eq!(value["config"]["X-Custom"], true);
        assert_eq!(value["config"]["Labels"]["a"], "1");
        assert_eq!(value["config"]["Labels"]["b"], "2");
        assert_eq!(value["created"], "2023-01-01T00:00:00Z");
        assert_eq!(value["rootfs"]["diff_ids"][1], digest('2').as_str());
        assert_eq!(value["history"][1]["created_by"], "layermend");
        assert_eq!(value["history"][1]["comment"], "patched 2 packages");

        let again =
            append_layer_to_config(CONFIG.as_bytes(), &digest('2'), &history(), &labels).unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn config_append_creates_labels() {
        let bare = r#"{"config": null, "rootfs": {"type": "layers", "diff_ids": []}}"#;
        let labels = vec![("k".to_owned(), "v".to_owned())];
        let out =
            append_layer_to_config(bare.as_bytes(), &digest('3'), &history(), &labels).unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["config"]["Labels"]["k"], "v");
        assert_eq!(value["history"].as_array().unwrap().len(), 1);

        let no_rootfs_array = r#"{"rootfs": {"diff_ids": "x"}}"#;
        let err = append_layer_to_config(no_rootfs_array.as_bytes(), &digest('3'), &history(), &[])
            .unwrap_err();
        assert!(err.to_string().contains("diff_ids"), "{err}");
    }

    #[test]
    fn manifest_append_oci() {
        let manifest = format!(
            r#"{{"schemaVersion": 2, "mediaType": "{OCI_MANIFEST}",
               "config": {{"mediaType": "{OCI_CONFIG}", "digest": "{}", "size": 10}},
               "layers": [{{"mediaType": "{OCI_LAYER_GZIP}", "digest": "{}", "size": 5, "annotations": {{"x": "y"}}}}],
               "annotations": {{"org.opencontainers.image.base.name": "debian"}},
               "subject_unknown": 7}}"#,
            digest('a'),
            digest('b')
        );
        let annotations = vec![("dev.layermend.patched".to_owned(), "true".to_owned())];
        let out = append_layer_to_manifest(
            manifest.as_bytes(),
            (&digest('c'), 42),
            (&digest('d'), 11),
            &annotations,
        )
        .unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();

        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "schemaVersion",
                "mediaType",
                "config",
                "layers",
                "annotations",
                "subject_unknown"
            ]
        );
        assert_eq!(value["config"]["mediaType"], OCI_CONFIG);
        assert_eq!(value["config"]["digest"], digest('d').as_str());
        assert_eq!(value["config"]["size"], 11);
        assert_eq!(value["layers"][0]["annotations"]["x"], "y");
        assert_eq!(value["layers"][1]["mediaType"], OCI_LAYER_GZIP);
        assert_eq!(value["layers"][1]["digest"], digest('c').as_str());
        assert_eq!(value["layers"][1]["size"], 42);
        assert_eq!(
            value["annotations"]["org.opencontainers.image.base.name"],
            "debian"
        );
        assert_eq!(value["annotations"]["dev.layermend.patched"], "true");
        assert_eq!(value["subject_unknown"], 7);
    }

    #[test]
    fn manifest_append_docker() {
        let manifest = format!(
            r#"{{"schemaVersion": 2, "mediaType": "{DOCKER_MANIFEST}",
               "config": {{"mediaType": "{DOCKER_CONFIG}", "size": 10, "digest": "{}"}},
               "layers": [{{"mediaType": "{DOCKER_LAYER_GZIP}", "size": 5, "digest": "{}"}}]}}"#,
            digest('a'),
            digest('b')
        );
        let annotations = vec![("k".to_owned(), "v".to_owned())];
        let out = append_layer_to_manifest(
            manifest.as_bytes(),
            (&digest('c'), 42),
            (&digest('d'), 11),
            &annotations,
        )
        .unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["layers"][1]["mediaType"], DOCKER_LAYER_GZIP);
        assert_eq!(value["config"]["mediaType"], DOCKER_CONFIG);
        assert_eq!(value["config"]["digest"], digest('d').as_str());
        assert!(value.get("annotations").is_none());
    }

    #[test]
    fn manifest_rejects_index() {
        let index =
            format!(r#"{{"schemaVersion": 2, "mediaType": "{OCI_INDEX}", "manifests": []}}"#);
        let err =
            append_layer_to_manifest(index.as_bytes(), (&digest('c'), 1), (&digest('d'), 1), &[])
                .unwrap_err();
        assert!(
            matches!(err, ImageError::UnsupportedMediaType { .. }),
            "{err}"
        );
    }

    #[test]
    fn patch_record_round_trip() {
        let record = PatchRecord {
            diff_id: digest('2'),
            packages: vec![PatchedPackage {
                name: "zlib1g".into(),
                from_version: "1:1.2.13.dfsg-1".into(),
                to_version: "1:1.2.13.dfsg-1+deb12u1".into(),
            }],
        };
        let labels = vec![(PATCH_LABEL.to_owned(), record.to_label_value())];
        let config =
            append_layer_to_config(CONFIG.as_bytes(), &digest('2'), &history(), &labels).unwrap();
        let found = read_patch_record(&config).unwrap().unwrap();
        assert_eq!(found.record, record);
        assert_eq!(found.layer_index, Some(1));

        assert!(read_patch_record(CONFIG.as_bytes()).unwrap().is_none());

        let broken = vec![(PATCH_LABEL.to_owned(), "{".to_owned())];
        let config =
            append_layer_to_config(CONFIG.as_bytes(), &digest('2'), &history(), &broken).unwrap();
        assert!(read_patch_record(&config).is_err());
    }

    #[test]
    fn top_layer_removal_undoes_append() {
        let labels = vec![(PATCH_LABEL.to_owned(), "{}".to_owned())];
        let config =
            append_layer_to_config(CONFIG.as_bytes(), &digest('2'), &history(), &labels).unwrap();
        let removed =
            remove_top_layer_from_config(&config, &digest('2'), &[PATCH_LABEL.into()]).unwrap();
        let original: Value = serde_json::from_str(CONFIG).unwrap();
        let value: Value = serde_json::from_slice(&removed).unwrap();
        assert_eq!(value, original);

        let wrong = remove_top_layer_from_config(&config, &digest('3'), &[]);
        assert!(matches!(wrong, Err(ImageError::Invalid { .. })));

        let manifest = format!(
            r#"{{"schemaVersion": 2, "mediaType": "{OCI_MANIFEST}",
               "config": {{"mediaType": "{OCI_CONFIG}", "digest": "{}", "size": 10}},
               "layers": [{{"mediaType": "{OCI_LAYER_GZIP}", "digest": "{}", "size": 5}}]}}"#,
            digest('a'),
            digest('b')
        );
        let appended = append_layer_to_manifest(
            manifest.as_bytes(),
            (&digest('c'), 1),
            (&digest('d'), 1),
            &[],
        )
        .unwrap();
        let removed = remove_top_layer_from_manifest(&appended).unwrap();
        let value: Value = serde_json::from_slice(&removed).unwrap();
        assert_eq!(value["layers"].as_array().unwrap().len(), 1);
        assert_eq!(value["layers"][0]["digest"], digest('b').as_str());
    }
}
