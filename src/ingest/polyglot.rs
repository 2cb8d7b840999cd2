//! Polyglot detection for images and PDFs: a file that is also a ZIP archive (an
//! end-of-central-directory record near its end, where ZIP readers look for it) or that a
//! browser or PHP could take for markup (an HTML or script marker near either end) is refused
//! (API.md "Polyglots"), fed as the upload streams.
//!
//! Invariant: memory is the first [`EDGE`] bytes and a window of the last [`TAIL`] bytes,
//! whatever the file's size; the answer does not depend on how the stream was cut.

/// How far from either end markup markers are looked for.
pub const EDGE: usize = 4 * 1024;
/// How far from the end a ZIP end-of-central-directory record is looked for: 64 KiB, plus the
/// record's own 22 bytes so that one with the longest comment ZIP allows is seen too.
pub const TAIL: usize = 64 * 1024 + 22;

/// Markers, lower-case, matched case-insensitively.
const MARKUP: &[&[u8]] = &[b"<html", b"<script", b"<svg", b"<?php", b"<!doctype html"];
/// The end-of-central-directory signature, `PK\x05\x06`.
const EOCD: &[u8; 4] = b"PK\x05\x06";
/// The record without its comment.
const EOCD_LEN: usize = 22;

/// Why a file is a polyglot (415, `type` ending in `polyglot`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Polyglot {
    /// A markup marker in the first or last [`EDGE`] bytes.
    #[error("the file carries {marker:?} near its {at}")]
    Markup {
        /// The marker found, as listed (lower case).
        marker: &'static str,
        /// `start` or `end`.
        at: &'static str,
    },
    /// A ZIP end-of-central-directory record in the last [`TAIL`] bytes.
    #[error("the file is also a ZIP archive")]
    Zip,
}

/// The streaming check: feed every byte in order, then [`PolyglotScan::finish`].
#[derive(Debug, Default)]
pub struct PolyglotScan {
    head: Vec<u8>,
    /// The stream's last bytes: at most `2 * TAIL`, trimmed to `TAIL` when it grows past.
    tail: Vec<u8>,
}

impl PolyglotScan {
    /// Take the next bytes. Markup in the head is reported as soon as the head is complete.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), Polyglot> {
        if self.head.len() < EDGE {
            let take = (EDGE - self.head.len()).min(bytes.len());
            self.head
                .extend_from_slice(bytes.get(..take).unwrap_or_default());
            if self.head.len() == EDGE {
                markup(&self.head, "start")?;
            }
        }
        if bytes.len() >= TAIL {
            self.tail.clear();
            self.tail
                .extend_from_slice(bytes.get(bytes.len() - TAIL..).unwrap_or_default());
        } else {
            if self.tail.len() + bytes.len() > 2 * TAIL {
                self.tail.drain(..self.tail.len() + bytes.len() - TAIL);
            }
            self.tail.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// The end of the stream: the remaining checks.
    pub fn finish(self) -> Result<(), Polyglot> {
        if self.head.len() < EDGE {
            markup(&self.head, "start")?;
        }
        let tail = self
            .tail
            .get(self.tail.len().saturating_sub(TAIL)..)
            .unwrap_or_default();
        markup(
            tail.get(tail.len().saturating_sub(EDGE)..)
                .unwrap_or_default(),
            "end",
        )?;
        if has_eocd(tail) {
            return Err(Polyglot::Zip);
        }
        Ok(())
    }
}

/// The first markup marker in `window`.
fn markup(window: &[u8], at: &'static str) -> Result<(), Polyglot> {
    for i in memchr::memchr_iter(b'<', window) {
        let rest = window.get(i..).unwrap_or_default();
        for m in MARKUP {
            if rest
                .get(..m.len())
                .is_some_and(|r| r.eq_ignore_ascii_case(m))
            {
                let marker = std::str::from_utf8(m).unwrap_or("<");
                return Err(Polyglot::Markup { marker, at });
            }
        }
    }
    Ok(())
}

/// A plausible end-of-central-directory record in `tail` (which ends the file): the signature,
/// the whole 22-byte record after it, and a comment length that fits in what follows. The
/// structure check keeps compressed pixels that happen to hold the 4 signature bytes (about
/// one file in 65,000 for a 64 KiB window) from being refused, while every archive a ZIP
/// reader would open still matches.
fn has_eocd(tail: &[u8]) -> bool {
    memchr::memmem::find_iter(tail, EOCD).any(|at| {
        let after = tail.len() - at;
        let comment = tail
            .get(at + 20..at + 22)
            .and_then(|c| <[u8; 2]>::try_from(c).ok())
            .map(|c| usize::from(u16::from_le_bytes(c)));
        after >= EOCD_LEN && comment.is_some_and(|c| EOCD_LEN + c <= after)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan(data: &[u8], cuts: &[usize]) -> Result<(), Polyglot> {
        let mut s = PolyglotScan::default();
        let mut rest = data;
        for &c in cuts {
            let (a, b) = rest.split_at(c.min(rest.len()));
            s.update(a)?;
            rest = b;
        }
        s.update(rest)?;
        s.finish()
    }

    fn eocd(comment: &[u8]) -> Vec<u8> {
        let mut r = EOCD.to_vec();
        r.extend([0; 16]);
        r.extend((comment.len() as u16).to_le_bytes());
        r.extend(comment);
        r
    }

    fn image(len: usize) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
        v.extend((0..len).map(|i| (i * 7 % 251) as u8 | 0x80));
        v
    }

    #[test]
    fn markup_near_either_end_is_refused_in_any_case() {
        for (marker, at_start) in [
            ("<html>", true),
            ("<SCRIPT src=x>", false),
            ("<Svg onload=1>", true),
            ("<?PHP system(1);", false),
            ("<!DocType HTML>", true),
        ] {
            let mut data = image(200_000);
            if at_start {
                data.splice(100..100, marker.bytes());
            } else {
                data.extend(marker.bytes());
                data.extend(image(100));
            }
            let err = scan(&data, &[]).unwrap_err();
            assert!(
                matches!(err, Polyglot::Markup { at, .. } if at == if at_start { "start" } else { "end" }),
                "{marker}: {err:?}"
            );
        }
    }

    #[test]
    fn markup_in_the_middle_and_near_misses_pass() {
        let mut data = image(200_000);
        data.splice(100_000..100_000, b"<html><script>".iter().copied());
        data.splice(10..10, b"<htm <scrip <sv <?ph <!doctype x".iter().copied());
        scan(&data, &[]).unwrap();
        scan(b"", &[]).unwrap();
    }

    #[test]
    fn a_zip_end_record_near_the_end_is_refused() {
        let mut data = image(300_000);
        data.extend(eocd(b""));
        assert_eq!(scan(&data, &[]), Err(Polyglot::Zip));
        // With the longest comment there is, the record starts 64 KiB + 22 bytes from the end.
        let mut data = image(300_000);
        data.extend(eocd(&vec![b'c'; 65_535]));
        assert_eq!(scan(&data, &[7, 300_000]), Err(Polyglot::Zip));
        // Further back than that, it is not a ZIP any reader would find.
        let mut data = image(300_000);
        data.extend(eocd(b""));
        data.extend(image(TAIL));
        scan(&data, &[]).unwrap();
        // The signature alone, without a record that fits, is noise in compressed pixels.
        let mut data = image(300_000);
        data.extend(b"PK\x05\x06\x00\x00");
        data.extend(image(5_000));
        scan(&data, &[]).unwrap();
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_answer(
            seed in proptest::collection::vec(any::<u8>(), 0..2_000),
            marker in 0usize..8,
            at in 0usize..3,
            cuts in proptest::collection::vec(0usize..70_000, 0..6),
        ) {
            let mut data = image(140_000);
            let piece: Vec<u8> = match marker {
                0 => b"<sCrIpT".to_vec(),
                1 => eocd(b"hi"),
                2 => b"<?php".to_vec(),
                _ => seed.clone(),
            };
            match at {
                0 => { data.splice(0..0, piece); }
                1 => { data.splice(70_000..70_000, piece); }
                _ => data.extend(piece),
            }
            let whole = scan(&data, &[]);
            prop_assert_eq!(scan(&data, &cuts), whole);
        }
    }
}
