//! The HTTP layer: the server ([`server`]: accept loop, connection policies), the stack
//! ([`stack`]: every layer, outermost first, over the routes), the routes ([`routes`]:
//! handlers and their request and response types), the middleware ([`middleware`]: one
//! concern each), and what routes share: extractors ([`extract`]), paging ([`paging`]), the
//! content responder ([`content`]) and the OpenAPI document ([`openapi`]).
//!
//! Invariant: nothing below this module names it; the state it serves is `crate::state`.

pub mod content;
pub mod extract;
pub mod middleware;
pub mod openapi;
pub mod paging;
pub mod routes;
pub mod server;
pub mod stack;
