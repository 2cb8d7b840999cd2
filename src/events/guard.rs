//! The outbound address guard (SSRF): which webhook URLs may be stored, and which addresses a
//! delivery may connect to, and the HTTP client that enforces it.
//!
//! Invariant: unless `webhooks.allow_private_targets` is on, a delivery never connects to a
//! loopback, private, link-local (cloud metadata included), unique-local, multicast,
//! unspecified or otherwise special address: the client's resolver drops them from every
//! lookup, so the address checked is the address connected to (a name that resolves
//! elsewhere the next time, DNS rebinding, gains nothing), and an IP literal is checked
//! before the request (the resolver never sees one). No proxy from the environment is
//! used, no redirect is followed, and every try is bounded in time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// The safety switches (`[webhooks]`).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `webhooks.allow_http`.
    pub allow_http: bool,
    /// `webhooks.allow_private_targets`.
    pub allow_private_targets: bool,
}

/// Why an address may not be a target, or `None` when it may.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_link_local() {
        // 169.254.169.254 and friends: cloud metadata services live here.
        Some("link-local (cloud metadata)")
    } else if ip.is_private() || (a == 100 && (b & 0xc0) == 64) {
        // RFC 1918 and the carrier-grade NAT range (RFC 6598).
        Some("private")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || a >= 240 {
        Some("reserved")
    } else if (a == 192 && b == 0 && c == 0) || (a == 198 && (b & 0xfe) == 18) {
        // IETF protocol assignments, benchmarking (RFC 6890).
        Some("reserved")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4).map(|_| "IPv4-mapped private");
    }
    // IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96): the IPv4 address inside decides.
    if (seg[..6] == [0; 6]) || (seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0]) {
        let v4 = Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        );
        return forbidden_v4(v4).map(|_| "IPv4-embedded private");
    }
    // 6to4 (2002::/16) embeds an IPv4 address too.
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        );
        return forbidden_v4(v4).map(|_| "6to4 private");
    }
    match seg[0] {
        s if (s & 0xfe00) == 0xfc00 => Some("unique-local"),
        s if (s & 0xffc0) == 0xfe80 => Some("link-local"),
        s if (s & 0xffc0) == 0xfec0 => Some("site-local"),
        s if (s & 0xff00) == 0xff00 => Some("multicast"),
        _ if seg[0] == 0x2001 && seg[1] == 0x0db8 => Some("documentation"),
        // Local-use NAT64 (64:ff9b:1::/48, RFC 8215) reaches a local network's IPv4 hosts, and
        // Teredo (2001::/32) hides an IPv4 address: neither is a public webhook's address.
        _ if seg[..3] == [0x64, 0xff9b, 1] => Some("local-use NAT64"),
        _ if seg[0] == 0x2001 && seg[1] == 0 => Some("Teredo"),
        // Discard-only (100::/64), benchmarking (2001:2::/48), ORCHID (2001:10::/28,
        // 2001:20::/28), documentation (3fff::/20), SRv6 segment ids (5f00::/16): RFC 6890's
        // registry and its successors; never a public host.
        _ if seg[..4] == [0x100, 0, 0, 0] => Some("discard-only"),
        _ if seg[0] == 0x2001 && seg[1] == 2 && seg[2] == 0 => Some("benchmarking"),
        _ if seg[0] == 0x2001 && (seg[1] & 0xfff0) == 0x10 => Some("ORCHID"),
        _ if seg[0] == 0x2001 && (seg[1] & 0xfff0) == 0x20 => Some("ORCHID"),
        _ if seg[0] == 0x3fff && (seg[1] & 0xf000) == 0 => Some("documentation"),
        0x5f00 => Some("SRv6"),
        _ => None,
    }
}

/// Why a URL may not be stored, for the 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not a URL, or too long.
    #[error("must be an absolute http(s) URL of at most {MAX_URL_LEN} characters")]
    Malformed,
    /// `http://` without `webhooks.allow_http`.
    #[error("must use https (webhooks.allow_http is off)")]
    NotHttps,
    /// A user name or password in the URL.
    #[error("must not carry credentials")]
    Credentials,
    /// An IP literal or `localhost`.
    #[error("refused host ({0}); webhooks.allow_private_targets is off")]
    Private(&'static str),
}

/// Check a webhook URL by itself (no lookup): its scheme, no credentials, and, unless private
/// targets are allowed, a host name (the grammar the OpenAPI document states: dot-separated
/// labels, the last starting with a letter, a port of 1-65535, then nothing or a path), so no
/// IP literal (not even one the URL parser would read out of a number) and no `localhost`.
/// The parsed URL.
pub fn check_url(raw: &str, policy: Policy) -> Result<Url, UrlError> {
    if raw.len() > MAX_URL_LEN {
        return Err(UrlError::Malformed);
    }
    if !policy.allow_private_targets {
        named(raw, policy.allow_http)?;
    }
    let url = Url::parse(raw).map_err(|_| UrlError::Malformed)?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        "http" => return Err(UrlError::NotHttps),
        _ => return Err(UrlError::Malformed),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(UrlError::Malformed);
    };
    if policy.allow_private_targets {
        return Ok(url);
    }
    if let Some(ip) = literal(&url) {
        return match forbidden(ip) {
            Some(why) => Err(UrlError::Private(why)),
            None => Ok(url),
        };
    }
    // Other names (`a.localhost` too) are judged on what they resolve to, at every try.
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" {
        return Err(UrlError::Private("loopback"));
    }
    Ok(url)
}

/// The grammar of a URL naming its host (see [`check_url`]), on the text as sent: what the
/// pattern in the OpenAPI document accepts, exactly.
fn named(raw: &str, allow_http: bool) -> Result<(), UrlError> {
    let rest = match raw.strip_prefix("https://") {
        Some(r) => r,
        None => match raw.strip_prefix("http://") {
            Some(r) if allow_http => r,
            Some(_) => return Err(UrlError::NotHttps),
            None => return Err(UrlError::Malformed),
        },
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if path.chars().any(char::is_whitespace) {
        return Err(UrlError::Malformed);
    }
    if authority.contains('@') {
        return Err(UrlError::Credentials);
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if let Some(p) = port {
        let ok = !p.starts_with('0')
            && !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65_535).contains(&n));
        if !ok {
            return Err(UrlError::Malformed);
        }
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Err(UrlError::Private(forbidden(ip).unwrap_or("IP literal")));
    }
    let labels: Vec<&str> = host.split('.').collect();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    // A last label starting with a letter is never read as a number (WHATWG URL: a host
    // whose last label is numeric is an IPv4 address).
    let last_ok = labels
        .last()
        .is_some_and(|t| t.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()));
    if !labels.iter().all(|l| label_ok(l)) || !last_ok {
        return Err(UrlError::Malformed);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Err(UrlError::Private("loopback"));
    }
    Ok(())
}

/// The URL's host, if it is an IP literal (the parser has normalised `2130706433`, `0x7f.1`
/// and friends to dotted form already).
fn literal(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// The address a delivery was refused to connect to.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to refused addresses ({why}); webhooks.allow_private_targets is off")]
pub struct Refused {
    /// The host name.
    pub host: String,
    /// The kind of the first refused address.
    pub why: &'static str,
}

/// Resolves with the system resolver and drops every forbidden address.
struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut why = "no address";
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match forbidden(a.ip()) {
                    Some(w) => {
                        why = w;
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(Refused { host, why }) as Box<_>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The client every delivery uses: rustls, no proxy, no redirect, no retry, `timeout` per
/// try, and (unless private targets are allowed) the guarded resolver.
pub fn client(policy: Policy, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent("coffer-webhooks/1")
        .https_only(!policy.allow_http);
    if !policy.allow_private_targets {
        b = b.dns_resolver(Arc::new(GuardedResolver));
    }
    b.build()
}

/// Whether a delivery to `url` may go ahead: an IP literal is checked here (the resolver
/// only sees names).
pub fn check_target(url: &Url, policy: Policy) -> Result<(), String> {
    if policy.allow_private_targets {
        return Ok(());
    }
    let Some(ip) = literal(url) else {
        return Ok(());
    };
    match forbidden(ip) {
        Some(why) => Err(format!(
            "refused: {ip} is a {why} address; webhooks.allow_private_targets is off"
        )),
        None => Ok(()),
    }
}

/// A [`Refused`] somewhere in an error's chain.
pub fn refused_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Policy = Policy {
        allow_http: false,
        allow_private_targets: false,
    };

    #[test]
    fn special_addresses_are_forbidden_and_public_ones_are_not() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:ffff::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "100::1",
            "2001:2::1",
            "2001:10::1",
            "2001:2f::1",
            "3fff::1",
            "3fff:fff::1",
            "5f00::1",
            "2002:7f00:1::",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(forbidden(ip).is_some(), "{bad}");
        }
        for good in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450::1",
            "::ffff:1.1.1.1",
        ] {
            let ip: IpAddr = good.parse().unwrap();
            assert_eq!(forbidden(ip), None, "{good}");
        }
    }

    /// The client itself: a name that resolves to loopback is refused by its resolver, and
    /// nothing connects to the listener behind it.
    #[tokio::test]
    async fn the_guarded_client_never_connects_to_a_name_resolving_to_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let policy = Policy {
            allow_http: true,
            allow_private_targets: false,
        };
        let c = client(policy, Duration::from_secs(2)).unwrap();
        let err = c
            .post(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        let refused = refused_in(&err).expect("refused by the resolver");
        assert_eq!(refused.host, "localhost");
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "a connection reached the listener");
        // With private targets allowed, the same request connects.
        let open = client(
            Policy {
                allow_private_targets: true,
                ..policy
            },
            Duration::from_secs(2),
        )
        .unwrap();
        let sent =
            tokio::spawn(
                async move { open.post(format!("http://localhost:{port}/")).send().await },
            );
        assert!(
            tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .is_ok()
        );
        sent.abort();
    }

    #[test]
    fn urls_are_judged_by_scheme_and_literal_host() {
        assert!(check_url("https://hooks.example.com/x", STRICT).is_ok());
        assert!(check_url("https://hooks.example.com:8443/x?y#z", STRICT).is_ok());
        assert!(
            check_url("https://intranet-1/", STRICT).is_ok(),
            "a name: judged at delivery"
        );
        // Every literal is refused, even a public one: the resolver never sees it.
        assert!(matches!(
            check_url("https://93.184.216.34/x", STRICT),
            Err(UrlError::Private(_))
        ));
        for bad in [
            "https://Q.I.r.Bf*",
            "https://a.1b/",
            "https://0x7f/",
            "https://2130706433/",
            "https://a.bc?x",
            "https://a.bc:0/",
            "https://a.bc:65536/",
            "https://a.bc:080/",
            "https://-a.bc/",
            "https://a.bc/x y",
            "HTTPS://a.bc/",
            "https://a..bc/",
        ] {
            assert!(check_url(bad, STRICT).is_err(), "{bad}");
        }
        assert_eq!(
            check_url("http://hooks.example.com/", STRICT),
            Err(UrlError::NotHttps)
        );
        let http = Policy {
            allow_http: true,
            ..STRICT
        };
        for bad in [
            "http://127.0.0.1:8080/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://2130706433/",
            "http://0x7f.1/",
        ] {
            assert!(
                matches!(
                    check_url(bad, http),
                    Err(UrlError::Private(_) | UrlError::Malformed)
                ),
                "{bad}"
            );
        }
        assert_eq!(
            check_url("https://u:p@example.com/", STRICT),
            Err(UrlError::Credentials)
        );
        assert_eq!(
            check_url("ftp://example.com/", STRICT),
            Err(UrlError::Malformed)
        );
        assert_eq!(check_url("/relative", STRICT), Err(UrlError::Malformed));
        let open = Policy {
            allow_http: true,
            allow_private_targets: true,
        };
        assert!(check_url("http://127.0.0.1:9/", open).is_ok());
    }
}
