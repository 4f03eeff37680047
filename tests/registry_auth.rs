//! Registry authentication against the real `docker-registry` (distribution 2.8) on
//! loopback: TLS with a test CA and htpasswd, bearer tokens from a token server the test
//! runs, identity tokens, credential helpers and auth.json, and the error of each failure.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::auth::{
    AuthRegistry, Grant, RegistryAuth, TOKEN_SERVICE, TestPki, TokenPolicy, TokenServer, free_port,
};
use layermend::digest::Digest;
use layermend::image::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST};
use layermend::reference::Reference;
use layermend::registry::auth::AuthEnv;
use layermend::registry::{
    BlobCopy, BlobPush, Platform, RegistryClient, RegistryError, RegistryOptions,
};

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse";
const REFRESH_TOKEN: &str = "refresh-token-1";

fn client(env: AuthEnv, ca_files: Vec<PathBuf>) -> RegistryClient {
    RegistryClient::new(RegistryOptions {
        auth_env: env,
        ca_files,
        ..RegistryOptions::default()
    })
    .unwrap()
}

/// Writes a containers auth.json with one `auths` entry and returns an environment that
/// reads only that file.
fn auth_file_env(dir: &Path, host: &str, user: &str, password: &str) -> AuthEnv {
    let file = dir.join(format!("auth-{user}-{password}.json"));
    let auth =
        format!(r#"{{"auths":{{"{host}":{{"username":"{user}","password":"{password}"}}}}}}"#);
    fs_err::write(&file, auth).unwrap();
    AuthEnv {
        registry_auth_file: Some(file),
        ..AuthEnv::default()
    }
}

/// Writes `config` as the docker config.json of a fresh DOCKER_CONFIG directory, with
/// `bin` (and the system directories) as PATH.
fn docker_config_env(dir: &Path, config: &str, bin: Option<&Path>) -> AuthEnv {
    let docker = dir.join(format!("docker-{}", free_port()));
    fs_err::create_dir_all(&docker).unwrap();
    fs_err::write(docker.join("config.json"), config).unwrap();
    let mut path = vec![PathBuf::from("/usr/bin"), PathBuf::from("/bin")];
    path.extend(bin.map(Path::to_owned));
    AuthEnv {
        docker_config: Some(docker),
        path: Some(std::env::join_paths(path).unwrap()),
        ..AuthEnv::default()
    }
}

/// Writes an executable `docker-credential-test` into `dir/bin` that appends each requested
/// server to `dir/helper.log` and prints `username` and `secret`.
fn credential_helper(dir: &Path, username: &str, secret: &str) -> PathBuf {
    let bin = dir.join("bin");
    fs_err::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-test");
    let log = dir.join("helper.log");
    fs_err::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\n\
             echo \"$server\" >> '{}'\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{username}\",\"Secret\":\"{secret}\"}}' \"$server\"\n",
            log.display()
        ),
    )
    .unwrap();
    fs_err::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn reference(host: &str, name: &str) -> Reference {
    Reference::parse(&format!("{host}/{name}")).unwrap()
}

fn layer_bytes() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect()
}

/// Pushes a one-layer OCI image and returns its manifest bytes and layer digest and size.
async fn push_image(
    client: &RegistryClient,
    target: &Reference,
    work: &Path,
) -> Result<(Vec<u8>, Digest, u64), RegistryError> {
    let layer = layer_bytes();
    let layer_digest = Digest::of(&layer);
    let layer_path = work.join("layer");
    fs_err::write(&layer_path, &layer).unwrap();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}},"config":{{}}}}"#
    );
    let config_digest = Digest::of(config.as_bytes());
    let config_path = work.join("config");
    fs_err::write(&config_path, &config).unwrap();

    client
        .push_blob_file(target, &layer_path, &layer_digest, layer.len() as u64)
        .await?;
    client
        .push_blob_file(target, &config_path, &config_digest, config.len() as u64)
        .await?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    client
        .push_manifest(target, manifest.as_bytes(), OCI_MANIFEST)
        .await?;
    Ok((manifest.into_bytes(), layer_digest, layer.len() as u64))
}

/// Pushes an image, resolves it and reads its layer back.
async fn round_trip(client: &RegistryClient, target: &Reference, work: &Path) -> Digest {
    let (manifest, layer_digest, layer_size) = push_image(client, target, work)
        .await
        .unwrap_or_else(|error| panic!("push to {target}: {error:#?}"));
    let resolved = client.resolve_image(target, None).await.unwrap();
    assert_eq!(resolved.manifest.bytes.as_ref(), manifest.as_slice());
    assert_eq!(resolved.layers[0].digest, layer_digest);
    let layer = client
        .read_blob(target, &layer_digest, layer_size)
        .await
        .unwrap();
    assert_eq!(layer, layer_bytes());
    layer_digest
}

/// Checks that `target`'s tag does not exist, using `client`, which has valid credentials.
async fn assert_not_pushed(client: &RegistryClient, target: &Reference) {
    let error = client.fetch_manifest(target).await.unwrap_err();
    assert!(
        matches!(error, RegistryError::NotFound { .. }),
        "{target} must not exist: {error:?}"
    );
}

fn error_chain(error: &RegistryError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!("\ncaused by: {cause}"));
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn tls_registry_with_htpasswd() {
    let pki = TestPki::create();
    let registry = AuthRegistry::start(
        &pki,
        RegistryAuth::Htpasswd {
            user: USER,
            password: PASSWORD,
        },
        true,
    );
    let work = tempfile::tempdir().unwrap();
    let env = auth_file_env(work.path(), &registry.host(), USER, PASSWORD);
    let trusted = client(env.clone(), vec![pki.ca_cert()]);
    let target = reference(&registry.host(), "secure/app:v1");
    round_trip(&trusted, &target, work.path()).await;

    // Without the CA the handshake fails, and the hint names --ca-file.
    let untrusted = client(env, Vec::new());
    let error = untrusted.fetch_manifest(&target).await.unwrap_err();
    assert!(matches!(error, RegistryError::Tls { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&registry.host()), "{message}");
    assert!(message.contains("--ca-file"), "{message}");

    // A wrong password names the registry, keeps the password out and pushes nothing.
    let wrong = client(
        auth_file_env(work.path(), &registry.host(), USER, "wrong-password"),
        vec![pki.ca_cert()],
    );
    let rejected = reference(&registry.host(), "secure/app:rejected");
    let error = push_image(&wrong, &rejected, work.path())
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&registry.host()), "{message}");
    assert!(message.contains("docker login"), "{message}");
    assert!(!message.contains("wrong-password"), "{message}");
    assert_not_pushed(&trusted, &rejected).await;
}

#[tokio::test]
async fn credential_helper_and_auth_json() {
    let pki = TestPki::create();
    let registry = AuthRegistry::start(
        &pki,
        RegistryAuth::Htpasswd {
            user: USER,
            password: PASSWORD,
        },
        true,
    );
    let host = registry.host();
    let work = tempfile::tempdir().unwrap();

    // docker config.json: credHelpers names a helper found on PATH.
    let bin = credential_helper(work.path(), USER, PASSWORD);
    let config = format!(r#"{{"credHelpers":{{"{host}":"test"}}}}"#);
    let helper_client = client(
        docker_config_env(work.path(), &config, Some(&bin)),
        vec![pki.ca_cert()],
    );
    let target = reference(&host, "helper/app:v1");
    round_trip(&helper_client, &target, work.path()).await;
    let requested = fs_err::read_to_string(work.path().join("helper.log")).unwrap();
    assert_eq!(requested.lines().collect::<Vec<_>>(), [host.as_str()]);

    // docker config.json: credsStore covers every registry.
    let config = r#"{"credsStore":"test"}"#;
    let store_client = client(
        docker_config_env(work.path(), config, Some(&bin)),
        vec![pki.ca_cert()],
    );
    store_client.resolve_image(&target, None).await.unwrap();

    // containers auth.json in $XDG_RUNTIME_DIR, with a repository-scoped key.
    let runtime = work.path().join("run");
    fs_err::create_dir_all(runtime.join("containers")).unwrap();
    fs_err::write(
        runtime.join("containers/auth.json"),
        format!(
            r#"{{"auths":{{"{host}/helper/app":{{"username":"{USER}","password":"{PASSWORD}"}}}}}}"#
        ),
    )
    .unwrap();
    let auth_json_client = client(
        AuthEnv {
            xdg_runtime_dir: Some(runtime),
            ..AuthEnv::default()
        },
        vec![pki.ca_cert()],
    );
    auth_json_client.resolve_image(&target, None).await.unwrap();
}

#[tokio::test]
async fn missing_credential_helper() {
    let pki = TestPki::create();
    let registry = AuthRegistry::start(
        &pki,
        RegistryAuth::Htpasswd {
            user: USER,
            password: PASSWORD,
        },
        true,
    );
    let work = tempfile::tempdir().unwrap();
    for config in [
        r#"{"credsStore":"absent"}"#.to_owned(),
        format!(r#"{{"credHelpers":{{"{}":"absent"}}}}"#, registry.host()),
    ] {
        let env = docker_config_env(work.path(), &config, None);
        let config_path = env.docker_config.clone().unwrap().join("config.json");
        let missing = client(env, vec![pki.ca_cert()]);
        let target = reference(&registry.host(), "helper/app:v1");
        let error = push_image(&missing, &target, work.path())
            .await
            .unwrap_err();
        assert!(
            matches!(error, RegistryError::Credentials { .. }),
            "{error:?}"
        );
        let chain = error_chain(&error);
        assert!(chain.contains(&registry.host()), "{chain}");
        assert!(chain.contains("docker-credential-absent"), "{chain}");
        assert!(
            chain.contains(&config_path.display().to_string()),
            "{chain}"
        );
        assert!(chain.contains("hint: install it"), "{chain}");
        assert!(!registry.has_repository("helper/app"));
    }
}

/// Starts a token server for `policy` and a plain-HTTP registry that trusts it.
fn bearer_registry(pki: &TestPki, policy: TokenPolicy) -> (TokenServer, AuthRegistry) {
    let server = TokenServer::start(pki, policy);
    let registry = AuthRegistry::start(
        pki,
        RegistryAuth::Token {
            realm: &server.realm(),
        },
        false,
    );
    (server, registry)
}

fn password_policy() -> TokenPolicy {
    TokenPolicy {
        users: vec![(USER.to_owned(), PASSWORD.to_owned())],
        ..TokenPolicy::default()
    }
}

#[tokio::test]
async fn bearer_push_pull_and_copy() {
    let pki = TestPki::create();
    let (server, registry) = bearer_registry(&pki, password_policy());
    let work = tempfile::tempdir().unwrap();
    let env = auth_file_env(work.path(), &registry.host(), USER, PASSWORD);
    let client = client(env, Vec::new());
    let source = reference(&registry.host(), "team/app:v1");
    let layer_digest = round_trip(&client, &source, work.path()).await;

    // The token for the target repository does not cover the source, so distribution
    // rejects the mount and the blob is copied.
    let copy_target = reference(&registry.host(), "other/app:v1");
    let size = layer_bytes().len() as u64;
    let copied = client
        .copy_blob(&source, &copy_target, &layer_digest, size)
        .await
        .unwrap();
    assert_eq!(copied, BlobCopy::Streamed);
    let again = client
        .copy_blob(&source, &copy_target, &layer_digest, size)
        .await
        .unwrap();
    assert_eq!(again, BlobCopy::AlreadyPresent);
    let read = client
        .read_blob(&copy_target, &layer_digest, size)
        .await
        .unwrap();
    assert_eq!(read, layer_bytes());

    let records = server.records();
    assert!(!records.is_empty());
    for record in &records {
        assert_eq!(record.grant, Grant::Basic(USER.to_owned()), "{record:?}");
        assert_eq!(record.method, "GET", "{record:?}");
        assert_eq!(record.status, 200, "{record:?}");
        assert_eq!(
            record.params.get("service").map(String::as_str),
            Some(TOKEN_SERVICE)
        );
    }
    let scopes: Vec<&str> = records
        .iter()
        .flat_map(|record| record.scopes.iter().map(String::as_str))
        .collect();
    for scope in [
        "repository:team/app:pull,push",
        "repository:team/app:pull",
        "repository:other/app:pull,push",
    ] {
        assert!(scopes.contains(&scope), "{scope} not in {scopes:?}");
    }
    // Tokens are cached per scope: one request each.
    let mut unique = scopes.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), scopes.len(), "{scopes:?}");
}

#[tokio::test]
async fn bearer_index_resolution() {
    let pki = TestPki::create();
    let (server, registry) = bearer_registry(&pki, password_policy());
    let work = tempfile::tempdir().unwrap();
    let env = auth_file_env(work.path(), &registry.host(), USER, PASSWORD);
    let pusher = client(env.clone(), Vec::new());
    let single = reference(&registry.host(), "multi/app:single");
    let (manifest, _, _) = push_image(&pusher, &single, work.path()).await.unwrap();

    let host = Platform::host();
    let variant = host
        .variant
        .as_ref()
        .map(|v| format!(r#","variant":"{v}""#))
        .unwrap_or_default();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"{}"{variant}}}}}]}}"#,
        Digest::of(&manifest),
        manifest.len(),
        host.architecture
    );
    let index_ref = reference(&registry.host(), "multi/app:latest");
    pusher
        .push_manifest(&index_ref, index.as_bytes(), OCI_INDEX)
        .await
        .unwrap();

    // A fresh client discovers the platform with the same credentials as every other
    // request: the index, the chosen manifest and the config all come through.
    let before = server.records().len();
    let reader = client(env, Vec::new());
    let resolved = reader.resolve_image(&index_ref, None).await.unwrap();
    assert_eq!(resolved.manifest.digest, Digest::of(&manifest));
    assert!(resolved.index.is_some());
    let records = server.records();
    let new_records = &records[before..];
    assert_eq!(new_records.len(), 1, "{new_records:?}");
    assert_eq!(new_records[0].grant, Grant::Basic(USER.to_owned()));
    assert_eq!(new_records[0].scopes, ["repository:multi/app:pull"]);
}

#[tokio::test]
async fn identity_token_exchanged() {
    let pki = TestPki::create();
    let policy = TokenPolicy {
        refresh_tokens: vec![REFRESH_TOKEN.to_owned()],
        ..TokenPolicy::default()
    };
    let (server, registry) = bearer_registry(&pki, policy);
    let host = registry.host();
    let work = tempfile::tempdir().unwrap();

    // `docker login` against an OAuth2 token server stores an identitytoken.
    let config =
        format!(r#"{{"auths":{{"{host}":{{"auth":"","identitytoken":"{REFRESH_TOKEN}"}}}}}}"#);
    let from_config = client(docker_config_env(work.path(), &config, None), Vec::new());
    let target = reference(&host, "oauth/app:v1");
    round_trip(&from_config, &target, work.path()).await;

    // A credential helper marks an identity token with the user name `<token>`.
    let bin = credential_helper(work.path(), "<token>", REFRESH_TOKEN);
    let config = format!(r#"{{"credHelpers":{{"{host}":"test"}}}}"#);
    let from_helper = client(
        docker_config_env(work.path(), &config, Some(&bin)),
        Vec::new(),
    );
    from_helper.resolve_image(&target, None).await.unwrap();

    let records = server.records();
    assert!(records.len() >= 3, "{records:?}");
    for record in &records {
        assert_eq!(record.grant, Grant::RefreshToken, "{record:?}");
        assert_eq!(record.method, "POST", "{record:?}");
        assert_eq!(record.status, 200, "{record:?}");
        let param = |name: &str| record.params.get(name).map(String::as_str);
        assert_eq!(param("grant_type"), Some("refresh_token"));
        assert_eq!(param("client_id"), Some("layermend"));
        assert_eq!(param("service"), Some(TOKEN_SERVICE));
    }

    // The token server rejects an unknown refresh token, and the error names it.
    let config = format!(r#"{{"auths":{{"{host}":{{"identitytoken":"revoked"}}}}}}"#);
    let revoked = client(docker_config_env(work.path(), &config, None), Vec::new());
    let error = revoked.fetch_manifest(&target).await.unwrap_err();
    assert!(
        matches!(error, RegistryError::TokenRejected { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&server.realm()), "{message}");
    assert!(message.contains(&host), "{message}");
    assert!(!message.contains("revoked"), "{message}");
}

#[tokio::test]
async fn bearer_errors_name_registry_and_fix() {
    let pki = TestPki::create();
    let (server, registry) = bearer_registry(&pki, password_policy());
    let host = registry.host();
    let work = tempfile::tempdir().unwrap();
    let good = client(
        auth_file_env(work.path(), &host, USER, PASSWORD),
        Vec::new(),
    );
    let target = reference(&host, "errors/app:v1");

    // Wrong password: the token server rejects it.
    let wrong = client(
        auth_file_env(work.path(), &host, USER, "wrong-password"),
        Vec::new(),
    );
    let error = push_image(&wrong, &target, work.path()).await.unwrap_err();
    assert!(
        matches!(error, RegistryError::TokenRejected { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&host), "{message}");
    assert!(message.contains(&server.realm()), "{message}");
    assert!(message.contains("docker login"), "{message}");
    assert!(!message.contains("wrong-password"), "{message}");
    assert!(!registry.has_repository("errors/app"));
    assert_not_pushed(&good, &target).await;
    drop(server);

    // The token server is down: the error names it instead of blaming the credentials.
    let error = push_image(&good, &target, work.path()).await.unwrap_err();
    assert!(
        matches!(error, RegistryError::TokenServerUnreachable { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&host), "{message}");
    assert!(message.contains("/token"), "{message}");
    assert!(!message.contains("rejected"), "{message}");
}

#[tokio::test]
async fn untrusted_token_is_rejected() {
    // The token server signs with a key from another PKI than the one the registry trusts.
    let pki = TestPki::create();
    let other = TestPki::create();
    let server = TokenServer::start(&other, password_policy());
    let registry = AuthRegistry::start(
        &pki,
        RegistryAuth::Token {
            realm: &server.realm(),
        },
        false,
    );
    let host = registry.host();
    let work = tempfile::tempdir().unwrap();
    let client = client(
        auth_file_env(work.path(), &host, USER, PASSWORD),
        Vec::new(),
    );
    let target = reference(&host, "untrusted/app:v1");
    let error = push_image(&client, &target, work.path()).await.unwrap_err();
    assert!(
        matches!(error, RegistryError::TokenNotAccepted { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&host), "{message}");
    assert!(message.contains(&server.realm()), "{message}");
    assert!(message.contains("untrusted/app"), "{message}");
    assert!(!registry.has_repository("untrusted/app"));
}

#[tokio::test]
async fn expired_token_is_reported() {
    let pki = TestPki::create();
    let policy = TokenPolicy {
        expired: true,
        ..password_policy()
    };
    let (server, registry) = bearer_registry(&pki, policy);
    let host = registry.host();
    let work = tempfile::tempdir().unwrap();
    let env = auth_file_env(work.path(), &host, USER, PASSWORD);
    let expired = client(env, Vec::new());
    let target = reference(&host, "expired/app:v1");
    let error = push_image(&expired, &target, work.path())
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::TokenExpired { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&host), "{message}");
    assert!(message.contains(&server.realm()), "{message}");
    assert!(message.contains("clocks"), "{message}");
    assert!(!registry.has_repository("expired/app"));
}

#[tokio::test]
async fn loopback_registry_down() {
    let host = format!("127.0.0.1:{}", free_port());
    let client = client(AuthEnv::default(), Vec::new());
    let error = client
        .fetch_manifest(&reference(&host, "app:v1"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::NotListening { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&host), "{message}");
    assert!(message.contains("nothing listens"), "{message}");
    assert!(!message.contains("insecure"), "{message}");
}

/// Pushes the bookworm fixture to a TLS registry with htpasswd and patches it through the
/// CLI with `--ca-file` and `REGISTRY_AUTH_FILE`. A second run with a wrong password fails.
#[test]
fn cli_patch_over_tls() {
    let security = common::security_fixture();
    let fixture = common::bookworm_fixture();
    let pki = TestPki::create();
    let registry = AuthRegistry::start(
        &pki,
        RegistryAuth::Htpasswd {
            user: USER,
            password: PASSWORD,
        },
        true,
    );
    let work = tempfile::tempdir().unwrap();
    common::run(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("--dest-cert-dir={}", pki.cert_dir().display()))
            .arg(format!("--dest-creds={USER}:{PASSWORD}"))
            .arg(format!(
                "oci:{}:{}",
                fixture.layout.display(),
                common::BookwormFixture::TAG
            ))
            .arg(format!("docker://{}", registry.image("debian:bookworm"))),
    );
    let auth_env = auth_file_env(work.path(), &registry.host(), USER, PASSWORD);
    let auth_file = auth_env.registry_auth_file.clone().unwrap();
    let ca = pki.ca_cert();
    let source = registry.image("debian:bookworm");
    let report = security.report.to_str().unwrap();
    let args = [
        "patch",
        "-i",
        &source,
        "-r",
        report,
        "-t",
        "bookworm-patched",
        "--ca-file",
        ca.to_str().unwrap(),
    ];
    let outcome = common::layermend_with_env(
        &args,
        &[("REGISTRY_AUTH_FILE", auth_file.to_str().unwrap())],
    );
    assert_eq!(outcome.code, 0, "{outcome}\n{}", registry.log());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = client(auth_env, vec![ca.clone()]);
    let original = runtime
        .block_on(client.resolve_image(&reference(&registry.host(), "debian:bookworm"), None))
        .unwrap();
    let patched_ref = reference(&registry.host(), "debian:bookworm-patched");
    let patched = runtime
        .block_on(client.resolve_image(&patched_ref, None))
        .unwrap();
    assert_eq!(patched.layers.len(), original.layers.len() + 1);
    assert!(
        outcome.stdout.contains(patched.manifest.digest.as_str()),
        "{outcome}"
    );

    // A wrong password is a user error that names the registry and pushes nothing.
    let wrong_env = auth_file_env(work.path(), &registry.host(), USER, "wrong-password");
    let wrong_file = wrong_env.registry_auth_file.unwrap();
    let mut wrong_args = args;
    wrong_args[6] = "bookworm-wrong";
    let outcome = common::layermend_with_env(
        &wrong_args,
        &[("REGISTRY_AUTH_FILE", wrong_file.to_str().unwrap())],
    );
    assert_eq!(outcome.code, 2, "{outcome}");
    assert!(outcome.stderr.contains(&registry.host()), "{outcome}");
    assert!(outcome.stderr.contains("docker login"), "{outcome}");
    let missing = runtime
        .block_on(client.fetch_manifest(&reference(&registry.host(), "debian:bookworm-wrong")));
    assert!(
        matches!(missing, Err(RegistryError::NotFound { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn push_skips_present_blobs_under_tls() {
    let pki = TestPki::create();
    let registry = AuthRegistry::start(
        &pki,
        RegistryAuth::Htpasswd {
            user: USER,
            password: PASSWORD,
        },
        true,
    );
    let work = tempfile::tempdir().unwrap();
    let env = auth_file_env(work.path(), &registry.host(), USER, PASSWORD);
    let client = client(env, vec![pki.ca_cert()]);
    let target = reference(&registry.host(), "skip/app:v1");
    push_image(&client, &target, work.path()).await.unwrap();
    let layer = layer_bytes();
    let path = work.path().join("layer");
    let pushed = client
        .push_blob_file(&target, &path, &Digest::of(&layer), layer.len() as u64)
        .await
        .unwrap();
    assert_eq!(pushed, BlobPush::AlreadyPresent);
}
