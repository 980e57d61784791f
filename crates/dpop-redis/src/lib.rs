#![forbid(unsafe_code)]
// Nothing here may panic on a bad server or a bad setting (STYLE §15); tests may.
#![warn(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]
//! # dpop-redis
//!
//! A DPoP (RFC 9449) replay store kept in Redis, so that a gateway running as many instances
//! refuses a proof replayed to *any* of them, not only to the one that first saw it.
//! [`RedisReplayStore`] implements [`dpop_core::AsyncReplayStore`]: give it to the verifier
//! where a [`dpop_core::MemoryReplayStore`] would go.
//!
//! ## What it does
//!
//! Each accepted proof's [`ReplayKey`](dpop_core::ReplayKey) (the SHA-256 of the key
//! thumbprint and `jti`, computed by `dpop-core`) is recorded with one command:
//!
//! ```text
//! SET <key_prefix><64 lower-case hex digits of the replay key> 1 NX PX <ttl_ms>
//! ```
//!
//! for example `SET dpop:jti:3f9a…c2 1 NX PX 60000`. The reply `OK` means the key was not
//! recorded: the proof is fresh ([`Insert::Inserted`](dpop_core::Insert::Inserted)). A nil
//! reply means another request, on this instance or another, recorded it first: a replay
//! ([`Insert::AlreadyPresent`](dpop_core::Insert::AlreadyPresent)). `ttl_ms` is
//! `expires_at - now` in milliseconds and never less than 1000: a proof whose window has
//! already closed is still checked and recorded for a second, never waved through.
//!
//! ### Why this is safe across instances
//!
//! `SET` with `NX` (only if the key does not exist) and `PX` (expiry in milliseconds) is a
//! single command, and Redis runs commands one at a time. The test for the key, its
//! creation and its expiry happen as one step, so when any number of instances present the
//! same proof at once, exactly one is answered `OK`. No lock, script or transaction is
//! needed, and a key never exists without its expiry (as it could with `SETNX` followed by
//! `PEXPIRE`), so Redis forgets proofs by itself once their window is over.
//!
//! ## Failing closed
//!
//! Every command has a time limit ([`RedisStoreConfig::command_timeout`], 250 ms by
//! default), counted for an insert from the moment it is queued: an insert waiting behind
//! a slow pipeline, or for its thread's connection to open, is answered by then too, and
//! each insert of a pipeline at its own deadline. A thread's own batcher enforces its
//! inserts' deadlines itself (one timer it moves from deadline to deadline), so an insert
//! on that path sets no timer of its own, and when that batcher's queue already holds
//! 16 384 inserts, the next is refused at once. A command that fails or runs out of time
//! returns
//! [`ReplayStoreError::Unavailable`](dpop_core::ReplayStoreError::Unavailable) or
//! [`ReplayStoreError::Timeout`](dpop_core::ReplayStoreError::Timeout), never a guess, and
//! the verifier refuses the proof. There is deliberately no switch here to accept proofs
//! while Redis is down; that trade-off, if anyone wants it, belongs to the gateway. Error
//! messages and `Debug` output never contain the password from the URL.
//!
//! [`RedisReplayStore::connect`] connects at once and fails if Redis is absent, so a gateway
//! can refuse to start; [`RedisReplayStore::ping`] serves readiness probes. A lost connection
//! is re-established in the background (the redis crate's `ConnectionManager`): commands
//! fail while Redis is away and succeed again when it is back.
//!
//! ### Connections and threads
//!
//! Inserts are pipelined: while one pipeline is on the wire, the next inserts queue and go
//! out together. On one server, each thread running a single-threaded Tokio runtime (as the
//! `dpop gateway` serving threads do) gets a queue and a connection of its own on first use,
//! so an insert is queued, sent and answered without waking another thread; callers on a
//! multi-threaded runtime share the connection made by [`RedisReplayStore::connect`]. A
//! thread whose own connection cannot be opened uses the shared one and tries again a
//! second later. With `N` such threads per instance, Redis sees `N + 1` connections from
//! each instance. Cluster and Sentinel set-ups use one shared connection (per node) for
//! every thread.
//!
//! ## What it does not do
//!
//! - It does not verify proofs or compute replay keys; `dpop-core` does.
//! - It does not talk over Unix sockets.
//! - It does not replicate: with Redis replicas, a failover can lose the last writes and so
//!   let a proof recorded just before it be replayed once (see [Topologies and
//!   failover](#topologies-and-failover)).
//! - It does not store nonces: DPoP nonces from `dpop-core` are stateless.
//!
//! ## Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use dpop_core::{AsyncReplayStore, Insert, ReplayKey, UnixTime};
//! use dpop_redis::{RedisReplayStore, RedisStoreConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = RedisStoreConfig::new("redis://:secret@redis.internal:6379/0");
//! config.command_timeout = Duration::from_millis(100);
//! // Fails, and the gateway should not start, if Redis is not there.
//! let store = RedisReplayStore::connect(config).await?;
//! store.ping().await?;
//!
//! // Normally the verifier does this with the proof's replay key.
//! let key = ReplayKey::from_digest([7; 32]);
//! let now = UnixTime::from_secs(1_700_000_000);
//! let expires_at = now.saturating_add(Duration::from_secs(300));
//! assert_eq!(store.insert_if_absent(&key, expires_at, now).await?, Insert::Inserted);
//! assert_eq!(store.insert_if_absent(&key, expires_at, now).await?, Insert::AlreadyPresent);
//! # Ok(())
//! # }
//! ```
//!
//! ## Topologies and failover
//!
//! [`RedisStoreConfig::url`] picks one of three set-ups (`rediss` instead of `redis` for
//! TLS):
//!
//! | URL | What is used |
//! |-----|--------------|
//! | `redis://host:6379/0` | one server, or one endpoint in front of several |
//! | `redis+cluster://h1:7000,h2:7001/` | a Redis Cluster, found from any of its nodes |
//! | `redis+sentinel://s1:26379,s2:26379/mymaster` | the primary that the sentinels name |
//!
//! The command is the same everywhere: one `SET key 1 NX PX ttl`. In a cluster a single-key
//! command is sent to the primary of the key's slot, and that primary runs it as one step,
//! so the insert-if-absent stays atomic; keys spread over all primaries. With Sentinel the
//! store asks the sentinels (in order, skipping those that do not answer) for the primary,
//! checks with `ROLE` that it is one, and keeps a connection to it (sentinels that ask for
//! a login get [`RedisStoreConfig::sentinel_username`] and
//! [`RedisStoreConfig::sentinel_password`], never the primary's credentials); when a command fails
//! with a connection error, a time-out or `READONLY` (the primary was demoted), the
//! connection is dropped and the next command asks the sentinels again.
//!
//! What a failover means for replay protection, honestly:
//!
//! - **While no primary answers, nothing is accepted.** Inserts for the keys of a crashed
//!   cluster primary, or every insert while Sentinel has not yet promoted a replica, fail
//!   with an error and the proof is refused. There is no fallback to a replica or to
//!   memory.
//! - **A failover can forget the last proofs.** Redis replicates asynchronously: the
//!   primary answers `OK` before its replicas have the key. If it crashes in that moment
//!   and a replica that missed the key is promoted, the proof can be presented again,
//!   once, until its window closes. The window of exposure is the replication lag at the
//!   moment of the crash (usually well under a millisecond on a local network, more under
//!   load or across sites), and the proof must also still be within its lifetime
//!   (`iat` window) to be accepted.
//! - **Narrowing it.** Redis's `WAIT` (make the primary wait until N replicas have the
//!   write) narrows but does not close this window, and costs a round trip to the replicas
//!   on every request. [`RedisStoreConfig::wait_replicas`] turns it on (on a cluster, `WAIT`
//!   goes with each `SET` to the key's primary): a proof counts as recorded only when
//!   enough replicas acknowledged it within [`RedisStoreConfig::wait_timeout`], else it is
//!   refused. A primary with fewer replicas than that (a promoted replica whose old primary
//!   has not come back) refuses every proof for its keys. The proof window bounds how long a
//!   forgotten record can be exploited; server-issued nonces (`DPoP-Nonce`) narrow it
//!   further when they live shorter than proofs, since a proof whose nonce has expired is
//!   refused whatever the store says.
//! - **Split brain.** A primary cut off from the sentinels but still reachable by some
//!   gateways keeps accepting writes that the new primary never sees. Redis's
//!   `min-replicas-to-write` on the primary bounds this; it is a server setting.
//!
//! ## TLS
//!
//! `rediss://` (and `rediss+cluster://`, `rediss+sentinel://`, where the sentinels are also
//! reached over TLS) URLs use rustls with the system's trusted roots. If the program has not
//! installed a rustls crypto provider, connecting installs aws-lc-rs as the process default.
//! Certificate checks cannot be turned off: a URL fragment such as `#insecure` is refused.

mod batch;
mod config;
mod error;
mod local;
mod sentinel;
mod store;

pub use config::RedisStoreConfig;
pub use error::RedisStoreError;
pub use store::RedisReplayStore;
