//! Embedded, versioned schema migrations: the one ordered list of schema versions, each
//! written for SQLite and for PostgreSQL. SQLite tracks its version in `PRAGMA user_version`;
//! PostgreSQL in the table `coffer_schema` (one row per version applied).
//!
//! Invariant: migrations only ever append; each runs in its own transaction, so a database is
//! always at exactly one version, and both engines are at the same schema for the same
//! number. Each engine migrates under its own lock (SQLite's write lock; a PostgreSQL advisory
//! lock), so processes or nodes starting together migrate exactly once. A database newer than
//! this binary is refused.

use rusqlite::{Connection, TransactionBehavior};

/// One schema version, written for each engine: the same tables, columns, constraints and
/// triggers, so that every interface method means the same on both.
pub struct Migration {
    /// The SQLite text.
    pub sqlite: &'static str,
    /// The PostgreSQL text.
    pub postgres: &'static str,
}

/// The schema, one entry per version (index 0 is version 1).
pub const MIGRATIONS: &[Migration] = &[
    // v1: accounts, logins, keys, files, links, audit.
    Migration {
        sqlite: r#"
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
        postgres: r#"
        CREATE TABLE users (
            id            UUID PRIMARY KEY,
            username      TEXT NOT NULL,
            email         TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            role          TEXT NOT NULL CHECK (role IN ('user', 'admin')),
            created_at    BIGINT NOT NULL,
            used_bytes    BIGINT NOT NULL DEFAULT 0 CHECK (used_bytes >= 0)
        );
        -- SQLite's NOCASE folds ASCII letters only; so does lower() under the "C" collation,
        -- whatever the database's locale.
        CREATE UNIQUE INDEX users_username_nocase ON users (lower(username COLLATE "C"));
        CREATE UNIQUE INDEX users_email_nocase ON users (lower(email COLLATE "C"));
        CREATE INDEX users_by_created ON users (created_at DESC, id DESC);

        CREATE TABLE sessions (
            id         UUID PRIMARY KEY,
            user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            revoked_at BIGINT
        );
        CREATE INDEX sessions_by_user ON sessions (user_id);

        CREATE TABLE refresh_tokens (
            hash       BYTEA PRIMARY KEY,
            session_id UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            used_at    BIGINT
        );
        CREATE INDEX refresh_by_session ON refresh_tokens (session_id);

        CREATE TABLE revoked_tokens (
            jti        TEXT PRIMARY KEY,
            expires_at BIGINT NOT NULL
        );

        CREATE TABLE api_keys (
            id         UUID PRIMARY KEY,
            user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            name       TEXT NOT NULL,
            prefix     TEXT NOT NULL UNIQUE,
            hash       BYTEA NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT
        );
        CREATE INDEX api_keys_by_user ON api_keys (user_id, created_at DESC);

        CREATE TABLE files (
            id              UUID PRIMARY KEY,
            owner_id        UUID NOT NULL REFERENCES users (id),
            filename        TEXT NOT NULL,
            size            BIGINT NOT NULL CHECK (size >= 0),
            content_type    TEXT NOT NULL,
            sha256          TEXT NOT NULL,
            created_at      BIGINT NOT NULL,
            expires_at      BIGINT,
            blob_key        TEXT NOT NULL UNIQUE,
            enc_key_id      TEXT,
            enc_wrapped_key BYTEA,
            CHECK ((enc_key_id IS NULL) = (enc_wrapped_key IS NULL))
        );
        CREATE INDEX files_by_owner ON files (owner_id, created_at DESC, id DESC);
        CREATE INDEX files_by_expiry ON files (expires_at) WHERE expires_at IS NOT NULL;
        CREATE FUNCTION files_usage() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                UPDATE users SET used_bytes = used_bytes + NEW.size WHERE id = NEW.owner_id;
            ELSE
                UPDATE users SET used_bytes = used_bytes - OLD.size WHERE id = OLD.owner_id;
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER files_usage_add AFTER INSERT ON files
            FOR EACH ROW EXECUTE FUNCTION files_usage();
        CREATE TRIGGER files_usage_sub AFTER DELETE ON files
            FOR EACH ROW EXECUTE FUNCTION files_usage();

        CREATE TABLE links (
            id            UUID PRIMARY KEY,
            file_id       UUID NOT NULL REFERENCES files (id) ON DELETE CASCADE,
            token_hash    BYTEA NOT NULL UNIQUE,
            created_at    BIGINT NOT NULL,
            expires_at    BIGINT NOT NULL,
            max_downloads BIGINT CHECK (max_downloads IS NULL OR max_downloads >= 1),
            downloads     BIGINT NOT NULL DEFAULT 0
        );
        CREATE INDEX links_by_file ON links (file_id);
        CREATE INDEX links_by_expiry ON links (expires_at);

        -- `detail` is the JSON text exactly as hashed (jsonb would normalise it).
        CREATE TABLE audit (
            seq        BIGINT PRIMARY KEY,
            id         UUID NOT NULL UNIQUE,
            at         BIGINT NOT NULL,
            event      TEXT NOT NULL,
            actor_id   TEXT,
            subject_id TEXT,
            client_ip  TEXT,
            detail     TEXT NOT NULL,
            hash       BYTEA NOT NULL
        );
        CREATE INDEX audit_by_at ON audit (at);
        CREATE TABLE audit_anchor (
            id   INTEGER PRIMARY KEY CHECK (id = 1),
            seq  BIGINT NOT NULL,
            hash BYTEA NOT NULL
        );
        "#,
    },
    // v2: the argon2 costs stored hashes use, so a failed login can do the same work whatever
    // the account's state (see `auth::password`). An argon2 PHC string is
    // `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>` (salt and hash in unpadded base64); its
    // cost is everything before the salt followed by the hash's length in base64 characters:
    // `$argon2id$v=19$m=19456,t=2,p=1$43`. Locked accounts (`!locked`) and anything not shaped
    // like an argon2 PHC string have none.
    Migration {
        sqlite: r#"
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
        postgres: r#"
        -- STORED: PostgreSQL before 18 has no virtual generated columns. ILIKE: SQLite's LIKE
        -- ignores ASCII case.
        ALTER TABLE users ADD COLUMN password_cost TEXT COLLATE "C" GENERATED ALWAYS AS (
            CASE WHEN password_hash ILIKE '$argon2%$%$%$%' THEN
                rtrim(rtrim(rtrim(password_hash,
                    'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'), '$'),
                    'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/')
                || (length(password_hash) - length(rtrim(password_hash,
                    'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/')))::text
            END) STORED;

        CREATE TABLE password_costs (
            cost     TEXT COLLATE "C" PRIMARY KEY,
            accounts BIGINT NOT NULL
        );
        INSERT INTO password_costs (cost, accounts)
            SELECT password_cost, count(*) FROM users
            WHERE password_cost IS NOT NULL GROUP BY password_cost;

        CREATE FUNCTION password_costs_follow() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.password_cost IS NOT NULL THEN
                UPDATE password_costs SET accounts = accounts - 1 WHERE cost = OLD.password_cost;
                DELETE FROM password_costs WHERE cost = OLD.password_cost AND accounts <= 0;
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.password_cost IS NOT NULL THEN
                INSERT INTO password_costs (cost, accounts) VALUES (NEW.password_cost, 1)
                    ON CONFLICT (cost) DO UPDATE SET accounts = password_costs.accounts + 1;
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER password_cost_add AFTER INSERT ON users
            FOR EACH ROW EXECUTE FUNCTION password_costs_follow();
        CREATE TRIGGER password_cost_change AFTER UPDATE OF password_hash ON users
            FOR EACH ROW EXECUTE FUNCTION password_costs_follow();
        CREATE TRIGGER password_cost_remove AFTER DELETE ON users
            FOR EACH ROW EXECUTE FUNCTION password_costs_follow();
        "#,
    },
    // v3: blob deletions are queued in the transaction that deletes (or replaces) their row, and
    // carried out after it commits: a crash in between leaves a queued entry that the next start
    // or sweep finishes, never a row without its blob nor an unexplained blob.
    Migration {
        sqlite: r#"
        CREATE TABLE blob_deletions (
            blob_key  TEXT PRIMARY KEY,
            queued_at INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID;
        "#,
        postgres: r#"
        CREATE TABLE blob_deletions (
            blob_key  TEXT PRIMARY KEY,
            queued_at BIGINT NOT NULL
        );
        "#,
    },
    // v4: when clamd found a file clean (API.md "Content safety"); NULL when no scanner was
    // configured, or the file was stored unscanned (`scan.fail_open`, `scan.skip_larger`).
    Migration {
        sqlite: r#"
        ALTER TABLE files ADD COLUMN scanned_at INTEGER;
        "#,
        postgres: r#"
        ALTER TABLE files ADD COLUMN scanned_at BIGINT;
        "#,
    },
    // v5: what several nodes must agree on. Uploads in flight hold their quota here (not in a
    // node's memory), with what a sweeper needs to clean up after a node that died mid-upload;
    // leases say which node runs background work; login throttling and the login budget are
    // shared (PostgreSQL; an SQLite node keeps them in memory, the tables stay empty).
    // No foreign key from a reservation to its owner: an account may go while a dead node's
    // upload is still to be cleaned up, and the sweeper still needs the row.
    Migration {
        sqlite: r#"
        CREATE TABLE upload_reservations (
            id         TEXT PRIMARY KEY,
            owner_id   TEXT NOT NULL,
            bytes      INTEGER NOT NULL CHECK (bytes >= 0),
            blob_key   TEXT,
            staging_id TEXT,
            node       TEXT NOT NULL,
            started_at INTEGER NOT NULL,
            touched_at INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX upload_reservations_by_owner ON upload_reservations (owner_id);
        CREATE INDEX upload_reservations_by_touch ON upload_reservations (touched_at);

        CREATE TABLE leases (
            name       TEXT PRIMARY KEY,
            holder     TEXT NOT NULL,
            expires_at INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID;

        -- network '' = the account-wide counter.
        CREATE TABLE login_failures (
            username TEXT NOT NULL,
            network  TEXT NOT NULL,
            failures INTEGER NOT NULL,
            last_at  INTEGER NOT NULL,
            until_at INTEGER NOT NULL,
            PRIMARY KEY (username, network)
        ) STRICT, WITHOUT ROWID;
        CREATE TABLE login_known (
            username TEXT NOT NULL,
            network  TEXT NOT NULL,
            at       INTEGER NOT NULL,
            PRIMARY KEY (username, network)
        ) STRICT, WITHOUT ROWID;
        -- GCRA: the theoretical arrival time of the next request of each network.
        CREATE TABLE login_budget (
            network TEXT PRIMARY KEY,
            tat     INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID;
        "#,
        postgres: r#"
        CREATE TABLE upload_reservations (
            id         UUID PRIMARY KEY,
            owner_id   UUID NOT NULL,
            bytes      BIGINT NOT NULL CHECK (bytes >= 0),
            blob_key   TEXT,
            staging_id TEXT,
            node       TEXT NOT NULL,
            started_at BIGINT NOT NULL,
            touched_at BIGINT NOT NULL
        );
        CREATE INDEX upload_reservations_by_owner ON upload_reservations (owner_id);
        CREATE INDEX upload_reservations_by_touch ON upload_reservations (touched_at);

        CREATE TABLE leases (
            name       TEXT PRIMARY KEY,
            holder     TEXT NOT NULL,
            expires_at BIGINT NOT NULL
        );

        CREATE TABLE login_failures (
            username TEXT NOT NULL,
            network  TEXT NOT NULL,
            failures INTEGER NOT NULL,
            last_at  BIGINT NOT NULL,
            until_at BIGINT NOT NULL,
            PRIMARY KEY (username, network)
        );
        CREATE TABLE login_known (
            username TEXT NOT NULL,
            network  TEXT NOT NULL,
            at       BIGINT NOT NULL,
            PRIMARY KEY (username, network)
        );
        CREATE TABLE login_budget (
            network TEXT PRIMARY KEY,
            tat     BIGINT NOT NULL
        );
        "#,
    },
    // v6: each audit entry names the key that chained it (a one-way fingerprint), so the chain
    // survives a change of the service secret and `check` verifies each entry with its own key.
    // Entries written before stay NULL: they are tried with every key given.
    Migration {
        sqlite: r#"
        ALTER TABLE audit ADD COLUMN key_id TEXT;
        "#,
        postgres: r#"
        ALTER TABLE audit ADD COLUMN key_id TEXT;
        "#,
    },
    // v7: view URLs. Each owner's view-key generation, bound into every view token the owner
    // mints (revoking them all is one increment, seen by every node at its next check); and
    // the first use of each token (by a digest), kept until it expires, so a token is
    // audited once across nodes.
    Migration {
        sqlite: r#"
        ALTER TABLE users ADD COLUMN view_generation INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE view_uses (
            key        BLOB PRIMARY KEY,
            expires_at INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX view_uses_expiry ON view_uses (expires_at);
        "#,
        postgres: r#"
        ALTER TABLE users ADD COLUMN view_generation BIGINT NOT NULL DEFAULT 0;
        CREATE TABLE view_uses (
            key        BYTEA PRIMARY KEY,
            expires_at BIGINT NOT NULL
        );
        CREATE INDEX view_uses_expiry ON view_uses (expires_at);
        "#,
    },
    // v8: upload grants (API.md "Upload grants"): found by the SHA-256 of their token, never
    // the token. `uses` counts uploads started and not failed: a use is taken in the
    // transaction that reserves the upload's quota (the reservation names its grant) and given
    // back in the one that releases it, so a crashed node's uses come back with its swept
    // reservations. Revoking deletes the row; files keep the id they were uploaded with.
    Migration {
        sqlite: r#"
        CREATE TABLE upload_grants (
            id              TEXT PRIMARY KEY,
            user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            token_hash      BLOB NOT NULL UNIQUE,
            created_at      INTEGER NOT NULL,
            expires_at      INTEGER NOT NULL,
            max_bytes       INTEGER NOT NULL CHECK (max_bytes >= 1),
            extensions      TEXT NOT NULL,
            max_uploads     INTEGER NOT NULL CHECK (max_uploads >= 1),
            uses            INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0),
            file_expires_in INTEGER,
            sha256          TEXT
        ) STRICT;
        CREATE INDEX upload_grants_by_user ON upload_grants (user_id, created_at);
        CREATE INDEX upload_grants_by_expiry ON upload_grants (expires_at);
        ALTER TABLE files ADD COLUMN grant_id TEXT;
        CREATE INDEX files_by_grant ON files (grant_id) WHERE grant_id IS NOT NULL;
        ALTER TABLE upload_reservations ADD COLUMN grant_id TEXT;
        "#,
        postgres: r#"
        CREATE TABLE upload_grants (
            id              UUID PRIMARY KEY,
            user_id         UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            token_hash      BYTEA NOT NULL UNIQUE,
            created_at      BIGINT NOT NULL,
            expires_at      BIGINT NOT NULL,
            max_bytes       BIGINT NOT NULL CHECK (max_bytes >= 1),
            extensions      TEXT NOT NULL,
            max_uploads     BIGINT NOT NULL CHECK (max_uploads >= 1),
            uses            BIGINT NOT NULL DEFAULT 0 CHECK (uses >= 0),
            file_expires_in BIGINT,
            sha256          TEXT
        );
        CREATE INDEX upload_grants_by_user ON upload_grants (user_id, created_at);
        CREATE INDEX upload_grants_by_expiry ON upload_grants (expires_at);
        ALTER TABLE files ADD COLUMN grant_id UUID;
        CREATE INDEX files_by_grant ON files (grant_id) WHERE grant_id IS NOT NULL;
        ALTER TABLE upload_reservations ADD COLUMN grant_id UUID;
        "#,
    },
    // v9: resumable (tus) uploads: one row per unfinished upload (its id is the future file's),
    // holding the durable offset and the lease of the PATCH writing to it; one row per staged
    // chunk (a blob of its own, sealed with its own data key when encryption is on). The
    // quota lives in `upload_reservations` under the same id. `grant_id` names the
    // upload grant it was created with (every later request must present that grant).
    Migration {
        sqlite: r#"
        CREATE TABLE resumable_uploads (
            id           TEXT PRIMARY KEY,
            owner_id     TEXT NOT NULL,
            length       INTEGER NOT NULL CHECK (length >= 0),
            upload_offset INTEGER NOT NULL CHECK (upload_offset >= 0),
            metadata     TEXT NOT NULL,
            filename     TEXT NOT NULL,
            file_expires_at INTEGER,
            created_at   INTEGER NOT NULL,
            expires_at   INTEGER NOT NULL,
            lock_holder  TEXT,
            lock_until   INTEGER,
            grant_id     TEXT
        ) STRICT;
        CREATE INDEX resumable_uploads_by_owner ON resumable_uploads (owner_id);
        CREATE INDEX resumable_uploads_by_expiry ON resumable_uploads (expires_at);
        CREATE TABLE resumable_chunks (
            upload_id       TEXT NOT NULL,
            start_offset    INTEGER NOT NULL,
            length          INTEGER NOT NULL,
            blob_key        TEXT NOT NULL UNIQUE,
            enc_key_id      TEXT,
            enc_wrapped_key BLOB,
            PRIMARY KEY (upload_id, start_offset)
        ) STRICT;
        "#,
        postgres: r#"
        CREATE TABLE resumable_uploads (
            id           UUID PRIMARY KEY,
            owner_id     UUID NOT NULL,
            length       BIGINT NOT NULL CHECK (length >= 0),
            upload_offset BIGINT NOT NULL CHECK (upload_offset >= 0),
            metadata     TEXT NOT NULL,
            filename     TEXT NOT NULL,
            file_expires_at BIGINT,
            created_at   BIGINT NOT NULL,
            expires_at   BIGINT NOT NULL,
            lock_holder  TEXT,
            lock_until   BIGINT,
            grant_id     UUID
        );
        CREATE INDEX resumable_uploads_by_owner ON resumable_uploads (owner_id);
        CREATE INDEX resumable_uploads_by_expiry ON resumable_uploads (expires_at);
        CREATE TABLE resumable_chunks (
            upload_id       UUID NOT NULL,
            start_offset    BIGINT NOT NULL,
            length          BIGINT NOT NULL,
            blob_key        TEXT NOT NULL UNIQUE,
            enc_key_id      TEXT,
            enc_wrapped_key BYTEA,
            PRIMARY KEY (upload_id, start_offset)
        );
        "#,
    },
    // v10: events and webhooks (API.md "Events and webhooks"). A webhook's secret is kept so
    // it can sign (sealed with the keyring when encryption at rest is on: `secret_key_id`
    // names the key). The outbox is one row per (webhook, event), written in the transaction
    // of the change it describes; `seq` orders the events of a file, a lease
    // (`lease_holder`, `lease_until`) says which node is delivering it now.
    // `events` is a comma-framed list of event types (",file.created,link.used,").
    Migration {
        sqlite: r#"
        CREATE TABLE webhooks (
            id            TEXT PRIMARY KEY,
            owner_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            url           TEXT NOT NULL,
            events        TEXT NOT NULL,
            secret        BLOB NOT NULL,
            secret_key_id TEXT,
            created_at    INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX webhooks_by_owner ON webhooks (owner_id);

        CREATE TABLE webhook_deliveries (
            seq             INTEGER PRIMARY KEY,
            webhook_id      TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
            event_id        TEXT NOT NULL,
            event_type      TEXT NOT NULL,
            file_id         TEXT,
            body            TEXT NOT NULL,
            created_at      INTEGER NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER,
            last_status     INTEGER,
            last_error      TEXT,
            last_answer     TEXT,
            delivered_at    INTEGER,
            lease_holder    TEXT,
            lease_until     INTEGER,
            UNIQUE (webhook_id, event_id)
        ) STRICT;
        CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
            WHERE next_attempt_at IS NOT NULL;
        CREATE INDEX webhook_deliveries_by_file ON webhook_deliveries (webhook_id, file_id, seq)
            WHERE next_attempt_at IS NOT NULL;
        "#,
        postgres: r#"
        CREATE TABLE webhooks (
            id            UUID PRIMARY KEY,
            owner_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            url           TEXT NOT NULL,
            events        TEXT NOT NULL,
            secret        BYTEA NOT NULL,
            secret_key_id TEXT,
            created_at    BIGINT NOT NULL
        );
        CREATE INDEX webhooks_by_owner ON webhooks (owner_id);

        CREATE TABLE webhook_deliveries (
            seq             BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            webhook_id      UUID NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
            event_id        TEXT NOT NULL,
            event_type      TEXT NOT NULL,
            file_id         UUID,
            body            TEXT NOT NULL,
            created_at      BIGINT NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at BIGINT,
            last_status     INTEGER,
            last_error      TEXT,
            last_answer     TEXT,
            delivered_at    BIGINT,
            lease_holder    TEXT,
            lease_until     BIGINT,
            UNIQUE (webhook_id, event_id)
        );
        CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
            WHERE next_attempt_at IS NOT NULL;
        CREATE INDEX webhook_deliveries_by_file ON webhook_deliveries (webhook_id, file_id, seq)
            WHERE next_attempt_at IS NOT NULL;
        "#,
    },
    // v11: a webhook outlives its owner until its outbox drains (the `file.deleted` events of
    // an account's deletion still reach the app backend): `owner_id` becomes NULL when the
    // account goes (`ON DELETE SET NULL`) instead of taking the webhook and its pending
    // deliveries with it; a retired webhook is removed once nothing of it is pending
    // (`meta::events::PRUNE_RETIRED`). SQLite cannot change a foreign key in place: both
    // tables are rebuilt (deliveries first, so dropping the old webhooks cascades to nothing).
    Migration {
        sqlite: r#"
        CREATE TABLE webhooks_v11 (
            id            TEXT PRIMARY KEY,
            owner_id      TEXT REFERENCES users (id) ON DELETE SET NULL,
            url           TEXT NOT NULL,
            events        TEXT NOT NULL,
            secret        BLOB NOT NULL,
            secret_key_id TEXT,
            created_at    INTEGER NOT NULL
        ) STRICT;
        INSERT INTO webhooks_v11 (id, owner_id, url, events, secret, secret_key_id, created_at)
            SELECT id, owner_id, url, events, secret, secret_key_id, created_at FROM webhooks;

        CREATE TABLE webhook_deliveries_v11 (
            seq             INTEGER PRIMARY KEY,
            webhook_id      TEXT NOT NULL REFERENCES webhooks_v11 (id) ON DELETE CASCADE,
            event_id        TEXT NOT NULL,
            event_type      TEXT NOT NULL,
            file_id         TEXT,
            body            TEXT NOT NULL,
            created_at      INTEGER NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER,
            last_status     INTEGER,
            last_error      TEXT,
            last_answer     TEXT,
            delivered_at    INTEGER,
            lease_holder    TEXT,
            lease_until     INTEGER,
            UNIQUE (webhook_id, event_id)
        ) STRICT;
        INSERT INTO webhook_deliveries_v11
            SELECT seq, webhook_id, event_id, event_type, file_id, body, created_at, attempts,
                   next_attempt_at, last_status, last_error, last_answer, delivered_at,
                   lease_holder, lease_until
            FROM webhook_deliveries;

        DROP TABLE webhook_deliveries;
        DROP TABLE webhooks;
        ALTER TABLE webhooks_v11 RENAME TO webhooks;
        ALTER TABLE webhook_deliveries_v11 RENAME TO webhook_deliveries;
        CREATE INDEX webhooks_by_owner ON webhooks (owner_id);
        CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
            WHERE next_attempt_at IS NOT NULL;
        CREATE INDEX webhook_deliveries_by_file ON webhook_deliveries (webhook_id, file_id, seq)
            WHERE next_attempt_at IS NOT NULL;
        "#,
        postgres: r#"
        ALTER TABLE webhooks ALTER COLUMN owner_id DROP NOT NULL;
        ALTER TABLE webhooks DROP CONSTRAINT webhooks_owner_id_fkey;
        ALTER TABLE webhooks ADD CONSTRAINT webhooks_owner_id_fkey
            FOREIGN KEY (owner_id) REFERENCES users (id) ON DELETE SET NULL;
        "#,
    },
    // v12: the audit chain's sealed head (`meta::audit::Head`), moved by every append, so
    // cutting the newest entries off shows. A store with a trail gets a placeholder (seq -1)
    // that the next start seals: a head that is simply gone is reported, never re-made
    // silently.
    Migration {
        sqlite: r#"
        CREATE TABLE audit_head (
            id     INTEGER PRIMARY KEY CHECK (id = 1),
            seq    INTEGER NOT NULL,
            hash   BLOB NOT NULL,
            key_id TEXT NOT NULL,
            seal   BLOB NOT NULL
        ) STRICT;
        INSERT INTO audit_head (id, seq, hash, key_id, seal)
            SELECT 1, -1, x'', '', x''
            WHERE EXISTS (SELECT 1 FROM audit) OR EXISTS (SELECT 1 FROM audit_anchor);
        "#,
        postgres: r#"
        CREATE TABLE audit_head (
            id     INTEGER PRIMARY KEY CHECK (id = 1),
            seq    BIGINT NOT NULL,
            hash   BYTEA NOT NULL,
            key_id TEXT NOT NULL,
            seal   BYTEA NOT NULL
        );
        INSERT INTO audit_head (id, seq, hash, key_id, seal)
            SELECT 1, -1, '\x'::bytea, '', '\x'::bytea
            WHERE EXISTS (SELECT 1 FROM audit) OR EXISTS (SELECT 1 FROM audit_anchor);
        "#,
    },
];

/// The version this binary writes.
pub const LATEST: usize = MIGRATIONS.len();

/// The version that adds the audit chain's head: the process that applies it seals the
/// placeholder it leaves (`meta::audit::Unsealed::Migrated`).
pub const AUDIT_HEADS: usize = 12;

/// Bring a SQLite database to [`LATEST`]; returns the versions this call applied.
pub fn run_sqlite(conn: &mut Connection) -> rusqlite::Result<Vec<usize>> {
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
    let mut applied = Vec::new();
    for (i, m) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the lock.
        let now: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if usize::try_from(now).unwrap_or(usize::MAX) > i {
            continue;
        }
        tx.execute_batch(m.sqlite)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
        applied.push(i + 1);
    }
    Ok(applied)
}

/// The PostgreSQL advisory lock key held while migrating (a `coffer` prefix in the high bytes:
/// the key space is shared with anything else using the database).
pub const POSTGRES_LOCK: i64 = 0x636f_6666_6572_0001;

/// Why a PostgreSQL database was not migrated.
#[derive(Debug)]
pub enum PgMigrationError {
    /// The database failed or could not be reached.
    Postgres(tokio_postgres::Error),
    /// It is at a version this binary does not know.
    Newer {
        /// Its version.
        found: usize,
    },
}

impl From<tokio_postgres::Error> for PgMigrationError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(e)
    }
}

/// Bring a PostgreSQL database to [`LATEST`], under a session-level advisory lock so that
/// nodes starting at once take turns (the later ones find nothing left to do). `client`
/// should be a connection of its own: its timeouts are lifted for the migration. Returns the
/// versions this call applied.
pub async fn run_postgres(
    client: &mut tokio_postgres::Client,
) -> Result<Vec<usize>, PgMigrationError> {
    // Another node may hold the lock for as long as its migration takes.
    client
        .batch_execute("SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0")
        .await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&POSTGRES_LOCK])
        .await?;
    let result = migrate_postgres_locked(client).await;
    // Also released when the connection closes, which the caller does next anyway.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&POSTGRES_LOCK])
        .await;
    result
}

async fn migrate_postgres_locked(
    client: &mut tokio_postgres::Client,
) -> Result<Vec<usize>, PgMigrationError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS coffer_schema (
                version    INTEGER PRIMARY KEY,
                applied_at BIGINT NOT NULL
            )",
        )
        .await?;
    let current: Option<i32> = client
        .query_one("SELECT max(version) FROM coffer_schema", &[])
        .await?
        .try_get(0)?;
    let current = usize::try_from(current.unwrap_or(0)).unwrap_or(usize::MAX);
    if current > LATEST {
        return Err(PgMigrationError::Newer { found: current });
    }
    let mut applied = Vec::new();
    for (i, m) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        let tx = client.transaction().await?;
        tx.batch_execute(m.postgres).await?;
        tx.execute(
            "INSERT INTO coffer_schema (version, applied_at) VALUES ($1, $2)",
            &[&version, &crate::ids::Timestamp::now().0],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, "migrated the PostgreSQL schema");
        applied.push(i + 1);
    }
    Ok(applied)
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

    /// v11 rebuilds the webhook tables on SQLite: rows survive, deliveries still cascade from
    /// their webhook, and an account's deletion now retires its webhooks instead of taking
    /// their pending deliveries.
    #[test]
    fn v11_keeps_webhooks_and_retires_them_with_their_owner() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
        for m in &MIGRATIONS[..10] {
            c.execute_batch(m.sqlite).unwrap();
        }
        c.pragma_update(None, "user_version", 10).unwrap();
        c.execute_batch(
            "INSERT INTO users (id, username, email, password_hash, role, created_at)
                 VALUES ('u1', 'u', 'u@example.com', 'x', 'user', 0);
             INSERT INTO webhooks (id, owner_id, url, events, secret, created_at)
                 VALUES ('w1', 'u1', 'https://example.com/', ',file.deleted,', x'00', 0);
             INSERT INTO webhook_deliveries
                 (webhook_id, event_id, event_type, body, created_at, next_attempt_at)
                 VALUES ('w1', 'evt_1', 'file.deleted', '{}', 1, 1);",
        )
        .unwrap();
        run_sqlite(&mut c).unwrap();
        let count =
            |c: &Connection, sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count(&c, "SELECT count(*) FROM webhook_deliveries"), 1);
        assert_eq!(
            count(&c, "SELECT count(*) FROM pragma_foreign_key_check"),
            0
        );
        c.execute("DELETE FROM users WHERE id = 'u1'", []).unwrap();
        assert_eq!(
            count(&c, "SELECT count(*) FROM webhooks WHERE owner_id IS NULL"),
            1
        );
        // Pending: the retired webhook stays.
        c.execute(crate::meta::events::PRUNE_RETIRED, []).unwrap();
        assert_eq!(count(&c, "SELECT count(*) FROM webhook_deliveries"), 1);
        // Settled: it goes, with its log.
        c.execute("UPDATE webhook_deliveries SET next_attempt_at = NULL", [])
            .unwrap();
        c.execute(crate::meta::events::PRUNE_RETIRED, []).unwrap();
        assert_eq!(count(&c, "SELECT count(*) FROM webhooks"), 0);
        assert_eq!(count(&c, "SELECT count(*) FROM webhook_deliveries"), 0);
    }

    /// v12 leaves a store with a trail a head to seal (seq -1), and a fresh one none.
    #[test]
    fn v12_marks_the_head_of_an_existing_trail_for_sealing() {
        let head = |with_trail: bool| -> Option<i64> {
            let mut c = Connection::open_in_memory().unwrap();
            for m in &MIGRATIONS[..11] {
                c.execute_batch(m.sqlite).unwrap();
            }
            c.pragma_update(None, "user_version", 11).unwrap();
            if with_trail {
                c.execute_batch(
                    "INSERT INTO audit (seq, id, at, event, detail, hash)
                         VALUES (1, 'a', 0, 'auth.register', '{}', x'00');",
                )
                .unwrap();
            }
            run_sqlite(&mut c).unwrap();
            let seq = c.query_row("SELECT seq FROM audit_head", [], |r| r.get(0));
            rusqlite::OptionalExtension::optional(seq).unwrap()
        };
        assert_eq!(head(true), Some(-1));
        assert_eq!(head(false), None);
    }
}
