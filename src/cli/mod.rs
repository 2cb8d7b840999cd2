//! The command line: `serve`, `gen-secret`, `check`, `user create`, `backup`, `rotate-key`,
//! `encrypt-existing`, `migrate`.
//!
//! Exit codes: 0 success; 1 a failure, or `check` found problems, or `migrate` left files out
//! (a source blob that fails verification); 2 a configuration or secret error, a backup
//! destination inside the storage root or containing it, or a `migrate` target that is the
//! source or holds another store (the message says what to fix).

use std::io::BufRead as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::SecretString;

mod serve;

use crate::audit::{AuditLog, Confidential, Event, Record};
use crate::auth::accounts::{self, AccountError, NewAccount};
use crate::auth::password::Passwords;
use crate::blob::BlobStore;
use crate::config::{Config, StorageBackend};
use crate::crypto::Keyring;
use crate::meta::MetaStore;
use crate::meta::audit::{ChainKey, ChainKeys, Unsealed};
use crate::meta::users::Role;
use crate::ops;
use crate::secrets::{self, S3Credentials, SecretKey};

mod migrate;

/// coffer: a secure file-storage service.
#[derive(Parser)]
#[command(name = "coffer", version, about)]
struct Cli {
    /// Configuration file (default: ./config.toml when present, else the embedded defaults).
    #[arg(long, global = true, env = "COFFER_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve {
        /// First-run mode: without COFFER_SECRET_KEY, use an ephemeral random secret (tokens die
        /// with the process) and listen on loopback only. Never use in production.
        #[arg(long)]
        dev: bool,
    },
    /// Print a fresh secret key (64 hex characters).
    GenSecret,
    /// Check configuration and storage; exits 1 if anything is wrong.
    Check {
        /// Also read every blob back and verify its hash or authentication tags.
        #[arg(long)]
        deep: bool,
        /// Remove orphan blobs and rows whose blob is gone.
        #[arg(long)]
        repair: bool,
    },
    /// Manage accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Write a consistent copy of the database, blobs and a manifest into DEST.
    Backup {
        /// Destination folder (created if missing; must not hold a backup already; outside
        /// the storage root and not containing it, symlinks resolved).
        dest: PathBuf,
        /// Copy only the database and manifest, not the blobs.
        #[arg(long)]
        no_blobs: bool,
    },
    /// Copy the whole store (accounts, logins, keys, files and their blobs, links, the audit
    /// chain) into the backends CONFIG names, verifying every blob's size and SHA-256.
    /// Resumable: run it again to continue an interrupted run, or to copy what changed
    /// since (stop the source first for the last run). Secrets of the target come from
    /// COFFER_TO_* variables (COFFER_TO_DATABASE_URL, COFFER_TO_S3_ACCESS_KEY_ID, ...: any
    /// COFFER_TO_X acts as COFFER_X for the target only); without COFFER_TO_S3_* the S3
    /// credentials are COFFER_S3_*.
    Migrate {
        /// The target's configuration file.
        #[arg(long, value_name = "CONFIG")]
        to: PathBuf,
    },
    /// Re-wrap every data key under COFFER_ENCRYPTION_KEY (old keys in COFFER_ENCRYPTION_OLD_KEYS).
    RotateKey,
    /// Encrypt files stored before encryption at rest was turned on.
    EncryptExisting,
    /// Probe `GET /healthz` on the configured address; exit 0 when healthy (for container
    /// HEALTHCHECKs in images without curl).
    Healthcheck {
        /// Address to probe (default: `server.bind`, with 0.0.0.0 replaced by 127.0.0.1).
        #[arg(long)]
        addr: Option<SocketAddr>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account; the password comes from COFFER_PASSWORD or one line of standard input.
    Create {
        /// 3-50 of [A-Za-z0-9_].
        #[arg(long)]
        username: String,
        /// Email address.
        #[arg(long)]
        email: String,
        /// Make the account an administrator.
        #[arg(long)]
        admin: bool,
    },
}

/// Parse arguments and run; returns the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Command::GenSecret = cli.command {
        println!("{}", secrets::generate_hex());
        return ExitCode::SUCCESS;
    }
    // Everything coffer creates (database, blobs, backups) is private to its user.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    if let Command::Serve { .. } = cli.command {
        pin_malloc_threshold();
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coffer: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(config.server.blocking_threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("coffer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli.command, config))
}

/// Variable and value for glibc's allocator, chosen by `scripts/bench` (issue 17; numbers in
/// bench/README.md, "Serving at scale"):
/// - `mmap_threshold` fixed at 128 KiB: download read buffers (128 KiB to 1 MiB) and
///   argon2's 19 MiB blocks are mapped on their own and go back to the kernel when freed,
///   instead of being carved from a heap that keeps them. The read pool recycles up to
///   4 MiB of buffers, so a fast download does not fault in fresh pages for every chunk.
/// - `trim_threshold` 4 MiB: free memory at the top of a heap beyond it goes back (it was
///   32 MiB, kept for the 256 KiB download buffers the pool now recycles).
/// - `arena_max` 2: glibc gives each thread that allocates under contention an arena of its
///   own, up to 8 per core, and each keeps its free memory; the blocking pool has up to
///   `server.blocking_threads` threads, so a burst of downloads spread memory over 16 arenas
///   that all stayed resident. With 4, the two runtime workers and the database writer
///   would not share arenas: small downloads at 16 connections ran 7-12% faster, but 100
///   encrypted slow readers peaked 2 MiB higher, at the 48 MiB target (bench/README.md,
///   "Sixth round"), so 2 it stays.
const MALLOC_TUNABLE: (&str, &str) = (
    "GLIBC_TUNABLES",
    "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=4194304:glibc.malloc.arena_max=2",
);

/// glibc raises its mmap threshold each time a large block is freed, after which argon2's
/// 19 MiB blocks are carved from the thread arenas and stay there: every hashing thread would
/// hold ~19 MiB forever. A fixed threshold keeps large blocks in mmap, returned to the system
/// when freed (measured: 56 MiB resident after one login without it, 16 MiB with it). glibc
/// reads the setting only at start, so `serve` re-executes itself once with it set, unless the
/// operator already set `GLIBC_TUNABLES`.
fn pin_malloc_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt as _;
        if std::env::var_os(MALLOC_TUNABLE.0).is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(MALLOC_TUNABLE.0, MALLOC_TUNABLE.1)
            .exec();
        // Not fatal: only memory use is higher.
        eprintln!(
            "coffer: note: cannot re-execute with {}: {err}",
            MALLOC_TUNABLE.0
        );
    }
}

/// A failure that maps to an exit code.
enum Failure {
    Config(String),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self::Other(e.into())
    }
}

async fn dispatch(command: Command, config: Config) -> ExitCode {
    let result = match command {
        Command::Serve { dev } => serve::serve(config, dev).await,
        Command::Check { deep, repair } => check(config, deep, repair).await,
        Command::User {
            command:
                UserCommand::Create {
                    username,
                    email,
                    admin,
                },
        } => create_user(config, username, email, admin).await,
        Command::Backup { dest, no_blobs } => backup(config, &dest, !no_blobs).await,
        Command::Migrate { to } => migrate::run(config, &to).await,
        Command::RotateKey => rotate_key(config).await,
        Command::EncryptExisting => encrypt_existing(config).await,
        Command::Healthcheck { addr } => healthcheck(&config, addr).await,
        Command::GenSecret => Ok(ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(Failure::Config(msg)) => {
            eprintln!("coffer: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("coffer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn keyring() -> Result<Keyring, Failure> {
    let (current, old) =
        secrets::encryption_keys_from_env().map_err(|e| Failure::Config(e.to_string()))?;
    Keyring::new(current, &old).map_err(|e| Failure::Other(e.into()))
}

/// What derives the key that seals webhook signing secrets from the service secret.
const WEBHOOK_SECRETS_LABEL: &str = "coffer/webhook-secrets/v1";

/// The keys that seal webhook signing secrets, which the service must read back to sign: the
/// encryption-at-rest keys when it is on, else a key derived from `COFFER_SECRET_KEY`, so a
/// signing secret is never stored as it is (a copy of the database alone signs nothing). The
/// keys derived from the current and earlier service secrets stay known, so a secret sealed
/// before encryption at rest was turned on, or before the service secret changed, still opens
/// (and `rotate-key` moves it to the current key).
fn webhook_keyring(secret: &SecretKey, old_secrets: &[SecretKey]) -> Result<Keyring, Failure> {
    let (current, mut old) =
        secrets::encryption_keys_from_env().map_err(|e| Failure::Config(e.to_string()))?;
    let derived = std::iter::once(secret)
        .chain(old_secrets)
        .map(|k| k.derive(WEBHOOK_SECRETS_LABEL));
    let current = match current {
        Some(key) => {
            old.extend(derived);
            key
        }
        None => {
            let mut derived = derived;
            let key = derived
                .next()
                .unwrap_or_else(|| unreachable!("the current secret is always there"));
            old.extend(derived);
            key
        }
    };
    Keyring::new(Some(current), &old).map_err(|e| Failure::Other(e.into()))
}

/// The object store's credentials from the environment, when the configuration uses one.
fn s3_credentials(config: &Config) -> Result<Option<S3Credentials>, Failure> {
    match config.storage.backend {
        StorageBackend::Fs => {
            // Unused here, but a secret set both ways is refused whatever the backend.
            for var in [
                secrets::S3_ACCESS_KEY_ID_VAR,
                secrets::S3_SECRET_ACCESS_KEY_VAR,
            ] {
                secrets::not_both(var, |name| std::env::var_os(name))
                    .map_err(|e| Failure::Config(e.to_string()))?;
            }
            Ok(None)
        }
        StorageBackend::S3 => S3Credentials::from_env()
            .map(Some)
            .map_err(|e| Failure::Config(e.to_string())),
    }
}

/// Open the storage root (creating and migrating it when empty), the metadata store (SQLite
/// under the root, or PostgreSQL) and the blob store; returns the canonical root.
async fn open_stores(config: &Config) -> Result<(PathBuf, MetaStore, BlobStore), Failure> {
    let s3 = s3_credentials(config)?;
    let (root, blobs) = crate::state::open_storage(config, s3.as_ref())?;
    let meta = match config.database.postgres() {
        Some(pg) => MetaStore::open_postgres(&pg).await?,
        None => MetaStore::open_sqlite(&root.join(crate::state::SQLITE_FILE), 2).await?,
    };
    Ok((root, meta, blobs))
}

/// The storage root of a store that already exists, absolute, for the commands that work on
/// one (`check`, `backup`): they never create a store, since a wrong `storage.root` or working
/// directory would otherwise "check" a fresh empty one and report it consistent.
fn existing_store(config: &Config) -> Result<PathBuf, Failure> {
    let root = &config.storage.root;
    let shown = std::path::absolute(root).unwrap_or_else(|_| root.clone());
    let missing = |what: &str| {
        Failure::Config(format!(
            "no store at {}: {what}. check and backup work on an existing store only; point \
             storage.root (--config, COFFER_CONFIG or COFFER_STORAGE__ROOT) at it",
            shown.display()
        ))
    };
    let sqlite = config.database.postgres().is_none();
    let needs_root = sqlite || config.storage.backend == StorageBackend::Fs;
    if needs_root && !root.is_dir() {
        return Err(missing("the storage root does not exist"));
    }
    if sqlite && !root.join(crate::state::SQLITE_FILE).is_file() {
        return Err(missing("it holds no database"));
    }
    Ok(root.canonicalize().unwrap_or(shown))
}

/// One line naming the store a command works on.
fn describe_store(config: &Config, root: &Path) -> String {
    let db = match config.database.postgres() {
        Some(_) => "PostgreSQL (database.url)".to_owned(),
        None => format!("SQLite {}", root.join(crate::state::SQLITE_FILE).display()),
    };
    let blobs = match config.storage.backend {
        StorageBackend::Fs => format!("blobs under {}", root.display()),
        StorageBackend::S3 => format!("blobs in s3 bucket {}", config.s3.bucket),
    };
    format!("store at {}: metadata in {db}, {blobs}", root.display())
}

async fn check(config: Config, deep: bool, repair: bool) -> Result<ExitCode, Failure> {
    let root = existing_store(&config)?;
    println!("{}", describe_store(&config, &root));
    // The audit chain is keyed by the service secret: without it, it cannot be verified,
    // and a store whose trail is unverified is not called consistent.
    let chain = match SecretKey::from_env() {
        Ok(k) => Ok(chain_keys(&k)?),
        Err(e @ secrets::SecretError::Missing { .. }) => Err(format!(
            "audit chain not verified: {e} (it is keyed by the service secret)"
        )),
        Err(e) => return Err(Failure::Config(e.to_string())),
    };
    let keys = keyring()?;
    let (_, meta, blobs) = open_stores(&config).await?;
    let scan = async || -> Result<ops::check::Report, Failure> {
        let mut report = ops::check::scan(&meta, &blobs, deep.then_some(&keys)).await?;
        match &chain {
            Ok(chain) => ops::check::check_audit(&meta, chain, &mut report).await?,
            Err(unverified) => report.audit.push(unverified.clone()),
        }
        Ok(report)
    };
    let mut report = scan().await?;
    for line in report.lines() {
        println!("{line}");
    }
    if repair && !report.is_clean() {
        ops::check::repair(&meta, &blobs, &report).await?;
        // A head that is missing, unsealed or unverifiable was reported above; the operator
        // asked to go on from here (an intact head that shows a cut stays: it is evidence).
        if let Ok(chain) = &chain
            && meta.audit().seal_head(chain, Unsealed::Repair).await?
        {
            println!("repaired: sealed a new audit chain head at the newest entry");
        }
        report = scan().await?;
        for line in report.lines() {
            println!("after repair: {line}");
        }
    }
    if report.is_clean() {
        println!("ok: {} files, store consistent", report.files);
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

/// The key a service with this secret appends to the audit chain with.
fn current_chain_key(secret: &SecretKey) -> ChainKey {
    ChainKey(secret.derive(crate::state::AUDIT_CHAIN_LABEL))
}

/// The keys the audit chain may have been signed with: the current secret's, then those of
/// `COFFER_SECRET_OLD_KEYS` (as `COFFER_ENCRYPTION_OLD_KEYS` names earlier encryption keys).
fn chain_keys(current: &SecretKey) -> Result<ChainKeys, Failure> {
    let old = SecretKey::old_from_env().map_err(|e| Failure::Config(e.to_string()))?;
    Ok(ChainKeys::new(
        std::iter::once(current)
            .chain(old.iter())
            .map(current_chain_key),
    ))
}

fn read_password() -> Result<SecretString, Failure> {
    if let Some(p) = secrets::password_from_env().map_err(|e| Failure::Config(e.to_string()))? {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(SecretString::from(trimmed.to_owned()))
}

async fn create_user(
    config: Config,
    username: String,
    email: String,
    admin: bool,
) -> Result<ExitCode, Failure> {
    let password = read_password()?;
    let (_, meta, _) = open_stores(&config).await?;
    let passwords = Passwords::new(&config.auth)?;
    let role = if admin { Role::Admin } else { Role::User };
    let account = NewAccount {
        username,
        email,
        password,
        role,
    };
    match accounts::create(&meta, &passwords, &config.auth, account).await {
        Ok(user) => {
            // The entry is chained with the service secret; without it, say so instead.
            match SecretKey::from_env() {
                Ok(secret) => {
                    // With the earlier secrets too, so the chain's head sealed with one of
                    // them still moves.
                    let chain = chain_keys(&secret)?;
                    // No file facts here; the strict setting, should one ever be added.
                    let (audit, task) =
                        AuditLog::start(meta.clone(), chain, Confidential::TrailOnly);
                    audit.record(
                        Record::new(Event::UserCreate)
                            .subject(user.id)
                            .detail(serde_json::json!({ "via": "cli", "role": role.as_str() })),
                    );
                    audit.flush().await;
                    drop(audit);
                    let _ = task.await;
                }
                Err(_) => {
                    eprintln!("note: COFFER_SECRET_KEY is not set, so no audit entry was written")
                }
            }
            println!("{}", serde_json::to_string(&user)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(AccountError::Invalid(errs)) => {
            for e in errs {
                eprintln!("coffer: {}: {}", e.field, e.message);
            }
            Ok(ExitCode::FAILURE)
        }
        Err(e @ (AccountError::UsernameTaken | AccountError::EmailTaken)) => {
            eprintln!("coffer: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(Failure::Other(e.into())),
    }
}

async fn backup(config: Config, dest: &Path, with_blobs: bool) -> Result<ExitCode, Failure> {
    let root = existing_store(&config)?;
    println!("{}", describe_store(&config, &root));
    let (root, meta, blobs) = open_stores(&config).await?;
    let postgres = config.database.postgres().is_some();
    let done = match (config.storage.backend, postgres) {
        (StorageBackend::S3, _) => {
            ops::backup::run_from_store(&meta, &blobs, &root, dest, with_blobs, !postgres).await
        }
        (StorageBackend::Fs, true) => {
            ops::backup::run_without_database(&meta, &root, dest, with_blobs).await
        }
        (StorageBackend::Fs, false) => ops::backup::create(&root, dest, with_blobs).await,
    };
    let s = match done {
        Ok(s) => s,
        // DEST inside the storage root, containing it, or leading nowhere that can be told (a
        // dangling symlink, which may point into the root): the operator must pick another.
        Err(ops::backup::BackupError::Destination(
            e @ (ops::backup::DestError::InsideRoot { .. }
            | ops::backup::DestError::ContainsRoot { .. }
            | ops::backup::DestError::Unresolvable { .. }),
        )) => return Err(Failure::Config(e.to_string())),
        Err(e) => return Err(Failure::Other(e.into())),
    };
    println!(
        "backup of {} written to {}: {} files, {} blobs, {} deleted during the backup",
        root.display(),
        std::path::absolute(dest)
            .unwrap_or_else(|_| dest.to_path_buf())
            .display(),
        s.files,
        s.blobs,
        s.vanished
    );
    if postgres {
        println!(
            "the database is PostgreSQL and is not in this backup: back it up with pg_dump \
             (e.g. pg_dump --format=custom), which takes a consistent snapshot while coffer runs"
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn rotate_key(config: Config) -> Result<ExitCode, Failure> {
    let keys = keyring()?;
    // Webhook secrets are sealed with the encryption key, or without one with the service
    // secret's key; those sealed under an earlier key of either kind move to the current one.
    let hook_keys = match SecretKey::from_env() {
        Ok(secret) => {
            let old = SecretKey::old_from_env().map_err(|e| Failure::Config(e.to_string()))?;
            Some(webhook_keyring(&secret, &old)?)
        }
        Err(secrets::SecretError::Missing { .. }) => None,
        Err(e) => return Err(Failure::Config(e.to_string())),
    };
    if !keys.enabled() && hook_keys.is_none() {
        return Err(Failure::Config(
            "rotate-key needs COFFER_ENCRYPTION_KEY (the new key), or COFFER_SECRET_KEY to \
             re-seal webhook secrets under the current service secret"
                .into(),
        ));
    }
    let (_, meta, _) = open_stores(&config).await?;
    // Data keys first: a webhook secret that cannot be re-wrapped stops nothing else.
    let rewrapped = match keys.current_id() {
        Some(id) => {
            let n = ops::keys::rotate(&meta, &keys).await?;
            let staged = ops::keys::rotate_staged_chunks(&meta, &keys).await?;
            Some((id.to_owned(), n, staged))
        }
        None => None,
    };
    let hooks =
        ops::keys::rotate_webhook_secrets(&meta, hook_keys.as_ref().unwrap_or(&keys)).await?;
    match rewrapped {
        Some((id, n, staged)) => println!(
            "re-wrapped {n} data keys, {} webhook secrets and {staged} staged upload chunks under key {id}",
            hooks.done
        ),
        None => println!(
            "re-wrapped {} webhook secrets under the service secret's key (no COFFER_ENCRYPTION_KEY: no data keys)",
            hooks.done
        ),
    }
    if hooks.failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    // Webhooks whose secret stays under a key that goes away could not sign any more.
    for why in &hooks.failed {
        eprintln!("coffer: not re-wrapped: {why}");
    }
    if hook_keys.is_none() {
        eprintln!(
            "coffer: webhook secrets sealed with the service secret's key need COFFER_SECRET_KEY \
             (and COFFER_SECRET_OLD_KEYS for earlier ones)"
        );
    }
    Ok(ExitCode::FAILURE)
}

async fn healthcheck(config: &Config, addr: Option<SocketAddr>) -> Result<ExitCode, Failure> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut addr = addr.unwrap_or(config.server.bind);
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::from([127, 0, 0, 1]));
    }
    async fn ask(
        mut s: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    ) -> std::io::Result<bool> {
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await?;
        Ok(head.starts_with(b"HTTP/1.") && head.ends_with(b"200"))
    }
    // With native TLS the probe speaks it too, trusting exactly the configured certificate.
    let cert = config.tls.files().map(|(cert, _)| cert.to_path_buf());
    let probe = async {
        match &cert {
            Some(cert) => ask(crate::http::server::tls::connect_own(addr, cert).await?).await,
            None => ask(tokio::net::TcpStream::connect(addr).await?).await,
        }
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), probe).await {
        Ok(Ok(true)) => Ok(ExitCode::SUCCESS),
        _ => {
            eprintln!("coffer: {addr} is not healthy");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn encrypt_existing(config: Config) -> Result<ExitCode, Failure> {
    let keys = keyring()?;
    if !keys.enabled() {
        return Err(Failure::Config(
            "encrypt-existing needs COFFER_ENCRYPTION_KEY".into(),
        ));
    }
    let (_, meta, blobs) = open_stores(&config).await?;
    let (converted, skipped) = ops::keys::encrypt_existing(&meta, &blobs, &keys).await?;
    println!(
        "encrypted {converted} files; {skipped} skipped (content did not match its hash; see coffer check --deep)"
    );
    Ok(if skipped == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
