//! Files and the blob-deletion queue: every method of `Files`, on every engine.

use coffer::crypto::Sealing;
use coffer::ids::{FileId, Timestamp, UserId};
use coffer::meta::files::Inserted;
use coffer::meta::users::Role;

use crate::engines::{self, add_file, add_user, file};

#[tokio::test]
async fn files_are_visible_to_their_owner_until_they_expire() {
    for e in engines::all("files_are_visible_to_their_owner_until_they_expire").await {
        let files = e.store.files();
        let owner = add_user(&e.store, "owner", Role::User).await;
        let other = add_user(&e.store, "other", Role::User).await;
        let now = Timestamp::now();
        let mut f = file(owner, 42, now, Some(now.plus_secs(60)));
        f.sealing = Some(Sealing {
            key_id: "k1".into(),
            wrapped_key: vec![1, 2, 3],
        });
        assert_eq!(files.insert(f.clone()).await.unwrap(), Inserted::Inserted);
        let got = files
            .get_visible(f.file.id, Some(owner), now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                got.file.filename.as_str(),
                got.file.size,
                got.file.sha256.as_str(),
                got.file.created_at,
                got.file.expires_at,
                got.owner_id,
                got.blob_key.as_str(),
                got.sealing
                    .as_ref()
                    .map(|s| (s.key_id.as_str(), s.wrapped_key.clone())),
            ),
            (
                f.file.filename.as_str(),
                42,
                f.file.sha256.as_str(),
                now,
                Some(now.plus_secs(60)),
                owner,
                f.blob_key.as_str(),
                Some(("k1", vec![1, 2, 3])),
            ),
            "{}",
            e.name
        );
        assert!(
            files
                .get_visible(f.file.id, Some(other), now)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            files
                .get_visible(f.file.id, None, now)
                .await
                .unwrap()
                .is_some(),
            "admins"
        );
        assert!(
            files
                .get_visible(f.file.id, Some(owner), now.plus_secs(60))
                .await
                .unwrap()
                .is_none(),
            "expired: {}",
            e.name
        );
        let then = files
            .get_visible_then(
                f.file.id,
                Some(owner),
                now,
                Box::new(|f| Some(bytes::Bytes::from(f.blob_key.clone()))),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(then.1.unwrap(), f.blob_key.as_bytes());
        assert!(
            files
                .get_visible(FileId::new(), None, now)
                .await
                .unwrap()
                .is_none()
        );
        assert!(files.blob_key_exists(f.blob_key.clone()).await.unwrap());
        assert!(!files.blob_key_exists("blobs/none".into()).await.unwrap());
    }
}

#[tokio::test]
async fn usage_follows_the_rows() {
    for e in engines::all("usage_follows_the_rows").await {
        let owner = add_user(&e.store, "owner", Role::User).await;
        let users = e.store.users();
        assert_eq!(users.used_bytes(owner).await.unwrap(), 0);
        let a = add_file(&e.store, owner, 100).await;
        let b = add_file(&e.store, owner, 23).await;
        assert_eq!(users.used_bytes(owner).await.unwrap(), 123, "{}", e.name);
        e.store
            .files()
            .delete(a.file.id, Timestamp::now())
            .await
            .unwrap();
        assert_eq!(users.used_bytes(owner).await.unwrap(), 23, "{}", e.name);
        e.store
            .files()
            .delete_if_blob(b.file.id, b.blob_key.clone(), Timestamp::now())
            .await
            .unwrap();
        assert_eq!(users.used_bytes(owner).await.unwrap(), 0, "{}", e.name);
        assert_eq!(users.used_bytes(UserId::new()).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn owned_listing_pages_newest_first_without_expired_files() {
    for e in engines::all("owned_listing_pages_newest_first_without_expired_files").await {
        let files = e.store.files();
        let owner = add_user(&e.store, "owner", Role::User).await;
        let other = add_user(&e.store, "other", Role::User).await;
        let now = Timestamp::now();
        let mut live = Vec::new();
        for i in 0..7 {
            // Two share a creation time: the id breaks the tie.
            let at = Timestamp(now.0 - 1000 + if i < 2 { 0 } else { i });
            let f = file(owner, 1, at, None);
            files.insert(f.clone()).await.unwrap();
            live.push((f.file.created_at, f.file.id));
        }
        files
            .insert(file(owner, 1, now, Some(now.minus_secs(1))))
            .await
            .unwrap();
        add_file(&e.store, other, 1).await;
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = files.list_owned(owner, after, 3, now).await.unwrap();
            after = page.items.last().map(|f| (f.created_at, f.id));
            seen.extend(page.items.iter().map(|f| (f.created_at, f.id)));
            if !page.more {
                break;
            }
        }
        live.sort_by(|a, b| b.cmp(a));
        assert_eq!(seen, live, "{}", e.name);
    }
}

#[tokio::test]
async fn deleting_a_row_queues_its_blob_in_the_same_transaction() {
    for e in engines::all("deleting_a_row_queues_its_blob_in_the_same_transaction").await {
        let files = e.store.files();
        let owner = add_user(&e.store, "owner", Role::User).await;
        let (a, b) = (
            add_file(&e.store, owner, 1).await,
            add_file(&e.store, owner, 1).await,
        );
        let now = Timestamp::now();
        assert_eq!(
            files.delete(a.file.id, now).await.unwrap().as_deref(),
            Some(a.blob_key.as_str()),
            "{}",
            e.name
        );
        assert_eq!(files.delete(a.file.id, now).await.unwrap(), None);
        assert!(
            !files
                .delete_if_blob(b.file.id, "blobs/another".into(), now.plus_secs(1))
                .await
                .unwrap()
        );
        assert!(
            files
                .delete_if_blob(b.file.id, b.blob_key.clone(), now.plus_secs(1))
                .await
                .unwrap()
        );
        assert_eq!(
            files.queued_deletions(10).await.unwrap(),
            [a.blob_key.clone(), b.blob_key.clone()],
            "oldest first: {}",
            e.name
        );
        assert_eq!(
            files.queued_deletions(1).await.unwrap(),
            [a.blob_key.as_str()]
        );
        files.deletion_done(a.blob_key.clone()).await.unwrap();
        files.deletion_done(a.blob_key.clone()).await.unwrap();
        assert_eq!(
            files.queued_deletions(10).await.unwrap(),
            [b.blob_key.as_str()]
        );
        assert!(!files.blob_key_exists(b.blob_key.clone()).await.unwrap());
    }
}

#[tokio::test]
async fn maintenance_walks_see_every_row() {
    for e in engines::all("maintenance_walks_see_every_row").await {
        let files = e.store.files();
        let a = add_user(&e.store, "a", Role::User).await;
        let b = add_user(&e.store, "b", Role::User).await;
        let now = Timestamp::now();
        let mut all = Vec::new();
        for owner in [a, a, a, b, b] {
            all.push(add_file(&e.store, owner, 1).await.file.id);
        }
        let soon = file(b, 1, now, Some(now.plus_secs(5)));
        let sooner = file(b, 1, now, Some(now.plus_secs(2)));
        for f in [&soon, &sooner] {
            files.insert(f.clone()).await.unwrap();
            all.push(f.file.id);
        }
        let mut of_a: Vec<_> = files
            .all_of_owner(a)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.file.id)
            .collect();
        of_a.sort();
        let mut want: Vec<_> = all[..3].to_vec();
        want.sort();
        assert_eq!(of_a, want, "{}", e.name);
        assert!(files.expired(now, 10).await.unwrap().is_empty());
        let expired: Vec<_> = files
            .expired(now.plus_secs(10), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.file.id)
            .collect();
        assert_eq!(expired, [sooner.file.id, soon.file.id], "{}", e.name);
        assert_eq!(files.expired(now.plus_secs(10), 1).await.unwrap().len(), 1);

        let mut scanned = Vec::new();
        let mut after = None;
        loop {
            let page = files.scan(after, 2).await.unwrap();
            after = page.last().map(|f| f.file.id);
            scanned.extend(page.iter().map(|f| f.file.id));
            if page.len() < 2 {
                break;
            }
        }
        all.sort();
        assert_eq!(scanned, all, "id order, each once: {}", e.name);
    }
}

#[tokio::test]
async fn sealing_and_rewrapping_only_replace_what_was_read() {
    for e in engines::all("sealing_and_rewrapping_only_replace_what_was_read").await {
        let files = e.store.files();
        let owner = add_user(&e.store, "owner", Role::User).await;
        let f = add_file(&e.store, owner, 5).await;
        let now = Timestamp::now();
        let sealing = |k: &str, w: u8| Sealing {
            key_id: k.into(),
            wrapped_key: vec![w; 40],
        };
        let sealed_key = format!("{}.sealed", f.blob_key);
        assert!(
            !files
                .seal_blob(
                    f.file.id,
                    "blobs/wrong".into(),
                    sealed_key.clone(),
                    sealing("k1", 1),
                    now
                )
                .await
                .unwrap()
        );
        assert!(
            files
                .seal_blob(
                    f.file.id,
                    f.blob_key.clone(),
                    sealed_key.clone(),
                    sealing("k1", 1),
                    now
                )
                .await
                .unwrap(),
            "{}",
            e.name
        );
        assert!(
            !files
                .seal_blob(
                    f.file.id,
                    sealed_key.clone(),
                    "blobs/x".into(),
                    sealing("k1", 1),
                    now
                )
                .await
                .unwrap(),
            "already sealed"
        );
        assert_eq!(
            files.queued_deletions(10).await.unwrap(),
            [f.blob_key.as_str()]
        );
        let got = files
            .get_visible(f.file.id, None, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.blob_key, sealed_key);
        assert_eq!(got.sealing.as_ref().unwrap().key_id, "k1");

        assert!(
            !files
                .rewrap(f.file.id, sealing("k1", 9), sealing("k2", 2))
                .await
                .unwrap(),
            "not the key that was read"
        );
        assert!(
            files
                .rewrap(f.file.id, sealing("k1", 1), sealing("k2", 2))
                .await
                .unwrap(),
            "{}",
            e.name
        );
        let got = files
            .get_visible(f.file.id, None, now)
            .await
            .unwrap()
            .unwrap();
        let s = got.sealing.unwrap();
        assert_eq!((s.key_id.as_str(), s.wrapped_key), ("k2", vec![2; 40]));
    }
}
