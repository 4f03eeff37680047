//! Bearer tokens from a registry's token server.
//!
//! A registry that responds to `GET /v2/` with `401` and `WWW-Authenticate: Bearer realm=…,
//! service=…` delegates authentication to the token server at `realm`, as the distribution
//! token authentication specification describes. The client asks that server for a token
//! per repository scope (`repository:NAME:pull` or `repository:NAME:pull,push`):
//!
//! - with a user name and password: `GET realm?service=…&scope=…` with basic auth;
//! - with an identity token (an OAuth2 refresh token): `POST realm` with the form
//!   `grant_type=refresh_token&refresh_token=…&service=…&scope=…&client_id=layermend`,
//!   as docker's distribution client does;
//! - without credentials: the same `GET` without an `Authorization` header.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Deserialize;

use super::auth::Credential;
use super::error::RegistryError;

/// The OAuth2 client id sent with a refresh-token grant.
const CLIENT_ID: &str = "layermend";
/// Token lifetime when the server states none or less, the minimum the distribution token
/// specification sets.
const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A cached token is replaced this long before it expires, so it cannot expire in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// Clock difference that distribution 2.8 tolerates when it checks a token's `exp` claim.
const EXP_LEEWAY_SECS: u64 = 60;
/// Maximum number of bytes of a token server's error body quoted in an error.
const MAX_QUOTED_BODY: usize = 300;

/// The authentication scheme a registry requests in its `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `GET /v2/` succeeded without credentials, or the registry named no scheme.
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

impl Challenge {
    /// Parses a `WWW-Authenticate` header value (RFC 7235: a scheme, then
    /// comma-separated `key=value` or `key="quoted value"` parameters).
    pub(crate) fn parse(header: &str) -> Challenge {
        let header = header.trim();
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Challenge::Basic;
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Challenge::None;
        }
        let params = parse_params(params);
        match params.get("realm") {
            Some(realm) if !realm.is_empty() => Challenge::Bearer {
                realm: realm.clone(),
                service: params.get("service").cloned(),
            },
            _ => Challenge::None,
        }
    }
}

/// Splits `key=value` pairs, honouring quoted values that contain commas or `\"` escapes.
fn parse_params(text: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut rest = text.trim_start();
    while let Some(equals) = rest.find('=') {
        let key = rest[..equals]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        rest = &rest[equals + 1..];
        let mut value = String::new();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            rest = &quoted[end..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        params.insert(key, value);
        rest = rest.trim_start().trim_start_matches(',');
    }
    params
}

/// Body of a token server's response: `token` in the docker form, `access_token` in the
/// OAuth2 form, which some servers send together.
#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
}

/// A bearer token and how long it may be used.
#[derive(Clone)]
pub(crate) struct Token {
    pub value: String,
    pub valid_until: Instant,
    /// A new refresh token, when the server rotated the one it was sent.
    pub refresh_token: Option<String>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("valid_until", &self.valid_until)
            .finish()
    }
}

/// One token request: where to send it and for what.
pub(crate) struct TokenRequest<'a> {
    pub registry: &'a str,
    pub realm: &'a str,
    pub service: Option<&'a str>,
    pub scope: &'a str,
}

/// Requests a token for `request.scope` with `credential`.
pub(crate) async fn fetch(
    http: &reqwest::Client,
    request: &TokenRequest<'_>,
    credential: &Credential,
) -> Result<Token, RegistryError> {
    tracing::debug!(
        registry = request.registry,
        realm = request.realm,
        scope = request.scope,
        ?credential,
        "requesting bearer token"
    );
    let unreachable = |source| RegistryError::TokenServerUnreachable {
        registry: request.registry.to_owned(),
        realm: request.realm.to_owned(),
        source,
    };
    let response = build_request(http, request, credential)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    let body = response.bytes().await.map_err(unreachable)?;
    if !status.is_success() {
        return Err(status_error(request, status, &body));
    }
    parse_response(request, &body)
}

fn build_request(
    http: &reqwest::Client,
    request: &TokenRequest<'_>,
    credential: &Credential,
) -> reqwest::RequestBuilder {
    let mut query = vec![("scope", request.scope)];
    if let Some(service) = request.service {
        query.push(("service", service));
    }
    match credential {
        Credential::IdentityToken(refresh_token) => {
            query.push(("grant_type", "refresh_token"));
            query.push(("refresh_token", refresh_token));
            query.push(("client_id", CLIENT_ID));
            let form = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&query)
                .finish();
            http.post(request.realm)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(form)
        }
        Credential::Basic { username, password } => http
            .get(request.realm)
            .query(&query)
            .basic_auth(username, Some(password)),
        Credential::Anonymous => http.get(request.realm).query(&query),
    }
}

fn status_error(
    request: &TokenRequest<'_>,
    status: reqwest::StatusCode,
    body: &[u8],
) -> RegistryError {
    let message = quote_body(body);
    let reply = if message.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {message}", status.as_u16())
    };
    // OAuth2 servers reject a refresh token with 400 and `invalid_grant`.
    let rejected = matches!(status.as_u16(), 401 | 403)
        || (status.as_u16() == 400 && message.contains("invalid_grant"));
    let registry = request.registry.to_owned();
    let realm = request.realm.to_owned();
    if rejected {
        RegistryError::TokenRejected {
            registry,
            realm,
            reply,
        }
    } else {
        RegistryError::TokenServerStatus {
            registry,
            realm,
            reply,
        }
    }
}

fn parse_response(request: &TokenRequest<'_>, body: &[u8]) -> Result<Token, RegistryError> {
    let invalid = |reason: String| RegistryError::InvalidTokenResponse {
        registry: request.registry.to_owned(),
        realm: request.realm.to_owned(),
        reason,
    };
    let parsed: TokenResponse =
        serde_json::from_slice(body).map_err(|error| invalid(format!("not JSON: {error}")))?;
    let value = parsed
        .token
        .filter(|token| !token.is_empty())
        .or(parsed.access_token.filter(|token| !token.is_empty()))
        .ok_or_else(|| invalid("it has neither a token nor an access_token".to_owned()))?;
    if let Some(expired_at) = expired_jwt(&value) {
        return Err(RegistryError::TokenExpired {
            registry: request.registry.to_owned(),
            realm: request.realm.to_owned(),
            expired_at,
        });
    }

    let lifetime = parsed
        .expires_in
        .map(Duration::from_secs)
        .unwrap_or_default()
        .max(MIN_TOKEN_LIFETIME);
    Ok(Token {
        value,
        valid_until: Instant::now() + lifetime,
        refresh_token: parsed.refresh_token.filter(|token| !token.is_empty()),
    })
}

/// Returns the `exp` claim of a JWT when it lies further in the past than registries
/// tolerate. Opaque tokens and JWTs without `exp` return `None`, because only the
/// registry can judge them.
fn expired_jwt(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    if exp.saturating_add(EXP_LEEWAY_SECS) >= now {
        return None;
    }
    let time = i64::try_from(exp)
        .ok()
        .and_then(|exp| chrono::DateTime::from_timestamp(exp, 0));
    Some(time.map_or_else(|| exp.to_string(), |time| time.to_rfc3339()))
}

fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTED_BODY) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Tokens per registry and scope, reused until shortly before they expire.
#[derive(Default)]
pub(crate) struct TokenCache {
    tokens: std::sync::Mutex<HashMap<(String, String), Token>>,
}

impl TokenCache {
    pub(crate) fn get(&self, registry: &str, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().expect("no code panics holding the lock");
        let token = tokens.get(&(registry.to_owned(), scope.to_owned()))?;
        (Instant::now() + EXPIRY_MARGIN < token.valid_until).then(|| token.value.clone())
    }

    pub(crate) fn insert(&self, registry: &str, scope: &str, token: Token) {
        self.tokens
            .lock()
            .expect("no code panics holding the lock")
            .insert((registry.to_owned(), scope.to_owned()), token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Challenge::Basic
        );
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.test/token",service="registry.test",scope="repository:a,b:pull""#
            ),
            Challenge::Bearer {
                realm: "https://auth.test/token".to_owned(),
                service: Some("registry.test".to_owned()),
            }
        );
        assert_eq!(
            Challenge::parse("bearer realm=http://127.0.0.1:1/t, service = svc"),
            Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".to_owned(),
                service: Some("svc".to_owned()),
            }
        );
        assert_eq!(
            Challenge::parse(r#"Bearer realm="a\"b""#),
            Challenge::Bearer {
                realm: "a\"b".to_owned(),
                service: None,
            }
        );
        assert_eq!(Challenge::parse(r#"Bearer service="x""#), Challenge::None);
        assert_eq!(Challenge::parse("Negotiate"), Challenge::None);
    }

    fn jwt_with_exp(exp: u64) -> String {
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        format!(
            "{}.{}.sig",
            encode(r#"{"alg":"none"}"#),
            encode(&format!(r#"{{"exp":{exp}}}"#))
        )
    }

    #[test]
    fn expired_jwt_detection() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(expired_jwt(&jwt_with_exp(now - 3600)).is_some());
        assert!(expired_jwt(&jwt_with_exp(now - 10)).is_none());
        assert!(expired_jwt(&jwt_with_exp(now + 300)).is_none());
        assert!(expired_jwt("opaque-token").is_none());
    }

    #[test]
    fn cache_drops_tokens_near_expiry() {
        let cache = TokenCache::default();
        let token = |value: &str, seconds| Token {
            value: value.to_owned(),
            valid_until: Instant::now() + Duration::from_secs(seconds),
            refresh_token: None,
        };
        cache.insert("r", "repository:a:pull", token("fresh", 120));
        cache.insert("r", "repository:b:pull", token("stale", 5));
        assert_eq!(
            cache.get("r", "repository:a:pull").as_deref(),
            Some("fresh")
        );
        assert_eq!(cache.get("r", "repository:b:pull"), None);
        assert_eq!(cache.get("other", "repository:a:pull"), None);
    }
}
