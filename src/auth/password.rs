//! Password hashing (argon2id, PHC strings) and the password policy.
//!
//! Invariant: hashing and verification run on their own threads, one per core, at the lowest
//! scheduling priority (nice 19), behind a semaphore sized to that pool: a login storm queues
//! and soaks up idle CPU, but every other request is scheduled first, so it cannot starve
//! downloads. Unknown users are verified against a dummy hash, so their answer takes as long
//! as a wrong password's.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex, mpsc};

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Semaphore, oneshot};

use crate::config::AuthConfig;
use crate::error::FieldError;

/// The bundled list of common passwords (lower case, most common first).
static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../../data/common-passwords.txt")
        .lines()
        .map(str::trim)
        .collect()
});

/// Scheduling priority of the hashing threads: the lowest, so request handling always wins the
/// CPU and argon2 gets what is left (measured: `/users/me` p99 during a 50-client login storm
/// 15-20 ms at nice 0, about 4 ms at nice 10).
const HASH_NICE: i32 = 19;

/// Argon2 failed (never because of a wrong password: that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// The password hasher.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    pool: HashPool,
    dummy: Arc<String>,
}

/// The result of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The password matched.
    pub ok: bool,
    /// The stored hash uses other parameters than configured: store a fresh one.
    pub needs_rehash: bool,
}

impl Passwords {
    /// Build from config: start the hashing threads and compute the dummy hash.
    pub fn new(cfg: &AuthConfig) -> Result<Self, HashError> {
        let params = Params::new(
            cfg.argon2_memory_kib,
            cfg.argon2_iterations,
            cfg.argon2_parallelism,
            None,
        )
        .map_err(|e| HashError(e.to_string()))?;
        let threads = match cfg.hash_concurrency {
            // One core is left to serving: on 2 cores a storm of logins then costs the other
            // requests a core's worth of argon2 memory traffic, not two.
            0 => std::thread::available_parallelism()
                .map_or(1, |n| usize::from(n).saturating_sub(1).max(1)),
            n => n,
        };
        let mut this = Self {
            params,
            pool: HashPool::start(threads)?,
            dummy: Arc::default(),
        };
        let dummy = this.hash_now(&crate::auth::random_token::<24>())?;
        this.dummy = Arc::new(dummy);
        Ok(this)
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    fn hash_now(&self, password: &str) -> Result<String, HashError> {
        self.argon2()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| HashError(e.to_string()))
    }

    /// Hash a password (PHC string).
    pub async fn hash(&self, password: SecretString) -> Result<String, HashError> {
        let this = self.clone();
        self.pool
            .run(move || this.hash_now(password.expose_secret()))
            .await?
    }

    /// Verify against `stored`, or against the dummy hash when there is no user (`None`), in
    /// which case the answer is always `ok: false` after the same amount of work.
    pub async fn verify(
        &self,
        password: SecretString,
        stored: Option<String>,
    ) -> Result<Verified, HashError> {
        let this = self.clone();
        self.pool
            .run(move || this.verify_now(password.expose_secret(), stored))
            .await
    }

    fn verify_now(&self, password: &str, stored: Option<String>) -> Verified {
        let real = stored.is_some();
        let phc_text = stored.unwrap_or_else(|| self.dummy.to_string());
        let Ok(phc) = PasswordHash::new(&phc_text) else {
            return Verified {
                ok: false,
                needs_rehash: false,
            };
        };
        let ok = self
            .argon2()
            .verify_password(password.as_bytes(), &phc)
            .is_ok()
            && real;
        let current = phc.algorithm.as_str() == "argon2id"
            && Params::try_from(&phc).is_ok_and(|p| {
                p.m_cost() == self.params.m_cost()
                    && p.t_cost() == self.params.t_cost()
                    && p.p_cost() == self.params.p_cost()
            });
        Verified {
            ok,
            needs_rehash: ok && !current,
        }
    }
}

/// Threads that do nothing but argon2, at low priority.
#[derive(Clone)]
struct HashPool {
    jobs: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
}

type Job = Box<dyn FnOnce() + Send>;

impl HashPool {
    fn start(threads: usize) -> Result<Self, HashError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("coffer-argon2-{i}"))
                .spawn(move || worker(&rx))
                .map_err(|e| HashError(e.to_string()))?;
        }
        Ok(Self {
            jobs,
            permits: Arc::new(Semaphore::new(threads)),
        })
    }

    /// Run `f` on the pool; callers wait (asynchronously) for a free thread. The permit
    /// travels with the job, so a caller that gives up (client gone) does not free a slot
    /// while its job still occupies a thread; a job whose caller is gone is skipped.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| HashError(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let span = tracing::Span::current();
        self.jobs
            .send(Box::new(move || {
                let _permit = permit;
                if !tx.is_closed() {
                    let _ = tx.send(span.in_scope(f));
                }
            }))
            .map_err(|_| HashError("the hashing threads have stopped".into()))?;
        rx.await
            .map_err(|_| HashError("a hashing job panicked".into()))
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Job>>) {
    // On Linux this applies to the calling thread only.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), HASH_NICE)
    {
        tracing::debug!(error = %e, "cannot lower the hashing threads' priority");
    }
    loop {
        // The lock is held only while waiting for the next job, never while hashing.
        let job = match rx.lock().map(|r| r.recv()) {
            Ok(Ok(job)) => job,
            _ => return,
        };
        // A panicking job must not take a pool thread with it (its caller sees an error).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

/// Check a new password against the policy; the errors name the field `password`.
pub fn check_policy(cfg: &AuthConfig, password: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut fail = |m: String| errs.push(FieldError::new("password", m));
    let chars = password.chars().count();
    if chars < cfg.password_min_length || chars > cfg.password_max_length {
        fail(format!(
            "must be {}-{} characters long",
            cfg.password_min_length, cfg.password_max_length
        ));
    }
    if cfg.password_require_digit && !password.chars().any(|c| c.is_ascii_digit()) {
        fail("must contain a digit".into());
    }
    if cfg.password_require_uppercase && !password.chars().any(char::is_uppercase) {
        fail("must contain an upper-case letter".into());
    }
    if cfg.password_reject_common && COMMON.contains(password.to_lowercase().as_str()) {
        fail("is too common; choose a less predictable password".into());
    }
    errs
}

/// How many common passwords are bundled.
pub fn common_password_count() -> usize {
    COMMON.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg() -> AuthConfig {
        let mut c = Config::load_from(None, Vec::new()).unwrap().auth;
        c.argon2_memory_kib = 64;
        c.argon2_iterations = 1;
        c
    }

    #[test]
    fn policy_rules() {
        let c = cfg();
        assert!(check_policy(&c, "Tr0ub4dor&3x").is_empty());
        assert_eq!(check_policy(&c, "Sh0rt").len(), 1);
        assert!(!check_policy(&c, "nouppercase1").is_empty());
        assert!(!check_policy(&c, "NoDigitsHere").is_empty());
        assert!(
            !check_policy(&c, "Password1").is_empty(),
            "common, case-insensitively"
        );
        assert!(common_password_count() >= 10_000);
    }

    #[tokio::test]
    async fn hash_verify_and_rehash() {
        let p = Passwords::new(&cfg()).unwrap();
        let h = p.hash(SecretString::from("Correct-Horse-9")).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        let v = p
            .verify(SecretString::from("Correct-Horse-9"), Some(h.clone()))
            .await
            .unwrap();
        assert_eq!(
            v,
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        assert!(
            !p.verify(SecretString::from("wrong"), Some(h.clone()))
                .await
                .unwrap()
                .ok
        );
        assert!(
            !p.verify(SecretString::from("anything"), None)
                .await
                .unwrap()
                .ok
        );

        let mut stronger = cfg();
        stronger.argon2_iterations = 2;
        let p2 = Passwords::new(&stronger).unwrap();
        let v = p2
            .verify(SecretString::from("Correct-Horse-9"), Some(h))
            .await
            .unwrap();
        assert_eq!(
            v,
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
    }
}
