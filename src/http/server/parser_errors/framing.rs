//! Following the framing of the HTTP/1 answers hyper writes, byte by byte as they go out: each
//! response head, then its body by `Content-Length` or chunked coding (none after a 1xx, a 204,
//! a 304 or an answer to HEAD), to tell where the next head starts and whether a request waits
//! for it.
//!
//! Invariant: it reads hyper's own output, never the client's, and gives up ([`Frame::Opaque`])
//! on anything it cannot frame rather than guess.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::LazyLock;

use axum::http::Method;
use memchr::memmem;

/// The longest response head or chunk line followed (the service's heads stay under 8 KiB).
const MAX_HEAD: usize = 64 * 1024;

/// What a dispatched request means for its answer's framing, beyond the answer's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    /// HEAD: the answer has no body, whatever its head announces.
    Head,
    /// CONNECT: a 2xx answer makes the connection a tunnel.
    Connect,
    /// Anything else.
    Other,
}

/// Where the bytes written so far stand in the stream of answers.
#[derive(Debug, Clone)]
pub(super) enum Frame {
    /// In a response head, or before one (empty); holds its bytes so far.
    Head(Vec<u8>),
    /// In a body of known length: the bytes left.
    Body(u64),
    /// In a chunk-size line; holds it so far.
    ChunkSize(Vec<u8>),
    /// In a chunk's data: the bytes left.
    ChunkData(u64),
    /// In the CRLF after a chunk's data: the bytes left.
    ChunkEnd(u8),
    /// After the last chunk, up to the empty line that ends the trailers; starts with the last
    /// chunk line's CRLF, so the end is always a CRLF CRLF.
    Trailers(Vec<u8>),
    /// No longer followed: everything passes, nothing is replaced.
    Opaque,
}

/// The queue of dispatched requests as seen while walking over bytes not yet committed: the
/// first `taken` have had their answer heads in the bytes walked.
pub(super) struct Waiting<'a> {
    queue: &'a VecDeque<Asked>,
    taken: usize,
}

impl<'a> Waiting<'a> {
    /// None of `queue` taken yet.
    pub(super) fn new(queue: &'a VecDeque<Asked>) -> Self {
        Self { queue, taken: 0 }
    }

    /// How many waiting requests have had their answer heads in the bytes walked.
    pub(super) fn taken(&self) -> usize {
        self.taken
    }

    fn any(&self) -> bool {
        self.queue.len() > self.taken
    }

    fn take(&mut self) -> Option<Asked> {
        let next = self.queue.get(self.taken).copied();
        self.taken += usize::from(next.is_some());
        next
    }
}

impl Asked {
    /// What `method` asks for.
    pub(super) fn of(method: &Method) -> Self {
        if method == Method::HEAD {
            Self::Head
        } else if method == Method::CONNECT {
            Self::Connect
        } else {
            Self::Other
        }
    }
}

impl Frame {
    /// Before the first answer.
    pub(super) fn start() -> Self {
        Self::Head(Vec::new())
    }

    /// At the start of a head that no dispatched request is waiting for: the parser's own.
    fn unclaimed(&self, waiting: &Waiting<'_>) -> bool {
        matches!(self, Self::Head(b) if b.is_empty()) && !waiting.any()
    }

    /// Take bytes from the front of `bytes` (not empty) up to the end of the current part and
    /// move on to the next; returns how many were taken.
    fn step(&mut self, bytes: &[u8], waiting: &mut Waiting<'_>) -> usize {
        let (taken, next) = match self {
            Self::Opaque => return bytes.len(),
            Self::Body(left) => {
                let n = count_down(left, bytes);
                (n, (*left == 0).then(|| Self::Head(Vec::new())))
            }
            Self::ChunkData(left) => {
                let n = count_down(left, bytes);
                (n, (*left == 0).then_some(Self::ChunkEnd(2)))
            }
            Self::ChunkEnd(left) => {
                let n = usize::from(*left).min(bytes.len());
                *left -= n as u8;
                (n, (*left == 0).then(|| Self::ChunkSize(Vec::new())))
            }
            Self::Head(buf) => match HEAD_END.find(bytes) {
                // The usual case, a whole head in one buffer: read in place, nothing copied.
                Some(i) if buf.is_empty() => {
                    let head = bytes.get(..i + 4).unwrap_or(bytes);
                    (head.len(), Some(after_head(head, waiting)))
                }
                _ => {
                    let (n, done) = gather(buf, bytes, &HEAD_END);
                    (n, done.then(|| after_head(buf, waiting)))
                }
            },
            Self::ChunkSize(buf) => {
                let (n, done) = gather(buf, bytes, &LINE_END);
                (n, done.then(|| after_chunk_size(buf)))
            }
            Self::Trailers(buf) => {
                let (n, done) = gather(buf, bytes, &HEAD_END);
                (n, done.then(|| Self::Head(Vec::new())))
            }
        };
        let overlong = match self {
            Self::Head(b) | Self::ChunkSize(b) | Self::Trailers(b) => b.len() > MAX_HEAD,
            _ => false,
        };
        if let Some(next) = next {
            *self = next;
        } else if overlong {
            *self = Self::Opaque;
        }
        taken
    }
}

/// The end of a head or of the trailers, and of a line: searchers built once.
static HEAD_END: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\r\n\r\n"));
static LINE_END: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\r\n"));

/// Take up to `left` bytes of `bytes`; returns how many.
fn count_down(left: &mut u64, bytes: &[u8]) -> usize {
    let n = usize::try_from(*left).map_or(bytes.len(), |l| l.min(bytes.len()));
    *left -= n as u64;
    n
}

/// Append the front of `bytes` to `buf` up to and including the first `end` mark (which may
/// straddle calls); returns how many bytes were taken and whether the mark was reached.
fn gather(buf: &mut Vec<u8>, bytes: &[u8], end: &memmem::Finder<'_>) -> (usize, bool) {
    let old = buf.len();
    let mark = end.needle().len();
    // A mark never lies wholly in `buf` (it would have ended the part), but may begin there.
    let from = old.saturating_sub(mark - 1);
    let take = bytes.len().min((MAX_HEAD + 1).saturating_sub(old)).max(1);
    buf.extend_from_slice(bytes.get(..take).unwrap_or(bytes));
    match end.find(buf.get(from..).unwrap_or_default()) {
        Some(i) => {
            let stop = from + i + mark;
            buf.truncate(stop);
            (stop.saturating_sub(old), true)
        }
        None => (take, false),
    }
}

/// What follows a complete response head.
fn after_head(head: &[u8], waiting: &mut Waiting<'_>) -> Frame {
    let Some(facts) = parse_head(head) else {
        return Frame::Opaque;
    };
    match facts.status {
        // Switching protocols: what follows is not HTTP/1.
        101 => return Frame::Opaque,
        // Informational (100 Continue): the final answer follows.
        100..=199 => return Frame::Head(Vec::new()),
        _ => {}
    }
    let Some(asked) = waiting.take() else {
        return Frame::Opaque;
    };
    let tunnel = asked == Asked::Connect && (200..300).contains(&facts.status);
    if tunnel {
        Frame::Opaque
    } else if asked == Asked::Head || facts.status == 204 || facts.status == 304 {
        Frame::Head(Vec::new())
    } else {
        match (facts.coding, facts.length) {
            (Coding::Chunked, _) => Frame::ChunkSize(Vec::new()),
            (Coding::Other, _) | (Coding::None, None) => Frame::Opaque,
            (Coding::None, Some(0)) => Frame::Head(Vec::new()),
            (Coding::None, Some(n)) => Frame::Body(n),
        }
    }
}

/// What follows a chunk-size line: the chunk's data, or the trailers after the last chunk.
fn after_chunk_size(line: &[u8]) -> Frame {
    let digits = line
        .split(|&b| b == b';' || b == b'\r')
        .next()
        .unwrap_or_default();
    let size = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| u64::from_str_radix(d.trim(), 16).ok());
    match size {
        Some(0) => Frame::Trailers(b"\r\n".to_vec()),
        Some(n) => Frame::ChunkData(n),
        None => Frame::Opaque,
    }
}

/// A body's transfer coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    None,
    Chunked,
    /// A coding that does not end in `chunked`: the body runs to the connection's end.
    Other,
}

/// What a response head says about the body after it.
#[derive(Debug)]
struct HeadFacts {
    status: u16,
    length: Option<u64>,
    coding: Coding,
}

/// Read a response head (hyper's own output: ASCII names, one value per line).
fn parse_head(head: &[u8]) -> Option<HeadFacts> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let (_, status) = status_line(lines.next()?)?;
    let mut facts = HeadFacts {
        status,
        length: None,
        coding: Coding::None,
    };
    for line in lines {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        // Only two headers matter; the others' values are not even read (this runs once per
        // answer).
        let length = name.eq_ignore_ascii_case(b"content-length");
        if !length && !name.eq_ignore_ascii_case(b"transfer-encoding") {
            continue;
        }
        let value = std::str::from_utf8(value.get(1..).unwrap_or_default())
            .ok()?
            .trim();
        if length {
            facts.length = Some(value.parse().ok()?);
        } else {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            facts.coding = if last.eq_ignore_ascii_case("chunked") {
                Coding::Chunked
            } else {
                Coding::Other
            };
        }
    }
    Some(facts)
}

/// `HTTP/1.x NNN ...`: the version and the status.
pub(super) fn status_line(line: &[u8]) -> Option<(&[u8], u16)> {
    let version = line.get(..8)?;
    if !(version == b"HTTP/1.1" || version == b"HTTP/1.0") || line.get(8) != Some(&b' ') {
        return None;
    }
    let digits = line.get(9..12)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((version, status))
}

/// Walk `frame` over the first `limit` bytes of `bufs`; with `stop`, stop before a head nobody
/// waits for. Returns the bytes walked.
pub(super) fn walk(
    frame: &mut Frame,
    bufs: &[IoSlice<'_>],
    limit: usize,
    waiting: &mut Waiting<'_>,
    stop: bool,
) -> usize {
    let mut walked = 0;
    for buf in bufs {
        let mut rest = buf.get(..buf.len().min(limit - walked)).unwrap_or_default();
        while !rest.is_empty() {
            if stop && frame.unclaimed(waiting) {
                return walked;
            }
            let n = frame.step(rest, waiting);
            walked += n;
            rest = rest.get(n..).unwrap_or_default();
        }
        if walked == limit {
            break;
        }
    }
    walked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_say_how_their_bodies_end() {
        assert_eq!(
            status_line(b"HTTP/1.1 431 Request Header Fields Too Large"),
            Some((&b"HTTP/1.1"[..], 431))
        );
        assert_eq!(status_line(b"HTTP/1.0 400 "), Some((&b"HTTP/1.0"[..], 400)));
        for bad in [
            &b"HTTP/2 200 OK"[..],
            b"HTTP/1.1 4x1 Odd",
            b"HTTP/1.1 40",
            b"",
        ] {
            assert_eq!(status_line(bad), None);
        }
        let facts = |head: &str| parse_head(head.as_bytes()).unwrap();
        let h = facts("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(
            (h.status, h.length, h.coding),
            (200, Some(12), Coding::None)
        );
        let h = facts("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n");
        assert_eq!(h.coding, Coding::Chunked);
        assert_eq!(
            facts("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n").coding,
            Coding::Other
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_none());
        // Other headers' values are not read: a byte that is not UTF-8 there changes nothing.
        let odd = parse_head(b"HTTP/1.1 200 OK\r\nx-odd: \xff\r\ncontent-length: 3\r\n\r\n");
        assert_eq!(odd.unwrap().length, Some(3));
    }
}
