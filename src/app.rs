//! The application: shared state, start-up (open stores, recover from a crash, start the
//! background tasks) and the HTTP server loop with graceful shutdown.
//!
//! Invariant: nothing is served before start-up recovery has run: temp files of interrupted
//! uploads are gone, interrupted deletions are finished, and (with `storage.scan_on_startup`)
//! blobs without a row are removed.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower::ServiceExt as _;

use crate::audit::{AuditLog, Confidential};
use crate::auth::cache::PrincipalCache;
use crate::auth::jwt::TokenKeys;
use crate::auth::password::Passwords;
use crate::auth::refresh::RefreshTokens;
use crate::auth::throttle::LoginThrottle;
use crate::blob::BlobStore;
use crate::blob::fs::LocalFs;
use crate::config::Config;
use crate::crypto::Keyring;
use crate::http::metrics::Metrics;
use crate::http::parser_errors::{Dispatched, ParserErrors};
use crate::http::rate_limit::RateLimits;
use crate::http::send_timeout::SendTimeout;
use crate::ingest::policy::UploadPolicy;
use crate::ingest::quota::Quota;
use crate::meta::MetaStore;
use crate::secrets::SecretKey;
use crate::{http, lifecycle, ops, retention};

/// The largest HTTP/1 request head (request line and header section); a larger one gets 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The label of the subkey that chains the audit trail.
pub const AUDIT_CHAIN_LABEL: &str = "coffer/audit-chain/v1";

/// The state every handler sees. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct AppInner {
    /// The validated configuration.
    pub config: Config,
    /// Metadata (SQLite, or a PostgreSQL database shared with other nodes).
    pub meta: MetaStore,
    /// Blob storage.
    pub blobs: BlobStore,
    /// Access-token keys.
    pub tokens: TokenKeys,
    /// Derives each rotated refresh token from the one presented.
    pub refresh_tokens: RefreshTokens,
    /// Password hashing.
    pub passwords: Passwords,
    /// Failed-login counters.
    pub throttle: LoginThrottle,
    /// Recently checked credentials.
    pub principals: PrincipalCache,
    /// Per-address rate limits.
    pub limits: RateLimits,
    /// The audit trail.
    pub audit: AuditLog,
    /// Storage quotas.
    pub quota: Quota,
    /// The upload type policy.
    pub policy: UploadPolicy,
    /// Encryption-at-rest master keys.
    pub keyring: Keyring,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Parsed `server.trusted_proxies`.
    pub trusted_proxies: Vec<IpNet>,
    /// The serialised OpenAPI document.
    pub openapi: OnceLock<Bytes>,
}

/// The secrets the service runs with.
pub struct Secrets {
    /// Signs tokens.
    pub secret_key: SecretKey,
    /// Encryption-at-rest keys.
    pub keyring: Keyring,
}

/// A built application, ready to serve.
pub struct App {
    state: AppState,
    router: Router,
    tasks: Vec<JoinHandle<()>>,
    audit_task: JoinHandle<()>,
}

impl App {
    /// Open the stores, recover from any crash, start background work and build the router.
    pub async fn build(config: Config, secrets: Secrets) -> anyhow::Result<Self> {
        let fs = LocalFs::open(&config.storage.root)
            .map_err(|e| anyhow::anyhow!("storage root {}: {e}", config.storage.root.display()))?;
        let blobs = BlobStore::new(Arc::new(fs.clone()));
        let meta = match config.database.postgres() {
            Some(pg) => MetaStore::open_postgres(&pg).await?,
            None => {
                let db = fs.root().join("coffer.db");
                MetaStore::open_sqlite(&db, config.storage.db_readers).await?
            }
        };
        recover(&config, &meta, &blobs).await?;

        let passwords = Passwords::new(&config.auth)?;
        let chain = crate::meta::audit::ChainKey(secrets.secret_key.derive(AUDIT_CHAIN_LABEL));
        // With encryption at rest on, a file's hash or name stays out of the log.
        let confidential = if secrets.keyring.enabled() {
            Confidential::TrailOnly
        } else {
            Confidential::Logged
        };
        let (audit, audit_task) = AuditLog::start(meta.clone(), chain, confidential);
        let trusted_proxies = config.trusted_proxies().map_err(anyhow::Error::msg)?;
        let state = AppState(Arc::new(AppInner {
            tokens: TokenKeys::new(
                &secrets.secret_key,
                &config.auth.issuer,
                config.auth.access_ttl_secs,
            )?,
            refresh_tokens: RefreshTokens::new(&secrets.secret_key),
            principals: PrincipalCache::new(Duration::from_secs(config.auth.principal_cache_secs)),
            throttle: LoginThrottle::new(
                config.auth.login_failures_before_delay,
                config.auth.login_max_delay_secs,
            ),
            limits: RateLimits::new(&config.rate_limit),
            quota: Quota::new(config.limits.user_quota_bytes, meta.clone()),
            policy: UploadPolicy::new(&config.uploads.allowed),
            keyring: secrets.keyring,
            metrics: Metrics::default(),
            openapi: OnceLock::new(),
            trusted_proxies,
            passwords,
            audit,
            meta,
            blobs,
            config,
        }));
        let (router, doc) = http::router(state.clone());
        let doc = serde_json::to_vec(&doc)?;
        let _ = state.openapi.set(Bytes::from(doc));
        let tasks = vec![
            tokio::spawn(retention::sweeper(state.clone())),
            tokio::spawn(limiter_housekeeping(state.clone())),
        ];
        Ok(Self {
            state,
            router,
            tasks,
            audit_task,
        })
    }

    /// The shared state (tests and tools).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve on `listener` until `shutdown` completes, then drain in-flight requests (bounded
    /// by `server.shutdown_grace_secs`) and flush the audit trail.
    pub async fn serve(
        self,
        listener: TcpListener,
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
            .max_buf_size(MAX_HEAD_BYTES)
            // Exact: the buffer limit alone is checked only while a head is incomplete, so a
            // head that arrives whole in one read could pass it (up to about twice the size).
            .max_header_size(MAX_HEAD_BYTES);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(128)
            // A silent HTTP/2 peer is dropped: it must answer pings.
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(20));
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(cfg.max_connections));
        let per_ip = PerIp::new(
            cfg.max_connections_per_ip,
            self.state.trusted_proxies.clone(),
        );
        let grace = Duration::from_secs(cfg.shutdown_grace_secs);
        let send_timeout = Duration::from_secs(cfg.send_timeout_secs);
        let http2_on = cfg.http2;
        let hsts = cfg.behind_tls_proxy;
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
            let router = self.router.clone();
            let (http1, http2) = (http1.clone(), http2.clone());
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _slots = (permit, ip_slot);
                // hyper's header timeout starts once it knows the protocol; a peer that never
                // sends enough to tell would otherwise hold the connection forever.
                let opening = match request_starts(&stream, header_timeout).await {
                    Some(Opening::Http1) => Opening::Http1,
                    Some(Opening::Http2) if http2_on => Opening::Http2,
                    // HTTP/2 without TLS is off unless configured (a stalled HTTP/2 stream
                    // is not bounded by the send timeout).
                    Some(Opening::Http2) | None => return,
                };
                // HTTP/1 requests are counted as the service is handed them, so that an answer
                // no request waits for (the parser's own 400 or 431) can be told and replaced.
                let dispatched = Dispatched::default();
                let counted = (opening == Opening::Http1).then(|| dispatched.clone());
                let service = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        if let Some(counted) = &counted {
                            counted.push(req.method());
                        }
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        router.clone().oneshot(req.map(axum::body::Body::new))
                    },
                );
                let timed = SendTimeout::new(stream, send_timeout);
                let ended = match opening {
                    Opening::Http1 => {
                        let io = ParserErrors::new(timed, dispatched, hsts, peer.ip());
                        watcher
                            .watch(http1.serve_connection(TokioIo::new(io), service))
                            .await
                    }
                    Opening::Http2 => {
                        watcher
                            .watch(http2.serve_connection(TokioIo::new(timed), service))
                            .await
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        tracing::info!("shutting down: draining in-flight requests");
        if tokio::time::timeout(grace, graceful.shutdown())
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
        drop(router);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
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

/// What a new connection speaks, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// Not the HTTP/2 preface: HTTP/1.
    Http1,
    /// The HTTP/2 prior-knowledge preface (h2c).
    Http2,
}

/// Wait (bounded) until the peer has sent enough to choose HTTP/1 or HTTP/2: any byte that
/// breaks the HTTP/2 preface, or the whole preface. `None` when it sends nothing in time.
async fn request_starts(stream: &tokio::net::TcpStream, limit: Duration) -> Option<Opening> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; PREFACE.len()];
    let wait = async {
        loop {
            let n = stream.peek(&mut buf).await?;
            let seen = buf.get(..n).unwrap_or_default();
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            if !PREFACE.starts_with(seen) {
                return Ok(Some(Opening::Http1));
            }
            if n >= PREFACE.len() {
                return Ok(Some(Opening::Http2));
            }
            // Part of a preface: peek would return at once; give the peer a moment.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(limit, wait).await.ok()?.ok()?
}

/// Open connections per client (an IPv4 address, an IPv6 /64; trusted proxies are exempt:
/// everyone is behind them).
#[derive(Clone)]
struct PerIp {
    max: usize,
    exempt: Arc<Vec<IpNet>>,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

/// A held per-address slot; released on drop.
struct IpSlot {
    owner: PerIp,
    ip: Option<std::net::IpAddr>,
}

impl PerIp {
    fn new(max: usize, exempt: Vec<IpNet>) -> Self {
        Self {
            max,
            exempt: Arc::new(exempt),
            open: Arc::default(),
        }
    }

    fn admit(&self, ip: std::net::IpAddr) -> Option<IpSlot> {
        let peer = crate::http::client_ip::canonical(ip);
        if self.exempt.iter().any(|n| n.contains(&peer)) {
            return Some(IpSlot {
                owner: self.clone(),
                ip: None,
            });
        }
        // Counted like the rate limits: an IPv6 host by its /64, which it usually owns whole.
        let key = crate::http::client_ip::network_key(ip);
        let mut open = self.open.lock().ok()?;
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            owner: self.clone(),
            ip: Some(key),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip
            && let Ok(mut open) = self.owner.open.lock()
            && let Some(n) = open.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// Crash recovery before serving.
async fn recover(config: &Config, meta: &MetaStore, blobs: &BlobStore) -> anyhow::Result<()> {
    let temp = blobs.clear_staging().await?;
    let trashed = lifecycle::purge_queued(meta, blobs).await?;
    if temp + trashed > 0 {
        tracing::info!(
            temp_files = temp,
            deletions = trashed,
            "cleaned up after an interrupted run"
        );
    }
    if config.storage.scan_on_startup {
        let report = ops::check::scan(meta, blobs, None).await?;
        // Nothing else runs on this root yet: no grace needed.
        let orphans = ops::check::remove_orphans(meta, blobs, &report, Duration::ZERO).await?;
        if orphans > 0 {
            tracing::warn!(orphans, "removed blobs that had no database row");
        }
        for (missing, _) in &report.missing {
            tracing::error!(file.id = %missing, "a file row has no blob; run `coffer check`");
        }
    }
    Ok(())
}

async fn limiter_housekeeping(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        state.limits.sweep();
    }
}

/// Bind a listener (with `SO_REUSEADDR`, as tokio sets by default on Unix).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ipv6_host_cannot_take_more_slots_by_changing_its_address() {
        let per_ip = PerIp::new(2, Vec::new());
        let addr = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let a = per_ip.admit(addr("2001:db8:1:2::1")).unwrap();
        let _b = per_ip.admit(addr("2001:db8:1:2::2")).unwrap();
        assert!(per_ip.admit(addr("2001:db8:1:2:ffff::3")).is_none());
        // Another /64 and IPv4 addresses have their own counts; a closed slot is reusable.
        assert!(per_ip.admit(addr("2001:db8:1:3::1")).is_some());
        assert!(per_ip.admit(addr("192.0.2.1")).is_some());
        drop(a);
        assert!(per_ip.admit(addr("2001:db8:1:2::9")).is_some());
        // A trusted proxy is exempt however a dual-stack listener spells its address.
        let behind = PerIp::new(1, vec!["10.0.0.1/32".parse().unwrap()]);
        let _p = behind.admit(addr("::ffff:10.0.0.1")).unwrap();
        assert!(behind.admit(addr("::ffff:10.0.0.1")).is_some());
    }
}
