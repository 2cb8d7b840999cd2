//! Password hashing (argon2id, PHC strings) and the password policy.
//!
//! Invariant: hashing and verification run on blocking threads behind a semaphore sized to the
//! cores, so a login storm queues instead of starving other requests. Unknown users are
//! verified against a dummy hash, so their answer takes as long as a wrong password's.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::blocking;
use crate::config::AuthConfig;
use crate::error::FieldError;

/// The bundled list of common passwords (lower case, most common first).
static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../../data/common-passwords.txt")
        .lines()
        .map(str::trim)
        .collect()
});

/// Argon2 failed (never because of a wrong password: that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// The password hasher.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
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
    /// Build from config; computes the dummy hash once.
    pub fn new(cfg: &AuthConfig) -> Result<Self, HashError> {
        let params = Params::new(
            cfg.argon2_memory_kib,
            cfg.argon2_iterations,
            cfg.argon2_parallelism,
            None,
        )
        .map_err(|e| HashError(e.to_string()))?;
        let permits = match cfg.hash_concurrency {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let mut this = Self {
            params,
            permits: Arc::new(Semaphore::new(permits)),
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
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| HashError(e.to_string()))?;
        let this = self.clone();
        blocking::run(move || this.hash_now(password.expose_secret()))
            .await
            .map_err(|e| HashError(e.to_string()))?
    }

    /// Verify against `stored`, or against the dummy hash when there is no user (`None`), in
    /// which case the answer is always `ok: false` after the same amount of work.
    pub async fn verify(
        &self,
        password: SecretString,
        stored: Option<String>,
    ) -> Result<Verified, HashError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| HashError(e.to_string()))?;
        let this = self.clone();
        blocking::run(move || {
            let real = stored.is_some();
            let phc_text = stored.unwrap_or_else(|| this.dummy.to_string());
            let Ok(phc) = PasswordHash::new(&phc_text) else {
                return Verified {
                    ok: false,
                    needs_rehash: false,
                };
            };
            let ok = this
                .argon2()
                .verify_password(password.expose_secret().as_bytes(), &phc)
                .is_ok()
                && real;
            let current = phc.algorithm.as_str() == "argon2id"
                && Params::try_from(&phc).is_ok_and(|p| {
                    p.m_cost() == this.params.m_cost()
                        && p.t_cost() == this.params.t_cost()
                        && p.p_cost() == this.params.p_cost()
                });
            Verified {
                ok,
                needs_rehash: ok && !current,
            }
        })
        .await
        .map_err(|e| HashError(e.to_string()))
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

/// How many common passwords are bundled (for tests and `coffer check`).
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
