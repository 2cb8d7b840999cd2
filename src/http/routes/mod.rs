//! The routes, one module per resource: handlers, and the request and response types they
//! use, written just above them. Authorisation is written in each handler, where a reviewer
//! sees it.

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod files;
pub(crate) mod grants;
pub(crate) mod health;
pub(crate) mod keys;
pub(crate) mod links;
pub(crate) mod uploads;
pub(crate) mod views;
pub(crate) mod webhooks;
