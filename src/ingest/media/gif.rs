//! GIF 87a/89a: the logical screen and every image descriptor are measured; nothing is
//! rewritten (API.md strips JPEG, PNG and WebP only).
//!
//! Each frame is checked on its own as well as the screen, since a decoder allocates per frame
//! and a small screen may announce a huge frame.
//!
//! Invariant: buffered at most a 9-byte descriptor; colour tables and data sub-blocks are
//! skipped by their lengths.

use super::io::{Input, le16};
use super::{Dimensions, MediaError, check};

pub(crate) struct Gif {
    state: State,
    buf: Vec<u8>,
    max_pixels: u64,
    dims: Option<Dimensions>,
    frames: u64,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Signature and logical screen descriptor (13 bytes).
    Header,
    /// Skip `left` bytes, then a block.
    Skip {
        left: u64,
        then: Then,
    },
    /// The introducer of the next block.
    Block,
    /// An extension's label.
    Label,
    /// An image descriptor's 9 bytes.
    Descriptor,
    /// A sub-block's size byte (0 ends the list).
    SubBlock,
    Trailer,
}

#[derive(Debug, Clone, Copy)]
enum Then {
    Block,
    /// The LZW minimum code size, then sub-blocks.
    ImageData,
    SubBlock,
}

impl Gif {
    pub(crate) fn new(max_pixels: u64) -> Self {
        Self {
            state: State::Header,
            buf: Vec::new(),
            max_pixels,
            dims: None,
            frames: 0,
        }
    }

    pub(crate) fn update(&mut self, input: &mut Input) -> Result<(), MediaError> {
        while !input.is_empty() {
            self.state = match self.state {
                State::Header => {
                    if !input.fill(&mut self.buf, 13) {
                        return Ok(());
                    }
                    if !matches!(self.buf.get(..6), Some(b"GIF87a" | b"GIF89a")) {
                        return Err(MediaError::Unreadable("not a GIF stream"));
                    }
                    let (w, h) = (le16(&self.buf, 6), le16(&self.buf, 8));
                    self.dims = Some(check(
                        w.unwrap_or(0).into(),
                        h.unwrap_or(0).into(),
                        self.max_pixels,
                    )?);
                    let table = color_table(self.buf.get(10).copied());
                    self.buf.clear();
                    State::Skip {
                        left: table,
                        then: Then::Block,
                    }
                }
                State::Skip { mut left, then } => {
                    input.skip(&mut left);
                    match (left, then) {
                        (0, Then::Block) => State::Block,
                        (0, Then::ImageData) => State::Skip {
                            left: 1,
                            then: Then::SubBlock,
                        },
                        (0, Then::SubBlock) => State::SubBlock,
                        _ => State::Skip { left, then },
                    }
                }
                State::Block => match input.byte() {
                    Some(0x21) => State::Label,
                    Some(0x2C) => State::Descriptor,
                    Some(0x3B) => State::Trailer,
                    _ => return Err(MediaError::Unreadable("a malformed GIF block")),
                },
                State::Label => {
                    input.byte();
                    State::SubBlock
                }
                State::Descriptor => {
                    if !input.fill(&mut self.buf, 9) {
                        return Ok(());
                    }
                    let (w, h) = (le16(&self.buf, 4), le16(&self.buf, 6));
                    check(
                        w.unwrap_or(0).into(),
                        h.unwrap_or(0).into(),
                        self.max_pixels,
                    )?;
                    self.frames += 1;
                    let table = color_table(self.buf.get(8).copied());
                    self.buf.clear();
                    State::Skip {
                        left: table,
                        then: Then::ImageData,
                    }
                }
                State::SubBlock => match input.byte() {
                    Some(0) => State::Block,
                    Some(n) => State::Skip {
                        left: n.into(),
                        then: Then::SubBlock,
                    },
                    None => State::SubBlock,
                },
                State::Trailer => {
                    input.advance(usize::MAX);
                    State::Trailer
                }
            };
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<Dimensions, MediaError> {
        match (self.dims, self.frames) {
            (Some(d), 1..) => Ok(d),
            _ => Err(MediaError::Unreadable("the GIF stream holds no image")),
        }
    }
}

/// Bytes of the colour table a packed field announces.
fn color_table(packed: Option<u8>) -> u64 {
    match packed {
        Some(p) if p & 0x80 != 0 => 3 << ((p & 7) + 1),
        _ => 0,
    }
}
