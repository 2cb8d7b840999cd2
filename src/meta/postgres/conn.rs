//! Connecting to PostgreSQL: the URL, the pool, the timeouts, and what an error means.
//!
//! Invariant: nothing waits on the database without a bound. Connecting is bounded by
//! `connect_timeout`; every call of the engine (waiting for a pooled connection, connecting,
//! its statements, its retries) by `call_timeout`, and a connection abandoned at that bound is
//! closed, never reused. So a database that is down, restarting or silent answers
//! `Unavailable` within seconds, and the pool opens fresh connections once it is back: no
//! restart of coffer is needed. The server's `statement_timeout` is three quarters of
//! `call_timeout`: a statement stuck behind a lock or an overloaded server is cancelled by the
//! server first (`Busy`, and the connection stays usable), and only a server that does not
//! answer at all meets the client's deadline (`Unavailable`). It also ends a statement whose
//! client is gone, so no lock outlives its caller for long.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls};

use super::tls::MakeRustls;
use crate::meta::error::{MetaError, describe};

/// How to reach the database and how long to wait for it.
#[derive(Clone)]
pub struct Settings {
    /// `postgres://` or `postgresql://` URL; may carry a password (it comes from the
    /// environment), so it is never printed.
    pub url: String,
    /// Most connections this process holds.
    pub pool_size: usize,
    /// Longest wait for a new connection (TCP, TLS, authentication).
    pub connect_timeout: Duration,
    /// Longest one call of the engine may take, retries included (three quarters of it is the
    /// server-side `statement_timeout`).
    pub call_timeout: Duration,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("url", &"[redacted]")
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

impl Settings {
    /// Where the database is, without credentials: `host:port/dbname` (for messages and
    /// for telling two stores apart).
    pub fn location(&self) -> String {
        let Ok(p) = parse(&self.url) else {
            return "an invalid URL".into();
        };
        let hosts = p
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let ports = p
            .config
            .get_ports()
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let db = p
            .config
            .get_dbname()
            .or(p.config.get_user())
            .unwrap_or_default();
        format!("{hosts}:{ports}/{db}")
    }
}

/// Whether `url` names a PostgreSQL database (else the embedded SQLite is used).
fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A URL split into what tokio-postgres reads and what we read ourselves.
pub(crate) struct Parsed {
    /// The connection settings.
    pub config: tokio_postgres::Config,
    /// `sslrootcert`: trust only the certificates in this PEM file.
    pub root_file: Option<PathBuf>,
}

/// Parse a `postgres://` URL. Besides what tokio-postgres understands, `sslrootcert=PATH` and
/// libpq's `sslmode=verify-ca` and `verify-full` are accepted (TLS is always verified fully
/// here, see `tls`). Errors never quote the URL: it may hold a password.
pub(crate) fn parse(url: &str) -> Result<Parsed, String> {
    if !is_postgres_url(url) {
        return Err("the database URL must start with postgres:// or postgresql://".into());
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut root_file = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (key, value) {
            ("sslrootcert", v) => {
                let path = percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .map_err(|_| "sslrootcert is not UTF-8".to_owned())?;
                root_file = Some(PathBuf::from(path.into_owned()));
            }
            ("sslmode", "verify-ca" | "verify-full") => kept.push("sslmode=require"),
            _ => kept.push(pair),
        }
    }
    let rebuilt = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let config = tokio_postgres::Config::from_str(&rebuilt).map_err(|e| {
        let why = std::error::Error::source(&e).map_or_else(String::new, |s| format!(": {s}"));
        format!("the database URL is not valid{why}")
    })?;
    if config.get_hosts().is_empty() {
        return Err("the database URL names no host".into());
    }
    Ok(Parsed { config, root_file })
}

/// Whether `url` is a PostgreSQL URL this engine can use (checked at start-up, before any
/// connection is tried). The error never quotes the URL.
pub fn check_url(url: &str) -> Result<(), String> {
    parse(url).map(|_| ())
}

/// Whether the URL carries a password (in its user part or as `password=`).
pub fn url_has_password(url: &str) -> bool {
    parse(url).is_ok_and(|p| p.config.get_password().is_some_and(|pw| !pw.is_empty()))
}

/// The pool for `settings`: its connections carry the timeouts, and TLS when the URL's
/// `sslmode` asks for it (the default `prefer` uses it when the server offers it).
pub(crate) fn pool(settings: &Settings) -> Result<Pool, MetaError> {
    let Parsed {
        mut config,
        root_file,
    } = parse(&settings.url).map_err(MetaError::Config)?;
    let call_ms = settings.call_timeout.as_millis();
    let statement_ms = (call_ms * 3 / 4).max(1);
    // A transaction left open by a frozen node would hold its row and advisory locks for
    // every other node: the server ends it.
    let idle_ms = call_ms.saturating_mul(2);
    let options = format!(
        "{} -c statement_timeout={statement_ms} -c idle_in_transaction_session_timeout={idle_ms}",
        config.get_options().unwrap_or_default()
    );
    config
        .options(options.trim())
        .connect_timeout(settings.connect_timeout)
        // Unacknowledged bytes for this long mean the peer is gone (a silent network).
        .tcp_user_timeout(settings.call_timeout)
        .keepalives_idle(Duration::from_secs(30));
    if config.get_application_name().is_none() {
        config.application_name("coffer");
    }
    let manager_config = ManagerConfig {
        // A connection the server closed (a restart) is noticed and replaced when it is
        // handed out; a round trip per checkout would cost every request.
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match config.get_ssl_mode() {
        SslMode::Disable => Manager::from_config(config, NoTls, manager_config),
        _ => {
            let tls = MakeRustls::new(root_file.as_deref()).map_err(MetaError::Config)?;
            Manager::from_config(config, tls, manager_config)
        }
    };
    Pool::builder(manager)
        .max_size(settings.pool_size.max(1))
        .wait_timeout(Some(settings.call_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| MetaError::Config(format!("database pool: {e}")))
}

/// A connection of its own (never pooled), for `LISTEN`: the client, and the notifications
/// it receives, in order. The channel closes when the connection ends.
pub(crate) async fn dedicated(
    settings: &Settings,
) -> Result<
    (
        tokio_postgres::Client,
        mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    ),
    MetaError,
> {
    let Parsed {
        mut config,
        root_file,
    } = parse(&settings.url).map_err(MetaError::Config)?;
    config
        .connect_timeout(settings.connect_timeout)
        .tcp_user_timeout(settings.call_timeout)
        .keepalives_idle(Duration::from_secs(30));
    // Always this name: the nodes count each other's listeners by it (`Postgres::announce`).
    config.application_name(super::LISTENER_NAME);
    let (tx, rx) = mpsc::unbounded_channel();
    let client = match config.get_ssl_mode() {
        SslMode::Disable => {
            let (client, conn) = config.connect(NoTls).await.map_err(classify)?;
            tokio::spawn(forward(conn, tx));
            client
        }
        _ => {
            let tls = MakeRustls::new(root_file.as_deref()).map_err(MetaError::Config)?;
            let (client, conn) = config.connect(tls).await.map_err(classify)?;
            tokio::spawn(forward(conn, tx));
            client
        }
    };
    Ok((client, rx))
}

/// Drive a dedicated connection, passing on its notifications; ends with it.
async fn forward<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    tx: mpsc::UnboundedSender<tokio_postgres::Notification>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    while let Some(m) = messages.next().await {
        match m {
            Ok(AsyncMessage::Notification(n)) => {
                if tx.send(n).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %describe(&e), "the listener's connection ended");
                return;
            }
        }
    }
}

/// Whether retrying the whole transaction may succeed: another transaction won a conflict.
pub(crate) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// What a PostgreSQL error means to a caller.
pub(crate) fn classify(e: tokio_postgres::Error) -> MetaError {
    if let Some(code) = e.code() {
        let class = code.code().get(..2).unwrap_or_default();
        return match code {
            c if *c == SqlState::DISK_FULL => MetaError::Full,
            c if *c == SqlState::QUERY_CANCELED
                || *c == SqlState::LOCK_NOT_AVAILABLE
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
            {
                MetaError::Busy
            }
            c if class == "08"
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::TOO_MANY_CONNECTIONS
                || *c == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT =>
            {
                MetaError::Unavailable(e.to_string())
            }
            _ => MetaError::Postgres(e),
        };
    }
    if is_connection_error(&e) {
        MetaError::Unavailable(describe(&e))
    } else {
        MetaError::Postgres(e)
    }
}

/// Closed, refused, reset, timed out, or a failed handshake: the connection, not the query.
fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() || e.to_string() == "timeout waiting for server" {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// What a failure to get a pooled connection means.
pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> MetaError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => MetaError::Unavailable(
            "every database connection stayed busy for the whole call timeout".into(),
        ),
        PoolError::Timeout(_) => {
            MetaError::Unavailable("the database did not accept a connection in time".into())
        }
        PoolError::Backend(e) => match classify(e) {
            // Authentication and the like: no connection is as good as none.
            MetaError::Postgres(e) => MetaError::Unavailable(describe(&e)),
            other => other,
        },
        PoolError::Closed => MetaError::Closed,
        other => MetaError::Unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_postgres_only_and_keep_their_secrets() {
        assert!(parse("mysql://x/y").is_err());
        let e = parse("postgres://u:hunter2@h/db?nonsense=1").err().unwrap();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("nonsense"), "{e}");
        assert!(url_has_password("postgres://u:hunter2@h/db"));
        assert!(url_has_password("postgresql://u@h/db?password=hunter2"));
        assert!(!url_has_password("postgres://u@h:5433/db?sslmode=require"));
        assert!(!url_has_password("postgres://u:@h/db"));
    }

    #[test]
    fn libpq_tls_options_are_understood() {
        let p = parse("postgres://u@db.example/coffer?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=2").unwrap();
        assert_eq!(p.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(p.root_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(p.config.get_dbname(), Some("coffer"));
        let p = parse("postgres://u@h/db").unwrap();
        assert_eq!(p.config.get_ssl_mode(), SslMode::Prefer);
        assert!(p.root_file.is_none());
    }
}
