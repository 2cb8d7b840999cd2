//! Black-box tests: the real binary on a loopback port, a real SQLite file, a real storage
//! directory. One binary so everything links once.

// A panic in a test or its harness is a failed test, not a crashed service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod helpers;

mod admin;
mod api_keys;
mod audit;
mod backup;
mod browser;
mod check;
mod cluster;
mod connections;
mod content_safety;
mod crash;
mod download;
mod encryption;
mod grants;
mod health;
mod links;
mod login;
mod login_timing;
mod middleware;
mod migrate;
mod multinode;
mod openapi;
mod paging;
mod postgres;
mod principal_cache;
mod proxy;
mod rate_limit;
mod readme;
mod refresh_grace;
mod registration;
mod repo;
mod resumable;
mod retention;
mod s3;
mod scan;
mod secrets;
mod stack_smoke;
mod startup;
mod tls;
mod tokens;
mod upload;
mod upload_limits;
mod view_urls;
mod webhooks;
mod wire;
