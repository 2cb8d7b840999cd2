//! Whether the bytes a metadata-stripping walker keeps are exactly the bytes it received,
//! found without hashing them a second time.
//!
//! The walkers (`media`) keep bytes as zero-copy slices of their input, so a kept piece is
//! almost always recognised by its address alone; anything else (a header the walker copied
//! and handed back) is compared byte for byte, and those are small.
//!
//! Invariant: "the same" is only ever concluded when every kept byte matched the received
//! byte at its place and nothing received was left over. A walker that keeps everything lags
//! its input by at most [`LAG_MAX`] bytes (a header it reads whole); received bytes unmatched
//! beyond that were skipped or are held back for a look-ahead that only happens when there is
//! metadata to strip, so the output differs (concluding "changed" by mistake is harmless: the
//! caller takes the slower path that makes no assumption). Memory is bounded by that lag plus
//! one input chunk.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use super::media;

/// The most received bytes a walker that keeps everything holds before handing them on
/// (beside the chunk it was just given): a whole header. (A WebP's look-ahead holds more, but
/// only when it announces metadata, which is then stripped.)
const LAG_MAX: usize = media::HEADER_MAX;

/// Follows received and kept bytes, in order.
#[derive(Debug, Default)]
pub(crate) struct SameBytes {
    /// Received bytes no kept byte has matched yet, oldest first.
    unmatched: VecDeque<Bytes>,
    unmatched_len: usize,
    /// The length of the last chunk received.
    last: usize,
    /// A kept byte differed, or received bytes were skipped.
    differs: bool,
}

impl SameBytes {
    /// Bytes received, before the walker sees them.
    pub(crate) fn received(&mut self, chunk: &Bytes) {
        if !self.differs && !chunk.is_empty() {
            self.last = chunk.len();
            self.unmatched_len += chunk.len();
            self.unmatched.push_back(chunk.clone());
        }
    }

    /// What the walker kept of everything received so far, in order.
    pub(crate) fn kept(&mut self, pieces: &[Bytes]) {
        for piece in pieces {
            self.match_piece(piece);
        }
        if self.unmatched_len > LAG_MAX + self.last {
            self.give_up();
        }
    }

    fn match_piece(&mut self, mut piece: &[u8]) {
        while !self.differs && !piece.is_empty() {
            let Some(front) = self.unmatched.front_mut() else {
                // More kept than received.
                return self.give_up();
            };
            let Some((head, rest)) = piece.split_at_checked(front.len().min(piece.len())) else {
                return self.give_up();
            };
            // The same address is the same bytes; else compare them.
            if front.as_ptr() != head.as_ptr() && front.get(..head.len()) != Some(head) {
                return self.give_up();
            }
            front.advance(head.len());
            self.unmatched_len -= head.len();
            piece = rest;
            if front.is_empty() {
                self.unmatched.pop_front();
            }
        }
    }

    fn give_up(&mut self) {
        self.differs = true;
        self.unmatched.clear();
        self.unmatched_len = 0;
    }

    /// After the last kept bytes: whether the output is exactly the input.
    pub(crate) fn same(&self) -> bool {
        !self.differs && self.unmatched.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::media::{Format, MediaOptions, MediaWalker};
    use proptest::prelude::*;

    /// A PNG of 1 x 1 pixel whose IDAT holds `idat` bytes (no reader here checks its CRC
    /// or inflates it), with a `tEXt` chunk when `text`.
    fn png(idat: usize, text: bool) -> Vec<u8> {
        fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
            let len = u32::try_from(data.len()).unwrap().to_be_bytes();
            [&len[..], kind, data, &[0, 0, 0, 0]].concat()
        }
        let ihdr = [0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0, 0, 0];
        let body: Vec<u8> = (0..idat).map(|i| (i * 7 % 251) as u8).collect();
        [
            &b"\x89PNG\r\n\x1a\n"[..],
            &chunk(b"IHDR", &ihdr),
            &if text {
                chunk(b"tEXt", b"Comment\0at home")
            } else {
                Vec::new()
            },
            &chunk(b"IDAT", &body),
            &chunk(b"IEND", b""),
        ]
        .concat()
    }

    proptest! {
        /// With a real walker, cut anywhere: "the same" exactly when what it kept is what it
        /// received.
        #[test]
        fn same_is_exactly_kept_equals_received(
            idat in 0usize..200_000,
            text in any::<bool>(),
            mut cuts in proptest::collection::vec(0usize..200_100, 0..12),
        ) {
            let input = png(idat, text);
            cuts.retain(|c| *c < input.len());
            cuts.sort_unstable();
            cuts.dedup();
            let opts = MediaOptions { max_pixels: 1 << 20, strip: true };
            let mut walker = MediaWalker::new(Format::Png, opts);
            let mut same = SameBytes::default();
            let mut kept = Vec::new();
            let mut from = 0;
            for end in cuts.into_iter().chain([input.len()]) {
                let chunk = Bytes::copy_from_slice(&input[from..end]);
                from = end;
                let before = kept.len();
                same.received(&chunk);
                walker.update(chunk, &mut kept).unwrap();
                same.kept(&kept[before..]);
            }
            let before = kept.len();
            walker.finish(&mut kept).unwrap();
            same.kept(&kept[before..]);
            prop_assert_eq!(same.same(), kept.concat() == input);
            prop_assert_eq!(same.same(), !text);
        }
    }

    fn run(received: &[&[u8]], kept: &[&[u8]]) -> bool {
        let mut s = SameBytes::default();
        for r in received {
            s.received(&Bytes::copy_from_slice(r));
        }
        let kept: Vec<Bytes> = kept.iter().map(|k| Bytes::copy_from_slice(k)).collect();
        s.kept(&kept);
        s.same()
    }

    #[test]
    fn the_same_bytes_cut_differently_are_the_same() {
        assert!(run(&[b"abc", b"def"], &[b"ab", b"cde", b"f"]));
        assert!(run(&[b"", b"abcdef"], &[b"abcdef", b""]));
        assert!(run(&[], &[]));
    }

    #[test]
    fn dropped_added_or_changed_bytes_differ() {
        assert!(!run(&[b"abcdef"], &[b"abdef"]), "one dropped");
        assert!(!run(&[b"abcdef"], &[b"abcde"]), "the last one dropped");
        assert!(!run(&[b"abc"], &[b"abcd"]), "one added");
        assert!(!run(&[b"abcdef"], &[b"abXdef"]), "one changed");
    }

    #[test]
    fn zero_copy_slices_match_by_address() {
        let mut s = SameBytes::default();
        let input = Bytes::from(vec![7u8; 100_000]);
        s.received(&input);
        s.kept(&[input.slice(..40_000), input.slice(40_000..)]);
        assert!(s.same());
    }

    #[test]
    fn bytes_skipped_beyond_any_walker_lag_are_a_difference_and_not_kept() {
        let mut s = SameBytes::default();
        let big = Bytes::from(vec![1u8; LAG_MAX + 1]);
        s.received(&big);
        s.kept(&[]);
        assert!(
            s.unmatched_len > 0,
            "a walker may hold the chunk it was just given"
        );
        s.received(&Bytes::from_static(b"x"));
        s.kept(&[]);
        assert!(!s.same());
        assert_eq!(s.unmatched.len(), 0, "nothing held once it differs");
        // And nothing is kept from then on.
        s.received(&big);
        assert_eq!(s.unmatched_len, 0);
    }
}
