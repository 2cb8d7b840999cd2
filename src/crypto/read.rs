//! The plaintext view of a stored file: the bytes a client may be served, read from the blob
//! store and, when the blob is sealed, authenticated and decrypted segment by segment.
//!
//! Invariant: a byte is yielded only if it is what was stored for this file. A sealed segment
//! that fails authentication, or a blob shorter than its row says, is [`ReadError::Tampered`]
//! and nothing follows it. A failure to reach the bytes is [`ReadError::Blob`]: never
//! reported, or audited, as tampering.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};

use super::segment::{self, CipherStream, Opener};
use super::{CryptoError, KeyError, Keyring, Sealing};
use crate::blob::{BlobError, BlobKey, BlobStore, ByteStream, Cuts};
use crate::ids::FileId;

/// Plaintext, as it streams out.
pub type PlainStream = Pin<Box<dyn Stream<Item = Result<Bytes, ReadError>> + Send>>;

/// Why plaintext could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stored bytes are not what was stored: a sealed segment failed authentication, or
    /// the blob is shorter than its row says.
    #[error("stored content failed its integrity check")]
    Tampered,
    /// The blob store failed: an I/O failure.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The master key that wraps this file's data key is not configured.
    #[error(transparent)]
    Key(KeyError),
}

impl ReadError {
    fn from_blob(e: BlobError) -> Self {
        match e {
            BlobError::Short => Self::Tampered,
            other => Self::Blob(other),
        }
    }
}

impl From<CryptoError> for ReadError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::Tampered => Self::Tampered,
            // A blob error travelled through the opener as an I/O error: unwrap it again.
            CryptoError::Io(io) => match io.downcast::<BlobError>() {
                Ok(blob) => Self::from_blob(blob),
                Err(io) => Self::Blob(BlobError::Io(io)),
            },
        }
    }
}

/// What the plaintext view needs to know of a stored file (from its row).
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The blob's key as stored; re-checked, so even an edited row cannot reach outside the
    /// blob tree.
    pub blob_key: &'a str,
    /// The file (bound into every sealed segment).
    pub file: FileId,
    /// The plaintext length.
    pub size: u64,
    /// How the blob is sealed, when it is.
    pub sealing: Option<&'a Sealing>,
}

impl Source<'_> {
    /// The length the stored blob must have.
    pub fn stored_len(&self) -> u64 {
        match self.sealing {
            Some(_) => segment::sealed_len(self.size),
            None => self.size,
        }
    }

    fn key(&self) -> Result<BlobKey, ReadError> {
        BlobKey::parse(self.blob_key).ok_or(ReadError::Blob(BlobError::Unsafe))
    }
}

/// Plaintext bytes `[start, end)` of a stored file, decrypting (and authenticating) a sealed
/// blob segment by segment, reading only the segments the range touches.
pub async fn read(
    blobs: &BlobStore,
    keyring: &Keyring,
    src: &Source<'_>,
    start: u64,
    end: u64,
) -> Result<PlainStream, ReadError> {
    let key = src.key()?;
    let Some(sealing) = src.sealing else {
        let plain = blobs
            .get_range(&key, start, end - start)
            .await
            .map_err(ReadError::from_blob)?;
        return Ok(Box::pin(plain.map_err(ReadError::from_blob)));
    };
    let data_key = keyring.unwrap(src.file, sealing).map_err(|e| match e {
        KeyError::Corrupt => ReadError::Tampered,
        other => ReadError::Key(other),
    })?;
    let (offset, len, _) = segment::cipher_span(src.size, start, end);
    // The opener checks the header first: one read when the span starts right after it, else
    // the header and the span.
    let header = segment::HEADER_LEN as u64;
    // Pieces that end where segments end: a slow reader's last piece of a segment then holds
    // nothing of the next.
    let cuts = Cuts {
        first: header,
        every: (segment::SEGMENT + segment::TAG) as u64,
    };
    let get = |at, n| blobs.get_records(&key, at, n, cuts);
    let stored: ByteStream = if offset == header {
        get(0, header + len).await.map_err(ReadError::from_blob)?
    } else {
        let head = get(0, header).await.map_err(ReadError::from_blob)?;
        let span = get(offset, len).await.map_err(ReadError::from_blob)?;
        Box::pin(head.chain(span))
    };
    let cipher: CipherStream = Box::pin(stored.map_err(into_io));
    let opener = Opener::new(cipher, &data_key, src.file, src.size, start, end)?;
    Ok(Box::pin(opener.map_err(ReadError::from)))
}

/// The whole plaintext of a stored file from `stored`, its blob's bytes from the first one,
/// however they were obtained (a caller copying them elsewhere checks what it copies as it
/// goes). The same guarantees as [`read`]: a sealed blob is authenticated segment by
/// segment; a blob that ends early is [`ReadError::Tampered`]. A plain blob's bytes pass
/// through as they are (its caller checks their length and hash).
pub fn open_whole(
    keyring: &Keyring,
    src: &Source<'_>,
    stored: ByteStream,
) -> Result<PlainStream, ReadError> {
    let Some(sealing) = src.sealing else {
        return Ok(Box::pin(stored.map_err(ReadError::from_blob)));
    };
    let data_key = keyring.unwrap(src.file, sealing).map_err(|e| match e {
        KeyError::Corrupt => ReadError::Tampered,
        other => ReadError::Key(other),
    })?;
    let cipher: CipherStream = Box::pin(stored.map_err(into_io));
    let opener = Opener::new(cipher, &data_key, src.file, src.size, 0, src.size)?;
    Ok(Box::pin(opener.map_err(ReadError::from)))
}

/// A blob error as the opener's I/O error, recoverable with `downcast`. A short blob keeps
/// its meaning on the way: the opener treats an early end of its source as truncation.
fn into_io(e: BlobError) -> std::io::Error {
    let kind = match e {
        BlobError::Short => std::io::ErrorKind::UnexpectedEof,
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(kind, e)
}

/// A small file's whole plaintext, read (and, when sealed, authenticated and decrypted) on
/// the calling blocking thread, so a download fetches row and bytes in one hop. `None` when
/// not applicable or on any error (the caller then takes [`read`], which reports errors
/// properly: tampering included).
pub fn prefetch_small(
    blobs: &BlobStore,
    keyring: &Keyring,
    src: &Source<'_>,
    max: u64,
) -> Option<Bytes> {
    if src.size > max || src.size == 0 {
        return None;
    }
    let stored = blobs
        .read_blocking(&src.key().ok()?, 0, src.stored_len())?
        .ok()?;
    let Some(sealing) = src.sealing else {
        return Some(stored);
    };
    let data_key = keyring.unwrap(src.file, sealing).ok()?;
    segment::open_all(&data_key, src.file, src.size, stored).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::fs::LocalFs;
    use crate::crypto::DataKey;
    use crate::crypto::segment::Sealer;
    use std::sync::Arc;

    async fn store(dir: &std::path::Path, key: &BlobKey, bytes: &[u8]) -> BlobStore {
        let blobs = BlobStore::new(Arc::new(LocalFs::open(dir).unwrap()));
        let mut w = blobs.put(key).await.unwrap();
        w.write(bytes).await.unwrap();
        w.commit().await.unwrap();
        blobs
    }

    async fn drain(s: Result<PlainStream, ReadError>) -> Result<Vec<u8>, ReadError> {
        let mut s = s?;
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_short_blob_is_tampering_a_missing_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = FileId::new();
        let key = BlobKey::for_file(file, false);
        let blobs = store(dir.path(), &key, b"only ten b").await;
        let keyring = Keyring::default();
        let row_says = |size| Source {
            blob_key: key.as_str(),
            file,
            size,
            sealing: None,
        };
        let whole = drain(read(&blobs, &keyring, &row_says(10), 0, 10).await).await;
        assert_eq!(whole.unwrap(), b"only ten b");
        let longer = drain(read(&blobs, &keyring, &row_says(1_000_000), 0, 1_000_000).await).await;
        assert!(matches!(longer, Err(ReadError::Tampered)), "{longer:?}");

        let gone = BlobKey::for_file(FileId::new(), false);
        let missing = Source {
            blob_key: gone.as_str(),
            ..row_says(10)
        };
        let r = drain(read(&blobs, &keyring, &missing, 0, 10).await).await;
        assert!(
            matches!(r, Err(ReadError::Blob(BlobError::NotFound))),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn sealed_reads_tell_tampering_from_storage_failures() {
        let dir = tempfile::tempdir().unwrap();
        let file = FileId::new();
        let key = BlobKey::for_file(file, true);
        let keyring = Keyring::new(Some([7; 32]), &[]).unwrap();
        let data_key = DataKey::generate();
        let sealing = keyring.wrap(file, &data_key).unwrap();
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut sealer = Sealer::new(&data_key, file).unwrap();
        let mut sealed = sealer.update(&plain).unwrap();
        sealed.extend(sealer.finish().unwrap());
        let blobs = store(dir.path(), &key, &sealed).await;
        let src = Source {
            blob_key: key.as_str(),
            file,
            size: plain.len() as u64,
            sealing: Some(&sealing),
        };
        let n = plain.len() as u64;
        assert_eq!(
            drain(read(&blobs, &keyring, &src, 0, n).await)
                .await
                .unwrap(),
            plain
        );
        let mid = drain(read(&blobs, &keyring, &src, 100_000, 200_000).await).await;
        assert_eq!(mid.unwrap(), &plain[100_000..200_000]);

        // Truncated on disk: tampering.
        let path = dir.path().join("blobs").join(key.as_str());
        std::fs::write(&path, &sealed[..sealed.len() - 70_000]).unwrap();
        let cut = drain(read(&blobs, &keyring, &src, 0, n).await).await;
        assert!(matches!(cut, Err(ReadError::Tampered)), "{cut:?}");

        // Gone: a storage failure, not tampering.
        std::fs::remove_file(&path).unwrap();
        let gone = drain(read(&blobs, &keyring, &src, 0, n).await).await;
        assert!(
            matches!(gone, Err(ReadError::Blob(BlobError::NotFound))),
            "{gone:?}"
        );
    }
}
