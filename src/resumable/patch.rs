//! One PATCH: take the upload's lock, stream the body into the upload's staging (checksummed,
//! sealed when encryption is on), check the type once the first bytes are there, make the
//! bytes durable and move the offset, and commit the file when the last byte arrived.
//!
//! The staging is one of two kinds. Where the blob store can append in place (the local
//! filesystem) and nothing is sealed, every PATCH appends to one blob, the upload's growing
//! chunk, so each byte is written once: the last PATCH only reads it back through the checks
//! and gives it the file's name (a hard link). Otherwise (S3, encryption at rest) each PATCH
//! writes a chunk blob of its own, sealed under its own data key, and the last PATCH streams
//! them all through the pipeline into the file's blob.
//!
//! Invariant: the lock is given up on every exit (a guard, also when the task is dropped);
//! bytes that are not committed leave nothing: a chunk writer's drop discards its blob (and
//! its zero-byte reservation names what a crash left staged, for the sweeper); an appending
//! writer's drop cuts the growing chunk back to its durable length, and the next PATCH cuts
//! whatever a crash left past it before appending. The growing chunk is held by one writer
//! at a time (a lock on the blob itself, besides the upload's lease).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use sha1::Digest as _;
use tokio::sync::oneshot;

use super::{Progress, Resumable, ResumableError};
use crate::blob::{BlobKey, BlobWriter};
use crate::crypto::DataKey;
use crate::crypto::segment::Sealer;
use crate::crypto::segment::{self, SEGMENT};
use crate::ids::{FileId, Timestamp, UploadId, UserId};
use crate::ingest::policy::{SNIFF_LEN, UploadPolicy};
use crate::ingest::{IngestError, Running, filename};
use crate::meta::MetaStore;
use crate::meta::grants::Grant;
use crate::meta::resumable::{Append, Chunk, Creator, Grow, Locked, ResumableUpload};

/// `Upload-Checksum` algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChecksumAlgorithm {
    Sha1,
    Sha256,
}

/// A parsed `Upload-Checksum`.
#[derive(Debug, Clone)]
pub(crate) struct Checksum {
    pub(crate) algorithm: ChecksumAlgorithm,
    pub(crate) digest: Vec<u8>,
}

enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    fn new(a: ChecksumAlgorithm) -> Self {
        match a {
            ChecksumAlgorithm::Sha1 => Self::Sha1(sha1::Sha1::new()),
            ChecksumAlgorithm::Sha256 => Self::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Self::Sha1(h) => h.update(b),
            Self::Sha256(h) => sha2::Digest::update(h, b),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Self::Sha1(h) => h.finalize().to_vec(),
            Self::Sha256(h) => sha2::Digest::finalize(h).to_vec(),
        }
    }
}

/// A PATCH as the wire parsed it.
#[derive(Debug, Clone)]
pub(crate) struct Patch {
    pub(crate) id: FileId,
    pub(crate) owner: UserId,
    /// The upload grant presented (the one the upload was created with, or it is not the
    /// caller's upload): its limits and sha256 apply to the finished file.
    pub(crate) grant: Option<Grant>,
    pub(crate) client_ip: IpAddr,
    /// `Upload-Offset`.
    pub(crate) offset: u64,
    /// `Content-Length`, when sent.
    pub(crate) length_hint: Option<u64>,
    pub(crate) checksum: Option<Checksum>,
    /// Whether the durable bytes of a body broken off count (a PATCH: yes, the client resumes
    /// from the offset). A creation-with-upload's do not: its client may never have heard the
    /// upload's URL, so a broken body fails the creation and the upload is ended.
    pub(crate) keep_broken_off: bool,
}

impl Patch {
    /// Whose upload this may be.
    fn creator(&self) -> Creator {
        Creator {
            owner: self.owner,
            grant: self.grant.as_ref().map(|g| g.id),
        }
    }
}

/// How long a PATCH's lock lasts unless renewed. A node that dies holding it (`kill -9`, a
/// power cut) keeps its upload from the client at most this long: inside the retry delays of
/// stock tus clients (tus-js-client gives up after about 9 s by default).
const LOCK_LEASE: Duration = Duration::from_secs(6);
/// How often the holder renews its lock, whatever its body or its store is doing meanwhile.
const LOCK_RENEW: Duration = Duration::from_secs(2);

/// What the heartbeat found when it could not renew the lock.
const HELD: u8 = 0;
const TAKEN: u8 = 1;
const GONE: u8 = 2;

/// The upload's lock, renewed every [`LOCK_RENEW`] by a heartbeat task while the PATCH
/// runs: given up by [`LockGuard::release`] before the answer goes out (so the client's next
/// PATCH finds it free), or, should the task die first, when dropped. The heartbeat is
/// stopped, and its last renewal awaited, before the lock is given up, so a renewal never
/// lands after the unlock.
struct LockGuard {
    meta: MetaStore,
    id: FileId,
    holder: String,
    released: bool,
    heartbeat: Option<Heartbeat>,
    /// [`HELD`], or why the heartbeat stopped renewing.
    lost: Arc<AtomicU8>,
}

struct Heartbeat {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl LockGuard {
    fn new(meta: MetaStore, id: FileId, creator: Creator, holder: String) -> Self {
        let lost = Arc::new(AtomicU8::new(HELD));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(heartbeat(
            meta.clone(),
            id,
            creator,
            holder.clone(),
            lost.clone(),
            stopped,
        ));
        Self {
            meta,
            id,
            holder,
            released: false,
            heartbeat: Some(Heartbeat { stop, task }),
            lost,
        }
    }

    /// Whether the lock is still this PATCH's: another request took it over after a renewal
    /// failed (423), or the upload went (deleted, its grant revoked, expired: 404).
    fn check(&self) -> Result<(), ResumableError> {
        match self.lost.load(Ordering::Acquire) {
            HELD => Ok(()),
            TAKEN => Err(ResumableError::Locked),
            _ => Err(ResumableError::NotFound),
        }
    }

    /// Stop renewing, once the last renewal has landed.
    async fn stop_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            let _ = h.stop.send(());
            let _ = h.task.await;
        }
    }

    async fn release(mut self) {
        self.stop_heartbeat().await;
        if self.released {
            // Given up already, with the PATCH's last write.
            return;
        }
        self.released = true;
        let holder = std::mem::take(&mut self.holder);
        if let Err(e) = self.meta.resumables().unlock(self.id, holder).await {
            tracing::warn!(error = %e, upload.id = %self.id, "cannot release an upload's lock; it expires");
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let heartbeat = self.heartbeat.take();
        if self.released && heartbeat.is_none() {
            return;
        }
        let released = self.released;
        let (meta, id, holder) = (self.meta.clone(), self.id, std::mem::take(&mut self.holder));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(h) = heartbeat {
                    let _ = h.stop.send(());
                    let _ = h.task.await;
                }
                if released {
                    return;
                }
                if let Err(e) = meta.resumables().unlock(id, holder).await {
                    tracing::warn!(error = %e, upload.id = %id, "cannot release an upload's lock; it expires");
                }
            });
        }
    }
}

/// Renew the lock every [`LOCK_RENEW`] until told to stop; on losing it, say why and stop.
async fn heartbeat(
    meta: MetaStore,
    id: FileId,
    creator: Creator,
    holder: String,
    lost: Arc<AtomicU8>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(LOCK_RENEW) => {}
        }
        let now = Timestamp::now();
        let until = now.plus_secs(LOCK_LEASE.as_secs());
        match meta
            .resumables()
            .lock(id, creator, holder.clone(), now, until)
            .await
        {
            Ok(Locked::Held(_)) => {}
            Ok(Locked::Busy) => {
                lost.store(TAKEN, Ordering::Release);
                return;
            }
            Ok(Locked::Missing) => {
                lost.store(GONE, Ordering::Release);
                return;
            }
            // Tried again at the next beat; the lease may run out meanwhile.
            Err(e) => {
                tracing::warn!(error = %e, upload.id = %id, "cannot renew an upload's lock");
            }
        }
    }
}

impl Resumable {
    /// Apply a PATCH. Runs in a task of its own, so a client that goes away mid-body still
    /// has its durable bytes counted (or, with a checksum, none) and the lock given up.
    pub(crate) async fn patch<S>(&self, p: Patch, body: S) -> Result<Progress, ResumableError>
    where
        S: Stream<Item = Result<Bytes, IngestError>> + Send + Unpin + 'static,
    {
        let this = self.clone();
        tokio::spawn(async move {
            let (up, mut guard) = this.lock(&p).await?;
            let result = this.patch_locked(p, up, &mut guard, body).await;
            guard.release().await;
            result
        })
        .await
        .map_err(|e| {
            ResumableError::Ingest(IngestError::Blob(crate::blob::BlobError::Io(
                std::io::Error::other(e),
            )))
        })?
    }

    async fn lock(&self, p: &Patch) -> Result<(ResumableUpload, LockGuard), ResumableError> {
        let holder = uuid::Uuid::new_v4().to_string();
        let now = Timestamp::now();
        let until = now.plus_secs(LOCK_LEASE.as_secs());
        match self
            .meta
            .resumables()
            .lock(p.id, p.creator(), holder.clone(), now, until)
            .await?
        {
            Locked::Held(up) => Ok((
                up,
                LockGuard::new(self.meta.clone(), p.id, p.creator(), holder),
            )),
            Locked::Busy => Err(ResumableError::Locked),
            Locked::Missing => Err(ResumableError::NotFound),
        }
    }

    async fn patch_locked<S>(
        &self,
        p: Patch,
        up: ResumableUpload,
        guard: &mut LockGuard,
        mut body: S,
    ) -> Result<Progress, ResumableError>
    where
        S: Stream<Item = Result<Bytes, IngestError>> + Unpin,
    {
        if p.offset != up.offset {
            return Err(ResumableError::OffsetMismatch {
                sent: p.offset,
                offset: up.offset,
            });
        }
        let room = up.length - up.offset;
        if p.length_hint.is_some_and(|n| n > room) {
            return Err(ResumableError::PastLength);
        }
        let mut chunk = match self.open_in_place(&up).await? {
            Some(c) => c,
            None => self.open_chunk(&up).await?,
        };
        chunk.hasher = p.checksum.as_ref().map(|c| Hasher::new(c.algorithm));
        // The upload's checks, carried on from the previous PATCH on this node (or started
        // with the first bytes), when its bytes are staged in place.
        if chunk.grow {
            chunk.running = self.running.take(up.id, up.offset);
            if up.offset == 0 {
                let upload = crate::ingest::Upload {
                    owner: up.owner,
                    client_ip: p.client_ip,
                    raw_name: up.filename.clone(),
                    expires_at: up.file_expires_at,
                    length_hint: Some(up.length),
                    exact_length: true,
                    grant: p.grant.clone(),
                };
                chunk.start_running = Some(StartRunning {
                    ingest: self.ingest.clone(),
                    upload,
                    need: (SNIFF_LEN as u64).min(up.length),
                });
            }
        }
        let need = (SNIFF_LEN as u64).min(up.length);
        let mut head = BytesMut::new();
        let mut staged: Option<String> = None;
        let mut aborted = None;
        loop {
            let bytes = match body.next().await {
                None => break,
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    aborted = Some(e);
                    break;
                }
            };
            if chunk.len + bytes.len() as u64 > room {
                return Err(ResumableError::PastLength);
            }
            let before = up.offset + chunk.len;
            if before < need {
                let take = usize::try_from(need - before)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                head.extend_from_slice(bytes.get(..take).unwrap_or(&bytes));
            }
            chunk.write(bytes).await?;
            // What the writer staged outside this process (an S3 multipart upload), recorded
            // as soon as it exists, so that a sweeper can abort it if this node dies.
            let staging = chunk.writer.staging_id();
            if staging.is_some() && staging != staged {
                staged.clone_from(&staging);
                if let (Some(s), Some(r)) = (staging, &mut chunk.reservation) {
                    r.staged(s).await?;
                }
            }
            guard.check()?;
            if let Some(r) = &mut chunk.reservation {
                r.touch().await;
            }
        }
        if let Some(e) = aborted {
            // Bytes that cannot be verified never count; without a checksum, what arrived is
            // kept (made durable below), unless the caller cannot resume from it.
            if p.checksum.is_some() || chunk.len == 0 || !p.keep_broken_off {
                return Err(e.into());
            }
        }
        chunk.drain().await?;
        let running = chunk.running.take();
        if let (Some(h), Some(c)) = (chunk.hasher.take(), &p.checksum)
            && h.finish() != c.digest
        {
            return Err(ResumableError::ChecksumMismatch);
        }
        let new_offset = up.offset + chunk.len;
        if up.offset < need && new_offset >= need {
            self.check_type(&up, head).await?;
        }
        if chunk.len > 0 {
            // An unfinished upload's PATCH gives its lock up with its last write; the last
            // one keeps it until the file is committed.
            let unlock = new_offset < up.length;
            if unlock {
                // No renewal may land after the append's unlock.
                guard.stop_heartbeat().await;
            }
            guard.check()?;
            self.append(&up, guard, chunk, unlock).await?;
            guard.released = unlock;
        }
        let running = match running {
            Some(r) if new_offset < up.length => {
                self.running.put(up.id, new_offset, r);
                None
            }
            other => other,
        };
        if new_offset == up.length {
            let done = ResumableUpload {
                offset: new_offset,
                ..up
            };
            let file = self
                .finish(&done, p.client_ip, p.grant.clone(), running)
                .await?;
            return Ok(Progress::Committed(file, done.length));
        }
        Ok(Progress::Pending {
            offset: new_offset,
            expires_at: self.expiry(Timestamp::now()),
        })
    }

    /// The first bytes decide the type (API.md: a mismatch is 415 and ends the upload).
    async fn check_type(&self, up: &ResumableUpload, head: BytesMut) -> Result<(), ResumableError> {
        let mut all = BytesMut::new();
        if up.offset > 0 {
            // The earlier chunks' bytes (fewer than SNIFF_LEN), read back.
            let chunks = self.meta.resumables().chunks(up.id).await?;
            let mut s = super::chunk_bytes(self.blobs.clone(), self.keyring.clone(), up.id, chunks);
            while let Some(b) = s.next().await {
                all.extend_from_slice(&b?);
            }
        }
        all.extend_from_slice(&head);
        let name = filename::sanitize(&up.filename);
        let decided = self
            .ingest
            .policy
            .rule_for(filename::extension(&name).as_deref())
            .and_then(|rule| UploadPolicy::decide(rule, &all));
        if let Err(refusal) = decided {
            self.remove(up.id).await?;
            crate::events::record_rejection(
                &self.meta,
                up.owner,
                &name,
                crate::events::RejectReason::Type,
                up.grant,
            )
            .await;
            return Err(IngestError::Refused(refusal).into());
        }
        Ok(())
    }

    /// The writer that appends to the upload's growing chunk, when its bytes can be staged
    /// in place (the store appends) and every durable byte so far is in that chunk (the
    /// first PATCH starts it). Sealed (encryption on), the growing chunk holds whole 64 KiB
    /// segments only, sealed under the upload's data key and bound to the upload's id (the
    /// file's), so it can become the file's blob; a partial segment at the end of a PATCH is
    /// staged as a tail (a chunk of its own, sealed under its own key) and sealed into the
    /// growing chunk by the next PATCH.
    async fn open_in_place(
        &self,
        up: &ResumableUpload,
    ) -> Result<Option<ChunkWriter>, ResumableError> {
        if self.keyring.enabled() {
            return self.open_sealed_in_place(up).await;
        }
        let key = if up.offset == 0 {
            BlobKey::for_file(FileId::new(), false)
        } else {
            let chunks = self.meta.resumables().chunks(up.id).await?;
            match chunks.as_slice() {
                [c] if c.start == 0 && c.len == up.offset && c.sealing.is_none() => {
                    match BlobKey::parse(&c.blob_key) {
                        Some(k) if k.file_id().is_some() && !k.as_str().ends_with(".s") => k,
                        _ => return Ok(None),
                    }
                }
                _ => return Ok(None),
            }
        };
        let Some(writer) = self.append_to(&key, up.offset).await? else {
            return Ok(None);
        };
        Ok(Some(ChunkWriter::in_place(key, writer, None)))
    }

    async fn append_to(
        &self,
        key: &BlobKey,
        at: u64,
    ) -> Result<Option<Box<dyn BlobWriter>>, ResumableError> {
        match self.blobs.append(key, at).await {
            Ok(w) => Ok(w),
            Err(crate::blob::BlobError::Busy) => Err(ResumableError::Locked),
            Err(e) => Err(e.into()),
        }
    }

    async fn open_sealed_in_place(
        &self,
        up: &ResumableUpload,
    ) -> Result<Option<ChunkWriter>, ResumableError> {
        let key = super::staging_key(up.id);
        let chunks = if up.offset == 0 {
            Vec::new()
        } else {
            self.meta.resumables().chunks(up.id).await?
        };
        let seg = SEGMENT as u64;
        let main_ok = |m: &Chunk| {
            m.blob_key == key.as_str()
                && m.start == 0
                && m.len.is_multiple_of(seg)
                && m.sealing.is_some()
        };
        let tail_ok = |t: &Chunk, at: u64| {
            t.blob_key != key.as_str() && t.start == at && t.len < seg && t.sealing.is_some()
        };
        let (main, tail) = match chunks.as_slice() {
            [] => (None, None),
            [m] if main_ok(m) => (Some(m), None),
            [t] if tail_ok(t, 0) => (None, Some(t)),
            [m, t] if main_ok(m) && tail_ok(t, m.len) => (Some(m), Some(t)),
            _ => return Ok(None),
        };
        let main_len = main.map_or(0, |m| m.len);
        if main_len + tail.map_or(0, |t| t.len) != up.offset {
            return Ok(None);
        }
        let (data_key, sealing) = match main.and_then(|m| m.sealing.clone()) {
            Some(sealing) => {
                let k = self.keyring.unwrap(up.id, &sealing).map_err(|e| {
                    IngestError::Blob(crate::blob::BlobError::Io(std::io::Error::other(
                        e.to_string(),
                    )))
                })?;
                (k, sealing)
            }
            None => {
                let k = DataKey::generate();
                let sealing = self.keyring.wrap(up.id, &k).ok_or_else(|| {
                    IngestError::Blob(crate::blob::BlobError::Io(std::io::Error::other(
                        "cannot wrap an upload's data key",
                    )))
                })?;
                (k, sealing)
            }
        };
        let segments = main_len / seg;
        let at = if main.is_some() {
            segment::whole_segments_len(segments)
        } else {
            0
        };
        let Some(writer) = self.append_to(&key, at).await? else {
            return Ok(None);
        };
        let sealer = if main.is_some() {
            Sealer::resume(&data_key, up.id, segments)
        } else {
            Sealer::new(&data_key, up.id)
        };
        let mut sealer = sealer.map_err(IngestError::from)?;
        let mut w = ChunkWriter::in_place(key, writer, Some(sealing));
        // The staged tail's plaintext goes first (less than a segment: sealed nothing yet
        // but, for a new chunk, the header).
        if let Some(t) = tail {
            let mut plain = BytesMut::new();
            let mut s = super::chunk_bytes(
                self.blobs.clone(),
                self.keyring.clone(),
                up.id,
                vec![t.clone()],
            );
            while let Some(b) = s.next().await {
                plain.extend_from_slice(&b?);
            }
            let out = sealer.update(&plain).map_err(IngestError::from)?;
            w.writer.write(&out).await?;
            w.old_tail = Some(t.start);
            w.tail_len = plain.len() as u64;
        }
        w.sealer = Some(sealer);
        w.main_len = main_len;
        Ok(Some(w))
    }

    async fn open_chunk(&self, up: &ResumableUpload) -> Result<ChunkWriter, ResumableError> {
        let id = FileId::new();
        let sealed = self.keyring.enabled();
        let key = BlobKey::for_file(id, sealed);
        let data_key = sealed.then(DataKey::generate);
        let sealer = data_key
            .as_ref()
            .map(|k| Sealer::new(k, id))
            .transpose()
            .map_err(IngestError::from)?;
        // Zero bytes (the upload's reservation holds its quota): it names the chunk, so that
        // a sweeper can abort what a dead node staged.
        let reservation = self
            .ingest
            .quota
            .reserve(UploadId::new(), up.owner, 0, true, &key, None)
            .await
            .map_err(IngestError::from)?;
        let writer = self.blobs.put(&key).await?;
        Ok(ChunkWriter {
            id,
            key,
            writer,
            sealer,
            data_key,
            hasher: None,
            pending: Vec::new(),
            pending_len: 0,
            len: 0,
            reservation: Some(reservation),
            grow: false,
            main_sealing: None,
            main_len: 0,
            old_tail: None,
            tail_len: 0,
            running: None,
            start_running: None,
            busy: None,
        })
    }

    async fn append(
        &self,
        up: &ResumableUpload,
        guard: &LockGuard,
        chunk: ChunkWriter,
        unlock: bool,
    ) -> Result<(), ResumableError> {
        let start = up.offset;
        let last = up.offset + chunk.len == up.length;
        let c = chunk.commit(&self.keyring, last).await?;
        // A partial segment after the growing chunk's whole ones: staged as the new tail.
        let mut tail = None;
        if let Some(partial) = c.partial.filter(|p| !p.is_empty()) {
            let mut t = self.open_chunk(up).await?;
            let n = partial.len() as u64;
            t.write(partial.freeze()).await?;
            let tc = t.commit(&self.keyring, false).await?;
            tail = Some((
                Chunk {
                    start: c.main_len + c.grow_by,
                    len: n,
                    blob_key: tc.key.as_str().to_owned(),
                    sealing: tc.sealing,
                },
                tc.reservation,
            ));
        }
        let (tail, tail_reservation) = match tail {
            Some((ch, r)) => (Some(ch), r),
            None => (None, None),
        };
        let reservation = c.reservation.or(tail_reservation);
        let own = (!c.grow).then(|| Chunk {
            start,
            len: c.len,
            blob_key: c.key.as_str().to_owned(),
            sealing: c.sealing.clone(),
        });
        let grow = c.grow.then(|| Grow {
            blob_key: c.key.as_str().to_owned(),
            by: c.grow_by,
            sealing: c.sealing.clone(),
        });
        let drop_tail = c.old_tail;
        let now = Timestamp::now();
        let appended = self
            .meta
            .resumables()
            .append(Append {
                id: up.id,
                holder: guard.holder.clone(),
                start,
                added: c.len,
                chunk: own,
                grow,
                drop_tail,
                tail: tail.clone(),
                chunk_reservation: reservation.as_ref().map(|r| r.id()),
                unlock,
                now,
                expires_at: self.expiry(now),
            })
            .await;
        // Whether the growing chunk goes too: it holds earlier PATCHes' durable bytes, so only
        // when no row will ever name it: the upload is gone (its removal queued the chunk only
        // if it had a row, and a first PATCH's had none), or this was the first PATCH of a
        // plain one (a fresh key the next PATCH will not reuse). Otherwise what this PATCH
        // wrote past the durable bytes is cut off by the next one.
        let (ok, discard_growing) = match appended {
            Ok(true) => {
                if let Some(r) = reservation {
                    r.settle();
                }
                if drop_tail.is_some() {
                    self.purge_later();
                }
                return Ok(());
            }
            // Not appended: the lock was lost (423, the upload lives on), or the upload went
            // meanwhile (deleted, its grant revoked, expired: 404, as the next request sees).
            Ok(false) => {
                let creator = Creator {
                    owner: up.owner,
                    grant: up.grant,
                };
                match self.meta.resumables().get(up.id, creator, now).await {
                    Ok(Some(_)) => (
                        Err(ResumableError::Locked),
                        start == 0 && c.sealing.is_none(),
                    ),
                    Ok(None) => (Err(ResumableError::NotFound), true),
                    Err(e) => (Err(e.into()), false),
                }
            }
            Err(e) => (Err(e.into()), false),
        };
        if !c.grow || discard_growing {
            let _ = self.blobs.delete(&c.key).await;
        }
        if let Some(t) = &tail
            && let Some(k) = BlobKey::parse(&t.blob_key)
        {
            let _ = self.blobs.delete(&k).await;
        }
        ok
    }
}

/// A PATCH's chunk being written.
struct ChunkWriter {
    id: FileId,
    key: BlobKey,
    writer: Box<dyn BlobWriter>,
    sealer: Option<Sealer>,
    data_key: Option<DataKey>,
    /// The `Upload-Checksum` digest being computed.
    hasher: Option<Hasher>,
    /// Received bytes not yet hashed, sealed and written.
    pending: Vec<Bytes>,
    pending_len: usize,
    /// Plaintext bytes so far (this PATCH's).
    len: u64,
    /// A chunk of its own names its blob in a zero-byte reservation; the growing chunk has
    /// none (its row holds it from its first durable byte on).
    reservation: Option<crate::ingest::quota::Reservation>,
    /// Whether this is the growing chunk (appended in place).
    grow: bool,
    /// The growing chunk's sealing (under the upload's data key), when sealed.
    main_sealing: Option<crate::crypto::Sealing>,
    /// The growing chunk's plaintext bytes before this PATCH.
    main_len: u64,
    /// The staged tail this PATCH sealed into the growing chunk (its start), and its length.
    old_tail: Option<u64>,
    tail_len: u64,
    /// The upload's checks over its bytes so far (staged in place only).
    running: Option<Running>,
    /// How to start them with the first bytes (the first PATCH).
    start_running: Option<StartRunning>,
    /// The batch being processed on the blocking pool.
    busy: Option<tokio::task::JoinHandle<Result<Processed, crate::crypto::CryptoError>>>,
}

/// A processed batch: the per-byte state back, and the bytes to write.
type Processed = (Option<Hasher>, Option<Sealer>, Option<Running>, Vec<Bytes>);

/// What starts an upload's [`Running`] checks once its first bytes are there.
struct StartRunning {
    ingest: crate::ingest::Ingest,
    upload: crate::ingest::Upload,
    /// The bytes they need to decide the type.
    need: u64,
}

/// A chunk made durable.
struct Committed {
    key: BlobKey,
    /// This PATCH's bytes.
    len: u64,
    sealing: Option<crate::crypto::Sealing>,
    reservation: Option<crate::ingest::quota::Reservation>,
    grow: bool,
    /// The growing chunk's plaintext bytes before, and how many it gained.
    main_len: u64,
    grow_by: u64,
    /// The plaintext of a partial last segment, not stored in the growing chunk.
    partial: Option<BytesMut>,
    old_tail: Option<u64>,
}

/// Bytes hashed and sealed at once, on the blocking pool (as the single-shot pipeline does:
/// async threads never do per-byte work).
const BATCH: usize = 256 * 1024;

impl ChunkWriter {
    fn in_place(
        key: BlobKey,
        writer: Box<dyn BlobWriter>,
        main_sealing: Option<crate::crypto::Sealing>,
    ) -> Self {
        Self {
            id: FileId::new(),
            key,
            writer,
            sealer: None,
            data_key: None,
            hasher: None,
            pending: Vec::new(),
            pending_len: 0,
            len: 0,
            reservation: None,
            grow: true,
            main_sealing,
            main_len: 0,
            old_tail: None,
            tail_len: 0,
            running: None,
            start_running: None,
            busy: None,
        }
    }

    async fn write(&mut self, bytes: Bytes) -> Result<(), ResumableError> {
        self.len += bytes.len() as u64;
        self.pending_len += bytes.len();
        self.pending.push(bytes);
        if self.pending_len >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hash, check and seal the pending bytes on the blocking pool, while the next ones
    /// arrive (one batch in flight, as the single-shot pipeline does); the batch before is
    /// written first.
    async fn flush(&mut self) -> Result<(), ResumableError> {
        self.settle().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        if let Some(start) = self.start_running.take() {
            // The first flush of the upload's first bytes: enough of them to type it?
            let mut head = BytesMut::new();
            for b in &batch {
                if head.len() as u64 >= start.need {
                    break;
                }
                head.extend_from_slice(b);
            }
            if head.len() as u64 >= start.need {
                self.running = start.ingest.running(&start.upload, &head);
            }
        }
        if self.hasher.is_none() && self.sealer.is_none() && self.running.is_none() {
            // Nothing to compute: no hand-off to the blocking pool.
            for b in &batch {
                self.writer.write(b).await?;
            }
            return Ok(());
        }
        let (mut hasher, mut sealer) = (self.hasher.take(), self.sealer.take());
        let mut running = self.running.take();
        self.busy = Some(tokio::task::spawn_blocking(move || {
            // A refusal found here is found again (and answered) when the last PATCH reads
            // the bytes back: the checks just stop being carried.
            if let Some(r) = &mut running
                && r.update(&batch).is_err()
            {
                running = None;
            }
            let mut out = Vec::with_capacity(batch.len());
            for b in batch {
                if let Some(h) = &mut hasher {
                    h.update(&b);
                }
                match &mut sealer {
                    Some(s) => out.push(Bytes::from(s.update(&b)?)),
                    None => out.push(b),
                }
            }
            Ok::<_, crate::crypto::CryptoError>((hasher, sealer, running, out))
        }));
        Ok(())
    }

    /// The batch in flight done: its state back, its bytes written.
    async fn settle(&mut self) -> Result<(), ResumableError> {
        let Some(busy) = self.busy.take() else {
            return Ok(());
        };
        let (hasher, sealer, running, out) = busy
            .await
            .map_err(|e| IngestError::Blob(crate::blob::BlobError::Io(std::io::Error::other(e))))?
            .map_err(IngestError::from)?;
        (self.hasher, self.sealer, self.running) = (hasher, sealer, running);
        for b in &out {
            self.writer.write(b).await?;
        }
        Ok(())
    }

    /// Every byte received so far processed and handed to the writer.
    async fn drain(&mut self) -> Result<(), ResumableError> {
        self.flush().await?;
        self.settle().await
    }

    /// Make the bytes durable. A chunk of its own is sealed to its end; the growing chunk
    /// gets its whole segments (the last one too when `last`), and hands back the plaintext
    /// of a partial one.
    async fn commit(
        mut self,
        keyring: &crate::crypto::Keyring,
        last: bool,
    ) -> Result<Committed, ResumableError> {
        self.drain().await?;
        let mut partial = None;
        let mut grow_by = self.len;
        let sealing = match (self.sealer.take(), &self.data_key) {
            (Some(s), Some(k)) => {
                let tail = s.finish().map_err(IngestError::from)?;
                self.writer.write(&tail).await?;
                Some(keyring.wrap(self.id, k).ok_or_else(|| {
                    IngestError::Blob(crate::blob::BlobError::Io(std::io::Error::other(
                        "cannot wrap a chunk's data key",
                    )))
                })?)
            }
            (Some(mut s), None) => {
                // The growing chunk, sealed under the upload's key.
                let whole_before = self.main_len;
                if last {
                    let out = s.finish().map_err(IngestError::from)?;
                    self.writer.write(&out).await?;
                    // Everything after the whole segments it had: the tail and these bytes.
                    grow_by = self.tail_len + self.len;
                } else {
                    let (out, rest) = s.seal_whole().map_err(IngestError::from)?;
                    self.writer.write(&out).await?;
                    grow_by = s.segments() * SEGMENT as u64 - whole_before;
                    partial = Some(rest);
                }
                self.main_sealing.clone()
            }
            _ => None,
        };
        let writes_nothing = self.grow && self.main_len == 0 && grow_by == 0;
        if writes_nothing {
            // No whole segment yet: the growing chunk is not started (dropping the writer
            // removes what it began).
            drop(self.writer);
        } else {
            self.writer.commit().await?;
        }
        Ok(Committed {
            key: self.key,
            len: self.len,
            sealing,
            reservation: self.reservation,
            grow: self.grow,
            main_len: self.main_len,
            grow_by,
            partial,
            old_tail: self.old_tail,
        })
    }
}
