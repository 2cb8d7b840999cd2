//! The S3-compatible backend (Garage, MinIO, AWS S3), over `object_store`'s S3 client: blob
//! `k` is the object `{prefix}blobs/{k}` in one bucket.
//!
//! Invariant: a blob becomes visible whole or not at all, at `commit`: one PUT for a blob of
//! at most [`PART_SIZE`] bytes, else the completion of a multipart upload whose parts went up
//! while the bytes arrived. A writer dropped without `commit` aborts its multipart upload;
//! one lost to a crash is aborted by the id it exposed ([`BlobWriter::staging_id`]). Memory per
//! writer is bounded by `(PARTS_IN_FLIGHT + 1) * PART_SIZE`, whatever the blob's size. No call
//! waits on the store past its deadline: a store that is down, unreachable or slow becomes
//! [`BlobError::Unavailable`] within seconds, never a hang and never a 500.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::HttpError;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt as _,
    PutPayload, RetryConfig,
};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::task::JoinHandle;

use super::{
    BlobBackend, BlobError, BlobKey, BlobWriter, BoxFuture, ByteStream, Inventory, StoredBlob,
};

/// Blobs up to this size go up in one PUT at commit; larger ones as a multipart upload of
/// parts of exactly this size (the last one smaller): S3's smallest part. Throughput comes
/// from parts in flight, not from part size, and smaller parts buy more of them per MiB held.
/// S3 allows 10,000 parts, so an object holds at most [`MAX_OBJECT_BYTES`].
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// The largest object a multipart upload of [`PART_SIZE`] parts can make (48.8 GiB).
pub const MAX_OBJECT_BYTES: u64 = 10_000 * PART_SIZE as u64;
/// Parts one writer uploads at once while the next one fills, so a writer holds at most
/// `(PARTS_IN_FLIGHT + 1) * PART_SIZE` = 20 MiB (its buffers, reused from part to part, for
/// as long as it writes; see [`PartBuf`]). Measured with `scripts/bench` (release, 1 GiB into
/// Garage: 3 nodes, replication 3, 2 cores, Garage's own PUT 124-137 MB/s): x 2 stored 0.62x
/// of Garage's PUT; x 3 0.69-0.70x with the whole process at 45.3-47.6 MiB at its peak; x 4
/// 0.70x at 51.1 MiB, past the 48 MiB budget.
pub const PARTS_IN_FLIGHT: usize = 3;
/// Establishing a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests without a body to send (HEAD, DELETE, a list page, create/complete/abort of a
/// multipart upload), retries included; also until the first byte of a ranged GET.
const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// `/readyz` answers quickly, whatever the store does.
const READY_DEADLINE: Duration = Duration::from_secs(2);
/// A request carrying bytes (a PUT, a part) gets [`CALL_DEADLINE`] plus one second per
/// this many bytes: a store must take at least 1 MiB/s.
const MIN_BYTES_PER_SEC: u64 = 1024 * 1024;
/// The connection is stalled: no response this long after a request started (its body sent
/// included), or no body bytes this long between two reads. Per read once the body flows, so
/// a large download is never cut for its length (and a slow reader never trips it: the clock
/// runs only while a read waits).
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle pooled connections are dropped before a store's own keep-alive cut-off.
const POOL_IDLE: Duration = Duration::from_secs(20);

/// Where and how to reach the bucket. Built from `[s3]` and the credentials where stores are
/// opened; this module reads no configuration or environment itself.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `http://host:port` or `https://host`.
    pub endpoint: String,
    /// The region requests are signed for (Garage: its `s3_region`).
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Prepended to every key; a `/` is added when it does not end in one.
    pub prefix: String,
    /// Path-style URLs (`endpoint/bucket/key`) rather than virtual-hosted ones
    /// (`bucket.endpoint/key`): what Garage and MinIO answer without DNS set up for buckets.
    pub force_path_style: bool,
    /// Access key id.
    pub access_key_id: SecretString,
    /// Secret access key.
    pub secret_access_key: SecretString,
}

/// The S3 backend. Cheap to clone.
#[derive(Debug, Clone)]
pub struct S3Store {
    s3: AmazonS3,
    /// `""` or ending in `/`.
    prefix: std::sync::Arc<str>,
}

impl S3Store {
    /// Build the client. Nothing is sent yet: an unreachable store shows in `ready` and in
    /// the first request, not here.
    pub fn open(settings: &S3Settings) -> Result<Self, BlobError> {
        let plain_http = settings.endpoint.starts_with("http://");
        let client = ClientOptions::new()
            .with_allow_http(plain_http)
            .with_connect_timeout(CONNECT_TIMEOUT)
            // The default total timeout (30 s) would cut any download longer than that; the
            // stall timeout and our per-call deadlines bound everything instead.
            .with_timeout_disabled()
            .with_read_timeout(STALL_TIMEOUT)
            .with_pool_idle_timeout(POOL_IDLE);
        // The default retries for up to 3 minutes: a request would hang that long while the
        // store is down. A blip is retried; an outage is answered (503) within seconds.
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(3),
        };
        let s3 = AmazonS3Builder::new()
            .with_endpoint(&settings.endpoint)
            .with_region(&settings.region)
            .with_bucket_name(&settings.bucket)
            .with_access_key_id(settings.access_key_id.expose_secret())
            .with_secret_access_key(settings.secret_access_key.expose_secret())
            .with_virtual_hosted_style_request(!settings.force_path_style)
            .with_allow_http(plain_http)
            // Over TLS the body's integrity is TLS's, as AWS's own SDKs assume: no SHA-256 of
            // every part computed on an async thread (and again by the store) for the
            // signature. Over plain HTTP the signature keeps covering the body.
            .with_unsigned_payload(!plain_http)
            .with_client_options(client)
            .with_retry(retry)
            // One DeleteObject per blob: the bulk call needs Content-MD5 and is not
            // implemented by every S3-compatible store.
            .with_disable_bulk_delete(true)
            .build()
            .map_err(|e| BlobError::Io(std::io::Error::other(e)))?;
        Ok(Self {
            s3,
            prefix: prefix_with_slash(&settings.prefix).into(),
        })
    }

    fn path(&self, key: &BlobKey) -> Path {
        Path::from(format!("{}blobs/{key}", self.prefix))
    }

    /// `{prefix}blobs`, the parent of every blob.
    fn blobs_dir(&self) -> Path {
        Path::from(format!("{}blobs", self.prefix))
    }
}

/// `""` stays empty; anything else ends in exactly one added `/` (the contract).
fn prefix_with_slash(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_owned()
    } else {
        format!("{prefix}/")
    }
}

/// The deadline of a request that carries `len` bytes.
fn body_deadline(len: usize) -> Duration {
    CALL_DEADLINE + Duration::from_secs(len as u64 / MIN_BYTES_PER_SEC)
}

/// Run one call against the store within `limit`, classifying its failure.
async fn bounded<T>(
    what: &'static str,
    limit: Duration,
    call: impl Future<Output = object_store::Result<T>>,
) -> Result<T, BlobError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(|e| classify(what, e)),
        Err(_) => Err(unavailable(
            what,
            format!("no answer within {} s", limit.as_secs()),
        )),
    }
}

fn unavailable(what: &str, cause: String) -> BlobError {
    // Logged here, where the cause is known: the client only learns to retry.
    tracing::warn!(operation = what, error = %cause, "object store unavailable");
    BlobError::Unavailable(format!("{what}: {cause}"))
}

/// Map a store error by meaning: missing object, a store that cannot answer now (transport
/// failures, timeouts, 5xx, 429), or anything else (an I/O error: a 500 for the client, with
/// the cause in the log).
fn classify(what: &'static str, e: object_store::Error) -> BlobError {
    match e {
        object_store::Error::NotFound { .. } => BlobError::NotFound,
        object_store::Error::Generic { .. } if is_transient(&e) => unavailable(what, e.to_string()),
        other => BlobError::Io(std::io::Error::other(format!("{what}: {other}"))),
    }
}

/// Whether the cause chain holds a transport failure or a status that means "not now".
fn is_transient(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        // Any failure of the transport is "the store is not there now", whatever its kind:
        // besides connect, request, timeout, interrupted and decode (a body cut off by a node
        // going away), `Unknown` covers a pooled connection the store closed as the request
        // went out (seen as a 500 for a CreateMultipartUpload while Garage refused connections).
        if err.downcast_ref::<HttpError>().is_some() {
            return true;
        }
        // object_store keeps its status-bearing error type private; its message is stable
        // ("Server returned non-2xx status code: 503 Service Unavailable: ...").
        if let Some(status) = status_in(&err.to_string()) {
            return status >= 500 || status == 429 || status == 408;
        }
        cur = err.source();
    }
    false
}

/// The HTTP status named in an object_store request error's message.
fn status_in(message: &str) -> Option<u16> {
    let (_, rest) = message.split_once("status code: ")?;
    rest.get(..3)?.parse().ok()
}

impl BlobBackend for S3Store {
    fn put(&self, key: &BlobKey) -> BoxFuture<'_, Result<Box<dyn BlobWriter>, BlobError>> {
        let writer = S3Writer {
            store: self.clone(),
            path: self.path(key),
            buf: Vec::new(),
            // The buffer filling now is the writer's first.
            spare: Arc::new(Mutex::new(Spare {
                free: Vec::new(),
                live: 1,
            })),
            upload: None,
            parts: Vec::new(),
            inflight: VecDeque::new(),
            written: 0,
            done: false,
        };
        Box::pin(async move { Ok(Box::new(writer) as Box<dyn BlobWriter>) })
    }

    fn get_range(
        &self,
        key: &BlobKey,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'_, Result<ByteStream, BlobError>> {
        let path = self.path(key);
        Box::pin(async move {
            if len == 0 {
                // No ranged GET can ask for nothing; the blob must exist all the same.
                self.stat_path(&path).await?;
                return Ok(Box::pin(futures_util::stream::empty()) as ByteStream);
            }
            let range = offset..offset.saturating_add(len);
            let options = GetOptions::new().with_range(Some(GetRange::Bounded(range)));
            let got = bounded("get", CALL_DEADLINE, self.s3.get_opts(&path, options)).await;
            let body = match got {
                Ok(got) => got.into_stream(),
                Err(e @ (BlobError::NotFound | BlobError::Unavailable(_))) => return Err(e),
                // A range that starts at or past the end is refused (416), and an empty
                // object answers without a range: find out whether the blob is short.
                Err(e) => {
                    return match self.stat_path(&path).await? {
                        size if size < offset.saturating_add(len) => Err(BlobError::Short),
                        _ => Err(e),
                    };
                }
            };
            Ok(Box::pin(exact_len(body, len)) as ByteStream)
        })
    }

    fn stat(&self, key: &BlobKey) -> BoxFuture<'_, Result<u64, BlobError>> {
        let path = self.path(key);
        Box::pin(async move { self.stat_path(&path).await })
    }

    /// DeleteObject. S3 answers success whether or not the object existed, so a missing blob
    /// is `Ok` here (never `NotFound`); callers take both as "gone".
    fn delete(&self, key: &BlobKey) -> BoxFuture<'_, Result<(), BlobError>> {
        let path = self.path(key);
        Box::pin(async move { bounded("delete", CALL_DEADLINE, self.s3.delete(&path)).await })
    }

    /// AbortMultipartUpload; an upload already completed, aborted or unknown is `Ok`.
    fn abort_staged<'a>(
        &'a self,
        key: &'a BlobKey,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), BlobError>> {
        let path = self.path(key);
        let id = id.to_owned();
        Box::pin(async move {
            match abort_upload(&self.s3, &path, &id).await {
                Ok(()) | Err(BlobError::NotFound) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    /// Always 0. Several nodes may share the bucket, so nothing here may assume that no
    /// upload is in flight: a crash's multipart uploads are aborted by the ids recorded for
    /// them ([`BlobBackend::abort_staged`]), or by a bucket lifecycle rule
    /// (`AbortIncompleteMultipartUpload`) as a backstop.
    fn clear_staging(&self) -> BoxFuture<'_, Result<usize, BlobError>> {
        Box::pin(async { Ok(0) })
    }

    /// Every object under `{prefix}blobs/`, with its size and last-modified time as
    /// `changed_at` (for a multipart object S3 may give the upload's start). Any key that is
    /// not a [`BlobKey`] is a stray, named as `blobs/...` like the local backend does.
    fn list(&self) -> BoxFuture<'_, Result<Inventory, BlobError>> {
        Box::pin(async move {
            let dir = self.blobs_dir();
            let strip = format!("{dir}/");
            let mut objects = self.s3.list(Some(&dir));
            let mut inv = Inventory::default();
            // Each step may fetch a page of up to 1000 keys: one deadline per page.
            while let Some(meta) = bounded("list", CALL_DEADLINE, async {
                objects.next().await.transpose()
            })
            .await?
            {
                let name = meta.location.as_ref();
                let rel = name.strip_prefix(&strip).unwrap_or(name);
                match BlobKey::parse(rel) {
                    Some(key) => inv.blobs.push(StoredBlob {
                        key,
                        len: meta.size,
                        changed_at: meta.last_modified.into(),
                    }),
                    None => inv.strays.push(format!("blobs/{rel}")),
                }
            }
            inv.blobs.sort_by(|a, b| a.key.cmp(&b.key));
            inv.strays.sort();
            Ok(inv)
        })
    }

    /// A HEAD for a key that never exists, within [`READY_DEADLINE`]: "not found" proves the
    /// store answers and knows our credentials; anything else (no answer, 403, 5xx) is not
    /// ready.
    fn ready(&self) -> BoxFuture<'_, bool> {
        let probe = self.blobs_dir();
        Box::pin(async move {
            matches!(
                tokio::time::timeout(READY_DEADLINE, self.s3.head(&probe)).await,
                Ok(Ok(_) | Err(object_store::Error::NotFound { .. }))
            )
        })
    }
}

impl S3Store {
    async fn stat_path(&self, path: &Path) -> Result<u64, BlobError> {
        Ok(bounded("head", CALL_DEADLINE, self.s3.head(path))
            .await?
            .size)
    }
}

async fn abort_upload(s3: &AmazonS3, path: &Path, id: &str) -> Result<(), BlobError> {
    let id = id.to_owned();
    bounded(
        "abort multipart upload",
        CALL_DEADLINE,
        s3.abort_multipart(path, &id),
    )
    .await
}

/// Exactly `len` bytes of `body`, or an error: a body that ends early (the object is shorter
/// than the range) ends with [`BlobError::Short`], never silently.
fn exact_len(
    body: futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>,
    len: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, BlobError>> + Send {
    futures_util::stream::unfold(
        (body, 0u64, false),
        move |(mut body, seen, ended)| async move {
            if ended {
                return None;
            }
            match body.next().await {
                Some(Ok(chunk)) => {
                    let seen = seen + chunk.len() as u64;
                    Some((Ok(chunk), (body, seen, false)))
                }
                Some(Err(e)) => Some((Err(classify("get", e)), (body, seen, true))),
                None if seen < len => Some((Err(BlobError::Short), (body, seen, true))),
                None => None,
            }
        },
    )
}

/// A blob being written: bytes gather in a part buffer; a full buffer becomes a part of a
/// multipart upload (created with the first part) when more bytes follow, uploading while
/// the next fills. A blob that fits one buffer is one PUT at commit.
struct S3Writer {
    store: S3Store,
    path: Path,
    /// The part being filled (at most [`PART_SIZE`] bytes).
    buf: Vec<u8>,
    /// Buffers of parts already sent, given back for the next parts (see [`PartBuf`]).
    spare: Arc<Mutex<Spare>>,
    /// The multipart upload, once the blob outgrew one part.
    upload: Option<String>,
    /// Parts stored, in order.
    parts: Vec<PartId>,
    /// Parts uploading, in order (at most [`PARTS_IN_FLIGHT`]).
    inflight: VecDeque<JoinHandle<Result<PartId, BlobError>>>,
    /// Bytes written so far.
    written: u64,
    done: bool,
}

impl S3Writer {
    /// Grow the buffer for `n` more bytes: doubling from 64 KiB (a small blob holds little),
    /// never past [`PART_SIZE`].
    fn reserve(&mut self, n: usize) {
        let need = self.buf.len() + n;
        if need > self.buf.capacity() {
            let target = need
                .max(self.buf.capacity() * 2)
                .clamp(64 * 1024, PART_SIZE);
            self.buf.reserve_exact(target - self.buf.len());
        }
    }

    /// The oldest part in flight, once stored.
    async fn settle_oldest(&mut self) -> Result<(), BlobError> {
        if let Some(task) = self.inflight.pop_front() {
            let part = task.await.map_err(|e| {
                BlobError::Io(std::io::Error::other(format!("part upload task: {e}")))
            })??;
            self.parts.push(part);
        }
        Ok(())
    }

    /// Send the buffer as the next part (starting the multipart upload with the first), once
    /// a slot is free.
    async fn send_part(&mut self) -> Result<(), BlobError> {
        let id = match &self.upload {
            Some(id) => id.clone(),
            None => {
                let id = bounded(
                    "create multipart upload",
                    CALL_DEADLINE,
                    self.store.s3.create_multipart(&self.path),
                )
                .await?;
                self.upload = Some(id.clone());
                id
            }
        };
        while self.inflight.len() >= PARTS_IN_FLIGHT {
            self.settle_oldest().await?;
        }
        // Later parts are large by definition: their buffer is taken whole at once, one a
        // sent part gave back if there is one (its pages are resident already: a fresh one
        // faults each of them in as it fills, a tenth of the writer's CPU).
        let next = self
            .spare
            .lock()
            .map_or_else(|_| Vec::with_capacity(PART_SIZE), |mut s| s.take());
        let part = Bytes::from_owner(PartBuf {
            bytes: std::mem::replace(&mut self.buf, next),
            spare: Arc::downgrade(&self.spare),
        });
        let idx = self.parts.len() + self.inflight.len();
        let (s3, path) = (self.store.s3.clone(), self.path.clone());
        self.inflight.push_back(tokio::spawn(async move {
            let limit = body_deadline(part.len());
            let payload = PutPayload::from(part);
            bounded("upload part", limit, s3.put_part(&path, &id, idx, payload)).await
        }));
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), BlobError> {
        let Some(id) = self.upload.clone() else {
            let body = Bytes::from(std::mem::take(&mut self.buf));
            let limit = body_deadline(body.len());
            // S3 has no "create only if absent" that Garage honours; the key is a fresh
            // UUID, so nothing is ever replaced.
            bounded("put", limit, self.store.s3.put(&self.path, body.into())).await?;
            return Ok(());
        };
        if !self.buf.is_empty() {
            self.send_part().await?;
        }
        while !self.inflight.is_empty() {
            self.settle_oldest().await?;
        }
        let parts = std::mem::take(&mut self.parts);
        // A store takes longer to complete more parts (AWS: up to minutes for thousands).
        let limit = CALL_DEADLINE + Duration::from_secs(parts.len() as u64 / 100);
        let completed = bounded(
            "complete multipart upload",
            limit,
            self.store.s3.complete_multipart(&self.path, &id, parts),
        )
        .await;
        match completed {
            Ok(_) => Ok(()),
            // The store may have completed it and its answer been lost (a retry then finds
            // the upload gone): the object is there, whole, or it was not completed.
            Err(e) => match self.store.stat_path(&self.path).await {
                Ok(size) if size == self.written => Ok(()),
                _ => Err(e),
            },
        }
    }
}

/// A writer's part buffers: those given back, and how many it has in all.
struct Spare {
    free: Vec<Vec<u8>>,
    live: usize,
}

impl Spare {
    /// A buffer given back, else a new one.
    fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| {
            self.live += 1;
            Vec::with_capacity(PART_SIZE)
        })
    }

    /// Keep `bytes` for a later part, unless the writer has more buffers than it can use at
    /// once (parts in flight and the one filling: a request that let go of its part late made
    /// the writer take a new one meanwhile).
    fn give_back(&mut self, mut bytes: Vec<u8>) {
        if self.live > PARTS_IN_FLIGHT + 1 {
            self.live -= 1;
            return;
        }
        bytes.clear();
        self.free.push(bytes);
    }
}

/// A part's bytes on their way to the store; once the request (and any retry) lets go of
/// them, the buffer goes back to its writer for a later part, unless the writer is gone.
struct PartBuf {
    bytes: Vec<u8>,
    spare: Weak<Mutex<Spare>>,
}

impl AsRef<[u8]> for PartBuf {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for PartBuf {
    fn drop(&mut self) {
        if let Some(spare) = self.spare.upgrade()
            && let Ok(mut spare) = spare.lock()
        {
            spare.give_back(std::mem::take(&mut self.bytes));
        }
    }
}

impl BlobWriter for S3Writer {
    /// The multipart upload id, once the blob outgrew one part (before that nothing is
    /// stored outside this process).
    fn staging_id(&self) -> Option<String> {
        self.upload.clone().filter(|_| !self.done)
    }

    fn write<'a>(&'a mut self, data: &'a [u8]) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async move {
            let mut rest = data;
            while !rest.is_empty() {
                // A full buffer goes only when more bytes follow: a blob of exactly one part
                // is still one PUT.
                if self.buf.len() == PART_SIZE {
                    self.send_part().await?;
                }
                let n = rest.len().min(PART_SIZE - self.buf.len());
                let (now, later) = rest.split_at(n);
                self.reserve(n);
                self.buf.extend_from_slice(now);
                self.written += n as u64;
                rest = later;
            }
            Ok(())
        })
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BlobError>> {
        Box::pin(async move {
            // On failure `self` drops here, aborting the multipart upload.
            self.finish().await?;
            self.done = true;
            Ok(())
        })
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for task in &self.inflight {
            task.abort();
        }
        let Some(id) = self.upload.take() else {
            return;
        };
        let inflight = std::mem::take(&mut self.inflight);
        let (s3, path) = (self.store.s3.clone(), self.path.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %path, upload.id = %id, "no runtime to abort a multipart upload");
            return;
        };
        // Parts first (a part landing after the abort would be kept), then the upload.
        runtime.spawn(async move {
            for task in inflight {
                let _ = task.await;
            }
            match abort_upload(&s3, &path, &id).await {
                Ok(()) | Err(BlobError::NotFound) => {}
                Err(e) => tracing::warn!(
                    key = %path, upload.id = %id, error = %e,
                    "cannot abort a multipart upload; abort it by its id later"
                ),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_end_in_one_slash() {
        assert_eq!(prefix_with_slash(""), "");
        assert_eq!(prefix_with_slash("coffer"), "coffer/");
        assert_eq!(prefix_with_slash("a/b/"), "a/b/");
    }

    #[test]
    fn statuses_are_read_from_request_errors() {
        let msg = "Error performing PUT http://127.0.0.1:1/b/k in 1.2s, after 2 retries - \
                   Server returned non-2xx status code: 503 Service Unavailable: busy";
        assert_eq!(status_in(msg), Some(503));
        assert_eq!(status_in("no status here"), None);
        assert_eq!(status_in("status code: 5"), None);
    }
}
