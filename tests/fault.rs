//! Fault tolerance against the real `docker-registry` behind a proxy that injects faults:
//! error statuses, 429 with `Retry-After`, connections closed in the middle of a blob,
//! and uploads that always fail.

mod common;

use std::path::Path;
use std::time::Duration;

use layermend::digest::Digest;
use layermend::reference::Reference;
use layermend::registry::{BlobPush, RegistryClient, RegistryError, RegistryOptions, RetryPolicy};
use tokio::io::AsyncReadExt;

use common::fault_proxy::{FaultProxy, Rule, When};
use common::{
    BookwormFixture, ManifestFormat, Registry, bookworm_fixture, layermend, push_layout,
    security_fixture,
};

const REPOSITORY: &str = "debian";
const SOURCE_TAG: &str = "bookworm";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Retries fast enough for tests: five tries a few milliseconds apart.
fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_elapsed: Duration::from_secs(10),
    }
}

fn client() -> RegistryClient {
    RegistryClient::new(RegistryOptions {
        retry: fast_retries(),
        ..RegistryOptions::default()
    })
    .unwrap()
}

fn reference(host: &str, name: &str) -> Reference {
    Reference::parse(&format!("{host}/{name}")).unwrap()
}

/// Bytes that do not repeat in short periods, so a misplaced resume changes the digest.
fn blob_bytes(size: usize) -> Vec<u8> {
    (0..size as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Pushes `bytes` as a blob of `repository` straight to the registry.
async fn push_blob(registry: &Registry, repository: &str, bytes: &[u8]) -> Digest {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    fs_err::write(&path, bytes).unwrap();
    let digest = Digest::of(bytes);
    let target = reference(&registry.host(), &format!("{repository}:x"));
    client()
        .push_blob_file(&target, &path, &digest, bytes.len() as u64)
        .await
        .unwrap();
    digest
}

/// Reads a blob through `proxy` and checks that every byte arrived.
async fn read_through(proxy: &FaultProxy, digest: &Digest, expected: &[u8]) {
    let source = reference(&proxy.host(), "blobs:x");
    let mut reader = client()
        .open_blob(&source, digest, expected.len() as u64)
        .await
        .unwrap();
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.unwrap();
    assert_eq!(bytes.len(), expected.len(), "length of the blob read");
    assert!(bytes == expected, "content of the blob read");
}

fn blob_gets(proxy: &FaultProxy, digest: &Digest) -> usize {
    let path = format!("/blobs/{digest}");
    proxy
        .requests()
        .iter()
        .filter(|request| request.starts_with("GET ") && request.contains(&path))
        .count()
}

/// Reads a 3 MiB blob through a proxy that cuts the first GET after 1 MiB, and checks
/// that one more GET completed it. `honour_range` selects whether the proxy passes Range
/// headers on, so the second GET resumes, or drops them, so it restarts.
async fn read_after_one_cut(honour_range: bool) {
    let registry = Registry::start();
    let bytes = blob_bytes(3 << 20);
    let digest = push_blob(&registry, "blobs", &bytes).await;
    let rules = vec![Rule::cut_body(
        "GET",
        &format!("/blobs/{digest}"),
        When::Nth(1),
        1 << 20,
    )];
    let proxy = if honour_range {
        FaultProxy::start(registry.port(), rules)
    } else {
        FaultProxy::start_ignoring_range(registry.port(), rules)
    };

    read_through(&proxy, &digest, &bytes).await;
    assert_eq!(proxy.fired(0), 1, "the body must have been cut once");
    assert_eq!(
        blob_gets(&proxy, &digest),
        2,
        "one GET and one resume or restart"
    );
}

#[tokio::test]
async fn blob_read_resumes_with_range() {
    read_after_one_cut(true).await;
}

#[tokio::test]
async fn blob_read_restarts_without_range() {
    read_after_one_cut(false).await;
}

#[tokio::test]
async fn blob_read_survives_repeated_cuts() {
    let registry = Registry::start();
    let bytes = blob_bytes(2 << 20);
    let digest = push_blob(&registry, "blobs", &bytes).await;
    // Every GET is cut after 300 KB: the read progresses on each try and completes.
    let rules = vec![Rule::cut_body(
        "GET",
        &format!("/blobs/{digest}"),
        When::Always,
        300_000,
    )];
    let proxy = FaultProxy::start(registry.port(), rules);

    read_through(&proxy, &digest, &bytes).await;
    assert!(proxy.fired(0) >= 7, "fired {} times", proxy.fired(0));
}

#[tokio::test]
async fn too_many_requests_is_retried() {
    let registry = Registry::start();
    let bytes = blob_bytes(1000);
    let digest = push_blob(&registry, "blobs", &bytes).await;
    let blob_path = format!("/blobs/{digest}");
    let rules = vec![
        Rule::too_many_requests("HEAD", &blob_path, When::Nth(1), 1),
        Rule::too_many_requests("GET", &blob_path, When::Nth(1), 1),
    ];
    let proxy = FaultProxy::start(registry.port(), rules);

    let source = reference(&proxy.host(), "blobs:x");
    assert!(client().blob_exists(&source, &digest).await.unwrap());
    read_through(&proxy, &digest, &bytes).await;
    assert_eq!(proxy.fired(0), 1, "HEAD answered 429 once");
    assert_eq!(proxy.fired(1), 1, "GET answered 429 once");
}

#[tokio::test]
async fn manifest_fetch_survives_503() {
    let registry = Registry::start();
    let config = push_blob(&registry, "image", b"{}").await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[]}}"#
    );
    let direct = reference(&registry.host(), "image:v1");
    client()
        .push_manifest(&direct, manifest.as_bytes(), OCI_MANIFEST)
        .await
        .unwrap();
    let rules = vec![Rule::status("GET", "/manifests/", When::Nth(1), 503)];
    let proxy = FaultProxy::start(registry.port(), rules);

    let fetched = client()
        .fetch_manifest(&reference(&proxy.host(), "image:v1"))
        .await
        .unwrap();
    assert_eq!(fetched.bytes.as_ref(), manifest.as_bytes());
    assert_eq!(proxy.fired(0), 1);
}

#[tokio::test]
async fn failing_upload_exhausts_retries() {
    let registry = Registry::start();
    let rules = vec![Rule::status("PUT", "/blobs/uploads/", When::Always, 500)];
    let proxy = FaultProxy::start(registry.port(), rules);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    let bytes = blob_bytes(5000);
    fs_err::write(&path, &bytes).unwrap();
    let digest = Digest::of(&bytes);

    let target = reference(&proxy.host(), "uploads:x");
    let error = client()
        .push_blob_file(&target, &path, &digest, bytes.len() as u64)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::RetriesExhausted { attempts: 5, .. }),
        "{error}"
    );
    assert!(error.to_string().contains(digest.as_str()), "{error}");
    assert_eq!(proxy.fired(0), 5, "one PUT per try");
}

#[tokio::test]
async fn upload_survives_one_503() {
    let registry = Registry::start();
    let rules = vec![Rule::status("PUT", "/blobs/uploads/", When::Nth(1), 503)];
    let proxy = FaultProxy::start(registry.port(), rules);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    let bytes = blob_bytes(5000);
    fs_err::write(&path, &bytes).unwrap();
    let digest = Digest::of(&bytes);

    let target = reference(&proxy.host(), "uploads:x");
    let pushed = client()
        .push_blob_file(&target, &path, &digest, bytes.len() as u64)
        .await
        .unwrap();
    assert_eq!(pushed, BlobPush::Uploaded);
    assert_eq!(proxy.fired(0), 1);
    assert_eq!(registry.blob("uploads", digest.as_str()), bytes);
}

#[tokio::test]
async fn manifest_with_missing_blob_is_not_pushed() {
    let registry = Registry::start();
    let config = push_blob(&registry, "partial", b"{}").await;
    let missing = Digest::of(b"never uploaded");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{missing}","size":14}}]}}"#
    );
    let target = reference(&registry.host(), "partial:v1");
    let error = client()
        .push_manifest(&target, manifest.as_bytes(), OCI_MANIFEST)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, RegistryError::BlobMissing { digest, .. } if *digest == missing),
        "{error}"
    );
    assert!(registry.manifest("partial", "v1").is_none());
}

/// Starts a registry with the bookworm fixture as `debian:bookworm`.
fn registry_with_fixture() -> Registry {
    let fixture = bookworm_fixture();
    let registry = Registry::start();
    push_layout(
        &fixture.layout,
        BookwormFixture::TAG,
        &registry,
        &format!("{REPOSITORY}:{SOURCE_TAG}"),
        ManifestFormat::Oci,
    );
    registry
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn patch_through_faults_matches_clean_run() {
    let security = security_fixture();
    let fixture = bookworm_fixture();
    let registry = registry_with_fixture();
    let layer_path = format!("/blobs/{}", fixture.env["LAYER_DIGEST"]);
    let rules = vec![
        Rule::status("GET", "/manifests/", When::Nth(1), 503),
        Rule::cut_body("GET", &layer_path, When::Nth(1), 1 << 20),
        Rule::status("PUT", "/blobs/uploads/", When::Nth(1), 503),
        Rule::too_many_requests("HEAD", "/blobs/", When::Nth(1), 1),
    ];
    let proxy = FaultProxy::start(registry.port(), rules);
    let report = path_str(&security.report);

    // The faulty run goes first, so its uploads are real and not skipped as present.
    let source = proxy.image(&format!("{REPOSITORY}:{SOURCE_TAG}"));
    let faulty = layermend(&["patch", "-i", &source, "-r", report, "-t", "faulty"]);
    assert_eq!(
        faulty.code, 0,
        "patch through the proxy must succeed\n{faulty}"
    );
    for (rule, name) in ["manifest 503", "layer cut", "upload 503", "HEAD 429"]
        .iter()
        .enumerate()
    {
        assert_eq!(proxy.fired(rule), 1, "fault {name} must have fired once");
    }

    let source = registry.image(&format!("{REPOSITORY}:{SOURCE_TAG}"));
    let clean = layermend(&["patch", "-i", &source, "-r", report, "-t", "clean"]);
    assert_eq!(clean.code, 0, "patch without faults must succeed\n{clean}");

    let faulty_manifest = registry
        .manifest(REPOSITORY, "faulty")
        .unwrap_or_else(|| panic!("{REPOSITORY}:faulty was not pushed\n{faulty}"));
    let clean_manifest = registry
        .manifest(REPOSITORY, "clean")
        .unwrap_or_else(|| panic!("{REPOSITORY}:clean was not pushed\n{clean}"));
    assert_eq!(
        faulty_manifest.digest, clean_manifest.digest,
        "the run with faults must push the same manifest as the run without"
    );
}

#[test]
fn failing_uploads_leave_no_tag() {
    let security = security_fixture();
    let registry = registry_with_fixture();
    let rules = vec![Rule::status("PUT", "/blobs/uploads/", When::Always, 500)];
    let proxy = FaultProxy::start(registry.port(), rules);

    let source = proxy.image(&format!("{REPOSITORY}:{SOURCE_TAG}"));
    let report = path_str(&security.report);
    let outcome = layermend(&["patch", "-i", &source, "-r", report, "-t", "failed"]);
    assert_ne!(outcome.code, 0, "the patch must fail\n{outcome}");
    assert!(
        outcome.stderr.contains("gave up after 5 attempts"),
        "stderr must say the upload was retried and given up\n{outcome}"
    );
    assert!(
        outcome.stderr.contains("failed to push blob"),
        "stderr must name the failed upload\n{outcome}"
    );
    assert!(proxy.fired(0) >= 5, "PUT failed {} times", proxy.fired(0));
    // Checked on the registry directly, not through the proxy.
    assert!(
        registry.manifest(REPOSITORY, "failed").is_none(),
        "a failed run must leave no manifest under the tag\n{outcome}"
    );
}
