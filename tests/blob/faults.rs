//! An object store that cannot serve: refused connections, silence, 5xx answers. Each call
//! fails as `Unavailable` (503 for clients) within seconds, never hangs, never a 500; other
//! answers keep their meaning. No store is needed: these are plain loopback sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer::blob::s3::{S3Settings, S3Store};
use coffer::blob::{BlobError, BlobKey, BlobStore, BoxFuture};
use coffer::ids::FileId;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

fn store_at(endpoint: String) -> BlobStore {
    let s = S3Settings {
        endpoint,
        region: "garage".into(),
        bucket: "coffer".into(),
        prefix: "faults".into(),
        force_path_style: true,
        access_key_id: "GK0000000000000000000000".to_owned().into(),
        secret_access_key: "0".repeat(64).into(),
    };
    BlobStore::new(Arc::new(S3Store::open(&s).unwrap()))
}

/// A loopback port nothing listens on.
async fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// Every call that needs the store must be `Unavailable` within `limit` (run at once, so a
/// silent store costs one deadline, not one per call).
async fn all_unavailable(store: &BlobStore, limit: Duration) {
    let key = BlobKey::for_file(FileId::new(), false);
    let timed = async |what: &'static str, call: BoxFuture<'_, Result<(), BlobError>>| {
        let started = Instant::now();
        let r = call.await;
        let took = started.elapsed();
        assert!(matches!(r, Err(BlobError::Unavailable(_))), "{what}: {r:?}");
        assert!(took < limit, "{what} took {took:?}");
    };
    let put = async {
        let mut w = store.put(&key).await?;
        w.write(b"hello").await?;
        w.commit().await
    };
    let ready = async {
        let started = Instant::now();
        assert!(!store.ready().await);
        let took = started.elapsed();
        assert!(took < Duration::from_millis(2500), "ready took {took:?}");
    };
    tokio::join!(
        timed("put", Box::pin(put)),
        timed(
            "get",
            Box::pin(async { store.get_range(&key, 0, 5).await.map(drop) })
        ),
        timed("stat", Box::pin(async { store.stat(&key).await.map(drop) })),
        timed("delete", Box::pin(store.delete(&key))),
        timed("list", Box::pin(async { store.list().await.map(drop) })),
        timed(
            "abort_staged",
            Box::pin(store.abort_staged(&key, "some-upload"))
        ),
        ready,
    );
}

#[tokio::test]
async fn a_store_that_refuses_connections_is_unavailable_at_once() {
    let store = store_at(closed_port().await);
    // Refused connections are retried twice with a short backoff, then answered.
    all_unavailable(&store, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_silent_store_is_unavailable_within_the_deadline() {
    // Accepts connections (the kernel does) and never answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store = store_at(format!("http://{}", l.local_addr().unwrap()));
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            open.push(s);
        }
    });
    // Five seconds per call (retries included), plus scheduling slack.
    all_unavailable(&store, Duration::from_secs(7)).await;
    held.abort();
}

/// A server answering every request with `status` (and closing the connection).
async fn answering(status: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "<Error><Code>X</Code><Message>x</Message></Error>";
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn server_errors_are_unavailable_other_answers_keep_their_meaning() {
    for status in [
        "503 Service Unavailable",
        "500 Internal Server Error",
        "429 Too Many Requests",
    ] {
        let store = store_at(answering(status).await);
        let key = BlobKey::for_file(FileId::new(), false);
        let t = Instant::now();
        let r = store.stat(&key).await;
        assert!(
            matches!(r, Err(BlobError::Unavailable(_))),
            "{status}: {r:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{status}: {:?}",
            t.elapsed()
        );
        assert!(!store.ready().await, "{status}");
    }
    // A 404 is a missing blob, and the store is there (ready).
    let store = store_at(answering("404 Not Found").await);
    let key = BlobKey::for_file(FileId::new(), false);
    assert!(matches!(store.stat(&key).await, Err(BlobError::NotFound)));
    assert!(store.ready().await);
    // Refused credentials or a bad request are faults to fix, not outages to wait out.
    for status in ["403 Forbidden", "400 Bad Request"] {
        let store = store_at(answering(status).await);
        let r = store.stat(&key).await;
        assert!(matches!(r, Err(BlobError::Io(_))), "{status}: {r:?}");
        assert!(!store.ready().await, "{status}");
    }
}
