//! WebP (RIFF container, RFC 9649): size from VP8X, VP8 or VP8L (and each ANMF frame),
//! metadata removed by dropping chunks.
//!
//! Kept: VP8X (its EXIF and XMP flags cleared), VP8, VP8L, ALPH, ICCP, ANIM, ANMF. Dropped:
//! EXIF, XMP, every unknown chunk, and anything after the RIFF's declared end. Orientation is
//! not kept: a WebP's EXIF comes after the image data, where CSS Images 3 says viewers ignore
//! it (and Firefox and Chrome do), so it never turned the picture.
//!
//! The catch: the RIFF header's size field comes first, and the stripped size is known only
//! at the end (EXIF and XMP sit after the pixels). Two ways out, picked per file:
//! - **look-ahead** (VP8X announces EXIF or XMP): the output is held, up to [`HOLD_BYTES`],
//!   and the header written with the true size at the end; such a file comes out smaller by
//!   exactly the dropped chunks;
//! - **in place** (no metadata announced, or the look-ahead overflows): the header goes out
//!   with the size known so far, and every chunk dropped later is replaced by a `JUNK` chunk of
//!   the same size, zero-filled (RIFF's padding chunk, skipped by every reader as unknown), so
//!   the size stays right without looking ahead. The metadata is gone; its length is not.
//!
//! A two-pass over the staged blob was the alternative: it needs the plaintext back from a
//! sealed, possibly remote blob and a second write, for a few percent of uploads whose
//! metadata sits behind more than [`HOLD_BYTES`] of pixels.
//!
//! Invariant: memory is a chunk header and the first 12 payload bytes, plus, only while a
//! look-ahead runs, at most [`HOLD_BYTES`] (plus one input chunk) of held output.

use bytes::Bytes;

use super::io::{Input, Out, le16, le24, le32};
use super::{Dimensions, MediaError, check};

/// Output held back to write an exact RIFF size: 4 MiB holds a typical 12-megapixel photo's
/// lossy WebP whole (1-3 MB), and costs that per concurrent upload of a WebP with metadata.
pub const HOLD_BYTES: usize = 4 << 20;

/// VP8X flags.
const FLAG_EXIF: u8 = 0x08;
const FLAG_XMP: u8 = 0x04;

static ZEROS: [u8; 16 * 1024] = [0; 16 * 1024];

pub(crate) struct Webp {
    state: State,
    buf: Vec<u8>,
    max_pixels: u64,
    strip: bool,
    hold_limit: usize,
    dims: Option<Dimensions>,
    /// The RIFF size field as received.
    riff_size: u32,
    /// RIFF payload bytes not yet read as chunk headers.
    left: u64,
    /// Bytes dropped so far (chunks the look-ahead removed).
    removed: u64,
    /// The held output (after the 12-byte header), while the look-ahead runs.
    hold: Option<Vec<Bytes>>,
    hold_len: usize,
    /// Whether the RIFF header has been written.
    header_out: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Riff,
    ChunkHead,
    /// The first `need` payload bytes of a chunk (header in `buf`).
    Head {
        kind: [u8; 4],
        padded: u64,
        need: usize,
    },
    Copy {
        left: u64,
    },
    Skip {
        left: u64,
    },
    /// A dropped chunk written as zeros (its JUNK header already out).
    Zero {
        left: u64,
    },
    Trailer,
    Done,
}

impl Webp {
    pub(crate) fn new(max_pixels: u64, strip: bool, hold_limit: usize) -> Self {
        Self {
            state: State::Riff,
            buf: Vec::new(),
            max_pixels,
            strip,
            hold_limit,
            dims: None,
            riff_size: 0,
            left: 0,
            removed: 0,
            hold: None,
            hold_len: 0,
            header_out: false,
        }
    }

    pub(crate) fn update(
        &mut self,
        input: &mut Input,
        out: &mut Out<'_>,
    ) -> Result<(), MediaError> {
        while !input.is_empty() {
            self.state = match self.state {
                State::Riff => {
                    if !input.fill(&mut self.buf, 12) {
                        return Ok(());
                    }
                    let size = le32(&self.buf, 4).unwrap_or(0);
                    if self.buf.get(..4) != Some(b"RIFF")
                        || self.buf.get(8..12) != Some(b"WEBP")
                        || size < 4 + 8
                    {
                        return Err(MediaError::Unreadable("not a WebP stream"));
                    }
                    self.riff_size = size;
                    self.left = u64::from(size) - 4;
                    self.buf.clear();
                    State::ChunkHead
                }
                State::ChunkHead => {
                    if !input.fill(&mut self.buf, 8) {
                        return Ok(());
                    }
                    self.chunk(out)?
                }
                State::Head { kind, padded, need } => {
                    if !input.fill(&mut self.buf, 8 + need) {
                        return Ok(());
                    }
                    self.head(kind, padded, need, out)?
                }
                State::Copy { mut left } => {
                    let b = input.slice(usize::try_from(left).unwrap_or(usize::MAX));
                    left -= b.len() as u64;
                    self.put(b, out);
                    self.after(left, |left| State::Copy { left })
                }
                State::Skip { mut left } => {
                    input.skip(&mut left);
                    self.after(left, |left| State::Skip { left })
                }
                State::Zero { mut left } => {
                    let n = input
                        .rest()
                        .len()
                        .min(ZEROS.len())
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    input.advance(n);
                    left -= n as u64;
                    self.put(Bytes::from_static(ZEROS.get(..n).unwrap_or_default()), out);
                    self.after(left, |left| State::Zero { left })
                }
                State::Trailer | State::Done => {
                    input.advance(usize::MAX);
                    self.state
                }
            };
        }
        Ok(())
    }

    pub(crate) fn finish(mut self, out: &mut Out<'_>) -> Result<Dimensions, MediaError> {
        let dims = self.dims.ok_or(MediaError::Unreadable(
            "the WebP stream ends before its image header",
        ))?;
        match self.state {
            State::Trailer | State::Done => {}
            _ => return Err(MediaError::Unreadable("the WebP stream is cut short")),
        }
        if let Some(held) = self.hold.take() {
            // The look-ahead held everything: the exact size.
            out.copy(&riff_header(4 + self.hold_len as u64));
            held.into_iter().for_each(|b| out.bytes(b));
        }
        Ok(dims)
    }

    /// The state after a chunk's bytes: the next chunk, or the end of the RIFF.
    fn after(&self, left: u64, more: impl FnOnce(u64) -> State) -> State {
        match (left, self.left) {
            (0, 0) => State::Trailer,
            (0, _) => State::ChunkHead,
            (left, _) => more(left),
        }
    }

    /// A chunk header (`buf`, 8 bytes) has been read.
    fn chunk(&mut self, out: &mut Out<'_>) -> Result<State, MediaError> {
        let kind = super::io::array::<4>(&self.buf, 0).unwrap_or_default();
        let size = u64::from(le32(&self.buf, 4).unwrap_or(u32::MAX));
        // A last chunk may miss its pad byte; nothing may run past the RIFF.
        if 8 + size > self.left {
            return Err(MediaError::Unreadable(
                "a WebP chunk runs past its container",
            ));
        }
        let padded = (size + (size & 1)).min(self.left - 8);
        self.left -= 8 + padded;
        let first = self.dims.is_none();
        let need = match &kind {
            b"VP8X" if first => 10,
            b"VP8 " => 10,
            b"VP8L" => 5,
            b"ANMF" if !first => 12,
            _ if first => {
                return Err(MediaError::Unreadable(
                    "a WebP stream must start with VP8, VP8L or VP8X",
                ));
            }
            b"VP8X" => return Err(MediaError::Unreadable("a second WebP VP8X")),
            b"ALPH" | b"ICCP" | b"ANIM" => 0,
            _ => return Ok(self.drop_chunk(padded, out)),
        };
        if size < need as u64 {
            return Err(MediaError::Unreadable("a WebP image header is too short"));
        }
        if need == 0 {
            // Nothing more to read first: go on now, since the stream may end right here.
            return self.head(kind, padded, 0, out);
        }
        Ok(State::Head { kind, padded, need })
    }

    /// A chunk's header and first `need` bytes (`buf`) have been read.
    fn head(
        &mut self,
        kind: [u8; 4],
        padded: u64,
        need: usize,
        out: &mut Out<'_>,
    ) -> Result<State, MediaError> {
        let mut head = std::mem::take(&mut self.buf);
        let p = head.get(8..).unwrap_or_default();
        let (w, h) = match &kind {
            b"VP8X" => (le24(p, 4).map(|w| w + 1), le24(p, 7).map(|h| h + 1)),
            b"VP8 " => {
                let keyframe = p.first().is_some_and(|t| t & 1 == 0)
                    && p.get(3..6) == Some(&[0x9d, 0x01, 0x2a]);
                if !keyframe {
                    return Err(MediaError::Unreadable(
                        "a WebP VP8 chunk is not a key frame",
                    ));
                }
                (
                    le16(p, 6).map(|w| u32::from(w & 0x3fff)),
                    le16(p, 8).map(|h| u32::from(h & 0x3fff)),
                )
            }
            b"VP8L" => {
                let bits = le32(p, 1).filter(|_| p.first() == Some(&0x2f));
                (
                    bits.map(|b| (b & 0x3fff) + 1),
                    bits.map(|b| ((b >> 14) & 0x3fff) + 1),
                )
            }
            b"ANMF" => (le24(p, 6).map(|w| w + 1), le24(p, 9).map(|h| h + 1)),
            // ALPH, ICCP, ANIM: nothing to measure.
            _ => (None, None),
        };
        let dims = match (w, h, need) {
            (Some(w), Some(h), _) => Some(check(w, h, self.max_pixels)?),
            (_, _, 0) => None,
            _ => return Err(MediaError::Unreadable("a malformed WebP image header")),
        };
        if self.dims.is_none() {
            self.dims = dims;
            if !self.strip {
                return Ok(State::Done);
            }
            let flags = head.get(8).copied().unwrap_or(0);
            let metadata = &kind == b"VP8X" && flags & (FLAG_EXIF | FLAG_XMP) != 0;
            if &kind == b"VP8X"
                && let Some(f) = head.get_mut(8)
            {
                *f &= !(FLAG_EXIF | FLAG_XMP);
            }
            if metadata {
                self.hold = Some(Vec::new());
            } else {
                self.flush(out);
            }
        }
        self.put(Bytes::from(std::mem::take(&mut head)), out);
        Ok(self.after(padded - need as u64, |left| State::Copy { left }))
    }

    /// A chunk that is not stored: gone from a look-ahead, zeroed in place otherwise.
    fn drop_chunk(&mut self, padded: u64, out: &mut Out<'_>) -> State {
        self.buf.clear();
        if self.hold.is_some() {
            self.removed += 8 + padded;
            return self.after(padded, |left| State::Skip { left });
        }
        let mut junk = *b"JUNK\0\0\0\0";
        junk[4..].copy_from_slice(&u32::try_from(padded).unwrap_or(0).to_le_bytes());
        self.put(Bytes::copy_from_slice(&junk), out);
        self.after(padded, |left| State::Zero { left })
    }

    /// Store `b` (held while the look-ahead runs; its overflow ends the look-ahead).
    fn put(&mut self, b: Bytes, out: &mut Out<'_>) {
        match &mut self.hold {
            Some(held) => {
                self.hold_len += b.len();
                held.push(b);
                if self.hold_len > self.hold_limit {
                    self.flush(out);
                }
            }
            None => out.bytes(b),
        }
    }

    /// Write the header with the size known now, and what was held; from here on dropped
    /// chunks are zeroed in place.
    fn flush(&mut self, out: &mut Out<'_>) {
        if !self.header_out {
            self.header_out = true;
            out.copy(&riff_header(u64::from(self.riff_size) - self.removed));
        }
        for b in self.hold.take().unwrap_or_default() {
            out.bytes(b);
        }
    }
}

fn riff_header(size: u64) -> [u8; 12] {
    let mut h = *b"RIFF\0\0\0\0WEBP";
    h[4..8].copy_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_le_bytes());
    h
}
