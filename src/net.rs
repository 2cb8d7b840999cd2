//! Client addresses as the limits see them: one form per address, one key per client.
//!
//! Invariant: an IPv4 client counts the same whether a dual-stack listener spells it
//! `a.b.c.d` or `::ffff:a.b.c.d`, and an IPv6 client by its /64, which one host usually owns
//! whole, so rotating addresses inside it buys nothing.

use std::net::IpAddr;

/// An IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 peer) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The unit a client is counted as: an IPv4 address as it is, an IPv6 address by its /64
/// (one host usually owns the whole prefix), an IPv4-mapped IPv6 address as IPv4.
pub fn network_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}
