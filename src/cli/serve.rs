//! `coffer serve`: secrets, the dev-mode store, the listener, one start-up summary line,
//! then the server until SIGTERM or Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use super::{Failure, keyring, s3_credentials, webhook_keyring};
use crate::config::{Config, StorageBackend};
use crate::http::server::{App, Tls};
use crate::secrets::{self, SecretKey};
use crate::state::Secrets;

/// Run the HTTP service.
pub(super) async fn serve(mut config: Config, dev: bool) -> Result<ExitCode, Failure> {
    let secret_key = match SecretKey::from_env() {
        Ok(k) => k,
        Err(secrets::SecretError::Missing { .. }) if dev => {
            keep_dev_data_apart(&mut config);
            tracing::warn!("==================================================================");
            tracing::warn!(
                " DEV MODE: using an EPHEMERAL secret key. Tokens die with this process."
            );
            tracing::warn!(
                " Data goes to {} (SQLite), apart from any real store.",
                config.storage.root.display()
            );
            tracing::warn!(" Never run production like this: set COFFER_SECRET_KEY instead.");
            tracing::warn!("==================================================================");
            SecretKey::ephemeral()
        }
        Err(e) => return Err(Failure::Config(e.to_string())),
    };
    if dev && !config.server.bind.ip().is_loopback() {
        tracing::warn!(requested = %config.server.bind, "dev mode listens on loopback only");
        config.server.bind =
            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), config.server.bind.port());
    }
    let old_secret_keys = SecretKey::old_from_env().map_err(|e| Failure::Config(e.to_string()))?;
    let keyring = keyring()?;
    let webhook_keyring = webhook_keyring(&secret_key, &old_secret_keys)?;
    let s3 = s3_credentials(&config)?;
    if keyring.enabled() {
        tracing::info!(
            key_id = keyring.current_id().unwrap_or("-"),
            "encryption at rest is on"
        );
    }
    // A missing or unreadable certificate or key is a configuration error (exit 2) naming it.
    let tls = match config.tls.files() {
        Some((cert, key)) => {
            Some(Tls::load(cert, key).map_err(|e| Failure::Config(e.to_string()))?)
        }
        None => None,
    };
    let bind = config.server.bind;
    let listener = crate::http::server::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {bind} (server.bind): {e}"))?;
    let redirect = match config.tls.redirect_bind.filter(|_| tls.is_some()) {
        Some(at) => Some(
            crate::http::server::bind(at)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {at} (tls.redirect_bind): {e}"))?,
        ),
        None => None,
    };
    let addr = listener.local_addr()?;
    tracing::info!("{}", summary(&config, addr, keyring.enabled()));
    if config.auth.open_registration && !addr.ip().is_loopback() {
        tracing::warn!(
            "registration is open (auth.open_registration = true) on {addr}, which is not a \
             loopback address: anyone who reaches it can create an account"
        );
    }
    let app = App::build(
        config,
        Secrets {
            secret_key,
            old_secret_keys,
            keyring,
            webhook_keyring,
            s3,
        },
    )
    .await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Some(redirect) = &redirect {
        tracing::info!(
            redirect = %redirect.local_addr()?,
            "plain HTTP answers with a redirect to HTTPS"
        );
    }
    tracing::info!(%addr, "listening");
    // One line on stdout, for supervisors and test harnesses that bind port 0.
    println!("coffer listening on {scheme}://{addr}");
    app.serve(listener, tls, redirect, shutdown_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// The one start-up line: what runs, configured from where, storing where, reachable how.
fn summary(config: &Config, addr: SocketAddr, encryption: bool) -> String {
    let root =
        std::path::absolute(&config.storage.root).unwrap_or_else(|_| config.storage.root.clone());
    let metadata = match config.database.postgres() {
        Some(_) => "PostgreSQL",
        None => "SQLite",
    };
    let blobs = match config.storage.backend {
        StorageBackend::Fs => "local",
        StorageBackend::S3 => "s3",
    };
    let on = |b: bool| if b { "on" } else { "off" };
    let tls = match config.tls.files() {
        Some((cert, _)) => format!("on (native, {})", cert.display()),
        None if config.server.behind_tls_proxy => "at a proxy (server.behind_tls_proxy)".into(),
        None => "off".into(),
    };
    format!(
        "coffer {} starting: config {}; storage {} (metadata {metadata}, blobs {blobs}); \
         bind {addr}; TLS {tls}; encryption at rest {}; registration {}",
        env!("CARGO_PKG_VERSION"),
        config.sources.join(" + "),
        root.display(),
        on(encryption),
        if config.auth.open_registration {
            "open"
        } else {
            "closed"
        },
    )
}

/// With an ephemeral secret, `--dev` writes to its own store: `<storage.root>-dev` with SQLite
/// and local blobs. An audit chain signed with a key that dies with the process must never
/// be mixed into a real store (its `coffer check` could not verify those entries), and a
/// throwaway server must not touch a shared database or bucket.
fn keep_dev_data_apart(config: &mut Config) {
    let root = &config.storage.root;
    config.storage.root = match root.file_name() {
        Some(name) => {
            let mut name = name.to_os_string();
            name.push("-dev");
            root.with_file_name(name)
        }
        None => root.join("coffer-dev"),
    };
    config.storage.backend = StorageBackend::Fs;
    config.database.url = crate::config::DatabaseUrl::default();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
