//! A blob download that enforces the descriptor's size and surfaces digest failures.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream::BoxStream;
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};
use tokio_util::io::StreamReader;

use super::RegistryError;
use crate::digest::Digest;

/// The bytes of one blob, checked against its descriptor.
///
/// oci-client verifies the digest when the stream reaches its end; this wrapper turns that
/// failure into [`RegistryError::DigestMismatch`], fails as soon as more than `size` bytes
/// arrive, and fails at the end when fewer did. Every error is an `io::Error` whose inner
/// error is a [`RegistryError`].
pub(crate) struct CheckedStream {
    inner: BoxStream<'static, io::Result<Bytes>>,
    registry: String,
    repository: String,
    digest: Digest,
    size: u64,
    received: u64,
    done: bool,
    failure_slot: Option<FailureSlot>,
}

/// Receives a [`CheckedStream`]'s failure when the stream feeds an upload, where the
/// HTTP client would otherwise bury the error inside its own.
pub(crate) type FailureSlot = Arc<Mutex<Option<RegistryError>>>;

impl CheckedStream {
    pub(crate) fn new(
        inner: BoxStream<'static, io::Result<Bytes>>,
        registry: &str,
        repository: &str,
        digest: &Digest,
        size: u64,
    ) -> Self {
        CheckedStream {
            inner,
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            digest: digest.clone(),
            size,
            received: 0,
            done: false,
            failure_slot: None,
        }
    }

    /// Stores the first failure in `slot` instead of inside the yielded `io::Error`.
    pub(crate) fn with_failure_slot(mut self, slot: FailureSlot) -> Self {
        self.failure_slot = Some(slot);
        self
    }

    fn fail(&mut self, error: RegistryError) -> Poll<Option<io::Result<Bytes>>> {
        self.done = true;
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
}

impl Stream for CheckedStream {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match futures_util::ready!(this.inner.as_mut().poll_next(cx)) {
            Some(Ok(chunk)) => {
                this.received += chunk.len() as u64;
                if this.received > this.size {
                    let error = RegistryError::SizeExceeded {
                        registry: this.registry.clone(),
                        repository: this.repository.clone(),
                        digest: this.digest.clone(),
                        expected: this.size,
                    };
                    return this.fail(error);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Some(Err(error)) => {
                let digest_error = error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>());
                let error = match digest_error {
                    Some(_) if this.received < this.size => this.truncated(),
                    Some(oci_client::errors::DigestError::VerificationError { actual, .. }) => {
                        RegistryError::DigestMismatch {
                            registry: this.registry.clone(),
                            repository: this.repository.clone(),
                            expected: this.digest.clone(),
                            actual: actual.clone(),
                        }
                    }
                    _ => RegistryError::BlobRead {
                        registry: this.registry.clone(),
                        repository: this.repository.clone(),
                        digest: this.digest.clone(),
                        source: error,
                    },
                };
                this.fail(error)
            }
            None => {
                // The digest matched, so a short count means the descriptor's size is wrong.
                if this.received != this.size {
                    let error = this.truncated();
                    return this.fail(error);
                }
                this.done = true;
                Poll::Ready(None)
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

    #[tokio::test]
    async fn exact_stream_passes() {
        let chunks = vec![Ok(Bytes::from_static(b"abc"))];
        let all = checked(chunks, 3).try_collect::<Vec<_>>().await.unwrap();
        assert_eq!(all.concat(), b"abc");
    }
}
