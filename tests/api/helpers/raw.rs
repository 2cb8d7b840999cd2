//! Raw HTTP/1 over TCP, for requests no client library sends (no `Host`, two of them, a broken
//! request line, 100 KiB of headers) and for reading several answers off one connection.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How long any read waits before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// One answer, as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The status line's version, e.g. `HTTP/1.1`.
    pub version: String,
    /// The status line's reason phrase.
    pub reason: String,
    /// Header lines in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes; none for a HEAD answer).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A client connection that sends bytes as given.
pub struct RawConn {
    stream: TcpStream,
    /// Read but not yet consumed.
    buf: Vec<u8>,
}

impl RawConn {
    /// Connect.
    pub async fn open(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Send bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Send bytes unless the server stops taking them: false when the write fails or does
    /// not finish within `patience` (what is not written by then is dropped).
    pub async fn send_while_taken(&mut self, bytes: &[u8], patience: std::time::Duration) -> bool {
        matches!(
            tokio::time::timeout(patience, self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Read one answer to a request other than HEAD.
    pub async fn response(&mut self) -> RawResponse {
        self.read_response(false).await
    }

    /// Read one answer to a HEAD request (no body, whatever `Content-Length` says).
    pub async fn head_response(&mut self) -> RawResponse {
        self.read_response(true).await
    }

    async fn read_response(&mut self, head: bool) -> RawResponse {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill().await > 0,
                "closed before a whole head: {:?}",
                self.text()
            );
        };
        let head_text = String::from_utf8(self.buf[..end - 4].to_vec()).unwrap();
        let mut lines = head_text.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap().to_owned();
        let status = parts.next().unwrap().parse().unwrap();
        let reason = parts.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        self.buf.drain(..end);
        let len: usize = match headers.iter().find(|(k, _)| k == "content-length") {
            // An interim answer (100 Continue) has no body.
            None if (100..200).contains(&status) => 0,
            Some(_) if head => 0,
            Some((_, v)) => v.parse().unwrap(),
            None => panic!("no content-length in {head_text:?}"),
        };
        while self.buf.len() < len {
            assert!(self.fill().await > 0, "closed mid-body");
        }
        let body = self.buf.drain(..len).collect();
        RawResponse {
            status,
            version,
            reason,
            headers,
            body,
        }
    }

    /// Whether the server closes the connection (EOF or reset) without sending anything more.
    pub async fn closed(&mut self) -> bool {
        self.buf.is_empty() && self.fill().await == 0
    }

    /// Read more; 0 on EOF or a reset.
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
            .await
            .expect("the server answers or closes in time");
        match read {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(_) => 0,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// The head of a raw-body upload of `filename` that announces `content_length` bytes (and a
/// `Content-Type`, when given), for a test that sends the body itself, or part of it.
pub fn upload_head(
    token: &str,
    filename: &str,
    content_length: u64,
    content_type: Option<&str>,
) -> Vec<u8> {
    let content_type = content_type
        .map(|t| format!("Content-Type: {t}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /api/v1/files?filename={filename} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{content_type}Content-Length: {content_length}\r\n\r\n"
    )
    .into_bytes()
}

/// Send one request on a fresh connection and read its answer.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut c = RawConn::open(addr).await;
    c.send(request).await;
    c.response().await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
