//! Configuration: the embedded defaults (the committed `config.toml`), then the operator's file,
//! then `COFFER_<SECTION>__<KEY>` environment variables, in that order.
//!
//! Invariant: a `Config` that exists has passed [`Config::validate`]; unknown keys anywhere are
//! an error, never silently ignored. Secrets are not part of it (see [`crate::secrets`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::ingest::policy;

mod sources;
use sources::Origins;

/// The committed `config.toml`, compiled in so the binary runs with no file at all.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../config.toml");

/// Prefix of every configuration environment variable.
const ENV_PREFIX: &str = "COFFER_";

/// The whole configuration, one struct per `[section]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener, proxies and hosts.
    pub server: ServerConfig,
    /// Where blobs and the database live.
    pub storage: StorageConfig,
    /// A shared PostgreSQL database instead of the embedded SQLite.
    pub database: DatabaseConfig,
    /// The S3-compatible object store (used when `storage.backend = "s3"`).
    pub s3: S3Config,
    /// Size limits.
    pub limits: LimitsConfig,
    /// The upload type policy.
    pub uploads: UploadsConfig,
    /// Virus scanning with clamd.
    pub scan: ScanConfig,
    /// Download response policy.
    pub downloads: DownloadsConfig,
    /// How content may be embedded by other pages.
    pub serving: ServingConfig,
    /// Accounts, passwords and tokens.
    pub auth: AuthConfig,
    /// Per-client rate limits.
    pub rate_limit: RateLimitConfig,
    /// Cross-origin resource sharing.
    pub cors: CorsConfig,
    /// Share links.
    pub links: LinksConfig,
    /// Upload grants.
    pub grants: GrantsConfig,
    /// File expiry and the background sweeper.
    pub retention: RetentionConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// Event delivery to webhooks.
    pub webhooks: WebhooksConfig,
    /// Logging.
    pub log: LogConfig,
    /// Native TLS (off unless a certificate and key are configured).
    pub tls: TlsConfig,
    /// Where the values came from, for the start-up summary: the embedded defaults, the file
    /// read (if any), the names of the variables that overrode keys.
    #[serde(skip)]
    pub sources: Vec<String>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address.
    pub bind: SocketAddr,
    /// Accepted `Host` values (without port, case-insensitive); empty accepts any.
    #[serde(deserialize_with = "string_or_list")]
    pub allowed_hosts: Vec<String>,
    /// Peers (IPs or CIDR blocks) whose `X-Forwarded-For` is believed.
    #[serde(deserialize_with = "string_or_list")]
    pub trusted_proxies: Vec<String>,
    /// Send HSTS and treat every request as HTTPS.
    pub behind_tls_proxy: bool,
    /// Deadline for a whole request on the JSON routes (uploads and downloads are exempt).
    pub request_timeout_secs: u64,
    /// How long a client may take to send the request headers.
    pub header_read_timeout_secs: u64,
    /// How long in-flight requests may run after SIGTERM before they are cut.
    pub shutdown_grace_secs: u64,
    /// Simultaneous connections; the accept loop waits beyond this.
    pub max_connections: usize,
    /// Simultaneous connections from one address (trusted proxies exempt); more are dropped.
    pub max_connections_per_ip: usize,
    /// A connection whose peer accepts no response bytes for this long is closed.
    pub send_timeout_secs: u64,
    /// After an answer given before the request body was read, at most this much of the rest
    /// is read and discarded (for at most 5 s) before the connection closes; 0 closes at once.
    pub drain_limit_bytes: u64,
    /// Threads for blocking work (SQLite, file I/O, hashing batches), at most.
    pub blocking_threads: usize,
    /// Accept HTTP/2 without TLS (h2c, prior knowledge).
    pub http2: bool,
}

/// `[tls]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first). With `key_file`, `server.bind` speaks HTTPS only.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the certificate (also from `COFFER_TLS_KEY_FILE`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// A plain-HTTP listener that answers every request with 308 to HTTPS.
    #[serde(default)]
    pub redirect_bind: Option<SocketAddr>,
}

/// The variable that may name `tls.key_file` (as the `_FILE` twins of secrets do).
pub const TLS_KEY_FILE_VAR: &str = "COFFER_TLS_KEY_FILE";

impl TlsConfig {
    /// The certificate and key files, when native TLS is on.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        Some((self.cert_file.as_deref()?, self.key_file.as_deref()?))
    }
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The data root: `coffer.db` lives here, and with the `fs` backend `blobs/` and `tmp/`.
    pub root: PathBuf,
    /// Where blobs are stored.
    pub backend: StorageBackend,
    /// Read connections in the SQLite pool (writes go through one serialised connection).
    pub db_readers: usize,
    /// Whether startup scans every blob for orphans (a crash between rename and commit).
    pub scan_on_startup: bool,
}

/// `[database]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://` or `postgresql://` URL of a PostgreSQL database several nodes may share;
    /// empty = SQLite under `storage.root`. From a file it never carries a password (see
    /// [`Config::load_from`]).
    pub url: DatabaseUrl,
    /// Most connections this process holds.
    pub pool_size: usize,
    /// Longest wait for a new connection.
    pub connect_timeout_secs: u64,
    /// Longest one metadata call may take (waiting for a connection, its statements, its
    /// retries); three quarters of it is the server-side `statement_timeout`. Past it the
    /// request gets 503.
    pub call_timeout_secs: u64,
}

impl DatabaseConfig {
    /// The PostgreSQL settings, or `None` for the embedded SQLite.
    pub fn postgres(&self) -> Option<crate::meta::postgres::Settings> {
        (!self.url.0.is_empty()).then(|| crate::meta::postgres::Settings {
            url: self.url.0.clone(),
            pool_size: self.pool_size,
            connect_timeout: std::time::Duration::from_secs(self.connect_timeout_secs),
            call_timeout: std::time::Duration::from_secs(self.call_timeout_secs),
        })
    }
}

/// A database URL: it may carry a password, so `Debug` never shows it.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(pub String);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("[redacted]")
        }
    }
}

/// The variable that may hold the whole database URL (a secret: it may carry a password).
pub const DATABASE_URL_VAR: &str = "COFFER_DATABASE_URL";

/// Where blobs are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Under `storage.root` on the local filesystem.
    Fs,
    /// In an S3-compatible object store (`[s3]`).
    S3,
}

/// `[s3]`. The credentials come from the environment only (see [`crate::secrets`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http://host:port` or `https://host`.
    pub endpoint: String,
    /// The region requests are signed for.
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Prepended to every object key, with a `/` added when it does not end in one.
    pub prefix: String,
    /// Path-style URLs (`endpoint/bucket/key`), as Garage and MinIO expect by default.
    pub force_path_style: bool,
}

impl S3Config {
    /// Every problem with these settings, for a configuration that uses them.
    fn problems(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let e = &self.endpoint;
        let rest = e
            .strip_prefix("https://")
            .or_else(|| e.strip_prefix("http://"));
        match rest {
            None if e.is_empty() => {
                errs.push("s3.endpoint is required when storage.backend = \"s3\"".into())
            }
            None => errs.push(format!(
                "s3.endpoint: {e:?} must start with http:// or https://"
            )),
            Some(host) if host.is_empty() || host.contains(['?', '#', ' ', '@']) => {
                errs.push(format!(
                    "s3.endpoint: {e:?} must be scheme://host[:port][/path] without credentials"
                ))
            }
            Some(_) => {}
        }
        if self.bucket.is_empty() {
            errs.push("s3.bucket is required when storage.backend = \"s3\"".into());
        } else if !(3..=63).contains(&self.bucket.len())
            || !self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            errs.push(format!(
                "s3.bucket: {:?} is not a bucket name (3-63 of a-z, 0-9, '.', '-')",
                self.bucket
            ));
        }
        if self.region.is_empty() {
            errs.push("s3.region must not be empty".into());
        }
        // Every segment plain, so the key we write is the key the store shows back.
        let prefix = self.prefix.strip_suffix('/').unwrap_or(&self.prefix);
        let plain = |seg: &str| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if !prefix.is_empty() && (prefix.len() > 512 || !prefix.split('/').all(plain)) {
            errs.push(format!(
                "s3.prefix: {:?} must be /-separated segments of A-Z, a-z, 0-9, '.', '_', '-' (no empty, . or .. segment)",
                self.prefix
            ));
        }
        errs
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted upload, in bytes of file content (multipart framing not counted).
    pub max_upload_bytes: u64,
    /// Bytes one user may store in total; 0 means unlimited.
    pub user_quota_bytes: u64,
    /// Largest accepted JSON request body.
    pub json_body_bytes: usize,
    /// An upload that sends nothing for this long is aborted.
    pub upload_idle_timeout_secs: u64,
}

/// `[uploads]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadsConfig {
    /// Extension (lower-case, no dot) -> the content type its bytes must be.
    pub allowed: BTreeMap<String, String>,
    /// An upload whose last byte arrived this long ago counts as abandoned (its node died):
    /// a sweeper aborts what it staged and releases its quota.
    pub abandoned_after_secs: u64,
    /// Store JPEG, PNG and WebP without EXIF, XMP, IPTC, comments or thumbnails.
    pub strip_metadata: bool,
    /// The most pixels an image's header may declare (per frame and canvas).
    pub max_image_pixels: u64,
    /// Refuse images and PDFs that are also ZIP archives or carry markup near an end.
    pub reject_polyglots: bool,
    /// Unfinished resumable (tus) uploads one user may have at once (429 beyond).
    pub max_pending_per_user: u64,
    /// An unfinished resumable upload expires this long after its last PATCH (or creation).
    pub resumable_ttl_secs: u64,
}

impl UploadsConfig {
    /// How often at most an upload in flight records that bytes arrive: a quarter of
    /// `abandoned_after_secs`, between 1 s and 60 s (so a live upload never looks abandoned,
    /// and a fast one costs a handful of writes at most).
    pub fn touch_every(&self) -> std::time::Duration {
        std::time::Duration::from_secs((self.abandoned_after_secs / 4).clamp(1, 60))
    }
}

/// `[scan]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanConfig {
    /// `unix:/PATH` or `tcp://HOST:PORT`; absent (or empty), uploads are not scanned.
    #[serde(default)]
    pub clamd: Option<String>,
    /// Longest wait for any one step of a scan (connect, a write, the verdict).
    pub timeout_secs: u64,
    /// Store files unscanned (and audit it) when clamd cannot answer, instead of 503.
    pub fail_open: bool,
    /// Largest file scanned; clamd's own `StreamMaxLength` should be at least this.
    pub max_bytes: u64,
    /// Store larger files unscanned (audited) instead of refusing them with 413.
    pub skip_larger: bool,
}

impl ScanConfig {
    /// The configured clamd, parsed (validation guarantees it parses).
    pub fn clamd_addr(&self) -> Option<crate::ingest::scan::ClamdAddr> {
        let s = self.clamd.as_deref().filter(|s| !s.trim().is_empty())?;
        crate::ingest::scan::ClamdAddr::parse(s.trim()).ok()
    }
}

/// `[downloads]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadsConfig {
    /// `Cache-Control` sent with file content.
    pub cache_control: String,
}

/// `[serving]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingConfig {
    /// Origins (`scheme://host[:port]`) whose pages may frame content served with
    /// `?disposition=inline`; empty = nothing may frame anything.
    #[serde(deserialize_with = "string_or_list")]
    pub frame_ancestors: Vec<String>,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether `POST /auth/register` is open to anyone.
    pub open_registration: bool,
    /// Access-token lifetime.
    pub access_ttl_secs: u64,
    /// Refresh-token lifetime (each rotation starts a new one).
    pub refresh_ttl_secs: u64,
    /// Seconds after a rotation during which the token just rotated may be presented again
    /// and answers the same new refresh token instead of counting as reuse; 0 = off, at most
    /// 60.
    pub refresh_reuse_grace_secs: u64,
    /// The `iss` claim written and required.
    pub issuer: String,
    /// Password policy: shortest accepted password, in characters.
    pub password_min_length: usize,
    /// Password policy: longest accepted password, in characters.
    pub password_max_length: usize,
    /// Password policy: require a digit.
    pub password_require_digit: bool,
    /// Password policy: require an upper-case letter.
    pub password_require_uppercase: bool,
    /// Password policy: refuse the bundled list of common passwords.
    pub password_reject_common: bool,
    /// Argon2id memory cost in KiB.
    pub argon2_memory_kib: u32,
    /// Argon2id iterations.
    pub argon2_iterations: u32,
    /// Argon2id lanes.
    pub argon2_parallelism: u32,
    /// Password hashes computed at once; 0 = the number of cores minus one (at least one).
    pub hash_concurrency: usize,
    /// Failed logins for one account from one address before each further try must wait.
    pub login_failures_before_delay: u32,
    /// Upper bound of that wait.
    pub login_max_delay_secs: u64,
    /// How long a checked credential is trusted without asking the database again; every
    /// revocation made by this process drops what it revoked at once. Also how long a small
    /// file downloaded is kept in memory (`small_files`; its deletion drops it at once). 0
    /// disables both.
    pub principal_cache_secs: u64,
}

/// `[rate_limit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second per client address, all routes.
    pub requests_per_second: u32,
    /// Burst above that rate.
    pub burst: u32,
    /// Login and register attempts per minute per client address (one shared budget).
    pub login_per_minute: u32,
    /// Client addresses tracked before idle ones are evicted early.
    pub max_tracked_clients: usize,
}

/// `[cors]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`scheme://host[:port]`) allowed to call the API from a browser.
    #[serde(deserialize_with = "string_or_list")]
    pub allowed_origins: Vec<String>,
    /// How long a browser may cache a preflight answer (`Access-Control-Max-Age`).
    pub max_age_secs: u64,
}

/// `[links]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinksConfig {
    /// Longest lifetime of a share link.
    pub max_expires_secs: u64,
    /// Longest lifetime of a view URL.
    pub max_view_secs: u64,
}

/// `[grants]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsConfig {
    /// Longest lifetime of an upload grant.
    pub max_expires_secs: u64,
}

/// `[retention]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Lifetime of an upload that asks for none; 0 keeps files forever.
    pub default_ttl_secs: u64,
    /// Longest `expires_in` an upload may ask for.
    pub max_expires_secs: u64,
    /// How often the sweeper runs.
    pub sweep_interval_secs: u64,
}

/// `[webhooks]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Allow `http://` webhook URLs (development only: events carry file names and hashes).
    pub allow_http: bool,
    /// Allow targets on loopback, private, link-local and other special addresses (a
    /// receiver on the same host or network; never with untrusted users).
    pub allow_private_targets: bool,
    /// Seconds one try may take (connect to the end of the answer's head).
    pub timeout_secs: u64,
    /// Tries before a delivery is given up (1 = no retry).
    pub max_attempts: u64,
    /// Webhooks one account may have at once (each event is sent to every one of them).
    pub max_per_user: u64,
    /// Whether this node sends events (false: it records them, and other nodes, or this one
    /// once turned back on, deliver them; for a node that must make no outbound connection).
    pub deliver: bool,
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Days audit entries are kept; 0 keeps them forever.
    pub retention_days: u64,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directive (overridden by `RUST_LOG`).
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything wrong with a configuration, one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl ConfigError {
    fn one(msg: impl Into<String>) -> Self {
        Self(vec![msg.into()])
    }
}

impl Config {
    /// Load from the embedded defaults, the file at `path` (when given or present) and the
    /// process environment, then validate.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(path, std::env::vars())
    }

    /// [`Config::load`] with an explicit environment, for tests.
    ///
    /// `database.url` may also come from `COFFER_DATABASE_URL`, or from the file named by
    /// `COFFER_DATABASE_URL_FILE` (trailing newline stripped), which win over the file; both
    /// set is an error. A URL with a password in the config file is refused: secrets come
    /// from the environment.
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let defaults = parse_toml(EMBEDDED_DEFAULTS, "embedded defaults")?;
        let mut merged = defaults.clone();
        let mut origins = Origins::default();
        let mut sources = vec!["defaults".to_owned()];
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from("config.toml")).filter(|p| p.is_file()),
        };
        if let Some(file) = file {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                ConfigError::one(format!("cannot read config file {}: {e}", file.display()))
            })?;
            let layer = parse_toml(&text, &file.display().to_string())?;
            refuse_database_password(&layer, &file)?;
            origins.add_file(&text, &file.display().to_string());
            sources.push(
                std::path::absolute(&file)
                    .unwrap_or(file)
                    .display()
                    .to_string(),
            );
            merge(&mut merged, layer);
        }
        let mut problems = Vec::new();
        let database_url = match secret_from_env(&env, DATABASE_URL_VAR) {
            Ok(url) => url,
            Err(e) => {
                problems.extend(e.0);
                None
            }
        };
        sources.extend(
            env.iter()
                .map(|(k, _)| k)
                .filter(|k| {
                    k.strip_prefix(ENV_PREFIX).is_some_and(|r| r.contains("__"))
                        || (*k == DATABASE_URL_VAR
                            || k.strip_suffix("_FILE") == Some(DATABASE_URL_VAR))
                })
                .cloned(),
        );
        let (layer, env_problems) = env_layer(env.iter().cloned(), &mut origins);
        problems.extend(env_problems);
        merge(&mut merged, layer);
        if let Some(url) = database_url {
            origins.add_env("database.url".into(), DATABASE_URL_VAR);
            let mut section = toml::Table::new();
            section.insert("url".into(), toml::Value::String(url));
            merge(
                &mut merged,
                toml::Table::from_iter([("database".to_owned(), toml::Value::Table(section))]),
            );
        }
        if let Some((_, path)) = env
            .iter()
            .find(|(k, v)| k == TLS_KEY_FILE_VAR && !v.is_empty())
        {
            let mut section = toml::Table::new();
            section.insert("key_file".into(), toml::Value::String(path.clone()));
            let tls = toml::Table::from_iter([("tls".to_owned(), toml::Value::Table(section))]);
            if let Some(other) = env
                .iter()
                .find(|(k, v)| k == "COFFER_TLS__KEY_FILE" && v != path)
            {
                problems.push(format!(
                    "both {TLS_KEY_FILE_VAR} and COFFER_TLS__KEY_FILE are set ({:?} and {:?}); set only one",
                    path, other.1
                ));
            }
            origins.add_env("tls.key_file".into(), TLS_KEY_FILE_VAR);
            sources.push(TLS_KEY_FILE_VAR.to_owned());
            merge(&mut merged, tls);
        }
        let (config, type_problems) = sources::deserialize_all(merged, &defaults, &origins);
        problems.extend(type_problems);
        // Values are judged even when some keys had the wrong type (those are at their
        // defaults now), so one run lists everything to fix.
        if let Some(Err(ConfigError(invalid))) = config.as_ref().map(Config::validate) {
            problems.extend(invalid.into_iter().map(|m| origins.annotate(m)));
        }
        match config {
            Some(mut config) if problems.is_empty() => {
                config.sources = sources;
                Ok(config)
            }
            _ => Err(ConfigError(problems)),
        }
    }

    /// Check every value for sense, reporting all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let minimums: [(&str, u64, u64); 34] = [
            (
                "uploads.max_pending_per_user",
                self.uploads.max_pending_per_user,
                1,
            ),
            (
                "uploads.resumable_ttl_secs",
                self.uploads.resumable_ttl_secs,
                60,
            ),
            ("webhooks.timeout_secs", self.webhooks.timeout_secs, 1),
            ("webhooks.max_attempts", self.webhooks.max_attempts, 1),
            ("webhooks.max_per_user", self.webhooks.max_per_user, 1),
            ("database.pool_size", as_u64(self.database.pool_size), 1),
            (
                "database.connect_timeout_secs",
                self.database.connect_timeout_secs,
                1,
            ),
            (
                "database.call_timeout_secs",
                self.database.call_timeout_secs,
                1,
            ),
            ("scan.timeout_secs", self.scan.timeout_secs, 1),
            ("scan.max_bytes", self.scan.max_bytes, 1),
            ("uploads.max_image_pixels", self.uploads.max_image_pixels, 1),
            ("server.send_timeout_secs", self.server.send_timeout_secs, 1),
            (
                "server.blocking_threads",
                as_u64(self.server.blocking_threads),
                2,
            ),
            (
                "server.request_timeout_secs",
                self.server.request_timeout_secs,
                1,
            ),
            (
                "server.header_read_timeout_secs",
                self.server.header_read_timeout_secs,
                1,
            ),
            (
                "server.max_connections",
                as_u64(self.server.max_connections),
                1,
            ),
            (
                "server.max_connections_per_ip",
                as_u64(self.server.max_connections_per_ip),
                1,
            ),
            ("storage.db_readers", as_u64(self.storage.db_readers), 1),
            ("limits.max_upload_bytes", self.limits.max_upload_bytes, 1),
            (
                "limits.json_body_bytes",
                as_u64(self.limits.json_body_bytes),
                1024,
            ),
            (
                "limits.upload_idle_timeout_secs",
                self.limits.upload_idle_timeout_secs,
                1,
            ),
            ("auth.access_ttl_secs", self.auth.access_ttl_secs, 10),
            (
                "auth.login_max_delay_secs",
                self.auth.login_max_delay_secs,
                1,
            ),
            (
                "rate_limit.requests_per_second",
                u64::from(self.rate_limit.requests_per_second),
                1,
            ),
            ("rate_limit.burst", u64::from(self.rate_limit.burst), 1),
            (
                "rate_limit.login_per_minute",
                u64::from(self.rate_limit.login_per_minute),
                1,
            ),
            (
                "rate_limit.max_tracked_clients",
                as_u64(self.rate_limit.max_tracked_clients),
                16,
            ),
            ("links.max_expires_secs", self.links.max_expires_secs, 1),
            ("links.max_view_secs", self.links.max_view_secs, 1),
            ("grants.max_expires_secs", self.grants.max_expires_secs, 1),
            (
                "retention.max_expires_secs",
                self.retention.max_expires_secs,
                1,
            ),
            (
                "retention.sweep_interval_secs",
                self.retention.sweep_interval_secs,
                1,
            ),
            (
                "uploads.abandoned_after_secs",
                self.uploads.abandoned_after_secs,
                2,
            ),
            (
                "auth.password_min_length",
                as_u64(self.auth.password_min_length),
                4,
            ),
        ];
        for (key, value, min) in minimums {
            if value < min {
                errs.push(format!("{key} must be at least {min}"));
            }
        }
        let mut need = |ok: bool, msg: &str| {
            if !ok {
                errs.push(msg.to_owned());
            }
        };
        need(
            self.webhooks.timeout_secs <= 300,
            "webhooks.timeout_secs must be at most 300",
        );
        need(
            self.webhooks.max_attempts <= 100,
            "webhooks.max_attempts must be at most 100",
        );
        need(
            self.webhooks.max_per_user <= 1000,
            "webhooks.max_per_user must be at most 1000",
        );
        need(
            self.uploads.abandoned_after_secs
                >= self.limits.upload_idle_timeout_secs.saturating_mul(2),
            "uploads.abandoned_after_secs must be at least twice limits.upload_idle_timeout_secs (a live upload sends a byte that often, or is aborted)",
        );
        need(
            self.auth.refresh_ttl_secs > self.auth.access_ttl_secs,
            "auth.refresh_ttl_secs must be longer than auth.access_ttl_secs",
        );
        need(
            self.auth.refresh_reuse_grace_secs <= 60,
            "auth.refresh_reuse_grace_secs must be at most 60 (seconds during which a replayed refresh token is not detected)",
        );
        need(
            !self.auth.issuer.is_empty(),
            "auth.issuer must not be empty",
        );
        need(
            self.auth.password_min_length <= self.auth.password_max_length
                && self.auth.password_max_length <= 1024,
            "auth.password_max_length must be >= password_min_length and <= 1024 (hashing cost grows with length)",
        );
        need(
            argon2::Params::new(
                self.auth.argon2_memory_kib,
                self.auth.argon2_iterations,
                self.auth.argon2_parallelism,
                None,
            )
            .is_ok(),
            "auth.argon2_* are not valid Argon2 parameters",
        );
        need(
            self.cors.max_age_secs <= 86_400,
            "cors.max_age_secs must be at most 86400 (browsers cap it there: Firefox at 24 h, Chromium at 2 h)",
        );
        need(
            self.links.max_view_secs <= 604_800,
            "links.max_view_secs must be at most 604800 (7 days): a view URL cannot be revoked one by one",
        );
        need(
            self.retention.default_ttl_secs <= self.retention.max_expires_secs,
            "retention.default_ttl_secs must be <= retention.max_expires_secs",
        );
        need(
            http::HeaderValue::from_str(&self.downloads.cache_control).is_ok(),
            "downloads.cache_control is not a valid header value",
        );
        need(
            self.database.call_timeout_secs < self.server.request_timeout_secs,
            "database.call_timeout_secs must be shorter than server.request_timeout_secs (a request waiting on the database answers 503 before it times out)",
        );
        if !self.database.url.0.is_empty()
            && let Err(e) = crate::meta::postgres::check_url(&self.database.url.0)
        {
            errs.push(format!("database.url: {e}"));
        }
        if let Err(e) = self.trusted_proxies() {
            errs.push(e);
        }
        for origin in &self.cors.allowed_origins {
            if let Err(e) = check_origin(origin) {
                errs.push(format!("cors.allowed_origins: {origin:?}: {e}"));
            }
        }
        for origin in &self.serving.frame_ancestors {
            if let Err(e) = check_origin(origin).and_then(|()| check_csp_source(origin)) {
                errs.push(format!("serving.frame_ancestors: {origin:?}: {e}"));
            }
        }
        for host in &self.server.allowed_hosts {
            if host.is_empty() || (host.contains(['/', ' ', ':']) && !host.starts_with('[')) {
                errs.push(format!(
                    "server.allowed_hosts: {host:?} is not a host name (no port)"
                ));
            }
        }
        if self.storage.backend == StorageBackend::S3 {
            errs.extend(self.s3.problems());
            // A sealed blob is a little longer than its file (a tag per 64 KiB segment).
            let most = crate::blob::s3::MAX_OBJECT_BYTES / 100 * 99;
            if self.limits.max_upload_bytes > most {
                errs.push(format!(
                    "limits.max_upload_bytes must be at most {most} with storage.backend = \"s3\" (10,000 multipart parts)"
                ));
            }
        }
        if self.scan.timeout_secs > 3600 {
            errs.push(
                "scan.timeout_secs must be at most 3600 (an upload waits that long for each step)"
                    .into(),
            );
        }
        if let Some(addr) = self.scan.clamd.as_deref().filter(|s| !s.trim().is_empty())
            && let Err(e) = crate::ingest::scan::ClamdAddr::parse(addr.trim())
        {
            errs.push(format!("scan.clamd: {e}"));
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => errs.push(format!(
                "tls.cert_file is set but tls.key_file is not (nor {TLS_KEY_FILE_VAR}); set both or neither"
            )),
            (None, Some(_)) => {
                errs.push("tls.key_file is set but tls.cert_file is not; set both or neither".into())
            }
            _ => {}
        }
        if let Some(redirect) = self.tls.redirect_bind {
            if self.tls.files().is_none() {
                errs.push(
                    "tls.redirect_bind needs native TLS (tls.cert_file and tls.key_file)".into(),
                );
            } else if redirect == self.server.bind && redirect.port() != 0 {
                errs.push("tls.redirect_bind must differ from server.bind".into());
            }
        }
        if self.uploads.allowed.is_empty() {
            errs.push("uploads.allowed must list at least one extension".into());
        }
        for (ext, mime) in &self.uploads.allowed {
            if let Err(e) = policy::check_rule(ext, mime) {
                errs.push(format!("uploads.allowed.{ext}: {e}"));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errs))
        }
    }

    /// Whether clients reach this server over HTTPS: native TLS, or a TLS proxy in front
    /// (`server.behind_tls_proxy`). Then every answer carries HSTS.
    pub fn https(&self) -> bool {
        self.server.behind_tls_proxy || self.tls.files().is_some()
    }

    /// The parsed `server.trusted_proxies`.
    pub fn trusted_proxies(&self) -> Result<Vec<IpNet>, String> {
        self.server
            .trusted_proxies
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("server.trusted_proxies: {s:?} is not an IP or CIDR block")
                    })
            })
            .collect()
    }
}

/// An origin is `scheme://host[:port]` with nothing after it, and never the wildcard.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin == "*" {
        return Err("the wildcard is not allowed; list exact origins");
    }
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ', '*']) {
        return Err("must be scheme://host[:port] with no path");
    }
    if http::HeaderValue::from_str(origin).is_err() {
        return Err("not a valid header value");
    }
    Ok(())
}

/// An origin goes into a `Content-Security-Policy` source list as is: only the characters of
/// `scheme://host[:port]` (no `;`, `,` or quote could then end the directive early).
fn check_csp_source(origin: &str) -> Result<(), &'static str> {
    let ok = origin
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-:/[]".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("may hold only letters, digits and . - : [ ] after the scheme")
    }
}

/// A config file's `database.url` must not carry a password: the file is read by more people
/// and tools than the process environment (backups, support bundles, version control).
fn refuse_database_password(layer: &toml::Table, file: &Path) -> Result<(), ConfigError> {
    let url = layer
        .get("database")
        .and_then(|d| d.get("url"))
        .and_then(toml::Value::as_str);
    if url.is_some_and(crate::meta::postgres::url_has_password) {
        return Err(ConfigError::one(format!(
            "{}: database.url carries a password; secrets come from the environment only: put \
             the whole URL in {DATABASE_URL_VAR}, or in a file named by {DATABASE_URL_VAR}_FILE",
            file.display()
        )));
    }
    Ok(())
}

/// `var`'s value from `env`, or the content of the file `var_FILE` names (Docker secrets),
/// without its trailing newline. Both set is an error; neither, or an empty value, is `None`.
fn secret_from_env(env: &[(String, String)], var: &str) -> Result<Option<String>, ConfigError> {
    let file_var = format!("{var}_FILE");
    let get = |name: &str| {
        env.iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };
    match (get(var), get(&file_var)) {
        (Some(_), Some(_)) => Err(ConfigError::one(format!(
            "both {var} and {file_var} are set; set only one"
        ))),
        (Some(v), None) => Ok(Some(v.to_owned())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::one(format!("{file_var}: cannot read {path}: {e}")))?;
            let value = text
                .strip_suffix('\n')
                .map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
            Ok(Some(value.to_owned()).filter(|v| !v.is_empty()))
        }
        (None, None) => Ok(None),
    }
}

fn parse_toml(text: &str, what: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::one(format!("{what}: {e}")))
}

/// Merge `layer` into `base`: sections merge key by key; a key's value is replaced whole (so a
/// file can shrink `uploads.allowed`, not only extend it).
fn merge(base: &mut toml::Table, layer: toml::Table) {
    for (section, value) in layer {
        match (base.get_mut(&section), value) {
            (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => {
                for (k, v) in src {
                    dst.insert(k, v);
                }
            }
            (_, value) => {
                base.insert(section, value);
            }
        }
    }
}

/// `COFFER_LIMITS__MAX_UPLOAD_BYTES=5` becomes `limits.max_upload_bytes = 5`. Values parse as
/// TOML when they can (`5`, `true`, `["a"]`, `{ png = "image/png" }`), else as strings.
fn env_layer(
    env: impl IntoIterator<Item = (String, String)>,
    origins: &mut Origins,
) -> (toml::Table, Vec<String>) {
    let mut table = toml::Table::new();
    let mut problems = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        if section.is_empty() || key.is_empty() || key.contains("__") {
            problems.push(format!("{name}: expected COFFER_<SECTION>__<KEY>"));
            continue;
        }
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        let section_name = section;
        let section = table
            .entry(section.to_ascii_lowercase())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(section) = section {
            section.insert(key.to_ascii_lowercase(), value);
        }
        origins.add_env(
            format!(
                "{}.{}",
                section_name.to_ascii_lowercase(),
                key.to_ascii_lowercase()
            ),
            &name,
        );
    }
    (table, problems)
}

/// Lists may be written as TOML arrays or, handy in environment variables, as one
/// comma-separated string.
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Either::deserialize(d)? {
        Either::Many(v) => v,
        Either::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn embedded_defaults_are_valid() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.server.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(c.rate_limit.login_per_minute, 5);
        assert_eq!(c.auth.access_ttl_secs, 900);
    }

    #[test]
    fn env_overrides_win_and_parse_types() {
        let c = Config::load_from(
            None,
            env(&[
                ("COFFER_LIMITS__MAX_UPLOAD_BYTES", "1048576"),
                ("COFFER_SERVER__BIND", "127.0.0.1:9999"),
                (
                    "COFFER_CORS__ALLOWED_ORIGINS",
                    "https://a.example, https://b.example",
                ),
                ("COFFER_UPLOADS__ALLOWED", r#"{ png = "image/png" }"#),
                ("COFFER_SECRET_KEY", "ignored: not a section key"),
            ]),
        )
        .unwrap();
        assert_eq!(c.limits.max_upload_bytes, 1_048_576);
        assert_eq!(c.server.bind.port(), 9999);
        assert_eq!(
            c.cors.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(c.uploads.allowed.len(), 1);
    }

    #[test]
    fn native_tls_needs_both_files_and_the_key_may_come_from_its_variable() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert!(c.tls.files().is_none() && !c.https());
        let c = Config::load_from(
            None,
            env(&[
                ("COFFER_TLS__CERT_FILE", "/c.pem"),
                ("COFFER_TLS_KEY_FILE", "/k.pem"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.tls.files(),
            Some((Path::new("/c.pem"), Path::new("/k.pem")))
        );
        assert!(c.https());
        for (pairs, want) in [
            (
                &[("COFFER_TLS__CERT_FILE", "/c.pem")][..],
                "tls.key_file is not",
            ),
            (
                &[("COFFER_TLS__KEY_FILE", "/k.pem")][..],
                "tls.cert_file is not",
            ),
            (
                &[("COFFER_TLS__REDIRECT_BIND", "127.0.0.1:80")][..],
                "tls.redirect_bind needs native TLS",
            ),
            (
                &[
                    ("COFFER_TLS__CERT_FILE", "/c.pem"),
                    ("COFFER_TLS__KEY_FILE", "/a.pem"),
                    ("COFFER_TLS_KEY_FILE", "/b.pem"),
                ][..],
                "set only one",
            ),
        ] {
            let e = Config::load_from(None, env(pairs)).unwrap_err().to_string();
            assert!(e.contains(want), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = Config::load_from(None, env(&[("COFFER_LIMITS__MAX_UPLOADS", "1")])).unwrap_err();
        assert!(e.to_string().contains("max_uploads"), "{e}");
        let e = Config::load_from(None, env(&[("COFFER_NOPE__X", "1")])).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = Config::load_from(None, env(&[("COFFER_LIMITS__MAX_UPLOAD_BYTES", "lots")]))
            .unwrap_err();
        assert!(e.to_string().contains("limits.max_upload_bytes"), "{e}");
    }

    #[test]
    fn the_refresh_grace_period_is_off_by_default_and_at_most_a_minute() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.auth.refresh_reuse_grace_secs, 0);
        let grace =
            |v: &str| Config::load_from(None, env(&[("COFFER_AUTH__REFRESH_REUSE_GRACE_SECS", v)]));
        assert_eq!(grace("60").unwrap().auth.refresh_reuse_grace_secs, 60);
        let e = grace("61").unwrap_err();
        assert!(
            e.to_string().contains("auth.refresh_reuse_grace_secs"),
            "{e}"
        );
    }

    #[test]
    fn the_database_url_comes_from_the_environment_or_a_file_it_names() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert!(c.database.postgres().is_none(), "SQLite by default");
        let url = "postgres://coffer:hunter2@db.internal:5432/coffer";
        let c = Config::load_from(None, env(&[("COFFER_DATABASE_URL", url)])).unwrap();
        let pg = c.database.postgres().unwrap();
        assert_eq!(pg.url, url);
        assert_eq!(pg.pool_size, 16);
        assert!(!format!("{c:?}").contains("hunter2"), "never printed");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, format!("{url}\n")).unwrap();
        let path = file.to_str().unwrap();
        let c = Config::load_from(None, env(&[("COFFER_DATABASE_URL_FILE", path)])).unwrap();
        assert_eq!(c.database.postgres().unwrap().url, url, "newline stripped");
        let e = Config::load_from(
            None,
            env(&[
                ("COFFER_DATABASE_URL", url),
                ("COFFER_DATABASE_URL_FILE", path),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("both COFFER_DATABASE_URL"), "{e}");
    }

    #[test]
    fn a_database_password_in_a_config_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "[database]\nurl = \"postgres://coffer:hunter2@db/coffer\"\n",
        )
        .unwrap();
        let e = Config::load_from(Some(&file), env(&[])).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("carries a password"), "{msg}");
        assert!(msg.contains("COFFER_DATABASE_URL"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        // Without the password the file may name the database; the environment supplies it.
        std::fs::write(&file, "[database]\nurl = \"postgres://coffer@db/coffer\"\n").unwrap();
        let c = Config::load_from(Some(&file), env(&[])).unwrap();
        assert!(c.database.postgres().is_some());
        let e = Config::load_from(
            None,
            env(&[
                ("COFFER_DATABASE_URL", "mysql://db/coffer"),
                ("COFFER_DATABASE__CALL_TIMEOUT_SECS", "30"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
    }

    #[test]
    fn content_safety_defaults_follow_the_contract() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.scan.clamd, None);
        assert_eq!(c.scan.clamd_addr(), None);
        assert_eq!(c.scan.timeout_secs, 30);
        assert!(!c.scan.fail_open);
        assert_eq!(c.scan.max_bytes, 26_214_400);
        assert!(!c.scan.skip_larger);
        assert!(c.uploads.strip_metadata);
        assert_eq!(c.uploads.max_image_pixels, 100_000_000);
        assert!(c.uploads.reject_polyglots);
    }

    #[test]
    fn clamd_addresses_are_checked_at_load() {
        let c = Config::load_from(None, env(&[("COFFER_SCAN__CLAMD", "unix:/run/clamd.sock")]))
            .unwrap();
        assert_eq!(
            c.scan.clamd_addr(),
            Some(crate::ingest::scan::ClamdAddr::Unix(
                "/run/clamd.sock".into()
            ))
        );
        let c =
            Config::load_from(None, env(&[("COFFER_SCAN__CLAMD", "tcp://clamav:3310")])).unwrap();
        assert!(c.scan.clamd_addr().is_some());
        // Empty means "no scanner", as unset does.
        let c = Config::load_from(None, env(&[("COFFER_SCAN__CLAMD", "")])).unwrap();
        assert_eq!(c.scan.clamd_addr(), None);
        let e = Config::load_from(
            None,
            env(&[
                ("COFFER_SCAN__CLAMD", "clamav:3310"),
                ("COFFER_SCAN__TIMEOUT_SECS", "0"),
                ("COFFER_SCAN__MAX_BYTES", "0"),
                ("COFFER_UPLOADS__MAX_IMAGE_PIXELS", "0"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 4, "{e}");
        assert!(e.to_string().contains("scan.clamd"), "{e}");
        let e = Config::load_from(None, env(&[("COFFER_SCAN__FAIL_OPEN", "maybe")])).unwrap_err();
        assert!(e.to_string().contains("scan.fail_open"), "{e}");
    }

    #[test]
    fn validation_lists_every_problem() {
        let e = Config::load_from(
            None,
            env(&[
                ("COFFER_CORS__ALLOWED_ORIGINS", "*"),
                ("COFFER_SERVER__TRUSTED_PROXIES", "not-an-ip"),
                ("COFFER_UPLOADS__ALLOWED", r#"{ html = "text/html" }"#),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
    }

    #[test]
    fn s3_settings_are_checked_only_when_used() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.storage.backend, StorageBackend::Fs);
        let c = Config::load_from(
            None,
            env(&[
                ("COFFER_STORAGE__BACKEND", "s3"),
                ("COFFER_S3__ENDPOINT", "http://127.0.0.1:3900"),
                ("COFFER_S3__BUCKET", "coffer"),
                ("COFFER_S3__PREFIX", "tenant-1/files"),
            ]),
        )
        .unwrap();
        assert_eq!(c.storage.backend, StorageBackend::S3);
        assert!(c.s3.force_path_style);

        // Every problem at once: no endpoint, no bucket, a prefix that walks.
        let e = Config::load_from(
            None,
            env(&[
                ("COFFER_STORAGE__BACKEND", "s3"),
                ("COFFER_S3__PREFIX", "a/../b"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        assert!(e.to_string().contains("s3.endpoint"), "{e}");
        assert!(e.to_string().contains("s3.bucket"), "{e}");
        assert!(e.to_string().contains("s3.prefix"), "{e}");

        for (key, bad) in [
            ("COFFER_S3__ENDPOINT", "ftp://x"),
            ("COFFER_S3__ENDPOINT", "http://user:pw@host"),
            ("COFFER_S3__BUCKET", "Bad_Bucket"),
            ("COFFER_S3__PREFIX", "/abs"),
            ("COFFER_S3__PREFIX", "a//b"),
            ("COFFER_S3__REGION", ""),
            ("COFFER_LIMITS__MAX_UPLOAD_BYTES", "60000000000"),
        ] {
            let mut vars = vec![
                ("COFFER_STORAGE__BACKEND", "s3"),
                ("COFFER_S3__ENDPOINT", "https://s3.example.com"),
                ("COFFER_S3__BUCKET", "coffer"),
            ];
            vars.retain(|(k, _)| *k != key);
            vars.push((key, bad));
            let e = Config::load_from(None, env(&vars)).unwrap_err();
            assert_eq!(e.0.len(), 1, "{key}={bad}: {e}");
        }
        // Secrets have no key here: an attempt is an unknown key, not a silent setting.
        assert!(Config::load_from(None, env(&[("COFFER_S3__SECRET_ACCESS_KEY", "x")])).is_err());
    }
}
