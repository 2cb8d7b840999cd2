//! The upload pipeline, top to bottom: name and extension policy, quota reservation, sniffing
//! the head, then one pass that counts, hashes, validates text, seals (when encryption is on)
//! and writes to a staged blob; then commit: blob into place, row into the database.
//!
//! Invariant: a file either ends up whole (blob durable, then row committed) or leaves nothing:
//! every failure, including a client that disconnects mid-stream or an owner locked for
//! deletion before the row went in, drops the staged blob (its temp file is removed) and
//! releases the reservation. Memory use is bounded by the chunk
//! sizes, never by the file size.

pub mod filename;
pub mod framing;
pub mod idle;
pub mod policy;
pub(crate) mod quota;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::audit::AuditLog;
use crate::audit::{Event, Record};
use crate::blob::BlobStore;
use crate::blob::{BlobError, BlobKey, BlobWriter};
use crate::crypto::DataKey;
use crate::crypto::Keyring;
use crate::crypto::segment::Sealer;
use crate::ids::{FileId, Timestamp, UploadId, UserId};
use crate::meta::MetaError;
use crate::meta::MetaStore;
use crate::meta::files::{FileObject, StoredFile};
use crate::meta::uploads::Committed;
use policy::{Refusal, Rule, SNIFF_LEN, UploadPolicy, Utf8Check};
use quota::{Quota, QuotaError, Reservation};

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    /// Type policy (415).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// More bytes than `limits.max_upload_bytes` (413).
    #[error("upload larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The owner's quota (413, quota-exceeded).
    #[error("quota exceeded")]
    Quota,
    /// A malformed body (400).
    #[error("bad upload body: {0}")]
    BadBody(String),
    /// The client went away or broke off the body mid-stream (400, if anyone still listens).
    #[error("the client aborted the upload")]
    ClientAborted,
    /// The client sent nothing for too long (408).
    #[error("upload idle for too long")]
    Idle,
    /// The owner was locked for deletion (or deleted) while the upload ran (401: its
    /// credentials are dead now).
    #[error("the owner's account is being deleted")]
    OwnerGone,
    /// Blob storage failed (507 when full).
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl IngestError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Refused(r) => r.reason(),
            Self::TooLarge { .. } => "too_large",
            Self::Quota => "quota_exceeded",
            Self::BadBody(_) => "bad_body",
            Self::ClientAborted => "client_aborted",
            Self::Idle => "idle_timeout",
            Self::OwnerGone => "account_deleted",
            Self::Blob(BlobError::StorageFull) | Self::Meta(MetaError::Full) => "storage_full",
            Self::Blob(BlobError::Unavailable(_)) => "storage_unavailable",
            Self::Blob(_) | Self::Meta(_) => "internal_error",
        }
    }
}

impl From<idle::BodyError> for IngestError {
    fn from(e: idle::BodyError) -> Self {
        match e {
            idle::BodyError::Idle => Self::Idle,
            idle::BodyError::Framing => {
                Self::BadBody("a multipart preamble or part header is too long".into())
            }
            idle::BodyError::Broken(_) => Self::ClientAborted,
        }
    }
}

impl From<crate::crypto::CryptoError> for IngestError {
    fn from(e: crate::crypto::CryptoError) -> Self {
        // Sealing never meets stored bytes: any failure is an internal one.
        Self::Blob(BlobError::Io(std::io::Error::other(e)))
    }
}

impl From<QuotaError> for IngestError {
    fn from(e: QuotaError) -> Self {
        match e {
            QuotaError::Exceeded => Self::Quota,
            QuotaError::Meta(m) => Self::Meta(m),
        }
    }
}

/// What the handler knows about an upload before its body.
#[derive(Debug, Clone)]
pub(crate) struct Upload {
    pub(crate) owner: UserId,
    /// Client address (audit).
    pub(crate) client_ip: IpAddr,
    /// The client's filename, unsanitised.
    pub(crate) raw_name: String,
    /// When the file expires (`None`: kept until deleted).
    pub(crate) expires_at: Option<Timestamp>,
    /// Upper bound of the content length, when the request says (Content-Length).
    pub(crate) length_hint: Option<u64>,
    /// Whether `length_hint` is the exact content length (raw bodies).
    pub(crate) exact_length: bool,
}

/// The upload pipeline and what it works with. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Ingest {
    /// `limits.max_upload_bytes`.
    pub(crate) max_upload_bytes: u64,
    /// Which extensions are accepted, and as what.
    pub(crate) policy: Arc<UploadPolicy>,
    /// Per-user storage quotas, with reservations for uploads in flight.
    pub(crate) quota: Arc<Quota>,
    /// Where the bytes go.
    pub(crate) blobs: BlobStore,
    /// Where the row goes.
    pub(crate) meta: MetaStore,
    /// The keys that seal blobs, when encryption at rest is on.
    pub(crate) keyring: Arc<Keyring>,
    /// Where uploads and rejections are recorded.
    pub(crate) audit: AuditLog,
}

/// Records `file.upload_rejected` if the upload ends any way but committed, including a
/// dropped future (client disconnect).
struct Outcome {
    audit: AuditLog,
    owner: UserId,
    ip: IpAddr,
    bytes: u64,
    reason: Option<&'static str>,
    done: bool,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.done {
            self.audit.record(
                Record::new(Event::FileUploadRejected)
                    .actor(self.owner)
                    .ip(self.ip)
                    .detail(serde_json::json!({
                        "reason": self.reason.unwrap_or("client_aborted"),
                        "bytes_received": self.bytes,
                    })),
            );
        }
    }
}

/// A fully received, validated upload whose blob is staged but not yet visible.
pub(crate) struct Staged {
    writer: Box<dyn BlobWriter>,
    stored: StoredFile,
    reservation: Reservation,
    outcome: Outcome,
}

impl Ingest {
    /// Receive and validate an upload. `body` yields the file's bytes only (multipart
    /// framing already removed) and enforces the idle timeout ([`idle::IdleTimeout`]).
    pub(crate) async fn stage<S>(&self, up: Upload, body: S) -> Result<Staged, IngestError>
    where
        S: Stream<Item = Result<Bytes, IngestError>> + Unpin,
    {
        stage(self, up, body).await
    }
}

async fn stage<S>(state: &Ingest, up: Upload, body: S) -> Result<Staged, IngestError>
where
    S: Stream<Item = Result<Bytes, IngestError>> + Unpin,
{
    let mut outcome = Outcome {
        audit: state.audit.clone(),
        owner: up.owner,
        ip: up.client_ip,
        bytes: 0,
        reason: None,
        done: false,
    };
    match receive(state, &up, body, &mut outcome).await {
        Ok((writer, stored, reservation)) => Ok(Staged {
            writer,
            stored,
            reservation,
            outcome,
        }),
        Err(e) => {
            outcome.reason = Some(e.reason());
            Err(e)
        }
    }
}

async fn receive<S>(
    state: &Ingest,
    up: &Upload,
    mut body: S,
    outcome: &mut Outcome,
) -> Result<(Box<dyn BlobWriter>, StoredFile, Reservation), IngestError>
where
    S: Stream<Item = Result<Bytes, IngestError>> + Unpin,
{
    let limit = state.max_upload_bytes;
    let name = filename::sanitize(&up.raw_name);
    let rule = state
        .policy
        .rule_for(filename::extension(&name).as_deref())?
        .clone();

    // The id and blob key first: the reservation names them, so a sweeper can clean up after
    // this node if it dies mid-upload.
    let id = FileId::new();
    let key = BlobKey::for_file(id, state.keyring.enabled());
    let want = up.length_hint.unwrap_or(limit).min(limit);
    let mut reservation = state
        .quota
        .reserve(UploadId::new(), up.owner, want, up.exact_length, &key)
        .await?;
    // The most this upload may hold: the size limit, or less when the quota leaves less.
    let cap = reservation.bytes().min(limit);
    let over = |n: u64| {
        if n > limit {
            IngestError::TooLarge { limit }
        } else {
            IngestError::Quota
        }
    };

    // Sniff: gather the head before deciding anything about the content.
    let mut head = BytesMut::new();
    let mut eof = false;
    while head.len() < SNIFF_LEN {
        match body.next().await.transpose()? {
            Some(chunk) => {
                outcome.bytes += chunk.len() as u64;
                if outcome.bytes > cap {
                    return Err(over(outcome.bytes));
                }
                head.extend_from_slice(&chunk);
            }
            None => {
                eof = true;
                break;
            }
        }
    }
    let content_type = UploadPolicy::decide(&rule, &head)?;

    let mut sink = Sink::open(state, id, &key, rule == Rule::Text).await?;
    sink.feed(head.freeze()).await?;
    if !eof {
        while let Some(chunk) = body.next().await.transpose()? {
            outcome.bytes += chunk.len() as u64;
            if outcome.bytes > cap {
                return Err(over(outcome.bytes));
            }
            sink.feed(chunk).await?;
            reservation.touch().await;
            if let Some(staging) = sink.newly_staged() {
                reservation.staged(staging).await?;
            }
        }
    }
    let (writer, sha256, sealing, staged_late) = sink.finish(state, id).await?;
    if let Some(staging) = staged_late {
        reservation.staged(staging).await?;
    }
    let stored = StoredFile {
        file: FileObject {
            id,
            filename: name,
            size: outcome.bytes,
            content_type,
            sha256,
            created_at: Timestamp::now(),
            expires_at: up.expires_at,
        },
        owner_id: up.owner,
        blob_key: key.as_str().to_owned(),
        sealing,
    };
    Ok((writer, stored, reservation))
}

/// Where validated bytes go: hasher, text check, sealer, blob writer. The per-byte work runs
/// on the blocking pool one batch at a time, one batch in flight while the next is received,
/// so hashing and sealing overlap with the network (on 2 cores, the difference between one
/// core doing everything and both working). No thread is held between batches: a client that
/// trickles bytes costs a connection and at most two batches of memory, never a thread. The
/// blob writer stays on the async side (it schedules its own disk writes), so a batch never
/// waits for other blocking work and the pool cannot deadlock however many uploads run.
struct Sink {
    writer: Box<dyn BlobWriter>,
    /// The pipeline, when no batch is in flight.
    idle: Option<Box<Pipeline>>,
    /// The batch being processed; it hands back the pipeline and the bytes to store.
    busy: Option<tokio::task::JoinHandle<Result<Batch, IngestError>>>,
    /// Received bytes not yet handed over.
    pending: Vec<Bytes>,
    pending_len: usize,
    /// The writer's staging id as last reported by [`Sink::newly_staged`].
    staging: Option<String>,
}

/// What [`Sink::finish`] hands back: the writer, the SHA-256, the sealing, and a staging id
/// that appeared with the last bytes (to record).
type Finished = (
    Box<dyn BlobWriter>,
    String,
    Option<crate::crypto::Sealing>,
    Option<String>,
);

/// A processed batch: the pipeline back, and the bytes to store in order.
type Batch = (Box<Pipeline>, Vec<Bytes>);

/// The per-byte state of one upload.
struct Pipeline {
    span: tracing::Span,
    hasher: Sha256,
    text: Option<Utf8Check>,
    sealer: Option<Sealer>,
    data_key: Option<DataKey>,
}

/// What the pipeline hands back at the end.
struct Processed {
    sha256: String,
    data_key: Option<DataKey>,
    /// The last sealed segment, when sealing.
    tail: Option<Bytes>,
}

/// Bytes handed to the blocking pool at once: at least this many as soon as the pipeline is
/// free, so it keeps working while bytes arrive...
const BATCH_MIN: usize = 64 * 1024;
/// ...and at most this many, waiting for it to be free (back-pressure; larger batches pin
/// more receive buffers: measured ~35 MiB RSS during a 1 GiB upload at 1 MiB, ~21 at 256 KiB).
const BATCH_MAX: usize = 256 * 1024;

impl Sink {
    async fn open(
        state: &Ingest,
        id: FileId,
        key: &BlobKey,
        text: bool,
    ) -> Result<Self, IngestError> {
        let writer = state.blobs.put(key).await?;
        let data_key = state.keyring.enabled().then(DataKey::generate);
        let pipeline = Pipeline {
            span: tracing::Span::current(),
            hasher: Sha256::new(),
            text: text.then(Utf8Check::default),
            sealer: data_key.as_ref().map(|k| Sealer::new(k, id)),
            data_key,
        };
        Ok(Self {
            writer,
            idle: Some(Box::new(pipeline)),
            busy: None,
            pending: Vec::new(),
            pending_len: 0,
            staging: None,
        })
    }

    /// The writer's staging id when it is new since the last call (a multipart upload just
    /// started): the caller records it.
    fn newly_staged(&mut self) -> Option<String> {
        let now = self.writer.staging_id();
        if now.is_some() && now != self.staging {
            self.staging.clone_from(&now);
            return now;
        }
        None
    }

    /// Take a chunk. Pending bytes go to the blocking pool when the pipeline is free and has
    /// enough to be worth a hand-off, or when they fill a batch (then after the batch in
    /// flight: back-pressure, so memory stays bounded by two batches).
    async fn feed(&mut self, chunk: Bytes) -> Result<(), IngestError> {
        self.pending_len += chunk.len();
        self.pending.push(chunk);
        let free = self.busy.as_ref().is_none_or(|b| b.is_finished());
        if self.pending_len >= BATCH_MAX || (free && self.pending_len >= BATCH_MIN) {
            self.dispatch().await?;
        }
        Ok(())
    }

    /// Hand the pending bytes to the blocking pool, after the batch in flight.
    async fn dispatch(&mut self) -> Result<(), IngestError> {
        let mut pipeline = self.settle().await?;
        let batch = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        self.busy = Some(tokio::task::spawn_blocking(move || {
            let out = pipeline.process(batch)?;
            Ok((pipeline, out))
        }));
        Ok(())
    }

    /// The pipeline, once the batch in flight (if any) is done and its bytes are written.
    async fn settle(&mut self) -> Result<Box<Pipeline>, IngestError> {
        if let Some(busy) = self.busy.take() {
            let (pipeline, out) = busy.await.map_err(lost)??;
            for bytes in &out {
                self.writer.write(bytes).await?;
            }
            return Ok(pipeline);
        }
        // A previous batch failed and its error was returned; the sink is not used after.
        self.idle
            .take()
            .ok_or_else(|| lost("upload pipeline is gone"))
    }

    async fn finish(mut self, state: &Ingest, id: FileId) -> Result<Finished, IngestError> {
        // The last bytes and the end of the stream in one hand-off (a small upload's only one).
        let mut pipeline = self.settle().await?;
        let batch = std::mem::take(&mut self.pending);
        let (out, done) = tokio::task::spawn_blocking(move || {
            let out = pipeline.process(batch)?;
            Ok::<_, IngestError>((out, pipeline.finish()?))
        })
        .await
        .map_err(lost)??;
        for bytes in out.iter().chain(&done.tail) {
            self.writer.write(bytes).await?;
        }
        let sealing = match done.data_key {
            Some(key) => Some(
                state
                    .keyring
                    .wrap(id, &key)
                    .ok_or_else(|| lost("cannot wrap the data key"))?,
            ),
            None => None,
        };
        let staged_late = self.newly_staged();
        Ok((self.writer, done.sha256, sealing, staged_late))
    }
}

/// The pipeline was lost (its task panicked or was cancelled): an internal error.
fn lost(e: impl ToString) -> IngestError {
    IngestError::Blob(BlobError::Io(std::io::Error::other(e.to_string())))
}

impl Pipeline {
    /// Hash, check and seal a batch (on a blocking thread); the bytes to store, in order.
    fn process(&mut self, batch: Vec<Bytes>) -> Result<Vec<Bytes>, IngestError> {
        let span = self.span.clone();
        span.in_scope(|| batch.into_iter().map(|chunk| self.update(chunk)).collect())
    }

    /// Hash, check and seal one chunk; the bytes to store.
    fn update(&mut self, chunk: Bytes) -> Result<Bytes, IngestError> {
        self.hasher.update(&chunk);
        if let Some(t) = &mut self.text {
            t.update(&chunk)?;
        }
        Ok(match &mut self.sealer {
            Some(s) => Bytes::from(s.update(&chunk)?),
            None => chunk,
        })
    }

    /// The end of the stream: last text check, last sealed segment.
    fn finish(mut self: Box<Self>) -> Result<Processed, IngestError> {
        if let Some(t) = self.text.take() {
            t.finish()?;
        }
        let tail = match self.sealer.take() {
            Some(s) => Some(Bytes::from(s.finish()?)),
            None => None,
        };
        Ok(Processed {
            sha256: hex::encode(self.hasher.finalize()),
            data_key: self.data_key,
            tail,
        })
    }
}

impl Staged {
    /// Make the upload visible: blob into place (durably), then the row. Runs to completion
    /// even if the client goes away, so it never stops between the two steps.
    pub(crate) async fn commit(self, state: &Ingest) -> Result<FileObject, IngestError> {
        let state = state.clone();
        tokio::spawn(async move { self.commit_inner(&state).await })
            .await
            .map_err(|e| IngestError::Blob(BlobError::Io(std::io::Error::other(e))))?
    }

    async fn commit_inner(mut self, state: &Ingest) -> Result<FileObject, IngestError> {
        let key = BlobKey::for_file(self.stored.file.id, self.stored.sealing.is_some());
        if let Err(e) = self.writer.commit().await {
            let e = IngestError::from(e);
            self.outcome.reason = Some(e.reason());
            return Err(e);
        }
        // The row in and the reservation out, in one transaction.
        let upload = self.reservation.id();
        let inserted = match state
            .meta
            .uploads()
            .commit(upload, self.stored.clone())
            .await
        {
            Ok(Committed::Inserted) => Ok(()),
            // The owner was locked for deletion after this upload authenticated.
            Ok(Committed::OwnerGone) => Err(IngestError::OwnerGone),
            // Stalled so long (the database unreachable) that a sweeper took it for abandoned.
            Ok(Committed::Swept) => Err(IngestError::Meta(MetaError::Unavailable(
                "the upload was taken for abandoned while it committed".into(),
            ))),
            Err(e) => Err(IngestError::from(e)),
        };
        if let Err(e) = inserted {
            // The row is the commit point: without it the blob must go too.
            // Never referenced, so not queued: if this fails too, it is a crash's orphan,
            // which start-up's scan (or `coffer check --repair`) removes.
            if let Err(de) = state.blobs.delete(&key).await {
                tracing::warn!(error = %de, "cannot delete the blob of a failed upload");
            }
            self.outcome.reason = Some(e.reason());
            return Err(e);
        }
        self.reservation.settle();
        self.outcome.done = true;
        let f = &self.stored.file;
        state.audit.record(
            Record::new(Event::FileUpload)
                .actor(self.stored.owner_id)
                .subject(f.id)
                .ip(self.outcome.ip)
                .detail(serde_json::json!({
                    "size": f.size,
                    "content_type": f.content_type,
                    "encrypted": self.stored.sealing.is_some(),
                }))
                .confidential("sha256", f.sha256.as_str()),
        );
        Ok(self.stored.file)
    }
}
