//! An idle timeout for request bodies: a body that yields nothing for the configured time
//! fails with [`BodyError::Idle`], wherever the reader is (a multipart preamble, an ignored
//! part, the file itself).
//!
//! Invariant: no upload can hold its handler, temp file or quota reservation longer than the
//! idle limit without sending bytes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

/// Why a body stream failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Nothing arrived for too long.
    #[error("the request body stalled")]
    Idle,
    /// A multipart preamble or part header block longer than the parser may buffer.
    #[error("a multipart preamble or part header is too long")]
    Framing,
    /// The connection failed or the client went away.
    #[error("the request body broke off: {0}")]
    Broken(#[from] axum::Error),
}

/// Wraps a body stream with an idle timeout.
pub struct IdleTimeout<S> {
    inner: S,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    /// Fail when `inner` yields nothing for `limit`.
    pub fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl<S> Stream for IdleTimeout<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                let deadline = Instant::now() + this.limit;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(item.map(|r| r.map_err(BodyError::from)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Idle))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_stalled_body_fails_and_a_flowing_one_does_not() {
        let flowing = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"a")),
            Ok(Bytes::from_static(b"b")),
        ]);
        let got: Vec<_> = IdleTimeout::new(flowing, Duration::from_millis(50))
            .collect()
            .await;
        assert_eq!(got.len(), 2);
        let stalled = futures_util::stream::pending::<Result<Bytes, axum::Error>>();
        let mut s = IdleTimeout::new(stalled, Duration::from_millis(50));
        assert!(matches!(s.next().await, Some(Err(BodyError::Idle))));
    }
}
