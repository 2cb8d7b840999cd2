//! The audit trail: an append-only, hash-chained record of security events.
//!
//! Invariant: entry `n` stores `HMAC-SHA256(K, hash(n-1) || encode(entry n))`, the first entry
//! chains from the anchor (all zeros, or the last entry removed by retention). `K` is derived
//! from `COFFER_SECRET_KEY`, which never touches the disk, so someone who can write the
//! database but does not hold the secret cannot forge or re-chain entries: editing, inserting
//! or deleting any entry breaks the chain from that point, which [`Audit::verify_chain`]
//! reports. Cutting entries off the *end* would leave a shorter valid chain, so every append
//! also moves the [`Head`] in the same transaction: the newest link, sealed with `K`. Whoever
//! deletes the newest entries must put back the head of an older link, whose seal was never
//! stored but in the row it overwrote, and cannot make a new one: the cut shows, and stays
//! visible, because an append moves the head only from a head it verifies at the stored tail
//! (otherwise it leaves it for `coffer check` to report), and chains past a gap the head
//! vouches for. Only an operator re-seals a head (`coffer check --repair`, after the report),
//! or a server that has just added heads to an older store itself. (Someone who kept a copy
//! of an older head row can still replay it together with a cut: ship the log elsewhere too.)
//! Appends are serialised by each engine, so there is one chain however many writers
//! (processes, nodes) append. No route updates or deletes entries; only retention trims the
//! oldest, moving the anchor.
//!
//! Each entry also records the fingerprint of the key that chained it ([`ChainKey::fingerprint`],
//! one-way: it names the key without revealing it), so the chain survives a change of the
//! service secret: entries are verified with the key that signed them, and an entry signed
//! with a key that is not given is reported as such, not as tampering. (The fingerprint is not
//! under the HMAC: relabelling an entry makes it unverifiable or wrong, never valid.) Entries
//! written before fingerprints were recorded have none and are tried with every key given.

use std::sync::Arc;

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
    /// The fingerprint of the key that chained it (`None`: written before they were kept).
    pub key_id: Option<String>,
}

/// The key that chains the trail (derived from the service secret).
#[derive(Clone)]
pub struct ChainKey(pub [u8; 32]);

impl ChainKey {
    /// A short public name for the key: 16 hex digits of HMAC-SHA256(key, label). It tells
    /// keys apart without revealing anything about them.
    pub fn fingerprint(&self) -> String {
        let mut mac = self.mac();
        mac.update(b"coffer/audit-key-fingerprint/v1");
        let tag = mac.finalize().into_bytes();
        hex::encode(tag.get(..8).unwrap_or_default())
    }

    /// HMAC-SHA256 keyed with this key, ready for input.
    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
    }
}

/// The keys `coffer check` may verify entries with: the current one and earlier ones.
#[derive(Clone)]
pub struct ChainKeys(Vec<(String, ChainKey)>);

impl ChainKeys {
    /// The current key first, then older ones.
    pub fn new(keys: impl IntoIterator<Item = ChainKey>) -> Self {
        Self(keys.into_iter().map(|k| (k.fingerprint(), k)).collect())
    }

    fn by_id(&self, id: &str) -> Option<&ChainKey> {
        self.0.iter().find(|(f, _)| f == id).map(|(_, k)| k)
    }

    /// The key new entries are chained with (the first given).
    pub fn current(&self) -> Option<&ChainKey> {
        self.0.first().map(|(_, k)| k)
    }

    /// Whether the key with this fingerprint is among them.
    pub fn has(&self, id: &str) -> bool {
        self.by_id(id).is_some()
    }
}

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

/// The newest link of the chain, sealed with the key that chained it (see the module
/// comment). Written by every append, in its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The newest entry's position and hash.
    pub link: Link,
    /// The fingerprint of the key that sealed it.
    pub key_id: String,
    /// `HMAC-SHA256(K, label || seq || hash)`.
    pub seal: Vec<u8>,
}

impl Head {
    /// The head at `link`, sealed with `key`.
    pub fn sealed(key: &ChainKey, link: Link) -> Self {
        let seal = head_seal(key, &link).to_vec();
        Self {
            link,
            key_id: key.fingerprint(),
            seal,
        }
    }

    /// The placeholder the schema's migration leaves in a store with a trail (it has no key
    /// to seal one): sealed by the server that migrated, or by `coffer check --repair`.
    pub fn is_pending(&self) -> bool {
        self.link.seq < 0
    }

    /// Whether `keys` vouch for this head.
    pub fn verify(&self, keys: &ChainKeys) -> HeadSeal {
        if self.is_pending() {
            return HeadSeal::Pending;
        }
        match keys.by_id(&self.key_id) {
            None => HeadSeal::UnknownKey,
            Some(k) if head_seal(k, &self.link)[..] == self.seal[..] => HeadSeal::Valid,
            Some(_) => HeadSeal::Altered,
        }
    }
}

/// What a head's seal says, checked with the keys given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadSeal {
    /// Sealed by a key given, and intact.
    Valid,
    /// Sealed by a key not given: cannot be told.
    UnknownKey,
    /// Sealed by a key given, but not this link: edited.
    Altered,
    /// The migration's placeholder.
    Pending,
}

/// Which unsealed head [`Audit::seal_head`] may seal at the stored tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsealed {
    /// The placeholder that this process's own migration to chain heads left (start-up).
    Migrated,
    /// After `coffer check` reported it: a head that is missing, the placeholder, or one
    /// sealed with a key not given. Never a head that is intact and says something else
    /// (a cut, a replaced entry): that is evidence, and stays reported.
    Repair,
}

/// Where an append chains from, and whether it moves the head. Only a head that `keys`
/// verify moves: ahead of the stored tail (entries were cut off the end) the chain goes on
/// from it, past the gap, which stays visible; at the tail, or behind it on the stored chain
/// (`at_head` is the stored hash at the head's position: entries were added by something
/// that did not move the head, or while this node could not verify it), it moves to the new
/// tail. Any other head (missing from a store with a trail, pending, unverifiable, altered,
/// or naming an entry that is not stored) stays as it is for `coffer check` to report; a
/// fresh store's first append makes the first head.
pub fn append_tail(
    stored: Link,
    head: Option<&Head>,
    at_head: Option<&[u8]>,
    keys: &ChainKeys,
) -> (Link, bool) {
    match head {
        None => {
            let fresh = stored.seq == 0;
            (stored, fresh)
        }
        Some(h) if h.verify(keys) == HeadSeal::Valid => {
            if h.link.seq > stored.seq {
                (h.link.clone(), true)
            } else {
                let on_chain = at_head == Some(h.link.hash.as_slice());
                (stored, on_chain)
            }
        }
        Some(_) => (stored, false),
    }
}

/// Whether [`Audit::seal_head`] seals over `head` for `which` (the engine also checks, for
/// [`Unsealed::Migrated`], that it ran that migration).
pub fn seals(head: Option<&Head>, stored: &Link, which: Unsealed, keys: &ChainKeys) -> bool {
    if stored.seq <= 0 {
        return false;
    }
    match (which, head.map(|h| h.verify(keys))) {
        (Unsealed::Migrated, state) => state == Some(HeadSeal::Pending),
        (Unsealed::Repair, state) => {
            matches!(state, None | Some(HeadSeal::Pending | HeadSeal::UnknownKey))
        }
    }
}

fn head_seal(key: &ChainKey, link: &Link) -> [u8; 32] {
    let mut mac = key.mac();
    mac.update(b"coffer/audit-head/v1");
    mac.update(&link.seq.to_be_bytes());
    mac.update(&link.hash);
    mac.finalize().into_bytes().into()
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
    link_hash(key.mac(), prev, seq, e, detail)
}

/// [`chain_hash`] with the key already set up (`mac`, from [`ChainKey::mac`]): a batch keys
/// HMAC once and clones it for each entry.
fn link_hash(
    mut mac: Hmac<Sha256>,
    prev: &[u8],
    seq: i64,
    e: &AuditEntry,
    detail: &str,
) -> [u8; 32] {
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
    mac.update(&buf);
    mac.finalize().into_bytes().into()
}

/// An entry about to be appended: its place in the chain, stored detail and hash (the entry
/// itself borrowed, so a batch is chained without copying it).
pub struct Chained<'e> {
    /// Position in the chain.
    pub seq: i64,
    /// The entry.
    pub entry: &'e AuditEntry,
    /// Its chain hash.
    pub hash: [u8; 32],
    /// The detail exactly as it will be stored (what the hash covers).
    pub detail_raw: String,
}

/// Chain `entries` after `tail`: each with its sequence number, stored detail and hash.
pub fn chain<'e>(key: &ChainKey, tail: Link, entries: &'e [AuditEntry]) -> Vec<Chained<'e>> {
    let Link { mut seq, hash } = tail;
    let mac = key.mac();
    let mut prev = hash;
    entries
        .iter()
        .map(|e| {
            seq += 1;
            let detail = e.detail.to_string();
            let hash = link_hash(mac.clone(), &prev, seq, e, &detail);
            prev.clear();
            prev.extend_from_slice(&hash);
            Chained {
                seq,
                entry: e,
                hash,
                detail_raw: detail,
            }
        })
        .collect()
}

/// Checks stored entries, in order, against the chain; each problem is one line.
pub struct ChainCheck<'k> {
    keys: &'k ChainKeys,
    expect: i64,
    prev: Vec<u8>,
    /// A run of entries signed with a key not given: `(fingerprint, first seq, last seq)`.
    unknown: Option<(String, i64, i64)>,
    /// The position whose hash the head names, and that hash once it was walked past.
    watch: Option<(i64, Option<Vec<u8>>)>,
    /// What is wrong so far.
    pub problems: Vec<String>,
}

impl<'k> ChainCheck<'k> {
    /// Start at the anchor.
    pub fn new(keys: &'k ChainKeys, anchor: Link) -> Self {
        Self {
            keys,
            expect: anchor.seq,
            prev: anchor.hash,
            unknown: None,
            watch: None,
            problems: Vec::new(),
        }
    }

    /// Note the hash at `head`'s position while walking (the anchor's, when it is there).
    pub fn watching(mut self, head: Option<&Head>) -> Self {
        if let Some(h) = head.filter(|h| !h.is_pending()) {
            let at_anchor = (h.link.seq == self.expect).then(|| self.prev.clone());
            self.watch = Some((h.link.seq, at_anchor));
        }
        self
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
        if let Some((seq, seen)) = &mut self.watch
            && *seq == e.seq
        {
            *seen = Some(e.hash.clone());
        }
        let prev = std::mem::take(&mut self.prev);
        let hash_with = |k: &ChainKey| chain_hash(k, &prev, e.seq, &e.entry, &e.detail_raw);
        let keys = self.keys;
        match e.key_id.as_deref() {
            Some(id) => match keys.by_id(id) {
                Some(k) => {
                    self.end_unknown_run();
                    if hash_with(k)[..] != e.hash[..] {
                        self.problems.push(format!(
                            "audit chain broken: entry {} ({}) was altered",
                            e.seq, e.entry.id
                        ));
                    }
                }
                None => match &mut self.unknown {
                    Some((run_id, _, last)) if run_id == id => *last = e.seq,
                    _ => {
                        self.end_unknown_run();
                        self.unknown = Some((id.to_owned(), e.seq, e.seq));
                    }
                },
            },
            None => {
                self.end_unknown_run();
                if !keys.0.iter().any(|(_, k)| hash_with(k)[..] == e.hash[..]) {
                    self.problems.push(format!(
                        "audit chain broken: entry {} ({}) was altered, or was signed with a \
                         secret not given (it predates key fingerprints; earlier secrets go in \
                         COFFER_SECRET_OLD_KEYS)",
                        e.seq, e.entry.id
                    ));
                }
            }
        }
        self.prev = e.hash;
    }

    /// Report the run of entries signed with a key not given, if one is open.
    fn end_unknown_run(&mut self) {
        if let Some((id, first, last)) = self.unknown.take() {
            let which = if first == last {
                format!("entry {first}")
            } else {
                format!("entries {first} to {last}")
            };
            self.problems.push(format!(
                "audit chain: {which} signed with another key (fingerprint {id}), not given, so \
                 not verified; not a sign of tampering by itself. Give that earlier \
                 COFFER_SECRET_KEY in COFFER_SECRET_OLD_KEYS to verify them"
            ));
        }
    }

    /// Every problem, once the last entry was seen. `before` is the head read before the walk
    /// began (pass it to [`ChainCheck::watching`] too), `after` the head read once it ended:
    /// entries past `before` are fine when appends made meanwhile moved the head past them.
    pub fn finish(mut self, before: Option<&Head>, after: Option<&Head>) -> Vec<String> {
        self.end_unknown_run();
        let last = self.expect;
        let Some(head) = before else {
            if last > 0 {
                self.problems.push(format!(
                    "audit chain head missing: entries after {last} may have been removed \
                     (once this is looked into, `coffer check --repair` seals a new head)"
                ));
            }
            return self.problems;
        };
        match head.verify(self.keys) {
            HeadSeal::Pending => self.problems.push(
                "audit chain head not sealed yet (the store was migrated to chain heads by a \
                 process that did not seal it; `coffer check --repair` does)"
                    .to_owned(),
            ),
            HeadSeal::UnknownKey => self.problems.push(format!(
                "audit chain head sealed with another key (fingerprint {}), not given, so not \
                 verified: give that earlier COFFER_SECRET_KEY in COFFER_SECRET_OLD_KEYS",
                head.key_id
            )),
            HeadSeal::Altered => self
                .problems
                .push("audit chain head was altered".to_owned()),
            HeadSeal::Valid => {
                let seq = head.link.seq;
                let seen = self.watch.take().and_then(|(_, seen)| seen);
                if seq > last {
                    self.problems.push(format!(
                        "audit chain cut short: entries {} to {seq} were removed",
                        last + 1
                    ));
                } else if seen.as_ref() != Some(&head.link.hash) {
                    self.problems.push(format!(
                        "audit chain head does not match entry {seq}: the newest entries were \
                         replaced"
                    ));
                } else if seq < last {
                    let moved_past = after.is_some_and(|a| {
                        a.verify(self.keys) == HeadSeal::Valid && a.link.seq >= last
                    });
                    if !moved_past {
                        self.problems.push(format!(
                            "audit chain: entries {} to {last} were written without moving its \
                             head: by a coffer that could not verify the head (its secret \
                             changed without the earlier one in COFFER_SECRET_OLD_KEYS; a \
                             server given it moves the head on), or not by coffer",
                            seq + 1
                        ));
                    }
                }
            }
        }
        self.problems
    }
}

/// The `audit` table and its anchor.
#[async_trait]
pub trait Audit: Send + Sync {
    /// Append entries in order, chained with the current of `keys` from the tail read in the
    /// same (serialised) transaction, so concurrent writers cannot fork the chain; the head
    /// moves as [`append_tail`] says (`keys`, the current and earlier ones, verify it).
    /// (Shared, so a caller that retries keeps the batch without copying it.)
    async fn append_with(
        &self,
        keys: &ChainKeys,
        entries: Arc<[AuditEntry]>,
    ) -> Result<(), MetaError>;

    /// [`Audit::append_with`] when `key` is the only key there ever was.
    async fn append(&self, key: &ChainKey, entries: Vec<AuditEntry>) -> Result<(), MetaError> {
        self.append_with(&ChainKeys::new([ChainKey(key.0)]), entries.into())
            .await
    }

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

    /// The sealed newest link, if one was written.
    async fn head(&self) -> Result<Option<Head>, MetaError>;

    /// Seal the newest stored link as the head with the current of `keys`, if `which` allows
    /// over what is there (see [`Unsealed`]); `true` when one was written.
    async fn seal_head(&self, keys: &ChainKeys, which: Unsealed) -> Result<bool, MetaError>;

    /// Entries in chain order after `after_seq`, at most `limit`.
    async fn chain_page(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<ChainedEntry>, MetaError>;

    /// The fingerprint of the key that signed the newest entry, and whether it is one of
    /// `keys` (an entry from before fingerprints is tried with each). `None` when empty.
    async fn tail_key(&self, keys: &ChainKeys) -> Result<Option<(String, bool)>, MetaError> {
        let newest = self.list(None, 2).await?.items;
        let mut newest = newest.into_iter();
        let Some(last) = newest.next() else {
            return Ok(None);
        };
        if let Some(id) = last.key_id.clone() {
            let known = keys.has(&id);
            return Ok(Some((id, known)));
        }
        let prev = match newest.next() {
            Some(p) => p.hash,
            None => self.anchor().await?.hash,
        };
        let known = keys.0.iter().find(|(_, k)| {
            chain_hash(k, &prev, last.seq, &last.entry, &last.detail_raw)[..] == last.hash[..]
        });
        Ok(Some(match known {
            Some((id, _)) => (id.clone(), true),
            None => ("unknown (written before fingerprints)".to_owned(), false),
        }))
    }

    /// Walk the whole chain with one key; each problem is one line.
    async fn verify_chain(&self, key: &ChainKey) -> Result<Vec<String>, MetaError> {
        self.verify_chain_with(&ChainKeys::new([ChainKey(key.0)]))
            .await
    }

    /// Walk the whole chain, each entry checked with the key that signed it; each problem is
    /// one line.
    async fn verify_chain_with(&self, keys: &ChainKeys) -> Result<Vec<String>, MetaError> {
        const PAGE: usize = 1000;
        // The head first: appends made while the chain is walked only move it further.
        let before = self.head().await?;
        let anchor = self.anchor().await?;
        let mut after = anchor.seq;
        let mut check = ChainCheck::new(keys, anchor).watching(before.as_ref());
        loop {
            let page = self.chain_page(after, PAGE).await?;
            let full = page.len() == PAGE;
            for e in page {
                after = e.seq;
                check.next(e);
            }
            if !full {
                let after = self.head().await?;
                return Ok(check.finish(before.as_ref(), after.as_ref()));
            }
        }
    }
}
