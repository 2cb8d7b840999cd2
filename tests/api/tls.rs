//! Native TLS, over real HTTPS: `server.bind` speaks TLS only, HTTP/2 and HTTP/1.1 by ALPN, HSTS
//! on every answer; the certificate is reloaded without dropping connections (SIGHUP or a
//! file change) and a bad new pair is refused while the old one serves; the redirect
//! listener; a missing file at start is exit code 2 naming it.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Client, Version};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::helpers::fixtures::png;
use crate::helpers::*;

/// A test CA and leaf certificates it signs, for `localhost` and `127.0.0.1`.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// One certificate and its key, as PEM files would hold them.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "coffer test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        Self {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, name: &str) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// Write `leaf` where the server reads its pair (the key first: a reader between the two
/// writes sees a mismatched pair, which must be refused, not served).
fn install(dir: &Path, leaf: &Leaf) {
    std::fs::write(dir.join("key.pem"), &leaf.key_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), &leaf.cert_pem).unwrap();
}

async fn tls_app(dir: &Path, ca: &Ca, extra: &[(&str, &str)]) -> TestApp {
    let mut b = TestApp::builder()
        .tls_root(&ca.pem())
        .env(
            "COFFER_TLS__CERT_FILE",
            dir.join("cert.pem").display().to_string(),
        )
        // The contract's own name for the key file (a systemd or Docker credential path).
        .env(
            "COFFER_TLS_KEY_FILE",
            dir.join("key.pem").display().to_string(),
        );
    for (k, v) in extra {
        b = b.env(k, *v);
    }
    b.spawn().await
}

fn client_config(ca: &Ca, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.issuer.der().to_vec()))
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection of our own (HTTP/1.1 by ALPN), to see the certificate served and to keep
/// one connection open across a reload.
async fn connect(app: &TestApp, ca: &Ca) -> Tls {
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(client_config(ca, &[b"http/1.1"]))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

fn served(conn: &Tls) -> Vec<u8> {
    conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One keep-alive `GET /healthz` on `conn`: the status line.
async fn healthz_on(conn: &mut Tls) -> String {
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The answer is small and has a Content-Length; read until the head and body are in.
    while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"}") {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

async fn served_now(app: &TestApp, ca: &Ca) -> Vec<u8> {
    served(&connect(app, ca).await)
}

async fn until_served(app: &TestApp, ca: &Ca, want: &Leaf, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if served_now(app, ca).await == want.der {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the new certificate was not served after {what}");
}

fn hangup(app: &TestApp) {
    let pid = app.pid().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn https_only_with_h2_and_http1_by_alpn_hsts_and_the_api_working() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf = ca.leaf("first");
    install(dir.path(), &leaf);
    let app = tls_app(dir.path(), &ca, &[]).await;
    assert!(app.base.starts_with("https://"), "{}", app.base);

    // The suite's basic cases, over HTTPS: register, upload, list, a ranged download.
    let u = app.user("alice").await;
    let data = png(5000);
    let f = app.stored(&u.token, "a.png", data.clone()).await;
    let id = f["id"].as_str().unwrap();
    let r = app
        .download(&u.token, id, &[("Range", "bytes=10-19")])
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);

    // ALPN: HTTP/2 when offered, HTTP/1.1 otherwise; HSTS on both.
    let cert = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    for (client, version) in [
        (
            Client::builder()
                .tls_certs_only([cert.clone()])
                .build()
                .unwrap(),
            Version::HTTP_2,
        ),
        (
            Client::builder()
                .tls_certs_only([cert.clone()])
                .http1_only()
                .build()
                .unwrap(),
            Version::HTTP_11,
        ),
    ] {
        let r = client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.version()), (200, version));
        assert_eq!(
            r.headers()["strict-transport-security"],
            "max-age=63072000; includeSubDomains"
        );
    }

    // The container health probe speaks TLS too (trusting exactly the configured certificate).
    let addr = app.addr.to_string();
    let out = app.cli(&["healthcheck", "--addr", &addr]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // TLS 1.2 is spoken as well as 1.3 (and nothing older: rustls has no older version).
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.issuer.der().to_vec()))
            .unwrap();
        roots
    })
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(tls12))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        conn.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    // The server picks the suite by its own order (strongest first), not the client's.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.reverse();
    let client_first = provider.cipher_suites[0].suite();
    let reversed = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from(ca.issuer.der().to_vec()))
                .unwrap();
            roots
        })
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(reversed))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let chosen = conn.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    assert_ne!(chosen, client_first, "the client's order was followed");
    assert_eq!(chosen, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    assert!(
        !got.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn the_certificate_is_reloaded_without_dropping_connections_and_a_bad_pair_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let first = ca.leaf("first");
    install(dir.path(), &first);
    let app = tls_app(dir.path(), &ca, &[]).await;
    let mut held = connect(&app, &ca).await;
    assert_eq!(served(&held), first.der);
    assert_eq!(healthz_on(&mut held).await, "HTTP/1.1 200 OK");

    // SIGHUP: new connections get the new pair; the open one goes on.
    let second = ca.leaf("second");
    install(dir.path(), &second);
    hangup(&app);
    until_served(&app, &ca, &second, "SIGHUP").await;
    assert_eq!(healthz_on(&mut held).await, "HTTP/1.1 200 OK");

    // A key that does not belong to the certificate: refused, logged, the old pair serves.
    // (Counted from here: installing a pair key first may have shown a mismatch already.)
    let refused = app.logs().matches("does not fit").count();
    let stranger = ca.leaf("stranger");
    std::fs::write(dir.path().join("key.pem"), &stranger.key_pem).unwrap();
    hangup(&app);
    app.eventually("the refusal is logged", || {
        app.logs().matches("does not fit").count() > refused
    })
    .await;
    assert_eq!(served_now(&app, &ca).await, second.der);
    // Garbage in the certificate file: refused as well.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate\n").unwrap();
    hangup(&app);
    app.eventually("the second refusal is logged", || {
        app.logs().contains("no PEM CERTIFICATE")
    })
    .await;
    assert_eq!(served_now(&app, &ca).await, second.der);
    assert_eq!(healthz_on(&mut held).await, "HTTP/1.1 200 OK");

    // A change of the files alone (no signal) is picked up too.
    let third = ca.leaf("third");
    install(dir.path(), &third);
    until_served(&app, &ca, &third, "the files changed").await;
    assert_eq!(healthz_on(&mut held).await, "HTTP/1.1 200 OK");
}

/// A TLS server with the redirect listener on (and `extra` settings): its certificates'
/// folder (kept while the test runs), the server, and the redirect listener's address (bound
/// to port 0: the server logs the one it got).
async fn with_redirect(extra: &[(&str, &str)]) -> (tempfile::TempDir, TestApp, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    install(dir.path(), &ca.leaf("first"));
    let mut env = vec![("COFFER_TLS__REDIRECT_BIND", "127.0.0.1:0")];
    env.extend_from_slice(extra);
    let app = tls_app(dir.path(), &ca, &env).await;
    let logs = app.logs();
    let redirect = logs
        .lines()
        .find(|l| l.contains("redirect to HTTPS"))
        .and_then(|l| l.split("redirect=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no redirect address logged:\n{logs}"))
        .to_owned();
    (dir, app, redirect)
}

#[tokio::test]
async fn the_redirect_listener_answers_308_to_https_for_every_path() {
    let (_dir, app, redirect) =
        with_redirect(&[("COFFER_SERVER__ALLOWED_HOSTS", "localhost")]).await;
    let redirect = redirect.as_str();
    let plain = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let port = app.addr.port();
    for path in ["/healthz", "/readyz", "/api/v1/files?limit=5"] {
        let r = plain
            .get(format!("http://{redirect}{path}"))
            .header("Host", "localhost:80")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 308, "{path}");
        assert_eq!(
            r.headers()["location"],
            format!("https://localhost:{port}{path}").as_str()
        );
        // The headers every response carries.
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(r.headers()["x-frame-options"], "DENY", "{path}");
        assert!(
            r.headers().contains_key("content-security-policy"),
            "{path}"
        );
        assert!(r.headers().contains_key("x-request-id"), "{path}");
    }
    // Probes by address are exempt from the allowed hosts, as on the HTTPS listener; other
    // paths are not, and their 400 is a problem like every error.
    for (path, status) in [("/healthz", 308), ("/readyz", 308), ("/api/v1/files", 400)] {
        let r = plain
            .get(format!("http://{redirect}{path}"))
            .header("Host", "10.0.0.5")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
        if status == 308 {
            assert_eq!(
                r.headers()["location"],
                format!("https://10.0.0.5:{port}{path}").as_str()
            );
        } else {
            assert!(
                r.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/problem+json")
            );
            assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        }
    }
    // Two Host headers: no one host to redirect to.
    let addr: std::net::SocketAddr = redirect.parse().unwrap();
    let r = crate::helpers::raw::exchange(
        addr,
        b"GET /x HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400);
}

/// The redirect listener caps connections per address as the main one does: one host holding
/// its connections open does not keep others out.
#[tokio::test]
async fn the_redirect_listener_caps_connections_per_address() {
    let (_dir, _app, redirect) =
        with_redirect(&[("COFFER_SERVER__MAX_CONNECTIONS_PER_IP", "2")]).await;
    let addr: std::net::SocketAddr = redirect.parse().unwrap();
    let held = [
        crate::helpers::raw::RawConn::open(addr).await,
        crate::helpers::raw::RawConn::open(addr).await,
    ];
    let mut third = crate::helpers::raw::RawConn::open(addr).await;
    assert!(
        third.closed().await,
        "a third connection from one address is refused"
    );
    drop(held);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let r = crate::helpers::raw::exchange(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 308);
}

#[test]
fn a_missing_certificate_or_key_at_start_is_exit_code_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    install(dir.path(), &ca.leaf("first"));
    let missing = dir.path().join("nope.pem");
    for (cert, key) in [
        (missing.clone(), dir.path().join("key.pem")),
        (dir.path().join("cert.pem"), missing.clone()),
    ] {
        let mut cmd = Command::new(bin());
        clean_env(&mut cmd);
        let out = cmd
            .arg("serve")
            .env("COFFER_SECRET_KEY", secret())
            .env("COFFER_STORAGE__ROOT", dir.path().join("storage"))
            .env("COFFER_SERVER__BIND", "127.0.0.1:0")
            .env("COFFER_TLS__CERT_FILE", &cert)
            .env("COFFER_TLS__KEY_FILE", &key)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }
}
