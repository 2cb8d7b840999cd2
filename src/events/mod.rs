//! Events and webhooks (API.md "Events and webhooks"): what happened to an owner's files, told
//! to the app backends that asked, after it committed, at least once, signed, in order per
//! file.
//!
//! - this file: the event types and their JSON bodies, built by the code that makes the
//!   change and handed to the `meta` method that commits it (the transactional outbox:
//!   `meta::events`), and the one call for refusals that change nothing
//!   ([`record_rejection`]);
//! - [`hooks`]: creating webhooks (URL rules, the secret shown once, sealed at rest when the
//!   keyring is on);
//! - [`sign`]: Standard Webhooks signatures;
//! - [`guard`]: the outbound address guard (SSRF) and the HTTP client that uses it;
//! - [`worker`]: the delivery worker (claims with a lease, back-off, the delivery log).
//!
//! Invariant: an event exists if and only if its change committed (it is written by the
//! change's own transaction); its id is fixed then and is the `webhook-id` of every try.

pub mod guard;
pub mod hooks;
pub mod sign;
pub mod worker;

use serde::Serialize;
use serde_json::{Value, json};

use crate::ids::{GrantId, LinkId, Timestamp, UserId};
use crate::meta::MetaStore;
use crate::meta::events::NewEvent;
use crate::meta::files::FileObject;

/// The event types, as the contract names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A file was stored (any upload path).
    FileCreated,
    /// A file was deleted (by its owner, an admin, or a repair).
    FileDeleted,
    /// A file's retention ran out and the sweeper removed it.
    FileExpired,
    /// An upload was refused; nothing was stored.
    UploadRejected,
    /// A share link served the file.
    LinkUsed,
}

/// Every type, in the order the contract lists them.
pub const ALL: [Kind; 5] = [
    Kind::FileCreated,
    Kind::FileDeleted,
    Kind::FileExpired,
    Kind::UploadRejected,
    Kind::LinkUsed,
];

impl Kind {
    /// The dotted name (`type` in the body).
    pub fn name(self) -> &'static str {
        match self {
            Self::FileCreated => "file.created",
            Self::FileDeleted => "file.deleted",
            Self::FileExpired => "file.expired",
            Self::UploadRejected => "upload.rejected",
            Self::LinkUsed => "link.used",
        }
    }

    /// The type a name stands for.
    pub fn parse(s: &str) -> Option<Self> {
        ALL.into_iter().find(|k| k.name() == s)
    }
}

/// Why an upload was refused, as `upload.rejected` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RejectReason {
    /// Extension or content type not allowed, or an unreadable or oversized image (415).
    Type,
    /// Larger than allowed (413).
    Size,
    /// The owner's quota (413).
    Quota,
    /// The virus scanner found a signature (422).
    Infected,
    /// An image or PDF that is also an archive or carries markup (415).
    Polyglot,
    /// The content did not hash to the checksum asked for (422).
    Checksum,
}

fn new_id() -> String {
    format!("evt_{}", uuid::Uuid::now_v7().simple())
}

fn event(owner: UserId, kind: Kind, file: Option<crate::ids::FileId>, data: Value) -> NewEvent {
    let id = new_id();
    let now = Timestamp::now();
    let body = json!({
        "id": id,
        "type": kind.name(),
        "timestamp": now.to_rfc3339(),
        "data": data,
    });
    NewEvent {
        id,
        owner,
        kind: kind.name(),
        file_id: file,
        body: body.to_string(),
        created_at: now,
    }
}

/// The file object (with its `grant_id`).
fn file_data(file: &FileObject) -> Value {
    serde_json::to_value(file).unwrap_or_else(|_| json!({ "id": file.id }))
}

/// A file event (`file.created`, `file.deleted`, `file.expired`): `data` is the file object
/// with `grant_id`.
pub fn file_event(kind: Kind, owner: UserId, file: &FileObject) -> NewEvent {
    event(owner, kind, Some(file.id), file_data(file))
}

/// `link.used`: the file object, with the link's id.
pub fn link_used(owner: UserId, link: LinkId, file: &FileObject) -> NewEvent {
    let mut data = file_data(file);
    if let Value::Object(m) = &mut data {
        m.insert("link_id".into(), json!(link));
    }
    event(owner, Kind::LinkUsed, Some(file.id), data)
}

/// `upload.rejected`: the name, the reason, the grant (if one was used).
pub fn upload_rejected(
    owner: UserId,
    filename: &str,
    reason: RejectReason,
    grant_id: Option<GrantId>,
) -> NewEvent {
    event(
        owner,
        Kind::UploadRejected,
        None,
        json!({ "filename": filename, "reason": reason, "grant_id": grant_id }),
    )
}

/// Record that an upload of `owner` was refused (its own transaction: nothing else changed).
/// Every upload path calls this for its refusals (single-shot, tus, grants); a failure to
/// record is logged, never turned into the upload's answer.
pub async fn record_rejection(
    meta: &MetaStore,
    owner: UserId,
    filename: &str,
    reason: RejectReason,
    grant_id: Option<GrantId>,
) {
    let ev = upload_rejected(owner, filename, reason, grant_id);
    if let Err(e) = meta.outbox().record(vec![ev]).await {
        tracing::warn!(error = %e, user.id = %owner, "cannot record an upload.rejected event");
    }
}

/// [`record_rejection`] from synchronous code (a `Drop`): spawned on the current runtime.
pub fn record_rejection_later(
    meta: &MetaStore,
    owner: UserId,
    filename: String,
    reason: RejectReason,
    grant_id: Option<GrantId>,
) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let meta = meta.clone();
        rt.spawn(async move { record_rejection(&meta, owner, &filename, reason, grant_id).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_id_type_timestamp_and_data() {
        let owner = UserId::new();
        let ev = upload_rejected(owner, "a.exe", RejectReason::Type, None);
        assert!(ev.id.starts_with("evt_") && ev.id.len() == 36, "{}", ev.id);
        let v: Value = serde_json::from_str(&ev.body).unwrap();
        assert_eq!(v["id"], ev.id.as_str());
        assert_eq!(v["type"], "upload.rejected");
        assert_eq!(v["data"]["reason"], "type");
        assert!(v["data"]["grant_id"].is_null());
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        for k in ALL {
            assert_eq!(Kind::parse(k.name()), Some(k));
        }
        assert_eq!(Kind::parse("file.*"), None);
    }
}
