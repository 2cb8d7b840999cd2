//! The delivery worker: sends each recorded event to its webhook after the change committed,
//! at least once, in order per file, with back-off, from whichever node claims it.
//!
//! It wakes when events commit (in-process, and from other nodes through the engine's
//! `NOTIFY`), and polls every [`POLL`] besides, so nothing waits on a lost wake-up. Each
//! claim leases deliveries to this node for the try's timeout plus [`LEASE_MARGIN`]; a node
//! that dies mid-delivery leaves a lease that runs out, and another node (or this one,
//! restarted) takes the delivery over. The engine hands out only the earliest pending
//! delivery of each file per webhook, so a later event of a file waits for the earlier one.
//! Under load the database writes are shared: a worker that claimed everything due waits for
//! the next wake-up and then [`COALESCE`], so one claim takes several commits' events, and
//! finished tries are recorded together ([`RECORD_LINGER`], [`RECORD_BATCH`] at most per
//! write). On SQLite both writes are lazy (no fsync of their own: a lease or a recorded try
//! lost in a power cut only means the delivery is made again).
//!
//! Each claim names its own holder (this node's id and the claim's number), so a try is
//! recorded only under the lease it was made under: a manual retry drops the lease of a try in
//! flight, and that try's outcome is then not recorded over the retry (the delivery is due
//! again at once, also when this node claims it again before the first try ends).
//!
//! Invariant: a try is recorded only by the claim that still holds its lease; the answer kept
//! is at most [`ANSWER_BYTES`]; no secret or signature is logged.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use tokio::sync::{Notify, Semaphore, mpsc};

use super::guard::{self, Policy};
use super::hooks;
use super::sign;
use crate::crypto::Keyring;
use crate::ids::Timestamp;
use crate::meta::MetaStore;
use crate::meta::events::{Attempt, Claimed, Finished};

/// How long the worker sleeps when nothing is due and nothing woke it.
pub const POLL: Duration = Duration::from_secs(1);
/// How long an idle worker waits after a wake-up before claiming, so that one claim (one
/// write) takes the events of several commits under load; well inside the 100 ms a delivery
/// may take.
pub const COALESCE: Duration = Duration::from_millis(10);
/// Most tries recorded in one write.
pub const RECORD_BATCH: usize = 128;
/// How long the recorder waits after a try ends for others to record with it (a later event
/// of the same file waits this much longer; delivery itself does not).
pub const RECORD_LINGER: Duration = Duration::from_millis(5);
/// A lease lasts the try's timeout plus this, so a slow database write after a try does not
/// let another node take the delivery over while this one is still recording it.
pub const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// Most deliveries in flight on one node.
pub const IN_FLIGHT: usize = 64;
/// Most bytes of an answer kept in the delivery log.
pub const ANSWER_BYTES: usize = 512;
/// The waits after the 1st, 2nd, ... failed try (the last repeats).
pub const BACKOFF_SECS: [u64; 6] = [5, 30, 120, 600, 3600, 21_600];

/// The wait after `tries` failed tries.
pub fn backoff(tries: u32) -> Duration {
    let i = usize::try_from(tries.saturating_sub(1)).unwrap_or(usize::MAX);
    let secs = BACKOFF_SECS
        .get(i)
        .or(BACKOFF_SECS.last())
        .copied()
        .unwrap_or(5);
    Duration::from_secs(secs)
}

/// The delivery worker of one node.
pub struct Worker {
    /// The outbox.
    pub meta: MetaStore,
    /// Unseals webhook secrets.
    pub keyring: Arc<Keyring>,
    /// The address guard's switches.
    pub policy: Policy,
    /// `webhooks.timeout_secs`.
    pub timeout: Duration,
    /// `webhooks.max_attempts`.
    pub max_attempts: u32,
}

impl Worker {
    /// Deliver forever (aborted at shutdown).
    pub async fn run(self) {
        let client = match guard::client(self.policy, self.timeout) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook client; no webhook will be delivered");
                return;
            }
        };
        let wake = self.meta.outbox_wakeup();
        let (record, outcomes) = mpsc::unbounded_channel();
        tokio::spawn(record_tries(self.meta.clone(), outcomes, wake.clone()));
        let this = Arc::new(Shared {
            worker: self,
            client,
            record,
        });
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut claims: u64 = 0;
        loop {
            let free = slots.available_permits();
            if free == 0 {
                // Wait until a try ends (it wakes the loop).
                wake.notified().await;
                continue;
            }
            let now = Timestamp::now();
            let until = now.plus_secs((this.worker.timeout + LEASE_MARGIN).as_secs());
            claims = claims.wrapping_add(1);
            let holder: Arc<str> = format!("{}/{claims}", this.worker.meta.node()).into();
            let claimed = match this
                .worker
                .meta
                .outbox()
                .claim(holder.to_string(), now, until, free)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim webhook deliveries; retrying");
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            };
            if claimed.is_empty() {
                tokio::select! {
                    () = wake.notified() => tokio::time::sleep(COALESCE).await,
                    () = tokio::time::sleep(POLL) => {}
                }
                continue;
            }
            // Fewer than the free slots: nothing else was due. Wait for the next commit (or a
            // finished try) and let a few gather, instead of claiming again at once for the
            // one or two events committed meanwhile (each claim is a database write).
            let drained = claimed.len() < free;
            for d in claimed {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let this = this.clone();
                let holder = holder.clone();
                tokio::spawn(async move {
                    this.deliver(d, holder).await;
                    drop(permit);
                });
            }
            if drained {
                tokio::select! {
                    () = wake.notified() => tokio::time::sleep(COALESCE).await,
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        }
    }
}

struct Shared {
    worker: Worker,
    client: reqwest::Client,
    /// Where tries go to be recorded ([`record_tries`]).
    record: mpsc::UnboundedSender<Tried>,
}

/// A finished try, to record.
struct Tried {
    seq: i64,
    /// The claim it was made under.
    holder: Arc<str>,
    event_id: String,
    attempt: Attempt,
}

/// Record finished tries, as many as are waiting in one write, then wake the claiming loop (a
/// later event of the same file may be due now, and a slot is free).
async fn record_tries(
    meta: MetaStore,
    mut tries: mpsc::UnboundedReceiver<Tried>,
    wake: Arc<Notify>,
) {
    while let Some(first) = tries.recv().await {
        // Let the tries that end together share one write.
        tokio::time::sleep(RECORD_LINGER).await;
        let mut batch = vec![first];
        while batch.len() < RECORD_BATCH {
            match tries.try_recv() {
                Ok(t) => batch.push(t),
                Err(_) => break,
            }
        }
        let ids: Vec<String> = batch.iter().map(|t| t.event_id.clone()).collect();
        let rows = batch
            .into_iter()
            .map(|t| Finished {
                seq: t.seq,
                holder: t.holder.to_string(),
                attempt: t.attempt,
            })
            .collect();
        match meta.outbox().finish_many(Timestamp::now(), rows).await {
            Ok(done) => {
                for (id, ok) in ids.iter().zip(done) {
                    if !ok {
                        tracing::warn!(event.id = %id, "a webhook try was not recorded: its lease ran out, or a manual retry made the delivery due again");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, tries = ids.len(), "cannot record webhook tries; their leases will run out and they are tried again")
            }
        }
        wake.notify_one();
    }
}

impl Shared {
    async fn deliver(&self, d: Claimed, holder: Arc<str>) {
        let Some(secret) = hooks::unseal(
            &self.worker.keyring,
            d.webhook_id,
            &d.secret,
            d.secret_key_id.as_deref(),
        ) else {
            // Not a try: no key of this node opens the secret (a node not given the key yet,
            // or the service secret changed without COFFER_SECRET_OLD_KEYS). Nothing is
            // recorded: the lease runs out and the delivery is claimed again, here once the
            // key is configured or by a node that has it. It is never given up for this.
            tracing::warn!(
                webhook.id = %d.webhook_id,
                event.id = %d.event_id,
                key = d.secret_key_id.as_deref().unwrap_or("-"),
                "cannot unseal the webhook's signing secret: no configured key opens it \
                 (COFFER_SECRET_KEY / COFFER_SECRET_OLD_KEYS, or COFFER_ENCRYPTION_KEY / \
                 COFFER_ENCRYPTION_OLD_KEYS); the delivery waits"
            );
            return;
        };
        let attempt = self.try_once(&d, &secret).await;
        let tries = d.attempts.saturating_add(1);
        let attempt = match attempt {
            Ok((status, answer)) => Attempt::Delivered { status, answer },
            Err((status, error, answer)) => {
                let retry_at = (tries < self.worker.max_attempts)
                    .then(|| Timestamp::now().plus_secs(backoff(tries).as_secs()));
                if retry_at.is_none() {
                    tracing::warn!(webhook.id = %d.webhook_id, event.id = %d.event_id, tries, "gave up delivering a webhook event");
                }
                Attempt::Failed {
                    status,
                    error,
                    answer,
                    retry_at,
                }
            }
        };
        // Recorded with others (one write); if the recorder is gone, the lease runs out.
        let _ = self.record.send(Tried {
            seq: d.seq,
            holder,
            event_id: d.event_id.clone(),
            attempt,
        });
    }

    /// One try: the status and the start of the answer on a 2xx, else the status (if an
    /// answer came), why, and the start of the answer.
    async fn try_once(
        &self,
        d: &Claimed,
        secret: &[u8],
    ) -> Result<(u16, String), (Option<u16>, String, Option<String>)> {
        let policy = self.worker.policy;
        let url = guard::check_url(&d.url, policy)
            .map_err(|e| (None, format!("refused: url {e}"), None))?;
        guard::check_target(&url, policy).map_err(|e| (None, e, None))?;
        let ts = Timestamp::now().unix_secs();
        let mut sig = HeaderValue::from_str(&sign::signature(secret, &d.event_id, ts, &d.body))
            .map_err(|_| (None, "cannot sign".to_owned(), None))?;
        // Kept out of any debug output of the request.
        sig.set_sensitive(true);
        let sent = self
            .client
            .post(url)
            .header("webhook-id", d.event_id.as_str())
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .header(CONTENT_TYPE, "application/json")
            .body(d.body.clone())
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => return Err((None, describe(&e, self.worker.timeout), None)),
        };
        let status = resp.status().as_u16();
        let answer = read_answer(&mut resp).await;
        if resp.status().is_success() {
            Ok((status, answer))
        } else {
            let error = if resp.status().is_redirection() {
                format!("answered {status} (redirects are not followed)")
            } else {
                format!("answered {status}")
            };
            Err((Some(status), error, Some(answer)))
        }
    }
}

/// At most [`ANSWER_BYTES`] of the answer, as text (lossy), cut at a character boundary; the
/// rest is never read.
async fn read_answer(resp: &mut reqwest::Response) -> String {
    let mut buf = Vec::with_capacity(ANSWER_BYTES);
    while buf.len() < ANSWER_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => {
                let take = (ANSWER_BYTES - buf.len()).min(c.len());
                buf.extend_from_slice(c.get(..take).unwrap_or_default());
            }
            Ok(None) | Err(_) => break,
        }
    }
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    while text.len() > ANSWER_BYTES {
        text.pop();
    }
    text
}

/// Why a request failed, for the delivery log (never a secret: the URL is the owner's own).
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if let Some(r) = guard::refused_in(e) {
        return format!("refused: {r}");
    }
    if e.is_timeout() {
        format!("no answer within {} s", timeout.as_secs())
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "the request failed".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_contract() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 30, 120, 600, 3600, 21_600, 21_600, 21_600]);
    }
}
