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
//! bytes is [`CryptoError::Io`]: never reported as tampering.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;

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

fn nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    // More than 2^32 segments (256 TiB) cannot be addressed; saturate and let it fail to open.
    let idx = u32::try_from(index).unwrap_or(u32::MAX);
    n[7..11].copy_from_slice(&idx.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

fn aad(file: FileId) -> Aad<[u8; HEADER_LEN + 16]> {
    let mut a = [0u8; HEADER_LEN + 16];
    a[..HEADER_LEN].copy_from_slice(&header());
    a[HEADER_LEN..].copy_from_slice(file.0.as_bytes());
    Aad::from(a)
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
    cipher: LessSafeKey,
    file: FileId,
    index: u64,
    pending: BytesMut,
    header_sent: bool,
}

impl Sealer {
    /// Start sealing `file` under `key`.
    pub fn new(key: &DataKey, file: FileId) -> Result<Self, CryptoError> {
        Ok(Self {
            cipher: key.cipher()?,
            file,
            index: 0,
            pending: BytesMut::with_capacity(SEGMENT + TAG),
            header_sent: false,
        })
    }

    /// Continue sealing `file` at segment `index`: the header and the first `index` segments
    /// (none of them the last) are stored already (a resumable upload's staged blob).
    pub fn resume(key: &DataKey, file: FileId, index: u64) -> Result<Self, CryptoError> {
        Ok(Self {
            index,
            header_sent: true,
            ..Self::new(key, file)?
        })
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
            .seal_in_place_separate_tag(
                nonce(self.index, last),
                aad(self.file),
                self.pending.as_mut(),
            )
            // Only a segment beyond AES-GCM's length limit fails, which SEGMENT rules out.
            .map_err(|_| CryptoError::Io(std::io::Error::other("segment too long to seal")))?;
        out.extend_from_slice(&self.pending);
        out.extend_from_slice(tag.as_ref());
        self.pending.clear();
        self.index += 1;
        Ok(())
    }
}

/// The stored length of a header and `segments` whole segments.
pub fn whole_segments_len(segments: u64) -> u64 {
    HEADER_LEN as u64 + segments * (SEGMENT + TAG) as u64
}

/// Most segments opened at once (256 KiB of plaintext, about 20 µs of AES-GCM here), for a
/// reader that keeps up; a slower one gets fewer (down to one), as its [`Pacer`] says.
const BATCH: usize = 4;

/// Checks the blob header, opens whole segments and trims the plaintext to the requested
/// range.
///
/// Segments are opened where the stream is polled, not handed to the blocking pool: AES-GCM
/// (AWS-LC, AES-NI or VAES) opens a 64 KiB segment in about 5 µs, less than the hand-off to
/// another thread and back cost (measured: the hand-offs were a third of an encrypted
/// download's CPU). The plaintext of a batch of segments goes into one buffer of the shared
/// read pool (so the large ones count against its budget), taken before the ciphertext is
/// read and held while it arrives (a fast reader's buffer keeps its share of the budget
/// through the store's wait for the first byte); each piece of ciphertext is used up as it
/// arrives: a segment that lies whole in it is opened from it into its place in the buffer,
/// one cut across pieces is copied there and opened in place. So no ciphertext is held but
/// the piece being read and what of the last one the next batch needs (copied out when it is
/// a small part of its piece): a slow reader holds one segment's buffer and at most one read
/// buffer. How much is opened at once follows the reader (and never more than the range
/// needs): a slow one gets one segment at a time, handed out in small pieces.
pub struct Opener {
    inner: CipherStream,
    cipher: LessSafeKey,
    file: FileId,
    plain_len: u64,
    pacer: Pacer,
    /// The stored header, as far as it has arrived.
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Stored bytes read but not used yet: what the last piece held past a full batch.
    carry: Bytes,
    /// The batch being opened, when one is.
    batch: Option<Batch>,
    /// The next segment to open, and the last the range needs.
    next: u64,
    last_needed: u64,
    /// Opened and trimmed, not yet handed out.
    pending: Bytes,
    /// Plaintext bytes to drop at the start (the range starts inside its first segment).
    skip: usize,
    /// Plaintext bytes still to hand out.
    remaining: u64,
    /// Nothing more: the range is out, or a failure was reported.
    done: bool,
}

/// Segments being opened into one pool buffer.
struct Batch {
    out: pool::Buffer,
    /// Segment index one past the batch's last.
    end: u64,
    /// Plaintext bytes of the batch's opened segments (the next one's place starts here).
    opened: usize,
    /// The segment being gathered across pieces: its ciphertext bytes copied to its place,
    /// and its tag as far as it has arrived.
    body: usize,
    tag: [u8; TAG],
    tag_len: usize,
}

impl Opener {
    /// Open plaintext `[start, end)` of a `plain_len`-byte file, reading from `inner`, which
    /// must yield the blob's 16-byte header followed by the ciphertext from the offset
    /// [`cipher_span`] gave.
    pub fn new(
        inner: CipherStream,
        key: &DataKey,
        file: FileId,
        plain_len: u64,
        start: u64,
        end: u64,
    ) -> Result<Self, CryptoError> {
        let (first, last) = segments_of(plain_len, start, end);
        Ok(Self {
            inner,
            cipher: key.cipher()?,
            file,
            plain_len,
            pacer: Pacer::default(),
            header: [0; HEADER_LEN],
            header_len: 0,
            carry: Bytes::new(),
            batch: None,
            next: first,
            last_needed: last,
            pending: Bytes::new(),
            skip: usize::try_from(start - first * SEGMENT as u64).unwrap_or(0),
            remaining: end.saturating_sub(start),
            done: false,
        })
    }

    /// The next batch of segments, opened and trimmed to the range; `None` at the end.
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, CryptoError>>> {
        if self.next > self.last_needed {
            return Poll::Ready(None);
        }
        let mut batch = match self.batch.take() {
            Some(b) => b,
            None => {
                // The buffer first: as large as the budget allows (one segment, not counted
                // against it, when it is spent), and never larger than a batch is.
                let left = usize::try_from(self.last_needed + 1 - self.next).unwrap_or(BATCH);
                let want = self.pacer.next_size().min(left.min(BATCH) * SEGMENT);
                let grant = pool::shared().grant_at_least(SEGMENT, want);
                let segments = (grant.size() / SEGMENT).clamp(1, BATCH) as u64;
                Batch {
                    out: pool::shared().buffer(grant),
                    end: (self.next + segments).min(self.last_needed + 1),
                    opened: 0,
                    body: 0,
                    tag: [0; TAG],
                    tag_len: 0,
                }
            }
        };
        loop {
            let piece = if self.carry.is_empty() {
                match self.inner.as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(piece))) => piece,
                    // A source that says it ended early was cut short: truncated, like an end.
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Some(Err(match e.kind() {
                            std::io::ErrorKind::UnexpectedEof => CryptoError::Tampered,
                            _ => CryptoError::Io(e),
                        })));
                    }
                    // The blob ended before the segments the row promises: truncated.
                    Poll::Ready(None) => return Poll::Ready(Some(Err(CryptoError::Tampered))),
                    Poll::Pending => {
                        self.batch = Some(batch);
                        return Poll::Pending;
                    }
                }
            } else {
                std::mem::take(&mut self.carry)
            };
            let mut rest = &piece[..];
            if self.header_len < HEADER_LEN {
                // Also bound into every tag (AAD), but a changed byte of the stored copy must
                // fail too: "a flipped byte is never served" means any byte.
                let k = (HEADER_LEN - self.header_len).min(rest.len());
                let (head, tail) = rest.split_at(k);
                if let Some(to) = self.header.get_mut(self.header_len..self.header_len + k) {
                    to.copy_from_slice(head);
                }
                self.header_len += k;
                rest = tail;
                if self.header_len == HEADER_LEN && self.header != header() {
                    return Poll::Ready(Some(Err(CryptoError::Tampered)));
                }
            }
            let used = piece.len() - rest.len();
            let used = used + self.open_into(&mut batch, rest)?;
            if self.next == batch.end {
                // What the next batch needs of this piece. A short rest is copied, so that it
                // does not keep the whole read buffer while this batch drains.
                let rest = piece.slice(used..);
                self.carry = if rest.len() * 4 <= piece.len() {
                    Bytes::copy_from_slice(&rest)
                } else {
                    rest
                };
                return Poll::Ready(Some(Ok(self.trim(batch.out.freeze(batch.opened)))));
            }
        }
    }

    /// Open what `data` (the next stored bytes) completes of the batch's segments; the bytes
    /// used (all of them unless the batch is complete). A segment that fails authentication
    /// leaves zeros in its place (the buffer goes back to the pool) and fails the stream.
    fn open_into(&mut self, b: &mut Batch, mut data: &[u8]) -> Result<usize, CryptoError> {
        let total = data.len();
        let last_index = segment_count(self.plain_len) - 1;
        while !data.is_empty() && self.next < b.end {
            let stored = stored_segment_len(self.plain_len, self.next);
            let len = stored - TAG;
            let dst = b
                .out
                .as_mut()
                .get_mut(b.opened..b.opened + len)
                .ok_or_else(|| {
                    CryptoError::Io(std::io::Error::other("decryption buffer too small"))
                })?;
            let (nonce, aad) = (nonce(self.next, self.next == last_index), aad(self.file));
            let whole = (b.body == 0 && b.tag_len == 0)
                .then(|| data.split_at_checked(stored))
                .flatten();
            let opened = if let Some((segment, after)) = whole {
                // Whole in this piece: opened from it.
                data = after;
                let (ct, tag) = segment.split_at(len);
                self.cipher.open_separate_gather(nonce, aad, ct, tag, dst)
            } else {
                // Cut across pieces: gathered into its place, opened there once whole.
                let (body, after) = data.split_at((len - b.body).min(data.len()));
                if let Some(to) = dst.get_mut(b.body..b.body + body.len()) {
                    to.copy_from_slice(body);
                }
                b.body += body.len();
                let (tag, after) = after.split_at((TAG - b.tag_len).min(after.len()));
                if let Some(to) = b.tag.get_mut(b.tag_len..b.tag_len + tag.len()) {
                    to.copy_from_slice(tag);
                }
                b.tag_len += tag.len();
                data = after;
                if b.tag_len < TAG {
                    continue;
                }
                b.body = 0;
                b.tag_len = 0;
                self.cipher
                    .open_in_place_separate_tag(nonce, aad, &b.tag, dst)
                    .map(|_| ())
            };
            if opened.is_err() {
                dst.fill(0);
                return Err(CryptoError::Tampered);
            }
            b.opened += len;
            self.next += 1;
        }
        Ok(total - data.len())
    }

    /// A batch's plaintext cut to the range.
    fn trim(&mut self, mut plain: Bytes) -> Bytes {
        let cut = std::mem::take(&mut self.skip).min(plain.len());
        plain = plain.slice(cut..);
        let take = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(plain.len());
        plain.truncate(take);
        self.remaining -= take as u64;
        plain
    }
}

impl Stream for Opener {
    type Item = Result<Bytes, CryptoError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if !this.pending.is_empty() {
                // A slow reader gets small pieces: what the HTTP layer queues for the socket
                // then pins less of the segment's buffer.
                let n = if this.pacer.slow() {
                    pool::MIN_CHUNK.min(this.pending.len())
                } else {
                    this.pending.len()
                };
                let out = this.pending.split_to(n);
                this.pacer.handed(out.len());
                return Poll::Ready(Some(Ok(out)));
            }
            match ready!(this.poll_open(cx)) {
                Some(Ok(plain)) => this.pending = plain,
                Some(Err(e)) => {
                    // Nothing after the first failure.
                    this.done = true;
                    this.batch = None;
                    this.carry = Bytes::new();
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    this.carry = Bytes::new();
                    return Poll::Ready(None);
                }
            }
        }
    }
}

fn stored_segment_len(plain_len: u64, index: u64) -> usize {
    let plain = plain_len
        .saturating_sub(index * SEGMENT as u64)
        .min(SEGMENT as u64);
    usize::try_from(plain).unwrap_or(SEGMENT) + TAG
}

/// The whole plaintext of a sealed blob read in one piece (a small file): its header checked
/// and every segment authenticated, as [`Opener`] does, on the calling thread.
pub fn open_all(
    key: &DataKey,
    file: FileId,
    plain_len: u64,
    stored: Bytes,
) -> Result<Bytes, CryptoError> {
    if stored.len() as u64 != sealed_len(plain_len) || stored.get(..HEADER_LEN) != Some(&header()) {
        return Err(CryptoError::Tampered);
    }
    let len = usize::try_from(plain_len)
        .map_err(|_| CryptoError::Io(std::io::Error::other("too large to open in memory")))?;
    let cipher = key.cipher()?;
    let last_index = segment_count(plain_len) - 1;
    let mut out = vec![0u8; len];
    // The length check above makes the stored segments and the plaintext's places pair up
    // one to one (the zip below skips nothing).
    let sealed = stored.get(HEADER_LEN..).unwrap_or_default();
    let segments = sealed.chunks(SEGMENT + TAG);
    for ((index, segment), dst) in (0..).zip(segments).zip(out.chunks_mut(SEGMENT)) {
        let (ct, tag) = segment.split_at(segment.len().saturating_sub(TAG));
        let (nonce, aad) = (nonce(index, index == last_index), aad(file));
        cipher
            .open_separate_gather(nonce, aad, ct, tag, dst)
            .map_err(|_| CryptoError::Tampered)?;
    }
    if len == 0 {
        // The one, empty, final segment: its tag still authenticates.
        cipher
            .open_separate_gather(nonce(0, true), aad(file), &[], sealed, &mut [])
            .map_err(|_| CryptoError::Tampered)?;
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use proptest::prelude::*;

    fn seal(key: &DataKey, file: FileId, data: &[u8], chunk: usize) -> Vec<u8> {
        let mut s = Sealer::new(key, file).unwrap();
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
        open_read_in(key, file, blob, plain_len, start, end, 5000)
    }

    /// Like [`open`], the stored bytes arriving in pieces of `piece` bytes (a segment that
    /// straddles two pieces is gathered; one inside a piece is opened where it lies).
    fn open_read_in(
        key: &DataKey,
        file: FileId,
        blob: &[u8],
        plain_len: u64,
        start: u64,
        end: u64,
        piece: usize,
    ) -> Result<Vec<u8>, CryptoError> {
        let (off, len, _) = cipher_span(plain_len, start, end);
        let mut slice = blob[..HEADER_LEN.min(blob.len())].to_vec();
        slice.extend_from_slice(
            blob.get(off as usize..(off + len) as usize)
                .unwrap_or(&blob[(off as usize).min(blob.len())..]),
        );
        let inner: CipherStream = Box::pin(futures_util::stream::iter(
            slice
                .chunks(piece)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        ));
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let mut o = Opener::new(inner, key, file, plain_len, start, end)?;
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

    #[test]
    fn the_format_is_standard_aes_256_gcm() {
        // Sealed by Python's `cryptography` (OpenSSL), not by this code: header, then the one
        // final segment (nonce 0^7 || be32(0) || 1; AAD the header and the file id).
        let key = DataKey::from_bytes(std::array::from_fn(|i| i as u8));
        let file = FileId(uuid::Uuid::from_u128(
            0x0011_2233_4455_6677_8899_aabb_ccdd_eeff,
        ));
        let plain = b"coffer sealed format v1";
        let expected = hex::decode(
            "434f464645525331000100000000000076b9d99a2186106d6b4f3d5c88865c98\
             67f27d2044c465973d214a7d908281f05a4c94463e4c81",
        )
        .unwrap();
        assert_eq!(seal(&key, file, plain, 7), expected);
        let n = plain.len() as u64;
        assert_eq!(open(&key, file, &expected, n, 0, n).unwrap(), plain);
    }

    #[test]
    fn a_small_blob_opened_whole_is_checked_like_a_streamed_one() {
        let key = DataKey::generate();
        let file = FileId::new();
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let n = data.len() as u64;
        let blob = seal(&key, file, &data, 333);
        let whole = open_all(&key, file, n, Bytes::from(blob.clone())).unwrap();
        assert_eq!(&whole[..], &data[..]);
        let mut flipped = blob.clone();
        flipped[HEADER_LEN + 4000] ^= 1;
        let mut header = blob.clone();
        header[0] ^= 1;
        let short = blob[..blob.len() - 1].to_vec();
        for bad in [flipped, header, short] {
            let r = open_all(&key, file, n, Bytes::from(bad));
            assert!(matches!(r, Err(CryptoError::Tampered)), "{r:?}");
        }
        let moved = open_all(&key, FileId::new(), n, Bytes::from(blob));
        assert!(matches!(moved, Err(CryptoError::Tampered)));

        // An empty file: its one final segment is a tag, checked all the same.
        let empty = seal(&key, file, b"", 1);
        assert_eq!(
            open_all(&key, file, 0, Bytes::from(empty.clone())).unwrap(),
            b""[..]
        );
        let mut tag = empty.clone();
        tag[HEADER_LEN + 3] ^= 1;
        for (id, bad) in [(file, tag), (FileId::new(), empty)] {
            let r = open_all(&key, id, 0, Bytes::from(bad));
            assert!(matches!(r, Err(CryptoError::Tampered)), "{r:?}");
        }
    }

    #[test]
    fn segments_open_wherever_the_read_buffers_cut_them() {
        let key = DataKey::generate();
        let file = FileId::new();
        let data: Vec<u8> = (0..(5 * SEGMENT + 123))
            .map(|i| (i * 7 % 256) as u8)
            .collect();
        let blob = seal(&key, file, &data, 4096);
        let n = data.len() as u64;
        // Whole segments inside one buffer, segments cut by every buffer, and a mix.
        for piece in [
            1,
            16,
            SEGMENT + TAG,
            SEGMENT,
            3 * (SEGMENT + TAG) + 16,
            1 << 20,
        ] {
            let got = open_read_in(&key, file, &blob, n, 0, n, piece).unwrap();
            assert!(got == data, "pieces of {piece} bytes");
            // A byte of a segment's body, of its tag (the last one), of the header.
            for at in [
                HEADER_LEN + 2 * (SEGMENT + TAG) + 5,
                HEADER_LEN + 3 * (SEGMENT + TAG) - 1,
                9,
            ] {
                let mut flipped = blob.clone();
                flipped[at] ^= 1;
                assert!(
                    matches!(
                        open_read_in(&key, file, &flipped, n, 0, n, piece),
                        Err(CryptoError::Tampered)
                    ),
                    "pieces of {piece} bytes, byte {at} flipped"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn every_range_decrypts_to_the_plaintext(len in 0usize..300_000, a in any::<u64>(), b in any::<u64>(), chunk in 1usize..100_000, piece in 1usize..200_000) {
            let key = DataKey::generate();
            let file = FileId::new();
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
            let blob = seal(&key, file, &data, chunk);
            prop_assert_eq!(blob.len() as u64, sealed_len(len as u64));
            let n = len as u64;
            let (start, end) = if n == 0 { (0, 0) } else {
                let s = a % n; let e = s + 1 + b % (n - s); (s, e)
            };
            let got = open_read_in(&key, file, &blob, n, start, end, piece).unwrap();
            prop_assert_eq!(&got[..], &data[start as usize..end as usize]);
        }
    }
}
