//! Serving from an S3-compatible store: the test bucket named by `COFFER_TEST_S3_*`
//! (`scripts/test-stack` starts Garage and sets them), a server configured for it, a look at
//! the bucket behind the server's back, and a gate between the two that can fail like a
//! store does (refuse connections, or accept them and never answer).
//!
//! Without the variables a test that needs the bucket passes after one `skipped:` line on
//! stderr; with `COFFER_TEST_REQUIRE_STACK=1` their absence fails it. A test holds the stack's
//! shared lock while it uses the bucket, so a test that stops Garage nodes (which takes the
//! lock exclusively) never runs beside it.

#[path = "../../shared/s3_uploads.rs"]
mod s3_uploads;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use object_store::path::Path;
use object_store::{ObjectStore as _, ObjectStoreExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::TestAppBuilder;
use super::stack::{self, Stack};

/// Where the test bucket is.
#[derive(Debug, Clone)]
pub struct S3Env {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Signing region.
    pub region: String,
    /// Bucket (tests share it, each under its own prefix).
    pub bucket: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// The stack, held (its shared lock) while the test uses the bucket; `None` where the
    /// caller holds it, or no stack directory is named.
    held: Option<Arc<Stack>>,
}

impl S3Env {
    /// The bucket of a stack the caller holds.
    pub fn of(stack: &Stack) -> Self {
        Self {
            endpoint: stack.s3_endpoint.clone(),
            region: stack.s3_region.clone(),
            bucket: stack.s3_bucket.clone(),
            access_key_id: stack.s3_access_key_id.clone(),
            secret_access_key: stack.s3_secret_access_key.clone(),
            held: None,
        }
    }

    /// This bucket, with the stack held until the last clone is dropped.
    fn holding(self, stack: Stack) -> Self {
        Self {
            held: Some(Arc::new(stack)),
            ..self
        }
    }

    /// A store at `endpoint` that no request reaches (nothing listens there).
    pub fn unreachable(endpoint: String) -> Self {
        Self {
            endpoint,
            region: "garage".into(),
            bucket: "coffer".into(),
            access_key_id: "GK0000000000000000000000".into(),
            secret_access_key: "0".repeat(64),
            held: None,
        }
    }

    /// The bucket for test `test`, or `None` after the skip note.
    pub fn require(test: &str) -> Option<Self> {
        if std::env::var_os(stack::STACK_DIR).is_some() {
            let stack = stack::require(test)?;
            return Some(Self::of(&stack).holding(stack));
        }
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        let env = (|| {
            Some(Self {
                endpoint: var("COFFER_TEST_S3_ENDPOINT")?,
                region: var("COFFER_TEST_S3_REGION").unwrap_or_else(|| "garage".into()),
                bucket: var("COFFER_TEST_S3_BUCKET")?,
                access_key_id: var("COFFER_TEST_S3_ACCESS_KEY_ID")?,
                secret_access_key: var("COFFER_TEST_S3_SECRET_ACCESS_KEY")?,
                held: None,
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
                    "skipped: the S3 tests of the API (first: {test}) need the Garage stack; run scripts/test-stack"
                );
            });
        }
        env
    }

    /// The same bucket through another endpoint (a [`Gate`]).
    pub fn via(&self, endpoint: String) -> Self {
        Self {
            endpoint,
            ..self.clone()
        }
    }

    /// The bucket itself, for looking behind the server's back.
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

    /// Every object key under `prefix`: those listed that are there (Garage's listing may
    /// still show an object for a moment after its DeleteObject answered, while HEAD and GET
    /// already answer 404).
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        use futures_util::TryStreamExt as _;
        let dir = Path::from(prefix.trim_end_matches('/'));
        let listed: Vec<Path> = self
            .raw()
            .list(Some(&dir))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .unwrap();
        let mut keys = Vec::new();
        for path in listed {
            match self.raw().head(&path).await {
                Ok(_) => keys.push(path.to_string()),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => panic!("HEAD {path}: {e}"),
            }
        }
        keys.sort();
        keys
    }

    /// An object's bytes.
    pub async fn object(&self, key: &str) -> Vec<u8> {
        let got = self.raw().get(&Path::from(key)).await.unwrap();
        got.bytes().await.unwrap().to_vec()
    }

    /// Keys of unfinished multipart uploads under `prefix` (ListMultipartUploads through
    /// curl's SigV4: object_store does not offer it); `None` without curl.
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

impl TestAppBuilder {
    /// Store blobs in the bucket of `s3`, under `prefix`.
    pub fn s3(self, s3: &S3Env, prefix: &str) -> Self {
        self.env("COFFER_STORAGE__BACKEND", "s3")
            .env("COFFER_S3__ENDPOINT", &s3.endpoint)
            .env("COFFER_S3__REGION", &s3.region)
            .env("COFFER_S3__BUCKET", &s3.bucket)
            .env("COFFER_S3__PREFIX", prefix)
            .env("COFFER_S3_ACCESS_KEY_ID", &s3.access_key_id)
            .env("COFFER_S3_SECRET_ACCESS_KEY", &s3.secret_access_key)
    }
}

/// How a [`Gate`] treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward to the store.
    Open,
    /// Close every connection at once (open ones too): a store that is down.
    Refuse,
    /// Accept and never answer (open ones go quiet too): a store that hangs.
    Silent,
}

/// A TCP forwarder in front of the store whose behaviour a test switches. It runs on its own
/// thread and runtime: the test's runtime may be blocked (the harness waits for the server's
/// first line synchronously) while the server already talks to the store at start-up.
pub struct Gate {
    /// `http://127.0.0.1:PORT`, to give the server as its endpoint.
    pub endpoint: String,
    mode: watch::Sender<Mode>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Gate {
    /// Forward to `upstream` (`http://host:port`), open.
    pub async fn start(upstream: &str) -> Self {
        let to: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (mode, watch) = watch::channel(Mode::Open);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let accept = async {
                    while let Ok((conn, _)) = listener.accept().await {
                        tokio::spawn(serve(conn, to, watch.clone()));
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            endpoint,
            mode,
            stop: Some(stop),
        }
    }

    /// Switch how connections are treated, from now on and for open ones.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(mut conn: TcpStream, to: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let current = *mode.borrow_and_update();
    match current {
        Mode::Refuse => return,
        Mode::Silent => {
            // Hold it, unanswered, until the gate opens or closes again.
            let _ = mode.wait_for(|m| *m != Mode::Silent).await;
            return;
        }
        Mode::Open => {}
    }
    let Ok(mut upstream) = TcpStream::connect(to).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream) => return,
        _ = mode.changed() => {}
    }
    // Switched: a pooled connection must not outlive an outage. Refused ones close now;
    // silent ones stay open, unanswered, until the next switch.
    if *mode.borrow_and_update() == Mode::Silent {
        let _ = mode.wait_for(|m| *m != Mode::Silent).await;
    }
}

/// Poll `f` until it holds, for at most `limit`.
pub async fn within<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
