//! Users, logins and API keys: every method of `Users`, `Sessions` and `ApiKeys`, and the
//! maintenance calls, on every engine.

use coffer::ids::{ApiKeyId, SessionId, Timestamp, UserId};
use coffer::meta::api_keys::{ApiKey, NewApiKey};
use coffer::meta::sessions::{NewSession, Rotation};
use coffer::meta::users::{Deleted, Inserted, Locked, Role, RoleChange};

use crate::engines::{self, add_file, add_user, user};

#[tokio::test]
async fn usernames_and_emails_are_unique_case_insensitively() {
    for e in engines::all("usernames_and_emails_are_unique_case_insensitively").await {
        let users = e.store.users();
        let alice = user("alice", Role::User);
        assert_eq!(
            users.insert(alice.clone()).await.unwrap(),
            Inserted::Created
        );
        let mut dup = user("ALICE", Role::User);
        dup.email = "other@example.com".into();
        assert_eq!(
            users.insert(dup).await.unwrap(),
            Inserted::UsernameTaken,
            "{}",
            e.name
        );
        let mut dup = user("bob", Role::User);
        dup.email = "Alice@Example.COM".into();
        assert_eq!(
            users.insert(dup).await.unwrap(),
            Inserted::EmailTaken,
            "{}",
            e.name
        );
        // SQLite's NOCASE folds ASCII only: these are different names on both engines.
        assert_eq!(
            users.insert(user("\u{c9}mile", Role::User)).await.unwrap(),
            Inserted::Created
        );
        assert_eq!(
            users.insert(user("\u{e9}mile", Role::User)).await.unwrap(),
            Inserted::Created,
            "{}",
            e.name
        );

        let login = users.for_login("aLiCe").await.unwrap();
        let creds = login.credentials.unwrap();
        assert_eq!(creds.user.id, alice.id);
        assert_eq!(creds.password_hash, alice.password_hash);
        assert!(
            users
                .for_login("nobody")
                .await
                .unwrap()
                .credentials
                .is_none()
        );
        let got = users.get(alice.id).await.unwrap().unwrap();
        assert_eq!(
            (
                got.username.as_str(),
                got.email.as_str(),
                got.role,
                got.created_at
            ),
            ("alice", "alice@example.com", Role::User, alice.created_at),
            "{}",
            e.name
        );
        assert!(users.get(UserId::new()).await.unwrap().is_none());
        assert!(e.store.ping().await);
        e.store.checkpoint().await.unwrap();
    }
}

#[tokio::test]
async fn user_listing_pages_cover_everyone_once_newest_first() {
    for e in engines::all("user_listing_pages_cover_everyone_once_newest_first").await {
        let users = e.store.users();
        // Two share a creation time: the id breaks the tie.
        let at = Timestamp::now();
        for i in 0..7 {
            let mut u = user(&format!("user{i}"), Role::User);
            u.created_at = if i < 2 { at } else { Timestamp(at.0 + i) };
            users.insert(u).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = users.list(after, 3).await.unwrap();
            assert!(page.items.len() <= 3);
            after = page.items.last().map(|u| (u.created_at, u.id));
            seen.extend(page.items.into_iter().map(|u| (u.created_at, u.id)));
            if !page.more {
                break;
            }
        }
        assert_eq!(seen.len(), 7, "{}", e.name);
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(seen, sorted, "newest first, ties by id: {}", e.name);
    }
}

#[tokio::test]
async fn password_costs_follow_the_stored_hashes() {
    for e in engines::all("password_costs_follow_the_stored_hashes").await {
        let users = e.store.users();
        let phc = |m: u32| {
            format!(
                "$argon2id$v=19$m={m},t=2,p=1$c29tZXNhbHRzb21lc2FsdA$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY"
            )
        };
        let cost = |m: u32| format!("$argon2id$v=19$m={m},t=2,p=1$43");
        let costs = async || users.for_login("x").await.unwrap().costs;
        let mut a = user("alice", Role::User);
        a.password_hash = phc(19456);
        let mut b = user("bob", Role::User);
        b.password_hash = phc(65536);
        let carol = user("carol", Role::User);
        for u in [&a, &b, &carol] {
            users.insert(u.clone()).await.unwrap();
        }
        assert_eq!(costs().await, [cost(19456), cost(65536)], "{}", e.name);
        users.set_password_hash(b.id, phc(19456)).await.unwrap();
        assert_eq!(costs().await, [cost(19456)], "{}", e.name);
        users.set_password_hash(carol.id, phc(4096)).await.unwrap();
        // Byte order on both engines, whatever the database's collation.
        assert_eq!(costs().await, [cost(19456), cost(4096)], "{}", e.name);
        users.lock(carol.id).await.unwrap();
        users.delete(a.id).await.unwrap();
        assert_eq!(costs().await, [cost(19456)], "{}", e.name);
        users.delete(b.id).await.unwrap();
        assert!(costs().await.is_empty(), "{}", e.name);
    }
}

#[tokio::test]
async fn the_last_administrator_is_neither_demoted_nor_locked() {
    for e in engines::all("the_last_administrator_is_neither_demoted_nor_locked").await {
        let users = e.store.users();
        let a = add_user(&e.store, "root_a", Role::Admin).await;
        let b = add_user(&e.store, "root_b", Role::Admin).await;
        let plain = add_user(&e.store, "plain", Role::User).await;
        match users.set_role(a, Role::User).await.unwrap() {
            RoleChange::Changed(u) => assert_eq!((u.id, u.role), (a, Role::User)),
            other => panic!("{}: {other:?}", e.name),
        }
        assert!(matches!(
            users.set_role(b, Role::User).await.unwrap(),
            RoleChange::LastAdmin
        ));
        assert_eq!(
            users.lock(b).await.unwrap(),
            Locked::LastAdmin,
            "{}",
            e.name
        );
        assert!(matches!(
            users.set_role(UserId::new(), Role::Admin).await.unwrap(),
            RoleChange::NoUser
        ));
        assert_eq!(users.lock(UserId::new()).await.unwrap(), Locked::NoUser);
        // A second administrator again: now b may go, and a locked one counts for nothing.
        assert!(matches!(
            users.set_role(plain, Role::Admin).await.unwrap(),
            RoleChange::Changed(_)
        ));
        assert_eq!(users.lock(b).await.unwrap(), Locked::Locked, "{}", e.name);
        assert!(matches!(
            users.set_role(plain, Role::User).await.unwrap(),
            RoleChange::LastAdmin
        ));
        assert_eq!(users.get(b).await.unwrap().unwrap().role, Role::Admin);
    }
}

#[tokio::test]
async fn a_locked_account_speaks_for_no_one_and_goes_once_it_owns_nothing() {
    for e in engines::all("a_locked_account_speaks_for_no_one_and_goes_once_it_owns_nothing").await
    {
        let (users, sessions, keys) = (e.store.users(), e.store.sessions(), e.store.api_keys());
        let u = add_user(&e.store, "leaving", Role::User).await;
        let now = Timestamp::now();
        let sid = SessionId::new();
        sessions
            .create(NewSession {
                id: sid,
                user: u,
                refresh_hash: [1; 32],
                created_at: now,
                expires_at: now.plus_secs(60),
            })
            .await
            .unwrap();
        assert!(keys.insert(api_key(u, "pfx_leaving_")).await.unwrap());
        let kept = add_file(&e.store, u, 10).await;

        assert_eq!(users.lock(u).await.unwrap(), Locked::Locked, "{}", e.name);
        assert_eq!(
            sessions
                .live_principal(sid, u, "j".into(), now)
                .await
                .unwrap(),
            None,
            "{}",
            e.name
        );
        assert!(keys.find_by_prefix("pfx_leaving_").await.unwrap().is_none());
        assert!(keys.list(u).await.unwrap().is_empty(), "keys are gone");
        // A login verified just before the lock and stored after it is no principal either.
        let late = SessionId::new();
        sessions
            .create(NewSession {
                id: late,
                user: u,
                refresh_hash: [2; 32],
                created_at: now,
                expires_at: now.plus_secs(60),
            })
            .await
            .unwrap();
        assert_eq!(
            sessions
                .live_principal(late, u, "j".into(), now)
                .await
                .unwrap(),
            None
        );
        // A rehash racing the deletion does not unlock it.
        users
            .set_password_hash(u, "$argon2id$new".into())
            .await
            .unwrap();
        let creds = users
            .for_login("leaving")
            .await
            .unwrap()
            .credentials
            .unwrap();
        assert_eq!(creds.password_hash, "!locked", "{}", e.name);
        // No file lands after the lock.
        let late_file = engines::file(u, 1, now, None);
        assert_eq!(
            e.store.files().insert(late_file).await.unwrap(),
            coffer::meta::files::Inserted::OwnerGone,
            "{}",
            e.name
        );

        assert_eq!(
            users.delete(u).await.unwrap(),
            Deleted::OwnsFiles,
            "{}",
            e.name
        );
        assert!(
            e.store
                .files()
                .delete(kept.file.id, now)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            users.delete(u).await.unwrap(),
            Deleted::Deleted,
            "{}",
            e.name
        );
        assert_eq!(
            users.delete(u).await.unwrap(),
            Deleted::NoUser,
            "{}",
            e.name
        );
        assert!(users.get(u).await.unwrap().is_none());
        assert_eq!(
            e.store
                .files()
                .insert(engines::file(u, 1, now, None))
                .await
                .unwrap(),
            coffer::meta::files::Inserted::OwnerGone,
            "nor once it is gone (no foreign-key error): {}",
            e.name
        );
    }
}

fn api_key(user: UserId, prefix: &str) -> NewApiKey {
    NewApiKey {
        key: ApiKey {
            id: ApiKeyId::new(),
            name: format!("key {prefix}"),
            prefix: prefix.into(),
            created_at: Timestamp::now(),
            expires_at: None,
        },
        user_id: user,
        hash: [7; 32],
    }
}

#[tokio::test]
async fn api_keys_are_found_by_prefix_listed_and_deleted_by_their_owner() {
    for e in engines::all("api_keys_are_found_by_prefix_listed_and_deleted_by_their_owner").await {
        let keys = e.store.api_keys();
        let owner = add_user(&e.store, "owner", Role::Admin).await;
        let other = add_user(&e.store, "other", Role::User).await;
        let mut older = api_key(owner, "pfx_aaaaaaaa");
        older.key.created_at = Timestamp(older.key.created_at.0 - 10);
        older.key.expires_at = Some(Timestamp::now().plus_secs(3600));
        let newer = api_key(owner, "pfx_bbbbbbbb");
        assert!(keys.insert(older.clone()).await.unwrap());
        assert!(keys.insert(newer.clone()).await.unwrap());
        assert!(
            !keys.insert(api_key(other, "pfx_aaaaaaaa")).await.unwrap(),
            "a prefix collision is an outcome: {}",
            e.name
        );

        let found = keys.find_by_prefix("pfx_aaaaaaaa").await.unwrap().unwrap();
        assert_eq!(
            (
                found.id,
                found.user_id,
                found.role,
                found.hash,
                found.expires_at
            ),
            (
                owner_key_id(&older),
                owner,
                Role::Admin,
                vec![7; 32],
                older.key.expires_at
            ),
            "{}",
            e.name
        );
        assert!(keys.find_by_prefix("pfx_nothing_").await.unwrap().is_none());
        let listed: Vec<_> = keys
            .list(owner)
            .await
            .unwrap()
            .iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(
            listed,
            [newer.key.id, older.key.id],
            "newest first: {}",
            e.name
        );
        assert!(keys.list(other).await.unwrap().is_empty());

        assert!(
            !keys.delete(other, older.key.id).await.unwrap(),
            "not theirs"
        );
        assert!(keys.delete(owner, older.key.id).await.unwrap());
        assert!(!keys.delete(owner, older.key.id).await.unwrap());
        assert!(keys.find_by_prefix("pfx_aaaaaaaa").await.unwrap().is_none());
    }
}

fn owner_key_id(k: &NewApiKey) -> ApiKeyId {
    k.key.id
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_its_login() {
    for e in engines::all("refresh_tokens_rotate_and_a_reused_one_revokes_its_login").await {
        let s = e.store.sessions();
        let uid = add_user(&e.store, "carol", Role::User).await;
        let sid = SessionId::new();
        let now = Timestamp::now();
        let later = now.plus_secs(3600);
        s.create(NewSession {
            id: sid,
            user: uid,
            refresh_hash: [1; 32],
            created_at: now,
            expires_at: later,
        })
        .await
        .unwrap();
        assert_eq!(
            s.live_principal(sid, uid, "j1".into(), now).await.unwrap(),
            Some(Role::User)
        );
        assert_eq!(
            s.live_principal(sid, UserId::new(), "j1".into(), now)
                .await
                .unwrap(),
            None,
            "another user's token"
        );
        let rotated = Rotation::Rotated {
            session: sid,
            user: uid,
        };
        assert_eq!(
            s.rotate([1; 32], [2; 32], now, later, None).await.unwrap(),
            rotated
        );
        assert_eq!(
            s.rotate([1; 32], [3; 32], now, later, None).await.unwrap(),
            Rotation::Reused {
                session: sid,
                user: uid
            },
            "{}",
            e.name
        );
        assert_eq!(
            s.rotate([2; 32], [4; 32], now, later, None).await.unwrap(),
            Rotation::Invalid,
            "the login is revoked: {}",
            e.name
        );
        assert_eq!(
            s.live_principal(sid, uid, "j1".into(), now).await.unwrap(),
            None
        );
        assert_eq!(
            s.rotate([9; 32], [5; 32], now, later, None).await.unwrap(),
            Rotation::Invalid
        );

        // An expired token is invalid, not reuse.
        let short = SessionId::new();
        s.create(NewSession {
            id: short,
            user: uid,
            refresh_hash: [6; 32],
            created_at: now,
            expires_at: now.plus_secs(1),
        })
        .await
        .unwrap();
        assert_eq!(
            s.rotate([6; 32], [7; 32], now.plus_secs(2), later, None)
                .await
                .unwrap(),
            Rotation::Invalid
        );
        assert_eq!(
            s.live_principal(short, uid, "j".into(), now.plus_secs(2))
                .await
                .unwrap(),
            None,
            "an expired login"
        );
    }
}

#[tokio::test]
async fn within_the_grace_only_the_token_rotated_last_replays() {
    for e in engines::all("within_the_grace_only_the_token_rotated_last_replays").await {
        let s = e.store.sessions();
        let uid = add_user(&e.store, "dave", Role::User).await;
        let now = Timestamp::now();
        let later = now.plus_secs(3600);
        let grace = Some(now.minus_secs(5));
        let new = |id, hash| NewSession {
            id,
            user: uid,
            refresh_hash: hash,
            created_at: now,
            expires_at: later,
        };
        let sid = SessionId::new();
        s.create(new(sid, [1; 32])).await.unwrap();
        s.rotate([1; 32], [2; 32], now, later, grace).await.unwrap();
        for _ in 0..2 {
            assert_eq!(
                s.rotate([1; 32], [2; 32], now, later, grace).await.unwrap(),
                Rotation::Replayed {
                    session: sid,
                    user: uid,
                    rotated_at: now,
                },
                "{}",
                e.name
            );
        }
        assert!(matches!(
            s.rotate([1; 32], [7; 32], now, later, grace).await.unwrap(),
            Rotation::Reused { .. }
        ));
        assert_eq!(
            s.live_principal(sid, uid, "j".into(), now).await.unwrap(),
            None
        );

        // Rotated before the grace began, or two rotations ago: reuse.
        let sid = SessionId::new();
        s.create(new(sid, [3; 32])).await.unwrap();
        s.rotate([3; 32], [4; 32], now, later, grace).await.unwrap();
        assert!(matches!(
            s.rotate([3; 32], [4; 32], now, later, Some(now.plus_secs(1)))
                .await
                .unwrap(),
            Rotation::Reused { .. }
        ));
        let sid = SessionId::new();
        s.create(new(sid, [5; 32])).await.unwrap();
        s.rotate([5; 32], [6; 32], now, later, grace).await.unwrap();
        s.rotate([6; 32], [8; 32], now, later, grace).await.unwrap();
        assert!(matches!(
            s.rotate([5; 32], [6; 32], now, later, grace).await.unwrap(),
            Rotation::Reused { .. }
        ));
        assert_eq!(
            s.rotate([8; 32], [9; 32], now, later, grace).await.unwrap(),
            Rotation::Invalid,
            "{}",
            e.name
        );
    }
}

#[tokio::test]
async fn logout_ends_the_login_and_its_token_and_prune_forgets_the_expired() {
    for e in engines::all("logout_ends_the_login_and_its_token_and_prune_forgets_the_expired").await
    {
        let s = e.store.sessions();
        let uid = add_user(&e.store, "erin", Role::User).await;
        let now = Timestamp::now();
        let (a, b) = (SessionId::new(), SessionId::new());
        for (id, hash) in [(a, [1; 32]), (b, [2; 32])] {
            s.create(NewSession {
                id,
                user: uid,
                refresh_hash: hash,
                created_at: now,
                expires_at: now.plus_secs(60),
            })
            .await
            .unwrap();
        }
        s.logout(a, "jti-a".into(), now.plus_secs(10), now)
            .await
            .unwrap();
        // Twice is harmless.
        s.logout(a, "jti-a".into(), now.plus_secs(10), now)
            .await
            .unwrap();
        assert_eq!(
            s.live_principal(a, uid, "other".into(), now).await.unwrap(),
            None
        );
        assert_eq!(
            s.live_principal(b, uid, "jti-a".into(), now).await.unwrap(),
            None,
            "the revoked access token, whatever login it names"
        );
        assert_eq!(
            s.live_principal(b, uid, "jti-b".into(), now).await.unwrap(),
            Some(Role::User),
            "{}",
            e.name
        );
        assert_eq!(
            s.rotate([1; 32], [3; 32], now, now.plus_secs(60), None)
                .await
                .unwrap(),
            Rotation::Invalid
        );
        // At +11 s only the revocation has expired; at +61 s the logins and tokens too.
        assert_eq!(s.prune(now.plus_secs(11)).await.unwrap(), 1, "{}", e.name);
        assert_eq!(s.prune(now.plus_secs(61)).await.unwrap(), 2, "{}", e.name);
        assert_eq!(s.prune(now.plus_secs(61)).await.unwrap(), 0);
        assert_eq!(
            s.live_principal(b, uid, "jti-b".into(), now).await.unwrap(),
            None
        );
    }
}
