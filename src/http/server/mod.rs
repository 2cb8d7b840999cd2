//! The HTTP server: binds, accepts, applies the connection policies ([`accept`]: protocol
//! detection, connection caps), serves each connection with hyper behind the send timeout
//! ([`send_timeout`]) and the parser-error answers ([`parser_errors`]), and shuts down
//! gracefully.
//!
//! Invariant: nothing is served before [`AppState::open`] has recovered from a crash; on
//! shutdown, in-flight requests are drained (bounded), then the audit trail is flushed and the
//! database checkpointed.

mod accept;
mod park;
pub(crate) mod parser_errors;
pub(crate) mod send_timeout;
pub(crate) mod tls;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::config::Config;
use crate::http::stack;
use crate::memory::{self, BurstWatch};
use crate::ops::sweeper::Sweeper;
use crate::state::{AppState, Secrets};
use accept::{IpSlot, Opening, PerIp, request_starts};
use parser_errors::{Dispatched, ParserErrors};
use send_timeout::{LiveStreams, SendTimeout, StreamBody, StreamExec};
pub(crate) use tls::Tls;

/// The largest HTTP/1 request head (request line and header section); a larger one gets 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A built application, ready to serve.
pub(crate) struct App {
    state: AppState,
    router: Router,
    tasks: Vec<JoinHandle<()>>,
    audit_task: JoinHandle<()>,
}

impl App {
    /// Open the state (stores, crash recovery), build the router and start background work.
    pub(crate) async fn build(config: Config, secrets: Secrets) -> anyhow::Result<Self> {
        let (state, audit_task) = AppState::open(config, secrets).await?;
        let (router, doc) = stack::router(state.clone());
        let mut doc = serde_json::to_value(&doc)?;
        crate::http::openapi::apply_config(&mut doc, &state.config);
        let doc = serde_json::to_vec(&doc)?;
        let _ = state.openapi.set(Bytes::from(doc));
        let mut tasks = vec![
            tokio::spawn(
                Sweeper {
                    meta: state.meta.clone(),
                    blobs: state.blobs.clone(),
                    audit: state.audit.clone(),
                    interval: Duration::from_secs(state.config.retention.sweep_interval_secs),
                    audit_retention_days: state.config.audit.retention_days,
                    abandoned_after: Duration::from_secs(state.config.uploads.abandoned_after_secs),
                    throttle: state.sessions.throttle.rules(),
                }
                .sweep_periodically(),
            ),
            tokio::spawn(limiter_housekeeping(state.clone())),
        ];
        if state.config.webhooks.deliver {
            tasks.push(tokio::spawn(
                crate::events::worker::Worker {
                    meta: state.meta.clone(),
                    keyring: state.webhooks.keyring.clone(),
                    policy: crate::state::webhook_policy(&state.config),
                    timeout: Duration::from_secs(state.config.webhooks.timeout_secs),
                    max_attempts: u32::try_from(state.config.webhooks.max_attempts)
                        .unwrap_or(u32::MAX),
                }
                .run(),
            ));
        }
        Ok(Self {
            state,
            router,
            tasks,
            audit_task,
        })
    }

    /// Serve on `listener` until `shutdown` completes, then drain in-flight requests (bounded
    /// by `server.shutdown_grace_secs`) and flush the audit trail.
    pub(crate) async fn serve(
        self,
        listener: TcpListener,
        tls: Option<Tls>,
        redirect: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let cfg = &self.state.config.server;
        let header_timeout = Duration::from_secs(cfg.header_read_timeout_secs);
        // The opening bytes already tell the protocol (`request_starts`), so each has its own
        // builder.
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            // Also what hyper queues of an answer before writing; `StreamBody` hands it one
            // chunk at a time anyway, waiting for its flush (so `pipeline_flush`, which skips
            // flushes while requests are buffered, must stay off).
            .max_buf_size(MAX_HEAD_BYTES)
            // Exact: the buffer limit alone is checked only while a head is incomplete, so a
            // head that arrives whole in one read could pass it (up to about twice the size).
            .max_header_size(MAX_HEAD_BYTES);
        let send_timeout = Duration::from_secs(cfg.send_timeout_secs);
        // Each stream's task runs under the send timeout of its own (see `StreamExec`).
        let mut http2 = hyper::server::conn::http2::Builder::new(StreamExec {
            limit: send_timeout,
        });
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(128)
            // A silent HTTP/2 peer is dropped: it must answer pings.
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(20));
        // Shutdown is told to every connection; each closes when idle (a parked one at once) or
        // after the answer in flight. The connection slots tell when all are gone.
        let (stop, stopped) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(cfg.max_connections));
        let per_ip = PerIp::new(
            cfg.max_connections_per_ip,
            self.state.trusted_proxies.clone(),
        );
        let grace = Duration::from_secs(cfg.shutdown_grace_secs);
        let http2_on = cfg.http2;
        let hsts = self.state.config.https();
        // Native TLS: the certificate follows its files; plain HTTP may redirect to it.
        let mut helpers = vec![tokio::spawn(give_back_after_bursts(self.state.clone()))];
        if let Some(tls) = &tls {
            helpers.push(tokio::spawn(tls.clone().reload_on_change()));
            if let Some(redirect) = redirect {
                let port = listener.local_addr()?.port();
                helpers.push(tokio::spawn(tls::redirect(
                    redirect,
                    port,
                    Arc::new(self.state.config.server.allowed_hosts.clone()),
                    header_timeout,
                    PerIp::new(
                        cfg.max_connections_per_ip,
                        self.state.trusted_proxies.clone(),
                    ),
                    Duration::from_secs(cfg.send_timeout_secs),
                )));
            }
        }
        let shared = Arc::new(Shared {
            state: self.state.clone(),
            router: self.router.clone(),
            http1,
            http2,
            hsts,
            http2_on,
            header_timeout,
            send_timeout,
        });
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // One address cannot hold every connection slot.
            let Some(ip_slot) = per_ip.admit(peer.ip()) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = Conn {
                shared: shared.clone(),
                peer,
                stop: stopped.clone(),
                dispatched: Dispatched::with_room(),
                activity: Arc::default(),
            };
            let acceptor = tls.as_ref().map(|t| t.acceptor().clone());
            tokio::spawn(conn.run(stream, acceptor, (permit, ip_slot)));
        }
        for h in &helpers {
            h.abort();
        }
        for h in helpers {
            let _ = h.await;
        }
        drop(listener);
        tracing::info!("shutting down: draining in-flight requests");
        stop.send_replace(true);
        let all = u32::try_from(self.state.config.server.max_connections).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("grace period over; exiting with requests still open");
        }
        // The audit writer stops once every handle to it is gone: the router's, the background
        // tasks' and the state's. A connection still open past the grace period holds one; the
        // wait for the writer is bounded for that case.
        let Self {
            state,
            router,
            tasks,
            audit_task,
        } = self;
        drop((router, shared));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        // The sweeper stopped: hand its lease over now, so that the node started in this
        // one's place (or another) sweeps at its next tick, not once the lease runs out.
        let node = state.meta.node().to_owned();
        if let Err(e) = state
            .meta
            .leases()
            .release(crate::ops::sweeper::LEASE, &node)
            .await
        {
            tracing::warn!(error = %e, "cannot hand the sweeper lease over; it runs out by itself");
        }
        state.audit.flush().await;
        let _ = state.meta.checkpoint().await;
        drop(state);
        if tokio::time::timeout(Duration::from_secs(5), audit_task)
            .await
            .is_err()
        {
            tracing::warn!("audit writer still has handles after shutdown; not waiting further");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// What every connection of one server shares.
struct Shared {
    state: AppState,
    router: Router,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<StreamExec>,
    hsts: bool,
    http2_on: bool,
    header_timeout: Duration,
    send_timeout: Duration,
}

/// One accepted connection. Kept small: it is part of every connection's task, idle ones too.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// Turns true when the server shuts down.
    stop: watch::Receiver<bool>,
    /// HTTP/1's requests as counted for the parser's answers (see `ParserErrors`).
    ///
    /// This and `activity` are allocated as the connection is accepted, beside its task: what
    /// an idle connection keeps then shares pages with other connections' instead of pinning
    /// one among the freed buffers of its first request.
    dispatched: Dispatched,
    /// What HTTP/1's hyper is doing, for parking (see [`park`]).
    activity: Arc<park::Activity>,
}

impl Conn {
    /// Serve one accepted connection, plain or TLS, until it ends or the server shuts down;
    /// `slots` are its places in the connection caps, given back when it ends.
    ///
    /// A plain `fn` returning an `async` block (as `park::serve_http1`): this future is the
    /// connection's task, and an `async fn` would keep each argument in it twice.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    fn run(
        self,
        stream: TcpStream,
        acceptor: Option<TlsAcceptor>,
        slots: (tokio::sync::OwnedSemaphorePermit, IpSlot),
    ) -> impl Future<Output = ()> {
        async move {
            let _held = &slots;
            let shared = self.shared.clone();
            let _open = shared.state.metrics.connection_opened();
            let timed = SendTimeout::new(stream, shared.send_timeout);
            if let Some(acceptor) = acceptor {
                // Boxed: a plain connection's task does not carry the size of rustls's state.
                Box::pin(self.run_tls(timed, acceptor)).await;
                return;
            }
            // hyper's header timeout starts once it knows the protocol; a peer that never sends
            // enough to tell would otherwise hold the connection forever.
            let mut stop = self.stop.clone();
            let opening = tokio::select! {
                o = request_starts(timed.get_ref(), shared.header_timeout) => o,
                _ = stop.changed() => None,
            };
            match opening {
                Some(Opening::Http1) => self.serve_http1(timed).await,
                // HTTP/2 without TLS is off unless configured (a stalled HTTP/2 stream is not
                // bounded by the send timeout).
                Some(Opening::Http2) if shared.http2_on => Box::pin(self.serve_http2(timed)).await,
                Some(Opening::Http2) | None => {}
            }
        }
    }

    /// The TLS handshake (bounded like a request head), then the protocol ALPN named.
    async fn run_tls(self, timed: SendTimeout<TcpStream>, acceptor: TlsAcceptor) {
        let limit = self.shared.header_timeout;
        let mut stop = self.stop.clone();
        let handshake = tokio::select! {
            r = tokio::time::timeout(limit, acceptor.accept(timed)) => r,
            _ = stop.changed() => return,
        };
        let Ok(Ok(tls)) = handshake else {
            return;
        };
        match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => self.serve_http2(tls).await,
            _ => self.serve_http1(tls).await,
        }
    }

    /// HTTP/1, parked between requests ([`park`]).
    fn serve_http1<I>(self, io: I) -> impl Future<Output = ()> + use<I>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + park::ReadReady + Unpin + Send + 'static,
    {
        // Requests are counted as the service is handed them, so that an answer no request
        // waits for (the parser's own 400 or 431) can be told and replaced.
        let Self {
            shared,
            peer,
            stop,
            dispatched,
            activity,
        } = self;
        let io = park::Tracked::new(
            ParserErrors::new(io, dispatched.clone(), shared.hsts, peer.ip()),
            activity.clone(),
        );
        let service = service(
            shared.router.clone(),
            peer,
            Some((dispatched, activity.clone())),
            None,
        );
        park::serve_http1(io, service, activity, shared, stop)
    }

    /// HTTP/2: hyper's connection, told to finish its streams at shutdown.
    async fn serve_http2<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            shared,
            peer,
            mut stop,
            ..
        } = self;
        let live = LiveStreams::new();
        let conn = shared.http2.serve_connection(
            TokioIo::new(io),
            service(shared.router.clone(), peer, None, Some(live.clone())),
        );
        tokio::pin!(conn);
        let mut stopping = *stop.borrow();
        if stopping {
            conn.as_mut().graceful_shutdown();
        }
        // A connection with no answer under way for the header timeout is closed, as an idle
        // HTTP/1 one is: what h2 still holds for a peer that never opened its window goes with
        // it. Told to go away, it has the send timeout to finish, then it is dropped.
        let mut closing_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tick.tick() => {
                    if let Some(since) = closing_since {
                        if since.elapsed() >= shared.send_timeout {
                            tracing::debug!("HTTP/2 connection dropped: it did not finish after going away");
                            return;
                        }
                    } else if live.idle_for().is_some_and(|idle| idle >= shared.header_timeout) {
                        closing_since = Some(Instant::now());
                        if !stopping {
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// The future of one request through the router.
type Answer = Pin<
    Box<dyn Future<Output = Result<hyper::Response<StreamBody>, std::convert::Infallible>> + Send>,
>;

/// The service hyper calls for each request of one connection from `peer`. Over HTTP/1 each
/// request is counted for the parser's answers and marks the connection busy until its answer's
/// body is done.
fn service(
    router: Router,
    peer: SocketAddr,
    http1: Option<(Dispatched, Arc<park::Activity>)>,
    http2: Option<Arc<LiveStreams>>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<StreamBody>,
    Error = std::convert::Infallible,
    Future = Answer,
> + Unpin {
    hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let busy = http1.as_ref().map(|(counted, activity)| {
            counted.push(req.method());
            activity.dispatch()
        });
        let live = http2.as_ref().map(LiveStreams::start);
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let answer = router.clone().oneshot(req.map(axum::body::Body::new));
        // Wrapped inside the stream's task: over HTTP/2 the body reports its progress to the
        // stream's send timeout (over HTTP/1 it passes through).
        Box::pin(async move {
            answer
                .await
                .map(|res| without_empty_length(res).map(|b| StreamBody::new(b, busy, live)))
        }) as Answer
    })
}

/// A 304 says nothing about length: axum gives its empty body `Content-Length: 0`, which
/// hyper drops from the answer to a GET but keeps on the answer to a HEAD (RFC 9110 §8.6
/// allows only the 200's length there; a cache could take 0 for it).
fn without_empty_length<B>(mut res: axum::http::Response<B>) -> axum::http::Response<B> {
    if res.status() == axum::http::StatusCode::NOT_MODIFIED {
        res.headers_mut().remove(axum::http::header::CONTENT_LENGTH);
    }
    res
}

async fn limiter_housekeeping(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        state.limits.sweep();
    }
}

/// Once a burst of connections has ended (the count of open ones, or of busy ones, halved from
/// its high: they closed, or went idle and were parked), hand the memory they freed back to the
/// system (see [`crate::memory`]).
async fn give_back_after_bursts(state: AppState) {
    let (mut busy, mut open) = (BurstWatch::default(), BurstWatch::default());
    let mut tick = tokio::time::interval(memory::CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        crate::blob::pool::shared().release_idle();
        let now_busy = state.metrics.connections_busy();
        let now_open = state.metrics.connections_open();
        // Both watched: a burst that parks frees its buffers, one that then closes its idle
        // connections frees their tasks.
        let (busy_ended, open_ended) = (busy.ended(now_busy), open.ended(now_open));
        if busy_ended || open_ended {
            let gave = crate::blocking::run(memory::give_back).await;
            tracing::debug!(
                open = now_open,
                busy = now_busy,
                ?gave,
                "a burst of connections ended: memory given back"
            );
        }
    }
}

/// Bind a listener (with `SO_REUSEADDR`, as tokio sets by default on Unix).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
