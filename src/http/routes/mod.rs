//! The routes, one module per resource: handlers, and the request and response types they
//! use, written just above them. Authorisation is written in each handler, where a reviewer
//! sees it.

pub mod admin;
pub mod auth;
pub mod files;
pub mod health;
pub mod keys;
pub mod links;
