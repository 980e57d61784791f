//! DPoP (RFC 9449) for HTTP clients: a [`reqwest-middleware`](reqwest_middleware)
//! middleware that signs every request, and token sources that keep DPoP-bound access
//! tokens fresh.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use dpop_client::{ClientAuth, ClientKey, DpopMiddleware, Grant, OAuthTokens, TokenRequest};
//!
//! let key = ClientKey::from_file("client.pem".as_ref())?;     // or ClientKey::ephemeral(..)
//! let dpop = DpopMiddleware::new(key);
//! let auth = ClientAuth::Secret {
//!     client_id: "billing".into(),
//!     secret: Arc::new(std::env::var("CLIENT_SECRET")?.into()),
//! };
//! let tokens = OAuthTokens::new(
//!     TokenRequest::new("https://auth.example.com", auth, Grant::ClientCredentials),
//!     &dpop,
//! )?;
//! let client = reqwest_middleware::ClientBuilder::new(
//!     reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?,
//! )
//! .with(dpop.with_tokens(Arc::new(tokens)))
//! .build();
//! let items = client.get("https://api.example.com/v1/items").send().await?;
//! # Ok(()) }
//! ```
//!
//! Per request: a fresh proof (`htm`, `htu` of the URL sent, `ath` of the token, the
//! origin's latest server nonce, `iat` corrected by the origin's learnt clock offset).
//! Nonce challenges and clock-skew refusals are retried once each; a refused token is
//! replaced once. Tokens are renewed before they expire, by one request however many
//! callers wait. An [`Observer`] sees each attempt, response, retry and clock correction
//! (for `-v` output or metrics) without changing any of it.

mod error;
mod key;
mod middleware;
mod observer;
mod secret_file;
mod session;
mod source;
mod store;
mod tokens;

pub use crate::error::ClientError;
pub use crate::key::ClientKey;
pub use crate::middleware::DpopMiddleware;
pub use crate::observer::{Endpoint, Event, Observer, Retry};
pub use crate::source::{StaticToken, TokenSource};
pub use crate::store::{RenewalGuard, StoredToken, TokenKey, TokenStore};
pub use crate::tokens::{
    ClientAuth, Grant, MAX_TOKEN_FILE_BYTES, OAuthTokens, SubjectToken, TokenRequest, TokenResponse,
};
pub use dpop_core::SystemClock;
