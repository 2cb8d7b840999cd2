//! The test stack itself (`scripts/stack`): PostgreSQL, the Garage cluster and clamd answer,
//! and S3 goes on with a Garage node down. Without the stack these pass after the skip note.

use crate::helpers::stack::{self, eicar};

#[test]
fn stack_postgres_answers_and_databases_are_per_test() {
    let Some(stack) = stack::require("stack_postgres_answers_and_databases_are_per_test") else {
        return;
    };
    let a = stack.fresh_database();
    let b = stack.fresh_database();
    assert_ne!(a.url, b.url);
    assert_eq!(a.psql("SELECT current_database()"), a.name);
    a.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (41)");
    assert_eq!(a.psql("SELECT x + 1 FROM t"), "42");
    // The other database does not see it.
    assert_eq!(
        b.psql("SELECT count(*) FROM pg_tables WHERE tablename = 't'"),
        "0"
    );
    let name = a.name.clone();
    drop(a);
    let left = stack::psql(
        &stack.database_url,
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    );
    assert_eq!(left, "0", "the test database is dropped with its TestDb");
}

#[test]
fn stack_s3_put_get_through_every_node() {
    let Some(stack) = stack::require("stack_s3_put_get_through_every_node") else {
        return;
    };
    let prefix = stack.fresh_prefix();
    let key = format!("{prefix}hello.txt");
    let body = b"hello, coffer".to_vec();
    assert_eq!(
        stack.s3(&stack.s3_endpoint, "PUT", &key, Some(&body)).0,
        200
    );
    // consistency_mode = "consistent": every node reads what node 1 wrote, at once.
    for n in 1..=stack.s3_endpoints.len() {
        let (status, got) = stack.s3(stack.s3_endpoint_of(n), "GET", &key, None);
        assert_eq!((status, got), (200, body.clone()), "GET through node {n}");
    }
    assert_eq!(stack.s3(&stack.s3_endpoint, "DELETE", &key, None).0, 204);
    assert_eq!(stack.s3(&stack.s3_endpoint, "GET", &key, None).0, 404);
}

#[test]
fn stack_clamd_answers_and_knows_eicar() {
    let Some(stack) = stack::require("stack_clamd_answers_and_knows_eicar") else {
        return;
    };
    assert_eq!(stack.clamd_command("PING").unwrap(), "PONG");
    assert_eq!(stack.clamd_scan(b"just some text").unwrap(), "stream: OK");
    let verdict = stack.clamd_scan(&eicar()).unwrap();
    assert_eq!(verdict, "stream: Coffer.Test.EICAR.UNOFFICIAL FOUND");
    // Anywhere in the stream, not only at its start.
    let mut wrapped = vec![b'x'; 100_000];
    wrapped.extend(eicar());
    wrapped.extend(vec![b'y'; 1000]);
    assert!(stack.clamd_scan(&wrapped).unwrap().ends_with(" FOUND"));
}

#[test]
fn stack_s3_goes_on_with_a_garage_node_down() {
    let Some(stack) = stack::require_exclusive("stack_s3_goes_on_with_a_garage_node_down") else {
        return;
    };
    let prefix = stack.fresh_prefix();
    let before = format!("{prefix}before");
    let during = format!("{prefix}during");
    assert_eq!(
        stack
            .s3(stack.s3_endpoint_of(1), "PUT", &before, Some(b"1"))
            .0,
        200
    );

    stack.garage_stop(3);
    let (n1, n2) = (stack.s3_endpoint_of(1), stack.s3_endpoint_of(2));
    assert_eq!(stack.s3(n1, "PUT", &during, Some(b"2")).0, 200);
    assert_eq!(stack.s3(n2, "GET", &during, None), (200, b"2".to_vec()));
    assert_eq!(stack.s3(n2, "GET", &before, None), (200, b"1".to_vec()));

    stack.garage_start(3);
    // Back, reconnected both ways: node 3 serves what was written while it was away.
    let n3 = stack.s3_endpoint_of(3);
    assert_eq!(stack.s3(n3, "GET", &during, None), (200, b"2".to_vec()));
    assert_eq!(stack.s3(n3, "PUT", &before, Some(b"3")).0, 200);
    assert_eq!(stack.s3(n1, "GET", &before, None), (200, b"3".to_vec()));
}

#[test]
fn stack_postgres_and_clamd_come_back() {
    let Some(stack) = stack::require_exclusive("stack_postgres_and_clamd_come_back") else {
        return;
    };
    let db = stack.fresh_database();
    db.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)");
    stack.pg_restart();
    assert_eq!(db.psql("SELECT x FROM kept"), "7");

    stack.clamd_stop();
    assert!(stack.clamd_command("PING").is_err(), "clamd stopped");
    stack.clamd_start();
    assert_eq!(stack.clamd_command("PING").unwrap(), "PONG");
}
