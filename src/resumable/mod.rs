//! Resumable uploads (tus 1.0.0) as coffer sees them, without HTTP: creation (name, length,
//! quota and the per-user limit), a PATCH's bytes staged durably as one chunk, the lock per
//! upload, the type check on the first bytes, the commit through the single-shot pipeline
//! (`ingest`), termination and expiry.
//!
//! Invariant: an upload's offset counts only durable bytes. A PATCH appends its bytes to the
//! upload's one growing chunk blob in place (the local filesystem, encryption off), or writes
//! them to a chunk blob of its own (S3; sealed under its own data key when encryption is on,
//! so no plaintext of an unfinished upload is ever at rest); it makes them durable, then
//! moves the offset and records the chunk in one transaction, while it holds the upload's
//! lock (a lease in the database, so it holds across nodes and expires with a dead node).
//! A growing chunk becomes the file's blob without a copy: the last PATCH reads it back
//! through the pipeline's checks and, when they store the bytes unchanged, links it under
//! the file's key. Bytes that are refused
//! (a checksum mismatch, an interrupted PATCH with a checksum, a body that would pass the
//! length) never reach a committed blob. Whatever ends an upload (the final commit, DELETE,
//! a refused type, expiry) removes its rows, queues its chunk blobs for deletion and releases
//! its quota in one transaction.

mod patch;

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};

use crate::blob::{BlobError, BlobKey, BlobStore};
use crate::crypto::Keyring;
use crate::crypto::read::{self, ReadError, Source};
use crate::events;
use crate::ids::{FileId, Timestamp};
use crate::ingest::policy::Rule;
use crate::ingest::safety::Checks;
use crate::ingest::{Ingest, IngestError, Running, Upload};
use crate::meta::files::FileObject;
use crate::meta::grants::Grant;
use crate::meta::resumable::{
    Chunk, Created, Creator, NewResumable, ResumableUpload, reservation_of,
};
use crate::meta::uploads::NewReservation;
use crate::meta::{MetaError, MetaStore};
use crate::removal;

pub(crate) use patch::{Checksum, ChecksumAlgorithm, Patch};

/// Why a resumable-upload request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResumableError {
    /// No such upload for this caller: unknown, someone else's, expired, terminated (404).
    #[error("no such upload")]
    NotFound,
    /// `Upload-Offset` is not the upload's offset (409).
    #[error("Upload-Offset {sent} is not the upload's offset {offset}")]
    OffsetMismatch { sent: u64, offset: u64 },
    /// The body would pass `Upload-Length` (413; nothing of it counts).
    #[error("the body would pass the upload's length")]
    PastLength,
    /// Another PATCH holds the upload (423).
    #[error("another request is writing to this upload")]
    Locked,
    /// The body does not match `Upload-Checksum` (460; nothing of it counts).
    #[error("the body does not match Upload-Checksum")]
    ChecksumMismatch,
    /// The owner has `uploads.max_pending_per_user` unfinished uploads (429).
    #[error("too many unfinished uploads")]
    TooManyPending,
    /// The pipeline refused it (name, type, size, quota, content safety, storage).
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

impl From<MetaError> for ResumableError {
    fn from(e: MetaError) -> Self {
        Self::Ingest(IngestError::Meta(e))
    }
}

impl From<BlobError> for ResumableError {
    fn from(e: BlobError) -> Self {
        Self::Ingest(IngestError::Blob(e))
    }
}

/// A creation request, as the wire parsed it.
#[derive(Debug, Clone)]
pub(crate) struct Creation {
    pub(crate) owner: crate::ids::UserId,
    pub(crate) client_ip: IpAddr,
    /// `Upload-Length`.
    pub(crate) length: u64,
    /// The raw `Upload-Metadata` header.
    pub(crate) metadata: String,
    /// The decoded `filename` value, unsanitised.
    pub(crate) filename: String,
    /// When the finished file expires (`expires_in` in the metadata, or the default).
    pub(crate) file_expires_at: Option<Timestamp>,
    /// The upload grant it is made with: its limits apply, it gives one of its uses, and
    /// every later request of the upload must present it.
    pub(crate) grant: Option<Grant>,
}

/// What a creation (or a PATCH) came to.
#[derive(Debug)]
pub(crate) enum Progress {
    /// Unfinished: the durable offset and the upload's expiry.
    Pending { offset: u64, expires_at: Timestamp },
    /// The last byte arrived and the file is stored; the upload's length.
    Committed(FileObject, u64),
}

/// The resumable-upload service. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Resumable {
    /// The single-shot pipeline, which commits a finished upload.
    pub(crate) ingest: Ingest,
    pub(crate) meta: MetaStore,
    pub(crate) blobs: BlobStore,
    pub(crate) keyring: std::sync::Arc<Keyring>,
    /// `uploads.resumable_ttl_secs`.
    pub(crate) ttl: Duration,
    /// `uploads.max_pending_per_user`.
    pub(crate) max_pending: u64,
    /// The checks of uploads in progress, carried from one PATCH to the next on this node.
    pub(crate) running: RunningCache,
}

/// The per-byte checks ([`Running`]) of unfinished uploads whose last PATCH this node took,
/// keyed by upload and by the offset they reached, so the next PATCH (on this node) carries
/// them on and the last one needs no read-back. Only a cache: a PATCH on another node, a
/// restart, or an eviction leaves the last PATCH to read the stored bytes back.
#[derive(Clone, Default)]
pub(crate) struct RunningCache(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<FileId, (u64, Running)>>>,
);

/// Uploads whose checks are kept (each holds hash states, at most ~200 KiB of a polyglot
/// check's window, what its image walker holds back (a header; up to 4 MiB of look-ahead for
/// a WebP with metadata), and the received bytes not yet matched to kept ones (at most 64 KiB
/// and a batch, `ingest/same.rs`)).
const RUNNING_KEPT: usize = 32;

impl RunningCache {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<FileId, (u64, Running)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The checks of `id` if they reached exactly `offset` (taken out: one PATCH at a time).
    pub(crate) fn take(&self, id: FileId, offset: u64) -> Option<Running> {
        match self.map().remove(&id) {
            Some((at, r)) if at == offset => Some(r),
            _ => None,
        }
    }

    /// Keep the checks of `id`, which reached `offset`.
    pub(crate) fn put(&self, id: FileId, offset: u64, r: Running) {
        let mut m = self.map();
        if m.len() >= RUNNING_KEPT
            && !m.contains_key(&id)
            && let Some(old) = m.keys().next().copied()
        {
            m.remove(&old);
        }
        m.insert(id, (offset, r));
    }

    fn forget(&self, id: FileId) {
        self.map().remove(&id);
    }
}

impl Resumable {
    fn expiry(&self, now: Timestamp) -> Timestamp {
        now.plus_secs(self.ttl.as_secs())
    }

    /// Create an upload. `Upload-Length: 0` commits the empty file at once.
    pub(crate) async fn create(&self, c: Creation) -> Result<(FileId, Progress), ResumableError> {
        let (name, rule) = match self.ingest.admit(&c.filename, c.grant.as_ref()) {
            Ok(admitted) => admitted,
            Err(e) => return Err(self.refused(&c, e).await),
        };
        let max = self.ingest.max_upload_bytes;
        let limit = c.grant.as_ref().map_or(max, |g| g.max_bytes.min(max));
        if c.length > limit {
            return Err(self.refused(&c, IngestError::TooLarge { limit }).await);
        }
        // Longer than the scanner takes: refused now, not after every byte was sent; unless
        // metadata stripping may make what is stored (and scanned) shorter than what is sent.
        let may_shrink = match &rule {
            Rule::Magic(mime) => Checks::for_type(&self.ingest.safety, mime).may_rewrite(),
            Rule::Text => false,
        };
        if let Some(limit) = self.ingest.safety.scan_limit()
            && c.length > limit
            && !may_shrink
        {
            return Err(self
                .refused(&c, IngestError::TooLargeToScan { limit })
                .await);
        }
        let id = FileId::new();
        if c.length == 0 {
            let file = self
                .commit_stream(&c, id, 0, futures_util::stream::empty())
                .await?;
            return Ok((id, Progress::Committed(file, 0)));
        }
        let now = Timestamp::now();
        let expires_at = self.expiry(now);
        let key = BlobKey::for_file(id, self.keyring.enabled());
        let created = self
            .meta
            .resumables()
            .create(NewResumable {
                id,
                owner: c.owner,
                length: c.length,
                metadata: c.metadata.clone(),
                filename: name,
                file_expires_at: c.file_expires_at,
                now,
                expires_at,
                max_pending: self.max_pending,
                reservation: NewReservation {
                    id: reservation_of(id),
                    owner: c.owner,
                    want: c.length,
                    exact: true,
                    quota: self.ingest.quota.limit(),
                    blob_key: key.as_str().to_owned(),
                    node: self.meta.node().to_owned(),
                    grant: c.grant.as_ref().map(|g| g.id),
                    now,
                },
            })
            .await?;
        match created {
            Created::Created => Ok((
                id,
                Progress::Pending {
                    offset: 0,
                    expires_at,
                },
            )),
            Created::TooMany => Err(ResumableError::TooManyPending),
            Created::QuotaExceeded => Err(self.refused(&c, IngestError::Quota).await),
            Created::GrantRefused => Err(IngestError::GrantRefused.into()),
        }
    }

    /// A creation refused before any byte: an `upload.rejected` event like any upload's
    /// refusal (those of the pipeline, at the last PATCH, record their own).
    async fn refused(&self, c: &Creation, e: IngestError) -> ResumableError {
        if let Some(reason) = e.rejection() {
            let name = crate::ingest::filename::sanitize(&c.filename);
            let grant = c.grant.as_ref().map(|g| g.id);
            events::record_rejection(&self.meta, c.owner, &name, reason, grant).await;
        }
        e.into()
    }

    /// The caller's unfinished upload (HEAD).
    pub(crate) async fn get(
        &self,
        id: FileId,
        creator: Creator,
    ) -> Result<ResumableUpload, ResumableError> {
        self.meta
            .resumables()
            .get(id, creator, Timestamp::now())
            .await?
            .ok_or(ResumableError::NotFound)
    }

    /// Terminate the caller's upload (DELETE): its bytes and its quota are released.
    pub(crate) async fn terminate(
        &self,
        id: FileId,
        creator: Creator,
    ) -> Result<(), ResumableError> {
        self.get(id, creator).await?;
        self.remove(id).await
    }

    /// End every unfinished upload made with a grant (it was revoked): bytes, rows and
    /// quota released.
    pub(crate) async fn end_grant(&self, grant: crate::ids::GrantId) -> Result<(), ResumableError> {
        for id in self.meta.resumables().by_grant(grant).await? {
            self.remove(id).await?;
        }
        Ok(())
    }

    /// Remove an upload and delete its staged chunks (queued first, so a failure here is
    /// finished by the sweeper).
    async fn remove(&self, id: FileId) -> Result<(), ResumableError> {
        self.running.forget(id);
        if self.meta.resumables().remove(id, Timestamp::now()).await? {
            self.purge_later();
        }
        Ok(())
    }

    /// Delete queued blobs off the request's path.
    fn purge_later(&self) {
        let (meta, blobs) = (self.meta.clone(), self.blobs.clone());
        tokio::spawn(async move {
            if let Err(e) = removal::purge_queued(&meta, &blobs).await {
                tracing::warn!(error = %e, "cannot delete staged chunks yet; the sweeper will");
            }
        });
    }

    /// Stream a finished upload's bytes through the single-shot pipeline and commit it as
    /// the file `id` (its quota reserved since creation, `length` bytes).
    async fn commit_stream<S>(
        &self,
        c: &Creation,
        id: FileId,
        length: u64,
        body: S,
    ) -> Result<FileObject, ResumableError>
    where
        S: Stream<Item = Result<Bytes, IngestError>> + Unpin,
    {
        let reservation = self.reservation_for(c, id, length).await?;
        let staged = self
            .ingest
            .stage_reserved(self.upload_of(c, length), id, reservation, None, body)
            .await?;
        Ok(staged.commit(&self.ingest).await?)
    }

    fn upload_of(&self, c: &Creation, length: u64) -> Upload {
        Upload {
            owner: c.owner,
            client_ip: c.client_ip,
            raw_name: c.filename.clone(),
            expires_at: c.file_expires_at,
            length_hint: Some(length),
            exact_length: true,
            grant: c.grant.clone(),
        }
    }

    /// The quota reservation of the file `id`: the upload's (held since creation), or for
    /// an empty upload a new one.
    async fn reservation_for(
        &self,
        c: &Creation,
        id: FileId,
        length: u64,
    ) -> Result<crate::ingest::quota::Reservation, ResumableError> {
        Ok(if length == 0 {
            let key = BlobKey::for_file(id, self.keyring.enabled());
            self.ingest
                .quota
                .reserve(
                    reservation_of(id),
                    c.owner,
                    0,
                    true,
                    &key,
                    c.grant.as_ref().map(|g| g.id),
                )
                .await
                .map_err(IngestError::from)?
        } else {
            self.ingest.quota.adopt(reservation_of(id), length)
        })
    }

    /// Commit a growing chunk that holds the whole upload as the file `id`: its bytes read
    /// back (decrypted when sealed) through the pipeline's checks (type, content safety,
    /// clamd, the grant's sha256, sha256), then the blob linked under the file's key. When the checks store other
    /// bytes (metadata stripped), the file is written from the read-back bytes instead.
    async fn commit_in_place(
        &self,
        c: &Creation,
        id: FileId,
        length: u64,
        staging: BlobKey,
        sealing: Option<crate::crypto::Sealing>,
        running: Option<Running>,
    ) -> Result<FileObject, ResumableError> {
        let mut reservation = self.reservation_for(c, id, length).await?;
        let file_key = BlobKey::for_file(id, sealing.is_some());
        // Checked as the bytes arrived (every PATCH on this node): nothing to read back.
        if let Some(r) = running
            && let Ok(Ok(checked)) = tokio::task::spawn_blocking(move || r.finish()).await
            && checked.size() == length
        {
            let link: Box<dyn crate::blob::BlobWriter> = Box::new(LinkWriter {
                blobs: self.blobs.clone(),
                from: staging.clone(),
                to: file_key.clone(),
            });
            match self
                .ingest
                .stage_checked(
                    self.upload_of(c, length),
                    id,
                    reservation,
                    (link, sealing.clone()),
                    checked,
                )
                .await?
            {
                Ok(staged) => return Ok(staged.commit(&self.ingest).await?),
                Err(r) => reservation = r,
            }
        }
        let link: Box<dyn crate::blob::BlobWriter> = Box::new(LinkWriter {
            blobs: self.blobs.clone(),
            from: staging.clone(),
            to: file_key,
        });
        let body = self
            .staged_bytes(id, &staging, length, sealing.as_ref())
            .await?;
        let staged = self
            .ingest
            .stage_reserved(
                self.upload_of(c, length),
                id,
                reservation,
                Some((link, sealing.clone())),
                body,
            )
            .await?;
        if staged.unchanged() && staged.size() == length {
            return Ok(staged.commit(&self.ingest).await?);
        }
        let reservation = staged.into_reservation();
        let body = self
            .staged_bytes(id, &staging, length, sealing.as_ref())
            .await?;
        let staged = self
            .ingest
            .stage_reserved(self.upload_of(c, length), id, reservation, None, body)
            .await?;
        Ok(staged.commit(&self.ingest).await?)
    }

    /// The plaintext of a whole growing chunk (`length` bytes; sealed under the upload's
    /// key and bound to its id, when `sealing`).
    async fn staged_bytes(
        &self,
        upload: FileId,
        key: &BlobKey,
        length: u64,
        sealing: Option<&crate::crypto::Sealing>,
    ) -> Result<BoxStream<'static, Result<Bytes, IngestError>>, ResumableError> {
        let src = Source {
            blob_key: key.as_str(),
            file: upload,
            size: length,
            sealing,
        };
        let s = read::read(&self.blobs, &self.keyring, &src, 0, length)
            .await
            .map_err(from_read)?;
        Ok(s.map(|r| r.map_err(from_read)).boxed())
    }

    /// Commit a finished upload: its chunks, in order and decrypted, through the pipeline;
    /// then its rows and chunks go. Any failure ends the upload (its quota went with the
    /// pipeline's reservation).
    async fn finish(
        &self,
        up: &ResumableUpload,
        client_ip: IpAddr,
        grant: Option<Grant>,
        running: Option<Running>,
    ) -> Result<FileObject, ResumableError> {
        // Committed already by an earlier last PATCH whose upload was not removed after it
        // (the removal failed): that file is the answer, and its blob is never written twice.
        let now = Timestamp::now();
        if let Some(f) = self
            .meta
            .files()
            .get_visible(up.id, Some(up.owner), now)
            .await?
        {
            self.remove(up.id).await?;
            return Ok(f.file);
        }
        let chunks = self.meta.resumables().chunks(up.id).await?;
        let c = Creation {
            owner: up.owner,
            client_ip,
            length: up.length,
            metadata: up.metadata.clone(),
            filename: up.filename.clone(),
            file_expires_at: up.file_expires_at,
            grant,
        };
        let in_place = match chunks.as_slice() {
            [ch] if ch.start == 0 && ch.len == up.length => {
                self.whole_growing_chunk(up.id, ch).await
            }
            _ => None,
        };
        let result = match in_place {
            Some(staging) => {
                let sealing = chunks.into_iter().next().and_then(|ch| ch.sealing);
                self.commit_in_place(&c, up.id, up.length, staging, sealing, running)
                    .await
            }
            None => {
                let body = chunk_bytes(self.blobs.clone(), self.keyring.clone(), up.id, chunks);
                self.commit_stream(&c, up.id, up.length, body).await
            }
        };
        // Committed or refused, the upload is over: rows out, chunks queued for deletion
        // (the reservation ended with the file's row, or was released by the pipeline). A
        // stored file is answered as stored even if that fails: the rows expire and are swept,
        // and a retry of the last PATCH finds the file (above).
        match (result, self.remove(up.id).await) {
            (Ok(file), Err(e)) => {
                tracing::warn!(error = %e, upload.id = %up.id, "a finished upload's rows could not be removed; they are swept when it expires");
                Ok(file)
            }
            (result, _) => result,
        }
    }
}

impl Resumable {
    /// The key of the upload's only chunk (the growing one, or a chunk of its own), when it
    /// can become the file's blob as it is: the store links blobs, the chunk is plain (and
    /// encryption off, so the file is stored plain), and it holds exactly the upload's bytes
    /// (nothing a failed PATCH left after them).
    async fn whole_growing_chunk(&self, upload: FileId, ch: &Chunk) -> Option<BlobKey> {
        if !self.blobs.can_link() {
            return None;
        }
        let key = BlobKey::parse(&ch.blob_key)?;
        let stored_len = match (&ch.sealing, self.keyring.enabled()) {
            // Sealed under the upload's key and bound to its id: only its growing chunk.
            (Some(_), true) if key == staging_key(upload) => {
                crate::crypto::segment::sealed_len(ch.len)
            }
            (None, false) if key.file_id().is_some() && !key.as_str().ends_with(".s") => ch.len,
            _ => return None,
        };
        match self.blobs.stat(&key).await {
            Ok(n) if n == stored_len => Some(key),
            _ => None,
        }
    }
}

/// Takes the stored bytes of a growing chunk that are already where they belong: counts
/// nothing, writes nothing, and at commit gives the chunk the file's key (a hard link; the
/// chunk's own name is deleted with the upload).
struct LinkWriter {
    blobs: BlobStore,
    from: BlobKey,
    to: BlobKey,
}

impl crate::blob::BlobWriter for LinkWriter {
    fn write<'a>(
        &'a mut self,
        _buf: &'a [u8],
    ) -> crate::blob::BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async { Ok(()) })
    }

    fn staging_id(&self) -> Option<String> {
        None
    }

    fn commit(self: Box<Self>) -> crate::blob::BoxFuture<'static, Result<(), BlobError>> {
        Box::pin(async move { self.blobs.link(&self.from, &self.to).await })
    }
}

/// The key of an upload's growing chunk when it is sealed: derived from the upload's id (its
/// segments are bound to the upload's id, the file's, not to this key's).
pub(crate) fn staging_key(upload: FileId) -> BlobKey {
    const MASK: u128 = 0x0000_0000_0000_0000_5354_4147_494e_4721;
    let id = FileId(uuid::Uuid::from_u128(upload.0.as_u128() ^ MASK));
    BlobKey::for_file(id, true)
}

/// The plaintext of an upload's chunks, in order.
fn chunk_bytes(
    blobs: BlobStore,
    keyring: std::sync::Arc<Keyring>,
    upload: FileId,
    chunks: Vec<Chunk>,
) -> BoxStream<'static, Result<Bytes, IngestError>> {
    futures_util::stream::iter(chunks)
        .then(move |c| open_chunk(blobs.clone(), keyring.clone(), upload, c))
        .try_flatten()
        .boxed()
}

/// The id a staged chunk's data key is bound to (its AAD when wrapped): the upload's for the
/// growing chunk, the chunk's own (named by its blob key) for a chunk of its own.
pub(crate) fn key_binding(upload: FileId, blob_key: &str) -> Option<FileId> {
    if blob_key == staging_key(upload).as_str() {
        return Some(upload);
    }
    BlobKey::parse(blob_key).and_then(|k| k.file_id())
}

/// One chunk's plaintext (decrypted and authenticated when sealed).
async fn open_chunk(
    blobs: BlobStore,
    keyring: std::sync::Arc<Keyring>,
    upload: FileId,
    c: Chunk,
) -> Result<BoxStream<'static, Result<Bytes, IngestError>>, IngestError> {
    let file = key_binding(upload, &c.blob_key).ok_or(IngestError::Blob(BlobError::Unsafe))?;
    let src = Source {
        blob_key: &c.blob_key,
        file,
        size: c.len,
        sealing: c.sealing.as_ref(),
    };
    let stream = read::read(&blobs, &keyring, &src, 0, c.len)
        .await
        .map_err(from_read)?;
    Ok(stream.map(|r| r.map_err(from_read)).boxed())
}

fn from_read(e: ReadError) -> IngestError {
    match e {
        ReadError::Blob(b) => IngestError::Blob(b),
        other => IngestError::Blob(BlobError::Io(std::io::Error::other(other.to_string()))),
    }
}

/// Remove expired uploads (rows, reservations; their chunks queued and deleted). Returns how
/// many.
pub(crate) async fn sweep_expired(meta: &MetaStore, blobs: &BlobStore) -> Result<usize, MetaError> {
    let now = Timestamp::now();
    let mut n = 0;
    loop {
        let batch = meta.resumables().expired(now, 256).await?;
        for id in &batch {
            if meta.resumables().remove(*id, now).await? {
                n += 1;
            }
        }
        if batch.len() < 256 {
            break;
        }
    }
    if n > 0
        && let Err(e) = removal::purge_queued(meta, blobs).await
    {
        tracing::warn!(error = %e, "cannot delete expired uploads' chunks yet");
    }
    Ok(n)
}
