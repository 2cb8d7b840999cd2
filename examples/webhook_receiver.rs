//! The app backend of `scripts/bench`'s webhook part: a small HTTP/1.1 server on loopback that
//! answers every POST 204 at once and logs, per event, one line `ARRIVAL WEBHOOK-ID TIMESTAMP`
//! (Unix nanoseconds: when the body had arrived, and the event's own `timestamp`, taken just
//! before its change committed), for the latency row.
//!
//! It stands for a production backend (a compiled server with keep-alive), where the Python
//! `ThreadingHTTPServer` used before spent more CPU per event than coffer did on the two shared
//! cores. It checks no signature (the tests do that with the official verifier).
//!
//! Usage: `webhook_receiver PORT LOG_PATH`. Lines are written by one thread and flushed as soon
//! as no other line is waiting, so the log's length says how many events arrived.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(log)) = (args.next(), args.next()) else {
        eprintln!("usage: webhook_receiver PORT LOG_PATH");
        std::process::exit(2);
    };
    let port: u16 = port
        .parse()
        .map_err(|_| std::io::Error::other("PORT must be a number"))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let (lines, queued) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || write_lines(file, &queued));
    // One worker thread: the receiver must cost the shared cores as little as it can.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
                let lines = lines.clone();
                async move {
                    let at = unix_nanos(SystemTime::now());
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    let ts = event_timestamp(&body).unwrap_or(0);
                    let _ = lines.send(format!("{at} {id} {ts}\n"));
                    StatusCode::NO_CONTENT
                }
            });
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            axum::serve(listener, app).await
        })
}

/// Append the lines as they come, one flush per burst.
fn write_lines(file: std::fs::File, queued: &std::sync::mpsc::Receiver<String>) {
    let mut out = std::io::BufWriter::new(file);
    while let Ok(line) = queued.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(more) = queued.try_recv() {
            let _ = out.write_all(more.as_bytes());
        }
        let _ = out.flush();
    }
}

fn unix_nanos(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i128::try_from(d.as_nanos()).unwrap_or(0))
        .unwrap_or(0)
}

/// The event's `timestamp` (RFC 3339) as Unix nanoseconds.
fn event_timestamp(body: &[u8]) -> Option<i128> {
    const KEY: &[u8] = b"\"timestamp\":\"";
    let start = memchr::memmem::find(body, KEY)? + KEY.len();
    let rest = body.get(start..)?;
    let end = memchr::memchr(b'"', rest)?;
    let text = std::str::from_utf8(rest.get(..end)?).ok()?;
    Some(
        OffsetDateTime::parse(text, &Rfc3339)
            .ok()?
            .unix_timestamp_nanos(),
    )
}
