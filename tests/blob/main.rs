//! The blob backends against one contract: every case runs on the local filesystem (a temp
//! dir) and on an S3-compatible store (a fresh random prefix in the test bucket: Garage via
//! `scripts/test-stack`, or any store the `COFFER_TEST_S3_*` variables name). Without those
//! variables the S3 runs are skipped with one line on stderr, and the fs runs still happen.
//! The fault cases (an object store that refuses, stays silent or answers 503) need no store.

// A panic in a test or its harness is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod backends;
mod conformance;
mod faults;
mod throughput;
