//! dpop-tower integration tests: the layer in-process (every rejection path, injected
//! clock) and against a real mock issuer (JWKS discovery, rotation, introspection).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod issuer;
mod layer;
