//! Bounds on the parts of a multipart body that a parser must hold in memory: the preamble
//! before the first boundary, and each boundary line with its part headers. Only part bodies
//! stream; these stretches are buffered whole until their end marker arrives, so without a
//! bound one request could make the server hold (and rescan) up to the whole upload limit.
//!
//! Invariant: the guard tracks the body with the same markers, in the same order, as the
//! multipart parser (`multer`): first `--boundary`, then the end of that line, then the blank
//! line ending the headers, then `\r\n--boundary` ending the part body. Every stretch but a
//! part body is at most [`HEAD_LIMIT`] bytes, else the stream fails with
//! [`BodyError::Framing`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use memchr::memmem;

use super::idle::BodyError;

/// The longest preamble, or boundary line plus part headers, accepted.
pub const HEAD_LIMIT: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the first `--boundary`.
    Preamble,
    /// After a boundary, up to the end of its line.
    BoundaryLine,
    /// Part headers, up to the blank line.
    Headers,
    /// A part body, up to `\r\n--boundary`.
    Body,
    /// After the closing `--boundary--`: the parser is done, the rest passes.
    Epilogue,
}

/// Wraps a multipart body stream; see the module docs.
pub struct MultipartFraming<S> {
    inner: S,
    stage: Stage,
    /// `--boundary` and `\r\n--boundary`.
    delimiter: Vec<u8>,
    /// Bytes seen in the current stage.
    seen: usize,
    /// The last bytes of the current stage, for a marker split between chunks.
    carry: Vec<u8>,
    /// The first two bytes after a boundary (`--` closes the form).
    line_start: Vec<u8>,
}

impl<S> MultipartFraming<S> {
    /// Guard `inner`, a body whose boundary is `boundary`.
    pub fn new(inner: S, boundary: &str) -> Self {
        Self {
            inner,
            stage: Stage::Preamble,
            delimiter: [b"\r\n--", boundary.as_bytes()].concat(),
            seen: 0,
            carry: Vec::new(),
            line_start: Vec::new(),
        }
    }

    fn marker(&self) -> &[u8] {
        match self.stage {
            Stage::Preamble => self.delimiter.get(2..).unwrap_or_default(),
            Stage::BoundaryLine => b"\r\n",
            Stage::Epilogue => b"",
            Stage::Headers => b"\r\n\r\n",
            Stage::Body => &self.delimiter,
        }
    }

    /// Follow the stages through one chunk.
    fn scan(&mut self, mut chunk: &[u8]) -> Result<(), BodyError> {
        while !chunk.is_empty() && self.stage != Stage::Epilogue {
            if self.stage == Stage::BoundaryLine && self.line_start.len() < 2 {
                let take = chunk.get(..(2 - self.line_start.len()).min(chunk.len()));
                self.line_start.extend_from_slice(take.unwrap_or_default());
                if self.line_start == b"--" {
                    self.stage = Stage::Epilogue;
                    break;
                }
            }
            let marker = self.marker();
            let (found, tail) = (
                find_across(&self.carry, chunk, marker),
                marker.len().saturating_sub(1),
            );
            let used = found.unwrap_or(chunk.len());
            self.seen = self.seen.saturating_add(used);
            if self.stage != Stage::Body && self.seen > HEAD_LIMIT {
                return Err(BodyError::Framing);
            }
            let (done, rest) = chunk.split_at(used);
            match found {
                Some(_) => {
                    self.stage = match self.stage {
                        Stage::Preamble | Stage::Body => Stage::BoundaryLine,
                        Stage::BoundaryLine => Stage::Headers,
                        Stage::Headers => Stage::Body,
                        Stage::Epilogue => Stage::Epilogue,
                    };
                    self.seen = 0;
                    self.carry.clear();
                    self.line_start.clear();
                }
                None => keep_tail(&mut self.carry, done, tail),
            }
            chunk = rest;
        }
        Ok(())
    }
}

/// Where `marker` ends in `chunk` (how many bytes of it are used), when it ends there:
/// either wholly inside it, or begun in `carry` (the previous bytes of the same stage).
fn find_across(carry: &[u8], chunk: &[u8], marker: &[u8]) -> Option<usize> {
    if !carry.is_empty() {
        // A marker that starts in the carry ends within the chunk's first marker.len() - 1 bytes.
        let head = chunk.get(..marker.len().saturating_sub(1).min(chunk.len()))?;
        let window = [carry, head].concat();
        if let Some(at) = memmem::find(&window, marker) {
            return Some(at + marker.len() - carry.len());
        }
    }
    memmem::find(chunk, marker).map(|at| at + marker.len())
}

/// Keep the last `n` bytes of `carry` followed by `more`.
fn keep_tail(carry: &mut Vec<u8>, more: &[u8], n: usize) {
    carry.extend_from_slice(more.get(more.len().saturating_sub(n)..).unwrap_or_default());
    let excess = carry.len().saturating_sub(n);
    carry.drain(..excess);
}

impl<S> Stream for MultipartFraming<S>
where
    S: Stream<Item = Result<Bytes, BodyError>> + Unpin,
{
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => Poll::Ready(Some(this.scan(&chunk).map(|()| chunk))),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan_in_pieces(body: &[u8], split: usize) -> Result<Stage, BodyError> {
        let mut g = MultipartFraming::new(
            futures_util::stream::empty::<Result<Bytes, BodyError>>(),
            "XyZ",
        );
        for piece in body.chunks(split.max(1)) {
            g.scan(piece)?;
        }
        Ok(g.stage)
    }

    const FORM: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\nDATA\r\n--XyZ\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--XyZ--\r\n";

    #[test]
    fn a_normal_form_passes_in_any_chunking() {
        for split in [1, 2, 3, 5, 7, 64, 4096] {
            // After the closing `--XyZ--`: the epilogue, which passes whatever its length.
            assert_eq!(
                scan_in_pieces(FORM, split).unwrap(),
                Stage::Epilogue,
                "split {split}"
            );
        }
    }

    #[test]
    fn long_preambles_and_headers_fail_long_bodies_do_not() {
        let preamble = [vec![b'p'; HEAD_LIMIT + 1], FORM.to_vec()].concat();
        assert!(matches!(
            scan_in_pieces(&preamble, 1000),
            Err(BodyError::Framing)
        ));
        let header = format!("--XyZ\r\nX-Pad: {}\r\n\r\n", "h".repeat(HEAD_LIMIT));
        assert!(matches!(
            scan_in_pieces(header.as_bytes(), 999),
            Err(BodyError::Framing)
        ));
        // A blank line right after the boundary line starts the headers; it does not end them
        // (as in the parser), so it cannot smuggle header bytes into a part body.
        let smuggle = [b"--XyZ\r\n\r\n".to_vec(), vec![b'h'; HEAD_LIMIT + 1]].concat();
        assert!(matches!(
            scan_in_pieces(&smuggle, 4096),
            Err(BodyError::Framing)
        ));
        let body = [
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
                .to_vec(),
            vec![b'd'; 10 * HEAD_LIMIT],
            b"\r\n--XyZ--".to_vec(),
        ]
        .concat();
        assert!(scan_in_pieces(&body, 1500).is_ok());
        // Whatever follows the closing delimiter passes, however long.
        let epilogue = [FORM.to_vec(), vec![b'e'; 4 * HEAD_LIMIT]].concat();
        assert_eq!(scan_in_pieces(&epilogue, 777).unwrap(), Stage::Epilogue);
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_outcome(cut in 1usize..200, pad in 0usize..40) {
            let body = [vec![b'-'; pad], FORM.to_vec()].concat();
            let whole = scan_in_pieces(&body, body.len()).map_err(|e| e.to_string());
            let split = scan_in_pieces(&body, cut).map_err(|e| e.to_string());
            prop_assert_eq!(whole, split);
        }
    }
}
