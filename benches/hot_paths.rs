//! Micro-benchmarks of coffer's hot paths, from in-memory buffers: the upload pipeline's pieces
//! (type policy, UTF-8 check, SHA-256, sealing), range and conditional-request planning, token
//! issue and verification, filename sanitising, and the blob store's write and read paths.
//!
//! Run: `cargo bench --bench hot_paths` (add `-- --quick` for a fast pass). The end-to-end
//! comparison with nginx is `scripts/bench`.

// A benchmark that cannot set itself up has nothing to measure: panicking there is the
// right answer, as in tests (clippy.toml allows these in tests only, not in benches).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "set-up failures abort the bench"
)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method, header};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use coffer::auth::jwt::TokenKeys;
use coffer::blob::fs::LocalFs;
use coffer::blob::{BlobKey, BlobStore};
use coffer::crypto::DataKey;
use coffer::crypto::segment::{CipherStream, Opener, Sealer};
use coffer::download::{self, parse_range};
use coffer::ids::{FileId, SessionId, Timestamp, UserId};
use coffer::ingest::filename;
use coffer::ingest::policy::{Rule, SNIFF_LEN, UploadPolicy, Utf8Check};
use coffer::secrets::{SecretKey, generate_hex};

const MIB: usize = 1024 * 1024;
/// The size of the chunks the pipeline is fed with (a typical hyper body frame is 8-64 KiB).
const CHUNK: usize = 64 * 1024;

/// Deterministic incompressible-looking bytes (xorshift), with a PNG signature in front.
fn png_bytes(len: usize) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Valid UTF-8 text with some multi-byte characters, so sequences straddle chunk edges.
fn text_bytes(len: usize) -> Vec<u8> {
    let line = "Grüße aus Köln, naïve café — 東京 ✓ plain ASCII follows for a while.\n";
    let mut out = String::with_capacity(len + line.len());
    while out.len() < len {
        out.push_str(line);
    }
    out.into_bytes()
}

fn policy() -> UploadPolicy {
    let mut allowed = BTreeMap::new();
    allowed.insert("png".to_owned(), "image/png".to_owned());
    allowed.insert("jpg".to_owned(), "image/jpeg".to_owned());
    allowed.insert("pdf".to_owned(), "application/pdf".to_owned());
    allowed.insert("txt".to_owned(), "text/plain".to_owned());
    UploadPolicy::new(&allowed)
}

fn ingest(c: &mut Criterion) {
    let data = png_bytes(MIB);
    let text = text_bytes(MIB);
    let policy = policy();
    let head = data.get(..SNIFF_LEN).unwrap();

    let mut g = c.benchmark_group("ingest");
    g.bench_function("sniff+policy (name -> rule -> magic bytes)", |b| {
        b.iter(|| {
            let name = filename::sanitize(black_box("holiday photo 2026.PNG"));
            let ext = filename::extension(&name);
            let rule = policy.rule_for(ext.as_deref()).unwrap();
            UploadPolicy::decide(rule, black_box(head)).unwrap()
        });
    });
    let png = Rule::Magic("image/png".to_owned());
    g.bench_function("decide png (8 KiB head)", |b| {
        b.iter(|| UploadPolicy::decide(&png, black_box(head)).unwrap());
    });

    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("utf8 check 1 MiB", |b| {
        b.iter(|| {
            let mut check = Utf8Check::default();
            for chunk in black_box(&text).chunks(CHUNK) {
                check.update(chunk).unwrap();
            }
            check.finish().unwrap();
        });
    });
    g.bench_function("sha256 1 MiB", |b| {
        b.iter(|| {
            let mut h = Sha256::new();
            for chunk in black_box(&data).chunks(CHUNK) {
                h.update(chunk);
            }
            h.finalize()
        });
    });
    g.bench_function("seal 1 MiB (AES-256-GCM segments)", |b| {
        let key = DataKey::generate();
        b.iter(|| {
            let mut sealer = Sealer::new(&key, FileId::new()).unwrap();
            let mut n = 0;
            for chunk in black_box(&data).chunks(CHUNK) {
                n += sealer.update(chunk).unwrap().len();
            }
            n + sealer.finish().unwrap().len()
        });
    });
    // What the pipeline does per byte, plain and sealed (without the disk write).
    g.bench_function("pipeline 1 MiB plain (sha256 + copy)", |b| {
        let mut sink = Vec::with_capacity(MIB);
        b.iter(|| {
            sink.clear();
            let mut h = Sha256::new();
            for chunk in black_box(&data).chunks(CHUNK) {
                h.update(chunk);
                sink.extend_from_slice(chunk);
            }
            h.finalize()
        });
    });
    g.bench_function("pipeline 1 MiB sealed (sha256 + seal + copy)", |b| {
        let key = DataKey::generate();
        let mut sink = Vec::with_capacity(MIB + MIB / 8);
        b.iter(|| {
            sink.clear();
            let mut h = Sha256::new();
            let mut sealer = Sealer::new(&key, FileId::new()).unwrap();
            for chunk in black_box(&data).chunks(CHUNK) {
                h.update(chunk);
                sink.extend_from_slice(&sealer.update(chunk).unwrap());
            }
            sink.extend_from_slice(&sealer.finish().unwrap());
            h.finalize()
        });
    });
    g.finish();
}

fn open_1mib(c: &mut Criterion) {
    let data = png_bytes(MIB);
    let key = DataKey::generate();
    let file = FileId::new();
    let mut sealer = Sealer::new(&key, file).unwrap();
    let mut blob = sealer.update(&data).unwrap();
    blob.extend_from_slice(&sealer.finish().unwrap());
    let blob = Bytes::from(blob);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let mut g = c.benchmark_group("crypto");
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("open 1 MiB (decrypt + authenticate)", |b| {
        b.iter(|| {
            // The blob store hands over 256 KiB reads of header + span (here the whole blob);
            // the opener re-frames them in segments.
            let body = blob.clone();
            let reads: Vec<std::io::Result<Bytes>> = (0..body.len())
                .step_by(256 * 1024)
                .map(|i| Ok(body.slice(i..(i + 256 * 1024).min(body.len()))))
                .collect();
            let inner: CipherStream = Box::pin(futures_util::stream::iter(reads));
            let mut opener = Opener::new(inner, &key, file, MIB as u64, 0, MIB as u64).unwrap();
            rt.block_on(async {
                let mut n = 0;
                while let Some(chunk) = opener.next().await {
                    n += chunk.unwrap().len();
                }
                assert_eq!(n, MIB);
            });
        });
    });
    g.finish();
}

fn ranges(c: &mut Criterion) {
    let len = 1u64 << 30;
    let etag = download::etag(&hex::encode([0xab; 32]));
    let modified = Timestamp::now();
    let mut plain = HeaderMap::new();
    plain.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    let mut ranged = plain.clone();
    ranged.insert(
        header::RANGE,
        HeaderValue::from_static("bytes=1048576-2097151"),
    );
    let mut conditional = ranged.clone();
    conditional.insert(header::IF_RANGE, HeaderValue::from_str(&etag).unwrap());

    let mut g = c.benchmark_group("download");
    for value in ["bytes=0-4095", "bytes=-500", "bytes=0-1,5-6", "items=1-2"] {
        g.bench_with_input(BenchmarkId::new("parse_range", value), value, |b, v| {
            b.iter(|| parse_range(black_box(v), len));
        });
    }
    for (name, headers) in [
        ("no range", &plain),
        ("range", &ranged),
        ("range + if-range", &conditional),
    ] {
        g.bench_with_input(BenchmarkId::new("plan", name), headers, |b, h| {
            b.iter(|| download::plan(&Method::GET, black_box(h), len, &etag, modified));
        });
    }
    g.finish();
}

fn tokens(c: &mut Criterion) {
    let secret = SecretKey::parse(&generate_hex()).unwrap();
    let keys = TokenKeys::new(&secret, "coffer", 900).unwrap();
    let (user, session) = (UserId::new(), SessionId::new());
    let token = keys.issue(user, session, Timestamp::now()).unwrap();

    let mut g = c.benchmark_group("jwt");
    g.bench_function("issue", |b| {
        b.iter(|| keys.issue(user, session, Timestamp::now()).unwrap());
    });
    g.bench_function("verify", |b| {
        b.iter(|| keys.verify(black_box(&token)).unwrap());
    });
    g.finish();
}

fn filenames(c: &mut Criterion) {
    let long = format!("{}.pdf", "é".repeat(200));
    let mut g = c.benchmark_group("filename");
    for (name, raw) in [
        ("ascii", "report-2026-q3.pdf"),
        (
            "path + controls + bidi",
            "C:\\Users\\x\\..\\evil\u{202E}gnp.exe\r\n.png",
        ),
        ("decomposed unicode", "Cafe\u{301} na\u{308}ive.txt"),
        ("long (405 bytes)", long.as_str()),
    ] {
        g.bench_with_input(BenchmarkId::new("sanitize", name), raw, |b, r| {
            b.iter(|| filename::sanitize(black_box(r)));
        });
    }
    g.finish();
}

fn blob_store(c: &mut Criterion) {
    const SIZE: usize = 64 * MIB;
    let data = png_bytes(SIZE);
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::new(Arc::new(LocalFs::open(dir.path()).unwrap()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut g = c.benchmark_group("blob");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Bytes(SIZE as u64));
    // create + 64 KiB writes + commit (fsync, rename, directory fsync); the blob is removed
    // afterwards, outside the timed part, so the disk does not fill up.
    g.bench_function("write 64 MiB + commit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let key = BlobKey::for_file(FileId::new(), false);
                    let start = Instant::now();
                    let mut writer = store.put(&key).await.unwrap();
                    for chunk in data.chunks(CHUNK) {
                        writer.write(chunk).await.unwrap();
                    }
                    writer.commit().await.unwrap();
                    total += start.elapsed();
                    store.delete(&key).await.unwrap();
                }
                total
            })
        });
    });

    let key = BlobKey::for_file(FileId::new(), false);
    rt.block_on(async {
        let mut writer = store.put(&key).await.unwrap();
        writer.write(&data).await.unwrap();
        writer.commit().await.unwrap();
    });
    // From the page cache: the cost of the read path itself (blocking reader + channel).
    g.bench_function("read 64 MiB", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut stream = store.get_range(&key, 0, SIZE as u64).await.unwrap();
                let mut n = 0;
                while let Some(chunk) = stream.next().await {
                    n += chunk.unwrap().len();
                }
                assert_eq!(n, SIZE);
            });
        });
    });
    g.finish();
}

criterion_group!(
    benches, ingest, open_1mib, ranges, tokens, filenames, blob_store
);
criterion_main!(benches);
