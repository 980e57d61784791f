//! Keeping tokens between runs of a program: [`TokenStore`], the hook through which
//! [`OAuthTokens`](crate::OAuthTokens) reads a token another run left and leaves the one
//! it gets, so that short-lived processes (a CI job's fifty `curl` calls) share one token.
//!
//! The store holds [`StoredToken`]s under a [`TokenKey`]: the issuer, the client, the
//! DPoP key's thumbprint, the grant and what was asked for. A token is only ever handed
//! to a request that would have asked for the same thing with the same key.

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::error::ClientError;

/// Where tokens are kept between runs (a file, a secret store). Implementations must keep
/// tokens from other users (a file: mode 0600) and replace entries atomically: two
/// processes may use the same store at once.
pub trait TokenStore: Send + Sync + fmt::Debug {
    /// The token stored under `key`, if any (expired ones too: the caller decides, and
    /// may still use its refresh token).
    ///
    /// # Errors
    /// [`ClientError::TokenStore`] when the store cannot be read.
    fn load(&self, key: &TokenKey) -> Result<Option<StoredToken>, ClientError>;

    /// Keeps `token` under `key`, replacing what was there.
    ///
    /// # Errors
    /// [`ClientError::TokenStore`] when the store cannot be written.
    fn save(&self, key: &TokenKey, token: &StoredToken) -> Result<(), ClientError>;

    /// Forgets the token under `key` if its access token is `access_token` (a server
    /// refused it); a different token, stored meanwhile by another process, stays.
    ///
    /// # Errors
    /// [`ClientError::TokenStore`] when the store cannot be written.
    fn remove(&self, key: &TokenKey, access_token: &str) -> Result<(), ClientError>;

    /// Tries to take the lock held while a token for `key` is renewed, without waiting:
    /// `Some` guard (the lock is released when it is dropped) or `None` when another
    /// process holds it (the caller tries again a little later, then reads the store).
    /// Stores shared by one process only need not lock. Defaults to always granted.
    ///
    /// # Errors
    /// [`ClientError::TokenStore`] when the lock cannot be tried.
    fn try_lock_renewal(&self, key: &TokenKey) -> Result<Option<RenewalGuard>, ClientError> {
        let _ = key;
        Ok(Some(RenewalGuard::new(())))
    }
}

/// Holds a [`TokenStore`]'s renewal lock until dropped (whatever the store keeps to hold
/// it: a locked file, a lease).
pub struct RenewalGuard(#[allow(dead_code, reason = "held for its Drop")] Box<dyn Send + Sync>);

impl RenewalGuard {
    /// A guard keeping `held` (released by its `Drop`) until the guard is dropped.
    #[must_use]
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        Self(Box::new(held))
    }
}

impl fmt::Debug for RenewalGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RenewalGuard")
    }
}

/// What a stored token was asked for: the issuer, the client, the DPoP key's thumbprint,
/// the grant type, and the scopes, audiences and resources requested (each set sorted,
/// so the order of the flags does not matter). Its text form ([`TokenKey::as_str`]) is
/// the store's key; it holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenKey(String);

impl TokenKey {
    /// The key of a token from `issuer` (canonical form) for `client_id`, bound to the key
    /// with thumbprint `jkt`, obtained with `grant` (its `grant_type`, and for grants that
    /// act for a subject, what identifies that subject without revealing it), asking for `scope`
    /// (space-separated), `audiences` and `resources`.
    #[must_use]
    pub fn new(
        issuer: &str,
        client_id: &str,
        jkt: &str,
        grant: &str,
        scope: Option<&str>,
        audiences: &[String],
        resources: &[String],
    ) -> Self {
        let set = |items: Vec<String>| {
            let mut items = items;
            items.sort();
            items.dedup();
            items
        };
        let scopes = set(scope.map(dpop_core::jwt::split_scope).unwrap_or_default());
        // A JSON array: unambiguous whatever the values contain.
        let text = serde_json::json!([
            dpop_core::jwt::canonical_issuer(issuer),
            client_id,
            jkt,
            grant,
            scopes,
            set(audiences.to_vec()),
            set(resources.to_vec()),
        ])
        .to_string();
        Self(text)
    }

    /// The key as text (a JSON array; no secret).
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A token as a store keeps it: the access token, when it was obtained and when it
/// expires (seconds since the Unix epoch), the refresh token and the granted scope.
#[derive(Clone)]
#[non_exhaustive]
pub struct StoredToken {
    /// The access token.
    pub access_token: Arc<str>,
    /// When it was obtained.
    pub obtained_at: u64,
    /// When it expires (`obtained_at` + `expires_in`).
    pub expires_at: u64,
    /// The refresh token that came with it, if any.
    pub refresh_token: Option<Arc<Zeroizing<String>>>,
    /// The scope granted, if the response said.
    pub scope: Option<String>,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("obtained_at", &self.obtained_at)
            .field("expires_at", &self.expires_at)
            .field("refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

impl StoredToken {
    /// A stored token.
    #[must_use]
    pub fn new(
        access_token: Arc<str>,
        obtained_at: u64,
        expires_at: u64,
        refresh_token: Option<Arc<Zeroizing<String>>>,
        scope: Option<String>,
    ) -> Self {
        Self {
            access_token,
            obtained_at,
            expires_at,
            refresh_token,
            scope,
        }
    }

    /// When the token should be replaced: before it expires, by a fifth of its lifetime
    /// and at most a minute (the same margin as a token held in memory).
    #[must_use]
    pub fn renew_at(&self) -> u64 {
        let lifetime = self.expires_at.saturating_sub(self.obtained_at);
        self.expires_at.saturating_sub((lifetime / 5).min(60))
    }

    /// Whether the token is still good to use at `now` (before [`StoredToken::renew_at`]).
    #[must_use]
    pub fn usable_at(&self, now: u64) -> bool {
        now < self.renew_at()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_ignores_order_and_trailing_slashes_but_not_values() {
        let a = TokenKey::new(
            "https://as.example/",
            "svc",
            "jkt",
            "client_credentials",
            Some("write read"),
            &["b".into(), "a".into()],
            &[],
        );
        let b = TokenKey::new(
            "https://as.example",
            "svc",
            "jkt",
            "client_credentials",
            Some("read  write read"),
            &["a".into(), "b".into()],
            &[],
        );
        assert_eq!(a, b);
        let other_key = TokenKey::new(
            "https://as.example",
            "svc",
            "jkt2",
            "client_credentials",
            Some("read write"),
            &["a".into(), "b".into()],
            &[],
        );
        assert_ne!(a, other_key);
        let as_resource = TokenKey::new(
            "https://as.example",
            "svc",
            "jkt",
            "client_credentials",
            Some("read write"),
            &[],
            &["a".into(), "b".into()],
        );
        assert_ne!(a, as_resource);
    }

    #[test]
    fn a_stored_token_is_renewed_early() {
        let t = StoredToken::new("t".into(), 1000, 1300, None, None);
        assert_eq!(t.renew_at(), 1240);
        assert!(t.usable_at(1239));
        assert!(!t.usable_at(1240));
        let long = StoredToken::new("t".into(), 0, 3600, None, None);
        assert_eq!(long.renew_at(), 3540);
        let debug = format!("{t:?}");
        assert!(!debug.contains("\"t\""), "{debug}");
    }
}
