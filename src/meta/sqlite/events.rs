//! Webhooks and the event outbox in SQLite. The single writer serialises every claim, so a
//! delivery is claimed by one worker at a time without further locking.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::Sqlite;
use crate::ids::{Timestamp, UserId, WebhookId};
use crate::meta::error::MetaError;
use crate::meta::events::{
    Attempt, Claimed, Delivery, Finished, NewEvent, NewWebhook, Outbox, PRUNE_RETIRED,
    SealedSecret, Webhook, WebhookStored, frame_events, unframe_events,
};
use crate::meta::page::Page;

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Record `events`: one delivery row per webhook of the owner that wants the type. The number
/// of rows written.
pub fn record(c: &Connection, events: &[NewEvent]) -> rusqlite::Result<usize> {
    let mut n = 0;
    for e in events {
        n += c
            .prepare_cached(
                "INSERT INTO webhook_deliveries
                     (webhook_id, event_id, event_type, file_id, body, created_at, next_attempt_at)
                 SELECT w.id, ?2, ?3, ?4, ?5, ?6, ?6 FROM webhooks w
                 WHERE w.owner_id = ?1 AND instr(w.events, ',' || ?3 || ',') > 0
                 ORDER BY w.id",
            )?
            .execute(params![
                e.owner,
                e.id,
                e.kind,
                e.file_id,
                e.body,
                e.created_at
            ])?;
    }
    Ok(n)
}

fn webhook(r: &rusqlite::Row<'_>) -> rusqlite::Result<Webhook> {
    let events: String = r.get(2)?;
    Ok(Webhook {
        id: r.get(0)?,
        url: r.get(1)?,
        events: unframe_events(&events),
        created_at: r.get(3)?,
    })
}

fn owns(c: &Connection, id: WebhookId, owner: UserId) -> rusqlite::Result<bool> {
    Ok(
        c.prepare_cached("SELECT 1 FROM webhooks WHERE id = ?1 AND owner_id = ?2")?
            .query_row(params![id, owner], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}

fn delivery(r: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        seq: r.get(0)?,
        event_id: r.get(1)?,
        kind: r.get(2)?,
        attempts: r.get(3)?,
        last_status: r.get(4)?,
        last_error: r.get(5)?,
        last_answer: r.get(6)?,
        next_attempt_at: r.get(7)?,
        delivered_at: r.get(8)?,
    })
}

/// A page of a webhook's deliveries, newest first.
pub fn deliveries(
    c: &Connection,
    id: WebhookId,
    before: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Page<Delivery>> {
    let rows = c
        .prepare_cached(
            "SELECT seq, event_id, event_type, attempts, last_status, last_error, last_answer,
                    next_attempt_at, delivered_at
             FROM webhook_deliveries WHERE webhook_id = ?1 AND (?2 IS NULL OR seq < ?2)
             ORDER BY seq DESC LIMIT ?3",
        )?
        .query_map(params![id, before, as_i64(limit + 1)], delivery)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_overfetch(rows, limit))
}

/// Claim due deliveries (see [`Outbox::claim`]): one statement leases them and returns what
/// sending needs, then each webhook among them is read once (a claim under load is many events
/// of few webhooks).
pub fn claim(
    c: &Connection,
    holder: &str,
    now: Timestamp,
    until: Timestamp,
    limit: usize,
) -> rusqlite::Result<Vec<Claimed>> {
    struct Row {
        seq: i64,
        webhook: WebhookId,
        event_id: String,
        body: String,
        attempts: u32,
    }
    let rows: Vec<Row> = c
        .prepare_cached(
            "UPDATE webhook_deliveries SET lease_holder = ?1, lease_until = ?3
             WHERE seq IN (
                 SELECT d.seq FROM webhook_deliveries d
                 WHERE d.next_attempt_at IS NOT NULL AND d.next_attempt_at <= ?2
                   AND (d.lease_until IS NULL OR d.lease_until <= ?2)
                   AND (d.file_id IS NULL OR NOT EXISTS (
                       SELECT 1 FROM webhook_deliveries e
                       WHERE e.webhook_id = d.webhook_id AND e.file_id = d.file_id
                         AND e.next_attempt_at IS NOT NULL AND e.seq < d.seq))
                 ORDER BY d.seq LIMIT ?4)
             RETURNING seq, webhook_id, event_id, body, attempts",
        )?
        .query_map(params![holder, now, until, as_i64(limit)], |r| {
            Ok(Row {
                seq: r.get(0)?,
                webhook: r.get(1)?,
                event_id: r.get(2)?,
                body: r.get(3)?,
                attempts: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut hooks: Vec<(WebhookId, String, Vec<u8>, Option<String>)> = Vec::new();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let known = hooks.iter().position(|h| h.0 == row.webhook);
        let i = match known {
            Some(i) => i,
            None => {
                let (url, secret, key_id) = c
                    .prepare_cached(
                        "SELECT url, secret, secret_key_id FROM webhooks WHERE id = ?1",
                    )?
                    .query_row([row.webhook], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                hooks.push((row.webhook, url, secret, key_id));
                hooks.len() - 1
            }
        };
        let Some((webhook_id, url, secret, secret_key_id)) = hooks.get(i) else {
            continue;
        };
        out.push(Claimed {
            seq: row.seq,
            webhook_id: *webhook_id,
            url: url.clone(),
            secret: secret.clone(),
            secret_key_id: secret_key_id.clone(),
            event_id: row.event_id,
            body: row.body,
            attempts: row.attempts,
        });
    }
    out.sort_by_key(|d| d.seq);
    Ok(out)
}

/// Record a try (see [`Outbox::finish`]).
pub fn finish(
    c: &Connection,
    seq: i64,
    holder: &str,
    now: Timestamp,
    attempt: &Attempt,
) -> rusqlite::Result<bool> {
    let n = match attempt {
        Attempt::Delivered { status, answer } => c
            .prepare_cached(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = ?3,
                     last_error = NULL, last_answer = ?4, delivered_at = ?5,
                     next_attempt_at = NULL, lease_holder = NULL, lease_until = NULL
                 WHERE seq = ?1 AND lease_holder = ?2",
            )?
            .execute(params![seq, holder, status, answer, now])?,
        Attempt::Failed {
            status,
            error,
            answer,
            retry_at,
        } => c
            .prepare_cached(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = ?3,
                     last_error = ?4, last_answer = ?5, next_attempt_at = ?6,
                     lease_holder = NULL, lease_until = NULL
                 WHERE seq = ?1 AND lease_holder = ?2",
            )?
            .execute(params![seq, holder, status, error, answer, retry_at])?,
    };
    Ok(n == 1)
}

#[async_trait]
impl Outbox for Sqlite {
    async fn record(&self, events: Vec<NewEvent>) -> Result<(), MetaError> {
        let n = self.write(move |c| record(c, &events)).await?;
        self.events_committed(n);
        Ok(())
    }

    async fn create_webhook(
        &self,
        hook: NewWebhook,
        max_per_owner: u64,
    ) -> Result<WebhookStored, MetaError> {
        // The single writer counts and inserts with nothing in between.
        self.write(move |c| {
            if !c
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)")?
                .query_row([hook.owner], |r| r.get::<_, bool>(0))?
            {
                return Ok(WebhookStored::OwnerGone);
            }
            let n: i64 = c
                .prepare_cached("SELECT count(*) FROM webhooks WHERE owner_id = ?1")?
                .query_row([hook.owner], |r| r.get(0))?;
            if u64::try_from(n).unwrap_or(0) >= max_per_owner {
                return Ok(WebhookStored::TooMany);
            }
            c.prepare_cached(
                "INSERT INTO webhooks (id, owner_id, url, events, secret, secret_key_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                hook.hook.id,
                hook.owner,
                hook.hook.url,
                frame_events(&hook.hook.events),
                hook.secret,
                hook.secret_key_id,
                hook.hook.created_at
            ])?;
            Ok(WebhookStored::Stored)
        })
        .await
    }

    async fn list_webhooks(&self, owner: UserId) -> Result<Vec<Webhook>, MetaError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, url, events, created_at FROM webhooks WHERE owner_id = ?1
                 ORDER BY created_at DESC, id DESC",
            )?
            .query_map([owner], webhook)?
            .collect()
        })
        .await
    }

    async fn delete_webhook(&self, id: WebhookId, owner: UserId) -> Result<bool, MetaError> {
        self.write(move |c| {
            Ok(
                c.prepare_cached("DELETE FROM webhooks WHERE id = ?1 AND owner_id = ?2")?
                    .execute(params![id, owner])?
                    == 1,
            )
        })
        .await
    }

    async fn deliveries(
        &self,
        id: WebhookId,
        owner: UserId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Option<Page<Delivery>>, MetaError> {
        self.read(move |c| {
            if !owns(c, id, owner)? {
                return Ok(None);
            }
            deliveries(c, id, before, limit).map(Some)
        })
        .await
    }

    async fn retry(
        &self,
        id: WebhookId,
        owner: UserId,
        event_id: String,
        now: Timestamp,
    ) -> Result<bool, MetaError> {
        let done = self
            .write(move |c| {
                if !owns(c, id, owner)? {
                    return Ok(false);
                }
                Ok(c.prepare_cached(
                    "UPDATE webhook_deliveries
                     SET next_attempt_at = ?3, delivered_at = NULL,
                         lease_holder = NULL, lease_until = NULL
                     WHERE webhook_id = ?1 AND event_id = ?2",
                )?
                .execute(params![id, event_id, now])?
                    == 1)
            })
            .await?;
        self.events_committed(usize::from(done));
        Ok(done)
    }

    async fn claim(
        &self,
        holder: String,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<Claimed>, MetaError> {
        // Lazy: a lease lost in a power cut only lets the delivery be claimed again.
        self.write_lazy(move |c| claim(c, &holder, now, until, limit))
            .await
    }

    async fn prune_settled(&self, before: Timestamp) -> Result<usize, MetaError> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "DELETE FROM webhook_deliveries
                     WHERE next_attempt_at IS NULL AND created_at < ?1",
                )?
                .execute([before])?;
            c.prepare_cached(PRUNE_RETIRED)?.execute([])?;
            Ok(n)
        })
        .await
    }

    async fn prune_retired(&self) -> Result<usize, MetaError> {
        self.write(move |c| c.prepare_cached(PRUNE_RETIRED)?.execute([]))
            .await
    }

    async fn stored_secrets(&self, unsealed: bool) -> Result<Vec<SealedSecret>, MetaError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, secret, secret_key_id FROM webhooks
                 WHERE NOT ?1 OR secret_key_id IS NULL ORDER BY id",
            )?
            .query_map([unsealed], |r| {
                Ok(SealedSecret {
                    id: r.get(0)?,
                    secret: r.get(1)?,
                    key_id: r.get(2)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn reseal_secret(&self, old: SealedSecret, new: SealedSecret) -> Result<bool, MetaError> {
        self.write(move |c| {
            Ok(c.prepare_cached(
                "UPDATE webhooks SET secret = ?2, secret_key_id = ?3
                 WHERE id = ?1 AND secret = ?4 AND secret_key_id IS ?5",
            )?
            .execute(params![
                old.id, new.secret, new.key_id, old.secret, old.key_id
            ])? == 1)
        })
        .await
    }

    async fn finish_many(
        &self,
        now: Timestamp,
        tries: Vec<Finished>,
    ) -> Result<Vec<bool>, MetaError> {
        // One write for the lot, lazy: a try whose record a power cut loses is made again (at
        // least once, as promised), so it needs no fsync of its own.
        self.write_lazy(move |c| {
            let done = tries
                .iter()
                .map(|t| finish(c, t.seq, &t.holder, now, &t.attempt))
                .collect::<rusqlite::Result<Vec<bool>>>()?;
            c.prepare_cached(PRUNE_RETIRED)?.execute([])?;
            Ok(done)
        })
        .await
    }

    async fn finish(
        &self,
        seq: i64,
        holder: String,
        now: Timestamp,
        attempt: Attempt,
    ) -> Result<bool, MetaError> {
        self.write_lazy(move |c| {
            let done = finish(c, seq, &holder, now, &attempt)?;
            c.prepare_cached(PRUNE_RETIRED)?.execute([])?;
            Ok(done)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::FileId;

    fn setup() -> (Connection, UserId, WebhookId) {
        let c = crate::meta::sqlite::test_conn();
        let owner = UserId::new();
        c.execute(
            "INSERT INTO users (id, username, email, password_hash, role, created_at)
             VALUES (?1, 'u', 'u@example.com', 'x', 'user', 0)",
            [owner],
        )
        .unwrap();
        let hook = WebhookId::new();
        c.execute(
            "INSERT INTO webhooks (id, owner_id, url, events, secret, created_at)
             VALUES (?1, ?2, 'https://example.com/', ',file.created,file.deleted,', x'00', 0)",
            params![hook, owner],
        )
        .unwrap();
        (c, owner, hook)
    }

    fn event(owner: UserId, kind: &'static str, file: FileId, at: i64) -> NewEvent {
        NewEvent {
            id: format!("evt_{}", uuid::Uuid::new_v4().simple()),
            owner,
            kind,
            file_id: Some(file),
            body: "{}".into(),
            created_at: Timestamp(at),
        }
    }

    #[test]
    fn a_later_event_of_a_file_waits_for_the_earlier_and_a_lease_keeps_others_off() {
        let (c, owner, _) = setup();
        let (f, g) = (FileId::new(), FileId::new());
        let n = record(
            &c,
            &[
                event(owner, "file.created", f, 1),
                event(owner, "file.deleted", f, 2),
                event(owner, "file.created", g, 3),
                // Not subscribed: no row.
                event(owner, "link.used", g, 4),
            ],
        )
        .unwrap();
        assert_eq!(n, 3);
        let now = Timestamp(10);
        let got = claim(&c, "a", now, Timestamp(100), 10).unwrap();
        assert_eq!(got.len(), 2, "the deletion of f waits for its creation");
        assert!(claim(&c, "b", now, Timestamp(100), 10).unwrap().is_empty());
        // A failure keeps f's creation pending: the deletion still waits.
        let retry = Attempt::Failed {
            status: Some(500),
            error: "500".into(),
            answer: None,
            retry_at: Some(Timestamp(50)),
        };
        assert!(finish(&c, got[0].seq, "a", now, &retry).unwrap());
        assert!(claim(&c, "b", now, Timestamp(100), 10).unwrap().is_empty());
        // Another holder cannot finish what it does not hold.
        let ok = Attempt::Delivered {
            status: 200,
            answer: String::new(),
        };
        assert!(!finish(&c, got[1].seq, "b", now, &ok).unwrap());
        // Due again: claimed, delivered, then the deletion follows.
        let again = claim(&c, "b", Timestamp(60), Timestamp(200), 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1);
        assert!(finish(&c, again[0].seq, "b", Timestamp(60), &ok).unwrap());
        let next = claim(&c, "b", Timestamp(60), Timestamp(200), 10).unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].seq, got[0].seq + 1);
        // A dead holder's lease runs out: another takes the delivery over.
        let taken = claim(&c, "c", Timestamp(150), Timestamp(300), 10).unwrap();
        assert_eq!(taken.len(), 1, "g's creation, leased by a until 100");
        assert_eq!(taken[0].seq, got[1].seq);
    }
}
