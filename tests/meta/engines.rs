//! The engines under test, and the rows tests make.

use std::path::PathBuf;
use std::time::Duration;

use coffer::ids::{FileId, Timestamp, UserId};
use coffer::meta::MetaStore;
use coffer::meta::files::{FileObject, StoredFile};
use coffer::meta::postgres::Settings;
use coffer::meta::users::{NewUser, Role};
use tempfile::TempDir;

use crate::stack::{self, Stack, TestDb};

/// One engine with a fresh, migrated database.
pub struct Engine {
    /// `sqlite` or `postgres`, for assertion messages.
    pub name: &'static str,
    /// A store on the database.
    pub store: MetaStore,
    at: Where,
}

enum Where {
    Sqlite {
        path: PathBuf,
        _dir: TempDir,
    },
    Postgres {
        db: TestDb,
        // Held for the test: the stack's shared lock.
        _stack: Box<Stack>,
    },
}

impl Engine {
    /// Another store on the same database: another process (SQLite) or node (PostgreSQL).
    pub async fn another(&self) -> MetaStore {
        match &self.at {
            Where::Sqlite { path, .. } => MetaStore::open_sqlite(path, 2).await.unwrap(),
            Where::Postgres { db, .. } => {
                MetaStore::open_postgres(&settings(&db.url)).await.unwrap()
            }
        }
    }

    /// Begin a transaction of another connection, run `sql` in it with `{id}` bound to `id`,
    /// and leave it open: what another node (or process) in the middle of a write looks like.
    pub async fn uncommitted(&self, sql: &str, id: uuid::Uuid) -> OpenTx {
        match &self.at {
            Where::Sqlite { path, .. } => {
                let c = rusqlite::Connection::open(path).unwrap();
                c.execute_batch("BEGIN IMMEDIATE").unwrap();
                c.execute(&sql.replace("{id}", "?1"), [id.to_string()])
                    .unwrap();
                OpenTx::Sqlite(c)
            }
            Where::Postgres { db, .. } => {
                let (c, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                c.batch_execute("BEGIN").await.unwrap();
                c.execute(&sql.replace("{id}", "$1"), &[&id]).await.unwrap();
                OpenTx::Postgres(c)
            }
        }
    }

    /// The PostgreSQL test database, if this is that engine.
    pub fn postgres(&self) -> Option<&TestDb> {
        match &self.at {
            Where::Postgres { db, .. } => Some(db),
            Where::Sqlite { .. } => None,
        }
    }
}

/// A transaction left open by [`Engine::uncommitted`].
pub enum OpenTx {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

impl OpenTx {
    /// Commit it.
    pub async fn commit(self) {
        match self {
            Self::Sqlite(c) => c.execute_batch("COMMIT").unwrap(),
            Self::Postgres(c) => c.batch_execute("COMMIT").await.unwrap(),
        }
    }
}

/// Settings for a test store on `url`: bounds generous enough for a loaded 2-core machine.
pub fn settings(url: &str) -> Settings {
    Settings {
        url: url.to_owned(),
        pool_size: 8,
        connect_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_secs(20),
    }
}

/// SQLite always; PostgreSQL when the test stack is up (else skipped, said once).
pub async fn all(test: &str) -> Vec<Engine> {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("coffer.db");
    let mut engines = vec![Engine {
        name: "sqlite",
        store: MetaStore::open_sqlite(&path, 2).await.unwrap(),
        at: Where::Sqlite { path, _dir: dir },
    }];
    if let Some(e) = postgres(test).await {
        engines.push(e);
    }
    engines
}

/// PostgreSQL alone, on a fresh database; `None` (skipped) without the stack.
pub async fn postgres(test: &str) -> Option<Engine> {
    let stack = stack::require(test)?;
    let db = stack.fresh_database();
    let store = MetaStore::open_postgres(&settings(&db.url)).await.unwrap();
    Some(Engine {
        name: "postgres",
        store,
        at: Where::Postgres {
            db,
            _stack: Box::new(stack),
        },
    })
}

/// A new account named `name` (email `name@example.com`).
pub fn user(name: &str, role: Role) -> NewUser {
    NewUser {
        id: UserId::new(),
        username: name.into(),
        email: format!("{name}@example.com"),
        password_hash: "$argon2id$dummy".into(),
        role,
        created_at: Timestamp::now(),
    }
}

/// Insert an account; its id.
pub async fn add_user(store: &MetaStore, name: &str, role: Role) -> UserId {
    let u = user(name, role);
    let id = u.id;
    assert_eq!(
        store.users().insert(u).await.unwrap(),
        coffer::meta::users::Inserted::Created
    );
    id
}

/// A file row of `owner`, `size` bytes, created at `created_at`, expiring at `expires_at`.
pub fn file(
    owner: UserId,
    size: u64,
    created_at: Timestamp,
    expires_at: Option<Timestamp>,
) -> StoredFile {
    let id = FileId::new();
    StoredFile {
        file: FileObject {
            id,
            filename: format!("{id}.txt"),
            size,
            content_type: "text/plain; charset=utf-8".into(),
            sha256: "00".repeat(32),
            created_at,
            expires_at,
            scanned_at: None,
            grant_id: None,
        },
        owner_id: owner,
        blob_key: format!("blobs/{id}"),
        sealing: None,
    }
}

/// Insert a live file of `owner`; the row.
pub async fn add_file(store: &MetaStore, owner: UserId, size: u64) -> StoredFile {
    let f = file(owner, size, Timestamp::now(), None);
    assert_eq!(
        store.files().insert(f.clone()).await.unwrap(),
        coffer::meta::files::Inserted::Inserted
    );
    f
}
