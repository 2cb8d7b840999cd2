//! Password hashing (argon2id, PHC strings) and the password policy.
//!
//! Invariant: hashing and verification run on their own threads, one per core, at the lowest
//! scheduling priority (nice 19), behind a semaphore sized to that pool: a login storm queues
//! and soaks up idle CPU, but every other request is scheduled first, so it cannot starve
//! downloads. Unknown users are verified against a dummy hash, so their answer takes as long
//! as a wrong password's. A hashing thread keeps its argon2 memory while callers are waiting
//! and frees it when none is, so a storm reuses it and an idle server does not hold it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, mpsc};

use argon2::password_hash::phc::Output;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};
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
        let ok = verify_with_reused_memory(password.as_bytes(), &phc) && real;
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

thread_local! {
    /// This hashing thread's argon2 working memory (`argon2_memory_kib`), kept while callers
    /// are waiting, so a login storm does not fault 19 MiB in afresh for every verification
    /// (measured: 20 → 32-36 logins/s on one thread), and released when none is.
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// What `PasswordVerifier::verify_password` does (same algorithm, version and parameters as the
/// PHC string, constant-time comparison of the outputs), with this thread's reused memory.
fn verify_with_reused_memory(password: &[u8], phc: &PasswordHash) -> bool {
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(version), Ok(params)) = (
        Algorithm::try_from(phc.algorithm.as_str()),
        phc.version
            .map_or(Ok(Version::default()), Version::try_from),
        Params::try_from(phc),
    ) else {
        return false;
    };
    let blocks_needed = params.block_count();
    let mut out = [0u8; Output::MAX_LENGTH];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    let hashed = BLOCKS.with_borrow_mut(|blocks| {
        if blocks.len() < blocks_needed {
            blocks.resize(blocks_needed, Block::default());
        }
        Argon2::new(algorithm, version, params).hash_password_into_with_memory(
            password,
            salt,
            out,
            blocks.as_mut_slice(),
        )
    });
    // `Output`'s equality is constant-time.
    hashed.is_ok() && Output::new(out).is_ok_and(|computed| computed == *expected)
}

/// Threads that do nothing but argon2, at low priority.
#[derive(Clone)]
struct HashPool {
    jobs: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
    /// Callers whose job has not started yet: while there are any, the threads keep their
    /// argon2 memory for the next job.
    waiting: Arc<AtomicUsize>,
}

type Job = Box<dyn FnOnce() + Send>;

impl HashPool {
    fn start(threads: usize) -> Result<Self, HashError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let waiting = Arc::new(AtomicUsize::new(0));
        for i in 0..threads {
            let (rx, waiting) = (rx.clone(), waiting.clone());
            std::thread::Builder::new()
                .name(format!("coffer-argon2-{i}"))
                .spawn(move || worker(&rx, &waiting))
                .map_err(|e| HashError(e.to_string()))?;
        }
        Ok(Self {
            jobs,
            permits: Arc::new(Semaphore::new(threads)),
            waiting,
        })
    }

    /// Run `f` on the pool; callers wait (asynchronously) for a free thread. The permit
    /// travels with the job, so a caller that gives up (client gone) does not free a slot
    /// while its job still occupies a thread; a job whose caller is gone is skipped.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        // Counted until the job starts, or until the caller gives up.
        let waiting = Waiting::enter(&self.waiting);
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
                drop(waiting);
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

/// One caller in [`HashPool::waiting`].
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Job>>, waiting: &AtomicUsize) {
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
        if waiting.load(Ordering::SeqCst) == 0 {
            BLOCKS.with_borrow_mut(|blocks| *blocks = Vec::new());
        }
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
    fn reused_memory_agrees_with_the_reference_verifier() {
        // One thread, so the buffer is grown, reused at the same size and reused while larger
        // than needed; hashes made by the crate's own allocating path must all verify.
        let cases = [
            (Algorithm::Argon2id, Version::V0x13, 8192, 2, 16),
            (Algorithm::Argon2id, Version::V0x13, 19456, 1, 32),
            (Algorithm::Argon2i, Version::V0x13, 19456, 1, 32),
            (Algorithm::Argon2d, Version::V0x10, 4096, 3, 64),
            (Algorithm::Argon2id, Version::V0x13, 4096, 1, 32),
        ];
        for (algorithm, version, m, t, len) in cases {
            let params = Params::new(m, t, 1, Some(len)).unwrap();
            let phc = Argon2::new(algorithm, version, params)
                .hash_password(b"Correct-Horse-9")
                .unwrap()
                .to_string();
            let phc = PasswordHash::new(&phc).unwrap();
            assert!(verify_with_reused_memory(b"Correct-Horse-9", &phc), "{phc}");
            assert!(
                !verify_with_reused_memory(b"Correct-Horse-8", &phc),
                "{phc}"
            );
        }
        // Malformed or incomplete hashes never verify.
        for bad in [
            "$argon2id$v=19$m=4096,t=1,p=1$c2FsdHNhbHQ",
            "$pbkdf2$i=1$c2FsdHNhbHQ$AAAA",
        ] {
            if let Ok(phc) = PasswordHash::new(bad) {
                assert!(!verify_with_reused_memory(b"x", &phc), "{bad}");
            }
        }
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
