//! The `audit` table: an append-only, hash-chained trail of security events.
//!
//! Invariant: entry `n` stores `HMAC-SHA256(K, hash(n-1) || encode(entry n))`, the first entry
//! chains from the anchor (all zeros, or the last entry removed by retention). `K` is derived
//! from `COFFER_SECRET_KEY`, which never touches the disk, so someone who can write the
//! database but does not hold the secret cannot forge or re-chain entries: editing, inserting
//! or deleting any entry breaks the chain from that point, which [`verify_chain`] reports.
//! (Cutting entries off the *end* leaves a shorter valid chain; ship the log elsewhere too.)
//! No route updates or deletes entries; only retention trims the oldest, moving the anchor.

use hmac::{Hmac, KeyInit, Mac};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::Sha256;
use utoipa::ToSchema;

use crate::ids::Timestamp;
use crate::meta::Page;

/// One audit entry as clients see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Entry id.
    #[schema(value_type = String, format = Uuid)]
    pub id: uuid::Uuid,
    /// When it happened.
    pub at: Timestamp,
    /// What happened (`auth.login`, `file.upload`, ...).
    pub event: String,
    /// Who did it, when known.
    pub actor_id: Option<String>,
    /// What it was done to (a user, file, link or key id).
    pub subject_id: Option<String>,
    /// The client address.
    pub client_ip: Option<String>,
    /// Event-specific facts (never a password, token or key).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// An entry with its chain position (internal).
#[derive(Debug, Clone)]
pub struct ChainedEntry {
    /// Position in the chain.
    pub seq: i64,
    /// The entry.
    pub entry: AuditEntry,
    /// Its chain hash.
    pub hash: Vec<u8>,
    /// The detail exactly as stored (what the hash covers).
    pub detail_raw: String,
}

fn put_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            buf.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        None => buf.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
}

/// The key that chains the trail (derived from the service secret).
pub struct ChainKey(pub [u8; 32]);

/// The chain hash of an entry at `seq` following `prev`; `detail` is the stored JSON text.
pub fn chain_hash(key: &ChainKey, prev: &[u8], seq: i64, e: &AuditEntry, detail: &str) -> [u8; 32] {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(prev);
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(e.id.as_bytes());
    buf.extend_from_slice(&e.at.0.to_be_bytes());
    put_str(&mut buf, Some(&e.event));
    put_str(&mut buf, e.actor_id.as_deref());
    put_str(&mut buf, e.subject_id.as_deref());
    put_str(&mut buf, e.client_ip.as_deref());
    put_str(&mut buf, Some(detail));
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key.0)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(&buf);
    mac.finalize().into_bytes().into()
}

fn last_link(c: &Connection) -> rusqlite::Result<(i64, Vec<u8>)> {
    let last = c
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match last {
        Some(l) => Ok(l),
        None => anchor(c),
    }
}

fn anchor(c: &Connection) -> rusqlite::Result<(i64, Vec<u8>)> {
    Ok(
        c.query_row("SELECT seq, hash FROM audit_anchor WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?
        .unwrap_or((0, vec![0; 32])),
    )
}

/// Append entries in order, chaining from the current tail (read inside the caller's write
/// transaction, so another process appending too cannot fork the chain).
pub fn append(c: &Connection, key: &ChainKey, entries: &[AuditEntry]) -> rusqlite::Result<()> {
    let (mut seq, mut prev) = last_link(c)?;
    let mut stmt = c.prepare_cached(
        "INSERT INTO audit (seq, id, at, event, actor_id, subject_id, client_ip, detail, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for e in entries {
        seq += 1;
        let detail = e.detail.to_string();
        let hash = chain_hash(key, &prev, seq, e, &detail);
        stmt.execute(params![
            seq,
            e.id.hyphenated().to_string(),
            e.at,
            e.event,
            e.actor_id,
            e.subject_id,
            e.client_ip,
            detail,
            &hash[..],
        ])?;
        prev = hash.to_vec();
    }
    Ok(())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChainedEntry> {
    let id: String = r.get(1)?;
    let detail: String = r.get(7)?;
    Ok(ChainedEntry {
        seq: r.get(0)?,
        entry: AuditEntry {
            id: uuid::Uuid::try_parse(&id).unwrap_or_default(),
            at: r.get(2)?,
            event: r.get(3)?,
            actor_id: r.get(4)?,
            subject_id: r.get(5)?,
            client_ip: r.get(6)?,
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        },
        hash: r.get(8)?,
        detail_raw: detail,
    })
}

const COLUMNS: &str = "seq, id, at, event, actor_id, subject_id, client_ip, detail, hash";

/// Newest first, after the `seq` cursor.
pub fn list(
    c: &Connection,
    before_seq: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Page<ChainedEntry>> {
    let rows = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM audit WHERE (?1 IS NULL OR seq < ?1) ORDER BY seq DESC LIMIT ?2"
        ))?
        .query_map(
            params![before_seq, i64::try_from(limit + 1).unwrap_or(i64::MAX)],
            row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_overfetch(rows, limit))
}

/// Remove entries older than `cutoff`, moving the anchor to the last one removed.
pub fn prune(c: &Connection, cutoff: Timestamp) -> rusqlite::Result<usize> {
    let last: Option<(i64, Vec<u8>)> = c
        .query_row(
            "SELECT seq, hash FROM audit WHERE at < ?1 ORDER BY seq DESC LIMIT 1",
            [cutoff],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((seq, hash)) = last else {
        return Ok(0);
    };
    let n = c.execute("DELETE FROM audit WHERE seq <= ?1", [seq])?;
    c.execute(
        "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        params![seq, hash],
    )?;
    Ok(n)
}

/// Walk the whole chain; each problem is one line.
pub fn verify_chain(c: &Connection, key: &ChainKey) -> rusqlite::Result<Vec<String>> {
    let (mut expect_seq, mut prev) = anchor(c)?;
    let mut problems = Vec::new();
    let mut stmt = c.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let e = row(r)?;
        expect_seq += 1;
        if e.seq != expect_seq {
            problems.push(format!(
                "audit chain broken: entry {} missing (next present is {})",
                expect_seq, e.seq
            ));
            expect_seq = e.seq;
        }
        let want = chain_hash(key, &prev, e.seq, &e.entry, &e.detail_raw);
        if want[..] != e.hash[..] {
            problems.push(format!(
                "audit chain broken: entry {} ({}) was altered",
                e.seq, e.entry.id
            ));
        }
        prev = e.hash;
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::test_conn;

    const K: ChainKey = ChainKey([7; 32]);

    fn entry(event: &str) -> AuditEntry {
        AuditEntry {
            id: uuid::Uuid::now_v7(),
            at: Timestamp::now(),
            event: event.into(),
            actor_id: None,
            subject_id: Some("s".into()),
            client_ip: Some("127.0.0.1".into()),
            detail: serde_json::json!({"k": 1}),
        }
    }

    #[test]
    fn chain_detects_edits_and_deletions() {
        let c = test_conn();
        append(&c, &K, &[entry("a"), entry("b"), entry("c")]).unwrap();
        append(&c, &K, &[entry("d")]).unwrap();
        assert!(verify_chain(&c, &K).unwrap().is_empty());

        c.execute("UPDATE audit SET event = 'x' WHERE seq = 2", [])
            .unwrap();
        assert_eq!(verify_chain(&c, &K).unwrap().len(), 1);
        c.execute("UPDATE audit SET event = 'b' WHERE seq = 2", [])
            .unwrap();
        assert!(verify_chain(&c, &K).unwrap().is_empty());

        c.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
        assert!(!verify_chain(&c, &K).unwrap().is_empty());
        // Without the key the chain cannot be verified, let alone recomputed.
        assert!(!verify_chain(&c, &ChainKey([8; 32])).unwrap().is_empty());
    }

    #[test]
    fn pruning_keeps_the_chain_verifiable() {
        let c = test_conn();
        let mut old = entry("old");
        old.at = Timestamp::from_unix_secs(1);
        append(&c, &K, &[old, entry("new1"), entry("new2")]).unwrap();
        assert_eq!(prune(&c, Timestamp::from_unix_secs(100)).unwrap(), 1);
        assert!(verify_chain(&c, &K).unwrap().is_empty());
        append(&c, &K, &[entry("new3")]).unwrap();
        assert!(verify_chain(&c, &K).unwrap().is_empty());
        // Removing the oldest remaining entry without moving the anchor is detected.
        c.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
        assert!(!verify_chain(&c, &K).unwrap().is_empty());
    }
}
