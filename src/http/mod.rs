//! The HTTP layer: the server ([`server`]: accept loop, connection policies), the stack
//! ([`stack`]: every layer, outermost first, over the routes), the routes ([`routes`]:
//! handlers and their request and response types), the middleware ([`middleware`]: one
//! concern each), and what routes share: the error type and its problem bodies ([`error`]),
//! extractors ([`extract`]), paging ([`paging`]), the content responder ([`content`]) and the
//! OpenAPI document ([`openapi`]).
//!
//! Invariant: nothing below this module names it; the state it serves is `crate::state`, and
//! the domain answers in its own errors and outcomes, turned into HTTP answers here (every
//! conversion in [`error`]).

pub(crate) mod content;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod middleware;
pub(crate) mod openapi;
pub(crate) mod paging;
pub(crate) mod routes;
pub(crate) mod server;
pub(crate) mod stack;
