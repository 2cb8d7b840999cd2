//! coffer behind a real nginx running `contrib/nginx.conf` (TLS at the proxy): uploads in both
//! forms, downloads, ranges and validators, coffer's own 413, `/metrics` kept private, and
//! rate limits per client address (X-Forwarded-For from a trusted proxy).
//!
//! Needs nginx: `COFFER_TEST_NGINX` names the binary (the shared stack's env sets it). Without
//! it the tests skip with a note, unless `COFFER_TEST_REQUIRE_STACK=1`.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::json;

use crate::helpers::fixtures::{png, sha256_hex};
use crate::helpers::stack::REQUIRE_STACK;
use crate::helpers::*;

/// nginx running the repository's `contrib/nginx.conf`, stopped (by its PID) on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    ca_pem: String,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary(test: &str) -> Option<PathBuf> {
    match std::env::var_os("COFFER_TEST_NGINX") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            assert!(
                std::env::var(REQUIRE_STACK).as_deref() != Ok("1"),
                "{test} needs nginx: set COFFER_TEST_NGINX (the stack's env does)"
            );
            eprintln!("skipped: {test} needs nginx (COFFER_TEST_NGINX)");
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The site file as shipped, pointed at this test's coffer, port and certificate. Only
/// addresses and paths change: every proxy setting is the file's own.
fn site(coffer: SocketAddr, port: u16, cert: &Path, key: &Path) -> String {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/nginx.conf"))
            .unwrap();
    let mut replaced = 0;
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim();
        let new = match t {
            "server 127.0.0.1:8080;" => format!("server {coffer};"),
            "listen 443 ssl http2;" => format!("listen 127.0.0.1:{port} ssl http2;"),
            // The redirect server and IPv6 listeners are not exercised here.
            "listen 80;" => format!("listen 127.0.0.1:{};", free_port()),
            "listen [::]:80;" | "listen [::]:443 ssl http2;" => String::new(),
            _ if t.starts_with("ssl_certificate ") => {
                format!("ssl_certificate {};", cert.display())
            }
            _ if t.starts_with("ssl_certificate_key ") => {
                format!("ssl_certificate_key {};", key.display())
            }
            _ => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        };
        replaced += 1;
        out.push_str(&new);
        out.push('\n');
    }
    assert_eq!(
        replaced, 7,
        "contrib/nginx.conf changed shape; update this test"
    );
    out
}

fn start_nginx(test: &str, coffer: SocketAddr) -> Option<Nginx> {
    let bin = nginx_binary(test)?;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A CA and a leaf for 127.0.0.1, as the tls tests make them.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (cert_file, key_file) = (d.join("cert.pem"), d.join("key.pem"));
    std::fs::write(&cert_file, leaf.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let port = free_port();
    std::fs::write(
        d.join("site.conf"),
        site(coffer, port, &cert_file, &key_file),
    )
    .unwrap();
    // A main file around the site: everything nginx writes stays in the temp dir.
    let root = rustix::process::geteuid().is_root();
    let main = format!(
        "{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
         scgi_temp_path {d}/scgi;\n  include {d}/site.conf;\n}}\n",
        user = if root { "user root;\n" } else { "" },
        d = d.display(),
    );
    std::fs::write(d.join("nginx.conf"), main).unwrap();
    let child = Command::new(&bin)
        .arg("-p")
        .arg(d)
        .arg("-e")
        .arg(d.join("error.log"))
        .arg("-c")
        .arg(d.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let nginx = Nginx {
        child,
        addr,
        _dir: dir,
        ca_pem: ca.pem(),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(addr).is_err() {
        let log = std::fs::read_to_string(nginx._dir.path().join("error.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "nginx did not listen:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(nginx)
}

impl Nginx {
    /// A client of the proxy, from `from` (any 127.0.0.0/8 address is this host).
    fn client(&self, from: [u8; 4]) -> Client {
        Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()])
            .local_address(IpAddr::from(from))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
}

async fn behind_proxy(extra: &[(&str, &str)]) -> TestApp {
    let mut b = TestApp::builder()
        .env("COFFER_SERVER__TRUSTED_PROXIES", "127.0.0.1")
        .env("COFFER_SERVER__BEHIND_TLS_PROXY", "true");
    for (k, v) in extra {
        b = b.env(k, *v);
    }
    b.spawn().await
}

#[tokio::test]
async fn uploads_downloads_and_ranges_stream_through_nginx() {
    let app = behind_proxy(&[("COFFER_LIMITS__MAX_UPLOAD_BYTES", "4000000")]).await;
    let Some(nginx) = start_nginx("proxy", app.addr) else {
        return;
    };
    let c = nginx.client([127, 0, 0, 1]);
    let u = app.user("alice").await;
    let auth = format!("Bearer {}", u.token);

    // Raw body, 3 MB, streamed (nginx does not spool it: proxy_request_buffering off).
    let big = png(3_000_000);
    let r = c
        .post(nginx.url("/api/v1/files?filename=big.png"))
        .header("authorization", &auth)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "h2 at the proxy");
    assert_eq!(
        r.headers()["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    let f: serde_json::Value = r.json().await.unwrap();
    assert_eq!(f["sha256"], sha256_hex(&big));
    let id = f["id"].as_str().unwrap();

    // Multipart.
    let form = file_form("small.png", png(2000));
    let r = c
        .post(nginx.url("/api/v1/files"))
        .header("authorization", &auth)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // The whole file, a range, a validator.
    let path = format!("/api/v1/files/{id}/content");
    let r = c
        .get(nginx.url(&path))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].clone();
    assert_eq!(sha256_hex(&r.bytes().await.unwrap()), sha256_hex(&big));
    let r = c
        .get(nginx.url(&path))
        .header("authorization", &auth)
        .header("range", "bytes=1000000-1000099")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        &big[1_000_000..1_000_100]
    );
    let r = c
        .get(nginx.url(&path))
        .header("authorization", &auth)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    // Too large: coffer's own 413, as problem+json (nginx sets no limit of its own).
    let r = c
        .post(nginx.url("/api/v1/files?filename=huge.png"))
        .header("authorization", &auth)
        .body(png(4_500_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(content_type(&r), "application/problem+json");

    // /metrics is not reachable through the proxy.
    let r = c.get(nginx.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body = r.text().await.unwrap();
    assert!(!body.contains("coffer_"), "{body}");
}

#[tokio::test]
async fn rate_limits_are_per_client_behind_nginx() {
    let app = behind_proxy(&[("COFFER_RATE_LIMIT__LOGIN_PER_MINUTE", "3")]).await;
    let Some(nginx) = start_nginx("proxy rate limits", app.addr) else {
        return;
    };
    let login = json!({"username": "nobody", "password": "Wrong-Password-1"});
    let attempt = |from: [u8; 4]| {
        let c = nginx.client(from);
        let url = nginx.url("/api/v1/auth/login");
        let body = login.clone();
        async move { c.post(url).json(&body).send().await.unwrap().status() }
    };
    // One client spends its budget...
    for _ in 0..3 {
        assert_eq!(attempt([127, 0, 0, 2]).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(attempt([127, 0, 0, 2]).await, StatusCode::TOO_MANY_REQUESTS);
    // ...another, through the same proxy, still has its own: nginx passes the address on
    // and coffer believes it (trusted_proxies).
    assert_eq!(attempt([127, 0, 0, 3]).await, StatusCode::UNAUTHORIZED);
    // A client cannot choose its bucket by sending its own X-Forwarded-For.
    let r = nginx
        .client([127, 0, 0, 2])
        .post(nginx.url("/api/v1/auth/login"))
        .header("x-forwarded-for", "198.51.100.7")
        .json(&login)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}
