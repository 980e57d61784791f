//! Client authentication (RFC 6749 §2.3, RFC 7523 §2.2): `client_secret_basic`,
//! `client_secret_post`, `private_key_jwt`, and `none` for public clients.
//!
//! Exactly one method per request: a request that mixes methods is refused (RFC 6749
//! §2.3). Every failure is `invalid_client` (401) with the same description whatever the
//! cause among unknown client, wrong secret, or bad assertion, so a caller cannot probe
//! which client ids exist; a secret presented for an unknown client, or for a client
//! without one, costs the same Argon2 check as a wrong secret (see `secret`).
//!
//! Failed secret checks are counted per client id and per client address
//! ([`AttemptLimiter`], `[auth_limits]`); over a limit, a request presenting a secret is
//! answered 429 `slow_down` with `Retry-After` before anything is checked. Known and
//! unknown ids are counted alike, so the limit tells nothing about which exist either.
//! Each check is counted as a failure when it starts, under the lock that compares the
//! count with the limit, and given back when the secret turns out right: requests sent
//! all at once, faster than Argon2 checks them, cannot get more checks than the limit.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use dpop_core::Algorithm;
use dpop_core::jwt::{JwtValidation, TypPolicy, UnverifiedJwt, verify_jwt};

use crate::State;
use crate::config::{AuthLimits, AuthMethod, Client};
use crate::error::OAuthError;
use crate::http::Form;
use crate::store::secs;

/// `client_assertion_type` for JWT client authentication (RFC 7523 §2.2).
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Algorithms accepted for client assertions.
pub(crate) const ASSERTION_ALGS: [&str; 6] = ["ES256", "ES384", "ES512", "EdDSA", "PS256", "RS256"];

/// Longest accepted client assertion lifetime from now: a short-lived credential.
const MAX_ASSERTION_LIFETIME_SECS: u64 = 600;

const FAILED: &str = "client authentication failed";

/// The credential a request presents.
enum Presented<'a> {
    Basic { id: String, secret: String },
    Post { id: &'a str, secret: &'a str },
    Assertion { id: String, jwt: &'a str },
    Public { id: &'a str },
}

fn form_decode(s: &str) -> Option<String> {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

fn presented<'a>(headers: &'a HeaderMap, form: &'a Form) -> Result<Presented<'a>, OAuthError> {
    let basic = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then(|| rest.trim())
        });
    let assertion = form.get("client_assertion");
    let secret = form.get("client_secret");
    let count = usize::from(basic.is_some())
        + usize::from(assertion.is_some())
        + usize::from(secret.is_some());
    if count > 1 {
        return Err(OAuthError::invalid_request(
            "more than one client authentication method in the request",
        ));
    }
    if headers.get_all(header::AUTHORIZATION).iter().count() > 1 {
        return Err(OAuthError::invalid_request(
            "more than one Authorization header",
        ));
    }
    let form_id = form.get("client_id");
    if let Some(b) = basic {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
        let (id, secret) = decoded
            .split_once(':')
            .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
        let (Some(id), Some(secret)) = (form_decode(id), form_decode(secret)) else {
            return Err(OAuthError::invalid_client("malformed Basic credentials"));
        };
        if form_id.is_some_and(|f| f != id) {
            return Err(OAuthError::invalid_request(
                "client_id does not match the Basic credentials",
            ));
        }
        return Ok(Presented::Basic { id, secret });
    }
    if let Some(jwt) = assertion {
        if form.get("client_assertion_type") != Some(ASSERTION_TYPE) {
            return Err(OAuthError::invalid_client(format!(
                "client_assertion_type must be {ASSERTION_TYPE}"
            )));
        }
        let id = UnverifiedJwt::parse(jwt)
            .ok()
            .and_then(|j| j.str_claim("sub").map(str::to_owned))
            .ok_or_else(|| OAuthError::invalid_client(FAILED))?;
        if form_id.is_some_and(|f| f != id) {
            return Err(OAuthError::invalid_request(
                "client_id does not match the client assertion's sub",
            ));
        }
        return Ok(Presented::Assertion { id, jwt });
    }
    let id = form_id.ok_or_else(|| {
        OAuthError::invalid_client("client authentication is required (Basic, client_secret, client_assertion or client_id)")
    })?;
    Ok(match secret {
        Some(secret) => Presented::Post { id, secret },
        None => Presented::Public { id },
    })
}

fn id_of<'a>(p: &'a Presented<'_>) -> &'a str {
    match p {
        Presented::Basic { id, .. } | Presented::Assertion { id, .. } => id,
        Presented::Post { id, .. } | Presented::Public { id } => id,
    }
}

/// Whether the request names a client (`client_id`) without presenting any credential:
/// the `none` method, which only public clients use.
pub(crate) fn names_client_only(headers: &HeaderMap, form: &Form) -> Result<bool, OAuthError> {
    Ok(matches!(
        presented(headers, form)?,
        Presented::Public { .. }
    ))
}

/// The client the request claims to be, not yet authenticated (`None`: no such
/// client; that is only revealed by [`authenticate`]).
pub(crate) fn claimed_client<'s>(
    state: &'s State,
    headers: &HeaderMap,
    form: &Form,
) -> Result<Option<&'s Client>, OAuthError> {
    let p = presented(headers, form)?;
    Ok(state.config.clients.get(id_of(&p)))
}

/// Authenticates the request as `claimed` (from [`claimed_client`]) and checks that the
/// client is not disabled.
pub(crate) async fn authenticate<'s>(
    state: &'s State,
    headers: &HeaderMap,
    form: &Form,
    claimed: Option<&'s Client>,
) -> Result<&'s Client, OAuthError> {
    let p = presented(headers, form)?;
    let id = id_of(&p);
    let claimed = claimed.filter(|c| c.id == id);
    // A presented secret is checked whether or not the client exists (module docs).
    let (method, ok) = match &p {
        Presented::Basic { secret, .. } => (
            AuthMethod::ClientSecretBasic,
            check_secret(state, id, claimed, secret).await?,
        ),
        Presented::Post { secret, .. } => (
            AuthMethod::ClientSecretPost,
            check_secret(state, id, claimed, secret).await?,
        ),
        Presented::Assertion { jwt, .. } => match claimed {
            Some(c) => (
                AuthMethod::PrivateKeyJwt,
                check_assertion(state, c, jwt).await?,
            ),
            None => (AuthMethod::PrivateKeyJwt, false),
        },
        Presented::Public { .. } => (AuthMethod::None, true),
    };
    let Some(claimed) = claimed else {
        return Err(OAuthError::invalid_client(FAILED));
    };
    if !claimed.auth_methods.contains(&method) {
        tracing::info!(target: "dpop::issuer", client_id = %claimed.id, method = method.as_str(), "authentication method not allowed for this client");
        return Err(OAuthError::invalid_client(FAILED));
    }
    if !ok {
        tracing::info!(target: "dpop::issuer", client_id = %claimed.id, method = method.as_str(), "client authentication failed");
        return Err(OAuthError::invalid_client(FAILED));
    }
    let client_state = state.store.client_state(&claimed.id).await?;
    if client_state.disabled_at.is_some() {
        return Err(OAuthError::invalid_client("the client is disabled"));
    }
    Ok(claimed)
}

/// Checks a secret presented for `id` (`claimed`: the client, if it exists), within the
/// attempt limits: `Err(slow_down)` over a limit, without checking.
async fn check_secret(
    state: &State,
    id: &str,
    claimed: Option<&Client>,
    presented: &str,
) -> Result<bool, OAuthError> {
    let now = state.now()?;
    let address = client_address();
    // Charged before the (slow) check, so concurrent attempts see each other.
    let attempt = match state.limiter.begin(id, address, now) {
        Ok(attempt) => attempt,
        Err(wait) => {
            tracing::info!(target: "dpop::issuer", client_id = %id, address = ?address, retry_after = wait, "client authentication refused: too many failed attempts");
            return Err(OAuthError::slow_down(wait));
        }
    };
    let hash = claimed.and_then(|c| c.secret.as_ref());
    let ok = state.secrets.verify(id, hash, presented).await;
    if ok {
        state.limiter.succeeded(attempt);
    }
    Ok(ok)
}

tokio::task_local! {
    /// The address of the client a request comes from (see [`with_client_address`]).
    static CLIENT_ADDRESS: Option<IpAddr>;
}

/// Runs `request` knowing the client's address, for the attempt limits. A task-local
/// rather than a parameter, so that every endpoint that authenticates clients is
/// covered without threading the address through each of them.
pub(crate) async fn with_client_address<F: Future>(
    address: Option<IpAddr>,
    request: F,
) -> F::Output {
    CLIENT_ADDRESS.scope(address, request).await
}

fn client_address() -> Option<IpAddr> {
    CLIENT_ADDRESS.try_with(|a| *a).ok().flatten()
}

/// The address to count a request against: the peer, or, when the peer is a trusted
/// proxy, the nearest address in `X-Forwarded-For` that is not one (every field line,
/// right to left: entries further left were written by whoever sent the request and
/// can be anything).
pub(crate) fn client_address_of(limits: &AuthLimits, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let mut address = peer.to_canonical();
    if !limits.is_trusted_proxy(address) {
        return address;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        let hop = hop.trim();
        let Some(ip) = hop
            .parse::<IpAddr>()
            .ok()
            .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        else {
            break;
        };
        address = ip.to_canonical();
        if !limits.is_trusted_proxy(address) {
            break;
        }
    }
    address
}

/// Failed attempts allowed per key: a generic cell rate: each failure moves the key's
/// "allowance exhausted until" time forward by `window / limit`; the key is refused
/// while that time is more than `window - window / limit` ahead, so at most `limit`
/// failures fit in a window, then one per `window / limit`.
#[derive(Debug)]
struct Allowances<K> {
    limit: u32,
    window_ms: u64,
    capacity: usize,
    until: HashMap<K, u64>,
}

impl<K: Hash + Eq + Copy> Allowances<K> {
    fn new(limit: u32, window: std::time::Duration, capacity: usize) -> Self {
        Self {
            limit,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            capacity,
            until: HashMap::new(),
        }
    }

    fn interval(&self) -> u64 {
        (self.window_ms / u64::from(self.limit.max(1))).max(1)
    }

    /// Milliseconds `key` must wait before its next attempt (0: none).
    fn wait(&self, key: &K, now_ms: u64) -> u64 {
        if self.limit == 0 {
            return 0;
        }
        let Some(&until) = self.until.get(key) else {
            return 0;
        };
        let ahead = self.window_ms.saturating_sub(self.interval());
        until.saturating_sub(now_ms).saturating_sub(ahead)
    }

    fn failed(&mut self, key: K, now_ms: u64) {
        if self.limit == 0 {
            return;
        }
        if !self.until.contains_key(&key) && self.until.len() >= self.capacity {
            // Full: forget the keys back at their full allowance, then, if that is not
            // enough, the one closest to it. The table never grows past `capacity`.
            self.until.retain(|_, until| *until > now_ms);
            if self.until.len() >= self.capacity
                && let Some(oldest) = self
                    .until
                    .iter()
                    .min_by_key(|(_, until)| **until)
                    .map(|(k, _)| *k)
            {
                self.until.remove(&oldest);
            }
        }
        let interval = self.interval();
        let until = self.until.entry(key).or_insert(now_ms);
        *until = (*until).max(now_ms).saturating_add(interval);
    }

    /// Takes back one [`Allowances::failed`] of `key` (the attempt succeeded).
    fn refund(&mut self, key: &K) {
        if self.limit == 0 {
            return;
        }
        let interval = self.interval();
        if let Some(until) = self.until.get_mut(key) {
            *until = until.saturating_sub(interval);
        }
    }
}

/// The key an address is counted under: IPv6 clients usually hold a whole /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// Failed client-secret checks per client id and per address, bounded in memory
/// (`[auth_limits]`, see [`AuthLimits`]).
#[derive(Debug)]
pub(crate) struct AttemptLimiter {
    /// By SHA-256 of the client id: fixed-size keys, whatever ids are presented.
    by_client: Mutex<Allowances<[u8; 32]>>,
    by_address: Mutex<Allowances<IpAddr>>,
}

impl AttemptLimiter {
    pub(crate) fn new(limits: &AuthLimits) -> Self {
        Self {
            by_client: Mutex::new(Allowances::new(
                limits.failures_per_client,
                limits.window,
                limits.max_tracked,
            )),
            by_address: Mutex::new(Allowances::new(
                limits.failures_per_address,
                limits.window,
                limits.max_tracked,
            )),
        }
    }

    fn client_key(id: &str) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
        let mut key = [0_u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    /// Starts a secret check for `id` from `address`: counted as a failure at once, in
    /// the same critical section that compares the counts with the limits, so
    /// concurrent checks cannot exceed them. `Err`: whole seconds to wait, over a limit
    /// (nothing counted).
    pub(crate) fn begin(
        &self,
        id: &str,
        address: Option<IpAddr>,
        now: dpop_core::UnixTime,
    ) -> Result<Attempt, u64> {
        let now_ms = now.as_secs().saturating_mul(1000);
        let client = Self::client_key(id);
        let address = address.map(address_key);
        let (mut by_client, mut by_address) = self.lock_both();
        let wait = by_client
            .wait(&client, now_ms)
            .max(address.map_or(0, |a| by_address.wait(&a, now_ms)));
        if wait > 0 {
            return Err(wait.div_ceil(1000));
        }
        by_client.failed(client, now_ms);
        if let Some(a) = address {
            by_address.failed(a, now_ms);
        }
        Ok(Attempt { client, address })
    }

    /// Both tables, always client then address (one lock order). A poisoned lock's data
    /// is still used, so the limits keep applying.
    fn lock_both(
        &self,
    ) -> (
        MutexGuard<'_, Allowances<[u8; 32]>>,
        MutexGuard<'_, Allowances<IpAddr>>,
    ) {
        let by_client = self
            .by_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let by_address = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (by_client, by_address)
    }

    /// The check begun as `attempt` succeeded: it does not count as a failure.
    pub(crate) fn succeeded(&self, attempt: Attempt) {
        let (mut by_client, mut by_address) = self.lock_both();
        by_client.refund(&attempt.client);
        if let Some(a) = attempt.address {
            by_address.refund(&a);
        }
    }
}

/// A secret check counted as a failure until [`AttemptLimiter::succeeded`] says
/// otherwise (a check that never finishes stays counted).
#[derive(Debug)]
#[must_use]
pub(crate) struct Attempt {
    client: [u8; 32],
    address: Option<IpAddr>,
}

/// Verifies a `private_key_jwt` assertion: signed by one of the client's keys, `iss` and
/// `sub` the client id, `aud` this issuer (or one of its endpoints), short-lived, and its
/// `jti` never seen before.
async fn check_assertion(state: &State, client: &Client, jwt: &str) -> Result<bool, OAuthError> {
    let Some(keys) = &client.jwks else {
        return Ok(false);
    };
    let now = state.now()?;
    let mut validation = JwtValidation::new(&client.id, None);
    validation.typ = TypPolicy::AtJwtOrJwt;
    validation.algorithms = ASSERTION_ALGS
        .iter()
        .filter_map(|a| Algorithm::from_name(a))
        .collect();
    let verified = match verify_jwt(jwt, keys, &validation, now) {
        Ok(v) => v,
        Err(e) => {
            tracing::info!(target: "dpop::issuer", client_id = %client.id, error = %e, "client assertion refused");
            return Ok(false);
        }
    };
    if verified.str_claim("sub") != Some(client.id.as_str()) {
        return Ok(false);
    }
    let iss = &state.config.issuer;
    let accepted = [
        iss.clone(),
        format!("{iss}/token"),
        format!("{iss}/introspect"),
        format!("{iss}/revoke"),
    ];
    if !verified
        .audiences()
        .iter()
        .any(|a| accepted.iter().any(|x| x == a))
    {
        tracing::info!(target: "dpop::issuer", client_id = %client.id, "client assertion aud is not this issuer");
        return Ok(false);
    }
    if verified.expires_at
        > now.saturating_add(std::time::Duration::from_secs(MAX_ASSERTION_LIFETIME_SECS))
    {
        tracing::info!(target: "dpop::issuer", client_id = %client.id, "client assertion lives too long");
        return Ok(false);
    }
    let Some(jti) = verified
        .str_claim("jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
    else {
        tracing::info!(target: "dpop::issuer", client_id = %client.id, "client assertion has no jti");
        return Ok(false);
    };
    let key = format!(
        "assertion:{}:{}",
        client.id,
        crate::tokens::sha256_b64(jti.as_bytes())
    );
    let expires = secs(
        verified
            .expires_at
            .saturating_add(std::time::Duration::from_secs(60)),
    );
    let first = state.store.use_once(&key, expires, secs(now)).await?;
    if !first {
        tracing::warn!(target: "dpop::issuer", client_id = %client.id, "client assertion replayed");
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn allowances_refuse_past_the_limit_and_recover() {
        let mut a = Allowances::<u8>::new(4, Duration::from_secs(60), 100);
        for _ in 0..4 {
            assert_eq!(a.wait(&1, 0), 0);
            a.failed(1, 0);
        }
        assert_eq!(a.wait(&1, 0), 15_000);
        assert_eq!(a.wait(&2, 0), 0);
        assert_eq!(a.wait(&1, 14_999), 1);
        assert_eq!(a.wait(&1, 15_000), 0);
        a.failed(1, 15_000);
        assert_eq!(a.wait(&1, 15_000), 15_000);
        // A full window later everything is forgotten.
        assert_eq!(a.wait(&1, 90_000), 0);
        // 0: no limit.
        let mut off = Allowances::<u8>::new(0, Duration::from_secs(60), 100);
        for _ in 0..1000 {
            off.failed(1, 0);
        }
        assert_eq!(off.wait(&1, 0), 0);
    }

    #[test]
    fn attempts_are_counted_when_they_begin_and_given_back_on_success() {
        let limits = AuthLimits {
            failures_per_client: 3,
            ..AuthLimits::default()
        };
        let limiter = AttemptLimiter::new(&limits);
        let now = dpop_core::UnixTime::from_secs(1_000);
        let address: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        // Three checks in flight at once use up the allowance; a fourth waits.
        let attempts: Vec<Attempt> = (0..3)
            .map(|_| limiter.begin("c", address, now).unwrap())
            .collect();
        assert_eq!(limiter.begin("c", address, now).unwrap_err(), 20);
        // One of them succeeds: its place comes back.
        let mut attempts = attempts.into_iter();
        limiter.succeeded(attempts.next().unwrap());
        let again = limiter.begin("c", address, now).unwrap();
        assert!(limiter.begin("c", address, now).is_err());
        limiter.succeeded(again);
        // Another id from another address is not concerned.
        assert!(limiter.begin("d", None, now).is_ok());
    }

    #[test]
    fn allowances_stay_within_their_capacity() {
        let mut a = Allowances::<u32>::new(2, Duration::from_secs(60), 100);
        for k in 0..10_000 {
            a.failed(k, 0);
            assert!(a.until.len() <= 100);
        }
        // Two failures of one key make it the last to be forgotten.
        a.failed(5_000_000, 0);
        a.failed(5_000_000, 0);
        for k in 20_000..20_500 {
            a.failed(k, 0);
        }
        assert!(a.until.len() <= 100);
        assert!(a.wait(&5_000_000, 0) > 0);
    }

    #[test]
    fn ipv6_addresses_count_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_addresses_only_from_trusted_proxies() {
        let mut limits = AuthLimits::default();
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.9".parse().unwrap(),
        );
        headers.append("x-forwarded-for", "10.0.0.7".parse().unwrap());
        // Not trusted: the peer.
        assert_eq!(client_address_of(&limits, peer, &headers), peer);
        limits.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        // Trusted: right to left past the trusted hops, never the client-written part.
        assert_eq!(
            client_address_of(&limits, peer, &headers),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A hop that is not an address ends the walk at the last trusted one.
        let mut odd = HeaderMap::new();
        odd.append("x-forwarded-for", "203.0.113.9, unknown".parse().unwrap());
        assert_eq!(client_address_of(&limits, peer, &odd), peer);
        // Without the header: the proxy itself.
        assert_eq!(client_address_of(&limits, peer, &HeaderMap::new()), peer);
    }
}
