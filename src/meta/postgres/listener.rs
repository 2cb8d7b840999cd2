//! The revocation listener: one connection of its own per node, `LISTEN`ing on
//! [`REVOCATIONS_CHANNEL`], publishing what other nodes revoked to this node's caches.
//!
//! Invariant: the hub is live only while the listener listens on a connection that answers.
//! When the connection is lost (PostgreSQL restarting, a silent network: a heartbeat every
//! [`HEARTBEAT`] notices within [`HEARTBEAT`] plus [`HEARTBEAT_TIMEOUT`]), the hub goes down at
//! once, so the caches serve nothing from memory; when it listens again the hub comes back
//! live and the caches start empty, since announcements may have been missed meanwhile.
//! Reconnecting never stops: the node recovers without a restart.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};

use super::REVOCATIONS_CHANNEL;
use super::conn::{self, Settings};
use crate::meta::revocations::{Hub, Revoked};

/// How often an idle listener checks that its connection still answers.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the check may take.
pub(crate) const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Listen forever (aborted with the runtime).
pub(super) async fn run(settings: Settings, hub: Hub) {
    let mut attempts: u32 = 0;
    loop {
        match conn::dedicated(&settings).await {
            Ok((client, mut rx)) => {
                match client
                    .batch_execute(&format!("LISTEN {REVOCATIONS_CHANNEL}"))
                    .await
                {
                    Ok(()) => {
                        if attempts > 0 {
                            tracing::info!(
                                "revocation listener is back; the credential cache starts empty"
                            );
                        }
                        attempts = 0;
                        hub.set_live(true);
                        serve(&client, &mut rx, &hub).await;
                        hub.set_live(false);
                        tracing::warn!(
                            "revocation listener lost its connection; every credential is checked against the database until it is back"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot LISTEN for revocations"),
                }
            }
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

/// Apply notifications until the connection ends or stops answering.
async fn serve(
    client: &tokio_postgres::Client,
    rx: &mut mpsc::UnboundedReceiver<String>,
    hub: &Hub,
) {
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(payload) => apply(hub, &payload),
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

/// One notification: `<node> <echo id> <revocation>`. This node's own were applied when they
/// committed; hearing one back ends its caller's wait.
fn apply(hub: &Hub, payload: &str) {
    let mut parts = payload.splitn(3, ' ');
    let (Some(node), Some(echo), Some(what)) = (parts.next(), parts.next(), parts.next()) else {
        tracing::warn!("ignoring a malformed revocation notification");
        return;
    };
    if node == hub.node() {
        if let Ok(id) = echo.parse() {
            hub.heard(id);
        }
        return;
    }
    match Revoked::decode(what) {
        Some(r) => hub.publish(r),
        // Something this binary does not understand (a newer node): the safe reading.
        None => hub.publish(Revoked::Everything),
    }
}
