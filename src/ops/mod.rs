//! Operator commands that work on a storage root directly (the CLI), safe beside a running
//! server: consistency checks, backups and key management.

pub mod backup;
pub mod check;
pub mod keys;
