//! Password hashing (argon2id, PHC strings) and the password policy.
//!
//! Invariant: hashing and verification run on their own threads, one per core, at the lowest
//! scheduling priority (nice 19), behind a semaphore sized to that pool: a login storm queues
//! and soaks up idle CPU, but every other request is scheduled first, so it cannot starve
//! downloads. A failed verification does the same argon2 work whatever the account's state
//! (unknown, locked, hashed with older parameters): one hash of every cost the stored hashes
//! use (see [`Passwords::verify`]). A hashing thread keeps its argon2 memory while callers are
//! waiting and frees it when none is, so a storm reuses it and an idle server does not hold it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, mpsc};

use argon2::password_hash::phc::Output;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Semaphore, oneshot};

use crate::config::AuthConfig;

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
pub(crate) struct HashError(String);

/// The password hasher.
#[derive(Clone)]
pub(crate) struct Passwords {
    params: Params,
    pool: HashPool,
    /// The cost (see [`cost_of`]) of the hashes made with `params`.
    current_cost: Arc<str>,
}

/// The salt of dummy hashes (16 bytes, like real ones): its value changes nothing.
const DUMMY_SALT: &str = "ZHVtbXktc2FsdC1jb2ZmZXI";

/// The result of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The password matched.
    pub(crate) ok: bool,
    /// The stored hash uses other parameters than configured: store a fresh one.
    pub(crate) needs_rehash: bool,
}

impl Passwords {
    /// Build from config: start the hashing threads.
    pub(crate) fn new(cfg: &AuthConfig) -> Result<Self, HashError> {
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
        // What the argon2 crate writes for these parameters and its default 32-byte output.
        let current_cost = format!(
            "$argon2id$v=19$m={},t={},p={}$43",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        );
        Ok(Self {
            params,
            pool: HashPool::start(threads)?,
            current_cost: current_cost.into(),
        })
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
    pub(crate) async fn hash(&self, password: SecretString) -> Result<String, HashError> {
        let this = self.clone();
        self.pool
            .run(move || this.hash_now(password.expose_secret()))
            .await?
    }

    /// Verify `password` against `stored`, the account's hash (`None`: no such account).
    ///
    /// `costs` are the costs every stored hash uses (`meta::users::password_costs`). When the
    /// password does not match, this verifies a dummy hash of each of them that the account's
    /// own hash did not already cover, so a failure does the same work whatever the account's
    /// state: unknown, locked, or hashed with other parameters than configured (which it keeps
    /// until its next successful login; the review of issue 20 measured 194 ms for such an
    /// account against 9 ms for an unknown name). Work rather than a time floor: the same work
    /// slows down alike under load, where a floor calibrated at rest lets the costliest case
    /// show through. The price: while several costs are in use, a failure costs their sum.
    pub(crate) async fn verify(
        &self,
        password: SecretString,
        stored: Option<String>,
        costs: Vec<String>,
    ) -> Result<Verified, HashError> {
        let this = self.clone();
        self.pool
            .run(move || this.verify_now(password.expose_secret(), stored.as_deref(), &costs))
            .await
    }

    fn verify_now(&self, password: &str, stored: Option<&str>, costs: &[String]) -> Verified {
        let own = stored.and_then(|s| PasswordHash::new(s).ok().map(|phc| (phc, cost_of(s))));
        if let Some((phc, _)) = &own
            && verify_with_reused_memory(password.as_bytes(), phc)
        {
            return Verified {
                ok: true,
                needs_rehash: !self.is_current(phc),
            };
        }
        let own_cost = own.and_then(|(_, cost)| cost);
        let mut dummies: Vec<&str> = costs
            .iter()
            .map(String::as_str)
            .filter(|c| Some(*c) != own_cost.as_deref())
            .collect();
        if own_cost.is_none() && dummies.is_empty() {
            // No stored hash at all: still answer after a verification's work.
            dummies.push(&self.current_cost);
        }
        for cost in dummies {
            let text = dummy_of(cost);
            match text.as_deref().map(PasswordHash::new) {
                Some(Ok(phc)) => {
                    let _ = verify_with_reused_memory(password.as_bytes(), &phc);
                }
                _ => tracing::debug!(cost, "a stored password cost cannot be dummied"),
            }
        }
        Verified {
            ok: false,
            needs_rehash: false,
        }
    }

    /// Whether a hash uses the configured algorithm and parameters.
    fn is_current(&self, phc: &PasswordHash) -> bool {
        phc.algorithm.as_str() == "argon2id"
            && Params::try_from(phc).is_ok_and(|p| {
                p.m_cost() == self.params.m_cost()
                    && p.t_cost() == self.params.t_cost()
                    && p.p_cost() == self.params.p_cost()
            })
    }
}

/// What a PHC string's verification costs: everything before its salt, then the length of its
/// hash in base64 characters (`$argon2id$v=19$m=19456,t=2,p=1$43`); `None` unless shaped like
/// an argon2 PHC string. The same expression as the `users.password_cost` column (migration
/// v2), so an account's own cost is recognised among the stored ones.
pub(crate) fn cost_of(phc: &str) -> Option<String> {
    // SQL: `password_hash LIKE '$argon2%$%$%$%'`.
    let shaped = phc
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("$argon2"))
        && phc
            .get(7..)
            .is_some_and(|rest| rest.matches('$').count() >= 3);
    if !shaped {
        return None;
    }
    let b64 = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    let before_hash = phc.trim_end_matches(b64);
    let params = before_hash.trim_end_matches('$').trim_end_matches(b64);
    Some(format!("{params}{}", phc.len() - before_hash.len()))
}

/// A PHC string of cost `cost` that no password matches (an all-zero hash).
fn dummy_of(cost: &str) -> Option<String> {
    let (params, hash_len) = cost.rsplit_once('$')?;
    // At most a 64-byte hash (86 characters), argon2's own limit.
    let hash_len = hash_len.parse::<usize>().ok().filter(|n| *n <= 86)?;
    Some(format!("{params}${DUMMY_SALT}${}", "A".repeat(hash_len)))
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
    #[cfg(test)]
    tests::ARGON2_RUNS.with(|n| n.set(n.get() + 1));
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

/// Check a new password against the policy: what is wrong with it, every rule it breaks.
pub(crate) fn check_policy(cfg: &AuthConfig, password: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let mut fail = |m: String| errs.push(m);
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
#[cfg(test)]
fn common_password_count() -> usize {
    COMMON.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    thread_local! {
        /// Argon2 computations run on this thread.
        pub(super) static ARGON2_RUNS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

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
        let costs = vec![p.current_cost.to_string()];
        let verify = async |p: &Passwords, pw: &str, stored: Option<&String>| {
            p.verify(SecretString::from(pw), stored.cloned(), costs.clone())
                .await
                .unwrap()
        };
        assert_eq!(
            verify(&p, "Correct-Horse-9", Some(&h)).await,
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        assert!(!verify(&p, "wrong", Some(&h)).await.ok);
        assert!(!verify(&p, "anything", None).await.ok);
        assert!(
            !verify(&p, "Correct-Horse-9", Some(&"!locked".to_owned()))
                .await
                .ok
        );

        let mut stronger = cfg();
        stronger.argon2_iterations = 2;
        let p2 = Passwords::new(&stronger).unwrap();
        assert_eq!(
            verify(&p2, "Correct-Horse-9", Some(&h)).await,
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
    }

    #[test]
    fn costs_are_computed_as_the_database_does() {
        use crate::ids::{Timestamp, UserId};
        use crate::meta::sqlite::{test_conn, users};
        use crate::meta::users::{NewUser, Role};
        let c = test_conn();
        let p = Passwords::new(&cfg()).unwrap();
        let hashes = [
            p.hash_now("Correct-Horse-9").unwrap(),
            "$argon2i$m=4096,t=3,p=1$c29tZXNhbHQ$q+/Zk1yWQ1I9QTwdP3h3Y+oRQe/n+9cWpY0h9QKo".into(),
            "$ARGON2D$v=16$m=8,t=1,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAA".into(),
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$".into(),
            "$argon2id$dummy".into(),
            "!locked".into(),
            "x".into(),
        ];
        let mut expected = Vec::new();
        for (i, h) in hashes.iter().enumerate() {
            let u = NewUser {
                id: UserId::new(),
                username: format!("user{i}"),
                email: format!("user{i}@example.com"),
                password_hash: h.clone(),
                role: Role::User,
                created_at: Timestamp::now(),
            };
            users::insert(&c, &u).unwrap();
            expected.extend(cost_of(h));
        }
        expected.sort();
        assert_eq!(expected.len(), 4);
        assert_eq!(users::password_costs(&c).unwrap(), expected);
    }

    #[test]
    fn costs_name_the_work_and_dummies_have_it() {
        let p = Passwords::new(&cfg()).unwrap();
        let h = p.hash_now("Correct-Horse-9").unwrap();
        assert_eq!(cost_of(&h).as_deref(), Some(&*p.current_cost));
        assert_eq!(&*p.current_cost, "$argon2id$v=19$m=64,t=1,p=1$43");
        let dummy = dummy_of(&p.current_cost).unwrap();
        assert_eq!(cost_of(&dummy).as_deref(), Some(&*p.current_cost));
        let phc = PasswordHash::new(&dummy).unwrap();
        assert_eq!(Params::try_from(&phc).unwrap().m_cost(), 64);
        assert!(!verify_with_reused_memory(b"", &phc));
        assert_eq!(cost_of("!locked"), None);
        assert_eq!(dummy_of("$argon2id$v=19$m=64,t=1,p=1$9999"), None);
        // Every failure verifies a dummy of each cost its own hash did not cover, whatever
        // the account: the work is one verification per cost in use.
        let other = "$argon2id$v=19$m=128,t=1,p=1$43".to_owned();
        let costs = [p.current_cost.to_string(), other];
        for stored in [
            None,
            Some("!locked"),
            Some(h.as_str()),
            Some(dummy.as_str()),
        ] {
            ARGON2_RUNS.with(|n| n.set(0));
            assert!(!p.verify_now("Wrong-1", stored, &costs).ok);
            assert_eq!(ARGON2_RUNS.with(std::cell::Cell::get), 2, "{stored:?}");
        }
        // No stored hash at all: still one verification.
        ARGON2_RUNS.with(|n| n.set(0));
        assert!(!p.verify_now("Wrong-1", None, &[]).ok);
        assert_eq!(ARGON2_RUNS.with(std::cell::Cell::get), 1);
    }
}
