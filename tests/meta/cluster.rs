//! What several nodes agree on through the database: quota reservations of uploads in flight
//! (exact when two stores reserve at once, ended by the commit, claimed once by a sweeper),
//! leases (one holder at a time, taken over once expired) and, on PostgreSQL, the shared login
//! throttle and login budget. Every case runs on both engines where both keep the state.

use std::sync::Arc;

use coffer::ids::{Timestamp, UploadId, UserId};
use coffer::meta::uploads::{Committed, NewReservation, Reserved};
use coffer::meta::users::Role;
use tokio::sync::Barrier;

use crate::engines::{self, add_user, file};

fn reservation(owner: UserId, want: u64, exact: bool, quota: u64) -> NewReservation {
    let id = UploadId::new();
    NewReservation {
        id,
        owner,
        want,
        exact,
        quota,
        blob_key: format!("blobs/{id}"),
        node: "test".into(),
        grant: None,
        now: Timestamp::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservations_hold_quota_until_the_commit_moves_it_to_stored_bytes() {
    for e in engines::all("reservations_hold_quota_until_the_commit_moves_it_to_stored_bytes").await
    {
        let s = &e.store;
        let owner = add_user(s, "holder", Role::User).await;
        let r = reservation(owner, 600, true, 1000);
        let id = r.id;
        assert_eq!(
            s.uploads().reserve(r).await.unwrap(),
            Reserved::Granted(600)
        );
        assert_eq!(s.uploads().reserved_bytes(owner).await.unwrap(), 600);
        // Exact: 600 more does not fit; inexact: what is left does.
        assert_eq!(
            s.uploads()
                .reserve(reservation(owner, 600, true, 1000))
                .await
                .unwrap(),
            Reserved::Exceeded,
            "{}",
            e.name
        );
        let rest = reservation(owner, 600, false, 1000);
        let rest_id = rest.id;
        assert_eq!(
            s.uploads().reserve(rest).await.unwrap(),
            Reserved::Granted(400)
        );
        assert!(s.uploads().release(rest_id).await.unwrap());
        assert!(
            !s.uploads().release(rest_id).await.unwrap(),
            "released once"
        );

        let f = file(owner, 500, Timestamp::now(), None);
        assert_eq!(
            s.uploads().commit(id, f.clone()).await.unwrap(),
            Committed::Inserted
        );
        assert_eq!(s.uploads().reserved_bytes(owner).await.unwrap(), 0);
        assert_eq!(s.users().used_bytes(owner).await.unwrap(), 500);
        assert_eq!(
            s.uploads()
                .reserve(reservation(owner, 501, true, 1000))
                .await
                .unwrap(),
            Reserved::Exceeded,
            "{}: stored bytes count",
            e.name
        );
        assert_eq!(
            s.uploads()
                .commit(id, file(owner, 1, Timestamp::now(), None))
                .await
                .unwrap(),
            Committed::Swept,
            "{}: a reservation commits one row",
            e.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_reservations_from_two_nodes_never_exceed_the_quota() {
    for e in engines::all("race_reservations_from_two_nodes_never_exceed_the_quota").await {
        let nodes = [e.store.clone(), e.another().await];
        let owner = add_user(&nodes[0], "racer", Role::User).await;
        for round in 0..10 {
            // Eight uploads of 300 bytes against a 1000-byte quota: three fit, at once.
            let start = Arc::new(Barrier::new(8));
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let (s, start) = (nodes[i % 2].clone(), start.clone());
                    tokio::spawn(async move {
                        start.wait().await;
                        let r = reservation(owner, 300, true, 1000);
                        let id = r.id;
                        (id, s.uploads().reserve(r).await.unwrap())
                    })
                })
                .collect();
            let mut granted = Vec::new();
            for t in tasks {
                if let (id, Reserved::Granted(_)) = t.await.unwrap() {
                    granted.push(id);
                }
            }
            assert_eq!(granted.len(), 3, "{} round {round}", e.name);
            for id in granted {
                assert!(nodes[1].uploads().release(id).await.unwrap());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_upload_is_claimed_once_and_its_commit_then_writes_no_row() {
    for e in
        engines::all("an_abandoned_upload_is_claimed_once_and_its_commit_then_writes_no_row").await
    {
        let (a, b) = (e.store.clone(), e.another().await);
        let owner = add_user(&a, "stalled", Role::User).await;
        let mut r = reservation(owner, 100, true, 0);
        r.now = Timestamp::now().minus_secs(7200);
        let (id, key) = (r.id, r.blob_key.clone());
        a.uploads().reserve(r).await.unwrap();
        a.uploads().staged(id, "staging-1".into()).await.unwrap();
        let fresh = reservation(owner, 100, true, 0);
        a.uploads().reserve(fresh).await.unwrap();

        let cutoff = Timestamp::now().minus_secs(3600);
        let found = b.uploads().abandoned(cutoff, 10).await.unwrap();
        assert_eq!(found.len(), 1, "{}: only the stale one", e.name);
        assert_eq!(found[0].id, id);
        assert_eq!(found[0].staging_id.as_deref(), Some("staging-1"));
        assert_eq!(found[0].blob_key.as_deref(), Some(key.as_str()));

        // Two sweepers at once: one claims it.
        let (x, y) = tokio::join!(
            a.uploads().claim_abandoned(id, Timestamp::now()),
            b.uploads().claim_abandoned(id, Timestamp::now())
        );
        assert!(x.unwrap() ^ y.unwrap(), "{}: claimed once", e.name);
        assert_eq!(
            a.files().queued_deletions(10).await.unwrap(),
            vec![key.clone()],
            "{}: its blob, committed or not, is queued for deletion",
            e.name
        );
        let mut f = file(owner, 100, Timestamp::now(), None);
        f.blob_key = key;
        assert_eq!(
            a.uploads().commit(id, f).await.unwrap(),
            Committed::Swept,
            "{}: the stalled upload's own commit writes no row",
            e.name
        );
        assert_eq!(a.users().used_bytes(owner).await.unwrap(), 0);
        assert!(b.uploads().abandoned(cutoff, 10).await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_touched_upload_is_not_abandoned() {
    for e in engines::all("a_touched_upload_is_not_abandoned").await {
        let s = &e.store;
        let owner = add_user(s, "alive", Role::User).await;
        let mut r = reservation(owner, 1, true, 0);
        r.now = Timestamp::now().minus_secs(7200);
        let id = r.id;
        s.uploads().reserve(r).await.unwrap();
        s.uploads().touch(id, Timestamp::now()).await.unwrap();
        let cutoff = Timestamp::now().minus_secs(3600);
        assert!(
            s.uploads().abandoned(cutoff, 10).await.unwrap().is_empty(),
            "{}",
            e.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_has_one_holder_until_it_expires_or_is_given_up() {
    for e in engines::all("a_lease_has_one_holder_until_it_expires_or_is_given_up").await {
        let (a, b) = (e.store.clone(), e.another().await);
        let now = Timestamp::now();
        let until = now.plus_secs(10);
        assert!(
            a.leases()
                .acquire("sweeper", "a", now, until)
                .await
                .unwrap()
        );
        assert!(
            !b.leases()
                .acquire("sweeper", "b", now, until)
                .await
                .unwrap(),
            "{}",
            e.name
        );
        assert!(
            a.leases()
                .acquire("sweeper", "a", now, until)
                .await
                .unwrap(),
            "renewed"
        );
        assert!(
            b.leases().acquire("other", "b", now, until).await.unwrap(),
            "names apart"
        );
        // Expired: taken over.
        let later = now.plus_secs(11);
        assert!(
            b.leases()
                .acquire("sweeper", "b", later, later.plus_secs(10))
                .await
                .unwrap()
        );
        assert!(
            !a.leases()
                .acquire("sweeper", "a", later, later.plus_secs(10))
                .await
                .unwrap()
        );
        // Given up: free at once.
        b.leases().release("sweeper", "b").await.unwrap();
        assert!(
            a.leases()
                .acquire("sweeper", "a", later, later.plus_secs(10))
                .await
                .unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_two_nodes_taking_one_expired_lease_make_one_holder() {
    for e in engines::all("race_two_nodes_taking_one_expired_lease_make_one_holder").await {
        let (a, b) = (e.store.clone(), e.another().await);
        for round in 0..20u64 {
            let now = Timestamp::now().plus_secs(round * 100);
            let until = now.plus_secs(50);
            let (x, y) = tokio::join!(
                a.leases().acquire("race", "a", now, until),
                b.leases().acquire("race", "b", now, until)
            );
            assert!(x.unwrap() ^ y.unwrap(), "{} round {round}", e.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_the_login_budget_and_failures_are_shared_by_every_node() {
    let Some(e) =
        engines::postgres("postgres_the_login_budget_and_failures_are_shared_by_every_node").await
    else {
        return;
    };
    let (a, b) = (e.store.clone(), e.another().await);
    let (ta, tb) = (a.login_throttles().unwrap(), b.login_throttles().unwrap());
    let now = Timestamp::now();
    // A budget of 4 per minute: 4 requests from two nodes pass, the 5th waits ~15 s.
    let interval = 15_000_000;
    for i in 0..4 {
        let t = if i % 2 == 0 { ta } else { tb };
        assert_eq!(
            t.take_budget("10.0.0.1", now, interval, 4).await.unwrap(),
            None
        );
    }
    let wait = ta.take_budget("10.0.0.1", now, interval, 4).await.unwrap();
    assert!(
        matches!(wait, Some(w) if w > 0 && w <= interval),
        "{wait:?}"
    );
    assert_eq!(
        tb.take_budget("10.0.0.2", now, interval, 4).await.unwrap(),
        None,
        "per network"
    );
    assert_eq!(
        tb.take_budget("10.0.0.1", now.plus_secs(16), interval, 4)
            .await
            .unwrap(),
        None,
        "refilled"
    );

    // Failures counted on either node delay the next attempt on both.
    let rules = coffer::meta::throttle::ThrottleRules {
        network: coffer::meta::throttle::DelayRule {
            threshold: 2,
            max_delay_us: 60_000_000,
        },
        account: coffer::meta::throttle::DelayRule {
            threshold: 100,
            max_delay_us: 60_000_000,
        },
        window_us: 900_000_000,
        known_for_us: 86_400_000_000,
        known_per_account: 8,
    };
    assert_eq!(
        ta.wait_until("eve", "10.0.0.9", now, rules.known_for_us)
            .await
            .unwrap(),
        None
    );
    for i in 0..4 {
        let t = if i % 2 == 0 { ta } else { tb };
        t.failed("eve", "10.0.0.9", now, rules).await.unwrap();
    }
    let until = tb
        .wait_until("eve", "10.0.0.9", now, rules.known_for_us)
        .await
        .unwrap();
    assert!(matches!(until, Some(u) if u > now), "{until:?}");
    ta.succeeded("eve", "10.0.0.9", now, rules).await.unwrap();
    assert_eq!(
        tb.wait_until("eve", "10.0.0.9", now, rules.known_for_us)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn sqlite_keeps_login_throttling_in_the_node() {
    let e = engines::all("sqlite_keeps_login_throttling_in_the_node").await;
    assert!(e[0].store.login_throttles().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_use_goes_with_its_reservation() {
    use coffer::ids::GrantId;
    use coffer::meta::grants::{Grant, NewGrant};
    for e in engines::all("a_grant_use_goes_with_its_reservation").await {
        let s = &e.store;
        let owner = add_user(s, "granter", Role::User).await;
        let now = Timestamp::now();
        let grant = Grant {
            id: GrantId::new(),
            expires_at: now.plus_secs(600),
            max_bytes: 1000,
            extensions: vec!["png".into(), "txt".into()],
            max_uploads: 2,
            uses: 0,
            file_expires_in: None,
            sha256: None,
            created_at: now,
        };
        let gid = grant.id;
        let hash = [7u8; 32];
        assert!(
            s.grants()
                .insert_grant(NewGrant {
                    grant,
                    owner,
                    token_hash: hash,
                })
                .await
                .unwrap()
        );
        let found = s.grants().find_grant(hash).await.unwrap().unwrap();
        assert_eq!(found.owner, owner);
        assert_eq!(found.grant.extensions, ["png", "txt"]);
        let with_grant = || NewReservation {
            grant: Some(gid),
            ..reservation(owner, 10, true, 0)
        };
        let uses = || async {
            s.grants()
                .get_grant(owner, gid, Timestamp::now())
                .await
                .unwrap()
                .unwrap()
                .0
                .uses
        };
        // Two uses: a third reservation is refused and writes nothing.
        let (a, b, c) = (with_grant(), with_grant(), with_grant());
        let (a_id, b_id) = (a.id, b.id);
        assert_eq!(s.uploads().reserve(a).await.unwrap(), Reserved::Granted(10));
        assert_eq!(s.uploads().reserve(b).await.unwrap(), Reserved::Granted(10));
        assert_eq!(
            s.uploads().reserve(c).await.unwrap(),
            Reserved::GrantRefused,
            "{}",
            e.name
        );
        assert_eq!(s.uploads().reserved_bytes(owner).await.unwrap(), 20);
        assert_eq!(
            s.grants()
                .find_grant(hash)
                .await
                .unwrap()
                .unwrap()
                .grant
                .uses,
            2
        );
        // A failed upload gives its use back; so does a swept one; a commit keeps it.
        assert!(s.uploads().release(a_id).await.unwrap());
        assert_eq!(uses().await, 1, "{}", e.name);
        assert!(
            s.uploads()
                .claim_abandoned(b_id, Timestamp::now())
                .await
                .unwrap()
        );
        assert_eq!(uses().await, 0, "{}", e.name);
        let d = with_grant();
        let d_id = d.id;
        s.uploads().reserve(d).await.unwrap();
        let mut f = file(owner, 10, Timestamp::now(), None);
        f.file.grant_id = Some(gid);
        assert_eq!(
            s.uploads().commit(d_id, f.clone()).await.unwrap(),
            Committed::Inserted
        );
        assert_eq!(uses().await, 1);
        let (_, files) = s
            .grants()
            .get_grant(owner, gid, Timestamp::now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(files, [f.file.id]);
        // Revoked while an upload runs: its commit writes no row.
        let last = with_grant();
        let last_id = last.id;
        s.uploads().reserve(last).await.unwrap();
        assert!(s.grants().delete_grant(owner, gid).await.unwrap());
        let mut g = file(owner, 10, Timestamp::now(), None);
        g.file.grant_id = Some(gid);
        assert_eq!(
            s.uploads().commit(last_id, g).await.unwrap(),
            Committed::GrantRevoked,
            "{}",
            e.name
        );
        assert_eq!(s.uploads().reserved_bytes(owner).await.unwrap(), 0);
        assert_eq!(s.users().used_bytes(owner).await.unwrap(), 10);
    }
}
