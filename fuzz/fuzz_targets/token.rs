//! `coffer::auth::jwt::TokenKeys::verify` and `coffer::auth::api_key::prefix_of`.
//!
//! - arbitrary strings never panic and are never accepted;
//! - mutations of a valid token (byte edits, segment swaps, re-encoded headers such as
//!   `alg: none` or `HS512`) are never accepted unless they give back the very same string;
//! - tokens signed with the right key but arbitrary claims are accepted exactly when the
//!   claims are valid (type, issuer, expiry and not-before with 2 s leeway, UUID sub/sid);
//! - `prefix_of` returns exactly the first 12 characters of a well-shaped key.
#![no_main]

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use coffer::auth::api_key::{KEY_TAG, PREFIX_LEN, prefix_of};
use coffer::auth::jwt::{ACCESS, Claims, TokenError, TokenKeys};
use coffer::ids::{SessionId, Timestamp, UserId};
use coffer::secrets::SecretKey;
use libfuzzer_sys::fuzz_target;

const ISSUER: &str = "coffer";
/// A fixed, non-repetitive 32-byte test key (hex), so crashes reproduce.
const SECRET: &str = "8c1f0d3a5b7e9c2d4f6a8b0c1e3d5f7a9b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e";

static KEYS: LazyLock<TokenKeys> = LazyLock::new(|| {
    let secret = SecretKey::parse(SECRET).expect("test secret");
    // Ten years: the valid token must not expire while the fuzzer runs.
    TokenKeys::new(&secret, ISSUER, 10 * 365 * 86_400).expect("keys")
});
static VALID: LazyLock<String> = LazyLock::new(|| {
    let t = KEYS
        .issue(UserId::new(), SessionId::new(), Timestamp::now())
        .expect("issue");
    KEYS.verify(&t).expect("a fresh token verifies");
    t
});

#[derive(Debug, Arbitrary)]
enum Edit {
    Flip {
        at: u16,
        bit: u8,
    },
    Set {
        at: u16,
        byte: u8,
    },
    Insert {
        at: u16,
        byte: u8,
    },
    Remove {
        at: u16,
    },
    Truncate {
        at: u16,
    },
    /// Replace segment `which` (0 header, 1 payload, 2 signature) with base64url of `json`.
    Segment {
        which: u8,
        json: String,
    },
    /// Swap two segments.
    Swap {
        a: u8,
        b: u8,
    },
    /// Append text.
    Append {
        text: String,
    },
}

#[derive(Debug, Arbitrary)]
struct SignedClaims {
    sub_valid: bool,
    sub: String,
    sid_valid: bool,
    sid: String,
    exp: i64,
    exp_relative: bool,
    nbf: i64,
    nbf_relative: bool,
    iat: i64,
    jti: String,
    iss: String,
    iss_ok: bool,
    typ: String,
    typ_ok: bool,
}

#[derive(Debug, Arbitrary)]
enum Input {
    Raw(String),
    Mutate(Vec<Edit>),
    Signed(SignedClaims),
    ApiKey(String),
}

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn mutate(token: &str, edits: &[Edit]) -> Vec<u8> {
    let mut t = token.as_bytes().to_vec();
    for e in edits {
        let pos = |at: u16, n: usize| if n == 0 { 0 } else { usize::from(at) % n };
        match e {
            Edit::Flip { at, bit } => {
                if !t.is_empty() {
                    let i = pos(*at, t.len());
                    t[i] ^= 1 << (bit % 8);
                }
            }
            Edit::Set { at, byte } => {
                if !t.is_empty() {
                    let i = pos(*at, t.len());
                    t[i] = *byte;
                }
            }
            Edit::Insert { at, byte } => {
                let i = pos(*at, t.len() + 1);
                t.insert(i, *byte);
            }
            Edit::Remove { at } => {
                if !t.is_empty() {
                    let i = pos(*at, t.len());
                    t.remove(i);
                }
            }
            Edit::Truncate { at } => t.truncate(pos(*at, t.len() + 1)),
            Edit::Segment { which, json } => {
                let s = String::from_utf8_lossy(&t).into_owned();
                let mut parts: Vec<String> = s.split('.').map(str::to_owned).collect();
                let i = usize::from(*which % 3);
                if i < parts.len() {
                    parts[i] = b64(json.as_bytes());
                }
                t = parts.join(".").into_bytes();
            }
            Edit::Swap { a, b } => {
                let s = String::from_utf8_lossy(&t).into_owned();
                let mut parts: Vec<String> = s.split('.').map(str::to_owned).collect();
                let (a, b) = (usize::from(*a % 3), usize::from(*b % 3));
                if a < parts.len() && b < parts.len() {
                    parts.swap(a, b);
                }
                t = parts.join(".").into_bytes();
            }
            Edit::Append { text } => t.extend_from_slice(text.as_bytes()),
        }
    }
    t
}

fn now() -> i64 {
    Timestamp::now().unix_secs()
}

fn time_ok(exp: i64, nbf: i64, now: i64) -> bool {
    exp >= 0 && nbf >= 0 && exp >= now - 2 && nbf <= now + 2
}

fuzz_target!(|input: Input| {
    let valid: &str = &VALID;
    match input {
        Input::Raw(s) => {
            if let Ok(a) = KEYS.verify(&s) {
                panic!("accepted an arbitrary string {s:?}: {a:?}");
            }
        }
        Input::Mutate(edits) => {
            let bytes = mutate(valid, &edits);
            let s = String::from_utf8_lossy(&bytes);
            if let Ok(a) = KEYS.verify(&s) {
                assert_eq!(
                    &*s, valid,
                    "accepted a mutated token {s:?}: {a:?} (edits {edits:?})"
                );
            }
        }
        Input::Signed(c) => {
            let t0 = now();
            let exp = if c.exp_relative {
                t0.saturating_add(c.exp % 100_000)
            } else {
                c.exp
            };
            let nbf = if c.nbf_relative {
                t0.saturating_add(c.nbf % 100_000)
            } else {
                c.nbf
            };
            let claims = Claims {
                sub: if c.sub_valid {
                    UserId::new().to_string()
                } else {
                    c.sub
                },
                exp,
                iat: c.iat,
                nbf,
                jti: c.jti,
                iss: if c.iss_ok { ISSUER.to_owned() } else { c.iss },
                typ: if c.typ_ok { ACCESS.to_owned() } else { c.typ },
                sid: if c.sid_valid {
                    SessionId::new().to_string()
                } else {
                    c.sid
                },
            };
            let Ok(token) = KEYS.sign(&claims) else {
                return;
            };
            let got = KEYS.verify(&token);
            let t1 = now();
            if time_ok(exp, nbf, t0) != time_ok(exp, nbf, t1) {
                return; // a second ticked over the boundary
            }
            let time = time_ok(exp, nbf, t0);
            let iss = claims.iss == ISSUER;
            let typ = claims.typ == ACCESS;
            let ids =
                UserId::parse(&claims.sub).is_some() && SessionId::parse(&claims.sid).is_some();
            match &got {
                Ok(a) => {
                    assert!(
                        time && iss && typ && ids,
                        "accepted invalid claims {claims:?}"
                    );
                    assert_eq!(a.user.to_string(), claims.sub);
                    assert_eq!(a.session.to_string(), claims.sid);
                    assert_eq!(a.jti, claims.jti);
                }
                Err(TokenError::WrongType) => assert!(time && iss && !typ, "{claims:?} -> {got:?}"),
                Err(TokenError::Expired) => assert!(!time, "{claims:?} -> {got:?}"),
                Err(TokenError::Invalid) => {
                    assert!(
                        !(time && iss && typ && ids),
                        "valid claims refused: {claims:?}"
                    )
                }
            }
            if time && iss && typ && ids {
                assert!(got.is_ok(), "valid claims refused: {claims:?} -> {got:?}");
            }
        }
        Input::ApiKey(k) => {
            if let Some(p) = prefix_of(&k) {
                assert_eq!(p.len(), PREFIX_LEN);
                assert!(k.starts_with(p));
                assert!(p.starts_with(KEY_TAG));
                assert!(k.is_ascii() && k.len() > PREFIX_LEN + 16);
            } else {
                assert!(
                    !k.is_ascii() || k.len() <= PREFIX_LEN + 16 || !k.starts_with(KEY_TAG),
                    "well-shaped key refused: {k:?}"
                );
            }
        }
    }
});
