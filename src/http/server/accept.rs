//! Connection policies before hyper sees a byte: what protocol a connection speaks, and how
//! many connections one client may hold.
//!
//! Invariant: a peer that never says enough to tell the protocol is dropped after the header
//! timeout; one address (an IPv6 /64) cannot hold every connection slot; trusted proxies are
//! exempt (everyone is behind them).

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::net;

/// What a new connection speaks, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opening {
    /// Not the HTTP/2 preface: HTTP/1.
    Http1,
    /// The HTTP/2 prior-knowledge preface (h2c).
    Http2,
}

/// Wait (bounded) until the peer has sent enough to choose HTTP/1 or HTTP/2: any byte that
/// breaks the HTTP/2 preface, or the whole preface. `None` when it sends nothing in time.
pub(super) async fn request_starts(
    stream: &tokio::net::TcpStream,
    limit: Duration,
) -> Option<Opening> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; PREFACE.len()];
    let mut pause = Duration::from_millis(10);
    let wait = async {
        loop {
            let n = stream.peek(&mut buf).await?;
            let seen = buf.get(..n).unwrap_or_default();
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            if !PREFACE.starts_with(seen) {
                return Ok(Some(Opening::Http1));
            }
            if n >= PREFACE.len() {
                return Ok(Some(Opening::Http2));
            }
            // Part of a preface: peek would return at once; give the peer a moment, longer
            // each time (a peer that stops mid-preface costs a wake-up every half second, not
            // a hundred a second, until the header timeout drops it).
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    };
    tokio::time::timeout(limit, wait).await.ok()?.ok()?
}

/// Open connections per client (an IPv4 address, an IPv6 /64; trusted proxies are exempt:
/// everyone is behind them).
#[derive(Clone)]
pub(super) struct PerIp {
    max: usize,
    exempt: Arc<Vec<IpNet>>,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

/// A held per-address slot; released on drop.
pub(super) struct IpSlot {
    owner: PerIp,
    ip: Option<std::net::IpAddr>,
}

impl PerIp {
    pub(super) fn new(max: usize, exempt: Vec<IpNet>) -> Self {
        Self {
            max,
            exempt: Arc::new(exempt),
            open: Arc::default(),
        }
    }

    pub(super) fn admit(&self, ip: std::net::IpAddr) -> Option<IpSlot> {
        let peer = net::canonical(ip);
        if self.exempt.iter().any(|n| n.contains(&peer)) {
            return Some(IpSlot {
                owner: self.clone(),
                ip: None,
            });
        }
        // Counted like the rate limits: an IPv6 host by its /64, which it usually owns whole.
        let key = net::network_key(ip);
        let mut open = self.open.lock().ok()?;
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            owner: self.clone(),
            ip: Some(key),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip
            && let Ok(mut open) = self.owner.open.lock()
            && let Some(n) = open.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ipv6_host_cannot_take_more_slots_by_changing_its_address() {
        let per_ip = PerIp::new(2, Vec::new());
        let addr = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let a = per_ip.admit(addr("2001:db8:1:2::1")).unwrap();
        let _b = per_ip.admit(addr("2001:db8:1:2::2")).unwrap();
        assert!(per_ip.admit(addr("2001:db8:1:2:ffff::3")).is_none());
        // Another /64 and IPv4 addresses have their own counts; a closed slot is reusable.
        assert!(per_ip.admit(addr("2001:db8:1:3::1")).is_some());
        assert!(per_ip.admit(addr("192.0.2.1")).is_some());
        drop(a);
        assert!(per_ip.admit(addr("2001:db8:1:2::9")).is_some());
        // A trusted proxy is exempt however a dual-stack listener spells its address.
        let behind = PerIp::new(1, vec!["10.0.0.1/32".parse().unwrap()]);
        let _p = behind.admit(addr("::ffff:10.0.0.1")).unwrap();
        assert!(behind.admit(addr("::ffff:10.0.0.1")).is_some());
    }
}
