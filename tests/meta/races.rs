//! Every rule holds across processes and nodes: two stores on the same database (two SQLite
//! connections with their own writers; two PostgreSQL pools, as two nodes have) race for the
//! same row, released together by a barrier, many rounds each.

use std::future::Future;
use std::sync::Arc;

use coffer::ids::{SessionId, Timestamp};
use coffer::meta::files::Inserted;
use coffer::meta::sessions::{NewSession, Rotation};
use coffer::meta::users::{Locked, Role, RoleChange};
use tokio::sync::Barrier;

use crate::audit::{KEY, entry};
use crate::engines::{self, add_file, add_user, file};
use crate::links::link;

/// Run `a` and `b` on their own tasks, started at the same moment.
async fn both<A, B>(
    a: impl Future<Output = A> + Send + 'static,
    b: impl Future<Output = B> + Send + 'static,
) -> (A, B)
where
    A: Send + 'static,
    B: Send + 'static,
{
    let start = Arc::new(Barrier::new(2));
    let (sa, sb) = (start.clone(), start);
    let ta = tokio::spawn(async move {
        sa.wait().await;
        a.await
    });
    let tb = tokio::spawn(async move {
        sb.wait().await;
        b.await
    });
    (ta.await.unwrap(), tb.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_a_one_use_link_is_consumed_exactly_once() {
    for e in engines::all("race_a_one_use_link_is_consumed_exactly_once").await {
        let (a, b) = (e.store.clone(), e.another().await);
        let owner = add_user(&a, "owner", Role::User).await;
        let f = add_file(&a, owner, 1).await;
        let now = Timestamp::now();
        for round in 0..30u8 {
            let l = link(f.file.id, round, now.plus_secs(60), Some(1));
            assert!(
                a.links()
                    .insert_for_owner(l.clone(), owner, now)
                    .await
                    .unwrap()
            );
            let (x, y) = both(
                {
                    let a = a.clone();
                    async move { a.links().consume(l.id, now).await.unwrap() }
                },
                {
                    let b = b.clone();
                    async move { b.links().consume(l.id, now).await.unwrap() }
                },
            )
            .await;
            assert!(x ^ y, "{} round {round}: {x} and {y}", e.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_a_download_waits_for_one_in_progress_and_finds_the_link_used_up() {
    for e in
        engines::all("race_a_download_waits_for_one_in_progress_and_finds_the_link_used_up").await
    {
        let owner = add_user(&e.store, "owner", Role::User).await;
        let f = add_file(&e.store, owner, 1).await;
        let now = Timestamp::now();
        let l = link(f.file.id, 1, now.plus_secs(60), Some(1));
        assert!(
            e.store
                .links()
                .insert_for_owner(l.clone(), owner, now)
                .await
                .unwrap()
        );
        // What `Links::consume` writes, on another node, not yet committed.
        let open = e
            .uncommitted(
                "UPDATE links SET downloads = downloads + 1 WHERE id = {id}",
                l.id.0,
            )
            .await;
        let consume = {
            let store = e.store.clone();
            tokio::spawn(async move { store.links().consume(l.id, now).await.unwrap() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(!consume.is_finished(), "{}: the download must wait", e.name);
        open.commit().await;
        assert!(
            !consume.await.unwrap(),
            "{}: the budget was spent meanwhile",
            e.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_concurrent_audit_appends_make_one_contiguous_chain() {
    for e in engines::all("race_concurrent_audit_appends_make_one_contiguous_chain").await {
        let stores = [e.store.clone(), e.another().await];
        let start = Arc::new(Barrier::new(8));
        let mut tasks = Vec::new();
        for (n, store) in stores.iter().cycle().take(8).enumerate() {
            let (store, start) = (store.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let mut appended = 0;
                for i in 0..15 {
                    let batch: Vec<_> = (0..1 + (n + i) % 3)
                        .map(|j| entry(&format!("t{n}.{i}.{j}"), Timestamp::now()))
                        .collect();
                    appended += batch.len();
                    store.audit().append(&KEY, batch).await.unwrap();
                }
                appended
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let audit = stores[1].audit();
        assert!(
            audit.verify_chain(&KEY).await.unwrap().is_empty(),
            "{}",
            e.name
        );
        let seqs: Vec<i64> = audit
            .chain_page(0, 10_000)
            .await
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect();
        let want: Vec<i64> = (1..=i64::try_from(total).unwrap()).collect();
        assert_eq!(seqs, want, "{}: one chain, no gap, no fork", e.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_locking_the_last_two_administrators_leaves_one() {
    for e in engines::all("race_locking_the_last_two_administrators_leaves_one").await {
        let (a, b) = (e.store.clone(), e.another().await);
        let mut standing = add_user(&a, "admin_0", Role::Admin).await;
        for round in 1..=12 {
            let fresh = add_user(&a, &format!("admin_{round}"), Role::Admin).await;
            let (x, y) = both(
                {
                    let a = a.clone();
                    async move { a.users().lock(standing).await.unwrap() }
                },
                {
                    let b = b.clone();
                    async move { b.users().lock(fresh).await.unwrap() }
                },
            )
            .await;
            standing = match (x, y) {
                (Locked::Locked, Locked::LastAdmin) => fresh,
                (Locked::LastAdmin, Locked::Locked) => standing,
                other => panic!("{} round {round}: {other:?}", e.name),
            };
        }
        // Demotions race the same way.
        let other = add_user(&a, "admin_demote", Role::Admin).await;
        let (x, y) = both(
            {
                let a = a.clone();
                async move { a.users().set_role(standing, Role::User).await.unwrap() }
            },
            {
                let b = b.clone();
                async move { b.users().set_role(other, Role::User).await.unwrap() }
            },
        )
        .await;
        let changed = [&x, &y]
            .iter()
            .filter(|c| matches!(c, RoleChange::Changed(_)))
            .count();
        assert_eq!(changed, 1, "{}: {x:?} {y:?}", e.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_a_file_insert_racing_the_owners_lock_lands_before_it_or_not_at_all() {
    for e in engines::all("race_a_file_insert_racing_the_owners_lock_lands_before_it_or_not_at_all")
        .await
    {
        let (a, b) = (e.store.clone(), e.another().await);
        let (mut landed, mut refused) = (0, 0);
        for round in 0..25 {
            let owner = add_user(&a, &format!("owner_{round}"), Role::User).await;
            let f = file(owner, 1, Timestamp::now(), None);
            let id = f.file.id;
            let (inserted, (locked, owned)) = both(
                {
                    let a = a.clone();
                    async move { a.files().insert(f).await.unwrap() }
                },
                {
                    let b = b.clone();
                    async move {
                        let locked = b.users().lock(owner).await.unwrap();
                        // Read after the lock committed: a file committed later is missing.
                        (locked, b.files().all_of_owner(owner).await.unwrap())
                    }
                },
            )
            .await;
            assert_eq!(locked, Locked::Locked);
            let owned: Vec<_> = owned.iter().map(|f| f.file.id).collect();
            match inserted {
                Inserted::Inserted => {
                    landed += 1;
                    assert_eq!(
                        owned,
                        [id],
                        "{} round {round}: landed after the lock",
                        e.name
                    );
                }
                Inserted::OwnerGone => {
                    refused += 1;
                    assert!(owned.is_empty(), "{} round {round}", e.name);
                }
            }
            let late = file(owner, 1, Timestamp::now(), None);
            assert_eq!(a.files().insert(late).await.unwrap(), Inserted::OwnerGone);
        }
        eprintln!(
            "{}: {landed} inserts landed before the lock, {refused} refused",
            e.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_a_file_insert_waits_for_a_lock_in_progress_and_is_refused_once_it_commits() {
    for e in engines::all(
        "race_a_file_insert_waits_for_a_lock_in_progress_and_is_refused_once_it_commits",
    )
    .await
    {
        let owner = add_user(&e.store, "owner", Role::User).await;
        // What `Users::lock` writes, on another node, not yet committed.
        let open = e
            .uncommitted(
                "UPDATE users SET password_hash = '!locked' WHERE id = {id}",
                owner.0,
            )
            .await;
        let insert = {
            let store = e.store.clone();
            tokio::spawn(async move {
                let f = file(owner, 1, Timestamp::now(), None);
                store.files().insert(f).await.unwrap()
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(
            !insert.is_finished(),
            "{}: the insert must wait for the lock",
            e.name
        );
        open.commit().await;
        assert_eq!(insert.await.unwrap(), Inserted::OwnerGone, "{}", e.name);
        assert!(
            e.store
                .files()
                .all_of_owner(owner)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_one_refresh_token_presented_twice_rotates_once() {
    for e in engines::all("race_one_refresh_token_presented_twice_rotates_once").await {
        let (a, b) = (e.store.clone(), e.another().await);
        let user = add_user(&a, "tabs", Role::User).await;
        let now = Timestamp::now();
        let later = now.plus_secs(3600);
        for round in 0..16u8 {
            let sid = SessionId::new();
            a.sessions()
                .create(NewSession {
                    id: sid,
                    user,
                    refresh_hash: [round; 32],
                    created_at: now,
                    expires_at: later,
                })
                .await
                .unwrap();
            // Odd rounds: two tabs within the grace period (the successor is a function of
            // the token, so both present the same one): one rotation and one replay. Even
            // rounds, without grace: the second presentation is reuse.
            let grace = (round % 2 == 1).then(|| now.minus_secs(5));
            let new = [round.wrapping_add(100); 32];
            let (x, y) = both(
                {
                    let a = a.clone();
                    async move {
                        a.sessions()
                            .rotate([round; 32], new, now, later, grace)
                            .await
                            .unwrap()
                    }
                },
                {
                    let b = b.clone();
                    async move {
                        b.sessions()
                            .rotate([round; 32], new, now, later, grace)
                            .await
                            .unwrap()
                    }
                },
            )
            .await;
            let rotated = Rotation::Rotated { session: sid, user };
            let second = if grace.is_some() {
                Rotation::Replayed {
                    session: sid,
                    user,
                    rotated_at: now,
                }
            } else {
                Rotation::Reused { session: sid, user }
            };
            assert!(
                (x == rotated && y == second) || (x == second && y == rotated),
                "{} round {round}: {x:?} {y:?}",
                e.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_usage_stays_exact_under_concurrent_uploads_and_deletions() {
    for e in engines::all("race_usage_stays_exact_under_concurrent_uploads_and_deletions").await {
        let stores = [e.store.clone(), e.another().await];
        let owner = add_user(&stores[0], "busy", Role::User).await;
        let doomed: Vec<_> =
            futures_util::future::join_all((0..10).map(|_| add_file(&stores[0], owner, 5))).await;
        let start = Arc::new(Barrier::new(6));
        let mut tasks = Vec::new();
        for n in 0..6 {
            let store = stores[n % 2].clone();
            let start = start.clone();
            let mine: Vec<_> = doomed
                .iter()
                .skip(n)
                .step_by(6)
                .map(|f| f.file.id)
                .collect();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                for i in 0..10 {
                    add_file(&store, owner, 7).await;
                    if let Some(id) = mine.get(i) {
                        store.files().delete(*id, Timestamp::now()).await.unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            stores[1].users().used_bytes(owner).await.unwrap(),
            6 * 10 * 7,
            "{}",
            e.name
        );
    }
}
