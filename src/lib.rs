//! coffer: a secure file-storage service.
//!
//! Uploads are streamed to disk under a hard size limit, checked by extension and magic bytes,
//! hashed on the way and stored under fresh UUID names; downloads are authenticated and never
//! leave the canonical storage root. See `README.md` for the architecture and `SECURITY.md` for
//! the threat model.

#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod auth;
pub mod blob;
pub mod blocking;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod download;
pub mod error;
pub mod http;
pub mod ids;
pub mod ingest;
pub mod lifecycle;
pub mod meta;
pub mod ops;
pub mod retention;
pub mod secrets;
pub mod telemetry;

pub use app::App;
pub use config::Config;
