//! Tests of the DPoP client against in-process servers that count what they receive: a
//! resource server written in `support` (proofs verified with dpop-core, server nonces,
//! a clock running ahead, deliberate misbehaviour) and the real issuer (dpop-issuer).
//!
//! - `proofs`: one fresh proof per request, for the URL sent, with `ath` and the token;
//! - `nonces`: per-origin nonces, one retry per challenge, non-replayable bodies;
//! - `skew`: a server clock that differs is learned from `Date` and kept per origin;
//! - `tokens`: client credentials, `private_key_jwt`, token exchange, refresh tokens,
//!   caching and one token request for many waiting requests;
//! - `keys`: ephemeral keys, key files and their permissions, keys from the environment;
//! - `observer`: what an observer is told, in order, at resources and token endpoints;
//! - `store`: tokens kept between sources in a `TokenStore`;
//! - `devices`: keys in a device or KMS sign off the executor and fail closed.

mod devices;
mod keys;
mod nonces;
mod observer;
mod proofs;
mod skew;
mod store;
mod support;
mod tokens;
