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
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower::ServiceExt as _;

use crate::audit::AuditLog;
use crate::auth::cache::PrincipalCache;
use crate::auth::jwt::TokenKeys;
use crate::auth::password::Passwords;
use crate::auth::throttle::LoginThrottle;
use crate::blob::BlobStore;
use crate::blob::fs::LocalFs;
use crate::blob::s3::{S3Settings, S3Store};
use crate::config::{Config, StorageBackend};
use crate::crypto::Keyring;
use crate::http::metrics::Metrics;
use crate::http::rate_limit::RateLimits;
use crate::http::send_timeout::SendTimeout;
use crate::ingest::policy::UploadPolicy;
use crate::ingest::quota::Quota;
use crate::meta::MetaStore;
use crate::secrets::{S3Credentials, SecretKey};
use crate::{http, lifecycle, ops, retention};

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
    /// Metadata (SQLite).
    pub meta: MetaStore,
    /// Blob storage.
    pub blobs: BlobStore,
    /// Access-token keys.
    pub tokens: TokenKeys,
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
    /// The object store's credentials (`storage.backend = "s3"`).
    pub s3: Option<S3Credentials>,
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
        let (root, blobs) = open_storage(&config, secrets.s3.as_ref())?;
        let meta = MetaStore::open(&root.join("coffer.db"), config.storage.db_readers).await?;
        recover(&config, &meta, &blobs).await?;

        let passwords = Passwords::new(&config.auth)?;
        let chain = crate::meta::audit::ChainKey(secrets.secret_key.derive(AUDIT_CHAIN_LABEL));
        let (audit, audit_task) = AuditLog::start(meta.clone(), chain);
        let trusted_proxies = config.trusted_proxies().map_err(anyhow::Error::msg)?;
        let state = AppState(Arc::new(AppInner {
            tokens: TokenKeys::new(
                &secrets.secret_key,
                &config.auth.issuer,
                config.auth.access_ttl_secs,
            )?,
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
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(64 * 1024);
        builder
            .http2()
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
        let http2 = cfg.http2;
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
            let builder = builder.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _slots = (permit, ip_slot);
                // hyper's header timeout starts once it knows the protocol; a peer that never
                // sends enough to tell would otherwise hold the connection forever.
                match request_starts(&stream, header_timeout).await {
                    Some(Opening::Http1) => {}
                    Some(Opening::Http2) if http2 => {}
                    // HTTP/2 without TLS is off unless configured (a stalled HTTP/2 stream
                    // is not bounded by the send timeout).
                    Some(Opening::Http2) | None => return,
                }
                let service = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        router.clone().oneshot(req.map(axum::body::Body::new))
                    },
                );
                let io = TokioIo::new(SendTimeout::new(stream, send_timeout));
                let conn = builder.serve_connection_with_upgrades(io, service);
                if let Err(e) = watcher.watch(conn.into_owned()).await {
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

/// Open the storage root (created with mode 0700 when missing; the database lives there
/// whatever the backend) and the blob store that `storage.backend` names. Returns the
/// canonical root.
pub fn open_storage(
    config: &Config,
    s3: Option<&S3Credentials>,
) -> anyhow::Result<(std::path::PathBuf, BlobStore)> {
    let root = &config.storage.root;
    let in_root = |e: std::io::Error| anyhow::anyhow!("storage root {}: {e}", root.display());
    match config.storage.backend {
        StorageBackend::Fs => {
            let fs = LocalFs::open(root).map_err(in_root)?;
            Ok((fs.root().to_path_buf(), BlobStore::new(Arc::new(fs))))
        }
        StorageBackend::S3 => {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(in_root)?;
            let root = root.canonicalize().map_err(in_root)?;
            let creds = s3.ok_or_else(|| anyhow::anyhow!("no credentials for the object store"))?;
            let c = &config.s3;
            let store = S3Store::open(&S3Settings {
                endpoint: c.endpoint.clone(),
                region: c.region.clone(),
                bucket: c.bucket.clone(),
                prefix: c.prefix.clone(),
                force_path_style: c.force_path_style,
                access_key_id: creds.access_key_id.clone(),
                secret_access_key: creds.secret_access_key.clone(),
            })
            .map_err(|e| anyhow::anyhow!("object store: {e}"))?;
            Ok((root, BlobStore::new(Arc::new(store))))
        }
    }
}

/// Crash recovery before serving. An object store that does not answer yet is no reason not
/// to start: the node serves, unready (503), until it answers; the sweeper finishes queued
/// deletions then, and orphans wait for the next start or `coffer check --repair`.
async fn recover(config: &Config, meta: &MetaStore, blobs: &BlobStore) -> anyhow::Result<()> {
    match recover_blobs(config, meta, blobs).await {
        Err(e) if blobs_unavailable(&e) => {
            tracing::warn!(error = %e, "the blob store does not answer; starting without crash recovery");
            Ok(())
        }
        other => other,
    }
}

fn blobs_unavailable(e: &anyhow::Error) -> bool {
    use crate::blob::BlobError;
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<BlobError>(),
            Some(BlobError::Unavailable(_))
        ) || matches!(
            cause.downcast_ref::<lifecycle::RemoveError>(),
            Some(lifecycle::RemoveError::Blob(BlobError::Unavailable(_)))
        )
    })
}

async fn recover_blobs(config: &Config, meta: &MetaStore, blobs: &BlobStore) -> anyhow::Result<()> {
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
        // Nothing else runs on a local root yet: no grace needed. A bucket may be shared by
        // other processes (a `coffer check --repair`, a second node), so a blob committed
        // moments ago gets the repair's grace before it counts as an orphan.
        let grace = match config.storage.backend {
            StorageBackend::Fs => Duration::ZERO,
            StorageBackend::S3 => ops::check::REPAIR_GRACE,
        };
        let orphans = ops::check::remove_orphans(meta, blobs, &report, grace).await?;
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
