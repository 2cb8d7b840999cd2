//! Small plain files kept in memory once downloaded: the row (owner, expiry, headers) and the
//! bytes, so a repeat download of a popular attachment is answered without a trip to the
//! blocking pool, the database or the disk (issue 17: that hand-off was most of a 4 KiB
//! download's cost). Every download still verifies its credential, checks it against
//! revocations and the file's owner and expiry, and leaves an audit record.
//!
//! Only plain files that `crypto::read::prefetch_small` read are kept (never a sealed one:
//! the plaintext of an encrypted file lives only as long as its response), at most 64 KiB,
//! from the local store. At most [`MAX_BYTES`] of them in all.
//!
//! Invariant: the cache never serves a file that is gone, deleted on this node or another. A
//! file's deletion is announced like a revocation ([`Revoked::File`]; an account's deletion,
//! which takes its files, is [`Revoked::User`]), on this node before the deleting call
//! returns and on the others as their listener hears it, and drops the entry. While
//! announcements from other nodes may be missed the cache serves nothing; a read that began
//! before a deletion cannot put the file back (it carries the epoch it began at, as the
//! credential cache does). Expiry is checked at every lookup against the row's own
//! `expires_at`. Entries also expire after `auth.principal_cache_secs` (0 disables the cache).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::ids::{FileId, Timestamp, UserId};
use crate::meta::files::StoredFile;
use crate::meta::revocations::{Recent, RevocationSink, Revoked};

/// Bytes of file content held at most (rows are small beside them).
pub(crate) const MAX_BYTES: usize = 8 * 1024 * 1024;
/// Files held at most.
const MAX_ENTRIES: usize = 10_000;

/// A file and its whole content.
#[derive(Debug, Clone)]
pub(crate) struct SmallFile {
    pub(crate) row: StoredFile,
    pub(crate) bytes: Bytes,
}

/// Whether announcement `r` ends the cached `f`.
fn covers(r: Revoked, f: &StoredFile) -> bool {
    match r {
        Revoked::File(id) => f.file.id == id,
        Revoked::User(u) => f.owner_id == u,
        Revoked::Everything => true,
        Revoked::Session(_) | Revoked::ApiKey(_) => false,
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SmallFileStats {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
}

struct Entry {
    file: SmallFile,
    until: Instant,
}

#[derive(Default)]
struct State {
    entries: HashMap<FileId, Entry>,
    bytes: usize,
    /// The last announcements, newest last.
    recent: Recent,
}

impl State {
    fn remove(&mut self, id: &FileId) {
        if let Some(e) = self.entries.remove(id) {
            self.bytes -= e.file.bytes.len();
        }
    }

    fn remove_where(&mut self, gone: impl Fn(&Entry) -> bool) {
        let ids: Vec<FileId> = self
            .entries
            .iter()
            .filter(|(_, e)| gone(e))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.remove(&id);
        }
    }

    /// Make room for `n` more bytes and one more entry: expired entries first, then any.
    fn make_room(&mut self, n: usize, now: Instant) {
        if self.bytes + n <= MAX_BYTES && self.entries.len() < MAX_ENTRIES {
            return;
        }
        self.remove_where(|e| e.until <= now);
        while self.bytes + n > MAX_BYTES || self.entries.len() >= MAX_ENTRIES {
            let Some(id) = self.entries.keys().next().copied() else {
                return;
            };
            self.remove(&id);
        }
    }
}

/// The cache.
pub(crate) struct SmallFiles {
    ttl: Duration,
    /// Whether deletions made elsewhere reach this cache now; without them it serves nothing.
    live: AtomicBool,
    /// Announcements so far; changed only with `state` locked.
    epoch: AtomicU64,
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl SmallFiles {
    /// A cache whose entries live at most `ttl` (zero disables it).
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            live: AtomicBool::new(true),
            epoch: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// File `id` if it is cached, visible in `scope` (its owner, or `None`: every file) and
    /// not expired at `now`. A file outside the scope is a miss: the database answers it.
    pub(crate) fn get(
        &self,
        id: FileId,
        scope: Option<UserId>,
        now: Timestamp,
    ) -> Option<SmallFile> {
        if self.ttl.is_zero() || !self.live.load(Ordering::Acquire) {
            return None;
        }
        let found = self.state.lock().ok().and_then(|mut s| {
            let e = s.entries.get(&id)?;
            let row = &e.file.row;
            if e.until <= Instant::now() || row.file.expires_at.is_some_and(|t| t <= now) {
                s.remove(&id);
                return None;
            }
            if scope.is_some_and(|owner| owner != row.owner_id) {
                return None;
            }
            Some(e.file.clone())
        });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The current epoch: read it *before* reading the row, and hand it to [`SmallFiles::put`],
    /// so a deletion racing the read wins.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keep `file`, read from the database and the store after `epoch` was taken.
    pub(crate) fn put(&self, file: SmallFile, epoch: u64) {
        if self.ttl.is_zero()
            || !self.live.load(Ordering::Acquire)
            || file.bytes.len() > MAX_BYTES / 64
        {
            return;
        }
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let missed = self.epoch.load(Ordering::Acquire).saturating_sub(epoch);
        if s.recent.refuses(missed, |r| covers(r, &file.row)) {
            return;
        }
        let now = Instant::now();
        let id = file.row.file.id;
        s.remove(&id);
        s.make_room(file.bytes.len(), now);
        s.bytes += file.bytes.len();
        s.entries.insert(
            id,
            Entry {
                file,
                until: now + self.ttl,
            },
        );
    }

    /// Forget what `what` covers, and refuse the puts of reads that began before now and
    /// that it covers.
    fn invalidate(&self, what: Revoked) {
        let Ok(mut s) = self.state.lock() else {
            // A poisoned lock: `get` answers nothing any more, so nothing stale is served.
            return;
        };
        self.epoch.fetch_add(1, Ordering::AcqRel);
        s.recent.push(what);
        match what {
            Revoked::File(id) => s.remove(&id),
            Revoked::Session(_) | Revoked::ApiKey(_) => {}
            Revoked::User(_) | Revoked::Everything => s.remove_where(|e| covers(what, &e.file.row)),
        }
    }

    /// Counters for `/metrics`.
    pub(crate) fn stats(&self) -> SmallFileStats {
        let (entries, bytes) = self
            .state
            .lock()
            .map(|s| (s.entries.len() as u64, s.bytes as u64))
            .unwrap_or_default();
        SmallFileStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
            bytes,
        }
    }
}

impl RevocationSink for SmallFiles {
    fn revoked(&self, what: Revoked) {
        self.invalidate(what);
    }

    fn feed(&self, live: bool) {
        if !live {
            self.live.store(false, Ordering::Release);
        }
        // Deletions may have been missed while the feed was down: forget everything, and
        // refuse the puts of reads that began before now.
        self.invalidate(Revoked::Everything);
        if live {
            self.live.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::files::FileObject;

    const MINUTE: Duration = Duration::from_secs(60);

    fn file(owner: UserId, len: usize, expires_at: Option<Timestamp>) -> SmallFile {
        let id = FileId::new();
        SmallFile {
            row: StoredFile {
                file: FileObject {
                    id,
                    filename: "a.txt".into(),
                    content_type: "text/plain".into(),
                    size: len as u64,
                    sha256: String::new(),
                    created_at: Timestamp::now(),
                    expires_at,
                    scanned_at: None,
                    grant_id: None,
                },
                owner_id: owner,
                blob_key: id.to_string(),
                sealing: None,
            },
            bytes: Bytes::from(vec![7u8; len]),
        }
    }

    fn cached(c: &SmallFiles, f: &SmallFile, scope: Option<UserId>) -> bool {
        c.get(f.row.file.id, scope, Timestamp::now()).is_some()
    }

    #[test]
    fn a_file_is_served_to_its_owner_and_to_an_unscoped_reader_only() {
        let c = SmallFiles::new(MINUTE);
        let (owner, other) = (UserId::new(), UserId::new());
        let f = file(owner, 10, None);
        c.put(f.clone(), c.epoch());
        assert!(cached(&c, &f, Some(owner)));
        assert!(cached(&c, &f, None));
        assert!(!cached(&c, &f, Some(other)));
        let stats = c.stats();
        assert_eq!(
            (stats.hits, stats.misses, stats.entries, stats.bytes),
            (2, 1, 1, 10)
        );
    }

    #[test]
    fn deleting_the_file_or_its_owner_drops_it() {
        let c = SmallFiles::new(MINUTE);
        let owner = UserId::new();
        let (a, b, other) = (
            file(owner, 1, None),
            file(owner, 1, None),
            file(UserId::new(), 1, None),
        );
        for f in [&a, &b, &other] {
            c.put(f.clone(), c.epoch());
        }
        c.revoked(Revoked::File(a.row.file.id));
        assert!(!cached(&c, &a, None));
        assert!(cached(&c, &b, None));
        c.revoked(Revoked::Session(crate::ids::SessionId::new()));
        assert!(cached(&c, &b, None), "a logout ends no file");
        c.revoked(Revoked::User(owner));
        assert!(!cached(&c, &b, None));
        assert!(cached(&c, &other, None), "another owner's files stay");
    }

    #[test]
    fn a_read_that_began_before_a_deletion_cannot_put_the_file_back() {
        let c = SmallFiles::new(MINUTE);
        let f = file(UserId::new(), 1, None);
        let before = c.epoch();
        c.revoked(Revoked::File(f.row.file.id));
        c.put(f.clone(), before);
        assert!(!cached(&c, &f, None));
        // Another file's deletion does not stop it, nor does it stop a read begun after.
        let g = file(UserId::new(), 1, None);
        c.put(g.clone(), before);
        assert!(cached(&c, &g, None));
        c.put(f.clone(), c.epoch());
        assert!(cached(&c, &f, None));
    }

    #[test]
    fn a_put_that_missed_too_many_deletions_to_tell_is_refused() {
        let c = SmallFiles::new(MINUTE);
        let f = file(UserId::new(), 1, None);
        let before = c.epoch();
        for _ in 0..=crate::meta::revocations::RECENT {
            c.revoked(Revoked::File(FileId::new()));
        }
        c.put(f.clone(), before);
        assert!(!cached(&c, &f, None));
    }

    #[test]
    fn an_expired_file_is_never_served() {
        let c = SmallFiles::new(MINUTE);
        let past = Timestamp::from_unix_secs(Timestamp::now().unix_secs() - 1);
        let f = file(UserId::new(), 1, Some(past));
        c.put(f.clone(), c.epoch());
        assert!(!cached(&c, &f, None));
        let ttl = SmallFiles::new(Duration::from_millis(1));
        let g = file(UserId::new(), 1, None);
        ttl.put(g.clone(), ttl.epoch());
        std::thread::sleep(Duration::from_millis(5));
        assert!(!cached(&ttl, &g, None));
    }

    #[test]
    fn while_the_feed_is_down_nothing_is_served_and_it_comes_back_empty() {
        let c = SmallFiles::new(MINUTE);
        let f = file(UserId::new(), 1, None);
        c.put(f.clone(), c.epoch());
        c.feed(false);
        assert!(!cached(&c, &f, None));
        c.put(f.clone(), c.epoch());
        c.feed(true);
        assert!(
            !cached(&c, &f, None),
            "what was cached before the feed dropped is gone"
        );
        assert_eq!(c.stats().entries, 0);
    }

    #[test]
    fn the_bytes_stay_within_the_budget() {
        let c = SmallFiles::new(MINUTE);
        let big = MAX_BYTES / 64;
        let files: Vec<SmallFile> = (0..100).map(|_| file(UserId::new(), big, None)).collect();
        for f in &files {
            c.put(f.clone(), c.epoch());
        }
        let s = c.stats();
        assert!(s.bytes as usize <= MAX_BYTES, "{} bytes held", s.bytes);
        assert_eq!(s.entries, 64);
        // Too large for the cache at all.
        let huge = file(UserId::new(), big + 1, None);
        c.put(huge.clone(), c.epoch());
        assert!(!cached(&c, &huge, None));
        assert!(c.stats().bytes as usize <= MAX_BYTES);
    }

    #[test]
    fn a_zero_ttl_disables_it() {
        let c = SmallFiles::new(Duration::ZERO);
        let f = file(UserId::new(), 1, None);
        c.put(f.clone(), c.epoch());
        assert!(!cached(&c, &f, None));
    }
}
