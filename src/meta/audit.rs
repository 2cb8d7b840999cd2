//! The audit trail: an append-only, hash-chained record of security events.
//!
//! Invariant: entry `n` stores `HMAC-SHA256(K, hash(n-1) || encode(entry n))`, the first entry
//! chains from the anchor (all zeros, or the last entry removed by retention). `K` is derived
//! from `COFFER_SECRET_KEY`, which never touches the disk, so someone who can write the
//! database but does not hold the secret cannot forge or re-chain entries: editing, inserting
//! or deleting any entry breaks the chain from that point, which [`Audit::verify_chain`]
//! reports. (Cutting entries off the *end* leaves a shorter valid chain; ship the log
//! elsewhere too.) Appends are serialised by each engine, so there is one chain however many
//! writers (processes, nodes) append. No route updates or deletes entries; only retention
//! trims the oldest, moving the anchor.

use async_trait::async_trait;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use utoipa::ToSchema;

use crate::ids::Timestamp;
use crate::meta::error::MetaError;
use crate::meta::page::Page;

/// One audit entry as clients see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Entry id.
    #[schema(value_type = String, format = Uuid)]
    pub id: uuid::Uuid,
    /// When it happened.
    pub at: Timestamp,
    /// What happened (`auth.login`, `file.upload`, ...).
    pub event: String,
    /// Who did it, when known.
    pub actor_id: Option<String>,
    /// What it was done to (a user, file, link or key id).
    pub subject_id: Option<String>,
    /// The client address.
    pub client_ip: Option<String>,
    /// Event-specific facts (never a password, token or key).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// An entry with its chain position, as stored.
#[derive(Debug, Clone)]
pub struct ChainedEntry {
    /// Position in the chain.
    pub seq: i64,
    /// The entry.
    pub entry: AuditEntry,
    /// Its chain hash.
    pub hash: Vec<u8>,
    /// The detail exactly as stored (what the hash covers).
    pub detail_raw: String,
}

/// The key that chains the trail (derived from the service secret).
pub struct ChainKey(pub [u8; 32]);

/// A chain position: the sequence number and hash the next entry chains from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The last sequence number (0 before the first entry).
    pub seq: i64,
    /// Its hash (all zeros before the first entry).
    pub hash: Vec<u8>,
}

impl Link {
    /// Where an empty trail starts.
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: vec![0; 32],
        }
    }
}

fn put_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            buf.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
        None => buf.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
}

/// The chain hash of an entry at `seq` following `prev`; `detail` is the stored JSON text.
pub fn chain_hash(key: &ChainKey, prev: &[u8], seq: i64, e: &AuditEntry, detail: &str) -> [u8; 32] {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(prev);
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(e.id.as_bytes());
    buf.extend_from_slice(&e.at.0.to_be_bytes());
    put_str(&mut buf, Some(&e.event));
    put_str(&mut buf, e.actor_id.as_deref());
    put_str(&mut buf, e.subject_id.as_deref());
    put_str(&mut buf, e.client_ip.as_deref());
    put_str(&mut buf, Some(detail));
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key.0)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(&buf);
    mac.finalize().into_bytes().into()
}

/// Chain `entries` after `tail`: each with its sequence number, stored detail and hash.
pub fn chain(key: &ChainKey, tail: Link, entries: &[AuditEntry]) -> Vec<ChainedEntry> {
    let Link { mut seq, hash } = tail;
    let mut prev = hash;
    entries
        .iter()
        .map(|e| {
            seq += 1;
            let detail = e.detail.to_string();
            let hash = chain_hash(key, &prev, seq, e, &detail).to_vec();
            prev.clone_from(&hash);
            ChainedEntry {
                seq,
                entry: e.clone(),
                hash,
                detail_raw: detail,
            }
        })
        .collect()
}

/// Checks stored entries, in order, against the chain; each problem is one line.
pub struct ChainCheck<'k> {
    key: &'k ChainKey,
    expect: i64,
    prev: Vec<u8>,
    /// What is wrong so far.
    pub problems: Vec<String>,
}

impl<'k> ChainCheck<'k> {
    /// Start at the anchor.
    pub fn new(key: &'k ChainKey, anchor: Link) -> Self {
        Self {
            key,
            expect: anchor.seq,
            prev: anchor.hash,
            problems: Vec::new(),
        }
    }

    /// The next stored entry.
    pub fn next(&mut self, e: ChainedEntry) {
        self.expect += 1;
        if e.seq != self.expect {
            self.problems.push(format!(
                "audit chain broken: entry {} missing (next present is {})",
                self.expect, e.seq
            ));
            self.expect = e.seq;
        }
        let want = chain_hash(self.key, &self.prev, e.seq, &e.entry, &e.detail_raw);
        if want[..] != e.hash[..] {
            self.problems.push(format!(
                "audit chain broken: entry {} ({}) was altered",
                e.seq, e.entry.id
            ));
        }
        self.prev = e.hash;
    }
}

/// The `audit` table and its anchor.
#[async_trait]
pub trait Audit: Send + Sync {
    /// Append entries in order, chained from the current tail read in the same (serialised)
    /// transaction, so concurrent writers cannot fork the chain.
    async fn append(&self, key: &ChainKey, entries: Vec<AuditEntry>) -> Result<(), MetaError>;

    /// Newest first, before the `seq` cursor.
    async fn list(
        &self,
        before_seq: Option<i64>,
        limit: usize,
    ) -> Result<Page<ChainedEntry>, MetaError>;

    /// Remove entries older than `cutoff`, moving the anchor to the last one removed.
    async fn prune(&self, cutoff: Timestamp) -> Result<usize, MetaError>;

    /// Where the stored chain starts.
    async fn anchor(&self) -> Result<Link, MetaError>;

    /// Entries in chain order after `after_seq`, at most `limit`.
    async fn chain_page(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChainedEntry>, MetaError>;

    /// Walk the whole chain; each problem is one line.
    async fn verify_chain(&self, key: &ChainKey) -> Result<Vec<String>, MetaError> {
        const PAGE: usize = 1000;
        let anchor = self.anchor().await?;
        let mut after = anchor.seq;
        let mut check = ChainCheck::new(key, anchor);
        loop {
            let page = self.chain_page(after, PAGE).await?;
            let full = page.len() == PAGE;
            for e in page {
                after = e.seq;
                check.next(e);
            }
            if !full {
                return Ok(check.problems);
            }
        }
    }
}
