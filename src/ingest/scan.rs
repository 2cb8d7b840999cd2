//! The clamd client: `PING` for readiness, and an `INSTREAM` session fed while an upload
//! streams, over `unix:/path` or `tcp://host:port` (clamd's own protocol, `man clamd`).
//!
//! A session is a connection that has sent `zINSTREAM\0`; each [`ScanSession::feed`] writes
//! length-prefixed frames (4-byte big-endian length, then the bytes), and
//! [`ScanSession::verdict`] writes the zero-length terminator and reads the one answer. Frames
//! go straight to the socket: when clamd reads slowly the write waits (back-pressure reaches
//! the upload through the pipeline's batches), and only one frame being assembled
//! ([`FRAME`] bytes) is ever held.
//!
//! Invariant: fail closed. Every step (connect, each frame, the answer) is bounded by
//! `scan.timeout_secs`; any failure, refusal or answer that is not exactly one of clamd's
//! known replies is [`Verdict::Unavailable`], never [`Verdict::Clean`]. Once a session has
//! settled (too large, clamd gone) it stays settled: later feeds cost nothing.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes per `INSTREAM` frame: small frames cost a syscall pair each, large ones memory.
pub const FRAME: usize = 64 * 1024;
/// The longest answer read (a signature name is far shorter).
const ANSWER_MAX: usize = 4096;
/// The answer when clamd's `StreamMaxLength` is reached.
const SIZE_LIMIT: &str = "INSTREAM size limit exceeded. ERROR";
/// How long to wait for clamd's parting words after it dropped a write (it writes its
/// size-limit answer, then closes).
const LAST_WORDS: Duration = Duration::from_secs(2);

/// Where clamd listens (`scan.clamd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddr {
    /// `unix:/absolute/path`.
    Unix(PathBuf),
    /// `tcp://host:port`.
    Tcp(String),
}

impl ClamdAddr {
    /// Parse `unix:/path` or `tcp://host:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            // sun_path holds 108 bytes, NUL included.
            if !path.starts_with('/') || path.len() > 107 {
                return Err(format!(
                    "{s:?}: unix: needs an absolute socket path of at most 107 bytes"
                ));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(hostport) = s.strip_prefix("tcp://") {
            let ok = hostport.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(['/', '?', '#', '@', ' '])
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(format!("{s:?}: tcp:// needs host:port and nothing else"));
            }
            return Ok(Self::Tcp(hostport.to_owned()));
        }
        Err(format!("{s:?}: expected unix:/PATH or tcp://HOST:PORT"))
    }
}

/// What clamd said about a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `stream: OK`.
    Clean,
    /// `stream: <signature> FOUND`.
    Infected(String),
    /// Over `scan.max_bytes`.
    TooLarge,
    /// Over clamd's own `StreamMaxLength` (set below `scan.max_bytes`).
    TooLargeForClamd,
    /// clamd unreachable, too slow, failing, or answering something unknown; why.
    Unavailable(String),
}

/// A clamd to ask. Cheap to clone; every session is its own connection.
#[derive(Debug, Clone)]
pub struct Clamd {
    addr: ClamdAddr,
    timeout: Duration,
    max_bytes: u64,
}

/// A connection to clamd, whichever socket it is.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

impl Clamd {
    /// A client for `addr`; each step waits at most `timeout`; streams over `max_bytes` are
    /// [`Verdict::TooLarge`] without being sent further.
    pub fn new(addr: ClamdAddr, timeout: Duration, max_bytes: u64) -> Self {
        Self {
            addr,
            timeout,
            max_bytes,
        }
    }

    /// Whether clamd answers `PING` with `PONG` (for `/readyz`); why not otherwise.
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.connect().await?;
        self.step("send PING", conn.write_all(b"zPING\0")).await?;
        match read_answer(&mut conn, self.timeout).await? {
            a if a == "PONG" => Ok(()),
            a => Err(format!("clamd answered PING with {:?}", clip(&a))),
        }
    }

    /// Start an `INSTREAM` session. Never fails: a clamd that cannot be reached makes a
    /// session already settled as [`Verdict::Unavailable`].
    pub async fn session(&self) -> ScanSession {
        let mut session = ScanSession {
            conn: None,
            frame: Vec::new(),
            sent: 0,
            timeout: self.timeout,
            max_bytes: self.max_bytes,
            settled: None,
        };
        match self.open_instream().await {
            Ok(conn) => session.conn = Some(conn),
            Err(why) => session.settled = Some(Verdict::Unavailable(why)),
        }
        session
    }

    async fn open_instream(&self) -> Result<Box<dyn Conn>, String> {
        let mut conn = self.connect().await?;
        self.step("send INSTREAM", conn.write_all(b"zINSTREAM\0"))
            .await?;
        Ok(conn)
    }

    async fn connect(&self) -> Result<Box<dyn Conn>, String> {
        let conn: std::io::Result<Box<dyn Conn>> = match tokio::time::timeout(self.timeout, async {
            Ok::<Box<dyn Conn>, std::io::Error>(match &self.addr {
                ClamdAddr::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
                ClamdAddr::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a.as_str()).await?),
            })
        })
        .await
        {
            Ok(r) => r,
            Err(_) => return Err(self.too_slow("connect")),
        };
        conn.map_err(|e| format!("cannot connect to clamd: {e}"))
    }

    async fn step<T>(
        &self,
        what: &str,
        fut: impl Future<Output = std::io::Result<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(|e| format!("clamd: {what}: {e}")),
            Err(_) => Err(self.too_slow(what)),
        }
    }

    fn too_slow(&self, what: &str) -> String {
        format!(
            "clamd: {what}: no progress within {} s",
            self.timeout.as_secs_f32()
        )
    }
}

/// One stream being scanned. Feed it the stored bytes in order, then ask for the verdict.
pub struct ScanSession {
    conn: Option<Box<dyn Conn>>,
    /// The frame being assembled (at most [`FRAME`] bytes).
    frame: Vec<u8>,
    sent: u64,
    timeout: Duration,
    max_bytes: u64,
    settled: Option<Verdict>,
}

impl ScanSession {
    /// Send the next bytes. `Err` carries the verdict once it is known before the end
    /// ([`Verdict::TooLarge`] or [`Verdict::Unavailable`]); the caller may stop early (fail
    /// closed) or go on without a scan (`scan.fail_open`, `scan.skip_larger`): later feeds
    /// are then no-ops returning the same verdict.
    pub async fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Verdict> {
        if let Some(v) = &self.settled {
            return Err(v.clone());
        }
        self.sent += bytes.len() as u64;
        if self.sent > self.max_bytes {
            return Err(self.settle(Verdict::TooLarge));
        }
        if !self.frame.is_empty() || bytes.len() < FRAME {
            let take = (FRAME - self.frame.len()).min(bytes.len());
            let (now, later) = bytes.split_at(take);
            self.frame.extend_from_slice(now);
            bytes = later;
            if self.frame.len() == FRAME {
                let frame = std::mem::take(&mut self.frame);
                self.send(&frame).await?;
                self.frame = frame;
                self.frame.clear();
            }
        }
        while bytes.len() >= FRAME {
            let (frame, rest) = bytes.split_at(FRAME);
            self.send(frame).await?;
            bytes = rest;
        }
        self.frame.extend_from_slice(bytes);
        Ok(())
    }

    /// The verdict, if it is already known.
    pub fn settled(&self) -> Option<&Verdict> {
        self.settled.as_ref()
    }

    /// Bytes fed so far.
    pub fn bytes_fed(&self) -> u64 {
        self.sent
    }

    /// End the stream and wait (at most `scan.timeout_secs`) for clamd's answer.
    pub async fn verdict(mut self) -> Verdict {
        if let Some(v) = self.settled.take() {
            return v;
        }
        let frame = std::mem::take(&mut self.frame);
        if !frame.is_empty()
            && let Err(v) = self.send(&frame).await
        {
            return v;
        }
        if let Err(v) = self.send(&[]).await {
            return v;
        }
        let Some(conn) = self.conn.as_mut() else {
            return Verdict::Unavailable("clamd session lost".into());
        };
        match read_answer(conn, self.timeout).await {
            Ok(answer) => parse(&answer),
            Err(why) => Verdict::Unavailable(why),
        }
    }

    /// Write one frame (`[]`: the terminator).
    async fn send(&mut self, data: &[u8]) -> Result<(), Verdict> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(self.settle(Verdict::Unavailable("clamd session lost".into())));
        };
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes();
        let write = async {
            conn.write_all(&len).await?;
            conn.write_all(data).await?;
            conn.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                // clamd may have said why before closing (its size limit, typically).
                let why = match read_answer(conn, LAST_WORDS.min(self.timeout)).await {
                    Ok(answer) => match parse(&answer) {
                        Verdict::Clean => Verdict::Unavailable(format!("clamd: {e}")),
                        v => v,
                    },
                    Err(_) => Verdict::Unavailable(format!("clamd dropped the stream: {e}")),
                };
                Err(self.settle(why))
            }
            Err(_) => Err(self.settle(Verdict::Unavailable(format!(
                "clamd took no bytes for {} s",
                self.timeout.as_secs_f32()
            )))),
        }
    }

    fn settle(&mut self, v: Verdict) -> Verdict {
        self.conn = None;
        self.frame = Vec::new();
        self.settled = Some(v.clone());
        v
    }
}

/// Read one NUL-terminated answer (bounded in size and time).
async fn read_answer<C: AsyncRead + Unpin + ?Sized>(
    conn: &mut C,
    timeout: Duration,
) -> Result<String, String> {
    let read = async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = conn
                .read(&mut buf)
                .await
                .map_err(|e| format!("clamd: {e}"))?;
            let got = buf.get(..n).unwrap_or_default();
            if n == 0 {
                return Err("clamd closed the connection without an answer".to_owned());
            }
            if let Some(end) = memchr::memchr(0, got) {
                answer.extend_from_slice(got.get(..end).unwrap_or_default());
                return String::from_utf8(answer)
                    .map_err(|_| "clamd answered non-UTF-8".to_owned());
            }
            answer.extend_from_slice(got);
            if answer.len() > ANSWER_MAX {
                return Err("clamd's answer is too long".to_owned());
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "clamd gave no answer within {} s",
            timeout.as_secs_f32()
        )),
    }
}

/// Parse an `INSTREAM` answer strictly.
pub fn parse(answer: &str) -> Verdict {
    if answer == "stream: OK" {
        return Verdict::Clean;
    }
    if answer == SIZE_LIMIT {
        return Verdict::TooLargeForClamd;
    }
    if let Some(name) = answer
        .strip_prefix("stream: ")
        .and_then(|r| r.strip_suffix(" FOUND"))
        && !name.is_empty()
        && name.len() <= 256
        && name.bytes().all(|b| b.is_ascii_graphic())
    {
        return Verdict::Infected(name.to_owned());
    }
    if answer.ends_with(" ERROR") {
        return Verdict::Unavailable(format!("clamd: {}", clip(answer)));
    }
    Verdict::Unavailable(format!("clamd answered {:?}", clip(answer)))
}

/// At most 200 bytes of an answer, for messages.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests;
