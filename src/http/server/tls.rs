//! Native TLS: rustls (TLS 1.2 and 1.3), HTTP/2 and HTTP/1.1 by ALPN, and a certificate that
//! is reloaded without dropping connections; the optional plain-HTTP listener that redirects
//! to HTTPS.
//!
//! Invariant: a handshake always gets a complete, matching certificate and key. A new pair is
//! put in place only once both files parse and the key belongs to the certificate; a bad pair
//! is logged and the old one keeps serving. Connections hold their own session, so a reload
//! never touches them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};

use crate::http::error::{PROBLEM_JSON, problem_body};
use crate::http::middleware::headers;
use crate::http::middleware::request_id::{X_REQUEST_ID, acceptable, fresh_id};

/// How often the certificate and key files are looked at for a change.
const POLL: Duration = Duration::from_secs(2);

/// The TLS side of the listener: the acceptor, and the certificate it serves.
#[derive(Clone)]
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    certs: Arc<Reloadable>,
}

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// `tls.cert_file` or `tls.key_file`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item.
    #[error("{what} {}: {detail}", path.display())]
    Parse {
        /// `tls.cert_file` or `tls.key_file`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The key does not belong to the certificate (or is of a kind rustls cannot use).
    #[error("tls.key_file {} does not fit tls.cert_file {}: {detail}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        detail: String,
    },
}

impl Tls {
    /// Load the pair (an error names the file at fault) and build the acceptor: TLS 1.2 and
    /// 1.3 only, the provider's default (AEAD, forward-secret) suites, ALPN `h2` then
    /// `http/1.1`.
    pub(crate) fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let first = load_pair(&provider, cert_file, key_file)?;
        let certs = Arc::new(Reloadable {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider: provider.clone(),
            current: RwLock::new(Arc::new(first)),
            seen: Mutex::new(stamp(cert_file, key_file)),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Mismatch {
                cert: cert_file.to_path_buf(),
                key: key_file.to_path_buf(),
                detail: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // The server's order of suites (strongest first), not the client's.
        config.ignore_client_order = true;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certs,
        })
    }

    /// The acceptor for new connections.
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reload the pair on SIGHUP and whenever either file changes (looked at every 2 s),
    /// until the task is dropped.
    pub(crate) async fn reload_on_change(self) {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                () = async {
                    match hup.as_mut() {
                        Some(h) => { h.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => true,
                _ = tick.tick() => false,
            };
            let certs = self.certs.clone();
            let _ = crate::blocking::run(move || certs.reload(forced)).await;
        }
    }
}

/// The current certificate, swapped whole on a good reload.
#[derive(Debug)]
struct Reloadable {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' identity (modification time, length) when last looked at.
    seen: Mutex<Option<Stamp>>,
}

type Stamp = [(SystemTime, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    Some([one(cert)?, one(key)?])
}

impl Reloadable {
    /// Load the pair again when `forced` (SIGHUP) or when a file changed since last time.
    fn reload(&self, forced: bool) {
        let now = stamp(&self.cert_file, &self.key_file);
        {
            let Ok(mut seen) = self.seen.lock() else {
                return;
            };
            if !forced && *seen == now {
                return;
            }
            *seen = now;
        }
        match load_pair(&self.provider, &self.cert_file, &self.key_file) {
            Ok(pair) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Arc::new(pair);
                    tracing::info!(
                        cert_file = %self.cert_file.display(),
                        "TLS certificate reloaded"
                    );
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                "TLS certificate not reloaded; the previous one keeps serving"
            ),
        }
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

/// Read and check one certificate chain and its key.
fn load_pair(
    provider: &CryptoProvider,
    cert_file: &Path,
    key_file: &Path,
) -> Result<CertifiedKey, TlsError> {
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    let parse = |what, path: &Path, detail: String| TlsError::Parse {
        what,
        path: path.to_path_buf(),
        detail,
    };
    let pem = read("tls.cert_file", cert_file)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse("tls.cert_file", cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(parse(
            "tls.cert_file",
            cert_file,
            "no PEM CERTIFICATE in it".into(),
        ));
    }
    let pem = read("tls.key_file", key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        parse(
            "tls.key_file",
            key_file,
            format!("no usable PEM private key in it ({e})"),
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Mismatch {
        cert: cert_file.to_path_buf(),
        key: key_file.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Connect to our own HTTPS listener for `coffer healthcheck`: the server must present
/// exactly the certificate in `cert_file` (its host name is not checked: the probe dials an
/// address, often 127.0.0.1, that the certificate need not name).
pub(crate) async fn connect_own(
    addr: std::net::SocketAddr,
    cert_file: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let pem = tokio::fs::read(cert_file).await?;
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| std::io::Error::other("tls.cert_file holds no certificate"))?;
    let provider = Arc::new(aws_lc_rs::default_provider());
    let verifier = ExactCertificate {
        der: leaf.as_ref().to_vec(),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Trusts one certificate, byte for byte; signatures are still verified.
#[derive(Debug)]
struct ExactCertificate {
    der: Vec<u8>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for ExactCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.der.as_slice() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server's certificate is not the one in tls.cert_file".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Serve `tls.redirect_bind`: every request, health probes included, gets 308 to the same
/// path and query on HTTPS at `https_port`. Runs until the task is dropped.
pub(super) async fn redirect(
    listener: TcpListener,
    https_port: u16,
    allowed_hosts: Arc<Vec<String>>,
    header_timeout: Duration,
    per_ip: super::accept::PerIp,
    send_timeout: Duration,
) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(16 * 1024);
    // The redirect is cheap, but the connections are still capped.
    let slots = Arc::new(tokio::sync::Semaphore::new(1024));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed (redirect listener)");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // As on the main listener: one address cannot hold every slot, and a client that does
        // not read its answer does not hold one for long.
        let Some(ip_slot) = per_ip.admit(peer.ip()) else {
            continue;
        };
        let stream = super::SendTimeout::new(stream, send_timeout);
        let http1 = http1.clone();
        let allowed = allowed_hosts.clone();
        tokio::spawn(async move {
            let _slots = (permit, ip_slot);
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let res = redirect_response(&req, https_port, &allowed);
                async move { Ok::<_, std::convert::Infallible>(res) }
            });
            let _ = http1.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// 308 to `https://HOST[:PORT]/PATH?QUERY`, or a 400 problem when the request names no usable
/// host (none, more than one, or one `server.allowed_hosts` does not list; health probes are
/// exempt from the list, as on the HTTPS listener). Either way with the headers every
/// response carries: the security headers and `X-Request-Id`.
fn redirect_response<B>(
    req: &http::Request<B>,
    https_port: u16,
    allowed_hosts: &[String],
) -> Response<Body> {
    let probe = headers::is_probe(req.uri().path());
    let host = (req.headers().get_all(header::HOST).iter().count() <= 1)
        .then(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().host())
        })
        .flatten()
        .and_then(host_without_port)
        .filter(|h| {
            probe
                || allowed_hosts.is_empty()
                || allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(h))
        });
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let location = host.and_then(|host| {
        let port = if https_port == 443 {
            String::new()
        } else {
            format!(":{https_port}")
        };
        HeaderValue::try_from(format!("https://{host}{port}{path}")).ok()
    });
    let id = req
        .headers()
        .get(X_REQUEST_ID)
        .filter(|v| acceptable(v))
        .cloned()
        .unwrap_or_else(fresh_id);
    let mut res = match location {
        Some(location) => {
            let mut res = Response::new(Body::empty());
            *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
            res.headers_mut().insert(header::LOCATION, location);
            res
        }
        None => {
            let status = StatusCode::BAD_REQUEST;
            let detail = "the request names no host this service answers to (one Host header)";
            let body = problem_body(status, detail, id.to_str().unwrap_or("-"));
            let mut res = Response::new(Body::from(body));
            *res.status_mut() = status;
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
            res
        }
    };
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_REQUEST_ID, id);
    // Plain HTTP: HSTS would be ignored here (RFC 6797 §8.1); the HTTPS answers carry it.
    headers::set_security_headers(h, false);
    res
}

/// The host of a `Host` value (`name`, `name:port`, `[v6]:port`), when it is a plain DNS name
/// or address: nothing that could change what the redirect points at.
fn host_without_port(value: &str) -> Option<&str> {
    let host = if let Some(rest) = value.strip_prefix('[') {
        let end = rest.find(']')?;
        value.get(..end + 2)?
    } else {
        value.split(':').next()?
    };
    let plain = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    plain.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redirect_keeps_path_and_query_and_refuses_odd_hosts() {
        let req = |host: &str, uri: &str| {
            http::Request::builder()
                .uri(uri)
                .header(header::HOST, host)
                .body(())
                .unwrap()
        };
        let loc = |r: Response<Body>| {
            assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
            r.headers()[header::LOCATION].to_str().unwrap().to_owned()
        };
        let none: &[String] = &[];
        assert_eq!(
            loc(redirect_response(
                &req("example.com:8080", "/healthz?x=1"),
                8443,
                none
            )),
            "https://example.com:8443/healthz?x=1"
        );
        assert_eq!(
            loc(redirect_response(&req("[::1]:80", "/"), 443, none)),
            "https://[::1]/"
        );
        for bad in ["evil.com/x", "a@b", "", "x y"] {
            let r = redirect_response(&req(bad, "/"), 443, none);
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        let only = vec!["files.example.com".to_owned()];
        assert_eq!(
            redirect_response(&req("other.example.com", "/"), 443, &only).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
