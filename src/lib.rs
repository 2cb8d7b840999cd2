//! coffer: a secure file-storage service.
//!
//! Uploads are streamed to storage under a hard size limit, checked by extension and magic
//! bytes, hashed on the way and stored under fresh UUID names; downloads are authenticated
//! and never leave the store's own key space. `ARCHITECTURE.md` (at the repository's top)
//! maps the layers, what may import what, and where each kind of work lives; `SECURITY.md`
//! holds the threat model.
//!
//! Layers, top to bottom (a module imports only from layers below its own):
//! entry (`cli`, `config`, `telemetry`) -> `http` -> `state` -> domain (`auth`, `ingest`,
//! `download`, `small_files`, `audit`, `removal`, `events`, `ops`, `metrics`, `limits`) -> stores (`meta`, `blob`,
//! `crypto`) -> foundations (`ids`, `secrets`, `net`, `blocking`, `memory`). `scripts/layers` checks it.

// One audited exception, `memory` (a call to glibc's `malloc_trim`); nothing else may.
#![deny(unsafe_code)]

// `pub` only what the binary (`cli`), the black-box tests, the benchmarks and the fuzz
// targets use; everything else is the crate's own.
pub(crate) mod audit;
pub mod auth;
pub mod blob;
pub(crate) mod blocking;
pub mod cli;
pub(crate) mod config;
pub mod crypto;
pub mod download;
pub(crate) mod events;
pub(crate) mod http;
pub mod ids;
pub mod ingest;
pub(crate) mod limits;
pub(crate) mod memory;
pub mod meta;
pub(crate) mod metrics;
pub(crate) mod net;
pub(crate) mod ops;
pub(crate) mod removal;
pub(crate) mod resumable;
pub mod secrets;
pub(crate) mod small_files;
pub(crate) mod state;
pub(crate) mod telemetry;
