//! Recording security events: every event is logged at once and appended to the hash-chained
//! `audit` table by one writer task that commits in batches (group commit), so a burst of
//! downloads costs one transaction, not one fsync each.
//!
//! Invariant: entries are appended in the order they were recorded. Reading the trail first
//! flushes what is queued, so a client that acted and then reads the trail sees its action.
//! Details never contain a password, token, key or link token: callers pass ids and sizes.
//! A file's hash or name goes in an entry's confidential facts ([`Record::confidential`]):
//! stored in the trail, inside the protected store, but logged only while encryption at rest is
//! off ([`Confidential`]), since logs leave the host and a hash or name in them lets anyone who
//! reads them confirm a guessed file.

use std::net::IpAddr;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::ids::Timestamp;
use crate::meta::{MetaStore, audit};

/// Largest batch committed in one transaction.
const MAX_BATCH: usize = 512;
/// How long the writer waits for more entries before committing a partial batch.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Register,
    Login,
    LoginFailed,
    Refresh,
    RefreshReuse,
    Logout,
    ApiKeyCreate,
    ApiKeyDelete,
    FileUpload,
    FileUploadRejected,
    FileInfected,
    FileUnscanned,
    FileDownload,
    FileDelete,
    FileExpire,
    FileIntegrityError,
    FileView,
    LinkCreate,
    LinkUse,
    LinkDelete,
    AdminUserDelete,
    AdminUserRole,
    UserCreate,
    ViewRevoke,
    GrantCreate,
    GrantUse,
    GrantRevoke,
    WebhookCreate,
    WebhookDelete,
}

impl Event {
    /// The stored event name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "auth.register",
            Self::Login => "auth.login",
            Self::LoginFailed => "auth.login_failed",
            Self::Refresh => "auth.refresh",
            Self::RefreshReuse => "auth.refresh_reuse",
            Self::Logout => "auth.logout",
            Self::ApiKeyCreate => "apikey.create",
            Self::ApiKeyDelete => "apikey.delete",
            Self::FileUpload => "file.upload",
            Self::FileUploadRejected => "file.upload_rejected",
            Self::FileInfected => "file.infected",
            Self::FileUnscanned => "file.unscanned",
            Self::FileDownload => "file.download",
            Self::FileDelete => "file.delete",
            Self::FileExpire => "file.expire",
            Self::FileIntegrityError => "file.integrity_error",
            Self::FileView => "file.view",
            Self::LinkCreate => "link.create",
            Self::LinkUse => "link.use",
            Self::LinkDelete => "link.delete",
            Self::AdminUserDelete => "admin.user_delete",
            Self::AdminUserRole => "admin.user_role",
            Self::UserCreate => "admin.user_create",
            Self::ViewRevoke => "view.revoke",
            Self::GrantCreate => "grant.create",
            Self::GrantUse => "grant.use",
            Self::GrantRevoke => "grant.revoke",
            Self::WebhookCreate => "webhook.create",
            Self::WebhookDelete => "webhook.delete",
        }
    }
}

/// One event being recorded.
#[derive(Debug, Clone)]
pub struct Record {
    event: Event,
    actor: Option<String>,
    subject: Option<String>,
    ip: Option<IpAddr>,
    detail: Value,
    /// Facts for the trail that the log may not carry (see [`Confidential`]).
    confidential: Map<String, Value>,
}

impl Record {
    /// Start a record of `event`.
    pub fn new(event: Event) -> Self {
        Self {
            event,
            actor: None,
            subject: None,
            ip: None,
            detail: Value::Object(Default::default()),
            confidential: Map::new(),
        }
    }

    /// Who did it.
    pub fn actor(mut self, id: impl ToString) -> Self {
        self.actor = Some(id.to_string());
        self
    }

    /// What it was done to.
    pub fn subject(mut self, id: impl ToString) -> Self {
        self.subject = Some(id.to_string());
        self
    }

    /// From where.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    /// Facts about it (an object; never secrets).
    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }

    /// A fact about a file's identity (its hash or name): stored in the detail like the others,
    /// but in the log only as [`Confidential`] allows.
    pub fn confidential(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.confidential.insert(key.to_owned(), value.into());
        self
    }
}

/// Where an entry's confidential facts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confidential {
    /// The trail and the log (encryption at rest is off: the hash stays useful in the log, to
    /// match uploads against lists of known-bad files).
    Logged,
    /// The trail only (encryption at rest is on: no log line carries a file's hash or name).
    TrailOnly,
}

/// The detail stored in the trail: `detail` with the confidential facts added.
fn stored_detail(detail: Value, confidential: Map<String, Value>) -> Value {
    if confidential.is_empty() {
        return detail;
    }
    let mut all = match detail {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => Map::from_iter([("detail".to_owned(), other)]),
    };
    all.extend(confidential);
    Value::Object(all)
}

enum Msg {
    Entry(audit::AuditEntry),
    Flush(oneshot::Sender<()>),
}

/// The handle used to record events. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::UnboundedSender<Msg>,
    confidential: Confidential,
}

impl AuditLog {
    /// Start the writer task; the first of `keys` chains the trail (the others verify its head).
    pub fn start(
        meta: MetaStore,
        keys: audit::ChainKeys,
        confidential: Confidential,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(writer(meta, std::sync::Arc::new(keys), rx));
        (Self { tx, confidential }, task)
    }

    /// Record an event: logged now, stored by the writer shortly.
    pub fn record(&self, r: Record) {
        let ip = r.ip.map(|ip| ip.to_string());
        let withheld = self.confidential == Confidential::TrailOnly && !r.confidential.is_empty();
        let public = withheld.then(|| r.detail.clone());
        let detail = stored_detail(r.detail, r.confidential);
        tracing::info!(
            audit.event = r.event.as_str(),
            audit.actor = r.actor.as_deref().unwrap_or("-"),
            audit.subject = r.subject.as_deref().unwrap_or("-"),
            client.ip = ip.as_deref().unwrap_or("-"),
            detail = %public.as_ref().unwrap_or(&detail),
            "audit {}",
            r.event.as_str()
        );
        let entry = audit::AuditEntry {
            id: uuid::Uuid::now_v7(),
            at: Timestamp::now(),
            event: r.event.as_str().to_owned(),
            actor_id: r.actor,
            subject_id: r.subject,
            client_ip: ip,
            detail,
        };
        if self.tx.send(Msg::Entry(entry)).is_err() {
            tracing::error!("audit writer has stopped; entry logged but not stored");
        }
    }

    /// Wait until everything recorded so far is committed.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.await;
        }
    }
}

async fn writer(
    meta: MetaStore,
    keys: std::sync::Arc<audit::ChainKeys>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) {
    let mut entries = Vec::new();
    let mut acks = Vec::new();
    while let Some(first) = rx.recv().await {
        take(first, &mut entries, &mut acks);
        drain(&mut rx, &mut entries, &mut acks);
        // Under load, linger a moment so one commit (one fsync) covers many entries. A reader
        // waiting on a flush is not kept waiting.
        if acks.is_empty() && entries.len() < MAX_BATCH {
            tokio::time::sleep(LINGER).await;
            drain(&mut rx, &mut entries, &mut acks);
        }
        if !entries.is_empty() {
            store(&meta, &keys, std::mem::take(&mut entries)).await;
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// Append a batch, retrying a few times (the CLI may hold the database lock for a moment);
/// only then is it given up, loudly.
async fn store(
    meta: &MetaStore,
    keys: &std::sync::Arc<audit::ChainKeys>,
    batch: Vec<audit::AuditEntry>,
) {
    let batch: std::sync::Arc<[audit::AuditEntry]> = batch.into();
    for wait_ms in [0u64, 100, 500, 2000] {
        tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
        match meta.audit().append_with(keys, batch.clone()).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "cannot store audit entries yet"),
        }
    }
    tracing::error!(
        lost = batch.len(),
        "audit entries could not be stored; they are only in this log"
    );
}

fn take(msg: Msg, entries: &mut Vec<audit::AuditEntry>, acks: &mut Vec<oneshot::Sender<()>>) {
    match msg {
        Msg::Entry(e) => entries.push(e),
        Msg::Flush(ack) => acks.push(ack),
    }
}

fn drain(
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    entries: &mut Vec<audit::AuditEntry>,
    acks: &mut Vec<oneshot::Sender<()>>,
) {
    while entries.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(msg) => take(msg, entries, acks),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn confidential_facts_join_the_stored_detail() {
        let plain = json!({ "size": 3 });
        assert_eq!(stored_detail(plain.clone(), Map::new()), plain);
        let facts = Map::from_iter([("sha256".to_owned(), json!("ab"))]);
        assert_eq!(
            stored_detail(plain, facts.clone()),
            json!({ "size": 3, "sha256": "ab" })
        );
        assert_eq!(stored_detail(Value::Null, facts), json!({ "sha256": "ab" }));
    }
}
