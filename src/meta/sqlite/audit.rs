//! The `audit` table and its anchor in SQLite. Appends run in the single writer's
//! transaction, so the tail they chain from cannot change under them.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::Sqlite;
use crate::ids::Timestamp;
use crate::meta::audit::{
    Audit, AuditEntry, ChainKeys, ChainedEntry, Head, Link, Unsealed, append_tail, chain, seals,
};
use crate::meta::error::MetaError;
use crate::meta::page::Page;

/// The newest stored entry's link, or the anchor's.
fn stored_tail(c: &Connection) -> rusqlite::Result<Link> {
    let last = c
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                Ok(Link {
                    seq: r.get(0)?,
                    hash: r.get(1)?,
                })
            },
        )
        .optional()?;
    match last {
        Some(l) => Ok(l),
        None => anchor(c),
    }
}

fn anchor(c: &Connection) -> rusqlite::Result<Link> {
    Ok(
        c.query_row("SELECT seq, hash FROM audit_anchor WHERE id = 1", [], |r| {
            Ok(Link {
                seq: r.get(0)?,
                hash: r.get(1)?,
            })
        })
        .optional()?
        .unwrap_or_else(Link::genesis),
    )
}

/// Append entries in order, chained with the current of `keys` from the tail (read inside the
/// caller's write transaction, so another process appending too cannot fork the chain).
pub fn append(c: &Connection, keys: &ChainKeys, entries: &[AuditEntry]) -> rusqlite::Result<()> {
    let Some(key) = keys.current() else {
        return Ok(());
    };
    let mut stmt = c.prepare_cached(
        "INSERT INTO audit (seq, id, at, event, actor_id, subject_id, client_ip, detail, hash,
                            key_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let (stored, head) = (stored_tail(c)?, head(c)?);
    let at_head = match &head {
        Some(h) if h.link.seq <= stored.seq => hash_at(c, h.link.seq)?,
        _ => None,
    };
    let (tail, move_head) = append_tail(stored, head.as_ref(), at_head.as_deref(), keys);
    let key_id = key.fingerprint();
    let mut newest = None;
    for e in chain(key, tail, entries) {
        let mut id = uuid::Uuid::encode_buffer();
        let id: &str = e.entry.id.hyphenated().encode_lower(&mut id);
        stmt.execute(params![
            e.seq,
            id,
            e.entry.at,
            e.entry.event,
            e.entry.actor_id,
            e.entry.subject_id,
            e.entry.client_ip,
            e.detail_raw,
            e.hash,
            key_id,
        ])?;
        newest = Some((e.seq, e.hash));
    }
    match newest {
        Some((seq, hash)) if move_head => set_head(
            c,
            &Head::sealed(
                key,
                Link {
                    seq,
                    hash: hash.to_vec(),
                },
            ),
        ),
        _ => Ok(()),
    }
}

/// The stored hash at `seq`: an entry's, or the anchor's.
fn hash_at(c: &Connection, seq: i64) -> rusqlite::Result<Option<Vec<u8>>> {
    let entry = c
        .prepare_cached("SELECT hash FROM audit WHERE seq = ?1")?
        .query_row([seq], |r| r.get(0))
        .optional()?;
    Ok(match entry {
        Some(h) => Some(h),
        None => Some(anchor(c)?).filter(|a| a.seq == seq).map(|a| a.hash),
    })
}

fn set_head(c: &Connection, h: &Head) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO audit_head (id, seq, hash, key_id, seal) VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
                                        key_id = excluded.key_id, seal = excluded.seal",
    )?
    .execute(params![h.link.seq, h.link.hash, h.key_id, h.seal])?;
    Ok(())
}

fn head(c: &Connection) -> rusqlite::Result<Option<Head>> {
    c.query_row(
        "SELECT seq, hash, key_id, seal FROM audit_head WHERE id = 1",
        [],
        |r| {
            Ok(Head {
                link: Link {
                    seq: r.get(0)?,
                    hash: r.get(1)?,
                },
                key_id: r.get(2)?,
                seal: r.get(3)?,
            })
        },
    )
    .optional()
}

/// Seal the newest stored link as the head, if `which` allows (see [`Unsealed`]).
fn seal_head(c: &Connection, keys: &ChainKeys, which: Unsealed) -> rusqlite::Result<bool> {
    let (Some(key), stored) = (keys.current(), stored_tail(c)?) else {
        return Ok(false);
    };
    if !seals(head(c)?.as_ref(), &stored, which, keys) {
        return Ok(false);
    }
    set_head(c, &Head::sealed(key, stored))?;
    Ok(true)
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
        key_id: r.get(9)?,
    })
}

const COLUMNS: &str = "seq, id, at, event, actor_id, subject_id, client_ip, detail, hash, key_id";

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

/// Entries in chain order after `after_seq`.
pub fn chain_page(
    c: &Connection,
    after_seq: i64,
    limit: usize,
) -> rusqlite::Result<Vec<ChainedEntry>> {
    c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?
    .query_map(
        params![after_seq, i64::try_from(limit).unwrap_or(i64::MAX)],
        row,
    )?
    .collect()
}

#[async_trait]
impl Audit for Sqlite {
    async fn append_with(
        &self,
        keys: &ChainKeys,
        entries: Arc<[AuditEntry]>,
    ) -> Result<(), MetaError> {
        let keys = keys.clone();
        self.write(move |c| append(c, &keys, &entries)).await
    }

    async fn list(
        &self,
        before_seq: Option<i64>,
        limit: usize,
    ) -> Result<Page<ChainedEntry>, MetaError> {
        self.read(move |c| list(c, before_seq, limit)).await
    }

    async fn prune(&self, cutoff: Timestamp) -> Result<usize, MetaError> {
        self.write(move |c| prune(c, cutoff)).await
    }

    async fn anchor(&self) -> Result<Link, MetaError> {
        self.read(anchor).await
    }

    async fn head(&self) -> Result<Option<Head>, MetaError> {
        self.read(head).await
    }

    async fn seal_head(&self, keys: &ChainKeys, which: Unsealed) -> Result<bool, MetaError> {
        // The placeholder only if this process's own migration left it (see `Unsealed`).
        if which == Unsealed::Migrated && !self.added_heads() {
            return Ok(false);
        }
        let keys = keys.clone();
        self.write(move |c| seal_head(c, &keys, which)).await
    }

    async fn chain_page(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChainedEntry>, MetaError> {
        self.read(move |c| chain_page(c, after_seq, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::audit::{ChainCheck, ChainKey, ChainKeys};
    use crate::meta::sqlite::test_conn;

    const K: ChainKey = ChainKey([7; 32]);

    /// What `Audit::verify_chain` does, on one connection.
    fn verify_chain(c: &Connection, key: &ChainKey) -> rusqlite::Result<Vec<String>> {
        verify_with(c, &ChainKeys::new([ChainKey(key.0)]))
    }

    fn verify_with(c: &Connection, keys: &ChainKeys) -> rusqlite::Result<Vec<String>> {
        let before = head(c)?;
        let start = anchor(c)?;
        let after = start.seq;
        let mut check = ChainCheck::new(keys, start).watching(before.as_ref());
        for e in chain_page(c, after, usize::MAX)? {
            check.next(e);
        }
        Ok(check.finish(before.as_ref(), head(c)?.as_ref()))
    }

    /// `key` as the only key there is.
    fn one(key: &ChainKey) -> ChainKeys {
        ChainKeys::new([ChainKey(key.0)])
    }

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
        append(&c, &one(&K), &[entry("a"), entry("b"), entry("c")]).unwrap();
        append(&c, &one(&K), &[entry("d")]).unwrap();
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
    fn a_new_secret_continues_the_chain_and_each_entry_is_checked_with_its_own_key() {
        const NEW: ChainKey = ChainKey([9; 32]);
        let c = test_conn();
        append(&c, &one(&K), &[entry("a"), entry("b")]).unwrap();
        // Written before fingerprints were kept: no key id.
        c.execute("UPDATE audit SET key_id = NULL WHERE seq = 1", [])
            .unwrap();
        // A server given only the new secret cannot verify the head K sealed: it leaves it.
        append(&c, &one(&NEW), &[entry("c")]).unwrap();
        let both = ChainKeys::new([ChainKey(NEW.0), ChainKey(K.0)]);
        let stuck = verify_with(&c, &both).unwrap();
        assert!(
            stuck[0].contains("entries 3 to 3 were written without"),
            "{stuck:?}"
        );
        // Given the old one too, the head (on the chain, behind its tail) moves on.
        append(&c, &both, &[entry("d")]).unwrap();
        assert_eq!(verify_with(&c, &both).unwrap(), Vec::<String>::new());

        // Only the new key: the old entries are "signed with another key", not altered.
        let only_new = ChainKeys::new([ChainKey(NEW.0)]);
        let problems = verify_with(&c, &only_new).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("predates key fingerprints"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("entry 2 signed with another key")
                && problems[1].contains(&K.fingerprint()),
            "{problems:?}"
        );
        assert!(!problems.iter().any(|p| p.contains("was altered\n")));

        // An edit under a key that is given is still tampering.
        c.execute("UPDATE audit SET event = 'x' WHERE seq = 4", [])
            .unwrap();
        let problems = verify_with(&c, &both).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("entry 4") && problems[0].contains("altered"));
    }

    #[test]
    fn pruning_keeps_the_chain_verifiable() {
        let c = test_conn();
        let mut old = entry("old");
        old.at = Timestamp::from_unix_secs(1);
        append(&c, &one(&K), &[old, entry("new1"), entry("new2")]).unwrap();
        assert_eq!(prune(&c, Timestamp::from_unix_secs(100)).unwrap(), 1);
        assert!(verify_chain(&c, &K).unwrap().is_empty());
        append(&c, &one(&K), &[entry("new3")]).unwrap();
        assert!(verify_chain(&c, &K).unwrap().is_empty());
        // Removing the oldest remaining entry without moving the anchor is detected.
        c.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
        assert!(!verify_chain(&c, &K).unwrap().is_empty());
    }

    #[test]
    fn pruning_every_entry_keeps_the_head_verifiable() {
        let c = test_conn();
        let mut old = entry("old");
        old.at = Timestamp::from_unix_secs(1);
        append(&c, &one(&K), &[old]).unwrap();
        assert_eq!(prune(&c, Timestamp::from_unix_secs(100)).unwrap(), 1);
        assert_eq!(verify_chain(&c, &K).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn cutting_the_newest_entries_off_or_touching_the_head_is_detected() {
        let problems = |c: &Connection| verify_chain(c, &K).unwrap();
        let c = test_conn();
        append(&c, &one(&K), &[entry("a"), entry("b")]).unwrap();
        append(&c, &one(&K), &[entry("c"), entry("d")]).unwrap();
        assert_eq!(problems(&c), Vec::<String>::new());

        // The newest entries go: the chain left is valid, the head says it was longer.
        c.execute("DELETE FROM audit WHERE seq > 2", []).unwrap();
        let found = problems(&c);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("cut short: entries 3 to 4"), "{found:?}");
        // The head moved back to the cut (its hash readable in the table): the seal fails.
        let h2: Vec<u8> = c
            .query_row("SELECT hash FROM audit WHERE seq = 2", [], |r| r.get(0))
            .unwrap();
        c.execute("UPDATE audit_head SET seq = 2, hash = ?1", params![h2])
            .unwrap();
        assert_eq!(problems(&c), ["audit chain head was altered"]);
        // Without a head, a chain cannot say where it ended; new entries do not make one
        // (that would seal over a cut), start-up does not either: only --repair.
        c.execute("DELETE FROM audit_head", []).unwrap();
        assert!(problems(&c)[0].contains("head missing"));
        append(&c, &one(&K), &[entry("e")]).unwrap();
        assert!(problems(&c)[0].contains("head missing"));
        assert!(!seal_head(&c, &one(&K), Unsealed::Migrated).unwrap());
        assert!(seal_head(&c, &one(&K), Unsealed::Repair).unwrap());
        assert!(
            !seal_head(&c, &one(&K), Unsealed::Repair).unwrap(),
            "only when missing"
        );
        assert_eq!(problems(&c), Vec::<String>::new());
        // Entries added without moving the head (not by coffer) are reported too.
        c.execute(
            "INSERT INTO audit (seq, id, at, event, detail, hash) VALUES (4, 'x', 0, 'e', '{}', x'00')",
            [],
        )
        .unwrap();
        assert!(
            problems(&c)
                .iter()
                .any(|p| p.contains("entries 4 to 4 were written without moving its head")),
            "{:?}",
            problems(&c)
        );
        // The migration's placeholder in a store with a trail: sealed at start-up.
        let old = test_conn();
        append(&old, &one(&K), &[entry("a")]).unwrap();
        old.execute(
            "UPDATE audit_head SET seq = -1, hash = x'', key_id = '', seal = x''",
            [],
        )
        .unwrap();
        assert!(problems(&old)[0].contains("not sealed yet"));
        assert!(seal_head(&old, &one(&K), Unsealed::Migrated).unwrap());
        assert_eq!(problems(&old), Vec::<String>::new());
        // A cut followed by new entries stays visible: they chain from the head, past the gap.
        let c = test_conn();
        append(&c, &one(&K), &[entry("a"), entry("b"), entry("c")]).unwrap();
        c.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
        append(&c, &one(&K), &[entry("d")]).unwrap();
        let found = problems(&c);
        assert!(
            found[0].contains("entry 3 missing (next present is 4)"),
            "{found:?}"
        );
        // A cut hidden behind a head set back (to the placeholder, or to any link without its
        // seal): appends leave such a head alone, so the check goes on reporting it.
        for forged in [
            "UPDATE audit_head SET seq = -1, hash = x'', key_id = '', seal = x''",
            "UPDATE audit_head SET seq = 0",
        ] {
            let c = test_conn();
            append(&c, &one(&K), &[entry("a"), entry("b"), entry("c")]).unwrap();
            c.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
            c.execute(forged, []).unwrap();
            append(&c, &one(&K), &[entry("d")]).unwrap();
            let found = problems(&c);
            assert!(
                found[0].contains("not sealed yet") || found[0].contains("head was altered"),
                "{forged}: {found:?}"
            );
        }
        // An empty trail needs no head.
        let empty = test_conn();
        assert_eq!(problems(&empty), Vec::<String>::new());
        assert!(!seal_head(&empty, &one(&K), Unsealed::Repair).unwrap());
    }
}
