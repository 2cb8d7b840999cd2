//! What only the PostgreSQL engine has: a schema that nodes migrate together, a network that
//! fails, locks held elsewhere. Every failure of the database answers `Unavailable` (or `Busy`,
//! when the server cancels a statement stuck behind a lock) within the configured bounds, and
//! the engine recovers by itself. (The pool running dry is a unit test of the engine: no
//! interface call holds a connection longer than another waits for one.)

use std::time::{Duration, Instant};

use coffer::meta::audit::ChainKey;
use coffer::meta::migrations::LATEST;
use coffer::meta::postgres::{Settings, lock_keys};
use coffer::meta::users::Role;
use coffer::meta::{MetaError, MetaStore};

use crate::audit::{KEY, entry};
use crate::engines::{self, add_user, settings};
use crate::stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_nodes_starting_together_migrate_exactly_once() {
    let Some(stack) = stack::require("postgres_nodes_starting_together_migrate_exactly_once")
    else {
        return;
    };
    let db = stack.fresh_database();
    let s = settings(&db.url);
    let opened = futures_util::future::join_all((0..4).map(|_| MetaStore::open_postgres(&s))).await;
    for store in opened {
        assert!(store.unwrap().ping().await);
    }
    let want: Vec<String> = (1..=LATEST).map(|v| v.to_string()).collect();
    assert_eq!(
        db.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM coffer_schema"),
        want.join(",")
    );
}

#[tokio::test]
async fn postgres_a_database_newer_than_the_binary_is_refused() {
    let Some(stack) = stack::require("postgres_a_database_newer_than_the_binary_is_refused") else {
        return;
    };
    let db = stack.fresh_database();
    drop(MetaStore::open_postgres(&settings(&db.url)).await.unwrap());
    db.psql(&format!(
        "INSERT INTO coffer_schema (version, applied_at) VALUES ({}, 0)",
        LATEST + 1
    ));
    let err = MetaStore::open_postgres(&settings(&db.url))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, MetaError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("newer than this binary"), "{err}");
}

#[tokio::test]
async fn postgres_editing_or_deleting_an_audit_row_breaks_the_chain() {
    let Some(e) =
        engines::postgres("postgres_editing_or_deleting_an_audit_row_breaks_the_chain").await
    else {
        return;
    };
    let db = e.postgres().unwrap();
    let now = coffer::ids::Timestamp::now();
    let audit = e.store.audit();
    audit
        .append(
            &KEY,
            vec![entry("a", now), entry("b", now), entry("c", now)],
        )
        .await
        .unwrap();
    db.psql("UPDATE audit SET event = 'x' WHERE seq = 2");
    assert_eq!(audit.verify_chain(&KEY).await.unwrap().len(), 1);
    db.psql("UPDATE audit SET event = 'b' WHERE seq = 2");
    assert!(audit.verify_chain(&KEY).await.unwrap().is_empty());
    db.psql("DELETE FROM audit WHERE seq = 2");
    assert!(!audit.verify_chain(&KEY).await.unwrap().is_empty());
    assert!(
        !audit
            .verify_chain(&ChainKey([1; 32]))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Settings with short bounds, to watch them act.
fn tight(url: &str, pool_size: usize, call_secs: u64) -> Settings {
    Settings {
        url: url.to_owned(),
        pool_size,
        connect_timeout: Duration::from_secs(1),
        call_timeout: Duration::from_secs(call_secs),
    }
}

#[tokio::test]
async fn postgres_a_refused_or_silent_server_is_unavailable_within_the_connect_timeout() {
    // Nothing listens on a port we just freed: refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = MetaStore::open_postgres(&tight(
        &format!("postgres://coffer@127.0.0.1:{port}/x"),
        2,
        2,
    ))
    .await
    .err()
    .unwrap();
    assert!(matches!(err, MetaError::Unavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // A server that accepts and never answers: the connect timeout ends the wait.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let started = Instant::now();
    let err = MetaStore::open_postgres(&tight(&format!("postgres://coffer@{addr}/x"), 2, 2))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, MetaError::Unavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    holder.abort();
}

#[tokio::test]
async fn postgres_tls_settings_that_cannot_work_are_refused_at_start() {
    let err = MetaStore::open_postgres(&tight(
        "postgres://coffer@127.0.0.1:9/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        1,
        2,
    ))
    .await
    .err()
    .unwrap();
    assert!(matches!(err, MetaError::Config(_)), "{err}");
    assert!(err.to_string().contains("sslrootcert"), "{err}");

    let Some(stack) = stack::require("postgres_tls_settings_that_cannot_work_are_refused_at_start")
    else {
        return;
    };
    // The test server speaks no TLS: a URL that insists on it is refused, never downgraded.
    let db = stack.fresh_database();
    let err = MetaStore::open_postgres(&tight(&format!("{}?sslmode=require", db.url), 1, 2))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_call_stuck_on_a_lock_is_busy_at_its_deadline_then_recovers() {
    let Some(stack) =
        stack::require("postgres_a_call_stuck_on_a_lock_is_busy_at_its_deadline_then_recovers")
    else {
        return;
    };
    let db = stack.fresh_database();
    let store = MetaStore::open_postgres(&tight(&db.url, 1, 1))
        .await
        .unwrap();
    let user = add_user(&store, "someone", Role::User).await;
    // Another session holds the audit chain's lock: an append waits for it, but not forever.
    let (holder, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&lock_keys::AUDIT_CHAIN])
        .await
        .unwrap();
    let now = coffer::ids::Timestamp::now();
    let started = Instant::now();
    let err = store
        .audit()
        .append(&KEY, vec![entry("a", now)])
        .await
        .unwrap_err();
    // The server cancels the wait at its statement_timeout (3/4 of the call's): busy.
    assert!(matches!(err, MetaError::Busy), "{err}");
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(700)..Duration::from_secs(3)).contains(&took),
        "{took:?}"
    );

    // Lock released: the same store works again, and the chain is whole.
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&lock_keys::AUDIT_CHAIN])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.audit().append(&KEY, vec![entry("c", now)]).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => eprintln!("not yet: {e}"),
            Err(e) => panic!("did not recover: {e}"),
        }
    }
    assert_eq!(store.users().get(user).await.unwrap().unwrap().id, user);
    assert!(store.audit().verify_chain(&KEY).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_restart_is_unavailable_meanwhile_and_the_pool_recovers_by_itself() {
    let Some(stack) = stack::require_exclusive(
        "postgres_a_restart_is_unavailable_meanwhile_and_the_pool_recovers_by_itself",
    ) else {
        return;
    };
    let db = stack.fresh_database();
    let store = MetaStore::open_postgres(&tight(&db.url, 4, 2))
        .await
        .unwrap();
    let user = add_user(&store, "steady", Role::User).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut unavailable) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                match store.users().get(user).await {
                    Ok(Some(_)) => ok += 1,
                    Err(MetaError::Unavailable(_)) => unavailable += 1,
                    other => panic!("during a restart: {other:?}"),
                }
                assert!(started.elapsed() < Duration::from_secs(4), "a call hung");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, unavailable)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| stack.pg_restart());
    // Back by itself, without reopening the store.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.users().get(user).await.is_err() {
        assert!(Instant::now() < deadline, "the pool did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, unavailable) = probe.await.unwrap();
    eprintln!("during the restart: {ok} answers, {unavailable} unavailable");
    assert!(ok > 0);
    assert!(store.ping().await);
}
