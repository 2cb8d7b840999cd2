//! The audit trail: every method of `Audit`, on every engine.

use coffer::ids::Timestamp;
use coffer::meta::audit::{AuditEntry, ChainKey};

use crate::engines;

pub const KEY: ChainKey = ChainKey([7; 32]);

/// An entry for `event` at `at`.
pub fn entry(event: &str, at: Timestamp) -> AuditEntry {
    AuditEntry {
        id: uuid::Uuid::now_v7(),
        at,
        event: event.into(),
        actor_id: Some("actor".into()),
        subject_id: None,
        client_ip: Some("192.0.2.1".into()),
        detail: serde_json::json!({"k": [1, "two"], "a": null}),
    }
}

#[tokio::test]
async fn the_trail_is_one_chain_listed_newest_first_and_pruned_from_its_start() {
    for e in
        engines::all("the_trail_is_one_chain_listed_newest_first_and_pruned_from_its_start").await
    {
        let audit = e.store.audit();
        let now = Timestamp::now();
        let old = entry("old", Timestamp::from_unix_secs(1));
        audit
            .append(&KEY, vec![old.clone(), entry("a", now)])
            .await
            .unwrap();
        audit.append(&KEY, Vec::new()).await.unwrap();
        audit
            .append(
                &KEY,
                vec![entry("b", now), entry("c", now), entry("d", now)],
            )
            .await
            .unwrap();
        assert!(
            audit.verify_chain(&KEY).await.unwrap().is_empty(),
            "{}",
            e.name
        );
        assert!(
            !audit
                .verify_chain(&ChainKey([8; 32]))
                .await
                .unwrap()
                .is_empty()
        );

        let first = audit.list(None, 2).await.unwrap();
        let events: Vec<_> = first.items.iter().map(|c| c.entry.event.as_str()).collect();
        assert_eq!(events, ["d", "c"], "{}", e.name);
        assert!(first.more);
        let rest = audit.list(Some(first.items[1].seq), 10).await.unwrap();
        let events: Vec<_> = rest.items.iter().map(|c| c.entry.event.as_str()).collect();
        assert_eq!(events, ["b", "a", "old"]);
        assert!(!rest.more);
        let stored = &rest.items[2];
        assert_eq!(stored.seq, 1);
        assert_eq!(
            (
                stored.entry.id,
                stored.entry.at,
                stored.entry.actor_id.as_deref()
            ),
            (old.id, old.at, Some("actor"))
        );
        assert_eq!(stored.entry.detail, old.detail);
        assert_eq!(
            stored.detail_raw,
            old.detail.to_string(),
            "stored as hashed"
        );

        let page = audit.chain_page(2, 2).await.unwrap();
        assert_eq!(page.iter().map(|c| c.seq).collect::<Vec<_>>(), [3, 4]);

        assert_eq!(audit.anchor().await.unwrap().seq, 0);
        assert_eq!(
            audit.prune(Timestamp::from_unix_secs(100)).await.unwrap(),
            1,
            "{}",
            e.name
        );
        assert_eq!(
            audit.prune(Timestamp::from_unix_secs(100)).await.unwrap(),
            0
        );
        let anchor = audit.anchor().await.unwrap();
        assert_eq!(anchor.seq, 1);
        assert_eq!(anchor.hash.len(), 32);
        assert!(
            audit.verify_chain(&KEY).await.unwrap().is_empty(),
            "{}",
            e.name
        );
        audit.append(&KEY, vec![entry("e", now)]).await.unwrap();
        assert!(audit.verify_chain(&KEY).await.unwrap().is_empty());
        assert_eq!(audit.list(None, 1).await.unwrap().items[0].seq, 6);
    }
}
