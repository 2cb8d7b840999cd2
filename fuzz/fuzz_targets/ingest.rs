//! The upload path below the HTTP layer.
//!
//! Mode byte 0 (`b % 3 == 0`): `[mode][limit][chunking][body...]` — `multer` with the fixed
//! boundary `fuzzboundary`, behind the `MultipartFraming` guard, and the constraints
//! `src/http/files.rs` sets (size limits scaled down so the fuzzer reaches them), read the
//! way `receive_multipart` reads it, and the part named `file` fed through the same checks
//! `ingest::stage` makes (sanitised name, extension rule, sniffed head, streaming UTF-8
//! check). Never panics; never delivers more than the
//! limit allows; whatever is accepted satisfies the type policy.
//!
//! Mode 1: a well-formed form built from the input (other parts before and after, chunked
//! arbitrarily) must give back exactly the file's name and bytes, or the documented errors
//! for a duplicate `file` part.
//!
//! Mode 2: the sealed-segment format. `Sealer` then `Opener` round-trips every range; an
//! edited blob (flips, insertions, removals, truncation, swapped spans) and arbitrary
//! ciphertext give `Err(Tampered)` or exactly the plaintext, never a panic.
#![no_main]

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use coffer::crypto::segment::{self, CipherStream, Opener, SEGMENT, Sealer};
use coffer::crypto::{CryptoError, DataKey};
use coffer::ids::FileId;
use coffer::ingest::filename;
use coffer::ingest::framing::MultipartFraming;
use coffer::ingest::idle::BodyError;
use coffer::ingest::policy::{Refusal, Rule, SNIFF_LEN, UploadPolicy, Utf8Check};
use futures_util::{Stream, StreamExt};
use libfuzzer_sys::fuzz_target;

const BOUNDARY: &str = "fuzzboundary";
/// `MULTIPART_OVERHEAD` and `OTHER_PART_LIMIT` of src/http/files.rs, scaled down (1 MiB and
/// 64 KiB there) so that inputs of a few KiB reach them.
const OVERHEAD: u64 = 2048;
const OTHER_PART_LIMIT: u64 = 512;

static POLICY: LazyLock<UploadPolicy> = LazyLock::new(|| {
    let map: BTreeMap<String, String> = [
        ("png", "image/png"),
        ("jpg", "image/jpeg"),
        ("gif", "image/gif"),
        ("pdf", "application/pdf"),
        ("txt", "text/plain"),
    ]
    .iter()
    .map(|(e, m)| ((*e).to_owned(), (*m).to_owned()))
    .collect();
    UploadPolicy::new(&map)
});
static KEY: LazyLock<DataKey> = LazyLock::new(DataKey::generate);
static FILE: LazyLock<FileId> = LazyLock::new(FileId::new);

/// Drive a future whose streams are always ready (in-memory chunks): `Pending` would mean a
/// hang, which is a finding too.
static OPEN_RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
});

fn run<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000 {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("future stayed pending over an always-ready stream");
}

fn split(body: &[u8], seed: u8) -> Vec<Bytes> {
    // Chunk sizes cycle through a small pattern derived from the seed (1..=256 bytes each),
    // so boundaries land everywhere, including inside the delimiter.
    let mut out = Vec::new();
    let mut rest = body;
    let mut s = u32::from(seed) | 1;
    while !rest.is_empty() {
        s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((s >> 16) as usize % 256 + 1).min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(Bytes::copy_from_slice(a));
        rest = b;
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    NoFilePart,
    NoFilename,
    Malformed,
    TooLarge,
    Duplicate,
    Refused(Refusal),
    Stored {
        name: String,
        bytes: Vec<u8>,
        content_type: String,
    },
}

fn err(e: multer::Error) -> Outcome {
    match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            Outcome::TooLarge
        }
        _ => Outcome::Malformed,
    }
}

async fn drain<S: Stream<Item = Result<Bytes, multer::Error>> + Unpin>(
    mut field: S,
) -> Result<u64, Outcome> {
    let mut n = 0;
    while let Some(c) = field.next().await {
        n += c.map_err(err)?.len() as u64;
    }
    Ok(n)
}

/// `receive_multipart` + the checks of `ingest::receive`, minus storage.
async fn receive(chunks: Vec<Bytes>, limit: u64) -> Outcome {
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(limit.saturating_add(OVERHEAD))
            .per_field(OTHER_PART_LIMIT)
            .for_field("file", limit.saturating_add(1)),
    );
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, BodyError>));
    // As in `receive_multipart`: the preamble and part headers are bounded before multer.
    let stream = MultipartFraming::new(stream, BOUNDARY);
    let mut form = multer::Multipart::with_constraints(stream, BOUNDARY, constraints);
    let mut field = loop {
        match form.next_field().await {
            Err(e) => return err(e),
            Ok(None) => return Outcome::NoFilePart,
            Ok(Some(f)) if f.name() == Some("file") => break f,
            Ok(Some(other)) => match drain(other).await {
                Ok(n) => assert!(n <= OTHER_PART_LIMIT, "other part delivered {n} bytes"),
                Err(o) => return o,
            },
        }
    };
    let Some(raw) = field
        .file_name()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
    else {
        return Outcome::NoFilename;
    };
    let name = filename::sanitize(&raw);
    let rule = match POLICY.rule_for(filename::extension(&name).as_deref()) {
        Ok(r) => r.clone(),
        Err(r) => return Outcome::Refused(r),
    };
    let mut bytes = Vec::new();
    while let Some(c) = field.next().await {
        match c {
            Ok(c) => {
                bytes.extend_from_slice(&c);
                // multer's own limit for the part is limit + 1: it never hands over more.
                assert!(bytes.len() as u64 <= limit + 1, "file part over its limit");
                if bytes.len() as u64 > limit {
                    return Outcome::TooLarge;
                }
            }
            Err(e) => return err(e),
        }
    }
    drop(field);
    let head = &bytes[..bytes.len().min(SNIFF_LEN)];
    let content_type = match UploadPolicy::decide(&rule, head) {
        Ok(t) => t,
        Err(r) => return Outcome::Refused(r),
    };
    if rule == Rule::Text {
        let mut check = Utf8Check::default();
        for c in bytes.chunks(97) {
            if let Err(r) = check.update(c) {
                return Outcome::Refused(r);
            }
        }
        if let Err(r) = check.finish() {
            return Outcome::Refused(r);
        }
        assert!(std::str::from_utf8(&bytes).is_ok() && !bytes.contains(&0));
    }
    loop {
        match form.next_field().await {
            Err(e) => return err(e),
            Ok(None) => break,
            Ok(Some(f)) if f.name() == Some("file") => return Outcome::Duplicate,
            Ok(Some(other)) => {
                if let Err(o) = drain(other).await {
                    return o;
                }
            }
        }
    }
    Outcome::Stored {
        name,
        bytes,
        content_type,
    }
}

fn multipart_raw(data: &[u8]) {
    let [limit, seed, body @ ..] = data else {
        return;
    };
    let limit = u64::from(*limit) * 16;
    let _ = run(receive(split(body, *seed), limit));
}

#[derive(Debug, Arbitrary)]
struct Part {
    name: String,
    content: Vec<u8>,
    content_type: Option<String>,
}

#[derive(Debug, Arbitrary)]
struct Form {
    before: Vec<Part>,
    filename: String,
    content: Vec<u8>,
    after: Vec<Part>,
    duplicate: bool,
    seed: u8,
}

fn header_safe(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\\'))
        .collect()
}

fn part(out: &mut Vec<u8>, disposition: &str, content_type: Option<&str>, content: &[u8]) {
    out.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n").as_bytes(),
    );
    if let Some(t) = content_type {
        out.extend_from_slice(format!("Content-Type: {t}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(content);
    out.extend_from_slice(b"\r\n");
}

fn multipart_form(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let form = Form::arbitrary(u)?;
    let delimiter = format!("\r\n--{BOUNDARY}");
    let contains = |c: &[u8]| {
        let mut framed = b"\r\n".to_vec();
        framed.extend_from_slice(c);
        framed
            .windows(delimiter.len())
            .any(|w| w == delimiter.as_bytes())
    };
    let mut body = Vec::new();
    let others = form.before.iter().chain(&form.after);
    let mut other_names = Vec::new();
    for p in others.clone() {
        // Other parts: any name but `file`, quoted and without quotes or controls.
        let name = header_safe(&p.name);
        if name == "file" || contains(&p.content) {
            return Ok(());
        }
        other_names.push(name);
    }
    let filename = header_safe(&form.filename);
    if filename.is_empty() || contains(&form.content) {
        return Ok(());
    }
    for (p, name) in form.before.iter().zip(&other_names) {
        let ct = p.content_type.as_deref().map(header_safe);
        part(
            &mut body,
            &format!("form-data; name=\"{name}\""),
            ct.as_deref(),
            &p.content,
        );
    }
    let file_disposition = format!("form-data; name=\"file\"; filename=\"{filename}\"");
    part(
        &mut body,
        &file_disposition,
        Some("application/x-anything"),
        &form.content,
    );
    if form.duplicate {
        part(&mut body, &file_disposition, None, b"second");
    }
    for (p, name) in form.after.iter().zip(&other_names[form.before.len()..]) {
        part(
            &mut body,
            &format!("form-data; name=\"{name}\""),
            None,
            &p.content,
        );
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());

    let limit = 1 << 20;
    let others_ok = form
        .before
        .iter()
        .chain(&form.after)
        .all(|p| p.content.len() as u64 <= OTHER_PART_LIMIT);
    let total_ok = body.len() as u64 <= limit + OVERHEAD;
    let got = run(receive(split(&body, form.seed), limit));
    if !others_ok || !total_ok {
        return Ok(());
    }
    // Parts after the file are only read once the file passed.
    let name = filename::sanitize(&filename);
    let expected_file = match POLICY.rule_for(filename::extension(&name).as_deref()) {
        Err(r) => Some(Outcome::Refused(r)),
        Ok(rule) => {
            match UploadPolicy::decide(rule, &form.content[..form.content.len().min(SNIFF_LEN)]) {
                Err(r) => Some(Outcome::Refused(r)),
                Ok(_)
                    if *rule == Rule::Text
                        && (std::str::from_utf8(&form.content).is_err()
                            || form.content.contains(&0)) =>
                {
                    Some(Outcome::Refused(Refusal::NotText))
                }
                Ok(_) => None,
            }
        }
    };
    match (expected_file, &got) {
        (Some(e), g) => assert_eq!(&e, g, "form {body:?}"),
        (None, _) if form.duplicate => assert_eq!(got, Outcome::Duplicate, "form {body:?}"),
        (None, Outcome::Stored { name: n, bytes, .. }) => {
            assert_eq!(n, &name, "filename changed in transit: {filename:?}");
            assert_eq!(bytes, &form.content, "file bytes changed in transit");
        }
        (None, g) => panic!("well-formed form refused: {g:?}; form {body:?}"),
    }
    Ok(())
}

#[derive(Debug, Arbitrary)]
enum Edit {
    Flip {
        at: u32,
        bit: u8,
    },
    Insert {
        at: u32,
        bytes: Vec<u8>,
    },
    Remove {
        at: u32,
        len: u16,
    },
    Truncate {
        at: u32,
    },
    /// Swap two equal-length spans (e.g. whole segments).
    Swap {
        a: u32,
        b: u32,
        len: u32,
    },
}

#[derive(Debug, Arbitrary)]
struct Sealed {
    pattern: Vec<u8>,
    len: u32,
    seal_chunk: u32,
    read_chunk: u16,
    start: u64,
    end: u64,
    edits: Vec<Edit>,
    /// Open arbitrary bytes instead of the sealed blob.
    garbage: Option<Vec<u8>>,
}

fn seal(plain: &[u8], chunk: usize) -> Vec<u8> {
    let mut s = Sealer::new(&KEY, *FILE);
    let mut out = Vec::new();
    for c in plain.chunks(chunk.max(1)) {
        out.extend(s.update(c).expect("seal"));
    }
    out.extend(s.finish().expect("seal"));
    out
}

fn open(
    blob: &[u8],
    plain_len: u64,
    start: u64,
    end: u64,
    chunk: usize,
) -> Result<Vec<u8>, CryptoError> {
    let (off, len, _) = segment::cipher_span(plain_len, start, end);
    let from = usize::try_from(off).unwrap_or(usize::MAX).min(blob.len());
    let to = usize::try_from(off.saturating_add(len))
        .unwrap_or(usize::MAX)
        .min(blob.len());
    // What the blob store hands the opener: the header, then the span.
    let mut slice = blob[..segment::HEADER_LEN.min(blob.len())].to_vec();
    slice.extend_from_slice(&blob[from..to]);
    let chunks: Vec<std::io::Result<Bytes>> = slice
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let inner: CipherStream = Box::pin(futures_util::stream::iter(chunks));
    // The opener decrypts on tokio's blocking pool, so it needs a real runtime.
    OPEN_RT.block_on(async {
        let mut o = Opener::new(inner, &KEY, *FILE, plain_len, start, end);
        let mut out = Vec::new();
        while let Some(c) = o.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    })
}

fn apply(blob: &mut Vec<u8>, e: &Edit) {
    let at = |x: u32, n: usize| if n == 0 { 0 } else { x as usize % n };
    match e {
        Edit::Flip { at: a, bit } => {
            if !blob.is_empty() {
                let i = at(*a, blob.len());
                blob[i] ^= 1 << (bit % 8);
            }
        }
        Edit::Insert { at: a, bytes } => {
            let i = at(*a, blob.len() + 1);
            blob.splice(i..i, bytes.iter().copied().take(64));
        }
        Edit::Remove { at: a, len } => {
            let i = at(*a, blob.len() + 1);
            let j = (i + usize::from(*len)).min(blob.len());
            blob.drain(i..j);
        }
        Edit::Truncate { at: a } => blob.truncate(at(*a, blob.len() + 1)),
        Edit::Swap { a, b, len } => {
            let n = blob.len();
            let len = at(*len, n / 2 + 1);
            if len == 0 {
                return;
            }
            let (a, b) = (at(*a, n - len + 1), at(*b, n - len + 1));
            let (lo, hi) = (a.min(b), a.max(b));
            if hi >= lo + len {
                let (x, y) = blob.split_at_mut(hi);
                x[lo..lo + len].swap_with_slice(&mut y[..len]);
            }
        }
    }
}

fn sealed(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let s = Sealed::arbitrary(u)?;
    // Up to a little over three segments.
    let n = (s.len as usize) % (3 * SEGMENT + 1000);
    let n = if s.pattern.is_empty() { n % 64 } else { n };
    let plain: Vec<u8> = (0..n)
        .map(|i| {
            s.pattern
                .get(i % s.pattern.len().max(1))
                .copied()
                .unwrap_or(i as u8)
                ^ (i / 251) as u8
        })
        .collect();
    let len = n as u64;
    let (start, end) = if len == 0 {
        (0, 0)
    } else {
        let a = s.start % len;
        (a, a + s.end % (len - a + 1))
    };
    let read_chunk = usize::from(s.read_chunk) + 1;

    if let Some(garbage) = &s.garbage {
        // Arbitrary ciphertext: nothing but an empty range may come out of it.
        match open(garbage, len, start, end, read_chunk) {
            Ok(out) => assert!(out.is_empty() && start == end, "forged plaintext {out:?}"),
            Err(e) => assert!(matches!(e, CryptoError::Tampered), "{e:?}"),
        }
        return Ok(());
    }

    let blob = seal(&plain, (s.seal_chunk as usize) % (2 * SEGMENT) + 1);
    assert_eq!(blob.len() as u64, segment::sealed_len(len));
    assert_eq!(&blob[..8], b"COFFERS1");
    let want = &plain[start as usize..end as usize];
    assert_eq!(
        open(&blob, len, start, end, read_chunk).expect("round trip"),
        want
    );
    assert_eq!(
        open(&blob, len, 0, len, read_chunk).expect("round trip"),
        plain
    );

    if s.edits.is_empty() {
        return Ok(());
    }
    let mut edited = blob.clone();
    for e in &s.edits {
        apply(&mut edited, e);
    }
    let (off, span, _) = segment::cipher_span(len, start, end);
    let range = off as usize..(off + span) as usize;
    match open(&edited, len, start, end, read_chunk) {
        Ok(out) => {
            assert_eq!(out, want, "edited blob opened to other bytes");
            // Only an untouched span may open (or an empty range, which reads nothing).
            assert!(
                start == end || edited.get(range.clone()) == blob.get(range.clone()),
                "edited ciphertext accepted (span {range:?})"
            );
        }
        Err(e) => assert!(matches!(e, CryptoError::Tampered), "{e:?}"),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => multipart_raw(rest),
        1 => {
            let _ = multipart_form(&mut Unstructured::new(rest));
        }
        _ => {
            let _ = sealed(&mut Unstructured::new(rest));
        }
    }
});
