//! The two ends every segment walker works between: [`Input`], one received chunk consumed
//! from the front (fill a small header buffer, pass bytes through, skip bytes), and [`Out`],
//! the pieces to store, in order.
//!
//! Invariant: bytes passed through are zero-copy slices of the received chunk, and a header
//! buffer is only ever filled up to the length its caller asks for (each walker bounds that),
//! so a walker's memory never depends on the size of what it skips or copies.

use bytes::Bytes;

/// What is left of one received chunk.
pub(crate) struct Input {
    chunk: Bytes,
    pos: usize,
}

impl Input {
    pub(crate) fn new(chunk: Bytes) -> Self {
        Self { chunk, pos: 0 }
    }

    /// The unread bytes.
    pub(crate) fn rest(&self) -> &[u8] {
        self.chunk.get(self.pos..).unwrap_or_default()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.chunk.len()
    }

    /// Consume `n` unread bytes (at most what is left).
    pub(crate) fn advance(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.chunk.len());
    }

    /// The next `n` unread bytes (at most what is left) as a zero-copy slice, consumed.
    pub(crate) fn slice(&mut self, n: usize) -> Bytes {
        let end = self.pos.saturating_add(n).min(self.chunk.len());
        let b = self.chunk.slice(self.pos..end);
        self.pos = end;
        b
    }

    /// The next byte, consumed.
    pub(crate) fn byte(&mut self) -> Option<u8> {
        let b = self.chunk.get(self.pos).copied();
        if b.is_some() {
            self.pos += 1;
        }
        b
    }

    /// Append unread bytes to `buf` until it holds `want` bytes; true once it does.
    pub(crate) fn fill(&mut self, buf: &mut Vec<u8>, want: usize) -> bool {
        let missing = want.saturating_sub(buf.len());
        let take = missing.min(self.chunk.len() - self.pos.min(self.chunk.len()));
        buf.extend_from_slice(self.rest().get(..take).unwrap_or_default());
        self.pos += take;
        buf.len() >= want
    }

    /// Pass up to `*left` bytes through to `out`; `*left` goes down by what was taken.
    pub(crate) fn copy(&mut self, left: &mut u64, out: &mut Out<'_>) {
        let n = usize::try_from(*left).unwrap_or(usize::MAX);
        let b = self.slice(n);
        *left -= b.len() as u64;
        out.bytes(b);
    }

    /// Drop up to `*left` bytes; `*left` goes down by what was dropped.
    pub(crate) fn skip(&mut self, left: &mut u64) {
        let n = usize::try_from(*left).unwrap_or(usize::MAX);
        let before = self.pos;
        self.advance(n);
        *left -= (self.pos - before) as u64;
    }
}

/// Where a walker puts the bytes to store. Off (a walker that only checks dimensions), it
/// drops everything: the caller stores the received chunks unchanged.
pub(crate) struct Out<'a> {
    pieces: &'a mut Vec<Bytes>,
    on: bool,
}

impl<'a> Out<'a> {
    pub(crate) fn new(pieces: &'a mut Vec<Bytes>, on: bool) -> Self {
        Self { pieces, on }
    }

    /// Store `b` next.
    pub(crate) fn bytes(&mut self, b: Bytes) {
        if self.on && !b.is_empty() {
            self.pieces.push(b);
        }
    }

    /// Store a copy of `b` next (headers the walker rebuilt or held back).
    pub(crate) fn copy(&mut self, b: &[u8]) {
        if self.on && !b.is_empty() {
            self.pieces.push(Bytes::copy_from_slice(b));
        }
    }
}

/// Big-endian u16 at `at`.
pub(crate) fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(array(b, at)?))
}

/// Big-endian u32 at `at`.
pub(crate) fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(array(b, at)?))
}

/// Little-endian u16 at `at`.
pub(crate) fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(array(b, at)?))
}

/// Little-endian u24 at `at`.
pub(crate) fn le24(b: &[u8], at: usize) -> Option<u32> {
    let [x, y, z] = array(b, at)?;
    Some(u32::from_le_bytes([x, y, z, 0]))
}

/// Little-endian u32 at `at`.
pub(crate) fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(array(b, at)?))
}

/// `N` bytes at `at`.
pub(crate) fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_fills_copies_and_skips_within_bounds() {
        let mut i = Input::new(Bytes::from_static(b"abcdefgh"));
        let mut buf = Vec::new();
        assert!(!i.fill(&mut buf, 3) || buf == b"abc");
        assert_eq!(buf, b"abc");
        let mut pieces = Vec::new();
        let mut out = Out::new(&mut pieces, true);
        let mut left = 2;
        i.copy(&mut left, &mut out);
        assert_eq!(left, 0);
        let mut left = 100;
        i.skip(&mut left);
        assert_eq!(left, 97);
        assert!(i.is_empty());
        assert!(!i.fill(&mut buf, 10));
        assert_eq!(pieces, [Bytes::from_static(b"de")]);
        assert_eq!(le24(&[1, 2, 3], 0), Some(0x030201));
        assert_eq!(be32(&[1, 2, 3], 0), None);
        assert_eq!(array::<2>(&[1], usize::MAX), None);
    }
}
