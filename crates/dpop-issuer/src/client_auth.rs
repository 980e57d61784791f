//! Client authentication (RFC 6749 §2.3, RFC 7523 §2.2): `client_secret_basic`,
//! `client_secret_post`, `private_key_jwt`, and `none` for public clients.
//!
//! Exactly one method per request: a request that mixes methods is refused (RFC 6749
//! §2.3). Every failure is `invalid_client` (401) with the same description whatever the
//! cause among unknown client, wrong secret, or bad assertion, so a caller cannot probe
//! which client ids exist; a secret presented for an unknown client, or for a client
//! without one, costs the same Argon2 check as a wrong secret (see `secret`).
//!
//! Failed secret checks are counted per client id and per client address (see
//! `auth_limits`); over a limit, a request presenting a secret is answered 429
//! `slow_down` with `Retry-After` before anything is checked.

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use dpop_core::Algorithm;
use dpop_core::jwt::{JwtValidation, TypPolicy, UnverifiedJwt, verify_jwt};

use crate::auth_limits;
use crate::config::{AuthMethod, Client};
use crate::error::OAuthError;
use crate::form::Form;
use crate::state::IssuerState;
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
    state: &'s IssuerState,
    headers: &HeaderMap,
    form: &Form,
) -> Result<Option<&'s Client>, OAuthError> {
    let p = presented(headers, form)?;
    Ok(state.config.clients.get(id_of(&p)))
}

/// Authenticates the request as `claimed` (from [`claimed_client`]) and checks that the
/// client is not disabled.
pub(crate) async fn authenticate<'s>(
    state: &'s IssuerState,
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

/// Authenticates the caller of the introspection or revocation endpoint: the client it
/// claims to be, checked at once (no proof comes first there).
pub(crate) async fn authenticate_caller<'s>(
    state: &'s IssuerState,
    headers: &HeaderMap,
    form: &Form,
) -> Result<&'s Client, OAuthError> {
    let claimed = claimed_client(state, headers, form)?;
    authenticate(state, headers, form, claimed).await
}

/// Checks a secret presented for `id` (`claimed`: the client, if it exists), within the
/// attempt limits: `Err(slow_down)` over a limit, without checking.
async fn check_secret(
    state: &IssuerState,
    id: &str,
    claimed: Option<&Client>,
    presented: &str,
) -> Result<bool, OAuthError> {
    let now = state.now()?;
    let address = auth_limits::client_address();
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

/// Verifies a `private_key_jwt` assertion: signed by one of the client's keys, `iss` and
/// `sub` the client id, `aud` this issuer (or one of its endpoints), short-lived, and its
/// `jti` never seen before.
async fn check_assertion(
    state: &IssuerState,
    client: &Client,
    jwt: &str,
) -> Result<bool, OAuthError> {
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
