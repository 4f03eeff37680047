//! Registry client against the real `docker-registry` (distribution 2.8) on loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use layermend::digest::Digest;
use layermend::image::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST};
use layermend::reference::Reference;
use layermend::registry::auth::AuthEnv;
use layermend::registry::{
    BlobCopy, BlobPush, Platform, RegistryClient, RegistryError, RegistryOptions,
};
use tokio::io::AsyncReadExt;

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// A `docker-registry` process with its own storage, killed by PID on drop.
struct TestRegistry {
    child: Child,
    host: String,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    fn start(htpasswd: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = htpasswd {
            let output = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd from apache2-utils is installed");
            assert!(output.status.success());
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, output.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();

        let child = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is installed");
        let registry = TestRegistry { child, host, dir };
        registry.wait_ready();
        registry
    }

    /// Polls `GET /v2/` until the registry answers 200, or 401 with authentication.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut stream) = TcpStream::connect(&self.host) {
                let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host);
                let mut response = String::new();
                if stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_to_string(&mut response).is_ok()
                    && (response.starts_with("HTTP/1.0 200")
                        || response.starts_with("HTTP/1.0 401"))
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("docker-registry on {} did not become ready", self.host);
    }

    fn reference(&self, name: &str) -> Reference {
        Reference::parse(&format!("{}/{name}", self.host)).unwrap()
    }

    /// Returns the stored data file of a blob in the registry's filesystem storage.
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn anonymous_client() -> RegistryClient {
    RegistryClient::new(RegistryOptions::default()).unwrap()
}

/// Writes `bytes` to a file in `dir` and returns its path, digest and size.
fn blob_file(dir: &Path, name: &str, bytes: &[u8]) -> (PathBuf, Digest, u64) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    (path, Digest::of(bytes), bytes.len() as u64)
}

fn layer_bytes() -> Vec<u8> {
    (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect()
}

/// Pushes a one-layer OCI image and returns its manifest bytes and layer digest and size.
async fn push_image(
    client: &RegistryClient,
    target: &Reference,
    work: &Path,
) -> (Vec<u8>, Digest, u64) {
    let layer = layer_bytes();
    let (layer_path, layer_digest, layer_size) = blob_file(work, "layer", &layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}},"config":{{}}}}"#
    );
    let (config_path, config_digest, config_size) = blob_file(work, "config", config.as_bytes());

    let pushed = client
        .push_blob_file(target, &layer_path, &layer_digest, layer_size)
        .await
        .unwrap();
    assert_eq!(pushed, BlobPush::Uploaded);
    let again = client
        .push_blob_file(target, &layer_path, &layer_digest, layer_size)
        .await
        .unwrap();
    assert_eq!(again, BlobPush::AlreadyPresent);
    client
        .push_blob_file(target, &config_path, &config_digest, config_size)
        .await
        .unwrap();

    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{layer_digest}","size":{layer_size}}}],"annotations":{{"x":"y"}}}}"#
    );
    let digest = client
        .push_manifest(target, manifest.as_bytes(), OCI_MANIFEST)
        .await
        .unwrap();
    assert_eq!(digest, Digest::of(manifest.as_bytes()));
    (manifest.into_bytes(), layer_digest, layer_size)
}

#[tokio::test]
async fn push_resolve_and_read_blobs() {
    let registry = TestRegistry::start(None);
    let work = tempfile::tempdir().unwrap();
    let client = anonymous_client();
    let target = registry.reference("team/app:v1");

    let (manifest, layer_digest, layer_size) = push_image(&client, &target, work.path()).await;

    let resolved = client.resolve_image(&target, None).await.unwrap();
    assert_eq!(resolved.manifest.bytes.as_ref(), manifest.as_slice());
    assert_eq!(resolved.manifest.media_type, OCI_MANIFEST);
    assert!(resolved.index.is_none());
    assert_eq!(resolved.layers.len(), 1);
    assert_eq!(resolved.layers[0].digest, layer_digest);
    assert_eq!(resolved.layers[0].size, layer_size);
    assert_eq!(Digest::of(&resolved.config_bytes), resolved.config.digest);

    let mut reader = client
        .open_blob(&target, &layer_digest, layer_size)
        .await
        .unwrap();
    let mut read = Vec::new();
    reader.read_to_end(&mut read).await.unwrap();
    assert_eq!(read, layer_bytes());

    // A size below the real one fails before the transfer, one above fails at the end.
    let short = client
        .open_blob(&target, &layer_digest, layer_size - 1)
        .await;
    assert!(matches!(short, Err(RegistryError::SizeExceeded { .. })));
    let long = client
        .read_blob(&target, &layer_digest, layer_size + 1)
        .await;
    assert!(
        matches!(long, Err(RegistryError::Truncated { .. })),
        "{long:?}"
    );

    // Corrupt the stored bytes: the registry serves them under the old digest.
    let stored = registry.blob_path(&layer_digest);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let error = client
        .read_blob(&target, &layer_digest, layer_size)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::DigestMismatch { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(layer_digest.as_str()), "{error}");

    let missing = client
        .fetch_manifest(&registry.reference("team/app:nope"))
        .await;
    let error = missing.unwrap_err();
    assert!(matches!(error, RegistryError::NotFound { .. }), "{error:?}");
    assert!(error.to_string().contains("team/app"), "{error}");
}

#[tokio::test]
async fn resolve_index_by_platform() {
    let registry = TestRegistry::start(None);
    let work = tempfile::tempdir().unwrap();
    let client = anonymous_client();
    let single = registry.reference("multi:single");
    let (manifest, _, _) = push_image(&client, &single, work.path()).await;
    let manifest_digest = Digest::of(&manifest);
    let size = manifest.len();

    let host = Platform::host();
    let variant = host
        .variant
        .as_ref()
        .map(|v| format!(r#","variant":"{v}""#))
        .unwrap_or_default();
    // The attestation entry comes first and must be skipped even though it names the host.
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
        {{"mediaType":"{OCI_MANIFEST}","digest":"{manifest_digest}","size":{size},"platform":{{"os":"unknown","architecture":"unknown"}},"annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}},
        {{"mediaType":"{OCI_MANIFEST}","digest":"{manifest_digest}","size":{size},"platform":{{"os":"linux","architecture":"{arch}"{variant}}}}}]}}"#,
        arch = host.architecture
    );
    let index_ref = registry.reference("multi:latest");
    let index_digest = client
        .push_manifest(&index_ref, index.as_bytes(), OCI_INDEX)
        .await
        .unwrap();

    let resolved = client.resolve_image(&index_ref, None).await.unwrap();
    assert_eq!(resolved.manifest.digest, manifest_digest);
    assert_eq!(resolved.index.as_ref().unwrap().digest, index_digest);
    assert_eq!(
        resolved.platform.as_ref().unwrap().architecture,
        host.architecture
    );

    let pinned = index_ref.with_digest(index_digest);
    assert!(client.resolve_image(&pinned, None).await.is_ok());

    let windows: Platform = "windows/amd64".parse().unwrap();
    let error = client
        .resolve_image(&index_ref, Some(&windows))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::NoMatchingPlatform { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("windows/amd64"), "{message}");
    assert!(
        message.contains(&format!("linux/{}", host.architecture)),
        "{message}"
    );
    assert!(!message.contains("unknown"), "{message}");
}

#[tokio::test]
async fn copy_blob_mounts_and_streams() {
    let registry = TestRegistry::start(None);
    let other = TestRegistry::start(None);
    let work = tempfile::tempdir().unwrap();
    let client = anonymous_client();
    let source = registry.reference("src/app:v1");
    let (_, layer_digest, layer_size) = push_image(&client, &source, work.path()).await;

    let same_registry = registry.reference("dst/app:v1");
    let mounted = client
        .copy_blob(&source, &same_registry, &layer_digest, layer_size)
        .await
        .unwrap();
    assert_eq!(mounted, BlobCopy::Mounted);
    assert!(
        client
            .blob_exists(&same_registry, &layer_digest)
            .await
            .unwrap()
    );
    let again = client
        .copy_blob(&source, &same_registry, &layer_digest, layer_size)
        .await
        .unwrap();
    assert_eq!(again, BlobCopy::AlreadyPresent);

    let elsewhere = other.reference("copy/app:v1");
    let streamed = client
        .copy_blob(&source, &elsewhere, &layer_digest, layer_size)
        .await
        .unwrap();
    assert_eq!(streamed, BlobCopy::Streamed);
    let copied = client
        .read_blob(&elsewhere, &layer_digest, layer_size)
        .await
        .unwrap();
    assert_eq!(copied, layer_bytes());

    // A wrong size fails the streamed copy with the download's error.
    let wrong_size = other.reference("short/app:v1");
    let error = client
        .copy_blob(&source, &wrong_size, &layer_digest, layer_size + 10)
        .await;
    assert!(
        matches!(error, Err(RegistryError::Truncated { .. })),
        "{error:?}"
    );
    let error = client
        .copy_blob(&source, &wrong_size, &layer_digest, layer_size - 10)
        .await;
    assert!(
        matches!(error, Err(RegistryError::SizeExceeded { .. })),
        "{error:?}"
    );

    // A corrupted source fails the copy, and the target never gets the blob.
    let stored = registry.blob_path(&layer_digest);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let corrupt_target = other.reference("corrupt/app:v1");
    let error = client
        .copy_blob(&source, &corrupt_target, &layer_digest, layer_size)
        .await;
    assert!(
        matches!(error, Err(RegistryError::DigestMismatch { .. })),
        "{error:?}"
    );
    assert!(
        !client
            .blob_exists(&corrupt_target, &layer_digest)
            .await
            .unwrap()
    );
}

fn client_with_auth_file(dir: &Path, registry: &str, user: &str, password: &str) -> RegistryClient {
    let file = dir.join(format!("{user}-{password}.json"));
    let auth =
        format!(r#"{{"auths":{{"{registry}":{{"username":"{user}","password":"{password}"}}}}}}"#);
    std::fs::write(&file, auth).unwrap();
    RegistryClient::new(RegistryOptions {
        auth_env: AuthEnv {
            registry_auth_file: Some(file),
            ..AuthEnv::default()
        },
        ..RegistryOptions::default()
    })
    .unwrap()
}

#[tokio::test]
async fn htpasswd_credentials() {
    let registry = TestRegistry::start(Some(("alice", "s3cret")));
    let work = tempfile::tempdir().unwrap();
    let target = registry.reference("private/app:v1");

    let client = client_with_auth_file(work.path(), &registry.host, "alice", "s3cret");
    let (manifest, _, _) = push_image(&client, &target, work.path()).await;
    let resolved = client.resolve_image(&target, None).await.unwrap();
    assert_eq!(resolved.manifest.bytes.as_ref(), manifest.as_slice());

    let wrong = client_with_auth_file(work.path(), &registry.host, "alice", "wrong");
    let error = wrong.fetch_manifest(&target).await.unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&registry.host), "{message}");
    assert!(!message.contains("wrong"), "{message}");

    let anonymous = anonymous_client();
    let error = anonymous
        .blob_exists(&target, &Digest::of(b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::CredentialsRequired { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("none were found"), "{message}");
    assert!(message.contains("docker login"), "{message}");
}
