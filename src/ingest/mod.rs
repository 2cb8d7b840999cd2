//! The upload pipeline, top to bottom: name and extension policy, quota reservation, sniffing
//! the head, then one pass that counts, checks content safety (polyglots, image headers,
//! metadata stripping: `safety`), hashes, validates text, seals (when encryption is on) and
//! writes to a staged blob while clamd scans the same bytes; the verdict; then commit: blob
//! into place, row into the database.
//!
//! Invariant: a file either ends up whole (blob durable, then row committed) or leaves nothing:
//! every failure, including a client that disconnects mid-stream or an owner locked for
//! deletion before the row went in, drops the staged blob (its temp file is removed) and
//! releases the reservation. A file refused by content safety (infected, a polyglot, an image
//! bomb, clamd without a verdict) is refused before the commit, so it too leaves nothing.
//! `size` and `sha256` describe the stored bytes (after stripping). Memory use is bounded by
//! the chunk sizes, never by the file size.

pub mod filename;
pub mod framing;
pub mod idle;
pub mod media;
pub mod policy;
pub mod polyglot;
pub(crate) mod quota;
pub(crate) mod safety;
mod same;
pub mod scan;

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
use crate::events::{self, Kind, RejectReason};
use crate::ids::{FileId, Timestamp, UploadId, UserId};
use crate::meta::MetaError;
use crate::meta::MetaStore;
use crate::meta::files::{FileObject, StoredFile};
use crate::meta::grants::Grant;
use crate::meta::uploads::Committed;
use media::MediaError;
use policy::{Refusal, Rule, SNIFF_LEN, UploadPolicy, Utf8Check};
use polyglot::Polyglot;
use quota::{Quota, QuotaError, Reservation};
use safety::{Checks, Safety, Scan, Scanned};

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    /// Type policy (415).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// More bytes than `limits.max_upload_bytes` (413).
    #[error("upload larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// An image or PDF that is also a ZIP archive or carries markup (415, polyglot).
    #[error(transparent)]
    Polyglot(#[from] Polyglot),
    /// An image whose header declares too many pixels, or that cannot be read (415).
    #[error(transparent)]
    Image(#[from] MediaError),
    /// clamd found a signature; its name (422, infected).
    #[error("infected: {0}")]
    Infected(String),
    /// More bytes than `scan.max_bytes`, without `scan.skip_larger` (413).
    #[error("larger than the {limit} bytes the scanner takes")]
    TooLargeToScan { limit: u64 },
    /// clamd unreachable, erroring or too slow, without `scan.fail_open` (503); why, for
    /// the log only.
    #[error("no verdict from the virus scanner: {0}")]
    ScanUnavailable(String),
    /// The owner's quota (413, quota-exceeded).
    #[error("quota exceeded")]
    Quota,
    /// The upload grant is revoked, expired or used up (401), or was revoked while the
    /// upload ran.
    #[error("the upload grant is no longer valid")]
    GrantRefused,
    /// The bytes do not hash to the grant's `sha256` (422, checksum-mismatch).
    #[error("the upload does not match the grant's sha256")]
    ChecksumMismatch,
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
    /// The `upload.rejected` reason of a refusal; `None` for a failure that is not one (the
    /// client went away, the store failed).
    pub(crate) fn rejection(&self) -> Option<RejectReason> {
        match self {
            Self::Refused(_) | Self::Image(_) => Some(RejectReason::Type),
            Self::TooLarge { .. } | Self::TooLargeToScan { .. } => Some(RejectReason::Size),
            Self::Polyglot(_) => Some(RejectReason::Polyglot),
            Self::Infected(_) => Some(RejectReason::Infected),
            Self::Quota => Some(RejectReason::Quota),
            Self::ChecksumMismatch => Some(RejectReason::Checksum),
            _ => None,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Refused(r) => r.reason(),
            Self::TooLarge { .. } => "too_large",
            Self::Polyglot(_) => "polyglot",
            Self::Image(e) => e.reason(),
            Self::Infected(_) => "infected",
            Self::TooLargeToScan { .. } => "too_large_to_scan",
            Self::ScanUnavailable(_) => "scanner_unavailable",
            Self::Quota => "quota_exceeded",
            Self::GrantRefused => "grant_refused",
            Self::ChecksumMismatch => "checksum_mismatch",
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
            QuotaError::GrantRefused => Self::GrantRefused,
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
    /// The upload grant it is made with (its owner is `owner`): its size, extensions and
    /// sha256 apply, and it gives one of its uses.
    pub(crate) grant: Option<Grant>,
}

impl Upload {
    /// The most bytes this upload may have: the service's limit, or its grant's.
    pub(crate) fn limit(&self, max_upload_bytes: u64) -> u64 {
        self.grant
            .as_ref()
            .map_or(max_upload_bytes, |g| g.max_bytes.min(max_upload_bytes))
    }
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
    /// Virus scanning, image limits and stripping, polyglot refusal.
    pub(crate) safety: Safety,
}

/// Records `file.upload_rejected` if the upload ends any way but committed, including a
/// dropped future (client disconnect); `file.infected` instead when clamd found a signature.
struct Outcome {
    audit: AuditLog,
    /// Records `upload.rejected` for a refusal.
    meta: MetaStore,
    /// The sanitised name (the event's `filename`).
    filename: String,
    /// Set for a refusal (an `upload.rejected` event).
    rejection: Option<RejectReason>,
    owner: UserId,
    ip: IpAddr,
    /// The upload grant it was made with.
    grant: Option<crate::ids::GrantId>,
    bytes: u64,
    reason: Option<&'static str>,
    /// The signature clamd named.
    signature: Option<String>,
    done: bool,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(reason) = self.rejection {
            events::record_rejection_later(
                &self.meta,
                self.owner,
                std::mem::take(&mut self.filename),
                reason,
                self.grant,
            );
        }
        let reason = self.reason.unwrap_or("client_aborted");
        let record = match self.signature.take() {
            Some(signature) => Record::new(Event::FileInfected).detail(serde_json::json!({
                "signature": signature,
                "bytes_received": self.bytes,
            })),
            None => Record::new(Event::FileUploadRejected).detail(serde_json::json!({
                "reason": reason,
                "bytes_received": self.bytes,
                "grant_id": self.grant,
            })),
        };
        self.audit.record(record.actor(self.owner).ip(self.ip));
    }
}

/// A fully received, validated upload whose blob is staged but not yet visible.
pub(crate) struct Staged {
    writer: Box<dyn BlobWriter>,
    stored: StoredFile,
    /// Whether the stored bytes are exactly the received ones (no metadata was stripped).
    unchanged: bool,
    scanned: Scanned,
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
        stage(self, up, None, body).await
    }

    /// [`Ingest::stage`] for an upload whose id and quota were settled beforehand (a
    /// resumable upload: its id is announced at creation, its whole length reserved then).
    /// `stored`, when given, takes the stored bytes instead of a new blob for the file (a
    /// resumable upload whose bytes are already stored, sealed as it says, checks them by
    /// reading them back): nothing is sealed here.
    pub(crate) async fn stage_reserved<S>(
        &self,
        up: Upload,
        id: FileId,
        reservation: Reservation,
        stored: Option<Given>,
        body: S,
    ) -> Result<Staged, IngestError>
    where
        S: Stream<Item = Result<Bytes, IngestError>> + Unpin,
    {
        stage(self, up, Some((id, reservation, stored)), body).await
    }

    /// The sanitized name of an upload, if its extension is allowed (415 otherwise): checked
    /// before a byte of any body is read.
    pub(crate) fn admit_name(&self, raw: &str) -> Result<String, IngestError> {
        self.admit(raw, None).map(|(name, _)| name)
    }

    /// The sanitized name and the rule for its extension, which must be allowed, and among
    /// `grant`'s extensions when there is one (415 otherwise).
    pub(crate) fn admit(
        &self,
        raw: &str,
        grant: Option<&Grant>,
    ) -> Result<(String, Rule), IngestError> {
        let name = filename::sanitize(raw);
        let ext = filename::extension(&name);
        let rule = self.policy.rule_for(ext.as_deref())?.clone();
        if let (Some(g), Some(ext)) = (grant, ext)
            && !g.extensions.contains(&ext)
        {
            return Err(Refusal::ExtensionNotAllowed(ext).into());
        }
        Ok((name, rule))
    }
}

/// Bytes stored already: the writer that takes them (and writes nothing), and how they are
/// sealed.
pub(crate) type Given = (Box<dyn BlobWriter>, Option<crate::crypto::Sealing>);

/// An upload's id and quota settled beforehand, and its stored bytes if not a new blob.
type Settled = (FileId, Reservation, Option<Given>);

async fn stage<S>(
    state: &Ingest,
    up: Upload,
    pre: Option<Settled>,
    body: S,
) -> Result<Staged, IngestError>
where
    S: Stream<Item = Result<Bytes, IngestError>> + Unpin,
{
    let mut outcome = Outcome {
        audit: state.audit.clone(),
        meta: state.meta.clone(),
        filename: filename::sanitize(&up.raw_name),
        rejection: None,
        owner: up.owner,
        ip: up.client_ip,
        grant: up.grant.as_ref().map(|g| g.id),
        bytes: 0,
        reason: None,
        signature: None,
        done: false,
    };
    match receive(state, &up, pre, body, &mut outcome).await {
        Ok(Received {
            writer,
            stored,
            unchanged,
            scanned,
            reservation,
        }) => Ok(Staged {
            writer,
            stored,
            unchanged,
            scanned,
            reservation,
            outcome,
        }),
        Err(e) => {
            outcome.reason = Some(e.reason());
            outcome.rejection = e.rejection();
            if let IngestError::Infected(signature) = &e {
                outcome.signature = Some(signature.clone());
            }
            Err(e)
        }
    }
}

/// A body received whole, checked and scanned, its blob staged.
struct Received {
    writer: Box<dyn BlobWriter>,
    stored: StoredFile,
    unchanged: bool,
    scanned: Scanned,
    reservation: Reservation,
}

async fn receive<S>(
    state: &Ingest,
    up: &Upload,
    pre: Option<Settled>,
    mut body: S,
    outcome: &mut Outcome,
) -> Result<Received, IngestError>
where
    S: Stream<Item = Result<Bytes, IngestError>> + Unpin,
{
    let limit = up.limit(state.max_upload_bytes);
    let (name, rule) = state.admit(&up.raw_name, up.grant.as_ref())?;

    // The id and blob key first: the reservation names them, so a sweeper can clean up after
    // this node if it dies mid-upload.
    let (id, mut reservation, given) = match pre {
        Some(pre) => pre,
        None => {
            let id = FileId::new();
            let key = BlobKey::for_file(id, state.keyring.enabled());
            let want = up.length_hint.unwrap_or(limit).min(limit);
            let reservation = state
                .quota
                .reserve(
                    UploadId::new(),
                    up.owner,
                    want,
                    up.exact_length,
                    &key,
                    up.grant.as_ref().map(|g| g.id),
                )
                .await?;
            (id, reservation, None)
        }
    };
    let key = BlobKey::for_file(id, state.keyring.enabled());
    // Everything after the reservation: on failure the reservation is released before the
    // answer goes out, so a single-use grant's use is back by the time the client retries.
    let filled = async {
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

        let checks = Checks::for_type(&state.safety, &content_type);
        let expected = up.grant.as_ref().and_then(|g| g.sha256.clone());
        let given_bytes = given.is_some();
        let (given, given_sealing) = match given {
            Some((w, sealing)) => (Some(w), sealing),
            None => (None, None),
        };
        let mut sink = Sink::open(
            state,
            id,
            &key,
            given,
            rule == Rule::Text,
            checks,
            expected.is_some(),
        )
        .await?;
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
        let done = sink.finish(state, id).await?;
        // The grant's sha256 names the bytes the client sent (before any metadata stripping).
        if let Some(want) = expected
            && done.received_sha256.as_deref() != Some(want.as_str())
        {
            return Err(IngestError::ChecksumMismatch);
        }
        if let Some(staging) = &done.staged_late {
            reservation.staged(staging.clone()).await?;
        }
        let unchanged = done.unchanged;
        let stored = StoredFile {
            file: FileObject {
                id,
                filename: name,
                size: done.size,
                content_type,
                sha256: done.sha256,
                created_at: Timestamp::now(),
                expires_at: up.expires_at,
                scanned_at: done.scanned.scanned_at(),
                grant_id: up.grant.as_ref().map(|g| g.id),
            },
            owner_id: up.owner,
            blob_key: key.as_str().to_owned(),
            sealing: if given_bytes {
                given_sealing
            } else {
                done.sealing
            },
        };
        Ok::<_, IngestError>((done.writer, stored, unchanged, done.scanned))
    }
    .await;
    match filled {
        Ok((writer, stored, unchanged, scanned)) => Ok(Received {
            writer,
            stored,
            unchanged,
            scanned,
            reservation,
        }),
        Err(e) => {
            reservation.release().await;
            Err(e)
        }
    }
}

/// Where validated bytes go: content-safety checks (and stripping), hasher, text check,
/// sealer, then blob writer and clamd side by side. The per-byte work runs
/// on the blocking pool one batch at a time, one batch in flight while the next is received,
/// so hashing and sealing overlap with the network (on 2 cores, the difference between one
/// core doing everything and both working). No thread is held between batches: a client that
/// trickles bytes costs a connection and at most two batches of memory, never a thread. The
/// blob writer stays on the async side (it schedules its own disk writes), so a batch never
/// waits for other blocking work and the pool cannot deadlock however many uploads run.
struct Sink {
    writer: Box<dyn BlobWriter>,
    /// The clamd session, fed with the stored plaintext as the writer takes its bytes.
    scan: Scan,
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

/// A processed batch: the pipeline back, and its output.
type Batch = (Box<Pipeline>, Output);

/// What a batch yields: the bytes to write (sealed when encrypting), and the same bytes in
/// plaintext for clamd (only while a scan wants them; zero-copy when not sealing).
#[derive(Default)]
struct Output {
    store: Vec<Bytes>,
    plain: Vec<Bytes>,
}

/// The per-byte state of one upload.
struct Pipeline {
    span: tracing::Span,
    checks: Checks,
    hasher: Sha256,
    /// The hash of the bytes as received, when a grant's sha256 must be checked and stripping
    /// may change them (otherwise it is `hasher`'s).
    received: Option<Sha256>,
    /// Whether the bytes kept are the bytes received, when stripping may change them.
    same: Option<same::SameBytes>,
    /// Bytes stored so far (after stripping, before sealing): the file's `size`.
    size: u64,
    text: Option<Utf8Check>,
    sealer: Option<Sealer>,
    data_key: Option<DataKey>,
    /// Whether [`Output::plain`] is filled.
    scanning: bool,
}

/// What the pipeline hands back at the end.
struct Processed {
    sha256: String,
    received_sha256: Option<String>,
    /// The bytes stored are the bytes received (no metadata was stripped).
    unchanged: bool,
    size: u64,
    data_key: Option<DataKey>,
    /// The last sealed segment, when sealing.
    tail: Option<Bytes>,
}

/// What a finished sink hands back.
struct Finished {
    writer: Box<dyn BlobWriter>,
    sha256: String,
    /// The hash of the bytes as received, when asked for.
    received_sha256: Option<String>,
    /// The bytes stored are the bytes received.
    unchanged: bool,
    size: u64,
    sealing: Option<crate::crypto::Sealing>,
    scanned: Scanned,
    /// A staging id that appeared with the last bytes (to record in the reservation).
    staged_late: Option<String>,
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
        given: Option<Box<dyn BlobWriter>>,
        text: bool,
        checks: Checks,
        hash_received: bool,
    ) -> Result<Self, IngestError> {
        let data_key = (state.keyring.enabled() && given.is_none()).then(DataKey::generate);
        let sealer = data_key.as_ref().map(|k| Sealer::new(k, id)).transpose()?;
        // The scanner first: without it (and without `scan.fail_open`) no blob is started.
        let scan = Scan::start(&state.safety).await?;
        let writer = match given {
            Some(w) => w,
            None => state.blobs.put(key).await?,
        };
        let may_rewrite = checks.may_rewrite();
        let same = may_rewrite.then(same::SameBytes::default);
        let pipeline = Pipeline {
            span: tracing::Span::current(),
            checks,
            hasher: Sha256::new(),
            received: (hash_received && may_rewrite).then(Sha256::new),
            same,
            size: 0,
            text: text.then(Utf8Check::default),
            sealer,
            data_key,
            scanning: scan.wants_bytes(),
        };
        Ok(Self {
            writer,
            scan,
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
        pipeline.scanning = self.scan.wants_bytes();
        self.busy = Some(tokio::task::spawn_blocking(move || {
            let out = pipeline.process(batch)?;
            Ok((pipeline, out))
        }));
        Ok(())
    }

    /// Write a batch's bytes and feed them to clamd, both at once.
    async fn store(&mut self, out: Output) -> Result<(), IngestError> {
        let writer = &mut self.writer;
        let write = async {
            for bytes in &out.store {
                writer.write(bytes).await?;
            }
            Ok::<(), IngestError>(())
        };
        futures_util::future::try_join(write, self.scan.feed(&out.plain)).await?;
        Ok(())
    }

    /// The pipeline, once the batch in flight (if any) is done and its bytes are written.
    async fn settle(&mut self) -> Result<Box<Pipeline>, IngestError> {
        if let Some(busy) = self.busy.take() {
            let (pipeline, out) = busy.await.map_err(lost)??;
            self.store(out).await?;
            return Ok(pipeline);
        }
        // A previous batch failed and its error was returned; the sink is not used after.
        self.idle
            .take()
            .ok_or_else(|| lost("upload pipeline is gone"))
    }

    /// The last bytes, the end of the stream, and clamd's verdict: refused here, an upload
    /// has written only its staged blob, which dropping the sink removes.
    async fn finish(mut self, state: &Ingest, id: FileId) -> Result<Finished, IngestError> {
        // The last bytes and the end of the stream in one hand-off (a small upload's only one).
        let mut pipeline = self.settle().await?;
        let batch = std::mem::take(&mut self.pending);
        pipeline.scanning = self.scan.wants_bytes();
        let (mut out, done) = tokio::task::spawn_blocking(move || {
            let mut out = pipeline.process(batch)?;
            let done = pipeline.finish(&mut out)?;
            Ok::<_, IngestError>((out, done))
        })
        .await
        .map_err(lost)??;
        out.store.extend(done.tail.clone());
        self.store(out).await?;
        let staged_late = self.newly_staged();
        let scanned = self.scan.verdict().await?;
        let sealing = match done.data_key {
            Some(key) => Some(
                state
                    .keyring
                    .wrap(id, &key)
                    .ok_or_else(|| lost("cannot wrap the data key"))?,
            ),
            None => None,
        };
        Ok(Finished {
            writer: self.writer,
            sha256: done.sha256,
            received_sha256: done.received_sha256,
            unchanged: done.unchanged,
            size: done.size,
            sealing,
            scanned,
            staged_late,
        })
    }
}

/// An upload's per-byte checks run over its bytes as they arrive in pieces (a resumable
/// upload's PATCHes), storing nothing: what [`Ingest::stage_reserved`] would find reading the
/// stored bytes back, except clamd's verdict. Its work is per byte: call it on the blocking
/// pool.
pub(crate) struct Running {
    pipeline: Box<Pipeline>,
    content_type: String,
}

/// What [`Running`] found over all of an upload's bytes.
pub(crate) struct Checked {
    content_type: String,
    sha256: String,
    /// The bytes stored are the bytes received (no metadata was stripped).
    unchanged: bool,
    /// The hash of the bytes received when they are the stored ones (`unchanged`).
    received_sha256: Option<String>,
    size: u64,
}

impl Checked {
    /// The bytes checked.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }
}

impl Running {
    /// The next bytes, in order.
    pub(crate) fn update(&mut self, batch: &[Bytes]) -> Result<(), IngestError> {
        self.pipeline.process(batch.to_vec()).map(|_| ())
    }

    /// The end of the bytes: the last checks.
    pub(crate) fn finish(self) -> Result<Checked, IngestError> {
        let mut out = Output::default();
        let done = self.pipeline.finish(&mut out)?;
        Ok(Checked {
            content_type: self.content_type,
            sha256: done.sha256,
            unchanged: done.unchanged,
            received_sha256: done.received_sha256,
            size: done.size,
        })
    }
}

impl Ingest {
    /// Start [`Running`] checks for an upload whose first bytes are `head` (at least
    /// `SNIFF_LEN` of them, or all); `None` when they refuse it (the caller's own checks
    /// say why).
    pub(crate) fn running(&self, up: &Upload, head: &[u8]) -> Option<Running> {
        let (_, rule) = self.admit(&up.raw_name, up.grant.as_ref()).ok()?;
        let content_type =
            UploadPolicy::decide(&rule, head.get(..SNIFF_LEN).unwrap_or(head)).ok()?;
        let checks = Checks::for_type(&self.safety, &content_type);
        let may_rewrite = checks.may_rewrite();
        // No hash of the bytes as received: the checks are only used when stripping changed
        // nothing (then it is `hasher`'s); otherwise the bytes are read back through the whole
        // pipeline, which checks a grant's sha256 on them.
        let pipeline = Pipeline {
            span: tracing::Span::none(),
            checks,
            hasher: Sha256::new(),
            received: None,
            same: may_rewrite.then(same::SameBytes::default),
            size: 0,
            text: (rule == Rule::Text).then(Utf8Check::default),
            sealer: None,
            data_key: None,
            scanning: false,
        };
        Some(Running {
            pipeline: Box::new(pipeline),
            content_type,
        })
    }

    /// Whether uploads are scanned by clamd (which needs their bytes streamed to it).
    pub(crate) fn scans(&self) -> bool {
        self.safety.scanner.is_some()
    }

    /// [`Ingest::stage_reserved`] for stored bytes already checked whole by [`Running`]
    /// (and no scanner configured): `None` when they must be read back instead (stripping
    /// would store other bytes). The reservation is released on a refusal.
    pub(crate) async fn stage_checked(
        &self,
        up: Upload,
        id: FileId,
        reservation: Reservation,
        given: Given,
        checked: Checked,
    ) -> Result<Result<Staged, Reservation>, IngestError> {
        if !checked.unchanged || self.scans() {
            return Ok(Err(reservation));
        }
        let mut outcome = Outcome {
            audit: self.audit.clone(),
            meta: self.meta.clone(),
            filename: filename::sanitize(&up.raw_name),
            rejection: None,
            owner: up.owner,
            ip: up.client_ip,
            grant: up.grant.as_ref().map(|g| g.id),
            bytes: checked.size,
            reason: None,
            signature: None,
            done: false,
        };
        let (writer, sealing) = given;
        let checks = (|| {
            let (name, _) = self.admit(&up.raw_name, up.grant.as_ref())?;
            if checked.size > up.limit(self.max_upload_bytes) {
                return Err(IngestError::TooLarge {
                    limit: up.limit(self.max_upload_bytes),
                });
            }
            if let Some(want) = up.grant.as_ref().and_then(|g| g.sha256.as_deref())
                && checked.received_sha256.as_deref() != Some(want)
            {
                return Err(IngestError::ChecksumMismatch);
            }
            Ok(name)
        })();
        let name = match checks {
            Ok(name) => name,
            Err(e) => {
                outcome.reason = Some(e.reason());
                outcome.rejection = e.rejection();
                reservation.release().await;
                return Err(e);
            }
        };
        let key = BlobKey::for_file(id, sealing.is_some());
        let stored = StoredFile {
            file: FileObject {
                id,
                filename: name,
                size: checked.size,
                content_type: checked.content_type,
                sha256: checked.sha256,
                created_at: Timestamp::now(),
                expires_at: up.expires_at,
                scanned_at: None,
                grant_id: up.grant.as_ref().map(|g| g.id),
            },
            owner_id: up.owner,
            blob_key: key.as_str().to_owned(),
            sealing,
        };
        Ok(Ok(Staged {
            writer,
            stored,
            unchanged: true,
            scanned: Scanned::NotConfigured,
            reservation,
            outcome,
        }))
    }
}

/// The pipeline was lost (its task panicked or was cancelled): an internal error.
fn lost(e: impl ToString) -> IngestError {
    IngestError::Blob(BlobError::Io(std::io::Error::other(e.to_string())))
}

impl Pipeline {
    /// Check, strip, hash and seal a batch (on a blocking thread); the bytes to store, in
    /// order.
    fn process(&mut self, batch: Vec<Bytes>) -> Result<Output, IngestError> {
        let span = self.span.clone();
        span.in_scope(|| {
            let mut kept = Vec::with_capacity(batch.len());
            for chunk in batch {
                if let Some(h) = &mut self.received {
                    h.update(&chunk);
                }
                let from = kept.len();
                if let Some(s) = &mut self.same {
                    s.received(&chunk);
                }
                self.checks.update(chunk, &mut kept)?;
                if let Some(s) = &mut self.same {
                    s.kept(kept.get(from..).unwrap_or_default());
                }
            }
            self.keep(kept)
        })
    }

    /// Hash, check and seal the bytes to store.
    fn keep(&mut self, kept: Vec<Bytes>) -> Result<Output, IngestError> {
        let mut out = Output {
            store: Vec::with_capacity(kept.len()),
            plain: Vec::new(),
        };
        for piece in kept {
            self.hasher.update(&piece);
            self.size += piece.len() as u64;
            if let Some(t) = &mut self.text {
                t.update(&piece)?;
            }
            let stored = match &mut self.sealer {
                Some(s) => Bytes::from(s.update(&piece)?),
                None => piece.clone(),
            };
            if self.scanning {
                out.plain.push(piece);
            }
            out.store.push(stored);
        }
        Ok(out)
    }

    /// The end of the stream: the last checks and stripped bytes (added to `out`), last text
    /// check, last sealed segment.
    fn finish(mut self: Box<Self>, out: &mut Output) -> Result<Processed, IngestError> {
        let span = self.span.clone();
        let _in = span.enter();
        let checks = std::mem::replace(&mut self.checks, Checks::none());
        let mut kept = Vec::new();
        checks.finish(&mut kept)?;
        if let Some(s) = &mut self.same {
            s.kept(&kept);
        }
        let last = self.keep(kept)?;
        out.store.extend(last.store);
        out.plain.extend(last.plain);
        if let Some(t) = self.text.take() {
            t.finish()?;
        }
        let tail = match self.sealer.take() {
            Some(s) => Some(Bytes::from(s.finish()?)),
            None => None,
        };
        let sha256 = hex::encode(self.hasher.finalize());
        let unchanged = self.same.as_ref().is_none_or(same::SameBytes::same);
        // Unchanged bytes have one hash (the received one is only computed when they may not).
        let received_sha256 = match self.received {
            Some(h) => Some(hex::encode(h.finalize())),
            None => unchanged.then(|| sha256.clone()),
        };
        Ok(Processed {
            sha256,
            received_sha256,
            unchanged,
            size: self.size,
            data_key: self.data_key,
            tail,
        })
    }
}

impl Staged {
    /// Whether the stored bytes are the received ones (no metadata was stripped).
    pub(crate) fn unchanged(&self) -> bool {
        self.unchanged
    }

    /// The file's size.
    pub(crate) fn size(&self) -> u64 {
        self.stored.file.size
    }

    /// Give the staged bytes up but keep the quota reservation (and record nothing): the
    /// caller stages the same upload again with it.
    pub(crate) fn into_reservation(mut self) -> Reservation {
        self.outcome.done = true;
        // Moved out: `Staged` has no `Drop` of its own.
        self.reservation
    }

    /// Give the upload up (the request failed after its file was received): its staged blob
    /// is dropped, its quota and any grant use released before the caller answers, and the
    /// refusal audited with `e`'s reason.
    pub(crate) async fn abort(mut self, e: &IngestError) {
        self.outcome.reason = Some(e.reason());
        self.reservation.release().await;
    }

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
            self.reservation.release().await;
            return Err(e);
        }
        // The row in and the reservation out, in one transaction.
        let upload = self.reservation.id();
        // `file.created` commits with the row, or not at all.
        let created =
            events::file_event(Kind::FileCreated, self.stored.owner_id, &self.stored.file);
        let inserted = match state
            .meta
            .uploads()
            .commit_recording(upload, self.stored.clone(), vec![created])
            .await
        {
            Ok(Committed::Inserted) => Ok(()),
            // The owner was locked for deletion after this upload authenticated.
            Ok(Committed::OwnerGone) => Err(IngestError::OwnerGone),
            // Its grant was revoked while it ran.
            Ok(Committed::GrantRevoked) => Err(IngestError::GrantRefused),
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
            // Usually ended by the commit's own transaction already; not when it failed.
            self.reservation.release().await;
            return Err(e);
        }
        self.reservation.settle();
        self.outcome.done = true;
        let f = &self.stored.file;
        if let Scanned::Unscanned(reason) = self.scanned {
            state.audit.record(
                Record::new(Event::FileUnscanned)
                    .actor(self.stored.owner_id)
                    .subject(f.id)
                    .ip(self.outcome.ip)
                    .detail(serde_json::json!({ "reason": reason, "size": f.size })),
            );
        }
        state.audit.record(
            Record::new(Event::FileUpload)
                .actor(self.stored.owner_id)
                .subject(f.id)
                .ip(self.outcome.ip)
                .detail(serde_json::json!({
                    "size": f.size,
                    "content_type": f.content_type,
                    "encrypted": self.stored.sealing.is_some(),
                    "scanned": self.stored.file.scanned_at.is_some(),
                    "bytes_received": self.outcome.bytes,
                }))
                .confidential("sha256", f.sha256.as_str()),
        );
        if let Some(grant) = f.grant_id {
            state.audit.record(
                Record::new(Event::GrantUse)
                    .actor(self.stored.owner_id)
                    .subject(f.id)
                    .ip(self.outcome.ip)
                    .detail(serde_json::json!({ "grant_id": grant })),
            );
        }
        Ok(self.stored.file)
    }
}
