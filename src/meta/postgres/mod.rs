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
pub mod files;
pub mod links;
pub mod sessions;
mod tls;
pub mod transfer;
mod types;
pub mod users;

use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tokio::time::{Instant, timeout_at};
pub use tokio_postgres::IsolationLevel;

pub use conn::{Settings, check_url, url_has_password};
use conn::{classify, is_retryable, pool_error};

use crate::meta::error::MetaError;
use crate::meta::maintenance::Maintenance;
use crate::meta::migrations;

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

/// The PostgreSQL engine: a pool of connections and the bound on each call.
pub struct Postgres {
    pool: deadpool_postgres::Pool,
    call_timeout: Duration,
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
        match migrated {
            Ok(()) => {}
            Err(migrations::PgMigrationError::Postgres(e)) => return Err(classify(e)),
            Err(migrations::PgMigrationError::Newer { found }) => {
                return Err(MetaError::Corrupt(format!(
                    "database schema v{found} is newer than this binary (v{})",
                    migrations::LATEST
                )));
            }
        }
        Ok(Self {
            pool,
            call_timeout: settings.call_timeout,
        })
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
