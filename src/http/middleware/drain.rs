//! An answer given before the request body was read (401, 413, 415, 429...) is followed by
//! reading and discarding the rest of the body, up to `server.drain_limit_bytes` or
//! [`DRAIN_TIME`], so that a proxy in front relays the answer instead of a 502 (API.md,
//! "Behind a proxy, and the wire").
//!
//! hyper alone reads what has already arrived and then closes: the client's next bytes meet a
//! closed socket, and the reset that follows can destroy the answer before the client (or a
//! proxy) has read it. Here the body handed down the stack is a [`Watched`] one: dropped
//! before its end, it gives the connection's body back, and a task reads it to its end in the
//! background while hyper writes the answer. A body read whole lets the connection live on
//! (keep-alive, unless the answer said `Connection: close`, as a 413 does); one past the
//! limit, or still arriving after [`DRAIN_TIME`], is dropped and hyper closes the connection
//! as before. At most one drain per connection, for at most [`DRAIN_TIME`]: the connection
//! caps bound them.
//!
//! Not for HTTP/2 (a stream is reset on its own, the connection lives on), nor for a request
//! that waited for `100 Continue` and never got it (its body was never read, so hyper never
//! sent one): its client sends no body after a final answer, and the connection must not
//! wait for one. Once the body was read, `100 Continue` went out and the client is sending:
//! that rest is drained like any other. A connection that goes quiet mid-drain for the
//! parking period (`http::server::park`) is closed after it rather than kept alive.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Version, header};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::state::AppState;

/// The longest the rest of a body is read after the answer.
pub(crate) const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Hand the stack a watched body; after the answer, drain what it left unread.
pub(crate) async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.config.server.drain_limit_bytes;
    let http1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
    if !http1 || limit == 0 || req.body().is_end_stream() {
        return next.run(req).await;
    }
    let waits_for_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (back, mut left) = oneshot::channel();
    let req = req.map(|body| {
        Body::new(Watched {
            inner: body,
            polled: false,
            back: Some(back),
        })
    });
    let response = next.run(req).await;
    // The stack has dropped the body by now unless a task still reads it (then it is read).
    if let Ok((rest, polled)) = left.try_recv()
        && (polled || !waits_for_continue)
    {
        tokio::spawn(discard(rest, limit));
    }
    response
}

/// Read and drop `body` until its end, `limit` bytes or [`DRAIN_TIME`].
async fn discard(mut body: Body, limit: u64) {
    let read = async {
        let mut left = limit;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let Ok(frame) = frame else { return };
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            match left.checked_sub(n) {
                Some(l) => left = l,
                None => return,
            }
        }
    };
    // Past the limit or the time, the body is dropped here and hyper closes the connection.
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

/// A request body that, dropped before its end, gives the connection's body back, and
/// whether it was ever read.
struct Watched {
    inner: Body,
    polled: bool,
    back: Option<oneshot::Sender<(Body, bool)>>,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.polled = true;
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            // Read to its end, or broken: nothing to give back.
            self.back = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(back) = self.back.take()
            && !self.inner.is_end_stream()
        {
            let _ = back.send((std::mem::take(&mut self.inner), self.polled));
        }
    }
}
