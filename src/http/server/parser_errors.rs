//! Answers for requests that hyper's HTTP/1 parser refuses before the service sees them: 400 for
//! a malformed request, 414 for an over-long target, 431 for a request head over the limit.
//!
//! hyper writes those answers itself, bare (a status line, `connection: close`,
//! `content-length: 0`, `date`), then closes the connection, and offers no hook to shape them.
//! [`ParserErrors`] sits between hyper and the socket and follows the framing of what hyper
//! writes ([`framing`]): each response head, then its body by `Content-Length` or chunked
//! coding (none after a 1xx, a 204, a 304 or an answer to HEAD). Every request hyper hands to
//! the service is counted first ([`Dispatched`]), so a response head that starts while no
//! request is waiting for one can only be the parser's. That head is dropped and a complete
//! answer goes out in its place ([`answer`]): the middleware's security headers, a fresh
//! `X-Request-Id` and a problem+json body. The connection is then closed in stages, as RFC
//! 9112 §9.6 advises: the write side first, then what the client still sends is read and
//! discarded (bounded), so that closing with unread bytes does not send a reset that can
//! destroy the answer before the client, or a proxy in front, has read it.
//!
//! Invariant: the bytes of every answer the service produced pass unchanged and in order; what
//! is followed is hyper's own output, never the client's, and a body that happens to contain an
//! HTTP head is skipped by its length, never taken for one. Whatever cannot be followed (a
//! close-delimited body, an upgrade, a head that is not a bare 4xx or 5xx, a count that is off)
//! stops the counting and the replacing for the rest of the connection: at worst hyper's bare
//! answer goes out, never a corrupted stream.

mod answer;
mod framing;

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::http::Method;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use answer::replacement;
use framing::{Asked, Frame, Waiting, walk};

/// After a replaced answer, what the client still sends is read and discarded for at most this
/// long...
const LINGER: Duration = Duration::from_secs(2);
/// ...and at most this much.
const LINGER_BYTES: usize = 1024 * 1024;

/// The requests hyper has handed to the service on one connection whose answers have not
/// started on the wire yet, oldest first (HTTP/1 answers in request order).
#[derive(Clone, Default)]
pub(crate) struct Dispatched(Arc<Mutex<Queue>>);

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Asked>,
    /// Set when the answers are no longer followed: nothing is counted or replaced any more.
    stopped: bool,
}

/// More requests waiting than this means the count is off (hyper dispatches the next
/// request only once the previous answer is written, so about two at most): stop.
const MAX_WAITING: usize = 16;

impl Dispatched {
    /// An empty count with room for the usual number waiting, allocated now: made as the
    /// connection is accepted, it sits with the connection's other long-lived state instead of
    /// among the buffers of its first request (see `park`).
    pub(crate) fn with_room() -> Self {
        Self(Arc::new(Mutex::new(Queue {
            waiting: VecDeque::with_capacity(4),
            stopped: false,
        })))
    }

    /// Count a request. Call it when the service is handed the request, before it can answer.
    pub(crate) fn push(&self, method: &Method) {
        // A poisoned lock is seen by the writer too, which then stops replacing anything.
        if let Ok(mut q) = self.0.lock()
            && !q.stopped
        {
            q.waiting.push_back(Asked::of(method));
            if q.waiting.len() > MAX_WAITING {
                q.stop();
            }
        }
    }
}

impl Queue {
    fn stop(&mut self) {
        self.stopped = true;
        self.waiting = VecDeque::new();
    }
}

/// Where the replacement stands.
enum Answer {
    /// Nothing replaced (yet).
    None,
    /// The replacement, and how much of it is written.
    Sending(Vec<u8>, usize),
    /// Written and shut down: discarding what the client still sends.
    Lingering { until: Pin<Box<Sleep>>, left: usize },
    /// Done.
    Closed,
}

/// A connection whose HTTP/1 parser-made error answers are replaced by complete ones.
pub(crate) struct ParserErrors<T> {
    inner: T,
    dispatched: Dispatched,
    frame: Frame,
    answer: Answer,
    /// Whether answers carry HSTS (`server.behind_tls_proxy`).
    hsts: bool,
    /// For the log line of a refusal.
    peer: IpAddr,
}

impl<T> ParserErrors<T> {
    /// Follow an HTTP/1 connection whose requests are counted in `dispatched`.
    pub(crate) fn new(inner: T, dispatched: Dispatched, hsts: bool, peer: IpAddr) -> Self {
        Self {
            inner,
            dispatched,
            frame: Frame::start(),
            answer: Answer::None,
            hsts,
            peer,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> ParserErrors<T> {
    fn poll_write_bufs(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total = bufs.iter().map(|b| b.len()).sum::<usize>();
        if !matches!(self.answer, Answer::None) {
            // hyper writes nothing after its error head; were it to, it goes with the head.
            return Poll::Ready(Ok(total));
        }
        if matches!(self.frame, Frame::Opaque) {
            return write_prefix(&mut self.inner, cx, bufs, total, total);
        }
        let Self {
            inner,
            dispatched,
            frame,
            answer,
            hsts,
            peer,
        } = self;
        let mut queue = match dispatched.0.lock() {
            Ok(q) if !q.stopped => q,
            _ => {
                *frame = Frame::Opaque;
                return write_prefix(inner, cx, bufs, total, total);
            }
        };
        // Walk ahead to the first head nobody waits for, if any.
        let mut ahead = frame.clone();
        let mut waiting = Waiting::new(&queue.waiting);
        let limit = walk(&mut ahead, bufs, total, &mut waiting, true);
        let taken = waiting.taken();
        if limit == 0 && total > 0 {
            if let Some(bytes) = replacement(bufs, *hsts, *peer) {
                *answer = Answer::Sending(bytes, 0);
                return Poll::Ready(Ok(total));
            }
            *frame = Frame::Opaque;
            queue.stop();
            return write_prefix(inner, cx, bufs, total, total);
        }
        let n = ready!(write_prefix(inner, cx, bufs, limit, total))?;
        let taken = if n == limit {
            *frame = ahead;
            taken
        } else {
            // A short write: follow only what went out.
            let mut waiting = Waiting::new(&queue.waiting);
            walk(frame, bufs, n, &mut waiting, false);
            waiting.taken()
        };
        queue.waiting.drain(..taken);
        if matches!(frame, Frame::Opaque) {
            queue.stop();
        }
        Poll::Ready(Ok(n))
    }

    /// Write out the replacement (a no-op unless there is one).
    fn poll_send_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Answer::Sending(bytes, at) = &mut self.answer {
            let rest = bytes.get(*at..).unwrap_or_default();
            if rest.is_empty() {
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *at += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// Write at most the first `limit` of the `total` bytes in `bufs`.
fn write_prefix<T: AsyncWrite + Unpin>(
    inner: &mut T,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
    limit: usize,
    total: usize,
) -> Poll<io::Result<usize>> {
    if limit == total {
        return match bufs {
            [one] => Pin::new(inner).poll_write(cx, one),
            _ => Pin::new(inner).poll_write_vectored(cx, bufs),
        };
    }
    let mut cut = Vec::with_capacity(bufs.len());
    let mut left = limit;
    for b in bufs {
        if left == 0 {
            break;
        }
        let n = b.len().min(left);
        cut.push(IoSlice::new(b.get(..n).unwrap_or_default()));
        left -= n;
    }
    Pin::new(inner).poll_write_vectored(cx, &cut)
}

/// Read and discard until the client stops sending, closes, `until` passes or `left` runs out.
fn poll_linger<T: AsyncRead + Unpin>(
    inner: &mut T,
    cx: &mut Context<'_>,
    until: &mut Pin<Box<Sleep>>,
    left: &mut usize,
) -> Poll<()> {
    let mut scratch = [0u8; 8192];
    loop {
        if *left == 0 || until.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *inner).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                *left = left.saturating_sub(buf.filled().len());
            }
            // Closed or broken: the client is gone.
            Poll::Ready(_) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    }
}

impl<T: super::park::ReadReady> super::park::ReadReady for ParserErrors<T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_read_ready(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ParserErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ParserErrors<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_bufs(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_bufs(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_answer(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_answer(cx))?;
        loop {
            match &mut this.answer {
                Answer::None => return Pin::new(&mut this.inner).poll_shutdown(cx),
                Answer::Sending(..) => {
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    this.answer = Answer::Lingering {
                        until: Box::pin(tokio::time::sleep(LINGER)),
                        left: LINGER_BYTES,
                    };
                }
                Answer::Lingering { until, left } => {
                    ready!(poll_linger(&mut this.inner, cx, until, left));
                    this.answer = Answer::Closed;
                }
                Answer::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// What hyper writes for a request head over the limit.
    const HYPER_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
        connection: close\r\ncontent-length: 0\r\ndate: Fri, 04 Dec 2026 23:45:06 GMT\r\n\r\n";

    /// What the service answered, in order, with the request each answers; a chunked body
    /// and a body that holds a fake error head among them.
    fn answers() -> Vec<(Method, &'static [u8])> {
        vec![
            (
                Method::GET,
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-request-id: a\r\n\r\nhello",
            ),
            (
                Method::HEAD,
                b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\nx-request-id: b\r\n\r\n",
            ),
            (
                Method::POST,
                b"HTTP/1.1 100 Continue\r\n\r\n\
                HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n\
                1c\r\nHTTP/1.1 400 Bad Request\r\n\r\n\r\n\
                3;ext=1\r\nabc\r\n\
                0\r\nx-trailer: y\r\n\r\n",
            ),
            (
                Method::GET,
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n",
            ),
            (
                Method::GET,
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 27\r\n\r\n\
                HTTP/1.1 400 Bad Request\r\n\r",
            ),
        ]
    }

    /// Run the answers, then hyper's 431, through a wrapper, cutting the answers into writes of
    /// `piece` bytes (vectored, in slices of `slice` bytes) over a pipe of `pipe` bytes. hyper
    /// hands over its error head whole (it encodes a head before writing it), here in one write
    /// with the end of the last answer.
    async fn write_through(piece: usize, slice: usize, pipe: usize) -> Vec<u8> {
        let (a, mut b) = tokio::io::duplex(pipe);
        let dispatched = Dispatched::default();
        let mut w = ParserErrors::new(a, dispatched.clone(), false, [127, 0, 0, 1].into());
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = b.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return out;
                }
                out.extend_from_slice(&chunk[..n]);
                // The server lingers until the client stops sending: stop as soon as the
                // answer is whole.
                if out.ends_with(b"}") {
                    b.shutdown().await.unwrap();
                }
            }
        });
        let mut stream = Vec::new();
        for (method, bytes) in answers() {
            dispatched.push(&method);
            stream.extend_from_slice(bytes);
        }
        let mut parts: Vec<Vec<u8>> = stream.chunks(piece).map(<[u8]>::to_vec).collect();
        parts.last_mut().unwrap().extend_from_slice(HYPER_431);
        for part in &parts {
            let mut part = &part[..];
            while !part.is_empty() {
                let slices: Vec<IoSlice<'_>> = part.chunks(slice).map(IoSlice::new).collect();
                let n = w.write_vectored(&slices).await.unwrap();
                part = &part[n..];
            }
        }
        w.flush().await.unwrap();
        w.shutdown().await.unwrap();
        reader.await.unwrap()
    }

    #[tokio::test]
    async fn only_the_parsers_own_answer_is_replaced_however_writes_are_cut() {
        let legit: Vec<u8> = answers()
            .into_iter()
            .flat_map(|(_, b)| b.to_vec())
            .collect();
        for (piece, slice, pipe) in [
            (1 << 20, 1 << 20, 1 << 20),
            (1, 1, 1 << 20),
            (7, 3, 5),
            (64, 16, 9),
        ] {
            let out = write_through(piece, slice, pipe).await;
            assert!(
                out.starts_with(&legit),
                "({piece}, {slice}, {pipe}) changed an answer"
            );
            let rest = String::from_utf8(out[legit.len()..].to_vec()).unwrap();
            assert!(
                rest.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
                "{rest}"
            );
            for line in [
                "content-type: application/problem+json",
                "connection: close",
                "x-content-type-options: nosniff",
                "x-frame-options: DENY",
                "cache-control: no-store",
            ] {
                assert!(
                    rest.contains(&format!("\r\n{line}\r\n")),
                    "{line} in {rest}"
                );
            }
            let (head, body) = rest.split_once("\r\n\r\n").unwrap();
            let id = head
                .lines()
                .find_map(|l| l.strip_prefix("x-request-id: "))
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["status"], 431);
            assert_eq!(v["request_id"], id);
            assert!(head.contains(&format!("content-length: {}", body.len())));
        }
    }

    #[tokio::test]
    async fn what_cannot_be_followed_passes_unchanged() {
        for first in [
            // A body that runs to the connection's end, then an upgrade.
            &b"HTTP/1.0 200 OK\r\n\r\nstreamed"[..],
            &b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"[..],
        ] {
            let (a, mut b) = tokio::io::duplex(1 << 16);
            let dispatched = Dispatched::default();
            let mut w = ParserErrors::new(a, dispatched.clone(), false, [127, 0, 0, 1].into());
            dispatched.push(&Method::GET);
            w.write_all(first).await.unwrap();
            w.write_all(HYPER_431).await.unwrap();
            w.shutdown().await.unwrap();
            drop(w);
            let mut out = Vec::new();
            b.read_to_end(&mut out).await.unwrap();
            assert_eq!(out, [first, HYPER_431].concat());
        }
        // A count that is off (more waiting than hyper ever has) stops the replacing: the
        // queue is emptied, and a head nobody waits for then passes as it is.
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let dispatched = Dispatched::default();
        let mut w = ParserErrors::new(a, dispatched.clone(), false, [127, 0, 0, 1].into());
        for _ in 0..=MAX_WAITING {
            dispatched.push(&Method::GET);
        }
        dispatched.push(&Method::GET);
        assert!(dispatched.0.lock().unwrap().waiting.is_empty());
        w.write_all(HYPER_431).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, HYPER_431);
        // A head nobody waits for that is not a bare error: left alone, and so is the rest.
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut w = ParserErrors::new(a, Dispatched::default(), false, [127, 0, 0, 1].into());
        let odd = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        w.write_all(odd).await.unwrap();
        w.dispatched.push(&Method::GET);
        assert!(
            w.dispatched.0.lock().unwrap().waiting.is_empty(),
            "not counted"
        );
        w.write_all(HYPER_431).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, [&odd[..], HYPER_431].concat());
    }
}
