//! The backends under test, and what a test needs to look behind them (the staging area,
//! the bucket's multipart uploads).

#[path = "../shared/s3_uploads.rs"]
mod s3_uploads;

use std::io::Write as _;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use coffer::blob::fs::LocalFs;
use coffer::blob::s3::{S3Settings, S3Store};
use coffer::blob::{BlobError, BlobStore, ByteStream};
use futures_util::StreamExt as _;
use object_store::ObjectStoreExt as _;
use tempfile::TempDir;

/// `COFFER_TEST_S3_*`: where the test bucket is.
#[derive(Debug, Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl S3Env {
    /// The variables, or `None` (after one note on stderr) when they are not set. With
    /// `COFFER_TEST_REQUIRE_STACK=1` (scripts/test-stack, CI) their absence fails instead.
    pub fn from_env(test: &str) -> Option<Self> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        let env = (|| {
            Some(Self {
                endpoint: var("COFFER_TEST_S3_ENDPOINT")?,
                region: var("COFFER_TEST_S3_REGION").unwrap_or_else(|| "garage".into()),
                bucket: var("COFFER_TEST_S3_BUCKET")?,
                access_key_id: var("COFFER_TEST_S3_ACCESS_KEY_ID")?,
                secret_access_key: var("COFFER_TEST_S3_SECRET_ACCESS_KEY")?,
            })
        })();
        if env.is_none() {
            assert!(
                var("COFFER_TEST_REQUIRE_STACK").as_deref() != Some("1"),
                "{test} needs COFFER_TEST_S3_* (the Garage stack)"
            );
            static NOTE: Once = Once::new();
            NOTE.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped: the S3 runs of the blob tests need the Garage stack; run scripts/test-stack"
                );
            });
        }
        env
    }

    /// Settings for a store under `prefix`.
    pub fn settings(&self, prefix: &str) -> S3Settings {
        S3Settings {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            prefix: prefix.to_owned(),
            force_path_style: true,
            access_key_id: self.access_key_id.clone().into(),
            secret_access_key: self.secret_access_key.clone().into(),
        }
    }

    /// The raw bucket, to plant or read objects behind the store's back.
    pub fn raw(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    /// Keys of the unfinished multipart uploads under `prefix` (ListMultipartUploads, which
    /// object_store does not offer, through curl's SigV4); `None` without curl.
    pub fn multipart_uploads(&self, prefix: &str) -> Option<Vec<String>> {
        s3_uploads::multipart_uploads(
            &s3_uploads::Bucket {
                endpoint: &self.endpoint,
                bucket: &self.bucket,
                region: &self.region,
                access_key_id: &self.access_key_id,
                secret_access_key: &self.secret_access_key,
            },
            prefix,
        )
    }
}

/// A fresh `t-<uuid>/` prefix: this test's corner of the bucket.
pub fn fresh_prefix() -> String {
    format!("t-{}/", uuid::Uuid::new_v4())
}

/// One backend under test.
pub struct Backend {
    pub name: &'static str,
    pub store: BlobStore,
    pub kind: Kind,
}

pub enum Kind {
    Fs { dir: TempDir },
    S3 { env: S3Env, prefix: String },
}

impl Backend {
    /// The local filesystem on a fresh temp dir.
    pub fn fs() -> Self {
        let dir = TempDir::new().unwrap();
        let fs = LocalFs::open(dir.path()).unwrap();
        Self {
            name: "fs",
            store: BlobStore::new(Arc::new(fs)),
            kind: Kind::Fs { dir },
        }
    }

    /// S3 on a fresh prefix.
    pub fn s3(env: &S3Env) -> Self {
        let prefix = fresh_prefix();
        let store = S3Store::open(&env.settings(&prefix)).unwrap();
        Self {
            name: "s3",
            store: BlobStore::new(Arc::new(store)),
            kind: Kind::S3 {
                env: env.clone(),
                prefix,
            },
        }
    }

    /// fs always; S3 when the stack is there.
    pub fn all(test: &str) -> Vec<Self> {
        let mut v = vec![Self::fs()];
        if let Some(env) = S3Env::from_env(test) {
            v.push(Self::s3(&env));
        }
        v
    }

    /// Something inside the blob tree that is not a blob (`name` relative to `blobs/`).
    pub async fn plant_stray(&self, name: &str) {
        match &self.kind {
            Kind::Fs { dir } => {
                let p = dir.path().join("blobs").join(name);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, b"stray").unwrap();
            }
            Kind::S3 { env, prefix } => {
                let path = object_store::path::Path::from(format!("{prefix}blobs/{name}"));
                env.raw().put(&path, "stray".into()).await.unwrap();
            }
        }
    }

    /// Whatever is staged and not yet a blob: temp files, or unfinished multipart uploads
    /// (`None` when that cannot be seen: no curl).
    pub fn staged(&self) -> Option<Vec<String>> {
        match &self.kind {
            Kind::Fs { dir } => Some(
                std::fs::read_dir(dir.path().join("tmp"))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect(),
            ),
            Kind::S3 { env, prefix } => env.multipart_uploads(prefix),
        }
    }

    /// Wait (bounded) until nothing is staged: S3 aborts are sent from a spawned task.
    pub async fn assert_nothing_staged(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.staged() {
                None => return,
                Some(v) if v.is_empty() => return,
                Some(v) if Instant::now() > deadline => {
                    panic!("{}: {what}: still staged: {v:?}", self.name)
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Remove everything this backend's test left (S3: the prefix is shared by nothing else).
    pub async fn clean(&self) {
        let inv = self.store.list().await.unwrap();
        for b in inv.blobs {
            self.store.delete(&b.key).await.unwrap();
        }
        if let Kind::S3 { env, prefix } = &self.kind {
            let raw = env.raw();
            for stray in inv.strays {
                let path = object_store::path::Path::from(format!("{prefix}{stray}"));
                raw.delete(&path).await.unwrap();
            }
        }
    }
}

/// Drain a stream: the bytes, or the first error.
pub async fn drain(s: Result<ByteStream, BlobError>) -> Result<Vec<u8>, BlobError> {
    let mut s = s?;
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// A deterministic byte pattern: byte `i` of every test blob.
pub fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// `len` bytes of the pattern starting at `from`.
pub fn pattern(from: u64, len: usize) -> Vec<u8> {
    (from..from + len as u64).map(byte_at).collect()
}
