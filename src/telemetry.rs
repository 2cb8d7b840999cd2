//! Logging setup. Request logs carry the method, the route *template* (never the raw path, which
//! may hold a share-link token, nor the query string, which may hold a view token), the status,
//! the latency, the client address and the request id.
//!
//! Invariant: no code path logs a header value, a body, a query string or a token; the
//! sensitive-headers layer additionally marks `Authorization`, `Cookie` and `X-API-Key` so even
//! a debug dump of a request prints them as `Sensitive`. No log line names a file, and with
//! encryption at rest on none carries a file's hash (the audit trail keeps it: see
//! `audit::Confidential`); hence the PostgreSQL driver never logs below info (it would
//! print every statement's bound values).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogConfig, LogFormat};

/// Install the global subscriber, writing to standard error. `RUST_LOG` overrides the level.
pub fn init(cfg: &LogConfig) {
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // tokio-postgres logs every statement's bound values at debug: password and token
    // hashes, file names and hashes. Never below info, whatever the level asked for.
    if let Ok(cap) = "tokio_postgres=info".parse() {
        filter = filter.add_directive(cap);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE)
        .with_target(false);
    // A second init (tests, CLI subcommands) keeps the first subscriber.
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}
