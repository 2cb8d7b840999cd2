//! Serving at scale (issue 17): chunk sizes follow how fast a client reads, and that never
//! changes a byte. Slow, fast and changing readers, whole files and ranges that start and end
//! on (and next to) every chunk and segment boundary, plain and encrypted.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::fixtures::png;
use crate::helpers::{TestApp, secret};

/// Chunk sizes the server may pick (16 KiB to 1 MiB), and the 64 KiB sealed segment.
const BOUNDARIES: [usize; 7] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
];

/// How the client reads: `(bytes, pause)` phases, the last one repeated to the end.
type Pace = [(usize, Duration)];

/// GET `path` over a socket with a small receive buffer (so the server, not the kernel, waits
/// for the client), reading the body in phases. Returns status, `Content-Length`, body.
async fn paced_get(
    app: &TestApp,
    path: &str,
    token: &str,
    range: Option<&str>,
    pace: &Pace,
) -> (u16, Vec<u8>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8192).unwrap();
    let mut s = socket.connect(app.addr).await.unwrap();
    let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{range}Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 8192];
    let (mut phase, mut in_phase) = (0usize, 0usize);
    loop {
        let (bytes, pause) = pace[phase.min(pace.len() - 1)];
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("the server stopped sending")
            .unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        in_phase += n;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        if in_phase >= bytes && phase < pace.len() - 1 {
            phase += 1;
            in_phase = 0;
        }
    }
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap();
    let body = raw[end..].to_vec();
    assert_eq!(
        body.len(),
        len,
        "the body is as long as Content-Length says"
    );
    (status, body)
}

fn slow_fast_slow() -> Vec<(usize, Duration)> {
    let ms = Duration::from_millis;
    vec![
        // ~2 MB/s: the server drops to its smallest chunks...
        (512 << 10, ms(4)),
        // ...then as fast as it sends: chunks grow...
        (1536 << 10, Duration::ZERO),
        // ...slow again (shrink while large chunks are in flight)...
        (256 << 10, ms(4)),
        // ...and fast to the end.
        (usize::MAX, Duration::ZERO),
    ]
}

async fn slow_readers_get_every_byte(app: TestApp) {
    let u = app.user("slowreader").await;
    let size = 4 * 1024 * 1024 + 12_345;
    let bytes = png(size);
    let f = app.stored(&u.token, "slow.png", bytes.clone()).await;
    let path = format!("/api/v1/files/{}/content", f["id"].as_str().unwrap());
    let (status, body) = paced_get(&app, &path, &u.token, None, &slow_fast_slow()).await;
    assert_eq!(status, 200);
    assert!(body == bytes, "a paced whole download differs");
    // A range read slowly, starting and ending off every boundary.
    let (a, b) = (100_001usize, 3 * 1024 * 1024 + 7);
    let range = format!("bytes={a}-{b}");
    let (status, body) = paced_get(&app, &path, &u.token, Some(&range), &slow_fast_slow()).await;
    assert_eq!(status, 206);
    assert!(body == bytes[a..=b], "a paced range differs");
}

#[tokio::test]
async fn a_slow_then_fast_then_slow_reader_receives_the_exact_bytes() {
    slow_readers_get_every_byte(TestApp::spawn().await).await;
}

#[tokio::test]
async fn an_encrypted_file_read_slowly_arrives_exact() {
    let app = TestApp::builder()
        .env("COFFER_ENCRYPTION_KEY", secret())
        .spawn()
        .await;
    slow_readers_get_every_byte(app).await;
}

async fn ranges_at_chunk_boundaries_are_exact(app: TestApp) {
    let u = app.user("boundaries").await;
    let size = 2 * 1024 * 1024 + 3 * 1024 + 5;
    let bytes = png(size);
    let f = app.stored(&u.token, "b.png", bytes.clone()).await;
    let id = f["id"].as_str().unwrap();
    let mut spans = Vec::new();
    for b in BOUNDARIES {
        for start in [b - 1, b, b + 1] {
            for len in [1, b - 1, b, b + 1, 2 * b + 1] {
                let end = (start + len - 1).min(size - 1);
                spans.push((start, end));
            }
        }
        // From the start, ending on and next to the boundary.
        spans.extend([(0, b - 2), (0, b - 1), (0, b)]);
    }
    spans.push((size - 1, size - 1));
    spans.push((0, size - 1));
    for (a, b) in spans {
        let r = app
            .download(&u.token, id, &[("range", &format!("bytes={a}-{b}"))])
            .await;
        assert_eq!(r.status(), 206, "bytes={a}-{b}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {a}-{b}/{size}").as_str()
        );
        let got = r.bytes().await.unwrap();
        assert!(got[..] == bytes[a..=b], "bytes={a}-{b} differ");
    }
    // Suffix ranges that end the file on every boundary.
    for b in BOUNDARIES {
        let r = app
            .download(&u.token, id, &[("range", &format!("bytes=-{}", b + 1))])
            .await;
        assert_eq!(r.status(), 206);
        assert!(r.bytes().await.unwrap()[..] == bytes[size - b - 1..]);
    }
}

#[tokio::test]
async fn ranges_on_and_next_to_every_chunk_boundary_are_exact() {
    ranges_at_chunk_boundaries_are_exact(TestApp::spawn().await).await;
}

#[tokio::test]
async fn encrypted_ranges_on_and_next_to_every_chunk_boundary_are_exact() {
    let app = TestApp::builder()
        .env("COFFER_ENCRYPTION_KEY", secret())
        .spawn()
        .await;
    ranges_at_chunk_boundaries_are_exact(app).await;
}

/// Many slow readers at once: the large-buffer budget runs out and streams fall back to the
/// smallest chunks; every reader still gets every byte, and a fast reader after them too.
#[tokio::test]
async fn thirty_two_concurrent_slow_readers_all_get_every_byte() {
    let app = TestApp::builder()
        .single_node("reads one process's buffer gauges from its /metrics")
        .spawn()
        .await;
    let u = app.user("crowd").await;
    let size = 3 * 1024 * 1024 + 1;
    let bytes = png(size);
    let f = app.stored(&u.token, "crowd.png", bytes.clone()).await;
    let path = format!("/api/v1/files/{}/content", f["id"].as_str().unwrap());
    // Fast first (large chunks, the budget taken), then slow.
    let pace = [
        (1 << 20, Duration::ZERO),
        (usize::MAX, Duration::from_millis(2)),
    ];
    let readers = (0..32).map(|_| paced_get(&app, &path, &u.token, None, &pace));
    for (status, body) in futures_util::future::join_all(readers).await {
        assert_eq!(status, 200);
        assert!(body == bytes, "a concurrent slow reader got other bytes");
    }
    let r = app.download(&u.token, f["id"].as_str().unwrap(), &[]).await;
    assert!(r.bytes().await.unwrap()[..] == bytes[..]);
    // Every buffer came back: the budget is whole again, and the idle ones kept are bounded.
    let mut held = u64::MAX;
    for _ in 0..50 {
        held = app.metric("coffer_download_buffer_large_bytes").await;
        if held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        held, 0,
        "large read buffers still held after every download ended"
    );
    assert!(app.metric("coffer_download_buffer_cached_bytes").await <= 4 << 20);
}

/// The in-process small-file cache (issue 17) answers repeat downloads, and never one that
/// is no longer allowed: a deleted file, an expired one, another user's, a deleted account's.
#[tokio::test]
async fn small_files_served_from_memory_never_outlive_their_deletion_expiry_or_scope() {
    let app = TestApp::builder()
        .single_node("reads one process's cache counters in /metrics")
        .env("COFFER_AUTH__PRINCIPAL_CACHE_SECS", "60")
        .spawn()
        .await;
    let admin = app.admin("cache_admin").await;
    let (u, other) = (app.user("cached").await, app.user("neighbour").await);
    let bytes = png(4096);
    let get = |token: String, id: String| {
        let app = &app;
        async move { app.download(&token, &id, &[]).await }
    };

    // Repeat downloads come from memory, byte for byte, and are each audited.
    let f = app.stored(&u.token, "hot.png", bytes.clone()).await;
    let id = f["id"].as_str().unwrap().to_owned();
    let hits = app.metric("coffer_small_file_cache_hits_total").await;
    for _ in 0..3 {
        let r = get(u.token.clone(), id.clone()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[..]);
    }
    assert_eq!(
        app.metric("coffer_small_file_cache_hits_total").await,
        hits + 2,
        "the first download reads the stores, the next two the cache"
    );
    // Another user still gets 404, even with the file in memory; ranges come from it too.
    assert_eq!(get(other.token.clone(), id.clone()).await.status(), 404);
    let r = app
        .download(&u.token, &id, &[("range", "bytes=10-19")])
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &bytes[10..20]);

    // Deleted: the very next download is 404.
    assert_eq!(app.delete_file(&id).bearer(&u.token).status().await, 204);
    assert_eq!(get(u.token.clone(), id.clone()).await.status(), 404);
    assert_eq!(get(admin.token.clone(), id.clone()).await.status(), 404);

    // Expired: 404 from the moment it expires, though nothing deleted it yet.
    let f = app
        .post("/api/v1/files")
        .as_user(&u)
        .query(&[("filename", "brief.png"), ("expires_in", "2")])
        .body(bytes.clone())
        .expect(201)
        .await;
    let brief = f["id"].as_str().unwrap().to_owned();
    assert_eq!(get(u.token.clone(), brief.clone()).await.status(), 200);
    assert_eq!(get(u.token.clone(), brief.clone()).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(u.token.clone(), brief.clone()).await.status(), 404);

    // An administrator reads another user's file into memory; the account is deleted: gone.
    let f = app.stored(&u.token, "doomed.png", bytes.clone()).await;
    let doomed = f["id"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        assert_eq!(get(admin.token.clone(), doomed.clone()).await.status(), 200);
    }
    assert_eq!(
        app.delete_user(&u.id).bearer(&admin.token).status().await,
        204
    );
    assert_eq!(get(admin.token.clone(), doomed.clone()).await.status(), 404);
    assert_eq!(app.metric("coffer_small_file_cache_entries").await, 0);
}
