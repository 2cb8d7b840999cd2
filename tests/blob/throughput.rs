//! A measurement, not a check: 1 GiB through the S3 backend, each way, and the resident
//! memory the put added. Ignored in normal runs (a debug build takes minutes); run it as
//!
//! ```text
//! scripts/test-stack --release --test blob s3_throughput -- --ignored --nocapture
//! ```

use std::time::Instant;

use coffer::blob::{BlobKey, BlobStore};
use coffer::ids::FileId;
use futures_util::StreamExt as _;

use crate::backends::{Backend, S3Env, pattern};

const GIB: usize = 1 << 30;
/// What the upload pipeline hands the writer at a time.
const WRITE: usize = 256 * 1024;

/// `VmHWM` and `VmRSS` of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn put(store: &BlobStore, key: &BlobKey, template: &[u8]) -> f64 {
    let started = Instant::now();
    let mut w = store.put(key).await.unwrap();
    let mut chunk = template.to_vec();
    assert!(chunk.len() >= 8);
    for i in 0..GIB / chunk.len() {
        // Every MiB different: Garage stores identical blocks once, which would flatter it.
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        for slice in chunk.chunks(WRITE) {
            w.write(slice).await.unwrap();
        }
    }
    w.commit().await.unwrap();
    started.elapsed().as_secs_f64()
}

async fn get(store: &BlobStore, key: &BlobKey) -> f64 {
    let started = Instant::now();
    let mut s = store.get_range(key, 0, GIB as u64).await.unwrap();
    let mut n = 0;
    while let Some(c) = s.next().await {
        n += c.unwrap().len();
    }
    assert_eq!(n, GIB);
    started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: 1 GiB each way; run with --release --ignored --nocapture"]
async fn s3_throughput_1gib() {
    let Some(env) = S3Env::from_env("s3_throughput_1gib") else {
        return;
    };
    let b = Backend::s3(&env);
    let chunk = pattern(0, 1 << 20);
    let mb = GIB as f64 / 1e6;
    for round in 1..=3 {
        let key = BlobKey::for_file(FileId::new(), false);
        // Reset the peak (clear_refs 5), so it is this put's.
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let (_, before) = memory();
        let put = put(&b.store, &key, &chunk).await;
        let (peak, _) = memory();
        let get = get(&b.store, &key).await;
        eprintln!(
            "round {round}: put {:.0} MB/s ({put:.1} s), get {:.0} MB/s ({get:.1} s); \
             resident {} MiB before the put, peak {} MiB during it",
            mb / put,
            mb / get,
            before >> 20,
            peak >> 20,
        );
        b.store.delete(&key).await.unwrap();
    }
}
