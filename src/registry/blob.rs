//! A blob download that enforces the descriptor's size and digest and resumes after a
//! broken connection.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, Stream};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};
use tokio_util::io::StreamReader;

use super::RegistryError;
use super::retry::{self, Attempts, RetryPolicy};
use crate::digest::{Digest, Hasher};

/// A body stream of a blob response.
pub(crate) type BodyStream = BoxStream<'static, io::Result<Bytes>>;

/// The response to a request for the rest of a blob.
pub(crate) enum Reopened {
    /// The registry honoured the `Range` request: the body starts at the requested offset.
    FromOffset(BodyStream),
    /// The registry sent the whole blob, so the bytes already received are skipped.
    FromStart(BodyStream),
}

/// Requests a blob again from a byte offset.
pub(crate) type Reopen =
    Arc<dyn Fn(u64) -> BoxFuture<'static, Result<Reopened, RegistryError>> + Send + Sync>;

/// The bytes of one blob, checked against its descriptor.
///
/// The stream hashes every byte it yields and compares the digest at the end, fails as
/// soon as more than `size` bytes arrive, and fails at the end when fewer did. When the
/// connection breaks, it requests the rest with an HTTP `Range`
/// from the first byte not yet received. When the registry sends the whole blob again,
/// the stream skips the bytes it already has, so the digest covers every byte once.
/// Every error is an `io::Error` whose inner error is a [`RegistryError`].
pub(crate) struct CheckedStream {
    inner: Option<BodyStream>,
    registry: String,
    repository: String,
    digest: Digest,
    size: u64,
    received: u64,
    hasher: Option<Hasher>,
    done: bool,
    failure_slot: Option<FailureSlot>,
    resume: Option<Resume>,
}

/// The state a [`CheckedStream`] keeps to resume.
struct Resume {
    reopen: Reopen,
    policy: RetryPolicy,
    /// The tries since the stream last made progress.
    attempts: Attempts,
    /// `received` at the last failure, to tell a stall from progress.
    received_at_failure: u64,
    pending: Option<BoxFuture<'static, Result<Reopened, RegistryError>>>,
    /// Bytes still to drop from the start of a body that began at offset 0.
    skip: u64,
}

/// Receives a [`CheckedStream`]'s failure when the stream feeds an upload, where the
/// HTTP client would otherwise bury the error inside its own.
pub(crate) type FailureSlot = Arc<Mutex<Option<RegistryError>>>;

impl CheckedStream {
    pub(crate) fn new(
        inner: BodyStream,
        registry: &str,
        repository: &str,
        digest: &Digest,
        size: u64,
    ) -> Self {
        CheckedStream {
            inner: Some(inner),
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            digest: digest.clone(),
            size,
            received: 0,
            hasher: Some(Hasher::default()),
            done: false,
            failure_slot: None,
            resume: None,
        }
    }

    /// Lets the stream request the rest of the blob with `reopen` after a transient
    /// failure, as often as `policy` allows without progress in between.
    pub(crate) fn with_resume(mut self, reopen: Reopen, policy: &RetryPolicy) -> Self {
        self.resume = Some(Resume {
            reopen,
            policy: policy.clone(),
            attempts: Attempts::new(policy),
            received_at_failure: 0,
            pending: None,
            skip: 0,
        });
        self
    }

    /// Stores the first failure in `slot` instead of inside the yielded `io::Error`.
    pub(crate) fn with_failure_slot(mut self, slot: FailureSlot) -> Self {
        self.failure_slot = Some(slot);
        self
    }

    fn fail(&mut self, error: RegistryError) -> Poll<Option<io::Result<Bytes>>> {
        self.done = true;
        self.inner = None;
        let Some(slot) = &self.failure_slot else {
            return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, error))));
        };
        let message = error.to_string();
        slot.lock()
            .expect("no code panics while holding the failure slot")
            .get_or_insert(error);
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            message,
        ))))
    }

    fn truncated(&self) -> RegistryError {
        RegistryError::Truncated {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            digest: self.digest.clone(),
            expected: self.size,
            actual: self.received,
        }
    }

    /// Schedules a request for the rest of the blob after `error`, or fails the stream
    /// when the error is permanent or no try is left.
    fn resume_or_fail(&mut self, error: RegistryError) -> Option<Poll<Option<io::Result<Bytes>>>> {
        self.inner = None;
        let Some(resume) = self.resume.as_mut() else {
            return Some(self.fail(error));
        };
        if self.received > resume.received_at_failure {
            resume.attempts = Attempts::new(&resume.policy);
        }
        resume.received_at_failure = self.received;
        let Some(delay) = resume.attempts.next_delay(&error) else {
            let error = resume.attempts.give_up(error);
            return Some(self.fail(error));
        };
        let operation = retry::Operation {
            name: "read blob",
            registry: &self.registry,
            subject: &self.digest,
        };
        retry::log_retry(operation, &resume.attempts, delay, &error);
        let reopen = resume.reopen.clone();
        let offset = self.received;
        resume.pending = Some(
            async move {
                tokio::time::sleep(delay).await;
                reopen(offset).await
            }
            .boxed(),
        );
        None
    }

    /// Checks at the end of a body that every byte arrived and that the digest matches.
    ///
    /// A body that ends cleanly but short is not resumed: hyper reports a connection
    /// closed before `Content-Length` bytes as an error, so a clean end means the blob is
    /// shorter than its descriptor states.
    fn finish(&mut self) -> Option<Poll<Option<io::Result<Bytes>>>> {
        if self.received < self.size {
            let error = self.truncated();
            return Some(self.fail(error));
        }
        let actual = self.hasher.take().map(Hasher::finish);
        if actual.as_ref() != Some(&self.digest) {
            let error = RegistryError::DigestMismatch {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                expected: self.digest.clone(),
                actual: actual.map_or_else(String::new, |digest| digest.to_string()),
            };
            return Some(self.fail(error));
        }
        self.done = true;
        self.inner = None;
        Some(Poll::Ready(None))
    }

    /// Passes on a chunk after dropping the part a restarted body repeats.
    fn accept(&mut self, mut chunk: Bytes) -> Option<Poll<Option<io::Result<Bytes>>>> {
        if let Some(resume) = self.resume.as_mut()
            && resume.skip > 0
        {
            let dropped = resume.skip.min(chunk.len() as u64);
            resume.skip -= dropped;
            chunk = chunk.split_off(dropped as usize);
            if chunk.is_empty() {
                return None;
            }
        }
        self.received += chunk.len() as u64;
        if self.received > self.size {
            let error = RegistryError::SizeExceeded {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                digest: self.digest.clone(),
                expected: self.size,
            };
            return Some(self.fail(error));
        }
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(&chunk);
        }
        Some(Poll::Ready(Some(Ok(chunk))))
    }
}

impl Stream for CheckedStream {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(resume) = this.resume.as_mut()
                && let Some(pending) = resume.pending.as_mut()
            {
                let reopened = futures_util::ready!(pending.as_mut().poll(cx));
                resume.pending = None;
                match reopened {
                    Ok(Reopened::FromOffset(body)) => {
                        tracing::debug!(digest = %this.digest, offset = this.received, "resumed blob download");
                        this.inner = Some(body);
                    }
                    Ok(Reopened::FromStart(body)) => {
                        tracing::debug!(digest = %this.digest, skip = this.received, "registry ignored the range, restarting blob download");
                        resume.skip = this.received;
                        this.inner = Some(body);
                    }
                    Err(error) => {
                        if let Some(poll) = this.resume_or_fail(error) {
                            return poll;
                        }
                    }
                }
                continue;
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match futures_util::ready!(inner.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => this.accept(chunk),
                Some(Err(error)) => {
                    let digest_error = error
                        .get_ref()
                        .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>());
                    if digest_error {
                        // oci-client checks the digest of a whole-blob response itself. This
                        // stream's own hash decides, because it also covers resumed parts.
                        this.finish()
                    } else {
                        let error = RegistryError::BlobRead {
                            registry: this.registry.clone(),
                            repository: this.repository.clone(),
                            digest: this.digest.clone(),
                            source: error,
                        };
                        this.resume_or_fail(error)
                    }
                }
                None => this.finish(),
            };
            if let Some(poll) = step {
                return poll;
            }
        }
    }
}

/// A streaming blob download; see [`super::RegistryClient::open_blob`].
pub struct BlobReader {
    inner: StreamReader<CheckedStream, Bytes>,
}

impl BlobReader {
    pub(crate) fn new(stream: CheckedStream) -> Self {
        BlobReader {
            inner: StreamReader::new(stream),
        }
    }
}

impl AsyncRead for BlobReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncBufRead for BlobReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_buf(cx)
    }

    fn consume(mut self: Pin<&mut Self>, amount: usize) {
        Pin::new(&mut self.inner).consume(amount)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;

    use super::*;

    fn checked(chunks: Vec<io::Result<Bytes>>, size: u64) -> CheckedStream {
        CheckedStream::new(
            Box::pin(futures_util::stream::iter(chunks)),
            "127.0.0.1:1",
            "repo",
            &Digest::of(b"abc"),
            size,
        )
    }

    fn registry_error(error: &io::Error) -> &RegistryError {
        error.get_ref().unwrap().downcast_ref().unwrap()
    }

    #[tokio::test]
    async fn size_cap_fires_before_end() {
        let chunks = vec![Ok(Bytes::from_static(b"ab")), Ok(Bytes::from_static(b"cd"))];
        let error = checked(chunks, 3)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        assert!(matches!(
            registry_error(&error),
            RegistryError::SizeExceeded { .. }
        ));
    }

    #[tokio::test]
    async fn short_stream_is_truncated() {
        let chunks = vec![Ok(Bytes::from_static(b"ab"))];
        let error = checked(chunks, 3)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        let inner = registry_error(&error);
        assert!(
            matches!(inner, RegistryError::Truncated { actual: 2, .. }),
            "{inner}"
        );
    }

    /// Returns a stream that yields `chunks` and then fails like a broken connection.
    fn broken(chunks: &[&'static [u8]]) -> BodyStream {
        let mut items: Vec<io::Result<Bytes>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        items.push(Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "connection reset",
        )));
        Box::pin(futures_util::stream::iter(items))
    }

    fn body(chunks: &[&'static [u8]]) -> BodyStream {
        let items: Vec<io::Result<Bytes>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    fn fast_policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base_delay: std::time::Duration::from_millis(1),
            max_delay: std::time::Duration::from_millis(2),
            max_elapsed: std::time::Duration::from_secs(5),
        }
    }

    /// Returns a reopen function that records each offset and returns `answer(offset)`.
    fn recording_reopen(
        offsets: Arc<Mutex<Vec<u64>>>,
        answer: fn(u64) -> Result<Reopened, RegistryError>,
    ) -> Reopen {
        Arc::new(move |offset| {
            offsets.lock().unwrap().push(offset);
            Box::pin(futures_util::future::ready(answer(offset)))
        })
    }

    fn resumable(first: BodyStream, reopen: Reopen) -> CheckedStream {
        CheckedStream::new(first, "127.0.0.1:1", "repo", &Digest::of(b"abcdef"), 6)
            .with_resume(reopen, &fast_policy())
    }

    #[tokio::test]
    async fn resumes_from_offset() {
        let offsets = Arc::new(Mutex::new(Vec::new()));
        let reopen = recording_reopen(offsets.clone(), |offset| {
            assert_eq!(offset, 2);
            Ok(Reopened::FromOffset(body(&[b"cd", b"ef"])))
        });
        let all = resumable(broken(&[b"ab"]), reopen)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        assert_eq!(all.concat(), b"abcdef");
        assert_eq!(*offsets.lock().unwrap(), vec![2]);
    }

    #[tokio::test]
    async fn restart_skips_received_prefix() {
        let offsets = Arc::new(Mutex::new(Vec::new()));
        let reopen = recording_reopen(offsets.clone(), |_| {
            Ok(Reopened::FromStart(body(&[b"a", b"bcd", b"ef"])))
        });
        let all = resumable(broken(&[b"ab", b"c"]), reopen)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        assert_eq!(all.concat(), b"abcdef");
        assert_eq!(*offsets.lock().unwrap(), vec![3]);
    }

    #[tokio::test]
    async fn resumed_wrong_content_fails_digest() {
        let offsets = Arc::new(Mutex::new(Vec::new()));
        let reopen = recording_reopen(offsets, |_| Ok(Reopened::FromOffset(body(&[b"XYZ"]))));
        let error = resumable(broken(&[b"abc"]), reopen)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        let inner = registry_error(&error);
        assert!(
            matches!(inner, RegistryError::DigestMismatch { .. }),
            "{inner}"
        );
    }

    #[tokio::test]
    async fn resume_gives_up_without_progress() {
        let offsets = Arc::new(Mutex::new(Vec::new()));
        let reopen = recording_reopen(offsets.clone(), |_| Ok(Reopened::FromOffset(broken(&[]))));
        let error = resumable(broken(&[b"ab"]), reopen)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        let inner = registry_error(&error);
        assert!(
            matches!(inner, RegistryError::RetriesExhausted { attempts: 3, .. }),
            "{inner}"
        );
        assert_eq!(*offsets.lock().unwrap(), vec![2, 2]);
    }

    #[tokio::test]
    async fn exact_stream_passes() {
        let chunks = vec![Ok(Bytes::from_static(b"abc"))];
        let all = checked(chunks, 3).try_collect::<Vec<_>>().await.unwrap();
        assert_eq!(all.concat(), b"abc");
    }
}
