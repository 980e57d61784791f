//! How the DPoP adapters reach an authorization server: one rule for its URLs, one
//! bounded fetch, one metadata discovery and one cached remote JWK set, shared by
//! `dpop-tower` (resource servers and the gateway), `dpop-issuer` (trusted external
//! issuers), `dpop-client` (token endpoints) and the gateway's configuration.
//!
//! - [`url`]: [`IssuerUrl`] (`https`, or `http` only to a loopback host; no query,
//!   fragment or user info; one canonical form without trailing slashes, used for the
//!   configured issuer, the metadata's `issuer` and `iss` claims alike) and
//!   [`EndpointUrl`] for the other URLs.
//! - [`fetch`]: GETs bounded in size and time, redirects not followed.
//! - [`metadata`]: RFC 8414 then OpenID discovery, `issuer` checked, endpoints checked.
//! - [`jwks`]: [`RemoteJwks`], refreshed periodically and (rate-limited) on an unknown
//!   `kid`, retried with back-off while empty.
//!
//! It does not verify tokens: that is `dpop_core::jwt`, given the [`dpop_core::jwt::JwkSet`]
//! this crate fetches. It keeps no global state.
//!
//! ```
//! use std::time::Duration;
//! use dpop_discovery::{Fetcher, IssuerUrl, JwksTimings, KeySource, RemoteJwks, UrlError};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // `http://as.example.com/` and `http://as.example.com` are one issuer; plain http
//! // leaves this machine only to be refused.
//! let issuer = IssuerUrl::parse("https://as.example.com/")?;
//! assert_eq!(issuer.as_str(), "https://as.example.com");
//! assert!(issuer.matches("https://as.example.com/"));
//! assert_eq!(IssuerUrl::parse("http://as.example.com"), Err(UrlError::HttpNotLoopback));
//!
//! // The issuer's keys, discovered and fetched on first use.
//! let fetcher = Fetcher::new(Duration::from_secs(5))?;
//! let keys = RemoteJwks::new(KeySource::Discover(issuer), fetcher, JwksTimings::default());
//! assert!(!keys.is_ready());
//! # Ok(())
//! # }
//! ```

pub mod fetch;
pub mod jwks;
pub mod metadata;
pub mod url;

pub use crate::fetch::{FetchError, Fetcher};
pub use crate::jwks::{JwksError, JwksTimings, KeySource, RemoteJwks};
pub use crate::metadata::{DiscoveryError, Metadata};
pub use crate::url::{EndpointUrl, IssuerUrl, UrlError};
