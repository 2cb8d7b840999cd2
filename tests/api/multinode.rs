//! The multi-node harness itself (`helpers/front.rs`): two nodes on the stack's PostgreSQL and
//! Garage behind the round-robin front, whatever `COFFER_TEST_MULTINODE` says. One client's
//! consecutive requests land on different nodes, and what one node stored the other serves.
//! Without the stack these pass after the skip note.

use std::time::Duration;

use crate::helpers::TestApp;
use crate::helpers::fixtures::png;
use crate::helpers::stack;

/// Requests each node has logged an answer to on `route`.
fn answered(app: &TestApp, route: &str) -> Vec<usize> {
    let needle = format!("route=\"{route}\"");
    app.node_logs()
        .iter()
        .map(|log| {
            log.lines()
                .filter(|l| l.contains("finished processing request") && l.contains(&needle))
                .count()
        })
        .collect()
}

#[tokio::test]
async fn consecutive_requests_of_one_client_land_on_alternate_nodes() {
    let Some(_stack) = stack::require("consecutive_requests_of_one_client_land_on_alternate_nodes")
    else {
        return;
    };
    let app = TestApp::builder().two_nodes().spawn().await;
    assert!(app.is_multinode());
    let addrs = app.node_addrs();
    assert_eq!(addrs.len(), 2);
    assert!(!addrs.contains(&app.addr), "clients talk to the front");

    // Stored through one node, listed and read through both.
    let u = app.user("roamer").await;
    let bytes = png(50_000);
    let f = app.stored(&u.token, "roam.png", bytes.clone()).await;
    let id = f["id"].as_str().unwrap();
    for _ in 0..4 {
        assert_eq!(app.content_of(&u.token, id).await, bytes);
    }

    for _ in 0..10 {
        app.me().bearer(&u.token).expect(200).await;
    }
    let route = "/api/v1/users/me";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Each answer is logged just after it is sent: wait for all ten lines.
    while answered(&app, route).iter().sum::<usize>() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "answers logged: {:?}\n{}",
            answered(&app, route),
            app.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(answered(&app, route), vec![5, 5], "strict alternation");
}
