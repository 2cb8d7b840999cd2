//! The PostgreSQL engine: the `meta` interfaces over a shared database, so that several coffer
//! nodes can serve one store.
//!
//! Every method is one transaction, as on SQLite; what differs is who else writes. SQLite has
//! one writer per file, so its transactions never interleave; here any node may run the same
//! method at the same moment, and each rule is made exact in the database itself:
//! - a rule that one statement decides is that statement (its own transaction): a link's
//!   budget is one conditional `UPDATE` (PostgreSQL re-checks the condition on the row it
//!   waited for); a file row is inserted only after its owner's row is locked and seen
//!   unlocked, in the same statement;
//! - a rule that needs several statements runs in a `SERIALIZABLE` transaction (refresh-token
//!   rotation), or takes an advisory lock first in `READ COMMITTED`, so each of its statements
//!   sees what the previous holder committed (the last administrator, the audit chain's tail);
//! - a transaction that loses a conflict (serialization failure, deadlock) is run again,
//!   at most [`MAX_RETRIES`] times, with a short random back-off, within the call's deadline.
//!
//! Every value is bound (`$1`), never formatted into SQL. The table modules are functions over
//! a client or a transaction, like SQLite's; statements are prepared once per connection.

pub mod api_keys;
pub mod audit;
mod conn;
pub mod events;
pub mod files;
pub mod grants;
mod leases;
pub mod links;
mod listener;
pub mod resumable;
pub mod sessions;
mod throttle;
mod tls;
pub mod transfer;
mod types;
pub mod uploads;
pub mod users;
pub mod views;

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tokio::time::{Instant, timeout_at};
pub use tokio_postgres::IsolationLevel;

pub use conn::{Settings, check_url, url_has_password};
use conn::{classify, is_retryable, pool_error};

use crate::meta::error::MetaError;
use crate::meta::maintenance::{Cluster, Maintenance};
use crate::meta::migrations;
use crate::meta::revocations::{ECHO_WAIT, Echo, Hub, Revoked};

/// A pooled connection.
pub(crate) type Client = deadpool_postgres::Object;
/// A transaction on a pooled connection.
pub(crate) type Tx<'a> = deadpool_postgres::Transaction<'a>;
/// What a table function returns.
pub(crate) type PgResult<T> = Result<T, tokio_postgres::Error>;

/// Most times a transaction that lost a conflict is run again before the call answers `Busy`.
pub const MAX_RETRIES: u32 = 10;

/// Advisory lock keys (one 64-bit space per database, shared with anything else using it,
/// hence the `coffer` prefix in the high bytes).
pub mod lock_keys {
    /// Held while migrating, so several nodes starting at once migrate exactly once.
    pub const MIGRATIONS: i64 = crate::meta::migrations::POSTGRES_LOCK;
    /// Held by every audit append and prune: one chain, appended from its tail.
    pub const AUDIT_CHAIN: i64 = 0x636f_6666_6572_0002;
    /// Held by every change that can lower the number of administrators who can log in.
    pub const ADMINS: i64 = 0x636f_6666_6572_0003;
}

/// The channel revocations travel on between nodes (`NOTIFY` / `LISTEN`).
pub const REVOCATIONS_CHANNEL: &str = "coffer_revoked";
/// The channel on which each node confirms a revocation it applied to the node that made it.
pub const CONFIRMATIONS_CHANNEL: &str = "coffer_revoked_ok";
/// The channel on which a transaction that recorded events wakes every node's delivery worker.
pub const EVENTS_CHANNEL: &str = "coffer_events";
/// The `application_name` of every node's listening session: a node counts the others by it.
pub const LISTENER_NAME: &str = "coffer-listener";

/// The PostgreSQL engine: a pool of connections and the bound on each call.
pub struct Postgres {
    pool: deadpool_postgres::Pool,
    call_timeout: Duration,
    /// For the listener's own connection.
    settings: Settings,
    /// Revocations: announced here after each commit, and to the other nodes by `NOTIFY`.
    hub: Hub,
    /// Whether the listener runs.
    listening: std::sync::atomic::AtomicBool,
    /// The listening session's backend pid while it listens, else 0.
    listener_pid: Arc<AtomicI32>,
    /// Whether this node's migration added the audit chain's head (its placeholder is ours
    /// to seal).
    added_heads: bool,
}

impl Postgres {
    /// Connect, and migrate the database to this binary's schema (once, whichever node gets
    /// there first). A database newer than the binary is refused.
    pub async fn open(settings: &Settings) -> Result<Self, MetaError> {
        let pool = conn::pool(settings)?;
        let mut client = pool.get().await.map_err(pool_error)?;
        let migrated = migrations::run_postgres(&mut client).await;
        // Its own session (it held a session lock, changed its timeouts): never pooled.
        drop(deadpool_postgres::Object::take(client));
        let applied = match migrated {
            Ok(applied) => applied,
            Err(migrations::PgMigrationError::Postgres(e)) => return Err(classify(e)),
            Err(migrations::PgMigrationError::Newer { found }) => {
                return Err(MetaError::Corrupt(format!(
                    "database schema v{found} is newer than this binary (v{})",
                    migrations::LATEST
                )));
            }
        };
        Ok(Self {
            pool,
            call_timeout: settings.call_timeout,
            settings: settings.clone(),
            // Not live until the listener listens: until then nothing is served from memory.
            hub: Hub::new(false),
            listening: std::sync::atomic::AtomicBool::new(false),
            listener_pid: Arc::new(AtomicI32::new(0)),
            added_heads: applied.contains(&migrations::AUDIT_HEADS),
        })
    }

    /// Whether this node's migration added the audit chain's head.
    pub(crate) fn added_heads(&self) -> bool {
        self.added_heads
    }

    /// What travels to the other nodes for `what`: `<node> <echo id> <revocation>`.
    pub(crate) fn payload(echo: &Echo, what: Revoked) -> String {
        format!("{} {}", echo.origin(), what.encode())
    }

    /// After a revoking transaction committed (its `NOTIFY` went to the other nodes with it):
    /// tell this process's caches, then wait (bounded) until every other node listening now
    /// has confirmed it applied the announcement (see `meta::revocations`).
    pub(crate) async fn announce(&self, what: Option<Revoked>, echo: Echo) {
        let Some(what) = what else { return };
        self.hub.publish(what);
        let own = self.listener_pid.load(Ordering::Acquire);
        if own == 0 || !self.hub.is_live() {
            return;
        }
        let deadline = Instant::now() + ECHO_WAIT;
        let others = self
            .one_until(deadline, own, |c, own| Box::pin(other_listeners(c, *own)))
            .await;
        match others {
            Ok(n) => echo.confirmed(n).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count the other nodes to confirm a revocation")
            }
        }
    }

    /// After a transaction that recorded `n` deliveries committed: wake this node's delivery
    /// worker (the others hear the transaction's `NOTIFY`).
    pub(crate) fn events_committed(&self, n: u64) {
        if n > 0 {
            self.hub.events_committed();
        }
    }

    /// Run `f` on a pooled connection outside an explicit transaction: each statement it sends
    /// is a transaction of its own. For calls of one statement, or of several with no rule
    /// between them. `args` are lent to each attempt.
    pub(crate) async fn one<A, T, F>(&self, args: A, f: F) -> Result<T, MetaError>
    where
        A: Send + Sync,
        T: Send,
        F: for<'c> Fn(&'c Client, &'c A) -> BoxFuture<'c, PgResult<T>> + Send + Sync,
    {
        self.one_until(Instant::now() + self.call_timeout, args, f)
            .await
    }

    async fn one_until<A, T, F>(&self, deadline: Instant, args: A, f: F) -> Result<T, MetaError>
    where
        A: Send + Sync,
        T: Send,
        F: for<'c> Fn(&'c Client, &'c A) -> BoxFuture<'c, PgResult<T>> + Send + Sync,
    {
        let mut retries = 0;
        loop {
            let client = self.checkout(deadline).await?;
            let outcome = timeout_at(deadline, f(&client, &args)).await;
            if let Some(v) = self.settle(client, outcome, &mut retries, deadline).await? {
                return Ok(v);
            }
        }
    }

    /// Run `f` in one transaction at `isolation` and commit it; a transaction that lost a
    /// conflict is run again from the start (so `f` must not act outside the database).
    pub(crate) async fn tx<A, T, F>(
        &self,
        isolation: IsolationLevel,
        args: A,
        f: F,
    ) -> Result<T, MetaError>
    where
        A: Send + Sync,
        T: Send,
        F: for<'c> Fn(&'c Tx<'c>, &'c A) -> BoxFuture<'c, PgResult<T>> + Send + Sync,
    {
        let deadline = Instant::now() + self.call_timeout;
        let mut retries = 0;
        loop {
            let mut client = self.checkout(deadline).await?;
            let outcome = timeout_at(deadline, async {
                let tx = client
                    .build_transaction()
                    .isolation_level(isolation)
                    .start()
                    .await?;
                let value = f(&tx, &args).await?;
                tx.commit().await?;
                Ok(value)
            })
            .await;
            if let Some(v) = self.settle(client, outcome, &mut retries, deadline).await? {
                return Ok(v);
            }
        }
    }

    /// A pooled connection, waiting no later than `deadline`.
    async fn checkout(&self, deadline: Instant) -> Result<Client, MetaError> {
        match timeout_at(deadline, self.pool.get()).await {
            Ok(got) => got.map_err(pool_error),
            Err(_) => Err(MetaError::Unavailable(
                "no database connection within the call timeout".into(),
            )),
        }
    }

    /// After an attempt: its value, `None` to run it again, or the error the call answers.
    async fn settle<T>(
        &self,
        client: Client,
        outcome: Result<PgResult<T>, tokio::time::error::Elapsed>,
        retries: &mut u32,
        deadline: Instant,
    ) -> Result<Option<T>, MetaError> {
        match outcome {
            Ok(Ok(v)) => Ok(Some(v)),
            Ok(Err(e)) if is_retryable(&e) && *retries < MAX_RETRIES => {
                drop(client);
                *retries += 1;
                backoff(*retries, deadline).await;
                Ok(None)
            }
            Ok(Err(e)) => {
                let e = classify(e);
                if matches!(e, MetaError::Unavailable(_)) {
                    drop(deadpool_postgres::Object::take(client));
                }
                Err(e)
            }
            Err(_) => {
                // Whatever the connection was doing, its state is unknown: close it (the server
                // then rolls back and releases its locks).
                drop(deadpool_postgres::Object::take(client));
                Err(MetaError::Unavailable(format!(
                    "the database did not answer within {} ms",
                    self.call_timeout.as_millis()
                )))
            }
        }
    }
}

/// Sleep a random 0.5-1.5 times `2^retries` ms (at most about 100 ms), never past `deadline`:
/// two transactions that keep colliding drift apart.
async fn backoff(retries: u32, deadline: Instant) {
    let base = 1u64 << retries.min(6);
    let jitter = u64::from(getrandom::u32().unwrap_or(0) % 1000);
    let micros = base * 1000 * (500 + jitter) / 1000;
    let until = (Instant::now() + Duration::from_micros(micros)).min(deadline);
    tokio::time::sleep_until(until).await;
}

impl Cluster for Postgres {
    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn listen(&self) {
        if !self.listening.swap(true, Ordering::AcqRel) {
            tokio::spawn(listener::run(
                self.settings.clone(),
                self.hub.clone(),
                self.listener_pid.clone(),
            ));
        }
    }

    fn login_throttles(&self) -> Option<&dyn crate::meta::throttle::LoginThrottles> {
        Some(self)
    }
}

/// The listening sessions of other nodes on this database now (every session named
/// [`LISTENER_NAME`] but `own`).
async fn other_listeners(c: &Client, own: i32) -> PgResult<usize> {
    let st = c
        .prepare_cached(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = $1 AND pid <> $2",
        )
        .await?;
    let n: i64 = c
        .query_one(&st, &[&LISTENER_NAME, &own])
        .await?
        .try_get(0)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// `SELECT pg_notify(channel, payload)` in the caller's transaction: delivered to every
/// listening node when it commits, never if it rolls back.
pub(crate) async fn notify(
    c: &impl deadpool_postgres::GenericClient,
    payload: &str,
) -> PgResult<()> {
    let st = c.prepare_cached("SELECT pg_notify($1, $2)").await?;
    c.execute(&st, &[&REVOCATIONS_CHANNEL, &payload]).await?;
    Ok(())
}

#[async_trait]
impl Maintenance for Postgres {
    async fn ping(&self) -> bool {
        // `/readyz` answers quickly even while the database is silent.
        let deadline = Instant::now() + self.call_timeout.min(Duration::from_secs(2));
        self.one_until(deadline, (), |c, ()| {
            Box::pin(async move { c.simple_query("SELECT 1").await.map(|_| ()) })
        })
        .await
        .is_ok()
    }

    async fn checkpoint(&self) -> Result<(), MetaError> {
        // Every commit is durable on the server already.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pool exhaustion, which no interface call can cause by itself (every call gives its
    /// connection back by its own deadline): a connection held here, a call that needs one.
    /// Needs a server (`COFFER_TEST_DATABASE_URL`, set by `scripts/test-stack`); no schema.
    #[tokio::test]
    async fn an_empty_pool_is_unavailable_at_the_call_deadline_and_refills() {
        let Some(url) = std::env::var("COFFER_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert!(
                std::env::var("COFFER_TEST_REQUIRE_STACK").as_deref() != Ok("1"),
                "COFFER_TEST_REQUIRE_STACK=1 but COFFER_TEST_DATABASE_URL is not set"
            );
            eprintln!("skipped: needs COFFER_TEST_DATABASE_URL (scripts/test-stack)");
            return;
        };
        let settings = Settings {
            url,
            pool_size: 1,
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_millis(700),
        };
        let pg = Postgres {
            pool: conn::pool(&settings).unwrap(),
            call_timeout: settings.call_timeout,
            settings: settings.clone(),
            hub: Hub::new(false),
            listening: std::sync::atomic::AtomicBool::new(false),
            listener_pid: Arc::new(AtomicI32::new(0)),
            added_heads: false,
        };
        fn select<'c>(c: &'c Client, (): &'c ()) -> BoxFuture<'c, PgResult<()>> {
            Box::pin(async move { c.simple_query("SELECT 1").await.map(|_| ()) })
        }
        pg.one((), select).await.unwrap();
        let held = pg.pool.get().await.unwrap();
        let started = std::time::Instant::now();
        let err = pg.one((), select).await.unwrap_err();
        assert!(matches!(err, MetaError::Unavailable(_)), "{err}");
        assert!(
            started.elapsed() >= Duration::from_millis(650),
            "{:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        drop(held);
        pg.one((), select).await.unwrap();
    }
}
