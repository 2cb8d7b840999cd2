//! The multi-node mode of the harness (`COFFER_TEST_MULTINODE=1` with the test stack's
//! variables): every [`super::TestApp`] that does not say otherwise is two `coffer serve`
//! processes with the same configuration and secrets, sharing a fresh PostgreSQL database and
//! a fresh prefix of the three-node Garage bucket (node 1 talks to Garage node 1, node 2 to
//! Garage node 2), behind [`Front`]: one loopback address that hands each new TCP connection
//! to the next node in turn. The harness's client keeps no idle connection in this mode, so
//! consecutive requests of one test land on different nodes.
//!
//! The front is a byte relay, not an HTTP proxy: what a client sends reaches a node
//! unchanged (raw requests, malformed heads, slow bodies, half-closes), which nginx would
//! rewrite or answer itself. What it cannot give a test is one server: tests that look at one
//! node's disk, signal one process or count one node's connections say so with
//! [`super::TestAppBuilder::single_node`] and a reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use object_store::ObjectStoreExt as _;
use object_store::path::Path as ObjectPath;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

use super::s3::S3Env;
use super::stack::Stack;

/// Whether this run is in multi-node mode.
pub fn enabled() -> bool {
    std::env::var("COFFER_TEST_MULTINODE").as_deref() == Ok("1")
}

/// The stack the nodes share; panics (the run asked for multi-node mode) without it.
pub fn stack() -> Stack {
    Stack::from_env().unwrap_or_else(|| {
        panic!(
            "COFFER_TEST_MULTINODE=1 needs the PostgreSQL+Garage stack: source its env file \
             (scripts/test-stack does) or unset COFFER_TEST_MULTINODE"
        )
    })
}

/// A round-robin TCP relay in front of the nodes, on its own thread and runtime (the test's
/// runtime may be blocked while a node starts). Dropping it closes every relayed connection.
pub struct Front {
    /// Where clients connect.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Front {
    /// Relay to `nodes`, each new connection to the next one.
    pub fn start(nodes: Vec<SocketAddr>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let next = AtomicUsize::new(0);
                let accept = async {
                    while let Ok((conn, _)) = listener.accept().await {
                        let to = nodes[next.fetch_add(1, Ordering::Relaxed) % nodes.len()];
                        tokio::spawn(relay(conn, to));
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            addr,
            stop: Some(stop),
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn relay(conn: TcpStream, to: SocketAddr) {
    let _ = conn.set_nodelay(true);
    // A node that is down: the client sees its connection closed, as behind a balancer
    // without retries.
    let Ok(upstream) = TcpStream::connect(to).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let (mut from_client, mut to_client) = conn.into_split();
    let (mut from_node, mut to_node) = upstream.into_split();
    // Each direction on its own, as the two halves of a direct connection: a node that
    // answers early (a 413 before the whole body) and closes makes the client's direction
    // fail, while its answer still reaches the client. (copy_bidirectional would give up on
    // the first error and drop the answer.)
    let up = async {
        let _ = tokio::io::copy(&mut from_client, &mut to_node).await;
        let _ = to_node.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut from_node, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    tokio::join!(up, down);
}

/// A test's own prefix of the bucket, emptied when the last server using it is gone (the
/// stack's disk is shared, and Garage keeps three replicas of every object).
#[derive(Debug)]
pub struct Prefix {
    /// `t-<uuid>/`.
    pub prefix: String,
    s3: S3Env,
}

impl Prefix {
    /// A fresh prefix in the stack's bucket.
    pub fn fresh(stack: &Stack) -> Arc<Self> {
        Arc::new(Self {
            prefix: stack.fresh_prefix(),
            s3: S3Env::of(stack),
        })
    }
}

impl Prefix {
    /// Run `f` on the bucket from a thread and runtime of its own: callers may be inside the
    /// test's runtime, in a synchronous closure.
    fn blocking<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
        &self,
        f: impl FnOnce(S3Env) -> F + Send + 'static,
    ) -> T {
        let s3 = self.s3.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f(s3))
        })
        .join()
        .unwrap()
    }

    /// The keys below the prefix now.
    pub fn keys(&self) -> Vec<String> {
        let prefix = self.prefix.clone();
        self.blocking(move |s3| async move { s3.keys(&prefix).await })
    }

    /// An object's bytes.
    pub fn get(&self, key: &str) -> Vec<u8> {
        let key = key.to_owned();
        self.blocking(move |s3| async move { s3.object(&key).await })
    }

    /// Write an object (behind the nodes' backs).
    pub fn put(&self, key: &str, bytes: &[u8]) {
        let (key, bytes) = (ObjectPath::from(key), bytes.to_vec());
        self.blocking(move |s3| async move {
            s3.raw().put(&key, bytes.into()).await.unwrap();
        });
    }

    /// Delete an object (behind the nodes' backs).
    pub fn delete(&self, key: &str) {
        let key = ObjectPath::from(key);
        self.blocking(move |s3| async move {
            s3.raw().delete(&key).await.unwrap();
        });
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let (s3, prefix) = (self.s3.clone(), self.prefix.clone());
        // Drop may run inside the test's runtime, which cannot be blocked on: a thread of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let store = s3.raw();
                for key in s3.keys(&prefix).await {
                    let _ = store.delete(&ObjectPath::from(key)).await;
                }
            });
        });
        let _ = done.join();
    }
}
