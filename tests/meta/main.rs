//! The metadata engines against one contract: every case runs on SQLite (a temp file) and on
//! PostgreSQL (a fresh database of the test stack's server, when `scripts/test-stack` or CI
//! provides one; otherwise those runs are skipped with one line on stderr). The race cases run
//! two stores on the same database at once, as two processes or two nodes would.

// A panic in a test or its harness is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[allow(dead_code)]
#[path = "../api/helpers/stack.rs"]
mod stack;

mod engines;

mod accounts;
mod audit;
mod cluster;
mod files;
mod links;
mod outbox;
mod postgres;
mod races;
