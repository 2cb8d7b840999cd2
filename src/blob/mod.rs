//! The blob boundary: a byte store and nothing more. Every byte of file content goes in and
//! out through [`BlobStore`]: put (staged, then made durable and visible under its key in one
//! step), get a byte range, stat, delete, list. Who may read a blob, and in what form
//! (decrypted, authenticated), is decided above this module (`crate::crypto::read`); a
//! backend never sees rows, keys of the keyring, or HTTP. The local filesystem is one backend;
//! an S3-compatible object store ([`s3`]) is another.
//!
//! Invariant: keys are made from a file's fresh UUID only ([`BlobKey::for_file`]) or parsed
//! against that exact shape ([`BlobKey::parse`]); no client text ever becomes part of a key.

pub mod fs;
pub(crate) mod pool;
pub mod s3;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;

use crate::ids::FileId;

/// A boxed future, for the object-safe backend trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A stream of blob bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BlobError>> + Send>>;

/// Failures of blob storage.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No blob under that key.
    #[error("blob not found")]
    NotFound,
    /// The volume (or a quota on it) is full.
    #[error("storage volume full")]
    StorageFull,
    /// A symlink or foreign object sits where a blob or shard directory should be.
    #[error("refusing a symlink or non-regular file inside the storage root")]
    Unsafe,
    /// The blob ended before the requested range did.
    #[error("blob is shorter than the requested range")]
    Short,
    /// The store did not answer in time, refused the connection or answered that it cannot
    /// serve now (5xx): worth retrying later, not a fault of the request. The text is the
    /// cause, for the log only.
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
    /// Another writer holds the blob (an appending writer of another request or node).
    #[error("another writer holds the blob")]
    Busy,
    /// Any other I/O failure.
    #[error("blob i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl BlobError {
    /// Classify an I/O error (ENOSPC and EDQUOT are "full", ELOOP from O_NOFOLLOW is unsafe).
    pub fn from_io(e: std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::NotFound => Self::NotFound,
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Self::StorageFull,
            _ if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => Self::Unsafe,
            _ => Self::Io(e),
        }
    }
}

/// Where a blob lives: `ab/cd/<uuid>` (plain) or `ab/cd/<uuid>.s` (sealed), the shard
/// directories being the first hex digits of the id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey(String);

impl BlobKey {
    /// The key for a file's blob.
    pub fn for_file(id: FileId, sealed: bool) -> Self {
        let hex = id.to_string();
        let (a, b) = (&hex[0..2], &hex[2..4]);
        Self(format!("{a}/{b}/{hex}{}", if sealed { ".s" } else { "" }))
    }

    /// Accept only the exact shape [`BlobKey::for_file`] makes (a stored key is re-checked, so
    /// even an edited database row cannot point outside the blob tree).
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('/');
        let (a, b, name) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let (id, sealed) = match name.strip_suffix(".s") {
            Some(id) => (id, true),
            None => (name, false),
        };
        let key = Self::for_file(FileId::parse(id)?, sealed);
        // Exactly the spelling `for_file` makes (lower case, matching shards), nothing else.
        (key.0 == s && key.0.starts_with(&format!("{a}/{b}/"))).then_some(key)
    }

    /// The file this blob belongs to.
    pub fn file_id(&self) -> Option<FileId> {
        let name = self.0.rsplit('/').next()?;
        FileId::parse(name.strip_suffix(".s").unwrap_or(name))
    }

    /// The two shard directory names and the file name.
    pub fn parts(&self) -> (&str, &str, &str) {
        let mut it = self.0.splitn(3, '/');
        (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        )
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BlobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A blob being written. Dropping it without `commit` discards everything written.
pub trait BlobWriter: Send {
    /// Append bytes.
    fn write<'a>(&'a mut self, buf: &'a [u8]) -> BoxFuture<'a, Result<(), BlobError>>;
    /// What this writer has staged in the store so far, named so that
    /// [`BlobBackend::abort_staged`] can discard it after a crash (when `Drop` never ran):
    /// the multipart upload id on S3, the temp file's name on the local filesystem. `None`
    /// while nothing is staged outside this process; it may turn `Some` after a `write`, so
    /// a caller that records it asks again after writing.
    fn staging_id(&self) -> Option<String>;
    /// Make the bytes durable and visible under the key given to [`BlobBackend::put`]; never
    /// replaces an existing blob.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<(), BlobError>>;
}

/// One blob as maintenance sees it.
#[derive(Debug, Clone)]
pub struct StoredBlob {
    /// Its key.
    pub key: BlobKey,
    /// Its length.
    pub len: u64,
    /// When it last changed name or content (the rename into place counts).
    pub changed_at: std::time::SystemTime,
}

/// What maintenance finds in the store.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    /// Live blobs.
    pub blobs: Vec<StoredBlob>,
    /// Anything else inside the blob tree (not a blob we would write).
    pub strays: Vec<String>,
}

/// Where a blob's records end: at byte `first + k * every` for every `k` >= 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cuts {
    /// The first boundary.
    pub first: u64,
    /// The record length (not 0).
    pub every: u64,
}

impl Cuts {
    /// How many of the `n` bytes from `at` to read in one piece: up to the last boundary
    /// after `at` they reach, else all `n` (a record longer than the piece).
    pub fn piece(&self, at: u64, n: u64) -> u64 {
        let limit = at.saturating_add(n);
        if self.every == 0 || limit < self.first {
            return n;
        }
        let last = self.first + (limit - self.first) / self.every * self.every;
        if last > at { last - at } else { n }
    }
}

/// A storage backend. Object-safe so the store can pick one at startup from configuration.
pub trait BlobBackend: Send + Sync + 'static {
    /// Start writing the blob that will live under `key` once committed.
    fn put(&self, key: &BlobKey) -> BoxFuture<'_, Result<Box<dyn BlobWriter>, BlobError>>;
    /// Stream `len` bytes from `offset`. Fails with `NotFound` before the stream starts; a
    /// blob that ends before the range does fails with [`BlobError::Short`] (before or during
    /// the stream), never with a silently short stream.
    fn get_range(
        &self,
        key: &BlobKey,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'_, Result<ByteStream, BlobError>>;
    /// [`get_range`](Self::get_range) of a blob made of records (a sealed blob's segments):
    /// where the store reads a slow reader's small pieces, a piece ends at the last record
    /// boundary it reaches, so a reader that takes whole records does not keep part of the
    /// next one while it sends this one. A store that cannot choose its pieces (S3's body
    /// arrives as it arrives) reads as `get_range`.
    fn get_records(
        &self,
        key: &BlobKey,
        offset: u64,
        len: u64,
        _cuts: Cuts,
    ) -> BoxFuture<'_, Result<ByteStream, BlobError>> {
        self.get_range(key, offset, len)
    }
    /// The blob's length, or `NotFound`.
    fn stat(&self, key: &BlobKey) -> BoxFuture<'_, Result<u64, BlobError>>;
    /// Delete a blob, durably; `NotFound` when there was none, or `Ok` where the store cannot
    /// tell (S3's DeleteObject is idempotent): callers accept either.
    fn delete(&self, key: &BlobKey) -> BoxFuture<'_, Result<(), BlobError>>;
    /// Delete a blob no row names, unless a writer holds it at this moment: `Ok(false)` then.
    /// The local store's growing chunk of a tus upload is written in place and named by no
    /// row until its first PATCH ends; elsewhere nothing is written in place, and this is
    /// [`BlobBackend::delete`].
    fn delete_unless_held(&self, key: &BlobKey) -> BoxFuture<'_, Result<bool, BlobError>> {
        let key = key.clone();
        Box::pin(async move { self.delete(&key).await.map(|()| true) })
    }
    /// Discard what a writer for `key` had staged under `id` ([`BlobWriter::staging_id`]):
    /// for a crash's leftovers, recorded before the crash. Harmless when it is already gone
    /// (committed, aborted, never existed): `Ok`.
    fn abort_staged<'a>(
        &'a self,
        key: &'a BlobKey,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), BlobError>>;
    /// Remove staging leftovers of a crash; returns how many. Only a backend that knows no
    /// other process stages beside it can do this by looking (the local filesystem); others
    /// answer 0 and rely on [`BlobBackend::abort_staged`] with recorded ids.
    fn clear_staging(&self) -> BoxFuture<'_, Result<usize, BlobError>>;
    /// Everything stored, for consistency checks.
    fn list(&self) -> BoxFuture<'_, Result<Inventory, BlobError>>;
    /// Whether new blobs can be written now (for `/readyz`).
    fn ready(&self) -> BoxFuture<'_, bool>;
    /// Continue the blob under `key` from byte `at` (a resumable upload's staging, durable up
    /// to `at`): bytes after `at` are cut off first, and the writer holds the blob exclusively
    /// until it is committed or dropped ([`BlobError::Busy`] while another writer holds it,
    /// in this process or another). Its `commit` makes the bytes durable in place; dropped
    /// uncommitted, it cuts the blob back to `at` (removes it when `at` is 0: nothing of it was
    /// durable). `None` when the
    /// backend cannot append in place (S3 objects are immutable).
    fn append(
        &self,
        _key: &BlobKey,
        _at: u64,
    ) -> BoxFuture<'_, Result<Option<Box<dyn BlobWriter>>, BlobError>> {
        Box::pin(async { Ok(None) })
    }
    /// Whether [`BlobBackend::link`] works here.
    fn can_link(&self) -> bool {
        false
    }
    /// Give the blob under `from` the second name `to`, durably (a hard link: no byte is
    /// copied; deleting either name leaves the other). Never replaces an existing `to`. Only
    /// where [`BlobBackend::append`] is supported.
    fn link<'a>(
        &'a self,
        _from: &'a BlobKey,
        _to: &'a BlobKey,
    ) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async {
            Err(BlobError::Io(std::io::Error::other(
                "this blob store cannot link blobs",
            )))
        })
    }
    /// Read a small range right here, for callers already on a blocking thread; `None` when
    /// the backend has no cheap synchronous path (a network store).
    fn read_blocking(
        &self,
        _key: &BlobKey,
        _offset: u64,
        _len: u64,
    ) -> Option<Result<Bytes, BlobError>> {
        None
    }
}

/// The blob store handed to handlers. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    backend: Arc<dyn BlobBackend>,
}

impl BlobStore {
    /// Wrap a backend.
    pub fn new(backend: Arc<dyn BlobBackend>) -> Self {
        Self { backend }
    }

    /// Start writing the blob for `key`.
    pub async fn put(&self, key: &BlobKey) -> Result<Box<dyn BlobWriter>, BlobError> {
        self.backend.put(key).await
    }

    /// Stream a byte range.
    pub async fn get_range(
        &self,
        key: &BlobKey,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream, BlobError> {
        self.backend.get_range(key, offset, len).await
    }

    /// Stream a byte range of a blob made of records ([`BlobBackend::get_records`]).
    pub async fn get_records(
        &self,
        key: &BlobKey,
        offset: u64,
        len: u64,
        cuts: Cuts,
    ) -> Result<ByteStream, BlobError> {
        self.backend.get_records(key, offset, len, cuts).await
    }

    /// A blob's length.
    pub async fn stat(&self, key: &BlobKey) -> Result<u64, BlobError> {
        self.backend.stat(key).await
    }

    /// Delete a blob.
    pub async fn delete(&self, key: &BlobKey) -> Result<(), BlobError> {
        self.backend.delete(key).await
    }

    /// Delete a blob no row names, unless a writer holds it now
    /// ([`BlobBackend::delete_unless_held`]).
    pub async fn delete_unless_held(&self, key: &BlobKey) -> Result<bool, BlobError> {
        self.backend.delete_unless_held(key).await
    }

    /// Continue a blob in place from byte `at` ([`BlobBackend::append`]); `None` where the
    /// backend cannot.
    pub async fn append(
        &self,
        key: &BlobKey,
        at: u64,
    ) -> Result<Option<Box<dyn BlobWriter>>, BlobError> {
        self.backend.append(key, at).await
    }

    /// Whether a blob can have a second name ([`BlobBackend::link`]).
    pub fn can_link(&self) -> bool {
        self.backend.can_link()
    }

    /// A second name for a blob ([`BlobBackend::link`]).
    pub async fn link(&self, from: &BlobKey, to: &BlobKey) -> Result<(), BlobError> {
        self.backend.link(from, to).await
    }

    /// Discard what a crashed writer had staged (see [`BlobWriter::staging_id`]).
    pub async fn abort_staged(&self, key: &BlobKey, id: &str) -> Result<(), BlobError> {
        self.backend.abort_staged(key, id).await
    }

    /// Remove staging leftovers.
    pub async fn clear_staging(&self) -> Result<usize, BlobError> {
        self.backend.clear_staging().await
    }

    /// List everything.
    pub async fn list(&self) -> Result<Inventory, BlobError> {
        self.backend.list().await
    }

    /// Whether writes work now.
    pub async fn ready(&self) -> bool {
        self.backend.ready().await
    }

    /// A small range read on the calling (blocking) thread, when the backend has a cheap
    /// synchronous path (the local filesystem); `None` otherwise.
    pub fn read_blocking(
        &self,
        key: &BlobKey,
        offset: u64,
        len: u64,
    ) -> Option<Result<Bytes, BlobError>> {
        self.backend.read_blocking(key, offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pieces_end_at_the_last_record_boundary_they_reach() {
        // A sealed blob: a 16-byte header, then segments of 65,552 stored bytes.
        let c = Cuts {
            first: 16,
            every: 65_552,
        };
        assert_eq!(c.piece(0, 16_384), 16, "the header alone");
        assert_eq!(
            c.piece(16, 16_384),
            16_384,
            "no boundary reached: all of it"
        );
        assert_eq!(
            c.piece(16 + 4 * 16_384, 16_384),
            16,
            "up to the segment's end"
        );
        assert_eq!(c.piece(16, 1 << 20), 15 * 65_552, "whole segments only");
        assert_eq!(c.piece(0, 1 << 20), 16 + 15 * 65_552);
        assert_eq!(c.piece(16 + 65_552, 65_552), 65_552, "exactly one");
    }

    proptest! {
        #[test]
        fn a_piece_is_never_empty_or_longer_than_asked(first in 0u64..100_000, every in 1u64..100_000, at in 0u64..1_000_000, n in 1u64..2_000_000) {
            let c = Cuts { first, every };
            let p = c.piece(at, n);
            prop_assert!(p >= 1 && p <= n);
            let end = at + p;
            // It ends at a boundary, or no boundary lies in (at, at + n].
            let on_boundary = end >= first && (end - first).is_multiple_of(every);
            let none_reached = at + n < first || first + (at + n - first) / every * every <= at;
            prop_assert!(on_boundary || (p == n && none_reached));
        }
    }

    #[test]
    fn keys_shard_by_id_prefix() {
        let id = FileId::parse("0a1b2c3d-0000-4000-8000-000000000000").unwrap();
        assert_eq!(
            BlobKey::for_file(id, false).as_str(),
            "0a/1b/0a1b2c3d-0000-4000-8000-000000000000"
        );
        assert_eq!(
            BlobKey::for_file(id, true).as_str(),
            "0a/1b/0a1b2c3d-0000-4000-8000-000000000000.s"
        );
    }

    proptest! {
        #[test]
        fn made_keys_parse_back(bytes in any::<[u8; 16]>(), sealed in any::<bool>()) {
            let id = FileId(uuid::Uuid::from_bytes(bytes));
            let k = BlobKey::for_file(id, sealed);
            prop_assert_eq!(BlobKey::parse(k.as_str()), Some(k.clone()));
            prop_assert_eq!(k.file_id(), Some(id));
        }

        #[test]
        fn only_made_keys_parse(s in "\\PC{0,80}") {
            if let Some(k) = BlobKey::parse(&s) {
                prop_assert_eq!(k.as_str(), s.as_str());
                prop_assert!(!s.contains(".."));
            }
        }
    }

    #[test]
    fn hostile_keys_are_refused() {
        for s in [
            "../x",
            "0a/1b/../../etc/passwd",
            "0a/1b",
            "/0a/1b/x",
            "0a/1b/0a1b2c3d-0000-4000-8000-000000000000/x",
            "ff/ff/0a1b2c3d-0000-4000-8000-000000000000",
        ] {
            assert_eq!(BlobKey::parse(s), None, "{s}");
        }
    }
}
