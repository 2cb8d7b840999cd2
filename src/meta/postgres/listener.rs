//! The revocation listener: one connection of its own per node, `LISTEN`ing on
//! [`REVOCATIONS_CHANNEL`], publishing what other nodes revoked to this node's caches, then
//! confirming it on [`CONFIRMATIONS_CHANNEL`] to the node that revoked (which waits for every
//! other listener's confirmation before it answers, see `meta::revocations`).
//!
//! Invariant: the hub is live only while the listener listens on a connection that answers.
//! When the connection is lost (PostgreSQL restarting, a silent network: a heartbeat every
//! [`HEARTBEAT`] notices within [`HEARTBEAT`] plus [`HEARTBEAT_TIMEOUT`]), the hub goes down at
//! once, so the caches serve nothing from memory; when it listens again the hub comes back
//! live and the caches start empty, since announcements may have been missed meanwhile.
//! Reconnecting never stops: the node recovers without a restart.
//!
//! The heartbeat is what makes a revocation hold "at once" on a node that cannot hear it: a
//! revoking node waits [`ECHO_WAIT`] for every listener's confirmation, and a listener whose
//! connection went silent has gone down (its caches emptied) before that wait ends, so no node
//! serves a revoked credential from memory after the revoking request answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};
use tokio_postgres::Notification;

use super::conn::{self, Settings};
use super::{CONFIRMATIONS_CHANNEL, EVENTS_CHANNEL, REVOCATIONS_CHANNEL};
use crate::meta::revocations::{ECHO_WAIT, Hub, Revoked};

/// How often an idle listener checks that its connection still answers.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long the check (or sending a confirmation) may take: with [`HEARTBEAT`], less than
/// [`ECHO_WAIT`], so a silent connection is noticed before a revoking node stops waiting.
pub(crate) const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
const _: () =
    assert!(HEARTBEAT.as_millis() + HEARTBEAT_TIMEOUT.as_millis() < ECHO_WAIT.as_millis());
/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Listen forever (aborted with the runtime). `pid` is the listening session's backend pid
/// while it listens (0 otherwise): the other listeners are the other sessions of that name.
pub(super) async fn run(settings: Settings, hub: Hub, pid: Arc<AtomicI32>) {
    let mut attempts: u32 = 0;
    loop {
        match conn::dedicated(&settings).await {
            Ok((client, mut rx)) => match listen(&client).await {
                Ok(own) => {
                    if attempts > 0 {
                        tracing::info!(
                            "revocation listener is back; the credential cache starts empty"
                        );
                    }
                    attempts = 0;
                    pid.store(own, Ordering::Release);
                    hub.set_live(true);
                    serve(&client, &mut rx, &hub).await;
                    hub.set_live(false);
                    pid.store(0, Ordering::Release);
                    tracing::warn!(
                        "revocation listener lost its connection; every credential is checked against the database until it is back"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "cannot LISTEN for revocations"),
            },
            Err(e) if attempts == 0 => {
                tracing::warn!(error = %e, "revocation listener cannot connect; retrying")
            }
            Err(e) => tracing::debug!(error = %e, "revocation listener cannot connect yet"),
        }
        attempts = attempts.saturating_add(1);
        let backoff = Duration::from_millis(250u64 << attempts.min(5)).min(MAX_BACKOFF);
        sleep(backoff).await;
    }
}

/// `LISTEN` on both channels; the session's backend pid.
async fn listen(client: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "LISTEN {REVOCATIONS_CHANNEL}; LISTEN {CONFIRMATIONS_CHANNEL}; LISTEN {EVENTS_CHANNEL}"
        ))
        .await?;
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .try_get(0)
}

/// Apply notifications until the connection ends or stops answering.
async fn serve(
    client: &tokio_postgres::Client,
    rx: &mut mpsc::UnboundedReceiver<Notification>,
    hub: &Hub,
) {
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(n) if n.channel() == CONFIRMATIONS_CHANNEL => confirmed(hub, n.payload()),
                // Events committed (on any node): the delivery worker looks at once.
                Some(n) if n.channel() == EVENTS_CHANNEL => hub.events_committed(),
                Some(n) => {
                    let Some(confirmation) = apply(hub, n.payload()) else { continue };
                    let sent = timeout(
                        HEARTBEAT_TIMEOUT,
                        client.execute("SELECT pg_notify($1, $2)", &[&CONFIRMATIONS_CHANNEL, &confirmation]),
                    )
                    .await;
                    if !matches!(sent, Ok(Ok(_))) {
                        return;
                    }
                }
                None => return,
            },
            _ = beat.tick() => {
                let answered = timeout(HEARTBEAT_TIMEOUT, client.simple_query("SELECT 1")).await;
                if !matches!(answered, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}

/// One announcement: `<node> <echo id> <revocation>`. Another node's is applied to this
/// node's caches; returns the confirmation to send back, `<node> <echo id> <this node>`.
/// This node's own were applied when they committed.
fn apply(hub: &Hub, payload: &str) -> Option<String> {
    let mut parts = payload.splitn(3, ' ');
    let (Some(node), Some(echo), Some(what)) = (parts.next(), parts.next(), parts.next()) else {
        tracing::warn!("ignoring a malformed revocation notification");
        return None;
    };
    if node == hub.node() {
        return None;
    }
    match Revoked::decode(what) {
        Some(r) => hub.publish(r),
        // Something this binary does not understand (a newer node): the safe reading.
        None => hub.publish(Revoked::Everything),
    }
    Some(format!("{node} {echo} {}", hub.node()))
}

/// One confirmation, `<node> <echo id> <confirming node>`: if it is for this node, its
/// revoking call may stop waiting for that node.
fn confirmed(hub: &Hub, payload: &str) {
    let mut parts = payload.splitn(3, ' ');
    if let (Some(node), Some(Ok(id)), Some(by)) =
        (parts.next(), parts.next().map(str::parse), parts.next())
        && node == hub.node()
    {
        hub.confirmed(id, by);
    }
}
