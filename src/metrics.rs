//! The service's counters, exposed at `/metrics` in the Prometheus text exposition format (version 0.0.4): requests by route and
//! status, latency histograms by route, bytes in and out, rate-limit rejections, uploads, and
//! the credential cache's hits, misses and revoked entries.
//!
//! Invariant: label values come from route templates and fixed strings only, never from raw
//! paths, so cardinality is bounded and no token in a path can reach the metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::auth::cache::CacheStats;
use crate::small_files::SmallFileStats;

/// Latency bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// The service's metrics.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    rate_limited_global: AtomicU64,
    rate_limited_login: AtomicU64,
    connections_open: AtomicU64,
    connections_parked: AtomicU64,
}

/// Counts one connection in a gauge while it lives (see [`Metrics::connection_opened`]).
pub(crate) struct Gauged<'a>(&'a AtomicU64);

impl Drop for Gauged<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which limiter refused a request.
#[derive(Debug, Clone, Copy)]
pub enum Limiter {
    /// The per-address bucket.
    Global,
    /// The login/register bucket.
    Login,
}

impl Metrics {
    /// Count a rate-limit rejection.
    pub fn rate_limited(&self, which: Limiter) {
        match which {
            Limiter::Global => &self.rate_limited_global,
            Limiter::Login => &self.rate_limited_login,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Count an open client connection until the guard is dropped.
    pub(crate) fn connection_opened(&self) -> Gauged<'_> {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        Gauged(&self.connections_open)
    }

    /// Count an idle HTTP/1 connection parked without hyper's buffers, until the guard is
    /// dropped (see `http::server::park`).
    pub(crate) fn connection_parked(&self) -> Gauged<'_> {
        self.connections_parked.fetch_add(1, Ordering::Relaxed);
        Gauged(&self.connections_parked)
    }

    /// Connections open now.
    pub(crate) fn connections_open(&self) -> usize {
        usize::try_from(self.connections_open.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    /// Connections open now that are not parked: those holding per-connection buffers.
    pub(crate) fn connections_busy(&self) -> usize {
        let open = self.connections_open.load(Ordering::Relaxed);
        let parked = self.connections_parked.load(Ordering::Relaxed);
        usize::try_from(open.saturating_sub(parked)).unwrap_or(usize::MAX)
    }

    /// Count request body bytes that had no `Content-Length` (streamed uploads).
    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Count response body bytes announced by `Content-Length`.
    pub fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Record one answered request: its method, its route template (never a raw path) and
    /// status, and how long it took.
    pub fn observe(&self, method: &str, route: &str, status: u16, secs: f64) {
        // A fixed set: extension methods must not mint new series.
        let method: &'static str = match method {
            "GET" => "GET",
            "HEAD" => "HEAD",
            "POST" => "POST",
            "PUT" => "PUT",
            "DELETE" => "DELETE",
            "OPTIONS" => "OPTIONS",
            "PATCH" => "PATCH",
            _ => "OTHER",
        };
        let route = intern(route);
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((method, route, status)).or_insert(0) += 1;
        }
        if let Ok(mut m) = self.latency.lock() {
            let h = m.entry(route).or_default();
            for (bound, c) in BUCKETS.iter().zip(h.counts.iter_mut()) {
                if secs <= *bound {
                    *c += 1;
                }
            }
            h.sum += secs;
            h.count += 1;
        }
    }

    /// Render the text format, with the credential cache's counters.
    pub fn render(&self, cache: CacheStats, small: SmallFileStats) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP coffer_http_requests_total HTTP requests by method, route and status.\n",
        );
        out.push_str("# TYPE coffer_http_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((method, route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "coffer_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                    escape(method),
                    escape(route)
                );
            }
        }
        out.push_str(
            "# HELP coffer_http_request_duration_seconds Time to the response head, by route.\n",
        );
        out.push_str("# TYPE coffer_http_request_duration_seconds histogram\n");
        if let Ok(m) = self.latency.lock() {
            for (route, h) in m.iter() {
                let r = escape(route);
                for (bound, c) in BUCKETS.iter().zip(h.counts.iter()) {
                    let _ = writeln!(
                        out,
                        "coffer_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{bound}\"}} {c}"
                    );
                }
                let _ = writeln!(
                    out,
                    "coffer_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "coffer_http_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "coffer_http_request_duration_seconds_count{{route=\"{r}\"}} {}",
                    h.count
                );
            }
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "coffer_http_request_bytes_total",
            "Request body bytes received.",
            self.bytes_in.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "coffer_http_response_bytes_total",
            "Response body bytes announced.",
            self.bytes_out.load(Ordering::Relaxed),
        );
        out.push_str("# HELP coffer_rate_limited_total Requests refused by a rate limiter.\n");
        out.push_str("# TYPE coffer_rate_limited_total counter\n");
        let _ = writeln!(
            out,
            "coffer_rate_limited_total{{bucket=\"global\"}} {}",
            self.rate_limited_global.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "coffer_rate_limited_total{{bucket=\"login\"}} {}",
            self.rate_limited_login.load(Ordering::Relaxed)
        );
        let pool = crate::blob::pool::shared();
        let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let series: [(&str, &str, &str, u64); 13] = [
            (
                "coffer_http_connections_open",
                "gauge",
                "Client connections open now.",
                self.connections_open.load(Ordering::Relaxed),
            ),
            (
                "coffer_http_connections_parked",
                "gauge",
                "Idle HTTP/1 keep-alive connections waiting for their next request without per-connection buffers.",
                self.connections_parked.load(Ordering::Relaxed),
            ),
            (
                "coffer_download_buffer_large_bytes",
                "gauge",
                "Bytes of download read buffers above the smallest size held now (bounded by the pool's budget).",
                as_u64(pool.large_in_use()),
            ),
            (
                "coffer_download_buffer_cached_bytes",
                "gauge",
                "Bytes of idle download read buffers kept for reuse.",
                as_u64(pool.cached_bytes()),
            ),
            (
                "coffer_principal_cache_hits_total",
                "counter",
                "Credential checks answered from the in-process cache.",
                cache.hits,
            ),
            (
                "coffer_principal_cache_misses_total",
                "counter",
                "Credential checks that read the database.",
                cache.misses,
            ),
            (
                "coffer_principal_cache_revoked_total",
                "counter",
                "Cached credentials dropped because a revocation covered them.",
                cache.revoked,
            ),
            (
                "coffer_principal_cache_entries",
                "gauge",
                "Credentials cached now.",
                cache.entries,
            ),
            (
                "coffer_principal_cache_live",
                "gauge",
                "1 while revocations from every node reach the cache; 0 while they may be missed (every credential is then checked against the database).",
                u64::from(cache.live),
            ),
            (
                "coffer_small_file_cache_hits_total",
                "counter",
                "Downloads of small plain files answered from memory (credential, owner and expiry still checked).",
                small.hits,
            ),
            (
                "coffer_small_file_cache_misses_total",
                "counter",
                "Downloads that read the file's row (and a small file's bytes) from the stores.",
                small.misses,
            ),
            (
                "coffer_small_file_cache_entries",
                "gauge",
                "Small files kept in memory now.",
                small.entries,
            ),
            (
                "coffer_small_file_cache_bytes",
                "gauge",
                "Bytes of file content kept in memory now (bounded).",
                small.bytes,
            ),
        ];
        for (name, kind, help, v) in series {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Route templates are `'static` once interned; a bounded set, since they come from the router.
fn intern(route: &str) -> &'static str {
    static ROUTES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let Ok(mut v) = ROUTES.lock() else {
        return "unknown";
    };
    if let Some(r) = v.iter().find(|r| **r == route) {
        return r;
    }
    if v.len() >= 256 {
        return "other";
    }
    let leaked: &'static str = Box::leak(route.to_owned().into_boxed_str());
    v.push(leaked);
    leaked
}
