//! The shared state every handler sees: the configuration, the stores, the keys, and the
//! services built on them, opened once at start-up.
//!
//! Invariant: this module names nothing of the HTTP layer (no route, no middleware); the HTTP
//! server builds its router on top of it. Opening the state recovers from a crash first, so
//! nothing is served before interrupted uploads and deletions are cleaned up.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use ipnet::IpNet;
use tokio::task::JoinHandle;

use crate::audit::{AuditLog, Confidential};
use crate::auth::cache::PrincipalCache;
use crate::auth::credentials::Credentials;
use crate::auth::jwt::TokenKeys;
use crate::auth::password::Passwords;
use crate::auth::profiles::Profiles;
use crate::auth::refresh::RefreshTokens;
use crate::auth::sessions::Sessions;
use crate::auth::throttle::LoginThrottle;
use crate::auth::view::ViewKeys;
use crate::blob::BlobStore;
use crate::blob::fs::LocalFs;
use crate::blob::s3::{S3Settings, S3Store};
use crate::config::{Config, StorageBackend};
use crate::crypto::Keyring;
use crate::events::guard::Policy;
use crate::events::hooks::Webhooks;
use crate::ingest::Ingest;
use crate::ingest::policy::UploadPolicy;
use crate::ingest::quota::Quota;
use crate::ingest::safety::Safety;
use crate::limits::RateLimits;
use crate::meta::MetaStore;
use crate::metrics::Metrics;
use crate::ops::recovery;
use crate::resumable::Resumable;
use crate::secrets::{S3Credentials, SecretKey};
use crate::small_files::SmallFiles;

/// The SQLite database's file name inside the storage root.
pub const SQLITE_FILE: &str = "coffer.db";

/// The label of the subkey that chains the audit trail.
pub const AUDIT_CHAIN_LABEL: &str = "coffer/audit-chain/v1";

/// The state every handler sees. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct AppInner {
    /// The validated configuration.
    pub config: Config,
    /// Metadata (SQLite, or a PostgreSQL database shared with other nodes).
    pub meta: MetaStore,
    /// Blob storage.
    pub blobs: BlobStore,
    /// Recently checked credentials, shared with `credentials`: every revocation, whichever
    /// node commits it, drops what it revoked (the metadata engine announces it).
    pub principals: Arc<PrincipalCache>,
    /// Small plain files recently downloaded, row and bytes: every deletion, whichever node
    /// commits it, drops the file (the metadata engine announces it).
    pub(crate) small_files: Arc<SmallFiles>,
    /// Accounts' unchanging fields (`GET /users/me`): a deletion, whichever node commits
    /// it, drops the account (the metadata engine announces it).
    pub(crate) profiles: Arc<Profiles>,
    /// Resolves a request's bearer token or API key into its principal.
    pub credentials: Credentials,
    /// Register, login, refresh, logout.
    pub sessions: Sessions,
    /// Mints and checks view URLs.
    pub(crate) views: ViewKeys,
    /// Per-address rate limits.
    pub limits: RateLimits,
    /// The audit trail.
    pub audit: AuditLog,
    /// The upload pipeline (policy, quota, sealing, commit).
    pub ingest: Ingest,
    /// Resumable (tus) uploads, committed through `ingest`.
    pub(crate) resumable: Resumable,
    /// Creating webhooks (URL rules, secrets).
    pub(crate) webhooks: Webhooks,
    /// Encryption-at-rest master keys.
    pub keyring: Arc<Keyring>,
    /// Prometheus counters (recorded by the HTTP layer).
    pub metrics: Metrics,
    /// Parsed `server.trusted_proxies`.
    pub trusted_proxies: Vec<IpNet>,
    /// The serialised OpenAPI document.
    pub openapi: OnceLock<Bytes>,
}

/// The secrets the service runs with.
pub struct Secrets {
    /// Signs tokens.
    pub secret_key: SecretKey,
    /// Earlier service secrets (`COFFER_SECRET_OLD_KEYS`): only to tell whether the stored
    /// audit chain's key is still known.
    pub old_secret_keys: Vec<SecretKey>,
    /// Encryption-at-rest keys.
    pub keyring: Keyring,
    /// The keys that seal webhook signing secrets (never stored as they are).
    pub webhook_keyring: Keyring,
    /// The object store's credentials (`storage.backend = "s3"`).
    pub s3: Option<S3Credentials>,
}

impl AppState {
    /// Open the stores, recover from any crash and build the state. The audit writer's task
    /// is returned so a clean shutdown can wait for it.
    pub async fn open(config: Config, secrets: Secrets) -> anyhow::Result<(Self, JoinHandle<()>)> {
        let (root, blobs) = open_storage(&config, secrets.s3.as_ref())?;
        let meta = match config.database.postgres() {
            Some(pg) => MetaStore::open_postgres(&pg).await?,
            None => {
                let db = root.join(SQLITE_FILE);
                MetaStore::open_sqlite(&db, config.storage.db_readers).await?
            }
        };
        // A bucket may be shared with other processes (a `coffer check --repair`, a second
        // node): a blob committed moments ago gets the repair's grace before it is an orphan.
        let grace = match config.storage.backend {
            StorageBackend::Fs => Duration::ZERO,
            StorageBackend::S3 => crate::ops::check::REPAIR_GRACE,
        };
        recovery::recover(&meta, &blobs, config.storage.scan_on_startup, grace).await?;

        let passwords = Passwords::new(&config.auth)?;
        // With encryption at rest on, a file's hash or name stays out of the log.
        let confidential = if secrets.keyring.enabled() {
            Confidential::TrailOnly
        } else {
            Confidential::Logged
        };
        // The current secret's key chains the trail; earlier ones verify what they sealed.
        let known = crate::meta::audit::ChainKeys::new(
            std::iter::once(&secrets.secret_key)
                .chain(&secrets.old_secret_keys)
                .map(|k| crate::meta::audit::ChainKey(k.derive(AUDIT_CHAIN_LABEL))),
        );
        if let Some(warning) = crate::ops::check::unverifiable_tail(&meta, &known).await? {
            tracing::warn!("{warning}");
        }
        if meta
            .audit()
            .seal_head(&known, crate::meta::audit::Unsealed::Migrated)
            .await?
        {
            tracing::warn!(
                "added a sealed head to the audit chain (schema v12): from now on entries cut \
                 off its end show in `coffer check`; a cut made before now cannot be told"
            );
        }
        let (audit, audit_task) = AuditLog::start(meta.clone(), known, confidential);
        // Webhook secrets an earlier version stored as they are (without encryption at rest)
        // are sealed now; until then they still sign.
        let webhook_keyring = Arc::new(secrets.webhook_keyring);
        match crate::ops::keys::seal_plain_webhook_secrets(&meta, &webhook_keyring).await {
            Ok(r) => {
                if r.done > 0 {
                    tracing::info!(
                        sealed = r.done,
                        "sealed webhook signing secrets stored in the clear"
                    );
                }
                for why in r.failed {
                    tracing::warn!("cannot seal a webhook secret stored in the clear: {why}");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot seal the webhook secrets stored in the clear yet")
            }
        }
        // Secrets no key here opens: their events wait (never given up for it) until a node
        // that has the key delivers them.
        match crate::ops::keys::unopenable_webhook_secrets(&meta, &webhook_keyring).await {
            Ok(lost) if !lost.is_empty() => tracing::warn!(
                "{} webhook secrets are sealed under keys this node does not have ({}): their \
                 events wait until a node that has the key delivers them. Name the earlier \
                 COFFER_SECRET_KEY in COFFER_SECRET_OLD_KEYS, or the earlier encryption key in \
                 COFFER_ENCRYPTION_OLD_KEYS",
                lost.len(),
                lost.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot check the webhook secrets' keys"),
        }
        let trusted_proxies = config.trusted_proxies().map_err(anyhow::Error::msg)?;
        let keyring = Arc::new(secrets.keyring);
        let tokens = Arc::new(TokenKeys::new(
            &secrets.secret_key,
            &config.auth.issuer,
            config.auth.access_ttl_secs,
        )?);
        let principals = Arc::new(PrincipalCache::new(Duration::from_secs(
            config.auth.principal_cache_secs,
        )));
        // Every revocation, made here or on another node, reaches the cache (PostgreSQL: this
        // starts the node's listener; the cache serves nothing until it listens).
        meta.subscribe_revocations(principals.clone());
        let small_files = Arc::new(SmallFiles::new(Duration::from_secs(
            config.auth.principal_cache_secs,
        )));
        meta.subscribe_revocations(small_files.clone());
        let profiles = Arc::new(Profiles::new(config.auth.principal_cache_secs > 0));
        meta.subscribe_revocations(profiles.clone());
        let ingest = Ingest {
            max_upload_bytes: config.limits.max_upload_bytes,
            policy: Arc::new(UploadPolicy::new(&config.uploads.allowed)),
            quota: Arc::new(Quota::new(
                config.limits.user_quota_bytes,
                meta.clone(),
                config.uploads.touch_every(),
            )),
            blobs: blobs.clone(),
            meta: meta.clone(),
            keyring: keyring.clone(),
            audit: audit.clone(),
            safety: Safety::new(&config.scan, &config.uploads),
        };
        let resumable = Resumable {
            ingest: ingest.clone(),
            meta: meta.clone(),
            blobs: blobs.clone(),
            keyring: keyring.clone(),
            ttl: std::time::Duration::from_secs(config.uploads.resumable_ttl_secs),
            max_pending: config.uploads.max_pending_per_user,
            running: Default::default(),
        };
        let state = Self(Arc::new(AppInner {
            credentials: Credentials {
                tokens: tokens.clone(),
                principals: principals.clone(),
                meta: meta.clone(),
            },
            sessions: Sessions {
                config: config.auth.clone(),
                meta: meta.clone(),
                passwords,
                throttle: LoginThrottle::new(
                    config.auth.login_failures_before_delay,
                    config.auth.login_max_delay_secs,
                )
                .shared_by(&meta),
                tokens,
                refresh_tokens: RefreshTokens::new(&secrets.secret_key),
                audit: audit.clone(),
            },
            principals,
            small_files,
            profiles,
            views: ViewKeys::new(&secrets.secret_key),
            limits: RateLimits::new(&config.rate_limit).shared_by(&meta, &config.rate_limit),
            ingest,
            resumable,
            webhooks: Webhooks {
                meta: meta.clone(),
                keyring: webhook_keyring,
                policy: webhook_policy(&config),
                max_per_user: config.webhooks.max_per_user,
            },
            keyring,
            metrics: Metrics::default(),
            openapi: OnceLock::new(),
            trusted_proxies,
            audit,
            meta,
            blobs,
            config,
        }));
        Ok((state, audit_task))
    }
}

/// The outbound address guard's switches (`[webhooks]`).
pub(crate) fn webhook_policy(config: &Config) -> Policy {
    Policy {
        allow_http: config.webhooks.allow_http,
        allow_private_targets: config.webhooks.allow_private_targets,
    }
}

/// Open the storage root (created with mode 0700 when missing; the database lives there
/// whatever the backend) and the blob store that `storage.backend` names. Returns the
/// canonical root.
pub fn open_storage(
    config: &Config,
    s3: Option<&S3Credentials>,
) -> anyhow::Result<(std::path::PathBuf, BlobStore)> {
    let root = &config.storage.root;
    let in_root = |e: std::io::Error| anyhow::anyhow!("storage root {}: {e}", root.display());
    match config.storage.backend {
        StorageBackend::Fs => {
            let fs = LocalFs::open(root).map_err(in_root)?;
            Ok((fs.root().to_path_buf(), BlobStore::new(Arc::new(fs))))
        }
        StorageBackend::S3 => {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(in_root)?;
            let root = root.canonicalize().map_err(in_root)?;
            let creds = s3.ok_or_else(|| anyhow::anyhow!("no credentials for the object store"))?;
            let c = &config.s3;
            let store = S3Store::open(&S3Settings {
                endpoint: c.endpoint.clone(),
                region: c.region.clone(),
                bucket: c.bucket.clone(),
                prefix: c.prefix.clone(),
                force_path_style: c.force_path_style,
                access_key_id: creds.access_key_id.clone(),
                secret_access_key: creds.secret_access_key.clone(),
            })
            .map_err(|e| anyhow::anyhow!("object store: {e}"))?;
            Ok((root, BlobStore::new(Arc::new(store))))
        }
    }
}
