//! Retries of registry requests that failed for a transient reason.
//!
//! A request is retried on 429, 500, 502, 503 and 504, on a connection that could not be
//! opened or broke (mid-body too), and on a timeout. Every other failure, such as 400,
//! 401, 403, 404, a digest mismatch or a blob shorter than its descriptor, is returned at
//! once, because sending the same request again returns the same result.
//!
//! NOTE: oci-client 0.18 keeps no response headers in its errors, so a `Retry-After` on
//! 429 or 503 is not honoured and the normal backoff applies.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use oci_client::errors::{OciDistributionError, OciErrorCode};

use super::RegistryError;

/// How often and how long a failed request is retried.
///
/// The delay before retry `n` (1 for the first retry) is `base_delay * 2^(n-1)`, capped at
/// `max_delay`, and then drawn uniformly from its upper half so parallel transfers do not
/// retry in step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Maximum number of tries, the first one included. 1 disables retries.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No retry starts later than this after the first failure.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// Five tries with 0.4, 0.8, 1.6 and 3.2 s between them at most, so a registry that is
    /// down fails a run after about 6 s.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(400),
            max_delay: Duration::from_secs(8),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Returns the upper bound of the delay before retry `retry` (1 for the first retry).
    pub fn max_delay_before(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// Returns the delay before retry `retry`: a random point in the upper half of
    /// [`Self::max_delay_before`].
    pub fn delay_before(&self, retry: u32) -> Duration {
        let upper = self.max_delay_before(retry);
        let half = upper / 2;
        let spread = u64::try_from((upper - half).as_nanos()).unwrap_or(u64::MAX);
        let offset = if spread == 0 {
            0
        } else {
            random_u64() % (spread + 1)
        };
        half + Duration::from_nanos(offset)
    }
}

/// Tracks the tries of one operation against a [`RetryPolicy`].
pub(crate) struct Attempts {
    policy: RetryPolicy,
    /// Tries made so far.
    tries: u32,
    first_failure: Option<Instant>,
}

impl Attempts {
    pub(crate) fn new(policy: &RetryPolicy) -> Self {
        Attempts {
            policy: policy.clone(),
            tries: 1,
            first_failure: None,
        }
    }

    /// Returns the delay before the next try after `error`, or `None` when `error` is
    /// permanent or the policy allows no further try.
    pub(crate) fn next_delay(&mut self, error: &RegistryError) -> Option<Duration> {
        transient_cause(error)?;
        let first_failure = *self.first_failure.get_or_insert_with(Instant::now);
        if self.tries >= self.policy.max_attempts {
            return None;
        }
        let delay = self.policy.delay_before(self.tries);
        if first_failure.elapsed() + delay > self.policy.max_elapsed {
            return None;
        }
        self.tries += 1;
        Some(delay)
    }

    /// Tries made so far.
    pub(crate) fn tries(&self) -> u32 {
        self.tries
    }

    /// Wraps the final error of an operation that was retried; a first failure is
    /// returned unchanged.
    pub(crate) fn give_up(&self, error: RegistryError) -> RegistryError {
        if self.tries <= 1 {
            return error;
        }
        RegistryError::RetriesExhausted {
            attempts: self.tries,
            source: Box::new(error),
        }
    }
}

/// The operation a retry log line names.
#[derive(Clone, Copy)]
pub(crate) struct Operation<'a> {
    /// Name of the operation, such as "push blob".
    pub name: &'static str,
    pub registry: &'a str,
    /// The manifest, tag or digest the operation is about.
    pub subject: &'a dyn std::fmt::Display,
}

/// Runs `attempt` until it succeeds, fails permanently, or `policy` allows no further
/// try, and logs each retry as a warning.
pub(crate) async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    operation: Operation<'_>,
    mut attempt: F,
) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RegistryError>>,
{
    let mut attempts = Attempts::new(policy);
    loop {
        let error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let Some(delay) = attempts.next_delay(&error) else {
            return Err(attempts.give_up(error));
        };
        log_retry(operation, &attempts, delay, &error);
        tokio::time::sleep(delay).await;
    }
}

/// Logs a retry with its attempt number, the operation, the registry and the cause.
pub(crate) fn log_retry(
    operation: Operation<'_>,
    attempts: &Attempts,
    delay: Duration,
    error: &RegistryError,
) {
    tracing::warn!(
        attempt = attempts.tries(),
        max_attempts = attempts.policy.max_attempts,
        operation = operation.name,
        subject = %operation.subject,
        registry = operation.registry,
        cause = transient_cause(error).unwrap_or("transient failure"),
        error = %error_chain(error),
        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        "retrying registry request"
    );
}

/// Returns a short name for the cause when `error` is worth retrying, else `None`.
pub fn transient_cause(error: &RegistryError) -> Option<&'static str> {
    match error {
        // A loopback registry refuses connections while it restarts. The first probe of
        // a host is not retried, so a registry that is down fails the run at once.
        RegistryError::Connection { .. } | RegistryError::NotListening { .. } => {
            Some("connection failed")
        }
        RegistryError::Timeout { .. } => Some("timed out"),
        RegistryError::BlobRead { .. } => Some("body read failed"),
        RegistryError::Request { source, .. } => transient_oci_cause(source),
        _ => None,
    }
}

fn transient_oci_cause(error: &OciDistributionError) -> Option<&'static str> {
    match error {
        OciDistributionError::ServerError { code, .. } => transient_status(*code),
        // oci-client parses the body of a 4xx response into an envelope and drops the
        // status, so a 429 with an OCI error body is recognized by its error code.
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == OciErrorCode::Toomanyrequests)
            .then_some("429 too many requests"),
        OciDistributionError::RequestError(request) => {
            if let Some(status) = request.status() {
                return transient_status(status.as_u16());
            }
            if request.is_timeout() {
                Some("timed out")
            } else if request.is_connect() {
                Some("connection failed")
            } else if request.is_request() || request.is_body() || request.is_decode() {
                Some("connection broke")
            } else {
                None
            }
        }
        _ => None,
    }
}

fn transient_status(status: u16) -> Option<&'static str> {
    match status {
        429 => Some("429 too many requests"),
        500 => Some("500 internal server error"),
        502 => Some("502 bad gateway"),
        503 => Some("503 service unavailable"),
        504 => Some("504 gateway timeout"),
        _ => None,
    }
}

/// Joins an error and its causes with ": ", for one log field.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string().replace('\n', " ");
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string().replace('\n', " "));
        source = cause.source();
    }
    text
}

/// Returns a random number for jitter. The standard library seeds `RandomState` keys from
/// the operating system's random source once per thread and changes them for each new
/// instance, which is enough to spread retries apart.
fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_error(source: OciDistributionError) -> RegistryError {
        RegistryError::Request {
            registry: "127.0.0.1:1".to_owned(),
            repository: "repo".to_owned(),
            operation: "push",
            what: "blob".to_owned(),
            source: Box::new(source),
        }
    }

    fn server_error(code: u16) -> RegistryError {
        request_error(OciDistributionError::ServerError {
            code,
            url: "http://127.0.0.1:1/v2/".to_owned(),
            message: String::new(),
        })
    }

    fn envelope_error(code: &str) -> RegistryError {
        let body = format!(r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#);
        request_error(OciDistributionError::RegistryError {
            envelope: serde_json::from_str(&body).unwrap(),
            url: "http://127.0.0.1:1/v2/".to_owned(),
        })
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            max_elapsed: Duration::from_secs(10),
        }
    }

    #[test]
    fn transient_statuses_are_retried() {
        for code in [429, 500, 502, 503, 504] {
            assert!(transient_cause(&server_error(code)).is_some(), "{code}");
        }
    }

    #[test]
    fn permanent_statuses_are_not_retried() {
        for code in [400, 401, 403, 404, 405, 409, 416, 501] {
            assert!(transient_cause(&server_error(code)).is_none(), "{code}");
        }
    }

    #[test]
    fn too_many_requests_envelope_is_retried() {
        assert!(transient_cause(&envelope_error("TOOMANYREQUESTS")).is_some());
        assert!(transient_cause(&envelope_error("DENIED")).is_none());
        assert!(transient_cause(&envelope_error("BLOB_UNKNOWN")).is_none());
    }

    #[test]
    fn classified_errors() {
        let digest = crate::digest::Digest::of(b"x");
        let mismatch = RegistryError::DigestMismatch {
            registry: "r".to_owned(),
            repository: "p".to_owned(),
            expected: digest.clone(),
            actual: "sha256:00".to_owned(),
        };
        assert!(transient_cause(&mismatch).is_none());
        let not_found = RegistryError::NotFound {
            registry: "r".to_owned(),
            repository: "p".to_owned(),
            what: "blob".to_owned(),
            source: None,
        };
        assert!(transient_cause(&not_found).is_none());
        let unauthorized = RegistryError::Unauthorized {
            registry: "r".to_owned(),
            repository: "p".to_owned(),
            source: None,
        };
        assert!(transient_cause(&unauthorized).is_none());
        let truncated = RegistryError::Truncated {
            registry: "r".to_owned(),
            repository: "p".to_owned(),
            digest,
            expected: 2,
            actual: 1,
        };
        // A body that ended cleanly but short means a wrong descriptor size.
        assert!(transient_cause(&truncated).is_none());
    }

    #[tokio::test]
    async fn refused_connection_is_retried() {
        // A port that was just free: connecting to it is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = super::super::RegistryClient::new(super::super::RegistryOptions {
            retry: policy(1),
            ..Default::default()
        })
        .unwrap();
        let reference =
            crate::reference::Reference::parse(&format!("127.0.0.1:{port}/a:b")).unwrap();
        let error = client.fetch_manifest(&reference).await.unwrap_err();
        assert_eq!(
            transient_cause(&error),
            Some("connection failed"),
            "{error}"
        );
    }

    #[test]
    fn delays_grow_and_stay_bounded() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_elapsed: Duration::from_secs(60),
        };
        let expected = [100, 200, 400, 800, 1000, 1000];
        for (retry, millis) in (1..).zip(expected) {
            let upper = Duration::from_millis(millis);
            assert_eq!(policy.max_delay_before(retry), upper, "retry {retry}");
            for _ in 0..50 {
                let delay = policy.delay_before(retry);
                assert!(delay >= upper / 2, "retry {retry}: {delay:?}");
                assert!(delay <= upper, "retry {retry}: {delay:?}");
            }
        }
        assert_eq!(policy.max_delay_before(u32::MAX), policy.max_delay);
    }

    #[test]
    fn attempts_stop_at_maximum() {
        let mut attempts = Attempts::new(&policy(3));
        let error = server_error(503);
        assert!(attempts.next_delay(&error).is_some());
        assert!(attempts.next_delay(&error).is_some());
        assert!(attempts.next_delay(&error).is_none());
        assert_eq!(attempts.tries(), 3);
        let given_up = attempts.give_up(error);
        assert!(
            matches!(
                given_up,
                RegistryError::RetriesExhausted { attempts: 3, .. }
            ),
            "{given_up}"
        );
    }

    #[test]
    fn attempts_stop_at_time_bound() {
        let mut short = policy(100);
        short.base_delay = Duration::from_millis(50);
        short.max_delay = Duration::from_millis(50);
        short.max_elapsed = Duration::from_millis(10);
        let mut attempts = Attempts::new(&short);
        assert!(attempts.next_delay(&server_error(503)).is_none());
        assert_eq!(attempts.tries(), 1);
    }

    #[test]
    fn permanent_error_is_returned_unchanged() {
        let mut attempts = Attempts::new(&policy(3));
        let error = server_error(404);
        assert!(attempts.next_delay(&error).is_none());
        let returned = attempts.give_up(error);
        assert!(
            matches!(returned, RegistryError::Request { .. }),
            "{returned}"
        );
    }

    #[tokio::test]
    async fn with_retries_recovers_after_transient_failures() {
        let mut calls = 0;
        let subject = "blob";
        let operation = Operation {
            name: "push blob",
            registry: "127.0.0.1:1",
            subject: &subject,
        };
        let result = with_retries(&policy(5), operation, || {
            calls += 1;
            let outcome = if calls < 3 {
                Err(server_error(503))
            } else {
                Ok(calls)
            };
            async move { outcome }
        })
        .await;
        assert_eq!(result.unwrap(), 3);
    }

    #[tokio::test]
    async fn with_retries_stops_on_permanent_failure() {
        let mut calls = 0;
        let subject = "blob";
        let operation = Operation {
            name: "push blob",
            registry: "127.0.0.1:1",
            subject: &subject,
        };
        let result: Result<(), _> = with_retries(&policy(5), operation, || {
            calls += 1;
            async { Err(server_error(403)) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }
}
