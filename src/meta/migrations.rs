//! Embedded, versioned schema migrations, tracked by `PRAGMA user_version`.
//!
//! Invariant: migrations only ever append; each runs in its own transaction, so a database is
//! always at exactly one version. A database newer than this binary is refused.

use rusqlite::{Connection, TransactionBehavior};

/// The schema, one entry per version (index 0 is version 1).
const MIGRATIONS: &[&str] = &[
    // v1: accounts, logins, keys, files, links, audit.
    r#"
    CREATE TABLE users (
        id            TEXT PRIMARY KEY,
        username      TEXT NOT NULL COLLATE NOCASE UNIQUE,
        email         TEXT NOT NULL COLLATE NOCASE UNIQUE,
        password_hash TEXT NOT NULL,
        role          TEXT NOT NULL CHECK (role IN ('user', 'admin')),
        created_at    INTEGER NOT NULL,
        used_bytes    INTEGER NOT NULL DEFAULT 0 CHECK (used_bytes >= 0)
    ) STRICT;
    CREATE INDEX users_by_created ON users (created_at DESC, id DESC);

    -- A login: one refresh-token family. Access tokens carry its id.
    CREATE TABLE sessions (
        id         TEXT PRIMARY KEY,
        user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER
    ) STRICT;
    CREATE INDEX sessions_by_user ON sessions (user_id);

    -- Refresh tokens, by SHA-256 of the token. used_at set = rotated; presenting it again is reuse.
    CREATE TABLE refresh_tokens (
        hash       BLOB PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at    INTEGER
    ) STRICT;
    CREATE INDEX refresh_by_session ON refresh_tokens (session_id);

    -- Access-token ids revoked before their expiry (logout).
    CREATE TABLE revoked_tokens (
        jti        TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE api_keys (
        id         TEXT PRIMARY KEY,
        user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        name       TEXT NOT NULL,
        prefix     TEXT NOT NULL UNIQUE,
        hash       BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER
    ) STRICT;
    CREATE INDEX api_keys_by_user ON api_keys (user_id, created_at DESC);

    -- Files. No cascade from users: blobs must be removed by code before their rows.
    CREATE TABLE files (
        id              TEXT PRIMARY KEY,
        owner_id        TEXT NOT NULL REFERENCES users (id),
        filename        TEXT NOT NULL,
        size            INTEGER NOT NULL CHECK (size >= 0),
        content_type    TEXT NOT NULL,
        sha256          TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        expires_at      INTEGER,
        blob_key        TEXT NOT NULL UNIQUE,
        enc_key_id      TEXT,
        enc_wrapped_key BLOB,
        CHECK ((enc_key_id IS NULL) = (enc_wrapped_key IS NULL))
    ) STRICT;
    CREATE INDEX files_by_owner ON files (owner_id, created_at DESC, id DESC);
    CREATE INDEX files_by_expiry ON files (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TRIGGER files_usage_add AFTER INSERT ON files BEGIN
        UPDATE users SET used_bytes = used_bytes + NEW.size WHERE id = NEW.owner_id;
    END;
    CREATE TRIGGER files_usage_sub AFTER DELETE ON files BEGIN
        UPDATE users SET used_bytes = used_bytes - OLD.size WHERE id = OLD.owner_id;
    END;

    -- Share links, by SHA-256 of the token; they die with their file.
    CREATE TABLE links (
        id            TEXT PRIMARY KEY,
        file_id       TEXT NOT NULL REFERENCES files (id) ON DELETE CASCADE,
        token_hash    BLOB NOT NULL UNIQUE,
        created_at    INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        max_downloads INTEGER CHECK (max_downloads IS NULL OR max_downloads >= 1),
        downloads     INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX links_by_file ON links (file_id);
    CREATE INDEX links_by_expiry ON links (expires_at);

    -- The audit trail: append-only, each row chained to the one before by `hash`.
    CREATE TABLE audit (
        seq        INTEGER PRIMARY KEY,
        id         TEXT NOT NULL UNIQUE,
        at         INTEGER NOT NULL,
        event      TEXT NOT NULL,
        actor_id   TEXT,
        subject_id TEXT,
        client_ip  TEXT,
        detail     TEXT NOT NULL,
        hash       BLOB NOT NULL
    ) STRICT;
    CREATE INDEX audit_by_at ON audit (at);
    -- The last entry removed by retention, so the chain's start stays verifiable.
    CREATE TABLE audit_anchor (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        seq  INTEGER NOT NULL,
        hash BLOB NOT NULL
    ) STRICT;
    "#,
    // v2: the argon2 costs stored hashes use, so a failed login can do the same work whatever
    // the account's state (see `auth::password`). An argon2 PHC string is
    // `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>` (salt and hash in unpadded base64); its
    // cost is everything before the salt followed by the hash's length in base64 characters:
    // `$argon2id$v=19$m=19456,t=2,p=1$43`. Locked accounts (`!locked`) and anything not shaped
    // like an argon2 PHC string have none.
    r#"
    ALTER TABLE users ADD COLUMN password_cost TEXT GENERATED ALWAYS AS (
        CASE WHEN password_hash LIKE '$argon2%$%$%$%' THEN
            rtrim(rtrim(rtrim(password_hash,
                'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'), '$'),
                'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/')
            || (length(password_hash) - length(rtrim(password_hash,
                'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/')))
        END) VIRTUAL;

    -- Each cost in use and how many accounts use it; kept by the triggers below, whichever
    -- process writes (the server, `coffer user create`).
    CREATE TABLE password_costs (
        cost     TEXT PRIMARY KEY,
        accounts INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    INSERT INTO password_costs (cost, accounts)
        SELECT password_cost, count(*) FROM users
        WHERE password_cost IS NOT NULL GROUP BY password_cost;

    CREATE TRIGGER password_cost_add AFTER INSERT ON users
    WHEN NEW.password_cost IS NOT NULL BEGIN
        INSERT INTO password_costs (cost, accounts) VALUES (NEW.password_cost, 1)
            ON CONFLICT DO UPDATE SET accounts = accounts + 1;
    END;
    CREATE TRIGGER password_cost_leave AFTER UPDATE OF password_hash ON users
    WHEN OLD.password_cost IS NOT NULL BEGIN
        UPDATE password_costs SET accounts = accounts - 1 WHERE cost = OLD.password_cost;
        DELETE FROM password_costs WHERE cost = OLD.password_cost AND accounts <= 0;
    END;
    CREATE TRIGGER password_cost_join AFTER UPDATE OF password_hash ON users
    WHEN NEW.password_cost IS NOT NULL BEGIN
        INSERT INTO password_costs (cost, accounts) VALUES (NEW.password_cost, 1)
            ON CONFLICT DO UPDATE SET accounts = accounts + 1;
    END;
    CREATE TRIGGER password_cost_remove AFTER DELETE ON users
    WHEN OLD.password_cost IS NOT NULL BEGIN
        UPDATE password_costs SET accounts = accounts - 1 WHERE cost = OLD.password_cost;
        DELETE FROM password_costs WHERE cost = OLD.password_cost AND accounts <= 0;
    END;
    "#,
    // v3: blob deletions are queued in the transaction that deletes (or replaces) their row, and
    // carried out after it commits: a crash in between leaves a queued entry that the next start
    // or sweep finishes, never a row without its blob nor an unexplained blob.
    r#"
    CREATE TABLE blob_deletions (
        blob_key  TEXT PRIMARY KEY,
        queued_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    "#,
];

/// The version this binary writes.
pub const LATEST: usize = MIGRATIONS.len();

/// Bring a SQLite database to [`LATEST`].
pub fn run_sqlite(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map(|v| usize::try_from(v).unwrap_or(usize::MAX))?;
    if current > LATEST {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
            Some(format!(
                "database schema v{current} is newer than this binary (v{LATEST})"
            )),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the lock.
        let now: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if usize::try_from(now).unwrap_or(usize::MAX) > i {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_are_idempotent() {
        let mut c = Connection::open_in_memory().unwrap();
        run_sqlite(&mut c).unwrap();
        run_sqlite(&mut c).unwrap();
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(usize::try_from(v).unwrap(), LATEST);
    }
}
