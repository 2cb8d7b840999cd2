//! Send deadlines: a peer that accepts no bytes for the configured time has its connection
//! closed ([`SendTimeout`]), and an HTTP/2 stream whose flow-control window stays shut that
//! long is reset ([`StreamExec`], [`StreamBody`]).
//!
//! Invariant: a client that stops reading a response holds its buffers and open file for at
//! most `server.send_timeout_secs`, after which the connection fails (or, over HTTP/2, the
//! stream is reset while the connection and its other streams go on) and everything is
//! dropped. Writes that make progress, however slowly, reset the deadline.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A connection whose writes fail once they have been blocked for `limit`.
pub(crate) struct SendTimeout<T> {
    inner: T,
    limit: Duration,
    /// When a write last went through.
    progress: Instant,
    /// Fires at `progress + limit` (or later); made at the first blocked write and moved only
    /// when it fires, so a busy connection does not touch the timer wheel per write.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> SendTimeout<T> {
    /// Wrap `inner`.
    pub(crate) fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            progress: Instant::now(),
            timer: None,
        }
    }

    /// The wrapped connection.
    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Pass on a write's result; while it is blocked, fail it once `limit` has passed since
    /// the last write that went through.
    fn watch<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.progress = Instant::now();
            return r;
        }
        let deadline = self.progress + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer accepted no data within the send timeout",
                )));
            }
            // Writes went through since it was set: wait for the current deadline.
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

impl<T: super::park::ReadReady> super::park::ReadReady for SendTimeout<T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_read_ready(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, r)
    }
}

/// Per HTTP/2 stream: when the response body last handed hyper a chunk that has not been
/// sent on yet (hyper asks for the next chunk only once the previous one is passed to the
/// connection, which a shut flow-control window prevents).
#[derive(Debug, Default)]
pub(crate) struct StreamProgress {
    waiting_since: std::sync::Mutex<Option<Instant>>,
}

impl StreamProgress {
    fn set(&self, since: Option<Instant>) {
        if let Ok(mut w) = self.waiting_since.lock() {
            *w = since;
        }
    }

    fn waiting_since(&self) -> Option<Instant> {
        self.waiting_since.lock().ok().and_then(|w| *w)
    }
}

tokio::task_local! {
    /// The progress of the HTTP/2 stream whose task is running (set by [`StreamExec`]).
    static STREAM: std::sync::Arc<StreamProgress>;
}

/// The executor of an HTTP/2 connection's stream tasks: each runs with its own
/// [`StreamProgress`], and is dropped (h2 then resets the stream with CANCEL) once its body has
/// waited `limit` for the peer to open its window.
#[derive(Clone)]
pub(crate) struct StreamExec {
    pub(crate) limit: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let progress = std::sync::Arc::new(StreamProgress::default());
        let watched = Watched {
            inner: Box::pin(STREAM.scope(progress.clone(), fut)),
            progress,
            limit: self.limit,
            timer: None,
        };
        tokio::spawn(watched);
    }
}

/// A stream task that ends early when its body stalls on a shut window.
struct Watched<F> {
    inner: Pin<Box<tokio::task::futures::TaskLocalFuture<std::sync::Arc<StreamProgress>, F>>>,
    progress: std::sync::Arc<StreamProgress>,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<F: std::future::Future<Output = ()>> std::future::Future for Watched<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let Some(since) = self.progress.waiting_since() else {
            return Poll::Pending;
        };
        let deadline = since + self.limit;
        if Instant::now() >= deadline {
            tracing::debug!(
                "HTTP/2 stream reset: the peer kept its window shut past the send timeout"
            );
            return Poll::Ready(());
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().reset(deadline);
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// The most an HTTP/2 stream's body hands h2 at once (h2's own frame size).
pub(crate) const H2_PIECE: usize = 16 * 1024;

/// A response body over HTTP/2 that reports to its stream's [`StreamProgress`]: a chunk handed
/// over starts the wait for the peer, the next poll (the chunk went on) ends it. Over HTTP/1
/// it hands hyper one chunk at a time: the next only once the last one is written out.
///
/// Over HTTP/2 it hands h2 pieces of at most [`H2_PIECE`] bytes, each a copy: h2 takes a piece
/// as soon as the stream has a byte of window and keeps what the window does not let out, also
/// after the stream's task (and its send timeout) ended. So a peer that never opens its window
/// pins at most one small piece per stream (and the streams it may open), never a large read
/// buffer a slice would keep alive.
pub(crate) struct StreamBody {
    inner: axum::body::Body,
    progress: Option<std::sync::Arc<StreamProgress>>,
    /// Over HTTP/2: what is left of the chunk being cut into pieces.
    rest: bytes::Bytes,
    /// Over HTTP/2: the connection's count of answers under way, dropped with the body.
    _live: Option<LiveStream>,
    /// Over HTTP/1: tells the connection its answer is out once the body is dropped (hyper
    /// drops it when done), so that an idle connection can be parked; and when hyper has
    /// written out the last chunk.
    busy: Option<super::park::Busy>,
    /// Over HTTP/1, the connection's flush count when the last chunk was handed to hyper.
    handed_at: Option<u32>,
}

impl StreamBody {
    /// Wrap `inner`, inside the stream's task (outside one, it reports nowhere); `busy` is the
    /// request's mark on an HTTP/1 connection.
    pub(crate) fn new(
        inner: axum::body::Body,
        busy: Option<super::park::Busy>,
        live: Option<LiveStream>,
    ) -> Self {
        Self {
            inner,
            progress: STREAM.try_with(std::sync::Arc::clone).ok(),
            rest: bytes::Bytes::new(),
            _live: live,
            busy,
            handed_at: None,
        }
    }

    /// The next piece of the chunk being cut, copied out of it.
    fn piece(&mut self) -> bytes::Bytes {
        let n = self.rest.len().min(H2_PIECE);
        let piece = bytes::Bytes::copy_from_slice(self.rest.get(..n).unwrap_or_default());
        bytes::Buf::advance(&mut self.rest, n);
        if self.rest.is_empty() {
            // Let the chunk's buffer go as soon as its last byte is copied.
            self.rest = bytes::Bytes::new();
        }
        piece
    }
}

/// One answer under way on an HTTP/2 connection (see [`LiveStreams`]).
pub(crate) struct LiveStream(std::sync::Arc<LiveStreams>);

impl Drop for LiveStream {
    fn drop(&mut self) {
        self.0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if let Ok(mut at) = self.0.last_end.lock() {
            *at = Instant::now();
        }
    }
}

/// How many answers of an HTTP/2 connection are under way, and when the last one ended, so the
/// connection can be closed once it has been idle too long.
pub(crate) struct LiveStreams {
    count: std::sync::atomic::AtomicUsize,
    last_end: std::sync::Mutex<Instant>,
}

impl LiveStreams {
    pub(crate) fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            count: std::sync::atomic::AtomicUsize::new(0),
            last_end: std::sync::Mutex::new(Instant::now()),
        })
    }

    /// An answer starts.
    pub(crate) fn start(self: &std::sync::Arc<Self>) -> LiveStream {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        LiveStream(self.clone())
    }

    /// How long no answer has been under way (`None` while one is).
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        if self.count.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return None;
        }
        self.last_end.lock().ok().map(|at| at.elapsed())
    }
}

impl hyper::body::Body for StreamBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if let (Some(busy), Some(mark)) = (&self.busy, self.handed_at)
            && !busy.flushed_since(mark)
        {
            return Poll::Pending;
        }
        if self.progress.is_some() {
            return self.poll_piece(cx);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Some(busy), Poll::Ready(Some(Ok(frame)))) = (&self.busy, &polled)
            && frame.is_data()
        {
            self.handed_at = Some(busy.flushes());
        }
        if let Some(p) = &self.progress {
            match &polled {
                Poll::Ready(Some(Ok(frame))) if frame.is_data() => p.set(Some(Instant::now())),
                _ => p.set(None),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = hyper::body::SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

impl StreamBody {
    /// Over HTTP/2: the next piece, from the chunk being cut or from the next chunk.
    fn poll_piece(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        let polled = if self.rest.is_empty() {
            match hyper::body::Body::poll_frame(Pin::new(&mut self.inner), cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.rest = data;
                        Poll::Ready(Some(Ok(hyper::body::Frame::data(self.piece()))))
                    }
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                other => other,
            }
        } else {
            Poll::Ready(Some(Ok(hyper::body::Frame::data(self.piece()))))
        };
        if let Some(p) = &self.progress {
            match &polled {
                Poll::Ready(Some(Ok(frame))) if frame.is_data() => p.set(Some(Instant::now())),
                _ => p.set(None),
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn over_http2_a_body_is_handed_on_in_small_copied_pieces() {
        let chunk = bytes::Bytes::from(vec![7u8; 3 * H2_PIECE + 5]);
        let range = chunk.as_ptr() as usize..chunk.as_ptr() as usize + chunk.len();
        let inner = axum::body::Body::from(chunk);
        let progress = std::sync::Arc::new(StreamProgress::default());
        let pieces = STREAM
            .scope(progress, async move {
                let mut body = StreamBody::new(inner, None, None);
                let mut pieces = Vec::new();
                while let Some(frame) = std::future::poll_fn(|cx| {
                    hyper::body::Body::poll_frame(Pin::new(&mut body), cx)
                })
                .await
                {
                    pieces.push(frame.unwrap().into_data().unwrap());
                }
                assert!(hyper::body::Body::is_end_stream(&body));
                pieces
            })
            .await;
        let lens: Vec<usize> = pieces.iter().map(bytes::Bytes::len).collect();
        assert_eq!(lens, [H2_PIECE, H2_PIECE, H2_PIECE, 5]);
        for p in &pieces {
            assert!(
                !range.contains(&(p.as_ptr() as usize)),
                "a slice, not a copy"
            );
        }
    }

    #[tokio::test]
    async fn a_blocked_write_fails_after_the_limit_and_progress_resets_it() {
        // A pipe whose reader never reads: writes block once its buffer is full.
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = SendTimeout::new(a, Duration::from_millis(200));
        w.write_all(&[0; 1024]).await.unwrap();
        // Draining makes room: the next writes succeed (progress resets the deadline).
        let mut sink = vec![0; 1024];
        tokio::io::AsyncReadExt::read_exact(&mut b, &mut sink)
            .await
            .unwrap();
        w.write_all(&[0; 1024]).await.unwrap();
        // Now nothing reads: the write fails with TimedOut once the limit passes.
        let err = w.write_all(&[0; 10]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
