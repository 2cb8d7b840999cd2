//! The backend contract, case by case, on every backend.

use std::time::{Duration, Instant};

use coffer::blob::s3::{PART_SIZE, PARTS_IN_FLIGHT};
use coffer::blob::{BlobError, BlobKey};
use coffer::ids::FileId;
use futures_util::StreamExt as _;

use crate::backends::{Backend, drain, pattern};

fn fresh_key() -> BlobKey {
    BlobKey::for_file(FileId::new(), false)
}

async fn store(b: &Backend, key: &BlobKey, data: &[u8], chunk: usize) {
    let mut w = b.store.put(key).await.unwrap();
    for c in data.chunks(chunk.max(1)) {
        w.write(c).await.unwrap();
    }
    w.commit().await.unwrap();
}

/// The first error of a stream (or of its opening); panics if it ends without one.
async fn first_error(b: &Backend, key: &BlobKey, offset: u64, len: u64) -> BlobError {
    match b.store.get_range(key, offset, len).await {
        Err(e) => e,
        Ok(mut s) => loop {
            match s.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("{}: range {offset}+{len} ended silently", b.name),
            }
        },
    }
}

#[tokio::test]
async fn ranges_read_back_whole_in_the_middle_and_short_past_the_end() {
    for b in Backend::all("ranges_read_back") {
        let key = fresh_key();
        let data = pattern(0, 300_000);
        store(&b, &key, &data, 70_000).await;
        let n = data.len() as u64;
        assert_eq!(
            drain(b.store.get_range(&key, 0, n).await).await.unwrap(),
            data,
            "{}",
            b.name
        );
        assert_eq!(
            drain(b.store.get_range(&key, 1000, 5000).await)
                .await
                .unwrap(),
            &data[1000..6000],
            "{}",
            b.name
        );
        assert_eq!(
            drain(b.store.get_range(&key, n - 1, 1).await)
                .await
                .unwrap(),
            &data[data.len() - 1..],
            "{}",
            b.name
        );
        assert!(
            drain(b.store.get_range(&key, 10, 0).await)
                .await
                .unwrap()
                .is_empty()
        );
        // Past the end: the bytes that exist may come, then `Short`; never a silent end.
        for (offset, len) in [(n - 3, 10), (n, 1), (n + 100, 5), (0, n + 1), (0, 2 * n)] {
            let e = first_error(&b, &key, offset, len).await;
            assert!(
                matches!(e, BlobError::Short),
                "{}: {offset}+{len}: {e:?}",
                b.name
            );
        }
        b.clean().await;
    }
}

#[tokio::test]
async fn an_empty_blob_is_a_blob() {
    for b in Backend::all("an_empty_blob_is_a_blob") {
        let key = fresh_key();
        store(&b, &key, &[], 1).await;
        assert_eq!(b.store.stat(&key).await.unwrap(), 0, "{}", b.name);
        assert!(
            drain(b.store.get_range(&key, 0, 0).await)
                .await
                .unwrap()
                .is_empty()
        );
        let e = first_error(&b, &key, 0, 1).await;
        assert!(matches!(e, BlobError::Short), "{}: {e:?}", b.name);
        b.clean().await;
    }
}

#[tokio::test]
async fn a_missing_blob_is_not_found_before_any_stream() {
    for b in Backend::all("a_missing_blob_is_not_found") {
        let key = fresh_key();
        for (offset, len) in [(0, 10), (0, 1_000_000), (5, 0)] {
            assert!(
                matches!(
                    b.store.get_range(&key, offset, len).await,
                    Err(BlobError::NotFound)
                ),
                "{}: {offset}+{len}",
                b.name
            );
        }
        assert!(matches!(b.store.stat(&key).await, Err(BlobError::NotFound)));
    }
}

#[tokio::test]
async fn stat_delete_twice_and_list() {
    for b in Backend::all("stat_delete_twice_and_list") {
        let (k1, k2) = (fresh_key(), BlobKey::for_file(FileId::new(), true));
        let before = std::time::SystemTime::now() - Duration::from_secs(60);
        store(&b, &k1, &pattern(0, 1234), 100).await;
        store(&b, &k2, &pattern(7, 10), 3).await;
        assert_eq!(b.store.stat(&k1).await.unwrap(), 1234, "{}", b.name);
        assert_eq!(b.store.stat(&k2).await.unwrap(), 10, "{}", b.name);

        b.plant_stray("zz/not-a-blob.txt").await;
        let inv = b.store.list().await.unwrap();
        let mut got: Vec<_> = inv.blobs.iter().map(|s| (s.key.clone(), s.len)).collect();
        got.sort();
        let mut want = vec![(k1.clone(), 1234), (k2.clone(), 10)];
        want.sort();
        assert_eq!(got, want, "{}", b.name);
        assert!(
            inv.blobs.iter().all(|s| s.changed_at > before),
            "{}",
            b.name
        );
        assert!(
            inv.strays.iter().any(|s| s.ends_with("not-a-blob.txt")),
            "{}: strays {:?}",
            b.name,
            inv.strays
        );

        b.store.delete(&k1).await.unwrap();
        assert!(matches!(b.store.stat(&k1).await, Err(BlobError::NotFound)));
        assert!(matches!(
            b.store.get_range(&k1, 0, 1).await,
            Err(BlobError::NotFound)
        ));
        // A second delete: S3 cannot tell (Ok), the filesystem can (NotFound); both mean gone.
        match b.store.delete(&k1).await {
            Ok(()) | Err(BlobError::NotFound) => {}
            Err(e) => panic!("{}: second delete: {e:?}", b.name),
        }
        let left: Vec<_> = b
            .store
            .list()
            .await
            .unwrap()
            .blobs
            .into_iter()
            .map(|s| s.key)
            .collect();
        assert_eq!(left, vec![k2.clone()], "{}", b.name);
        b.clean().await;
    }
}

#[tokio::test]
async fn a_dropped_writer_leaves_nothing() {
    for b in Backend::all("a_dropped_writer_leaves_nothing") {
        // Small (never left the process on S3) and large (a multipart upload was started).
        for len in [1000, PART_SIZE + PART_SIZE / 2] {
            let key = fresh_key();
            let mut w = b.store.put(&key).await.unwrap();
            for c in pattern(0, len).chunks(256 * 1024) {
                w.write(c).await.unwrap();
            }
            if len > PART_SIZE && b.name == "s3" {
                assert!(w.staging_id().is_some(), "a multipart upload is staged");
            }
            drop(w);
            b.assert_nothing_staged(&format!("{len} bytes dropped"))
                .await;
            assert!(matches!(b.store.stat(&key).await, Err(BlobError::NotFound)));
            assert!(b.store.list().await.unwrap().blobs.is_empty(), "{}", b.name);
        }
    }
}

#[tokio::test]
async fn a_crashed_writers_staging_is_aborted_by_its_id() {
    for b in Backend::all("a_crashed_writers_staging") {
        let key = fresh_key();
        let mut w = b.store.put(&key).await.unwrap();
        for c in pattern(0, PART_SIZE + 1000).chunks(256 * 1024) {
            w.write(c).await.unwrap();
        }
        let id = w
            .staging_id()
            .expect("staged after a part's worth of bytes");
        // A crash: no Drop, so no abort.
        std::mem::forget(w);
        if let Some(staged) = b.staged() {
            assert_eq!(staged.len(), 1, "{}: {staged:?}", b.name);
        }
        b.store.abort_staged(&key, &id).await.unwrap();
        b.assert_nothing_staged("aborted by id").await;
        // Again, and for an upload that is long done: harmless.
        b.store.abort_staged(&key, &id).await.unwrap();
        assert!(matches!(b.store.stat(&key).await, Err(BlobError::NotFound)));
    }
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test]
async fn a_large_blob_streams_through_bounded_buffers() {
    const LEN: usize = 64 * 1024 * 1024;
    const CHUNK: usize = 256 * 1024;
    // What the S3 writer may hold (parts filling and in flight), plus allocator slack.
    let bound = ((PARTS_IN_FLIGHT + 1) * PART_SIZE + 16 * 1024 * 1024) as u64;
    for b in Backend::all("a_large_blob_streams") {
        let key = fresh_key();
        let base = rss();
        let mut peak = 0;
        let started = Instant::now();
        let mut w = b.store.put(&key).await.unwrap();
        let mut at = 0u64;
        while (at as usize) < LEN {
            // Made on the fly, so the test holds one chunk, never the blob.
            w.write(&pattern(at, CHUNK)).await.unwrap();
            at += CHUNK as u64;
            peak = peak.max(rss().saturating_sub(base));
        }
        w.commit().await.unwrap();
        let put = started.elapsed();
        assert!(
            peak < bound,
            "{}: resident memory grew by {} MiB while writing 64 MiB (bound {} MiB)",
            b.name,
            peak >> 20,
            bound >> 20
        );
        assert_eq!(b.store.stat(&key).await.unwrap(), LEN as u64);

        // Read back as a stream, compared chunk by chunk (never held whole either).
        let started = Instant::now();
        let mut s = b.store.get_range(&key, 0, LEN as u64).await.unwrap();
        let mut seen = 0u64;
        while let Some(chunk) = s.next().await {
            let chunk = chunk.unwrap();
            assert!(
                chunk == pattern(seen, chunk.len()),
                "{}: bytes at {seen}",
                b.name
            );
            seen += chunk.len() as u64;
        }
        assert_eq!(seen, LEN as u64);
        eprintln!(
            "{}: 64 MiB put {:.0} ms (+{} MiB resident at most), get {:.0} ms",
            b.name,
            put.as_secs_f64() * 1e3,
            peak >> 20,
            started.elapsed().as_secs_f64() * 1e3
        );
        b.clean().await;
    }
}
