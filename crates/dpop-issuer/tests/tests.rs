//! dpop-issuer integration tests: the issuer served on loopback, spoken to over HTTP as
//! clients and resource servers would, with an injected clock. Every test that keeps
//! state runs on SQLite and, when `DPOP_TEST_POSTGRES_URL` is set, on PostgreSQL too
//! (`<test>::sqlite`, `<test>::postgres`).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

mod config;
mod exchange;
mod introspect;
mod refresh;
mod revoke;
mod signing_key;
mod state;
mod token;
mod trust;
