//! Idle HTTP/1 keep-alive connections hold a socket and a few hundred bytes, not hyper's buffers.
//!
//! hyper keeps, for every HTTP/1 connection it serves, an 8 KiB read buffer, an 8 KiB write
//! buffer and the last response's header map (2.4 KiB with the security headers), also while
//! the connection waits for its next request: 10,000 idle keep-alive connections held 208 MiB
//! (issue 17). Like Kestrel and memcached, coffer lets go of them while a connection is idle.
//! [`serve_http1`] hands a connection to hyper when it has bytes to read, and once hyper has
//! been idle on it for [`PARK_AFTER`] (no request in flight, every byte of the last answer
//! written and flushed, nothing read since), asks hyper to stop (`graceful_shutdown`, which on
//! an idle HTTP/1 connection closes nothing and writes nothing), takes the socket back
//! (`into_parts`, with any bytes hyper had read ahead) and waits for the socket to become
//! readable again, holding no buffer. The next request gets a fresh hyper connection.
//!
//! What an idle connection still holds (its task, about 1.2 KiB, the socket's registration and
//! two small counters) is allocated as it is accepted (`Conn`), next to other connections'
//! and not among the buffers of its first request: glibc gives back the freed buffers' pages
//! (`memory::give_back` once the busy count halves), but a page with one live byte stays.
//! Measured with 10,000 idle connections: 237 MiB before parking, 82 MiB parked with the
//! counters made per request, 58 MiB as now (28 MiB with none).
//!
//! Invariant: parking never changes what a client sees. A connection is parked only when hyper
//! is idle on it; if a request slips in between the decision and hyper's stop (hyper then
//! answers it with `connection: close`), the connection is closed after that answer, as it
//! said. Bytes hyper read ahead are served first, before the socket is read again. A parked
//! connection is closed after the header read timeout, as hyper closes an idle one, and at once
//! on shutdown.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::watch;

use super::Shared;

/// How long hyper must have been idle on a connection before it is parked. Long enough that a
/// client sending requests back to back never pays for a fresh hyper connection, short enough
/// that a burst of connections which then go quiet lets go of their buffers within a second.
pub(super) const PARK_AFTER: Duration = Duration::from_millis(500);

/// A connection that can say when its socket has bytes (or an end) to read, without reading.
pub(crate) trait ReadReady {
    /// Ready once a read would not block (spurious wake-ups allowed).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

impl<T: ReadReady> ReadReady for tokio_rustls::server::TlsStream<T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper parks only after its reads came back empty, so rustls holds no plaintext then:
        // the next bytes of the connection arrive on the socket.
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// What one connection's hyper is doing, told by the socket wrapper ([`Tracked`]) and by each
/// request's [`Busy`] guard. One connection's requests run in its own task; the atomics only
/// make the type `Send`.
#[derive(Default)]
pub(crate) struct Activity {
    /// Bumped by every read that returned bytes, every write and every request.
    events: AtomicU64,
    /// Requests handed to the service.
    requests: AtomicU64,
    /// Requests whose answer's body is not done yet.
    open: AtomicU64,
    /// A write since the last completed flush: hyper may still hold bytes of an answer.
    unflushed: AtomicBool,
}

impl Activity {
    /// Count a request handed to the service; the guard marks its answer done when dropped
    /// (with the answer's body, or with the request if it never got one).
    pub(crate) fn dispatch(self: &Arc<Self>) -> Busy {
        self.events.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// No answer in flight and every written byte flushed.
    fn quiet(&self) -> bool {
        self.open.load(Ordering::Relaxed) == 0 && !self.unflushed.load(Ordering::Relaxed)
    }
}

/// Held by a request until its answer's body is done (see [`Activity::dispatch`]).
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.events.fetch_add(1, Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The socket as hyper sees it: reports reads and writes to the connection's [`Activity`],
/// and first replays the bytes a previous hyper connection had read ahead.
pub(crate) struct Tracked<I> {
    inner: I,
    ahead: Bytes,
    activity: Arc<Activity>,
}

impl<I> Tracked<I> {
    /// Wrap a connection whose hyper reports to `activity`.
    pub(crate) fn new(inner: I, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            ahead: Bytes::new(),
            activity,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ahead.is_empty() {
            let n = self.ahead.len().min(buf.remaining());
            let first = self.ahead.split_to(n);
            buf.put_slice(&first);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.events.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> Tracked<I> {
    fn wrote<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.activity.events.fetch_add(1, Ordering::Relaxed);
        self.activity.unflushed.store(true, Ordering::Relaxed);
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        // hyper flushes the socket only once its own buffer is empty.
        if matches!(r, Poll::Ready(Ok(()))) {
            self.activity.unflushed.store(false, Ordering::Relaxed);
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How one hyper connection on the socket ended.
enum Ended {
    /// hyper stopped on an idle connection at our asking: the socket goes on.
    Parked,
    /// The client closed, an error, a timeout, a shutdown, or an answer that said
    /// `connection: close`: the socket is closed.
    Closed,
}

/// Serve HTTP/1 on `io` until the client leaves, the connection fails, or `stop` says the
/// server is shutting down; between requests the connection is parked (see the module docs).
/// A parked connection waits for its next request at most the header read timeout.
///
/// A plain `fn` returning an `async` block, not an `async fn`: an `async fn` keeps each argument
/// twice in its future (as passed and as bound), and this future is most of what an idle
/// connection holds.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
pub(super) fn serve_http1<I, S>(
    mut io: Tracked<I>,
    mut service: S,
    activity: Arc<Activity>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> impl Future<Output = ()>
where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
    S: HttpService<Incoming> + Unpin,
    S::Future: Unpin,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async move {
        let mut first = true;
        loop {
            if !first && io.ahead.is_empty() {
                let _parked = shared.state.metrics.connection_parked();
                let woke = tokio::select! {
                    r = tokio::time::timeout(shared.header_timeout, std::future::poll_fn(|cx| io.inner.poll_read_ready(cx))) => matches!(r, Ok(Ok(()))),
                    _ = stop.changed() => false,
                };
                if !woke {
                    return;
                }
            }
            first = false;
            // On the heap, and only while the connection is busy: a parked connection's task
            // holds none of hyper's state.
            let mut conn = Box::new(shared.http1.serve_connection(TokioIo::new(io), service));
            let ended = run_until_idle(&mut conn, &activity, &mut stop).await;
            let hyper::server::conn::http1::Parts {
                io: back,
                read_buf,
                service: returned,
                ..
            } = conn.into_parts();
            io = back.into_inner();
            service = returned;
            match ended {
                // Copied out: hyper's `read_buf`, even when empty, keeps its whole 8 KiB buffer.
                Ended::Parked => io.ahead = Bytes::copy_from_slice(&read_buf),
                Ended::Closed => {
                    drop(read_buf);
                    // hyper did not shut the socket down (`poll_without_shutdown`): an answer the
                    // parser made is replaced and the close is lingered here (`ParserErrors`).
                    let _ = io.inner.shutdown().await;
                    return;
                }
            }
        }
    }
}

/// Drive one hyper connection until it ends, asking it to stop once it has been idle for
/// [`PARK_AFTER`] (or at shutdown).
async fn run_until_idle<I, S>(
    conn: &mut hyper::server::conn::http1::Connection<TokioIo<Tracked<I>>, S>,
    activity: &Activity,
    stop: &mut watch::Receiver<bool>,
) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming> + Unpin,
    S::Future: Unpin,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = activity.requests();
    // Requests counted when hyper was asked to stop on an idle connection.
    let mut parking: Option<u64> = None;
    let mut stopping = *stop.borrow();
    if stopping {
        Pin::new(&mut *conn).graceful_shutdown();
    }
    let mut seen = activity.events();
    let tick = tokio::time::sleep(PARK_AFTER);
    tokio::pin!(tick);
    let served = loop {
        tokio::select! {
            r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => match r {
                Ok(()) => break true,
                Err(e) => {
                    tracing::debug!(error = %e, "connection ended with an error");
                    break false;
                }
            },
            changed = stop.changed(), if !stopping => {
                // A closed channel is a server gone: stop too.
                if changed.is_err() || *stop.borrow() {
                    stopping = true;
                    Pin::new(&mut *conn).graceful_shutdown();
                }
            }
            () = &mut tick, if !stopping && parking.is_none() => {
                let now = activity.events();
                // Idle for a whole period, after at least one answer on this hyper connection
                // (one that has served nothing yet is still waiting for its first head).
                if now == seen && activity.quiet() && activity.requests() > started {
                    parking = Some(activity.requests());
                    Pin::new(&mut *conn).graceful_shutdown();
                } else {
                    seen = now;
                    tick.as_mut().reset(tokio::time::Instant::now() + PARK_AFTER);
                }
            }
        }
    };
    match parking {
        // hyper stopped cleanly with no request since it was asked: it was idle.
        Some(asked) if served && !stopping && activity.requests() == asked => Ended::Parked,
        _ => Ended::Closed,
    }
}
