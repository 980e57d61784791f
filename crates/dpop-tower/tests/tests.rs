//! dpop-tower integration tests: the layer in-process (every rejection path, injected
//! clock) and against a real mock issuer (JWKS discovery, rotation, introspection); the
//! builder and the axum extractor.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod builder;
mod issuer;
mod layer;
