//! dpop-core integration tests: one binary, one module per area.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod fuzz_corpus;
mod mldsa;
mod properties;
mod rejections;
mod roundtrip;
mod support;
mod targets;
mod vectors;
