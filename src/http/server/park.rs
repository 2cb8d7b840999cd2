//! Idle HTTP/1 keep-alive connections hold a socket and a few hundred bytes, not hyper's buffers.
//!
//! hyper keeps, for every HTTP/1 connection it serves, an 8 KiB read buffer, an 8 KiB write
//! buffer and the last response's header map (2.4 KiB with the security headers), also while
//! the connection waits for its next request: 10,000 idle keep-alive connections held 208 MiB
//! (issue 17). Like Kestrel and memcached, coffer lets go of them while a connection is idle.
//! [`serve_http1`] hands a connection to hyper when it has bytes to read, and once hyper has
//! been quiet on it for a whole [`PARK_AFTER`] period (so 0.5 to 1 s: no request in flight,
//! every byte of the last answer written and flushed, nothing read), asks hyper to stop
//! (`graceful_shutdown`, which on an idle HTTP/1 connection closes nothing and writes nothing,
//! and ends it at once), takes the socket back (`into_parts`, with any bytes hyper had read
//! ahead) and waits for the socket to become readable again, holding no buffer. The next
//! request gets a fresh hyper connection.
//!
//! What an idle connection still holds (its task, about 1.2 KiB, the socket's registration and
//! two small counters) is allocated as it is accepted (`Conn`), next to other connections'
//! and not among the buffers of its first request: glibc gives back the freed buffers' pages
//! (`memory::give_back` once the busy or the open count halves), but a page with one live byte
//! stays. Measured with 10,000 idle connections: 237 MiB before parking, 82 MiB parked with the
//! counters made per request, 58 MiB as now (28 MiB with none).
//!
//! Invariant: parking never changes what a client sees. A connection is parked only if hyper
//! stops at once when asked, which it does only when idle; otherwise (a request body still
//! being read) it is finished and closed, never parked mid-message. A hyper connection that
//! ends is polled to its end, so its last bytes are flushed and the socket shut down as hyper
//! would. Bytes hyper read ahead are served first, before the socket is read again. The next
//! request head of a parked connection must arrive within the header read timeout counted from
//! when the connection went quiet (at most one `PARK_AFTER` later than hyper alone would count
//! it), not afresh after the park; a parked connection closes at once on shutdown.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Shared;

/// The period a connection must stay quiet, whole, before it is parked (so it is parked 0.5 to
/// 1 s after its last activity). Long enough that a client sending requests back to back never
/// pays for a fresh hyper connection, short enough that a burst of connections which then go
/// quiet lets go of their buffers within a second.
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
        // A connection is parked only after hyper's reads came back empty, so rustls holds no
        // plaintext then: the next bytes of the connection arrive on the socket.
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// What one connection's hyper is doing, told by the socket wrapper ([`Tracked`]) and by each
/// request's [`Busy`] guard. One connection's requests run in its own task; the atomics only
/// make the shared type `Sync`.
///
/// Every idle connection keeps one, so it is small (20 bytes): the counters are 32-bit and
/// only ever compared for change (they wrap), and a body waiting for a flush is woken through
/// the waker hyper passes to that flush, its own task's, not a stored one.
#[derive(Default)]
pub(crate) struct Activity {
    /// Bumped by every read that returned bytes, every write and every request.
    events: AtomicU32,
    /// Requests handed to the service.
    requests: AtomicU32,
    /// Requests whose answer's body is not done yet.
    open: AtomicU32,
    /// Completed flushes: hyper flushes the socket only once its own queue is empty.
    flushes: AtomicU32,
    /// A write since the last completed flush: hyper may still hold bytes of an answer.
    unflushed: AtomicBool,
    /// A response body waits for the next flush ([`Busy::flushed_since`]).
    body_waiting: AtomicBool,
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

    fn events(&self) -> u32 {
        self.events.load(Ordering::Relaxed)
    }

    fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    /// No answer in flight and every written byte flushed.
    fn quiet(&self) -> bool {
        self.open.load(Ordering::Relaxed) == 0 && !self.unflushed.load(Ordering::Relaxed)
    }
}

/// Held by a request until its answer's body is done (see [`Activity::dispatch`]).
pub(crate) struct Busy(Arc<Activity>);

impl Busy {
    /// The connection's count of completed flushes (a mark for [`Self::flushed_since`]).
    pub(crate) fn flushes(&self) -> u32 {
        self.0.flushes.load(Ordering::Acquire)
    }

    /// Whether hyper has flushed since `mark`: everything handed to it then is written to the
    /// socket. If not, its next flush wakes the connection's task (hyper polls an HTTP/1 body
    /// in the connection's own task, and flushes in it), so a body may return `Pending`.
    ///
    /// hyper takes body chunks until its own queue holds `max_buf_size` (64 KiB here) and
    /// only then writes; a slow client's connection kept four or five read buffers queued.
    /// Handing the next chunk only after the last one went out keeps one.
    pub(crate) fn flushed_since(&self, mark: u32) -> bool {
        if self.flushes() != mark {
            return true;
        }
        self.0.body_waiting.store(true, Ordering::Release);
        self.flushes() != mark
    }
}

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
            self.activity.flushes.fetch_add(1, Ordering::Release);
            if self.activity.body_waiting.swap(false, Ordering::AcqRel) {
                cx.waker().wake_by_ref();
            }
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How one hyper connection on the socket ended.
enum Ended {
    /// hyper was idle and stopped at once when asked: the socket goes on, parked. A request
    /// head must then arrive by `head_by` (the header read timeout, counted from when the
    /// connection went quiet, as hyper counts it).
    Parked { head_by: Instant },
    /// hyper is done, or is finishing: the client closed, an error, `connection: close`, a
    /// shutdown, or a request still being read when it was asked to stop. It is driven to the
    /// end (its last bytes flushed, the socket shut down) and the connection closed.
    Finishing,
    /// No request head by the deadline carried over from before the park: dropped without a
    /// word, as hyper's own header timeout does.
    Expired,
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
        let mut head_by: Option<Instant> = None;
        loop {
            if let Some(deadline) = head_by
                && io.ahead.is_empty()
            {
                let _parked = shared.state.metrics.connection_parked();
                let ready = std::future::poll_fn(|cx| io.inner.poll_read_ready(cx));
                let woke = tokio::select! {
                    r = tokio::time::timeout_at(deadline, ready) => matches!(r, Ok(Ok(()))),
                    _ = stop.changed() => false,
                };
                if !woke {
                    return;
                }
            }
            // On the heap, and only while the connection is busy: a parked connection's task
            // holds none of hyper's state.
            let mut conn = Box::new(shared.http1.serve_connection(TokioIo::new(io), service));
            let ended = run_until_idle(
                &mut conn,
                &activity,
                &mut stop,
                head_by,
                shared.header_timeout,
            )
            .await;
            match ended {
                Ended::Parked { head_by: next } => {
                    let hyper::server::conn::http1::Parts {
                        io: back,
                        read_buf,
                        service: returned,
                        ..
                    } = conn.into_parts();
                    io = back.into_inner();
                    // Copied out: hyper's `read_buf`, even when empty, keeps its whole 8 KiB
                    // buffer.
                    io.ahead = Bytes::copy_from_slice(&read_buf);
                    service = returned;
                    head_by = Some(next);
                }
                Ended::Finishing => {
                    // Polled as a future, hyper flushes what it still holds and shuts the
                    // socket down (through `ParserErrors`, which replaces a parser-made answer
                    // and lingers). Bounded: a peer that reads nothing is cut off by the send
                    // timeout, one that sends nothing by this limit.
                    let limit = shared.send_timeout.max(shared.header_timeout);
                    let _ = tokio::time::timeout(limit, &mut *conn).await;
                    return;
                }
                Ended::Expired => return,
            }
        }
    }
}

/// Drive one hyper connection until it ends, asking it to stop once it has been quiet for a
/// whole [`PARK_AFTER`] period after at least one answer (or at shutdown). `head_by` is the
/// deadline for the first request head of a connection that was parked.
async fn run_until_idle<I, S>(
    conn: &mut hyper::server::conn::http1::Connection<TokioIo<Tracked<I>>, S>,
    activity: &Activity,
    stop: &mut watch::Receiver<bool>,
    head_by: Option<Instant>,
    header_timeout: Duration,
) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming> + Unpin,
    S::Future: Unpin,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = activity.requests();
    // Asked to stop (shutdown, or a park that found hyper busy): only the end is awaited.
    let mut closing = *stop.borrow();
    if closing {
        Pin::new(&mut *conn).graceful_shutdown();
    }
    let mut seen = activity.events();
    let mut quiet_since = Instant::now();
    let tick = tokio::time::sleep(PARK_AFTER);
    tokio::pin!(tick);
    loop {
        tokio::select! {
            r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return Ended::Finishing;
            }
            changed = stop.changed(), if !closing => {
                // A closed channel is a server gone: stop too.
                if changed.is_err() || *stop.borrow() {
                    closing = true;
                    Pin::new(&mut *conn).graceful_shutdown();
                }
            }
            () = &mut tick, if !closing => {
                let now = activity.events();
                let answered = activity.requests() != started;
                if !answered && head_by.is_some_and(|d| Instant::now() >= d) {
                    return Ended::Expired;
                }
                if now == seen && answered && activity.quiet() {
                    // On an idle HTTP/1 connection hyper stops at once, writing nothing. If it
                    // does not, it was still busy (say, reading a body its handler kept): the
                    // connection is finished and closed, never parked mid-message.
                    Pin::new(&mut *conn).graceful_shutdown();
                    match std::future::poll_fn(|cx| Poll::Ready(conn.poll_without_shutdown(cx))).await {
                        Poll::Ready(Ok(())) => return Ended::Parked {
                            head_by: quiet_since + header_timeout,
                        },
                        Poll::Ready(Err(_)) => return Ended::Finishing,
                        Poll::Pending => closing = true,
                    }
                }
                if now != seen {
                    seen = now;
                    quiet_since = Instant::now();
                }
                tick.as_mut().reset(Instant::now() + PARK_AFTER);
            }
        }
    }
}
