//! Share links: every method of `Links`, on every engine.

use coffer::ids::{LinkId, Timestamp};
use coffer::meta::links::{LinkState, NewLink};
use coffer::meta::users::Role;

use crate::engines::{self, add_file, add_user, file};

/// A link to `file` with token hash `[tag; 32]`.
pub fn link(
    file: coffer::ids::FileId,
    tag: u8,
    expires_at: Timestamp,
    max: Option<u32>,
) -> NewLink {
    NewLink {
        id: LinkId::new(),
        file_id: file,
        token_hash: [tag; 32],
        created_at: Timestamp::now(),
        expires_at,
        max_downloads: max,
    }
}

fn state(s: &LinkState) -> &'static str {
    match s {
        LinkState::Unknown => "unknown",
        LinkState::Expired => "expired",
        LinkState::UsedUp => "used up",
        LinkState::Live { .. } => "live",
    }
}

#[tokio::test]
async fn links_are_made_for_live_owned_files_and_count_their_downloads() {
    for e in engines::all("links_are_made_for_live_owned_files_and_count_their_downloads").await {
        let links = e.store.links();
        let owner = add_user(&e.store, "owner", Role::User).await;
        let other = add_user(&e.store, "other", Role::User).await;
        let f = add_file(&e.store, owner, 3).await;
        let now = Timestamp::now();
        let hour = now.plus_secs(3600);

        let two = link(f.file.id, 1, hour, Some(2));
        assert!(
            !links
                .insert_for_owner(two.clone(), other, now)
                .await
                .unwrap(),
            "not theirs"
        );
        assert!(
            links
                .insert_for_owner(two.clone(), owner, now)
                .await
                .unwrap(),
            "{}",
            e.name
        );
        let expiring = file(owner, 1, now, Some(now.plus_secs(1)));
        e.store.files().insert(expiring.clone()).await.unwrap();
        assert!(
            !links
                .insert_for_owner(
                    link(expiring.file.id, 2, hour, None),
                    owner,
                    now.plus_secs(2)
                )
                .await
                .unwrap(),
            "the file expired: {}",
            e.name
        );
        assert!(
            !links
                .insert_for_owner(link(coffer::ids::FileId::new(), 3, hour, None), owner, now)
                .await
                .unwrap()
        );

        match links.resolve([1; 32], now).await.unwrap() {
            LinkState::Live { id, file } => {
                assert_eq!(
                    (id, file.file.id, file.owner_id),
                    (two.id, f.file.id, owner)
                );
                assert_eq!(file.blob_key, f.blob_key);
            }
            other => panic!("{}: {}", e.name, state(&other)),
        }
        assert!(links.consume(two.id, now).await.unwrap());
        assert!(links.consume(two.id, now).await.unwrap());
        assert!(
            !links.consume(two.id, now).await.unwrap(),
            "budget spent: {}",
            e.name
        );
        assert_eq!(
            state(&links.resolve([1; 32], now).await.unwrap()),
            "used up"
        );
        assert_eq!(
            state(&links.resolve([9; 32], now).await.unwrap()),
            "unknown"
        );

        let unlimited = link(f.file.id, 4, now.plus_secs(10), None);
        links
            .insert_for_owner(unlimited.clone(), owner, now)
            .await
            .unwrap();
        for _ in 0..5 {
            assert!(links.consume(unlimited.id, now).await.unwrap());
        }
        let late = now.plus_secs(11);
        assert!(!links.consume(unlimited.id, late).await.unwrap(), "expired");
        assert_eq!(
            state(&links.resolve([4; 32], late).await.unwrap()),
            "expired",
            "{}",
            e.name
        );

        // A link on a file whose retention ran out is unknown; so is one whose file is gone.
        let on_expiring = file(owner, 1, now, Some(now.plus_secs(100)));
        e.store.files().insert(on_expiring.clone()).await.unwrap();
        links
            .insert_for_owner(link(on_expiring.file.id, 5, hour, None), owner, now)
            .await
            .unwrap();
        assert_eq!(state(&links.resolve([5; 32], now).await.unwrap()), "live");
        assert_eq!(
            state(&links.resolve([5; 32], now.plus_secs(100)).await.unwrap()),
            "unknown",
            "{}",
            e.name
        );
        e.store
            .files()
            .delete(on_expiring.file.id, now)
            .await
            .unwrap();
        assert_eq!(
            state(&links.resolve([5; 32], now).await.unwrap()),
            "unknown"
        );

        assert_eq!(
            links.delete_owned(two.id, other).await.unwrap(),
            None,
            "not theirs"
        );
        assert_eq!(
            links.delete_owned(two.id, owner).await.unwrap(),
            Some(f.file.id)
        );
        assert_eq!(links.delete_owned(two.id, owner).await.unwrap(), None);
        assert_eq!(
            state(&links.resolve([1; 32], now).await.unwrap()),
            "unknown"
        );

        assert_eq!(links.prune_expired(now).await.unwrap(), 0);
        assert_eq!(links.prune_expired(late).await.unwrap(), 1, "{}", e.name);
        assert_eq!(
            state(&links.resolve([4; 32], late).await.unwrap()),
            "unknown"
        );
    }
}
