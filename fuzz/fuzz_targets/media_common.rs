//! What every media walker target checks, on `[flags][hold lo][hold hi][cut x4][image...]`:
//! - no panic, and no allocation past libFuzzer's `-malloc_limit_mb` (scripts/fuzz sets 16:
//!   a walker that trusted a declared length would ask for up to 4 GiB);
//! - the outcome (bytes and dimensions, or the error) is the same however the stream is cut
//!   (whole, by the input's cut sizes, byte by byte);
//! - measuring only, the stored bytes are the input; stripping, they are never longer than
//!   the input, and stripping them again changes nothing (idempotent).

use coffer::ingest::media::{Format, MediaOptions, run};

pub fn check(format: Format, input: &[u8]) {
    let Some((head, data)) = input.split_at_checked(7) else {
        return;
    };
    let strip = head[0] & 1 == 1;
    // Small pixel limits too, so refusals are reached.
    let max_pixels = if head[0] & 2 == 0 { 100_000_000 } else { u64::from(head[0]) * 64 };
    let hold = if head[0] & 4 == 0 {
        coffer::ingest::media::webp::HOLD_BYTES
    } else {
        usize::from(u16::from_le_bytes([head[1], head[2]]))
    };
    let cuts: Vec<usize> = head[3..7].iter().map(|&c| usize::from(c) * 3 + 1).collect();
    let opts = MediaOptions { max_pixels, strip };

    let whole = run(format, opts, hold, data, &mut std::iter::empty());
    let cut = run(format, opts, hold, data, &mut cuts.iter().copied().cycle());
    assert_eq!(cut, whole, "cut by {cuts:?}");
    if data.len() <= 4096 {
        let bytes = run(format, opts, hold, data, &mut std::iter::repeat(1));
        assert_eq!(bytes, whole, "byte by byte");
    }
    let Ok((out, dims)) = whole else {
        return;
    };
    if !strip || format == Format::Gif {
        assert_eq!(out, data, "measuring only must store the input unchanged");
        return;
    }
    assert!(out.len() <= data.len(), "{} bytes out of {}", out.len(), data.len());
    let again = run(format, opts, hold, &out, &mut std::iter::empty());
    assert_eq!(again, Ok((out.clone(), dims)), "stripping is not idempotent");
}
