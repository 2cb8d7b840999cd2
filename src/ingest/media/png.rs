//! PNG (ISO/IEC 15948, W3C PNG third edition; APNG): size from IHDR, metadata removed by
//! dropping whole chunks.
//!
//! Kept: every critical chunk (IHDR, PLTE, IDAT, IEND, and any other whose name starts with
//! an upper-case letter: a decoder must see those), and the ancillary chunks that say how to
//! show the pixels: tRNS, cHRM, gAMA, iCCP, sBIT, sRGB, cICP, mDCV, cLLI, bKGD, hIST, pHYs,
//! sPLT, and APNG's acTL, fcTL, fdAT. Dropped: tEXt, zTXt, iTXt (comments, XMP, IPTC raw
//! profiles), eXIf, tIME, every other ancillary chunk (private ones such as C2PA's `caBX`
//! carry metadata too, and no decoder needs an ancillary chunk it does not know), and
//! anything after IEND. An eXIf before the first IDAT (the only place viewers read it) whose
//! Orientation is not 1 becomes an eXIf holding that tag alone, with its CRC.
//!
//! Invariant: buffered at most a chunk header, IHDR (13 bytes) or the first
//! [`exif::PREFIX`] bytes of an eXIf; chunk payloads otherwise stream through untouched
//! (their CRCs with them, so kept chunks stay byte-identical).

use super::io::{Input, Out, be32};
use super::{Dimensions, MediaError, check, exif};

const SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// Ancillary chunks kept when stripping.
const KEPT_ANCILLARY: &[&[u8; 4]] = &[
    b"tRNS", b"cHRM", b"gAMA", b"iCCP", b"sBIT", b"sRGB", b"cICP", b"mDCV", b"cLLI", b"bKGD",
    b"hIST", b"pHYs", b"sPLT", b"acTL", b"fcTL", b"fdAT",
];

/// Longest chunk payload the format allows (2^31 - 1).
const MAX_CHUNK: u32 = 0x7FFF_FFFF;

pub(crate) struct Png {
    state: State,
    buf: Vec<u8>,
    max_pixels: u64,
    strip: bool,
    dims: Option<Dimensions>,
    seen_idat: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Signature,
    /// Length and type of the next chunk.
    ChunkHead,
    /// IHDR's 13 bytes and CRC.
    Ihdr,
    /// The first bytes of an eXIf of `len` bytes.
    Exif {
        len: u32,
    },
    /// Pass `left` bytes through (rest of a payload, then its CRC), then `next`.
    Copy {
        left: u64,
        end: bool,
    },
    /// Drop `left` bytes, then a chunk.
    Skip {
        left: u64,
    },
    /// After IEND.
    Trailer,
    /// Dimensions checked, nothing to rewrite.
    Done,
}

impl Png {
    pub(crate) fn new(max_pixels: u64, strip: bool) -> Self {
        Self {
            state: State::Signature,
            buf: Vec::new(),
            max_pixels,
            strip,
            dims: None,
            seen_idat: false,
        }
    }

    pub(crate) fn update(
        &mut self,
        input: &mut Input,
        out: &mut Out<'_>,
    ) -> Result<(), MediaError> {
        while !input.is_empty() {
            self.state = match self.state {
                State::Signature => {
                    if !input.fill(&mut self.buf, 8) {
                        return Ok(());
                    }
                    if self.buf != SIGNATURE {
                        return Err(MediaError::Unreadable("not a PNG stream"));
                    }
                    out.copy(SIGNATURE);
                    self.buf.clear();
                    State::ChunkHead
                }
                State::ChunkHead => {
                    if !input.fill(&mut self.buf, 8) {
                        return Ok(());
                    }
                    self.chunk(out)?
                }
                State::Ihdr => {
                    if !input.fill(&mut self.buf, 8 + 13 + 4) {
                        return Ok(());
                    }
                    let (Some(w), Some(h)) = (be32(&self.buf, 8), be32(&self.buf, 12)) else {
                        return Err(MediaError::Unreadable("a PNG IHDR is too short"));
                    };
                    if w > MAX_CHUNK || h > MAX_CHUNK {
                        return Err(MediaError::Unreadable("a PNG dimension is out of range"));
                    }
                    self.dims = Some(check(w, h, self.max_pixels)?);
                    out.copy(&self.buf);
                    self.buf.clear();
                    if self.strip {
                        State::ChunkHead
                    } else {
                        State::Done
                    }
                }
                State::Exif { len } => {
                    let want = 8 + usize::try_from(len).unwrap_or(usize::MAX).min(exif::PREFIX);
                    if !input.fill(&mut self.buf, want) {
                        return Ok(());
                    }
                    if let Some(o) = self
                        .buf
                        .get(8..)
                        .and_then(|t| exif::kept_orientation(t, len.into()))
                    {
                        out.copy(&minimal_exif_chunk(o));
                    }
                    let read = self.buf.len() as u64 - 8;
                    self.buf.clear();
                    State::Skip {
                        left: u64::from(len) - read + 4,
                    }
                }
                State::Copy { mut left, end } => {
                    input.copy(&mut left, out);
                    match (left, end) {
                        (0, true) => State::Trailer,
                        (0, false) => State::ChunkHead,
                        _ => State::Copy { left, end },
                    }
                }
                State::Skip { mut left } => {
                    input.skip(&mut left);
                    if left == 0 {
                        State::ChunkHead
                    } else {
                        State::Skip { left }
                    }
                }
                State::Trailer | State::Done => {
                    input.advance(usize::MAX);
                    self.state
                }
            };
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<Dimensions, MediaError> {
        let dims = self.dims.ok_or(MediaError::Unreadable(
            "the PNG stream ends before its IHDR",
        ))?;
        match self.state {
            State::Trailer | State::Done => Ok(dims),
            _ => Err(MediaError::Unreadable("the PNG stream is cut short")),
        }
    }

    /// A chunk header (`self.buf`, 8 bytes) has been read.
    fn chunk(&mut self, out: &mut Out<'_>) -> Result<State, MediaError> {
        let len = be32(&self.buf, 0).unwrap_or(u32::MAX);
        let mut kind = [0u8; 4];
        kind.copy_from_slice(self.buf.get(4..8).unwrap_or(&[0; 4]));
        if len > MAX_CHUNK || !kind.iter().all(u8::is_ascii_alphabetic) {
            return Err(MediaError::Unreadable("a malformed PNG chunk header"));
        }
        if self.dims.is_none() {
            if &kind != b"IHDR" || len != 13 {
                return Err(MediaError::Unreadable("a PNG stream must start with IHDR"));
            }
            return Ok(State::Ihdr);
        }
        let payload = u64::from(len) + 4;
        match &kind {
            b"IHDR" => return Err(MediaError::Unreadable("a second PNG IHDR")),
            b"IDAT" => self.seen_idat = true,
            b"eXIf" if !self.seen_idat => {
                return Ok(State::Exif { len });
            }
            _ => {}
        }
        let keep = kind[0].is_ascii_uppercase() || KEPT_ANCILLARY.contains(&&kind);
        if !keep {
            self.buf.clear();
            return Ok(State::Skip { left: payload });
        }
        out.copy(&self.buf);
        self.buf.clear();
        Ok(State::Copy {
            left: payload,
            end: &kind == b"IEND",
        })
    }
}

/// An eXIf chunk holding only an Orientation, CRC included.
fn minimal_exif_chunk(orientation: u16) -> Vec<u8> {
    let tiff = exif::minimal(orientation);
    let mut c = (tiff.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(b"eXIf");
    c.extend_from_slice(&tiff);
    let crc = crc32(c.get(4..).unwrap_or_default());
    c.extend_from_slice(&crc.to_be_bytes());
    c
}

/// CRC-32 (ISO 3309, as PNG uses it) of a chunk's type and data; a bitwise loop is enough for
/// the one 30-byte chunk per image it is used on.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32_matches_the_png_reference() {
        // The IEND chunk's CRC, fixed by the format.
        assert_eq!(super::crc32(b"IEND"), 0xAE42_6082);
    }
}
