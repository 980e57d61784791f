//! [`ProofRequest`]: what a proof must match.

use crate::htu::Htu;
use crate::jwk::Jkt;
use crate::proof::Ath;

/// What the proof must match: the request, and for a protected resource the access
/// token and its bound key.
#[derive(Clone, Copy, Debug)]
pub struct ProofRequest<'a> {
    pub(super) method: Option<&'a str>,
    pub(super) htu: Option<&'a Htu>,
    pub(super) access_token: Option<PresentedToken<'a>>,
    pub(super) bound_jkt: Option<&'a Jkt>,
}

/// The presented access token, or its hash when the caller already computed it.
#[derive(Clone, Copy, Debug)]
pub(super) enum PresentedToken<'a> {
    Token(&'a str),
    Hash(&'a Ath),
}

impl<'a> ProofRequest<'a> {
    /// A request with `method` to `htu` (the URI the client addressed, normalised).
    #[must_use]
    pub fn new(method: &'a str, htu: &'a Htu) -> Self {
        Self {
            method: Some(method),
            htu: Some(htu),
            access_token: None,
            bound_jkt: None,
        }
    }

    /// At a protected resource: the presented access token (checked against `ath`) and
    /// the key it is bound to (`cnf.jkt`, checked against the proof key).
    #[must_use]
    pub fn with_access_token(mut self, token: &'a str, cnf_jkt: &'a Jkt) -> Self {
        self.access_token = Some(PresentedToken::Token(token));
        self.bound_jkt = Some(cnf_jkt);
        self
    }

    /// [`ProofRequest::with_access_token`] for a caller that already hashed the token
    /// (e.g. as a cache key), so it is not hashed twice.
    #[must_use]
    pub fn with_access_token_hash(mut self, ath: &'a Ath, cnf_jkt: &'a Jkt) -> Self {
        self.access_token = Some(PresentedToken::Hash(ath));
        self.bound_jkt = Some(cnf_jkt);
        self
    }

    /// At a token endpoint: the key an earlier step bound (refresh token binding,
    /// `dpop_jkt` of RFC 9449 §10). The proof key must be this key.
    #[must_use]
    pub fn with_expected_jkt(mut self, jkt: &'a Jkt) -> Self {
        self.bound_jkt = Some(jkt);
        self
    }

    /// Only the access-token check, without key binding. Reachable through
    /// [`crate::dangerous`].
    pub(crate) fn set_access_token_only(&mut self, token: &'a str) {
        self.access_token = Some(PresentedToken::Token(token));
    }

    pub(crate) fn without_target(method: Option<&'a str>, htu: Option<&'a Htu>) -> Self {
        Self {
            method,
            htu,
            access_token: None,
            bound_jkt: None,
        }
    }
}
