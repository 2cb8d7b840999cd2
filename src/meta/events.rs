//! Webhooks and the event outbox: what the rest of the crate may ask of the `webhooks` and
//! `webhook_deliveries` tables, whatever the engine.
//!
//! Invariant: an event is written in the same transaction as the change it describes (the
//! methods of [`crate::meta::files::Files`], [`crate::meta::uploads::Uploads`] and
//! [`crate::meta::links::Links`] that make a change take the events to record), as one
//! delivery row per webhook of the owner that wants its type; so an event exists if and only
//! if its change committed. A delivery is pending while `next_attempt_at` is set; it is
//! claimed by one node at a time with a lease that expires (a dead node's claims are taken
//! over), and only when no earlier delivery of the same file to the same webhook is pending,
//! so the events of a file arrive in order.
//!
//! A webhook outlives its owner until its outbox drains: deleting an account sets its
//! webhooks' `owner_id` to NULL (the foreign key's `ON DELETE SET NULL`), so the `file.deleted`
//! events of the deletion are still delivered; such a retired webhook records no new event, is
//! invisible to every route, and is removed with its log as soon as none of its deliveries is
//! pending ([`PRUNE_RETIRED`]: after each recorded try, after the account's deletion, and by the
//! sweeper).

use async_trait::async_trait;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ids::{FileId, Timestamp, UserId, WebhookId};
use crate::meta::error::MetaError;
use crate::meta::page::Page;

/// An event to record with a change, for every webhook of `owner` that wants its type.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// `evt_` and 32 hex digits: the `webhook-id` on every try.
    pub id: String,
    /// Whose files it is about.
    pub owner: UserId,
    /// `file.created`, `file.deleted`, ...
    pub kind: &'static str,
    /// The file it is about (orders its events); `None` for a rejected upload.
    pub file_id: Option<FileId>,
    /// The JSON body sent, as signed.
    pub body: String,
    /// When it happened.
    pub created_at: Timestamp,
}

/// A webhook to store.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    /// The public part.
    pub hook: Webhook,
    /// The owner.
    pub owner: UserId,
    /// The signing secret's bytes, sealed when `secret_key_id` is set.
    pub secret: Vec<u8>,
    /// The keyring key that sealed the secret, if any.
    pub secret_key_id: Option<String>,
}

/// What storing a webhook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookStored {
    /// Stored.
    Stored,
    /// Its owner is gone: nothing stored.
    OwnerGone,
    /// Its owner has the most webhooks allowed already: nothing stored.
    TooMany,
}

/// A webhook's stored secret, as `coffer rotate-key` and start-up re-seal it.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    /// The webhook.
    pub id: WebhookId,
    /// The wrapped secret (the secret itself when `key_id` is `None`: stored so by a version
    /// that sealed secrets only with encryption at rest on).
    pub secret: Vec<u8>,
    /// The keyring key that wrapped it.
    pub key_id: Option<String>,
}

/// Remove retired webhooks (their owner deleted) with no pending delivery, with their logs.
/// The same text on both engines; it takes no parameter.
pub const PRUNE_RETIRED: &str = "DELETE FROM webhooks WHERE owner_id IS NULL AND NOT EXISTS (
         SELECT 1 FROM webhook_deliveries d
         WHERE d.webhook_id = webhooks.id AND d.next_attempt_at IS NOT NULL)";

/// A webhook as its owner sees it (never its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Webhook {
    /// Id.
    pub id: WebhookId,
    /// Where events are sent.
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A finished try, to record ([`Outbox::finish_many`]).
#[derive(Debug, Clone)]
pub struct Finished {
    /// The delivery row.
    pub seq: i64,
    /// The claim the try was made under ([`Outbox::claim`]'s `holder`).
    pub holder: String,
    /// How it went.
    pub attempt: Attempt,
}

/// A delivery claimed by this node, with what sending it needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The delivery row.
    pub seq: i64,
    /// The webhook.
    pub webhook_id: WebhookId,
    /// Its URL.
    pub url: String,
    /// Its secret (sealed when `secret_key_id` is set).
    pub secret: Vec<u8>,
    /// The key that sealed it.
    pub secret_key_id: Option<String>,
    /// The event id (`webhook-id`).
    pub event_id: String,
    /// The body to send.
    pub body: String,
    /// Tries made before this one.
    pub attempts: u32,
}

/// How one try went.
#[derive(Debug, Clone)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered {
        /// The status.
        status: u16,
        /// The start of the answer (at most 512 bytes).
        answer: String,
    },
    /// Anything else.
    Failed {
        /// The status, when an answer came.
        status: Option<u16>,
        /// Why, for the owner (never a secret).
        error: String,
        /// The start of the answer, if any.
        answer: Option<String>,
        /// When to try again; `None` = given up.
        retry_at: Option<Timestamp>,
    },
}

/// One line of a webhook's delivery log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Delivery {
    /// The position in the log (the cursor).
    #[serde(skip)]
    pub seq: i64,
    /// The event id.
    pub event_id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Tries made.
    pub attempts: u32,
    /// The status of the last answer, if any.
    pub last_status: Option<u16>,
    /// Why the last try failed, if it did.
    pub last_error: Option<String>,
    /// The start of the last answer (at most 512 bytes).
    pub last_answer: Option<String>,
    /// When the next try is due; null when delivered or given up.
    pub next_attempt_at: Option<Timestamp>,
    /// When a 2xx answer came; null until then.
    pub delivered_at: Option<Timestamp>,
}

/// The `webhooks` and `webhook_deliveries` tables.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Record events that go with no other change (a rejected upload), in one transaction.
    async fn record(&self, events: Vec<NewEvent>) -> Result<(), MetaError>;

    /// Store a webhook unless its owner is gone or has `max_per_owner` already (counted and
    /// stored atomically, across nodes too).
    async fn create_webhook(
        &self,
        hook: NewWebhook,
        max_per_owner: u64,
    ) -> Result<WebhookStored, MetaError>;

    /// The owner's webhooks, newest first.
    async fn list_webhooks(&self, owner: UserId) -> Result<Vec<Webhook>, MetaError>;

    /// Delete one of the owner's webhooks (its deliveries go with it); `false` = none such.
    async fn delete_webhook(&self, id: WebhookId, owner: UserId) -> Result<bool, MetaError>;

    /// A page of the delivery log of one of the owner's webhooks, newest first, before the
    /// `seq` cursor; `None` when the webhook is not the owner's.
    async fn deliveries(
        &self,
        id: WebhookId,
        owner: UserId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Option<Page<Delivery>>, MetaError>;

    /// Make a delivery of one of the owner's webhooks due now (again, also when delivered or
    /// given up, and also while a try is in flight: its lease is dropped, so that try's outcome
    /// is not recorded over this); `false` when there is no such delivery of theirs.
    async fn retry(
        &self,
        id: WebhookId,
        owner: UserId,
        event_id: String,
        now: Timestamp,
    ) -> Result<bool, MetaError>;

    /// Claim up to `limit` due deliveries for `holder` until `until`: pending, due, not
    /// leased by another live holder, and the earliest pending one of their file for their
    /// webhook. One transaction.
    async fn claim(
        &self,
        holder: String,
        now: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Result<Vec<Claimed>, MetaError>;

    /// Remove settled deliveries (delivered or given up) of events older than `before`, and
    /// retired webhooks with nothing pending ([`PRUNE_RETIRED`]); how many deliveries. Pending
    /// ones stay, however old.
    async fn prune_settled(&self, before: Timestamp) -> Result<usize, MetaError>;

    /// Remove retired webhooks (their owner deleted) with no pending delivery; how many.
    async fn prune_retired(&self) -> Result<usize, MetaError>;

    /// Every webhook secret (retired webhooks too); only those not sealed with `unsealed`.
    async fn stored_secrets(&self, unsealed: bool) -> Result<Vec<SealedSecret>, MetaError>;

    /// Replace a webhook's sealed secret with `new` only while it is still `old` (what was
    /// read); `false` when it changed or went meanwhile.
    async fn reseal_secret(&self, old: SealedSecret, new: SealedSecret) -> Result<bool, MetaError>;

    /// [`Outbox::finish`] for several tries, in one transaction where the engine can; for each,
    /// whether it was recorded.
    async fn finish_many(
        &self,
        now: Timestamp,
        tries: Vec<Finished>,
    ) -> Result<Vec<bool>, MetaError> {
        let mut done = Vec::with_capacity(tries.len());
        for t in tries {
            done.push(self.finish(t.seq, t.holder, now, t.attempt).await?);
        }
        Ok(done)
    }

    /// Record how a try of a claimed delivery went and drop the lease, only while `holder`
    /// still holds it; `false` when another node took it over meanwhile. A retired webhook
    /// whose last pending delivery this settles goes in the same transaction.
    async fn finish(
        &self,
        seq: i64,
        holder: String,
        now: Timestamp,
        attempt: Attempt,
    ) -> Result<bool, MetaError>;
}

/// The comma-framed form of a list of event types, as stored.
pub fn frame_events(events: &[String]) -> String {
    format!(",{},", events.join(","))
}

/// The list a comma-framed form names.
pub fn unframe_events(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}
