//! Metadata stripping against a plain copy, on a 64 MiB JPEG fed in the pipeline's 64 KiB
//! chunks: what `uploads.strip_metadata = true` costs per byte (issue 15 asks for stripping at
//! 0.9x a copy or better). Each variant ends with the stored bytes in one buffer, so both pay
//! the same memcpy; "+ sha256" adds the hash the pipeline computes over every stored byte.
//!
//! Run: `cargo bench --bench media` (about a minute after the build).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "set-up failures abort the bench"
)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use image::{ExtendedColorType, ImageEncoder};
use sha2::{Digest, Sha256};

use coffer::ingest::media::{Format, MediaOptions, MediaWalker};

const MIB: usize = 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// A 64 MiB baseline JPEG: a real encoder's headers, EXIF, XMP and a comment in front, then
/// 64 MiB of entropy-coded-like data (pseudo-random bytes, every FF stuffed with 00, a restart
/// marker every 16 KiB, as a camera writes them), then EOI. The walker does not decode, so
/// only the byte statistics matter: one FF in 256, as in real scans.
fn big_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut small = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut small)
        .write_image(img.as_raw(), 64, 64, ExtendedColorType::Rgb8)
        .unwrap();
    let sos = small.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let sos_len = usize::from(u16::from_be_bytes([small[sos + 2], small[sos + 3]]));
    let mut j = small[..2].to_vec();
    let seg = |j: &mut Vec<u8>, m: u8, p: &[u8]| {
        j.extend([0xFF, m]);
        j.extend((p.len() as u16 + 2).to_be_bytes());
        j.extend(p);
    };
    seg(
        &mut j,
        0xE1,
        &[
            &b"Exif\0\0MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0"[..],
            &[0; 20_000],
        ]
        .concat(),
    );
    seg(
        &mut j,
        0xE1,
        &[&b"http://ns.adobe.com/xap/1.0/\0"[..], &[b'x'; 30_000]].concat(),
    );
    seg(&mut j, 0xFE, b"a comment");
    j.extend(&small[2..sos + 2 + sos_len]);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut since_rst = 0;
    let mut rst = 0u8;
    while j.len() < 64 * MIB {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        for b in state.to_le_bytes() {
            j.push(b);
            if b == 0xFF {
                j.push(0);
            }
        }
        since_rst += 8;
        if since_rst >= 16 * 1024 {
            j.extend([0xFF, 0xD0 + rst]);
            rst = (rst + 1) % 8;
            since_rst = 0;
        }
    }
    j.extend([0xFF, 0xD9]);
    j
}

fn chunks(data: &[u8]) -> Vec<Bytes> {
    data.chunks(CHUNK).map(Bytes::copy_from_slice).collect()
}

fn copy(chunks: &[Bytes], hash: bool) -> (usize, Option<[u8; 32]>) {
    let mut out = Vec::with_capacity(64 * MIB + MIB);
    let mut h = Sha256::new();
    for c in chunks {
        out.extend_from_slice(c);
        if hash {
            h.update(c);
        }
    }
    (black_box(out).len(), hash.then(|| h.finalize().into()))
}

fn strip(chunks: &[Bytes], hash: bool) -> (usize, Option<[u8; 32]>) {
    let opts = MediaOptions {
        max_pixels: 100_000_000,
        strip: true,
    };
    let mut w = MediaWalker::new(Format::Jpeg, opts);
    let mut out = Vec::with_capacity(64 * MIB + MIB);
    let mut h = Sha256::new();
    let mut pieces = Vec::new();
    let mut store = |pieces: &mut Vec<Bytes>| {
        for p in pieces.drain(..) {
            out.extend_from_slice(&p);
            if hash {
                h.update(&p);
            }
        }
    };
    for c in chunks {
        w.update(c.clone(), &mut pieces).unwrap();
        store(&mut pieces);
    }
    w.finish(&mut pieces).unwrap();
    store(&mut pieces);
    (black_box(out).len(), hash.then(|| h.finalize().into()))
}

fn media(c: &mut Criterion) {
    let data = big_jpeg();
    let input = chunks(&data);
    let (stored, _) = strip(&input, false);
    assert!(
        stored < data.len() && data.len() - stored > 50_000,
        "metadata removed"
    );
    let mut g = c.benchmark_group("media");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("jpeg 64 MiB: copy", |b| b.iter(|| copy(&input, false)));
    g.bench_function("jpeg 64 MiB: strip", |b| b.iter(|| strip(&input, false)));
    g.bench_function("jpeg 64 MiB: copy + sha256", |b| {
        b.iter(|| copy(&input, true))
    });
    g.bench_function("jpeg 64 MiB: strip + sha256", |b| {
        b.iter(|| strip(&input, true))
    });
    g.finish();
}

criterion_group!(benches, media);
criterion_main!(benches);
