//! Webhooks and the event outbox: every method of `Outbox`, and the recording variants of the
//! changes, on every engine; two stores claiming at once never take the same delivery.

use std::collections::HashSet;

use coffer::ids::{FileId, Timestamp, UserId, WebhookId};
use coffer::meta::MetaStore;
use coffer::meta::events::{
    Attempt, Delivery, Finished, NewEvent, NewWebhook, Webhook, WebhookStored,
};
use coffer::meta::page::Page;
use coffer::meta::users::Role;

use crate::engines::{self, add_file, add_user};

fn new_hook(owner: UserId, events: &[&str]) -> NewWebhook {
    NewWebhook {
        hook: Webhook {
            id: WebhookId::new(),
            url: "https://hooks.example.com/".into(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            created_at: Timestamp::now(),
        },
        owner,
        secret: vec![7; 32],
        secret_key_id: None,
    }
}

async fn add_hook(store: &MetaStore, owner: UserId, events: &[&str]) -> WebhookId {
    let hook = new_hook(owner, events);
    let id = hook.hook.id;
    assert_eq!(
        store.outbox().create_webhook(hook, 1000).await.unwrap(),
        WebhookStored::Stored
    );
    id
}

/// Stored secrets, as start-up and `rotate-key` re-seal them: every one or only those in the
/// clear (no key id); a re-seal takes only while the row is still what was read, a NULL key
/// id included.
#[tokio::test]
async fn stored_secrets_are_resealed_only_while_unchanged() {
    use coffer::meta::events::SealedSecret;
    for e in engines::all("stored_secrets_are_resealed_only_while_unchanged").await {
        let s = &e.store;
        let owner = add_user(s, "sealer", Role::User).await;
        let plain = add_hook(s, owner, &[]).await;
        let mut sealed = new_hook(owner, &[]);
        sealed.secret = vec![9; 60];
        sealed.secret_key_id = Some("k1".into());
        let sealed_id = sealed.hook.id;
        s.outbox().create_webhook(sealed, 1000).await.unwrap();
        let all = s.outbox().stored_secrets(false).await.unwrap();
        assert_eq!(all.len(), 2, "{}", e.name);
        let clear = s.outbox().stored_secrets(true).await.unwrap();
        assert_eq!(clear.len(), 1, "{}", e.name);
        assert_eq!(clear[0].id, plain);
        assert_eq!(clear[0].key_id, None);
        let new = |id, key: &str| SealedSecret {
            id,
            secret: vec![1; 60],
            key_id: Some(key.into()),
        };
        // The clear one is sealed (NULL compared as NULL), once.
        assert!(
            s.outbox()
                .reseal_secret(clear[0].clone(), new(plain, "k2"))
                .await
                .unwrap(),
            "{}",
            e.name
        );
        assert!(
            !s.outbox()
                .reseal_secret(clear[0].clone(), new(plain, "k3"))
                .await
                .unwrap(),
            "{}",
            e.name
        );
        assert!(
            s.outbox().stored_secrets(true).await.unwrap().is_empty(),
            "{}",
            e.name
        );
        // A sealed one only while its key id and bytes are what was read.
        let read = all.into_iter().find(|x| x.id == sealed_id).unwrap();
        let mut stale = read.clone();
        stale.key_id = Some("k0".into());
        assert!(
            !s.outbox()
                .reseal_secret(stale, new(sealed_id, "k2"))
                .await
                .unwrap(),
            "{}",
            e.name
        );
        assert!(
            s.outbox()
                .reseal_secret(read, new(sealed_id, "k2"))
                .await
                .unwrap(),
            "{}",
            e.name
        );
        let now: Vec<_> = s.outbox().stored_secrets(false).await.unwrap();
        assert!(
            now.iter().all(|x| x.key_id.as_deref() == Some("k2")),
            "{}",
            e.name
        );
    }
}

/// `webhooks.max_per_user` holds exactly, also for creations at once (on PostgreSQL, from
/// several pooled connections); an owner that is gone gets nothing stored.
#[tokio::test]
async fn an_owner_gets_at_most_the_webhooks_allowed_even_at_once() {
    for e in engines::all("an_owner_gets_at_most_the_webhooks_allowed_even_at_once").await {
        let s = &e.store;
        let owner = add_user(s, "capped", Role::User).await;
        let other = add_user(s, "uncapped", Role::User).await;
        let tries = (0..12).map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.outbox().create_webhook(new_hook(owner, &[]), 3).await })
        });
        let mut stored = 0;
        for t in tries {
            match t.await.unwrap().unwrap() {
                WebhookStored::Stored => stored += 1,
                WebhookStored::TooMany => {}
                WebhookStored::OwnerGone => panic!("{}: the owner is there", e.name),
            }
        }
        assert_eq!(stored, 3, "{}", e.name);
        assert_eq!(s.outbox().list_webhooks(owner).await.unwrap().len(), 3);
        // Another owner's count is their own.
        assert_eq!(
            s.outbox()
                .create_webhook(new_hook(other, &[]), 3)
                .await
                .unwrap(),
            WebhookStored::Stored
        );
        assert_eq!(
            s.outbox()
                .create_webhook(new_hook(UserId::new(), &[]), 3)
                .await
                .unwrap(),
            WebhookStored::OwnerGone
        );
    }
}

fn event(owner: UserId, kind: &'static str, file: Option<FileId>) -> NewEvent {
    let id = format!("evt_{}", uuid::Uuid::now_v7().simple());
    NewEvent {
        body: format!(r#"{{"id":"{id}","type":"{kind}"}}"#),
        id,
        owner,
        kind,
        file_id: file,
        created_at: Timestamp::now(),
    }
}

/// The webhook's delivery log, newest first (one page of 10).
async fn delivery_log(s: &MetaStore, hook: WebhookId, owner: UserId) -> Page<Delivery> {
    s.outbox()
        .deliveries(hook, owner, None, 10)
        .await
        .unwrap()
        .unwrap()
}

const OK: Attempt = Attempt::Delivered {
    status: 200,
    answer: String::new(),
};

#[tokio::test]
async fn events_commit_with_their_change_and_a_files_events_are_claimed_in_order() {
    for e in engines::all("events_commit_with_their_change_and_a_files_events_are_claimed_in_order")
        .await
    {
        let s = &e.store;
        let owner = add_user(s, "hooked", Role::User).await;
        let other = add_user(s, "quiet", Role::User).await;
        let hook = add_hook(s, owner, &["file.deleted", "upload.rejected"]).await;
        let f = add_file(s, owner, 3).await;
        let g = add_file(s, owner, 3).await;
        let now = Timestamp::now();
        // A deletion records its event; deleting again records nothing.
        let del = event(owner, "file.deleted", Some(f.file.id));
        assert!(
            s.files()
                .delete_recording(f.file.id, now, vec![del.clone()])
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            s.files()
                .delete_recording(
                    f.file.id,
                    now,
                    vec![event(owner, "file.deleted", Some(f.file.id))]
                )
                .await
                .unwrap()
                .is_none()
        );
        // Not subscribed, or another owner's: no delivery.
        s.outbox()
            .record(vec![
                event(owner, "link.used", Some(g.file.id)),
                event(other, "file.deleted", None),
            ])
            .await
            .unwrap();
        let rej = event(owner, "upload.rejected", None);
        s.outbox().record(vec![rej.clone()]).await.unwrap();
        let log = delivery_log(s, hook, owner).await;
        let ids: Vec<&str> = log.items.iter().map(|d| d.event_id.as_str()).collect();
        assert_eq!(
            ids,
            [rej.id.as_str(), del.id.as_str()],
            "{}: newest first",
            e.name
        );
        assert!(
            s.outbox()
                .deliveries(hook, other, None, 10)
                .await
                .unwrap()
                .is_none(),
            "{}",
            e.name
        );

        // Two events of one file: only the first is claimable until it is settled.
        let g1 = event(owner, "file.deleted", Some(g.file.id));
        let g2 = event(owner, "file.deleted", Some(g.file.id));
        s.outbox()
            .record(vec![g1.clone(), g2.clone()])
            .await
            .unwrap();
        let now = Timestamp::now();
        let later = now.plus_secs(60);
        let got = s.outbox().claim("a".into(), now, later, 10).await.unwrap();
        let ids: HashSet<String> = got.iter().map(|c| c.event_id.clone()).collect();
        assert_eq!(
            ids,
            HashSet::from([del.id.clone(), rej.id.clone(), g1.id.clone()]),
            "{}",
            e.name
        );
        assert!(
            s.outbox()
                .claim("b".into(), now, later, 10)
                .await
                .unwrap()
                .is_empty(),
            "{}: leased",
            e.name
        );
        let c1 = got.iter().find(|c| c.event_id == g1.id).unwrap();
        assert!(
            !s.outbox()
                .finish(c1.seq, "b".into(), now, OK)
                .await
                .unwrap(),
            "{}: not b's",
            e.name
        );
        assert!(
            s.outbox()
                .finish(c1.seq, "a".into(), now, OK)
                .await
                .unwrap()
        );
        let next = s.outbox().claim("b".into(), now, later, 10).await.unwrap();
        assert_eq!(next.len(), 1, "{}", e.name);
        assert_eq!(next[0].event_id, g2.id);
        // A's other leases run out: b takes them over.
        let taken = s
            .outbox()
            .claim("b".into(), later.plus_secs(1), later.plus_secs(60), 10)
            .await
            .unwrap();
        assert_eq!(
            taken.len(),
            3,
            "{}: two of a's and b's own expired one",
            e.name
        );
        // A failure with a retry time keeps it pending; a manual retry makes it due now.
        let t = &taken[0];
        let retry = Attempt::Failed {
            status: Some(500),
            error: "answered 500".into(),
            answer: None,
            retry_at: Some(later.plus_secs(3600)),
        };
        assert!(
            s.outbox()
                .finish(t.seq, "b".into(), later, retry)
                .await
                .unwrap()
        );
        let when = later.plus_secs(120);
        assert!(
            s.outbox()
                .claim("c".into(), when, when.plus_secs(60), 10)
                .await
                .unwrap()
                .iter()
                .all(|c| c.seq != t.seq)
        );
        assert!(
            s.outbox()
                .retry(hook, owner, t.event_id.clone(), when)
                .await
                .unwrap()
        );
        assert!(
            !s.outbox()
                .retry(hook, other, t.event_id.clone(), when)
                .await
                .unwrap(),
            "{}",
            e.name
        );
        let again = s
            .outbox()
            .claim("c".into(), when.plus_secs(1), when.plus_secs(60), 10)
            .await
            .unwrap();
        assert!(
            again.iter().any(|c| c.seq == t.seq && c.attempts == 1),
            "{}",
            e.name
        );
        // Settled deliveries are pruned, pending ones stay however old.
        let before = delivery_log(s, hook, owner).await;
        let settled = before
            .items
            .iter()
            .filter(|d| d.next_attempt_at.is_none())
            .count();
        assert!(settled >= 1, "{}", e.name);
        let far = when.plus_secs(86_400);
        assert_eq!(
            s.outbox().prune_settled(far).await.unwrap(),
            settled,
            "{}",
            e.name
        );
        let after = delivery_log(s, hook, owner).await;
        assert_eq!(after.items.len(), before.items.len() - settled);
        assert!(after.items.iter().all(|d| d.next_attempt_at.is_some()));
        // Deleting the webhook takes its deliveries with it.
        assert!(s.outbox().delete_webhook(hook, owner).await.unwrap());
        assert!(
            s.outbox()
                .deliveries(hook, owner, None, 10)
                .await
                .unwrap()
                .is_none()
        );
    }
}

/// A manual retry while a try is in flight drops its lease: that try's outcome is not
/// recorded over the retry, and the delivery is claimable at once, by another node or by the
/// same node under a new claim; the try made under the new claim is recorded.
#[tokio::test]
async fn a_retry_during_a_try_is_not_overwritten_by_that_try() {
    for e in engines::all("a_retry_during_a_try_is_not_overwritten_by_that_try").await {
        let s = &e.store;
        let owner = add_user(s, "retrier", Role::User).await;
        let hook = add_hook(s, owner, &["upload.rejected"]).await;
        let ev = event(owner, "upload.rejected", None);
        s.outbox().record(vec![ev.clone()]).await.unwrap();
        let now = Timestamp::now();
        let until = now.plus_secs(60);
        let first = s
            .outbox()
            .claim("node/1".into(), now, until, 10)
            .await
            .unwrap();
        assert_eq!(first.len(), 1, "{}", e.name);
        // The owner asks for it again while the first try is in flight.
        assert!(
            s.outbox()
                .retry(hook, owner, ev.id.clone(), now)
                .await
                .unwrap(),
            "{}",
            e.name
        );
        // Claimable at once (the same node, a new claim), not only once the lease runs out.
        let second = s
            .outbox()
            .claim("node/2".into(), now, until, 10)
            .await
            .unwrap();
        assert_eq!(second.len(), 1, "{}: due again at once", e.name);
        assert_eq!(second[0].seq, first[0].seq);
        // The first try ends, failed: not recorded, and the second claim keeps its lease.
        let failed = Attempt::Failed {
            status: Some(500),
            error: "answered 500".into(),
            answer: None,
            retry_at: Some(now.plus_secs(3600)),
        };
        assert!(
            !s.outbox()
                .finish(first[0].seq, "node/1".into(), now, failed)
                .await
                .unwrap(),
            "{}: the first try's outcome is not recorded over the retry",
            e.name
        );
        let log = delivery_log(s, hook, owner).await;
        assert_eq!(log.items[0].attempts, 0, "{}", e.name);
        assert!(
            s.outbox()
                .claim("node/3".into(), now, until, 10)
                .await
                .unwrap()
                .is_empty(),
            "{}: still leased to the second claim",
            e.name
        );
        // The second try is recorded, in a batch as the worker records them.
        let done = s
            .outbox()
            .finish_many(
                now,
                vec![Finished {
                    seq: second[0].seq,
                    holder: "node/2".into(),
                    attempt: OK,
                }],
            )
            .await
            .unwrap();
        assert_eq!(done, [true], "{}", e.name);
        let log = delivery_log(s, hook, owner).await;
        assert_eq!(log.items[0].attempts, 1, "{}", e.name);
        assert!(log.items[0].delivered_at.is_some(), "{}", e.name);
        assert!(log.items[0].next_attempt_at.is_none(), "{}", e.name);
    }
}

#[tokio::test]
async fn race_two_stores_claiming_at_once_never_take_the_same_delivery() {
    for e in engines::all("race_two_stores_claiming_at_once_never_take_the_same_delivery").await {
        let a = e.store.clone();
        let b = e.another().await;
        let owner = add_user(&a, "racer", Role::User).await;
        add_hook(&a, owner, &["file.deleted"]).await;
        let events: Vec<NewEvent> = (0..100)
            .map(|_| event(owner, "file.deleted", Some(FileId::new())))
            .collect();
        a.outbox().record(events).await.unwrap();
        let now = Timestamp::now();
        let until = now.plus_secs(60);
        let claim = |s: MetaStore, who: &'static str| async move {
            let mut mine = Vec::new();
            loop {
                let got = s.outbox().claim(who.into(), now, until, 7).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|c| c.seq));
            }
        };
        let (x, y) = tokio::join!(
            tokio::spawn(claim(a.clone(), "a")),
            tokio::spawn(claim(b.clone(), "b"))
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        let all: HashSet<i64> = x.iter().chain(&y).copied().collect();
        assert_eq!(
            x.len() + y.len(),
            100,
            "{}: {} + {}",
            e.name,
            x.len(),
            y.len()
        );
        assert_eq!(all.len(), 100, "{}: a delivery claimed twice", e.name);
    }
}
