#![forbid(unsafe_code)]
//! # dpop-test
//!
//! Test support for the DPoP workspace's end-to-end tests and its load test. Not
//! published.
//!
//! Every server here is started from async code on `127.0.0.1`, listens on a free port
//! unless given an address, and stops when its handle is dropped:
//!
//! - [`MockIssuer`]: an authorization server stand-in (RFC 8414 metadata, a JWKS with
//!   key rotation, ES256 JWT access tokens bound with `cnf.jkt`, RFC 7662
//!   introspection);
//! - [`TestUpstream`]: an echo server that records what reached it (HTTP/1.1, or https
//!   with an optional client certificate check, or HTTP/2 only);
//! - [`RedisServer`]: a private `redis-server` child that can be stopped and restarted;
//! - [`RedisCluster`] and [`RedisSentinel`]: a private three-node Redis Cluster, and a
//!   primary, replica and sentinel whose primary can be killed to force a failover;
//! - [`Gateway`]: a handle on a server binary, with its output captured;
//! - [`PgSchema`]: a throw-away schema on the PostgreSQL server of
//!   `DPOP_TEST_POSTGRES_URL`;
//! - [`IssuerFixture`]: the `dpop issuer` configuration file, rendered from typed
//!   clients ([`ClientFixture`]) instead of hand-written TOML;
//! - [`TestCa`]: a private CA issuing server and client certificates as PEM files;
//! - [`SoftHsmToken`]: a throw-away PKCS#11 token of SoftHSM 2, and [`SwTpm`], a private
//!   software TPM 2.0, for keys kept in a device;
//! - [`WsEchoUpstream`] and [`RawUpstream`]: a WebSocket echo server and a scripted raw
//!   TCP server, for stream tests;
//! - [`GrpcEchoUpstream`] and [`GrpcEchoClient`]: a gRPC echo service and its client over
//!   h2c, built with tonic without protoc;
//! - [`free_port`], [`wait_for_tcp`], [`serve`], and a one-shot HTTP client
//!   ([`http_request`]) for the rest.
//!
//! The load generator described in `docs/benchmarks.md`, `dpop-loadgen`, is a crate of
//! its own (`crates/dpop-loadgen`) built on these servers.
//!
//! What it does *not* do: check anything. The issuer signs what it is told and the
//! upstream accepts everything; the assertions belong to the tests. It reads the system
//! clock (token `iat`), which the sans-I/O core never does.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use dpop_test::{MockIssuer, TestUpstream, TokenSpec};
//!
//! let issuer = MockIssuer::start().await?;
//! let upstream = TestUpstream::start().await?;
//! let token = issuer.mint(&TokenSpec::bound(
//!     "https://api.example.com",
//!     "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
//! ));
//! assert_eq!(token.split('.').count(), 3);
//! assert!(issuer.jwks_uri().starts_with(issuer.url()));
//! assert!(upstream.url().starts_with("http://127.0.0.1:"));
//! # Ok(()) }
//! ```

mod client;
mod grpc;
mod issuer;
mod issuer_fixture;
mod jws;
mod otlp;
mod postgres;
mod process;
mod redis;
mod redis_topology;
mod server;
mod signers;
mod softhsm;
mod streams;
mod swtpm;
mod tls;
mod upstream;

pub use crate::client::{
    HTTP_TIMEOUT, HttpResponse, RawResponse, http_get, http_request, raw_exchange,
    raw_exchange_exact, send_raw,
};
pub use crate::grpc::{
    ECHO_COUNT_TRAILER, EchoReply, EchoRequest, EchoService, GrpcEchoClient, GrpcEchoUpstream,
};
pub use crate::issuer::{
    DEFAULT_INTROSPECTION_CLIENT_ID, DEFAULT_INTROSPECTION_CLIENT_SECRET, METADATA_PATH,
    MockIssuer, MockIssuerBuilder, Serving, TokenPolicy, TokenSpec, now,
};
pub use crate::issuer_fixture::{ClientFixture, IssuerFixture};
pub use crate::jws::{b64url, decode_compact, sign_compact, verifies_es256};
pub use crate::otlp::{CollectedSpan, TestCollector};
pub use crate::postgres::{POSTGRES_URL_ENV, PgSchema};
pub use crate::process::{DEFAULT_READY_TIMEOUT, Gateway, free_port, wait_for_tcp};
pub use crate::redis::{REDIS_SERVER_ENV, RedisServer};
pub use crate::redis_topology::{RedisCluster, RedisSentinel, SentinelAuth};
pub use crate::server::{ServerHandle, serve};
pub use crate::signers::{
    assert_openssl_verifies, assert_proof_verifies, fixed_to_der, sign_from_threads,
};
pub use crate::softhsm::{SOFTHSM_MODULE_ENV, SOFTHSM_USER_PIN, SoftHsmToken};
pub use crate::streams::{RawRequest, RawUpstream, WsEchoUpstream};
pub use crate::swtpm::{SWTPM_ENV, SwTpm, free_port_pair, private_temp_dir};
pub use crate::tls::{CertFiles, TestCa};
pub use crate::upstream::{
    DEFAULT_RECORD_CAPACITY, RecordedRequest, TestUpstream, TestUpstreamBuilder,
};
/// WebSocket client and server (tokio-tungstenite), for stream tests.
pub use tokio_tungstenite;
/// gRPC (tonic), for the gRPC tests.
pub use tonic;
