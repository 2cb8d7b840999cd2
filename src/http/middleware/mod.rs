//! Middleware, one concern per module. The order they run in is written once, in
//! `crate::http::stack`.

pub mod client_ip;
pub mod cors;
pub mod headers;
pub mod metrics;
pub mod rate_limit;
pub mod request_id;
