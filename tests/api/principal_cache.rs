//! The in-process credential cache: a revocation drops what it revoked and nothing else, so
//! one user cannot empty the cache for everyone (issue 20, item 7).

use crate::helpers::TestApp;

#[tokio::test]
async fn another_users_key_churn_leaves_a_cached_credential_cached() {
    let app = TestApp::builder()
        .single_node("counts one process's principal-cache hits in its /metrics")
        .env("COFFER_AUTH__PRINCIPAL_CACHE_SECS", "600")
        .spawn()
        .await;
    let churner = app.user("churner").await;
    let bystander = app.user("bystander").await;
    let key = app.new_api_key(&bystander.token, "backend").await;
    let key = key["key"].as_str().unwrap();
    // Checked once against the database, then cached.
    assert_eq!(app.me().as_user(&bystander).status().await, 200);
    assert_eq!(app.me().api_key(key).status().await, 200);

    // The other user creates, uses (so it is cached too) and deletes keys in a loop: each
    // deleted key stops working at once.
    for i in 0..20 {
        let created = app.new_api_key(&churner.token, &format!("k{i}")).await;
        let k = created["key"].as_str().unwrap();
        assert_eq!(app.me().api_key(k).status().await, 200);
        let id = created["id"].as_str().unwrap();
        assert_eq!(app.delete_api_key(id).as_user(&churner).status().await, 204);
        app.me().api_key(k).problem(401).await;
    }
    // Its logout ends its own login only.
    assert_eq!(app.logout().as_user(&churner).status().await, 204);
    app.me().as_user(&churner).problem(401).await;

    // The bystander's token and key are still answered from the cache.
    let (hits, misses) = (
        app.metric("coffer_principal_cache_hits_total").await,
        app.metric("coffer_principal_cache_misses_total").await,
    );
    assert_eq!(app.me().as_user(&bystander).status().await, 200);
    assert_eq!(app.me().api_key(key).status().await, 200);
    assert_eq!(
        app.metric("coffer_principal_cache_hits_total").await - hits,
        2,
        "both were cache hits"
    );
    assert_eq!(
        app.metric("coffer_principal_cache_misses_total").await,
        misses
    );
    // 20 keys and one login were dropped by their revocations.
    assert!(app.metric("coffer_principal_cache_revoked_total").await >= 21);
}
