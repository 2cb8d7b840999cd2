//! Operations: the commands an operator runs on a storage root (consistency checks, backups,
//! key management, copying a store into other backends), safe beside a running server, and the work that keeps a store tidy
//! (start-up recovery, the sweeper).

pub mod backup;
pub mod check;
pub mod keys;
pub mod migrate;
pub mod recovery;
pub mod sweeper;
