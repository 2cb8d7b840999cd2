//! Running blocking work (SQLite, argon2, directory walks) off the async worker threads.
//!
//! Invariant: the closure runs on tokio's blocking pool inside the caller's tracing span, so
//! its log lines keep the request id.

use tracing::Span;

/// A blocking task panicked or was cancelled at shutdown.
#[derive(Debug, thiserror::Error)]
#[error("blocking task failed: {0}")]
pub struct JoinError(#[from] tokio::task::JoinError);

/// Run `f` on the blocking pool and await its result.
pub async fn run<F, T>(f: F) -> Result<T, JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let span = Span::current();
    Ok(tokio::task::spawn_blocking(move || span.in_scope(f)).await?)
}
