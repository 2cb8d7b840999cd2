//! Middleware, one concern per module. The order they run in is written once, in
//! `crate::http::stack`.

pub(crate) mod client_ip;
pub(crate) mod cors;
pub(crate) mod drain;
pub(crate) mod headers;
pub(crate) mod metrics;
pub(crate) mod rate_limit;
pub(crate) mod request_id;
