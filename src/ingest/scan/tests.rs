//! The client against hostile or broken peers (a listener that never answers, one that never
//! reads, one that hangs up, one that talks nonsense) and the answer grammar. The real clamd
//! is the proof that the protocol is right: `tests/api/scan.rs`, on the test stack.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::*;

const T: Duration = Duration::from_millis(700);

/// A unix listener in a fresh directory, and its address.
fn listener() -> (tempfile::TempDir, UnixListener, ClamdAddr) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clamd.sock");
    let l = UnixListener::bind(&path).unwrap();
    (dir, l, ClamdAddr::Unix(path))
}

fn unavailable(v: &Verdict) -> bool {
    matches!(v, Verdict::Unavailable(_))
}

#[test]
fn addresses_parse_strictly() {
    assert_eq!(
        ClamdAddr::parse("unix:/run/clamav/clamd.ctl"),
        Ok(ClamdAddr::Unix("/run/clamav/clamd.ctl".into()))
    );
    assert_eq!(
        ClamdAddr::parse("tcp://clamav:3310"),
        Ok(ClamdAddr::Tcp("clamav:3310".into()))
    );
    assert_eq!(
        ClamdAddr::parse("tcp://[::1]:3310"),
        Ok(ClamdAddr::Tcp("[::1]:3310".into()))
    );
    for bad in [
        "",
        "clamd:3310",
        "unix:relative.sock",
        "tcp://host",
        "tcp://host:0",
        "tcp://host:99999",
        "tcp://:3310",
        "tcp://host:3310/x",
        "http://host:3310",
    ] {
        assert!(ClamdAddr::parse(bad).is_err(), "{bad}");
    }
    assert!(ClamdAddr::parse(&format!("unix:/{}", "x".repeat(107))).is_err());
}

#[test]
fn answers_parse_strictly() {
    assert_eq!(parse("stream: OK"), Verdict::Clean);
    assert_eq!(
        parse("stream: Coffer.Test.EICAR.UNOFFICIAL FOUND"),
        Verdict::Infected("Coffer.Test.EICAR.UNOFFICIAL".into())
    );
    assert_eq!(
        parse("INSTREAM size limit exceeded. ERROR"),
        Verdict::TooLargeForClamd
    );
    for other in [
        "stream: OK ",
        "stream:  FOUND",
        "stream: two words FOUND",
        "stream: x\u{7f} FOUND",
        "OK",
        "",
        "PONG",
        "stream: lstat() failed: No such file. ERROR",
        "1: stream: OK",
    ] {
        assert!(
            unavailable(&parse(other)),
            "{other:?} -> {:?}",
            parse(other)
        );
    }
}

#[tokio::test]
async fn no_socket_is_unavailable_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let clamd = Clamd::new(ClamdAddr::Unix(dir.path().join("none.sock")), T, 1 << 20);
    let started = Instant::now();
    assert!(clamd.ping().await.is_err());
    let mut s = clamd.session().await;
    assert!(s.feed(b"abc").await.is_err());
    assert!(unavailable(&s.verdict().await));
    assert!(started.elapsed() < T, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_peer_that_never_answers_is_unavailable_within_the_timeout() {
    let (_dir, l, addr) = listener();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut c, _) = l.accept().await.unwrap();
            // Read everything, answer nothing.
            tokio::spawn(async move {
                let mut buf = vec![0; 64 * 1024];
                while c.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            });
            held.push(());
        }
    });
    let clamd = Clamd::new(addr, T, 1 << 30);
    let started = Instant::now();
    assert!(clamd.ping().await.unwrap_err().contains("no answer"));
    let mut s = clamd.session().await;
    s.feed(&vec![7; 300_000]).await.unwrap();
    let v = s.verdict().await;
    assert!(unavailable(&v), "{v:?}");
    let took = started.elapsed();
    assert!(
        took >= 2 * T && took < 2 * T + Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_peer_that_never_reads_stalls_the_feed_not_the_memory() {
    let (_dir, l, addr) = listener();
    let peer = tokio::spawn(async move {
        let (c, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(c);
    });
    let clamd = Clamd::new(addr, T, 1 << 30);
    let mut s = clamd.session().await;
    // Far more than the socket buffers hold: the write must wait, then give up.
    let chunk = vec![1u8; 1 << 20];
    let started = Instant::now();
    let mut fed = 0;
    let v = loop {
        match s.feed(&chunk).await {
            Ok(()) => fed += chunk.len(),
            Err(v) => break v,
        }
        assert!(fed < 64 << 20, "64 MiB taken by a peer that reads nothing");
    };
    assert!(unavailable(&v), "{v:?}");
    assert!(started.elapsed() < T + Duration::from_secs(2));
    // Settled: further feeds are no-ops with the same verdict.
    assert_eq!(s.feed(b"more").await, Err(v.clone()));
    assert_eq!(s.verdict().await, v);
    peer.abort();
}

#[tokio::test]
async fn a_peer_that_hangs_up_or_talks_nonsense_is_unavailable() {
    let (_dir, l, addr) = listener();
    tokio::spawn(async move {
        for i in 0.. {
            let (mut c, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 16];
            let _ = c.read(&mut buf).await;
            match i % 3 {
                0 => drop(c),
                1 => {
                    let _ = c.write_all(b"stream: OK").await; // no terminator, then EOF
                }
                _ => {
                    let _ = c.write_all(b"stream: maybe?\0").await;
                }
            }
        }
    });
    let clamd = Clamd::new(addr, T, 1 << 30);
    for _ in 0..3 {
        let mut s = clamd.session().await;
        let _ = s.feed(b"hello").await;
        let v = s.verdict().await;
        assert!(unavailable(&v), "{v:?}");
    }
}

#[tokio::test]
async fn the_size_limit_is_enforced_before_sending_more() {
    let (_dir, l, addr) = listener();
    let got = tokio::spawn(async move {
        let (mut c, _) = l.accept().await.unwrap();
        let mut all = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut all)).await;
        all.len()
    });
    let clamd = Clamd::new(addr, T, 200_000);
    let mut s = clamd.session().await;
    s.feed(&[0; 150_000]).await.unwrap();
    assert_eq!(s.feed(&[0; 60_000]).await, Err(Verdict::TooLarge));
    assert_eq!(s.verdict().await, Verdict::TooLarge);
    // Only whole frames before the limit went out: the command and two 64 KiB frames.
    assert_eq!(got.await.unwrap(), 10 + 2 * (4 + FRAME));
}

#[tokio::test]
async fn frames_follow_clamds_framing() {
    let (_dir, l, addr) = listener();
    let peer = tokio::spawn(async move {
        let (mut c, _) = l.accept().await.unwrap();
        let mut cmd = [0u8; 10];
        c.read_exact(&mut cmd).await.unwrap();
        assert_eq!(&cmd, b"zINSTREAM\0");
        let mut data = Vec::new();
        let mut frames = Vec::new();
        loop {
            let len = c.read_u32().await.unwrap() as usize;
            frames.push(len);
            if len == 0 {
                break;
            }
            let mut f = vec![0; len];
            c.read_exact(&mut f).await.unwrap();
            data.extend(f);
        }
        c.write_all(b"stream: OK\0").await.unwrap();
        (data, frames)
    });
    let clamd = Clamd::new(addr, T, 1 << 30);
    let mut s = clamd.session().await;
    let input: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    for piece in [&input[..10], &input[10..70_000], &input[70_000..200_000]] {
        s.feed(piece).await.unwrap();
    }
    assert_eq!(s.verdict().await, Verdict::Clean);
    let (data, frames) = peer.await.unwrap();
    assert_eq!(data, input);
    assert_eq!(frames, [FRAME, FRAME, FRAME, 200_000 - 3 * FRAME, 0]);
}
