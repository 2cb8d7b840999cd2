//! coffer: a secure file-storage service.
//!
//! Uploads are streamed to storage under a hard size limit, checked by extension and magic
//! bytes, hashed on the way and stored under fresh UUID names; downloads are authenticated
//! and never leave the store's own key space. `ARCHITECTURE.md` (at the repository's top)
//! maps the layers, what may import what, and where each kind of work lives; `SECURITY.md`
//! holds the threat model.
//!
//! Layers, top to bottom (a module imports only from layers below its own):
//! entry ([`cli`], [`config`]) -> [`http`] -> [`state`] -> domain ([`auth`], [`ingest`],
//! [`download`], [`audit`], [`removal`], [`ops`], [`metrics`], [`limits`]) -> stores
//! ([`meta`], [`blob`], [`crypto`]) -> foundations ([`ids`], [`secrets`], [`net`],
//! [`blocking`], [`telemetry`]).

#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod blob;
pub mod blocking;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod download;
pub mod http;
pub mod ids;
pub mod ingest;
pub mod limits;
pub mod meta;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod removal;
pub mod secrets;
pub mod state;
pub mod telemetry;

pub use config::Config;
pub use http::server::App;
