//! Conversion of Docker schema 2 media types to their OCI image-spec equivalents.

use serde_json::Value;

use crate::image::{
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX,
    OCI_LAYER_GZIP, OCI_MANIFEST,
};

/// Docker media types and the OCI ones that replace them, after the table in the OCI
/// image spec's "Docker Image Manifest Version 2, Schema 2" compatibility notes.
const MEDIA_TYPE_MAP: [(&str, &str); 7] = [
    (DOCKER_MANIFEST, OCI_MANIFEST),
    (DOCKER_MANIFEST_LIST, OCI_INDEX),
    (DOCKER_CONFIG, OCI_CONFIG),
    (DOCKER_LAYER_GZIP, OCI_LAYER_GZIP),
    (
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.oci.image.layer.v1.tar",
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        "application/vnd.oci.image.layer.v1.tar+zstd",
    ),
    (
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    ),
];

fn oci_media_type(docker: &str) -> Option<&'static str> {
    MEDIA_TYPE_MAP
        .iter()
        .find(|(from, _)| *from == docker)
        .map(|(_, to)| *to)
}

/// Rewrites a Docker manifest or manifest list to OCI media types: the document's own
/// `mediaType`, its config's and each layer's. Entries of a manifest list keep their
/// media type, because the caller converts each child and sets the entry from the result.
///
/// Returns `None` when nothing is Docker-typed, so OCI documents keep their exact bytes.
/// The config blob needs no change: an OCI config is a superset of Docker's.
pub fn to_oci_media_types(manifest: &[u8]) -> Option<(Vec<u8>, &'static str)> {
    let mut root: Value = serde_json::from_slice(manifest).ok()?;
    let document_type = root.get("mediaType")?.as_str()?;
    let new_type = oci_media_type(document_type)?;
    root["mediaType"] = Value::String(new_type.to_owned());
    let mut rewrite = |descriptor: &mut Value| {
        let converted = descriptor
            .get("mediaType")
            .and_then(Value::as_str)
            .and_then(oci_media_type);
        if let Some(converted) = converted {
            descriptor["mediaType"] = Value::String(converted.to_owned());
        }
    };
    if let Some(config) = root.get_mut("config") {
        rewrite(config);
    }
    if let Some(layers) = root.get_mut("layers").and_then(Value::as_array_mut) {
        layers.iter_mut().for_each(&mut rewrite);
    }
    let bytes = serde_json::to_vec(&root).ok()?;
    Some((bytes, new_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_manifest_becomes_oci() {
        let docker = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": "sha256:a", "size": 1},
            "layers": [{"mediaType": DOCKER_LAYER_GZIP, "digest": "sha256:b", "size": 2}]
        });
        let (bytes, media_type) = to_oci_media_types(docker.to_string().as_bytes()).unwrap();
        assert_eq!(media_type, OCI_MANIFEST);
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["mediaType"], OCI_MANIFEST);
        assert_eq!(value["config"]["mediaType"], OCI_CONFIG);
        assert_eq!(value["layers"][0]["mediaType"], OCI_LAYER_GZIP);
        assert_eq!(value["layers"][0]["digest"], "sha256:b");
    }

    #[test]
    fn oci_manifest_is_left_alone() {
        let oci = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST});
        assert!(to_oci_media_types(oci.to_string().as_bytes()).is_none());
    }
}
