//! Webhooks and the event outbox in PostgreSQL.
//!
//! Invariant: events are recorded by the transaction of their change, which also sends
//! `NOTIFY` on [`EVENTS_CHANNEL`] (delivered to every node's listener at commit, never on
//! rollback). A claim is one statement: the due rows are picked `FOR UPDATE SKIP LOCKED` and
//! leased to the claiming node, so two nodes claiming at once never take the same delivery;
//! a lease that runs out (its node died) makes the row claimable again.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::{EVENTS_CHANNEL, IsolationLevel, PgResult, Postgres};
use crate::ids::{Timestamp, UserId, WebhookId};
use crate::meta::error::MetaError;
use crate::meta::events::{
    Attempt, Claimed, Delivery, Finished, NewEvent, NewWebhook, Outbox, PRUNE_RETIRED,
    SealedSecret, Webhook, WebhookStored, frame_events, unframe_events,
};
use crate::meta::page::Page;

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn small(n: Option<u16>) -> Option<i32> {
    n.map(i32::from)
}

/// Record `events` in the caller's transaction: one delivery row per webhook of the owner
/// that wants the type, and a `NOTIFY` when any was written. The number of rows.
pub async fn record(c: &impl GenericClient, events: &[NewEvent]) -> PgResult<u64> {
    if events.is_empty() {
        return Ok(0);
    }
    let st = c
        .prepare_cached(
            "INSERT INTO webhook_deliveries
                 (webhook_id, event_id, event_type, file_id, body, created_at, next_attempt_at)
             SELECT w.id, $2::text, $3::text, $4::uuid, $5::text, $6::bigint, $6::bigint
             FROM webhooks w
             WHERE w.owner_id = $1 AND position(',' || $3::text || ',' in w.events) > 0
             ORDER BY w.id",
        )
        .await?;
    let mut n = 0;
    for e in events {
        n += c
            .execute(
                &st,
                &[&e.owner, &e.id, &e.kind, &e.file_id, &e.body, &e.created_at],
            )
            .await?;
    }
    if n > 0 {
        let st = c.prepare_cached("SELECT pg_notify($1, '')").await?;
        c.execute(&st, &[&EVENTS_CHANNEL]).await?;
    }
    Ok(n)
}

/// [`PRUNE_RETIRED`] in the caller's transaction.
async fn prune_retired(c: &impl GenericClient) -> PgResult<u64> {
    let st = c.prepare_cached(PRUNE_RETIRED).await?;
    c.execute(&st, &[]).await
}

fn webhook(r: &tokio_postgres::Row) -> PgResult<Webhook> {
    let events: String = r.try_get(2)?;
    Ok(Webhook {
        id: r.try_get(0)?,
        url: r.try_get(1)?,
        events: unframe_events(&events),
        created_at: r.try_get(3)?,
    })
}

fn delivery(r: &tokio_postgres::Row) -> PgResult<Delivery> {
    let attempts: i32 = r.try_get(3)?;
    let status: Option<i32> = r.try_get(4)?;
    Ok(Delivery {
        seq: r.try_get(0)?,
        event_id: r.try_get(1)?,
        kind: r.try_get(2)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        last_status: status.and_then(|s| u16::try_from(s).ok()),
        last_error: r.try_get(5)?,
        last_answer: r.try_get(6)?,
        next_attempt_at: r.try_get(7)?,
        delivered_at: r.try_get(8)?,
    })
}

async fn owns(c: &impl GenericClient, id: WebhookId, owner: UserId) -> PgResult<bool> {
    let st = c
        .prepare_cached("SELECT 1 FROM webhooks WHERE id = $1 AND owner_id = $2")
        .await?;
    Ok(c.query_opt(&st, &[&id, &owner]).await?.is_some())
}

async fn claim(
    c: &impl GenericClient,
    holder: &str,
    now: Timestamp,
    until: Timestamp,
    limit: usize,
) -> PgResult<Vec<Claimed>> {
    let st = c
        .prepare_cached(
            "WITH due AS (
                 SELECT d.seq FROM webhook_deliveries d
                 WHERE d.next_attempt_at IS NOT NULL AND d.next_attempt_at <= $2
                   AND (d.lease_until IS NULL OR d.lease_until <= $2)
                   AND (d.file_id IS NULL OR NOT EXISTS (
                       SELECT 1 FROM webhook_deliveries e
                       WHERE e.webhook_id = d.webhook_id AND e.file_id = d.file_id
                         AND e.next_attempt_at IS NOT NULL AND e.seq < d.seq))
                 ORDER BY d.seq LIMIT $4
                 FOR UPDATE SKIP LOCKED)
             UPDATE webhook_deliveries x SET lease_holder = $1, lease_until = $3
             FROM due, webhooks w
             WHERE x.seq = due.seq AND w.id = x.webhook_id
               AND x.next_attempt_at IS NOT NULL
               AND (x.lease_until IS NULL OR x.lease_until <= $2)
             RETURNING x.seq, w.id, w.url, w.secret, w.secret_key_id, x.event_id, x.body,
                       x.attempts",
        )
        .await?;
    let rows = c
        .query(&st, &[&holder, &now, &until, &count(limit)])
        .await?;
    let mut out = rows
        .iter()
        .map(|r| {
            let attempts: i32 = r.try_get(7)?;
            Ok(Claimed {
                seq: r.try_get(0)?,
                webhook_id: r.try_get(1)?,
                url: r.try_get(2)?,
                secret: r.try_get(3)?,
                secret_key_id: r.try_get(4)?,
                event_id: r.try_get(5)?,
                body: r.try_get(6)?,
                attempts: u32::try_from(attempts).unwrap_or(0),
            })
        })
        .collect::<PgResult<Vec<_>>>()?;
    out.sort_by_key(|d| d.seq);
    Ok(out)
}

async fn finish(
    c: &impl GenericClient,
    seq: i64,
    holder: &str,
    now: Timestamp,
    attempt: &Attempt,
) -> PgResult<bool> {
    let n = match attempt {
        Attempt::Delivered { status, answer } => {
            let st = c
                .prepare_cached(
                    "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = $3,
                         last_error = NULL, last_answer = $4, delivered_at = $5,
                         next_attempt_at = NULL, lease_holder = NULL, lease_until = NULL
                     WHERE seq = $1 AND lease_holder = $2",
                )
                .await?;
            c.execute(&st, &[&seq, &holder, &i32::from(*status), answer, &now])
                .await?
        }
        Attempt::Failed {
            status,
            error,
            answer,
            retry_at,
        } => {
            let st = c
                .prepare_cached(
                    "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = $3,
                         last_error = $4, last_answer = $5, next_attempt_at = $6,
                         lease_holder = NULL, lease_until = NULL
                     WHERE seq = $1 AND lease_holder = $2",
                )
                .await?;
            c.execute(
                &st,
                &[&seq, &holder, &small(*status), error, answer, retry_at],
            )
            .await?
        }
    };
    Ok(n == 1)
}

#[async_trait]
impl Outbox for Postgres {
    async fn record(&self, events: Vec<NewEvent>) -> Result<(), MetaError> {
        let n = self
            .tx(IsolationLevel::ReadCommitted, events, |t, events| {
                Box::pin(record(t, events))
            })
            .await?;
        self.events_committed(n);
        Ok(())
    }

    async fn create_webhook(
        &self,
        hook: NewWebhook,
        max_per_owner: u64,
    ) -> Result<WebhookStored, MetaError> {
        // The owner's row locked first, so two nodes creating at once count one after the
        // other (each statement of READ COMMITTED sees what committed before it began).
        self.tx(
            IsolationLevel::ReadCommitted,
            (
                hook,
                count(usize::try_from(max_per_owner).unwrap_or(usize::MAX)),
            ),
            |t, (h, max)| {
                Box::pin(async move {
                    let st = t
                        .prepare_cached("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
                        .await?;
                    if t.query_opt(&st, &[&h.owner]).await?.is_none() {
                        return Ok(WebhookStored::OwnerGone);
                    }
                    let st = t
                        .prepare_cached("SELECT count(*) FROM webhooks WHERE owner_id = $1")
                        .await?;
                    let n: i64 = t.query_one(&st, &[&h.owner]).await?.try_get(0)?;
                    if n >= *max {
                        return Ok(WebhookStored::TooMany);
                    }
                    let st = t
                        .prepare_cached(
                            "INSERT INTO webhooks
                                 (id, owner_id, url, events, secret, secret_key_id, created_at)
                             VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        )
                        .await?;
                    t.execute(
                        &st,
                        &[
                            &h.hook.id,
                            &h.owner,
                            &h.hook.url,
                            &frame_events(&h.hook.events),
                            &h.secret,
                            &h.secret_key_id,
                            &h.hook.created_at,
                        ],
                    )
                    .await?;
                    Ok(WebhookStored::Stored)
                })
            },
        )
        .await
    }

    async fn list_webhooks(&self, owner: UserId) -> Result<Vec<Webhook>, MetaError> {
        self.one(owner, |c, owner| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(
                        "SELECT id, url, events, created_at FROM webhooks WHERE owner_id = $1
                         ORDER BY created_at DESC, id DESC",
                    )
                    .await?;
                c.query(&st, &[owner]).await?.iter().map(webhook).collect()
            })
        })
        .await
    }

    async fn delete_webhook(&self, id: WebhookId, owner: UserId) -> Result<bool, MetaError> {
        self.one((id, owner), |c, (id, owner)| {
            Box::pin(async move {
                let st = c
                    .prepare_cached("DELETE FROM webhooks WHERE id = $1 AND owner_id = $2")
                    .await?;
                Ok(c.execute(&st, &[id, owner]).await? == 1)
            })
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
        self.one(
            (id, owner, before, limit),
            |c, &(id, owner, before, limit)| {
                Box::pin(async move {
                    if !owns(c, id, owner).await? {
                        return Ok(None);
                    }
                    let st = c
                        .prepare_cached(
                            "SELECT seq, event_id, event_type, attempts, last_status, last_error,
                                    last_answer, next_attempt_at, delivered_at
                             FROM webhook_deliveries
                             WHERE webhook_id = $1 AND ($2::bigint IS NULL OR seq < $2)
                             ORDER BY seq DESC LIMIT $3",
                        )
                        .await?;
                    let rows = c
                        .query(&st, &[&id, &before, &count(limit + 1)])
                        .await?
                        .iter()
                        .map(delivery)
                        .collect::<PgResult<Vec<_>>>()?;
                    Ok(Some(Page::from_overfetch(rows, limit)))
                })
            },
        )
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
            .tx(
                IsolationLevel::ReadCommitted,
                (id, owner, event_id, now),
                |t, (id, owner, event_id, now)| {
                    Box::pin(async move {
                        let st = t
                            .prepare_cached(
                                "UPDATE webhook_deliveries d
                                 SET next_attempt_at = $4, delivered_at = NULL,
                                     lease_holder = NULL, lease_until = NULL
                                 FROM webhooks w
                                 WHERE w.id = d.webhook_id AND w.id = $1 AND w.owner_id = $2
                                   AND d.event_id = $3",
                            )
                            .await?;
                        let n = t.execute(&st, &[id, owner, event_id, now]).await?;
                        if n > 0 {
                            let st = t.prepare_cached("SELECT pg_notify($1, '')").await?;
                            t.execute(&st, &[&EVENTS_CHANNEL]).await?;
                        }
                        Ok(n == 1)
                    })
                },
            )
            .await?;
        self.events_committed(u64::from(done));
        Ok(done)
    }

    async fn claim(
        &self,
        holder: String,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<Claimed>, MetaError> {
        self.one(
            (holder, now, until, limit),
            |c, (holder, now, until, limit)| Box::pin(claim(c, holder, *now, *until, *limit)),
        )
        .await
    }

    async fn prune_settled(&self, before: Timestamp) -> Result<usize, MetaError> {
        self.one(before, |c, before| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(
                        "DELETE FROM webhook_deliveries
                         WHERE next_attempt_at IS NULL AND created_at < $1",
                    )
                    .await?;
                let n = c.execute(&st, &[before]).await?;
                prune_retired(c).await?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            })
        })
        .await
    }

    async fn prune_retired(&self) -> Result<usize, MetaError> {
        self.one((), |c, ()| {
            Box::pin(async move {
                let n = prune_retired(c).await?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            })
        })
        .await
    }

    async fn stored_secrets(&self, unsealed: bool) -> Result<Vec<SealedSecret>, MetaError> {
        self.one(unsealed, |c, unsealed| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(
                        "SELECT id, secret, secret_key_id FROM webhooks
                         WHERE NOT $1 OR secret_key_id IS NULL ORDER BY id",
                    )
                    .await?;
                c.query(&st, &[&*unsealed])
                    .await?
                    .iter()
                    .map(|r| {
                        Ok(SealedSecret {
                            id: r.try_get(0)?,
                            secret: r.try_get(1)?,
                            key_id: r.try_get(2)?,
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    async fn reseal_secret(&self, old: SealedSecret, new: SealedSecret) -> Result<bool, MetaError> {
        self.one((old, new), |c, (old, new)| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(
                        "UPDATE webhooks SET secret = $2, secret_key_id = $3
                         WHERE id = $1 AND secret = $4
                           AND secret_key_id IS NOT DISTINCT FROM $5",
                    )
                    .await?;
                Ok(c.execute(
                    &st,
                    &[&old.id, &new.secret, &new.key_id, &old.secret, &old.key_id],
                )
                .await?
                    == 1)
            })
        })
        .await
    }

    async fn finish_many(
        &self,
        now: Timestamp,
        tries: Vec<Finished>,
    ) -> Result<Vec<bool>, MetaError> {
        // One transaction, one round trip per row but one commit for the lot.
        self.tx(
            IsolationLevel::ReadCommitted,
            (now, tries),
            |t, (now, tries)| {
                Box::pin(async move {
                    let mut done = Vec::with_capacity(tries.len());
                    for f in tries {
                        done.push(finish(t, f.seq, &f.holder, *now, &f.attempt).await?);
                    }
                    prune_retired(t).await?;
                    Ok(done)
                })
            },
        )
        .await
    }

    async fn finish(
        &self,
        seq: i64,
        holder: String,
        now: Timestamp,
        attempt: Attempt,
    ) -> Result<bool, MetaError> {
        self.tx(
            IsolationLevel::ReadCommitted,
            (seq, holder, now, attempt),
            |t, (seq, holder, now, attempt)| {
                Box::pin(async move {
                    let done = finish(t, *seq, holder, *now, attempt).await?;
                    prune_retired(t).await?;
                    Ok(done)
                })
            },
        )
        .await
    }
}
