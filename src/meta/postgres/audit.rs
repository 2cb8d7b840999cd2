//! The `audit` table and its anchor in PostgreSQL.
//!
//! Invariant: there is one chain however many nodes append. Every append (and every prune,
//! which moves the anchor) first takes the `AUDIT_CHAIN` advisory lock for its transaction,
//! then reads the tail. The transaction must be `READ COMMITTED`: each statement then takes
//! its snapshot after the lock is held, so the tail read includes whatever the previous holder
//! committed (PostgreSQL makes a commit visible before it releases the committer's locks).
//! Under `REPEATABLE READ` the snapshot would date from before the wait, and two appenders
//! would chain from the same tail (the `seq` primary key would then refuse the second).

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{IsolationLevel, PgResult, Postgres, Tx, lock_keys};
use crate::ids::Timestamp;
use crate::meta::audit::{
    Audit, AuditEntry, ChainKeys, ChainedEntry, Head, Link, Unsealed, append_tail, chain, seals,
};
use crate::meta::error::MetaError;
use crate::meta::page::Page;

const COLUMNS: &str = "seq, id, at, event, actor_id, subject_id, client_ip, detail, hash, key_id";

fn row(r: &Row) -> PgResult<ChainedEntry> {
    let detail: String = r.try_get(7)?;
    Ok(ChainedEntry {
        seq: r.try_get(0)?,
        entry: AuditEntry {
            id: r.try_get(1)?,
            at: r.try_get(2)?,
            event: r.try_get(3)?,
            actor_id: r.try_get(4)?,
            subject_id: r.try_get(5)?,
            client_ip: r.try_get(6)?,
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        },
        hash: r.try_get(8)?,
        detail_raw: detail,
        key_id: r.try_get(9)?,
    })
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn lock_chain(t: &Tx<'_>) -> PgResult<()> {
    t.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_keys::AUDIT_CHAIN],
    )
    .await?;
    Ok(())
}

/// Where the stored chain starts.
pub async fn anchor(c: &impl GenericClient) -> PgResult<Link> {
    let st = c
        .prepare_cached("SELECT seq, hash FROM audit_anchor WHERE id = 1")
        .await?;
    Ok(match c.query_opt(&st, &[]).await? {
        Some(r) => Link {
            seq: r.try_get(0)?,
            hash: r.try_get(1)?,
        },
        None => Link::genesis(),
    })
}

/// The newest stored entry's link, or the anchor's.
async fn stored_tail(t: &Tx<'_>) -> PgResult<Link> {
    let st = t
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .await?;
    match t.query_opt(&st, &[]).await? {
        Some(r) => Ok(Link {
            seq: r.try_get(0)?,
            hash: r.try_get(1)?,
        }),
        None => anchor(t).await,
    }
}

/// Append entries in order, chained from the tail read under the chain lock, in one insert.
pub async fn append(t: &Tx<'_>, keys: &ChainKeys, entries: &[AuditEntry]) -> PgResult<()> {
    let Some(key) = keys.current() else {
        return Ok(());
    };
    if entries.is_empty() {
        return Ok(());
    }
    lock_chain(t).await?;
    let (stored, head) = (stored_tail(t).await?, head(t).await?);
    let at_head = match &head {
        Some(h) if h.link.seq <= stored.seq => hash_at(t, h.link.seq).await?,
        _ => None,
    };
    let (tail, move_head) = append_tail(stored, head.as_ref(), at_head.as_deref(), keys);
    let chained = chain(key, tail, entries);
    let key_id = key.fingerprint();
    let seq: Vec<i64> = chained.iter().map(|e| e.seq).collect();
    let id: Vec<uuid::Uuid> = chained.iter().map(|e| e.entry.id).collect();
    let at: Vec<i64> = chained.iter().map(|e| e.entry.at.0).collect();
    let event: Vec<&str> = chained.iter().map(|e| e.entry.event.as_str()).collect();
    let actor: Vec<Option<&str>> = chained
        .iter()
        .map(|e| e.entry.actor_id.as_deref())
        .collect();
    let subject: Vec<Option<&str>> = chained
        .iter()
        .map(|e| e.entry.subject_id.as_deref())
        .collect();
    let ip: Vec<Option<&str>> = chained
        .iter()
        .map(|e| e.entry.client_ip.as_deref())
        .collect();
    let detail: Vec<&str> = chained.iter().map(|e| e.detail_raw.as_str()).collect();
    let hash: Vec<&[u8]> = chained.iter().map(|e| e.hash.as_slice()).collect();
    let key_id: Vec<&str> = vec![key_id.as_str(); chained.len()];
    let st = t
        .prepare_cached(
            "INSERT INTO audit (seq, id, at, event, actor_id, subject_id, client_ip, detail, hash,
                                key_id)
             SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::bigint[], $4::text[],
                                  $5::text[], $6::text[], $7::text[], $8::text[], $9::bytea[],
                                  $10::text[])",
        )
        .await?;
    t.execute(
        &st,
        &[
            &seq, &id, &at, &event, &actor, &subject, &ip, &detail, &hash, &key_id,
        ],
    )
    .await?;
    match chained.last() {
        Some(e) if move_head => {
            let link = Link {
                seq: e.seq,
                hash: e.hash.to_vec(),
            };
            set_head(t, &Head::sealed(key, link)).await
        }
        _ => Ok(()),
    }
}

/// The stored hash at `seq`: an entry's, or the anchor's.
async fn hash_at(t: &Tx<'_>, seq: i64) -> PgResult<Option<Vec<u8>>> {
    let st = t
        .prepare_cached("SELECT hash FROM audit WHERE seq = $1")
        .await?;
    Ok(match t.query_opt(&st, &[&seq]).await? {
        Some(r) => Some(r.try_get(0)?),
        None => Some(anchor(t).await?)
            .filter(|a| a.seq == seq)
            .map(|a| a.hash),
    })
}

async fn set_head(t: &Tx<'_>, h: &Head) -> PgResult<()> {
    let st = t
        .prepare_cached(
            "INSERT INTO audit_head (id, seq, hash, key_id, seal) VALUES (1, $1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
                                            key_id = excluded.key_id, seal = excluded.seal",
        )
        .await?;
    t.execute(&st, &[&h.link.seq, &h.link.hash, &h.key_id, &h.seal])
        .await?;
    Ok(())
}

/// The sealed newest link, if one was written.
pub async fn head(c: &impl GenericClient) -> PgResult<Option<Head>> {
    let st = c
        .prepare_cached("SELECT seq, hash, key_id, seal FROM audit_head WHERE id = 1")
        .await?;
    c.query_opt(&st, &[])
        .await?
        .map(|r| {
            Ok(Head {
                link: Link {
                    seq: r.try_get(0)?,
                    hash: r.try_get(1)?,
                },
                key_id: r.try_get(2)?,
                seal: r.try_get(3)?,
            })
        })
        .transpose()
}

/// Seal the newest stored link as the head, if `which` allows (see [`Unsealed`]).
async fn seal_head(t: &Tx<'_>, keys: &ChainKeys, which: Unsealed) -> PgResult<bool> {
    let Some(key) = keys.current() else {
        return Ok(false);
    };
    lock_chain(t).await?;
    let stored = stored_tail(t).await?;
    if !seals(head(t).await?.as_ref(), &stored, which, keys) {
        return Ok(false);
    }
    set_head(t, &Head::sealed(key, stored)).await?;
    Ok(true)
}

/// Newest first, before the `seq` cursor.
pub async fn list(
    c: &impl GenericClient,
    before_seq: Option<i64>,
    limit: usize,
) -> PgResult<Page<ChainedEntry>> {
    let fetch = count(limit.saturating_add(1));
    let found = match before_seq {
        None => {
            let st = c
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM audit ORDER BY seq DESC LIMIT $1"
                ))
                .await?;
            c.query(&st, &[&fetch]).await?
        }
        Some(before) => {
            let st = c
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM audit WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
                ))
                .await?;
            c.query(&st, &[&before, &fetch]).await?
        }
    };
    let found = found.iter().map(row).collect::<PgResult<Vec<_>>>()?;
    Ok(Page::from_overfetch(found, limit))
}

/// Remove entries older than `cutoff`, moving the anchor to the last one removed.
pub async fn prune(t: &Tx<'_>, cutoff: Timestamp) -> PgResult<usize> {
    lock_chain(t).await?;
    let last = t
        .query_opt(
            "SELECT seq, hash FROM audit WHERE at < $1 ORDER BY seq DESC LIMIT 1",
            &[&cutoff],
        )
        .await?;
    let Some(last) = last else {
        return Ok(0);
    };
    let seq: i64 = last.try_get(0)?;
    let hash: Vec<u8> = last.try_get(1)?;
    let n = t
        .execute("DELETE FROM audit WHERE seq <= $1", &[&seq])
        .await?;
    t.execute(
        "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, $1, $2)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        &[&seq, &hash],
    )
    .await?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Entries in chain order after `after_seq`.
pub async fn chain_page(
    c: &impl GenericClient,
    after_seq: i64,
    limit: usize,
) -> PgResult<Vec<ChainedEntry>> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .await?;
    c.query(&st, &[&after_seq, &count(limit)])
        .await?
        .iter()
        .map(row)
        .collect()
}

#[async_trait]
impl Audit for Postgres {
    async fn append_with(
        &self,
        keys: &ChainKeys,
        entries: Arc<[AuditEntry]>,
    ) -> Result<(), MetaError> {
        // READ COMMITTED on purpose: see the module comment.
        self.tx(
            IsolationLevel::ReadCommitted,
            (keys.clone(), entries),
            |t, (keys, entries)| Box::pin(append(t, keys, entries)),
        )
        .await
    }

    async fn list(
        &self,
        before_seq: Option<i64>,
        limit: usize,
    ) -> Result<Page<ChainedEntry>, MetaError> {
        self.one((before_seq, limit), |c, &(before, limit)| {
            Box::pin(list(c, before, limit))
        })
        .await
    }

    async fn prune(&self, cutoff: Timestamp) -> Result<usize, MetaError> {
        self.tx(IsolationLevel::ReadCommitted, cutoff, |t, &cutoff| {
            Box::pin(prune(t, cutoff))
        })
        .await
    }

    async fn anchor(&self) -> Result<Link, MetaError> {
        self.one((), |c, ()| Box::pin(anchor(c))).await
    }

    async fn head(&self) -> Result<Option<Head>, MetaError> {
        self.one((), |c, ()| Box::pin(head(c))).await
    }

    async fn seal_head(&self, keys: &ChainKeys, which: Unsealed) -> Result<bool, MetaError> {
        // The placeholder only if this node's own migration left it (see `Unsealed`).
        if which == Unsealed::Migrated && !self.added_heads() {
            return Ok(false);
        }
        self.tx(
            IsolationLevel::ReadCommitted,
            (keys.clone(), which),
            |t, (keys, which)| Box::pin(seal_head(t, keys, *which)),
        )
        .await
    }

    async fn chain_page(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChainedEntry>, MetaError> {
        self.one((after_seq, limit), |c, &(after, limit)| {
            Box::pin(chain_page(c, after, limit))
        })
        .await
    }
}
