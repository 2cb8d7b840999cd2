//! The sealed blob format: a 16-byte header, then the plaintext in 64 KiB segments, each
//! sealed with AES-256-GCM under the file's data key.
//!
//! The nonce of segment `i` is the STREAM construction's (Hoang, Reyhanitabar, Rogaway, Vizár
//! 2015): `0^7 || be32(i) || last_flag`, and the AAD binds the header and the file id. So a
//! flipped bit, a truncated blob (the last segment is missing its flag), reordered or swapped
//! segments, and a blob moved to another file all fail authentication. Any segment can be
//! opened on its own, which is what makes `Range` requests cheap: only the segments a range
//! touches are read and decrypted.
//!
//! Invariant: [`Opener`] yields plaintext only from segments that authenticated; on the first
//! failure it yields [`CryptoError::Tampered`] and nothing after. A failure to read the stored
//! bytes, or a lost decryption task, is [`CryptoError::Io`]: never reported as tampering.

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::AeadInOut;
use aes_gcm::aead::Nonce;
use aes_gcm::aead::inout::InOutBuf;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::task::JoinHandle;

use super::{CryptoError, DataKey};
use crate::blob::pool::{self, Pacer};
use crate::ids::FileId;

/// The stored bytes an [`Opener`] reads: the blob's header, then the ciphertext span.
pub type CipherStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Plaintext bytes per segment.
pub const SEGMENT: usize = 64 * 1024;
/// Tag bytes per segment.
pub const TAG: usize = 16;
/// Header length.
pub const HEADER_LEN: usize = 16;
const MAGIC: &[u8; 8] = b"COFFERS1";

fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&u32::try_from(SEGMENT).unwrap_or(u32::MAX).to_be_bytes());
    h
}

fn nonce(index: u64, last: bool) -> Nonce<Aes256Gcm> {
    let mut n = [0u8; 12];
    // More than 2^32 segments (256 TiB) cannot be addressed; saturate and let it fail to open.
    let idx = u32::try_from(index).unwrap_or(u32::MAX);
    n[7..11].copy_from_slice(&idx.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::<Aes256Gcm>::from(n)
}

fn aad(file: FileId) -> [u8; HEADER_LEN + 16] {
    let mut a = [0u8; HEADER_LEN + 16];
    a[..HEADER_LEN].copy_from_slice(&header());
    a[HEADER_LEN..].copy_from_slice(file.0.as_bytes());
    a
}

/// Number of segments for a plaintext size (an empty file still has one, final, segment).
pub fn segment_count(plain_len: u64) -> u64 {
    plain_len.div_ceil(SEGMENT as u64).max(1)
}

/// The stored length of a sealed blob of `plain_len` plaintext bytes.
pub fn sealed_len(plain_len: u64) -> u64 {
    HEADER_LEN as u64 + plain_len + segment_count(plain_len) * TAG as u64
}

/// The first and last segment holding plaintext `[start, end)` (segment 0 for an empty range).
fn segments_of(plain_len: u64, start: u64, end: u64) -> (u64, u64) {
    let seg = SEGMENT as u64;
    let last = if end == 0 { 0 } else { (end - 1) / seg };
    (start / seg, last.min(segment_count(plain_len) - 1))
}

/// The ciphertext byte range holding plaintext `[start, end)`, as `(offset, len, first_segment)`.
pub fn cipher_span(plain_len: u64, start: u64, end: u64) -> (u64, u64, u64) {
    let seg = SEGMENT as u64;
    let (first, last) = segments_of(plain_len, start, end);
    let offset = HEADER_LEN as u64 + first * (seg + TAG as u64);
    let stop_plain = ((last + 1) * seg).min(plain_len);
    let stop = HEADER_LEN as u64 + stop_plain + (last + 1) * TAG as u64;
    (offset, stop - offset, first)
}

/// Seals a plaintext stream into the blob format, segment by segment.
pub struct Sealer {
    cipher: Aes256Gcm,
    file: FileId,
    index: u64,
    pending: BytesMut,
    header_sent: bool,
}

impl Sealer {
    /// Start sealing `file` under `key`.
    pub fn new(key: &DataKey, file: FileId) -> Self {
        Self {
            cipher: key.cipher(),
            file,
            index: 0,
            pending: BytesMut::with_capacity(SEGMENT + TAG),
            header_sent: false,
        }
    }

    /// Continue sealing `file` at segment `index`: the header and the first `index` segments
    /// (none of them the last) are stored already (a resumable upload's staged blob).
    pub fn resume(key: &DataKey, file: FileId, index: u64) -> Self {
        Self {
            index,
            header_sent: true,
            ..Self::new(key, file)
        }
    }

    /// Segments sealed so far.
    pub fn segments(&self) -> u64 {
        self.index
    }

    /// Seal a full segment held back as not the last (the caller knows more follows), and
    /// hand back the plaintext of a partial one, unsealed: the stored bytes end after the
    /// last whole segment.
    pub fn seal_whole(&mut self) -> Result<(Vec<u8>, BytesMut), CryptoError> {
        let mut out = Vec::new();
        if !self.header_sent {
            out.extend_from_slice(&header());
            self.header_sent = true;
        }
        if self.pending.len() == SEGMENT {
            self.seal_pending(false, &mut out)?;
        }
        Ok((out, std::mem::take(&mut self.pending)))
    }

    /// Feed plaintext; returns sealed bytes ready to store (possibly empty). A full segment is
    /// held back until more data arrives, because only then is it known not to be the last.
    pub fn update(&mut self, mut data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::new();
        if !self.header_sent {
            out.extend_from_slice(&header());
            self.header_sent = true;
        }
        while !data.is_empty() {
            if self.pending.len() == SEGMENT {
                self.seal_pending(false, &mut out)?;
            }
            let take = (SEGMENT - self.pending.len()).min(data.len());
            let (head, tail) = data.split_at(take);
            self.pending.extend_from_slice(head);
            data = tail;
        }
        Ok(out)
    }

    /// Seal what is left as the final segment.
    pub fn finish(mut self) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::new();
        if !self.header_sent {
            out.extend_from_slice(&header());
        }
        self.seal_pending(true, &mut out)?;
        Ok(out)
    }

    fn seal_pending(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &nonce(self.index, last),
                &aad(self.file),
                self.pending.as_mut().into(),
            )
            // Only a segment beyond AES-GCM's length limit fails, which SEGMENT rules out.
            .map_err(|_| CryptoError::Io(std::io::Error::other("segment too long to seal")))?;
        out.extend_from_slice(&self.pending);
        out.extend_from_slice(&tag);
        self.pending.clear();
        self.index += 1;
        Ok(())
    }
}

/// The stored length of a header and `segments` whole segments.
pub fn whole_segments_len(segments: u64) -> u64 {
    HEADER_LEN as u64 + segments * (SEGMENT + TAG) as u64
}

/// Most segments decrypted per blocking task (1 MiB of plaintext), for a reader that keeps
/// up; a slower one gets fewer (down to one), as its [`Pacer`] says.
const BATCH: usize = 16;

/// Checks the blob header, decrypts whole segments and trims the plaintext to the requested
/// range. Decryption runs on the blocking pool, one batch of segments per task, straight from
/// the ciphertext into a buffer of the shared read pool (so the large ones count against its
/// budget). How much is decrypted per batch, and whether the next batch is decrypted while
/// the previous one is sent (using both cores), follows the reader: a slow one gets one
/// segment at a time, handed out in small pieces, with nothing decrypted ahead.
pub struct Opener {
    batches: Batcher,
    cipher: Aes256Gcm,
    file: FileId,
    plain_len: u64,
    pacer: Pacer,
    /// Decryption tasks, oldest first (at most two).
    in_flight: VecDeque<JoinHandle<Result<Bytes, CryptoError>>>,
    /// Decrypted and trimmed, not yet handed out.
    pending: Bytes,
    /// A failure of the stored bytes, yielded once the batches before it are out.
    deferred: Option<CryptoError>,
    /// Plaintext bytes to drop at the start (the range starts inside its first segment).
    skip: usize,
    /// Plaintext bytes still to hand out.
    remaining: u64,
    failed: bool,
}

impl Opener {
    /// Open plaintext `[start, end)` of a `plain_len`-byte file, reading from `inner`, which
    /// must yield the blob's 16-byte header followed by the ciphertext from the offset
    /// [`cipher_span`] gave. Needs a tokio runtime.
    pub fn new(
        inner: CipherStream,
        key: &DataKey,
        file: FileId,
        plain_len: u64,
        start: u64,
        end: u64,
    ) -> Self {
        let (first, last) = segments_of(plain_len, start, end);
        Self {
            batches: Batcher {
                inner,
                chunks: VecDeque::new(),
                buffered: 0,
                header_checked: false,
                next: first,
                last_needed: last,
                plain_len,
                done: false,
            },
            cipher: key.cipher(),
            file,
            plain_len,
            pacer: Pacer::default(),
            in_flight: VecDeque::new(),
            pending: Bytes::new(),
            deferred: None,
            skip: usize::try_from(start - first * SEGMENT as u64).unwrap_or(0),
            remaining: end.saturating_sub(start),
            failed: false,
        }
    }

    /// Start decrypting batches until `depth` are in flight or the ciphertext is not there yet.
    fn fill_pipeline(&mut self, cx: &mut Context<'_>, want: usize, depth: usize) {
        while self.in_flight.len() < depth && self.deferred.is_none() {
            // The buffer first: the batch is as large as the budget allows (one segment, not
            // counted against it, when it is spent).
            let grant = pool::shared().grant_at_least(SEGMENT, want);
            let segments = (grant.size() / SEGMENT).clamp(1, BATCH);
            match self.batches.poll_batch(cx, segments as u64) {
                Poll::Ready(Some(Ok((first, data)))) => {
                    let (cipher, file, plain_len) =
                        (self.cipher.clone(), self.file, self.plain_len);
                    self.in_flight
                        .push_back(tokio::task::spawn_blocking(move || {
                            let len = data.len();
                            pool::shared().fill(grant, len, |out| {
                                decrypt_batch(&cipher, file, plain_len, first, &data, out)
                            })
                        }));
                }
                Poll::Ready(Some(Err(e))) => self.deferred = Some(e),
                Poll::Ready(None) | Poll::Pending => return,
            }
        }
    }
}

impl Stream for Opener {
    type Item = Result<Bytes, CryptoError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let want = this.pacer.next_size();
        loop {
            if this.failed {
                return Poll::Ready(None);
            }
            if !this.pending.is_empty() {
                // A slow reader gets small pieces: what the HTTP layer queues for the socket
                // then pins fewer segment buffers.
                let n = if this.pacer.slow() {
                    pool::MIN_CHUNK.min(this.pending.len())
                } else {
                    this.pending.len()
                };
                let out = this.pending.split_to(n);
                this.pacer.handed(out.len());
                return Poll::Ready(Some(Ok(out)));
            }
            let depth = if this.pacer.slow() { 1 } else { 2 };
            this.fill_pipeline(cx, want, depth);
            let Some(task) = this.in_flight.front_mut() else {
                return match this.deferred.take() {
                    Some(e) => {
                        this.failed = true;
                        Poll::Ready(Some(Err(e)))
                    }
                    None if this.batches.finished() => Poll::Ready(None),
                    // The batcher is waiting for ciphertext and will wake us.
                    None => Poll::Pending,
                };
            };
            let done = match Pin::new(task).poll(cx) {
                Poll::Ready(r) => r.unwrap_or_else(|e| Err(lost_task(e))),
                Poll::Pending => return Poll::Pending,
            };
            this.in_flight.pop_front();
            match done {
                Ok(mut plain) => {
                    let cut = std::mem::take(&mut this.skip).min(plain.len());
                    plain = plain.slice(cut..);
                    let take = usize::try_from(this.remaining)
                        .unwrap_or(usize::MAX)
                        .min(plain.len());
                    plain.truncate(take);
                    this.remaining -= take as u64;
                    this.pending = plain;
                }
                Err(e) => {
                    // Nothing after the first failure.
                    this.failed = true;
                    this.in_flight.clear();
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

/// Cuts the ciphertext stream into batches of whole segments.
struct Batcher {
    inner: CipherStream,
    /// Ciphertext read but not yet batched, as the store yielded it: kept, not copied, so
    /// it stays in the read pool's buffers (and within its budget).
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    buffered: usize,
    header_checked: bool,
    /// Index of the next segment to hand out.
    next: u64,
    last_needed: u64,
    plain_len: u64,
    done: bool,
}

fn stored_segment_len(plain_len: u64, index: u64) -> usize {
    let plain = plain_len
        .saturating_sub(index * SEGMENT as u64)
        .min(SEGMENT as u64);
    usize::try_from(plain).unwrap_or(SEGMENT) + TAG
}

impl Batcher {
    /// The next batch `(first segment index, ciphertext)`, an integrity error, or the end.
    fn poll_batch(
        &mut self,
        cx: &mut Context<'_>,
        batch: u64,
    ) -> Poll<Option<Result<(u64, Bytes), CryptoError>>> {
        loop {
            if self.done || self.next > self.last_needed {
                return Poll::Ready(None);
            }
            if !self.header_checked && self.buffered >= HEADER_LEN {
                // Also bound into every tag (AAD), but a changed byte of the stored copy must
                // fail too: "a flipped byte is never served" means any byte.
                if self.take(HEADER_LEN)[..] != header()[..] {
                    self.done = true;
                    return Poll::Ready(Some(Err(CryptoError::Tampered)));
                }
                self.header_checked = true;
            }
            if self.header_checked {
                // As many whole segments as are buffered, up to a batch or the last needed.
                let (mut n, mut bytes, mut idx) = (0, 0usize, self.next);
                while n < batch && idx <= self.last_needed {
                    let len = stored_segment_len(self.plain_len, idx);
                    if self.buffered < bytes + len {
                        break;
                    }
                    bytes += len;
                    n += 1;
                    idx += 1;
                }
                if n == batch || (n > 0 && idx > self.last_needed) {
                    let first = self.next;
                    self.next = idx;
                    return Poll::Ready(Some(Ok((first, self.take(bytes)))));
                }
            }
            match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    self.buffered += chunk.len();
                    self.chunks.push_back(chunk);
                }
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    // A source that says it ended early was cut short: truncated, like an end.
                    let e = match e.kind() {
                        std::io::ErrorKind::UnexpectedEof => CryptoError::Tampered,
                        _ => CryptoError::Io(e),
                    };
                    return Poll::Ready(Some(Err(e)));
                }
                // The blob ended before the segments the row promises: truncated.
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(CryptoError::Tampered)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Batcher {
    /// The next `n` buffered bytes (`n` <= `buffered`): a slice of the first chunk when it
    /// holds them all, else a copy (short-lived: a batch is decrypted as soon as it is cut).
    fn take(&mut self, n: usize) -> Bytes {
        self.buffered -= n;
        if let Some(front) = self.chunks.front_mut()
            && front.len() >= n
        {
            let out = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return out;
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let k = (n - out.len()).min(front.len());
            out.extend_from_slice(&front.split_to(k));
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        out.freeze()
    }

    /// Every needed segment was handed out, or the stream failed.
    fn finished(&self) -> bool {
        self.done || self.next > self.last_needed
    }
}

/// A decryption task that panicked or was cancelled lost its batch: an I/O failure, never
/// tampering (that would answer `integrity-error` and audit a false alarm).
pub(crate) fn lost_task(e: tokio::task::JoinError) -> CryptoError {
    CryptoError::Io(std::io::Error::other(e))
}

/// Decrypt a batch of whole segments from `data` into `out`, their plaintexts packed
/// together; the plaintext length. Nothing is written past a segment that fails.
fn decrypt_batch(
    cipher: &Aes256Gcm,
    file: FileId,
    plain_len: u64,
    first: u64,
    data: &[u8],
    out: &mut [u8],
) -> Result<usize, CryptoError> {
    let last_index = segment_count(plain_len) - 1;
    let (mut read, mut write, mut index) = (0usize, 0usize, first);
    while read < data.len() {
        let len = stored_segment_len(plain_len, index);
        let body = len - TAG;
        let seg = data.get(read..read + len).ok_or(CryptoError::Tampered)?;
        let (ct, tag) = seg.split_at(body);
        let tag = <[u8; TAG]>::try_from(tag).map_err(|_| CryptoError::Tampered)?;
        let dst = out
            .get_mut(write..write + body)
            .ok_or_else(|| CryptoError::Io(std::io::Error::other("decryption buffer too small")))?;
        let inout = InOutBuf::new(ct, dst)
            .map_err(|_| CryptoError::Io(std::io::Error::other("decryption buffer mismatch")))?;
        cipher
            .decrypt_inout_detached(
                &nonce(index, index == last_index),
                &aad(file),
                inout,
                &tag.into(),
            )
            .map_err(|_| CryptoError::Tampered)?;
        read += len;
        write += body;
        index += 1;
    }
    Ok(write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use proptest::prelude::*;

    fn seal(key: &DataKey, file: FileId, data: &[u8], chunk: usize) -> Vec<u8> {
        let mut s = Sealer::new(key, file);
        let mut out = Vec::new();
        for c in data.chunks(chunk.max(1)) {
            out.extend(s.update(c).unwrap());
        }
        out.extend(s.finish().unwrap());
        out
    }

    fn open(
        key: &DataKey,
        file: FileId,
        blob: &[u8],
        plain_len: u64,
        start: u64,
        end: u64,
    ) -> Result<Vec<u8>, CryptoError> {
        let (off, len, _) = cipher_span(plain_len, start, end);
        let mut slice = blob[..HEADER_LEN.min(blob.len())].to_vec();
        slice.extend_from_slice(
            blob.get(off as usize..(off + len) as usize)
                .unwrap_or(&blob[(off as usize).min(blob.len())..]),
        );
        let inner: CipherStream = Box::pin(futures_util::stream::iter(
            slice
                .chunks(5000)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        ));
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let mut o = Opener::new(inner, key, file, plain_len, start, end);
                let mut out = Vec::new();
                while let Some(c) = o.next().await {
                    out.extend_from_slice(&c?);
                }
                Ok(out)
            })
    }

    #[test]
    fn empty_file_round_trips() {
        let key = DataKey::generate();
        let file = FileId::new();
        let blob = seal(&key, file, b"", 1);
        assert_eq!(blob.len() as u64, sealed_len(0));
        assert_eq!(open(&key, file, &blob, 0, 0, 0).unwrap(), b"");
    }

    #[test]
    fn tampering_is_detected() {
        let key = DataKey::generate();
        let file = FileId::new();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let blob = seal(&key, file, &data, 7777);
        let n = data.len() as u64;
        assert_eq!(open(&key, file, &blob, n, 0, n).unwrap(), data);

        let mut header = blob.clone();
        header[3] ^= 1;
        assert!(matches!(
            open(&key, file, &header, n, 0, n),
            Err(CryptoError::Tampered)
        ));
        assert!(matches!(
            open(&key, file, &header, n, 150_000, 150_001),
            Err(CryptoError::Tampered)
        ));

        let mut flipped = blob.clone();
        flipped[HEADER_LEN + 100] ^= 1;
        assert!(matches!(
            open(&key, file, &flipped, n, 0, n),
            Err(CryptoError::Tampered)
        ));

        // Truncated exactly at a segment boundary: the missing last flag gives it away.
        let cut = &blob[..HEADER_LEN + 2 * (SEGMENT + TAG)];
        assert!(matches!(
            open(&key, file, cut, n, 0, n),
            Err(CryptoError::Tampered)
        ));

        let mut swapped = blob.clone();
        let s = SEGMENT + TAG;
        let (a, b) = swapped[HEADER_LEN..HEADER_LEN + 2 * s].split_at_mut(s);
        a.swap_with_slice(b);
        assert!(matches!(
            open(&key, file, &swapped, n, 0, n),
            Err(CryptoError::Tampered)
        ));

        // Another file's id (blob moved between rows) fails too.
        assert!(matches!(
            open(&key, FileId::new(), &blob, n, 0, n),
            Err(CryptoError::Tampered)
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn every_range_decrypts_to_the_plaintext(len in 0usize..300_000, a in any::<u64>(), b in any::<u64>(), chunk in 1usize..100_000) {
            let key = DataKey::generate();
            let file = FileId::new();
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
            let blob = seal(&key, file, &data, chunk);
            prop_assert_eq!(blob.len() as u64, sealed_len(len as u64));
            let n = len as u64;
            let (start, end) = if n == 0 { (0, 0) } else {
                let s = a % n; let e = s + 1 + b % (n - s); (s, e)
            };
            let got = open(&key, file, &blob, n, start, end).unwrap();
            prop_assert_eq!(&got[..], &data[start as usize..end as usize]);
        }
    }
}
