//! Revocations as the engines announce them: what a committed change ended ([`Revoked`]), told
//! to every credential cache of every node.
//!
//! Every engine method that revokes (logout, refresh-token reuse, API-key deletion, account
//! lock and deletion, role change) publishes what it revoked through its [`Hub`] once it has
//! committed, before it returns: the caches of this process drop it synchronously, so the
//! caller's next request already misses. On PostgreSQL the same method also sends it to the
//! other nodes with `NOTIFY` inside its transaction (delivered on commit only, never for a
//! rolled-back change); each node listens on a connection of its own and publishes what it
//! hears (`postgres::listener`).
//!
//! "At once" on the other nodes: the committing node does not return until every other node
//! listening has confirmed that its caches dropped the announcement ([`Hub::echo`]: each
//! listener acknowledges what it applied, and the committing node waits for as many
//! acknowledgements as other listeners are connected), so the caller's next request,
//! wherever it lands, finds the entry gone. The wait is bounded ([`ECHO_WAIT`]): a node that
//! does not confirm in time is one whose listener is failing, and it soon serves nothing from
//! memory; the revocation is in the database either way.
//!
//! Invariant: a sink serves from memory only while its feed is live. A node that may have
//! missed an announcement (its listener lost its connection, the database restarted) tells
//! its sinks the feed is down, and when it is live again, that everything may have been
//! revoked meanwhile.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::ids::{ApiKeyId, FileId, SessionId, UserId};

/// What a revocation ended, as precisely as the engine knows. Small and `Copy`, and spelled
/// as a short text ([`Revoked::encode`]) to travel to other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// One login (logout, refresh-token reuse): every access token that carries its id.
    Session(SessionId),
    /// One API key (deletion).
    ApiKey(ApiKeyId),
    /// Every credential of one user (account lock or deletion, role change), and with a
    /// deletion every file of theirs.
    User(UserId),
    /// One file (deleted): what is cached of it goes (`small_files`). Ends no credential.
    File(FileId),
    /// Everything (what was revoked is not known: announcements may have been missed).
    Everything,
}

impl Revoked {
    /// `s:<uuid>`, `k:<uuid>`, `u:<uuid>`, `f:<uuid>` or `*`.
    pub fn encode(self) -> String {
        match self {
            Self::Session(id) => format!("s:{id}"),
            Self::ApiKey(id) => format!("k:{id}"),
            Self::User(id) => format!("u:{id}"),
            Self::File(id) => format!("f:{id}"),
            Self::Everything => "*".into(),
        }
    }

    /// The inverse of [`Revoked::encode`]; anything else is `None`.
    pub fn decode(s: &str) -> Option<Self> {
        if s == "*" {
            return Some(Self::Everything);
        }
        let (kind, id) = s.split_once(':')?;
        let id = uuid::Uuid::parse_str(id).ok()?;
        match kind {
            "s" => Some(Self::Session(SessionId(id))),
            "k" => Some(Self::ApiKey(ApiKeyId(id))),
            "u" => Some(Self::User(UserId(id))),
            "f" => Some(Self::File(FileId(id))),
            _ => None,
        }
    }
}

/// Revocations a cache remembers for reads in flight. A read takes one database trip; a put
/// that missed more revocations than this is refused, which is always safe.
pub const RECENT: usize = 1024;

/// The last [`RECENT`] revocations a cache applied, newest last, kept under the cache's own
/// lock beside its entries. With the cache's epoch (how many it applied so far) it decides
/// whether a value read at an earlier epoch may still be put: not when a revocation made
/// since covers it, nor when too many were made since to tell.
#[derive(Debug, Default)]
pub struct Recent(VecDeque<Revoked>);

impl Recent {
    /// Remember `what` (the cache's epoch moves by one with it).
    pub fn push(&mut self, what: Revoked) {
        if self.0.len() >= RECENT {
            self.0.pop_front();
        }
        self.0.push_back(what);
    }

    /// Whether a value read `missed` revocations ago must not be put: one of them `covers`
    /// it, or there were more than are remembered.
    pub fn refuses(&self, missed: u64, covers: impl Fn(Revoked) -> bool) -> bool {
        let Ok(missed) = usize::try_from(missed) else {
            return true;
        };
        missed > self.0.len() || self.0.iter().rev().take(missed).any(|r| covers(*r))
    }
}

/// What a credential cache does with announcements. Called synchronously, so it must be quick
/// and must not block on I/O.
pub trait RevocationSink: Send + Sync {
    /// Drop what `what` covers.
    fn revoked(&self, what: Revoked);
    /// The feed went down (`false`: serve nothing from memory) or came back (`true`: drop
    /// everything first, announcements may have been missed meanwhile).
    fn feed(&self, live: bool);
}

/// One process's announcements: who listens, and whether the feed from the other nodes is
/// live. Cheap to clone.
#[derive(Clone)]
pub struct Hub(Arc<HubInner>);

/// The longest a revoking call waits for the other nodes to confirm its announcement. A node
/// that cannot confirm has dropped everything from memory by then: its listener's heartbeat
/// (`postgres::listener`) notices a silent connection in less than this.
pub const ECHO_WAIT: Duration = Duration::from_secs(2);

struct HubInner {
    node: String,
    /// Announcements of this node in flight, by id: the nodes that confirmed each so far.
    echoes: Mutex<HashMap<u64, watch::Sender<HashSet<String>>>>,
    next_echo: AtomicU64,
    /// Whether announcements from other nodes arrive (always, with one node).
    live: RwLock<bool>,
    sinks: RwLock<Vec<Arc<dyn RevocationSink>>>,
    /// Woken when events were committed (here, or on another node: PostgreSQL `NOTIFY`), so
    /// the delivery worker sends them at once.
    outbox: Arc<tokio::sync::Notify>,
}

impl Hub {
    /// A hub for this process; `live` says whether the feed starts live (one node: it is).
    pub fn new(live: bool) -> Self {
        Self(Arc::new(HubInner {
            node: new_node_id(),
            echoes: Mutex::new(HashMap::new()),
            next_echo: AtomicU64::new(1),
            live: RwLock::new(live),
            sinks: RwLock::new(Vec::new()),
            outbox: Arc::new(tokio::sync::Notify::new()),
        }))
    }

    /// What wakes the delivery worker when events were committed.
    pub fn outbox(&self) -> Arc<tokio::sync::Notify> {
        self.0.outbox.clone()
    }

    /// Events were committed: wake the delivery worker.
    pub fn events_committed(&self) {
        self.0.outbox.notify_one();
    }

    /// This process's id among the nodes (announcements it sent itself are not applied
    /// twice; reservations and leases name their holder with it).
    pub fn node(&self) -> &str {
        &self.0.node
    }

    /// Whether announcements from the other nodes arrive now.
    pub fn is_live(&self) -> bool {
        self.0.live.read().map(|l| *l).unwrap_or(false)
    }

    /// A fresh announcement of this node, to be awaited ([`Echo::confirmed`]) once its
    /// transaction committed. Its [`Echo::origin`] begins the notification's payload.
    /// Confirmations that arrive before the wait begins are kept.
    pub fn echo(&self) -> Echo {
        let id = self.0.next_echo.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(HashSet::new());
        if let Ok(mut e) = self.0.echoes.lock() {
            e.insert(id, tx);
        }
        Echo {
            hub: self.clone(),
            id,
            rx,
        }
    }

    /// Node `by` applied this node's announcement `id` (its listener said so).
    pub fn confirmed(&self, id: u64, by: &str) {
        if let Ok(e) = self.0.echoes.lock()
            && let Some(tx) = e.get(&id)
        {
            tx.send_modify(|nodes| {
                nodes.insert(by.to_owned());
            });
        }
    }

    /// Add a sink; it learns at once whether the feed is live.
    pub fn subscribe(&self, sink: Arc<dyn RevocationSink>) {
        // Under the `live` lock, so a change of the feed cannot slip between the two.
        let live = self.0.live.read().map(|l| *l).unwrap_or(false);
        sink.feed(live);
        if let Ok(mut sinks) = self.0.sinks.write() {
            sinks.push(sink);
        }
    }

    /// Tell every sink of this process that `what` was revoked (after the commit).
    pub fn publish(&self, what: Revoked) {
        for s in self.sinks() {
            s.revoked(what);
        }
    }

    /// The feed went down or came back (see [`RevocationSink::feed`]).
    pub fn set_live(&self, live: bool) {
        if let Ok(mut l) = self.0.live.write() {
            *l = live;
        }
        for s in self.sinks() {
            s.feed(live);
        }
    }

    fn sinks(&self) -> Vec<Arc<dyn RevocationSink>> {
        self.0.sinks.read().map(|s| s.clone()).unwrap_or_default()
    }
}

/// One announcement of this node on its way: its id travels in the payload
/// (`<node> <id> <revocation>`), and the other nodes' confirmations come back with it.
pub struct Echo {
    hub: Hub,
    id: u64,
    rx: watch::Receiver<HashSet<String>>,
}

impl Echo {
    /// `<node> <id>`: what the payload starts with.
    pub fn origin(&self) -> String {
        format!("{} {}", self.hub.node(), self.id)
    }

    /// Wait (at most [`ECHO_WAIT`], and not at all while the feed is down) until `others`
    /// other nodes have confirmed that they applied the announcement.
    pub async fn confirmed(mut self, others: usize) {
        if others == 0 || !self.hub.is_live() {
            return;
        }
        let all = self.rx.wait_for(|nodes| nodes.len() >= others);
        if !matches!(tokio::time::timeout(ECHO_WAIT, all).await, Ok(Ok(_))) {
            tracing::warn!(
                others,
                "a revocation was not confirmed by every other node in time; a node whose listener fails serves nothing from memory once it notices"
            );
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Ok(mut e) = self.hub.0.echoes.lock() {
            e.remove(&self.id);
        }
    }
}

/// A fresh node id: the host name (for people reading the tables) and 8 random hex digits.
fn new_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
                .take(40)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        getrandom::u32().unwrap_or(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_of(e: &Echo) -> u64 {
        e.origin().rsplit_once(' ').unwrap().1.parse().unwrap()
    }

    #[tokio::test]
    async fn an_echo_waits_for_every_other_node_and_is_forgotten_when_dropped() {
        let hub = Hub::new(true);
        // Confirmed by both others (one of them twice, one before the wait began): no wait.
        let e = hub.echo();
        let id = id_of(&e);
        hub.confirmed(id, "b");
        hub.confirmed(id, "b");
        let waiter = tokio::spawn(e.confirmed(2));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "one confirmation of two");
        let started = std::time::Instant::now();
        hub.confirmed(id, "c");
        waiter.await.unwrap();
        assert!(started.elapsed() < ECHO_WAIT / 2);
        // Missing a confirmation: the wait ends at ECHO_WAIT.
        let e = hub.echo();
        let started = std::time::Instant::now();
        e.confirmed(1).await;
        assert!(started.elapsed() >= ECHO_WAIT);
        // No other node, or the feed down: no wait at all.
        let started = std::time::Instant::now();
        hub.echo().confirmed(0).await;
        Hub::new(false).echo().confirmed(3).await;
        assert!(started.elapsed() < ECHO_WAIT / 2);
        drop(hub.echo());
        assert!(hub.0.echoes.lock().unwrap().is_empty());
    }

    #[test]
    fn revocations_travel_as_text_and_back() {
        for r in [
            Revoked::Session(SessionId::new()),
            Revoked::ApiKey(ApiKeyId::new()),
            Revoked::User(UserId::new()),
            Revoked::File(FileId::new()),
            Revoked::Everything,
        ] {
            assert_eq!(Revoked::decode(&r.encode()), Some(r));
        }
        for bad in [
            "",
            "s:",
            "x:00000000-0000-0000-0000-000000000000",
            "u:nope",
            "**",
        ] {
            assert_eq!(Revoked::decode(bad), None, "{bad}");
        }
    }
}
