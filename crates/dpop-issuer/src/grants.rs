//! The grants: `client_credentials`, `refresh_token`, token exchange (RFC 8693).
//!
//! Least privilege throughout: requested scopes and audiences must be within what the
//! client (and, for refresh and exchange, the original grant) allows; when none are
//! requested the client's defaults apply.
//!
//! Exchanging one of this issuer's own access tokens never yields more than the subject
//! token: its audiences and scopes intersected with the exchanging client's, and an
//! expiry no later than its own. Only an authenticated client exchanges them: the
//! subject token's own client (down-scoping) or one configured to act for it
//! (`may_exchange_for`, delegation), for the client the chain of exchanges started with
//! as well as for the subject token's. A Bearer subject token is exchanged only when its
//! client allows it, and never starts a refresh grant; a DPoP-bound one starts one only
//! for a client configured with `refresh_from_exchange`. Every token and refresh grant so
//! derived records its lineage, and is revoked with any of its ancestors (a client
//! removed from the configuration counts as disabled). A refresh grant so derived is held
//! to the configuration of the day at each refresh: the delegation must still be allowed,
//! and it keeps only what every client of its lineage may still receive.
//!
//! A trusted external issuer's workload token is held to the same bound: the new token
//! expires no later than it, and no refresh grant is started, unless the matching trust
//! rule sets `outlive_subject`. What derives from a token that must end with its subject
//! (such a workload token, or a Bearer token) carries that mark in its lineage, so no
//! later exchange turns it into a refresh grant either.
//!
//! No access token outlives the refresh grant it is issued with or from: its `exp` is
//! capped at the grant's absolute expiry, after which the grant's record may be purged.

use std::collections::BTreeSet;
use std::time::Duration;

use dpop_core::jwt::split_scope;
use dpop_core::{Jkt, UnixTime};
use serde_json::{Value, json};

use crate::config::{Client, GRANT_CLIENT_CREDENTIALS, GRANT_REFRESH_TOKEN, GRANT_TOKEN_EXCHANGE};
use crate::error::{OAuthError, RfcError};
use crate::form::Form;
use crate::proof::{TokenProof, check_bound_key};
use crate::response::TokenResponse;
use crate::state::IssuerState;
use crate::store::secs;
use crate::store::{Origin, RefreshRecord, Rotation};
use crate::tokens::{self, Grant, Inactive, Lineage};
use crate::trust::TrustError;

/// RFC 8693 §3 token type identifiers.
const TT_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const TT_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// Runs `grant` (already checked to be allowed for `client`).
pub(crate) async fn run(
    state: &IssuerState,
    client: &Client,
    grant: &str,
    form: &Form,
    proof: Option<&TokenProof>,
) -> Result<TokenResponse, OAuthError> {
    match grant {
        GRANT_CLIENT_CREDENTIALS => client_credentials(state, client, form, proof).await,
        GRANT_REFRESH_TOKEN => refresh(state, client, form, proof).await,
        GRANT_TOKEN_EXCHANGE => exchange(state, client, form, proof).await,
        other => Err(OAuthError::new(
            RfcError::UnsupportedGrantType,
            format!("the grant type {other:?} is not supported"),
        )),
    }
}

/// The scopes to grant: the requested ones if all are within `allowed`, else the defaults.
fn choose_scopes(
    form: &Form,
    allowed: &BTreeSet<String>,
    defaults: &[String],
) -> Result<Vec<String>, OAuthError> {
    match form.get("scope") {
        None => Ok(defaults
            .iter()
            .filter(|s| allowed.contains(*s))
            .cloned()
            .collect()),
        Some(scope) => {
            let requested = split_scope(scope);
            if let Some(s) = requested.iter().find(|s| !allowed.contains(*s)) {
                return Err(OAuthError::new(
                    RfcError::InvalidScope,
                    format!("the scope {s:?} is not allowed here"),
                ));
            }
            let mut out: Vec<String> = Vec::new();
            for s in requested {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
            Ok(out)
        }
    }
}

/// The audiences to grant from `resource` (RFC 8707) and `audience` (RFC 8693).
fn choose_audiences(
    form: &Form,
    allowed: &[String],
    defaults: &[String],
) -> Result<Vec<String>, OAuthError> {
    let mut requested: Vec<String> = Vec::new();
    for r in form.all("resource") {
        if r.contains('#') || !r.contains("://") {
            return Err(OAuthError::new(
                RfcError::InvalidTarget,
                "resource must be an absolute URI without a fragment (RFC 8707)",
            ));
        }
    }
    for a in form.all("resource").iter().chain(form.all("audience")) {
        if a.is_empty() {
            continue;
        }
        if !allowed.contains(a) {
            return Err(OAuthError::new(
                RfcError::InvalidTarget,
                format!("the audience {a:?} is not allowed here"),
            ));
        }
        if !requested.contains(a) {
            requested.push(a.clone());
        }
    }
    let chosen = if requested.is_empty() {
        defaults.to_vec()
    } else {
        requested
    };
    if chosen.is_empty() {
        return Err(OAuthError::new(
            RfcError::InvalidTarget,
            "no audience: name the API with resource or audience",
        ));
    }
    Ok(chosen)
}

/// Mints the access token of `grant` and wraps it in the token response.
async fn respond(
    state: &IssuerState,
    grant: &Grant<'_>,
    now: UnixTime,
    refresh_token: Option<String>,
    issued_token_type: Option<&'static str>,
) -> Result<TokenResponse, OAuthError> {
    let (access_token, _) = tokens::mint_access_token(state, grant, now).await?;
    Ok(wrap(grant, access_token, refresh_token, issued_token_type))
}

/// The token response for `grant`'s signed `access_token`.
fn wrap(
    grant: &Grant<'_>,
    access_token: String,
    refresh_token: Option<String>,
    issued_token_type: Option<&'static str>,
) -> TokenResponse {
    TokenResponse {
        access_token,
        token_type: if grant.jkt.is_some() {
            "DPoP"
        } else {
            "Bearer"
        },
        expires_in: grant.lifetime.as_secs(),
        scope: grant.scopes.join(" "),
        refresh_token,
        issued_token_type,
    }
}

async fn client_credentials(
    state: &IssuerState,
    client: &Client,
    form: &Form,
    proof: Option<&TokenProof>,
) -> Result<TokenResponse, OAuthError> {
    let now = state.now()?;
    let scopes = choose_scopes(form, &client.scopes, &client.default_scopes)?;
    let audiences = choose_audiences(form, &client.audiences, &client.default_audiences)?;
    // RFC 6749 §4.4.3: no refresh token; the client can authenticate again.
    respond(
        state,
        &Grant {
            client_id: &client.id,
            subject: &client.subject,
            scopes: &scopes,
            audiences: &audiences,
            jkt: proof.map(TokenProof::jkt),
            act: None,
            lifetime: client.access_token_lifetime,
            lineage: &Lineage::default(),
        },
        now,
        None,
        None,
    )
    .await
}

async fn refresh(
    state: &IssuerState,
    client: &Client,
    form: &Form,
    proof: Option<&TokenProof>,
) -> Result<TokenResponse, OAuthError> {
    let now = state.now()?;
    let presented = form.require("refresh_token")?;
    let hash = tokens::refresh_hash(presented);
    let record = state
        .store
        .find_refresh(&hash)
        .await?
        .ok_or_else(|| OAuthError::invalid_grant("the refresh token is invalid"))?;
    if record.client_id != client.id {
        return Err(OAuthError::invalid_grant(
            "the refresh token was issued to another client",
        ));
    }
    if record.family_revoked_at.is_some() {
        return Err(OAuthError::invalid_grant("the refresh token was revoked"));
    }
    if record.used_at.is_some() {
        reuse_detected(state, &record, now).await?;
        return Err(reused());
    }
    if record.expires_at <= secs(now) || record.family_expires_at <= secs(now) {
        return Err(OAuthError::invalid_grant("the refresh token has expired"));
    }
    // A grant derived by exchange ends with any token it derives from (its client
    // disabled or removed, it or its refresh family revoked), even one revoked while the
    // family was being created; the family is then revoked for good.
    let lineage = state.store.family_lineage(&record.family_id).await?;
    if grant_revoked(state, &record, &lineage).await? {
        state.store.revoke_family(&record.family_id, now).await?;
        return Err(OAuthError::invalid_grant(
            "this grant, or a token it was derived from, was revoked",
        ));
    }
    if !delegation_allowed(client, &lineage) {
        return Err(OAuthError::invalid_grant(
            "the configuration no longer lets this client hold a grant derived from these tokens",
        ));
    }
    // RFC 9449 §5: a public client's refresh token is bound to its DPoP key.
    if let Some(bound) = &record.jkt {
        let bound = Jkt::parse(bound)
            .map_err(|_| OAuthError::server_error("a stored refresh token's jkt is malformed"))?;
        check_bound_key(state, proof, &bound, "the refresh token")?;
    }
    // RFC 6749 §6: at most the scopes of the original grant, and of those only what
    // the configuration still allows this client and every client of the lineage, so
    // narrowing any of them or a trust rule takes effect at the next refresh.
    let (mut allowed_scopes, mut allowed_audiences) = allowed_now(state, client, &record.subject);
    for origin in &lineage {
        let Some(ancestor) = state.config.clients.get(&origin.client_id) else {
            return Err(OAuthError::invalid_grant(
                "a client this grant was derived from is no longer registered",
            ));
        };
        let (scopes, audiences) = allowed_now(state, ancestor, &record.subject);
        allowed_scopes.retain(|s| scopes.contains(s));
        allowed_audiences.retain(|a| audiences.contains(a));
    }
    let granted: BTreeSet<String> = split_scope(&record.scope)
        .into_iter()
        .filter(|s| allowed_scopes.contains(s))
        .collect();
    let granted_list: Vec<String> = granted.iter().cloned().collect();
    let scopes = choose_scopes(form, &granted, &granted_list)?;
    let record_audiences: Vec<String> = split_scope(&record.audience)
        .into_iter()
        .filter(|a| allowed_audiences.contains(a))
        .collect();
    if record_audiences.is_empty() {
        return Err(OAuthError::invalid_grant(
            "none of this grant's audiences is allowed any more",
        ));
    }
    let audiences = choose_audiences(form, &record_audiences, &record_audiences)?;
    let act: Option<Value> = record
        .act
        .as_deref()
        .and_then(|a| serde_json::from_str(a).ok());

    let (token, new_hash) = tokens::new_refresh_token()?;
    let expires_at = secs(now.saturating_add(state.config.lifetimes.refresh_token_idle))
        .min(record.family_expires_at);
    let next = RefreshRecord {
        token_hash: new_hash,
        created_at: secs(now),
        expires_at,
        used_at: None,
        ..record.clone()
    };
    let lineage = Lineage {
        family: Some(record.family_id.clone()),
        from: lineage,
        ends_with_subject: false,
    };
    let grant = Grant {
        client_id: &client.id,
        subject: &record.subject,
        scopes: &scopes,
        audiences: &audiences,
        jkt: proof.map(TokenProof::jkt),
        act,
        lifetime: within(client.access_token_lifetime, now, record.family_expires_at),
        lineage: &lineage,
    };
    // Signed before the refresh token rotates: a key that cannot sign leaves the
    // presented refresh token unused, for the client to retry with.
    let (access_token, _) = tokens::mint_access_token(state, &grant, now).await?;
    match state.store.rotate_refresh(&hash, &next, now).await? {
        Rotation::Rotated => {}
        Rotation::AlreadyUsed => {
            reuse_detected(state, &record, now).await?;
            return Err(reused());
        }
    }
    Ok(wrap(&grant, access_token, Some(token), None))
}

/// `lifetime`, shortened so that a token issued at `now` expires no later than `end`.
fn within(lifetime: Duration, now: UnixTime, end: i64) -> Duration {
    let left = u64::try_from(end.saturating_sub(secs(now))).unwrap_or(0);
    lifetime.min(Duration::from_secs(left))
}

/// Whether `client` may act for `other`'s tokens: its own, or listed in `may_exchange_for`.
fn may_act_for(client: &Client, other: &str) -> bool {
    other == client.id || client.may_exchange_for.contains(other)
}

/// Whether the configuration still lets `client` hold a refresh grant derived by
/// exchange from `lineage` (empty: not derived from this issuer's tokens): it must
/// still have `refresh_from_exchange` and be allowed to act for the client the chain
/// started with and for the one whose token started the grant, as an exchange would
/// require today.
pub(crate) fn delegation_allowed(client: &Client, lineage: &[Origin]) -> bool {
    let (Some(root), Some(last)) = (lineage.first(), lineage.last()) else {
        return true;
    };
    client.refresh_from_exchange
        && may_act_for(client, &root.client_id)
        && may_act_for(client, &last.client_id)
}

/// Whether a refresh grant was revoked: its family, any token or client it derives from
/// (a client disabled, or removed from the configuration), or its own client disabled
/// at or after the family was created (a family stored by a request that authenticated
/// just before the client was disabled escapes the disabling's revocation of its
/// families, and must not come back when the client is enabled again).
pub(crate) async fn grant_revoked(
    state: &IssuerState,
    record: &RefreshRecord,
    lineage: &[Origin],
) -> Result<bool, OAuthError> {
    if record.family_revoked_at.is_some() || tokens::unregistered(state, lineage) {
        return Ok(true);
    }
    let holder = state.store.client_state(&record.client_id).await?;
    if holder.disabled_at.is_some()
        || holder
            .tokens_invalid_before
            .is_some_and(|t| t >= record.family_created_at)
    {
        return Ok(true);
    }
    Ok(state.store.lineage_revoked(None, lineage).await?)
}

/// What `client` may receive for `subject` under the current configuration: its own
/// scopes and audiences, plus those of the trust rules that map a workload token to
/// `subject` for it.
fn allowed_now(
    state: &IssuerState,
    client: &Client,
    subject: &str,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut scopes = client.scopes.clone();
    let mut audiences: BTreeSet<String> = client.audiences.iter().cloned().collect();
    for rule in state.config.trust.iter().flat_map(|t| t.rules.iter()) {
        if rule.workload == subject
            && (rule.clients.is_empty() || rule.clients.contains(&client.id))
        {
            scopes.extend(rule.scopes.iter().cloned());
            audiences.extend(rule.audiences.iter().cloned());
        }
    }
    (scopes, audiences)
}

fn reused() -> OAuthError {
    OAuthError::invalid_grant(
        "the refresh token was already used; every token of this grant is now revoked",
    )
}

async fn reuse_detected(
    state: &IssuerState,
    record: &RefreshRecord,
    now: UnixTime,
) -> Result<(), OAuthError> {
    tracing::warn!(
        target: "dpop::issuer",
        client_id = %record.client_id,
        family = %record.family_id,
        "refresh token reuse: revoking the whole family"
    );
    state.store.revoke_family(&record.family_id, now).await?;
    Ok(())
}

/// The subject of a token exchange, whichever kind of token it came from.
struct Subject {
    subject: String,
    scopes: BTreeSet<String>,
    default_scopes: Vec<String>,
    audiences: Vec<String>,
    default_audiences: Vec<String>,
    jkt: Option<Jkt>,
    act: Option<Value>,
    /// The client of one of our own tokens: the exchanging client must be it or act for it.
    client: Option<String>,
    /// The new token expires no later than this: the subject token's `exp`, unless a
    /// trust rule lets the new token outlive an external one.
    expires_at: Option<UnixTime>,
    /// What the new token and its refresh grant derive from.
    lineage: Vec<Origin>,
    /// Whether the exchange may start a refresh grant.
    may_refresh: bool,
    /// Whether the new token must end with the subject token (see [`Lineage`]).
    ends_with_subject: bool,
}

async fn exchange(
    state: &IssuerState,
    client: &Client,
    form: &Form,
    proof: Option<&TokenProof>,
) -> Result<TokenResponse, OAuthError> {
    let now = state.now()?;
    let subject_token = form.require("subject_token")?;
    let subject_type = form.require("subject_token_type")?;
    if form.get("actor_token").is_some() || form.get("actor_token_type").is_some() {
        return Err(OAuthError::invalid_request(
            "actor_token is not supported: the authenticated client is the actor",
        ));
    }
    if let Some(t) = form.get("requested_token_type")
        && t != TT_ACCESS_TOKEN
        && t != TT_JWT
    {
        return Err(OAuthError::invalid_request(format!(
            "requested_token_type {t:?} is not supported; this server issues access tokens"
        )));
    }
    let own = match subject_type {
        TT_ACCESS_TOKEN => true,
        TT_JWT | TT_ID_TOKEN => dpop_core::jwt::UnverifiedJwt::parse(subject_token)
            .is_ok_and(|j| j.str_claim("iss") == Some(state.config.issuer.as_str())),
        other => {
            return Err(OAuthError::invalid_request(format!(
                "subject_token_type {other:?} is not supported"
            )));
        }
    };
    if own && client.is_public() {
        return Err(OAuthError::new(
            RfcError::UnauthorizedClient,
            "a public client cannot exchange this issuer's tokens: that takes an authenticated client",
        ));
    }
    let subject = if own {
        own_subject(state, client, subject_token, now).await?
    } else {
        external_subject(state, client, subject_token, now).await?
    };
    // A proof-of-possession subject token is only exchanged by its key holder.
    if let Some(bound) = &subject.jkt {
        check_bound_key(state, proof, bound, "the subject token")?;
    }
    // Delegation: another client acts for the subject token's client only when the
    // configuration says it may.
    // Delegation does not chain past the configuration: the client that obtained the
    // first token of the chain (whose subject the new token names) must be one this
    // client may act for too, not only the subject token's.
    let root = subject.lineage.first().map(|o| o.client_id.as_str());
    for subject_client in subject.client.as_deref().into_iter().chain(root) {
        if !may_act_for(client, subject_client) {
            return Err(OAuthError::new(
                RfcError::UnauthorizedClient,
                format!(
                    "this client may not exchange the tokens of client {subject_client:?} (may_exchange_for)"
                ),
            ));
        }
    }
    let scopes = choose_scopes(form, &subject.scopes, &subject.default_scopes)?;
    let audiences = choose_audiences(form, &subject.audiences, &subject.default_audiences)?;
    let mut lifetime = match subject.expires_at {
        Some(exp) => within(client.access_token_lifetime, now, secs(exp)),
        None => client.access_token_lifetime,
    };
    let mut family = None;
    let mut new_family = None;
    let refresh_token = if subject.may_refresh
        && !subject.ends_with_subject
        && client.grants.contains(GRANT_REFRESH_TOKEN)
    {
        let (token, hash) = tokens::new_refresh_token()?;
        let family_expires =
            secs(now.saturating_add(state.config.lifetimes.refresh_token_absolute));
        lifetime = within(lifetime, now, family_expires);
        let family_id = tokens::random_id()?;
        let record = RefreshRecord {
            token_hash: hash,
            family_id: family_id.clone(),
            client_id: client.id.clone(),
            subject: subject.subject.clone(),
            scope: scopes.join(" "),
            audience: audiences.join(" "),
            // Public clients' refresh tokens are bound to the key (RFC 9449 §5).
            jkt: if client.is_public() {
                proof.map(|p| p.jkt().as_str().to_owned())
            } else {
                None
            },
            act: subject.act.as_ref().map(Value::to_string),
            created_at: secs(now),
            expires_at: secs(now.saturating_add(state.config.lifetimes.refresh_token_idle))
                .min(family_expires),
            used_at: None,
            family_revoked_at: None,
            family_expires_at: family_expires,
            family_created_at: secs(now),
        };
        family = Some(family_id);
        new_family = Some(record);
        Some(token)
    } else {
        None
    };
    let lineage = Lineage {
        family,
        from: subject.lineage,
        ends_with_subject: subject.ends_with_subject,
    };
    let grant = Grant {
        client_id: &client.id,
        subject: &subject.subject,
        scopes: &scopes,
        audiences: &audiences,
        jkt: proof.map(TokenProof::jkt),
        act: subject.act.clone(),
        lifetime,
        lineage: &lineage,
    };
    // Signed before the refresh grant is recorded: a key that cannot sign leaves no grant
    // whose refresh token nobody received.
    let (access_token, _) = tokens::mint_access_token(state, &grant, now).await?;
    if let Some(record) = &new_family {
        state.store.insert_family(record, &lineage.from).await?;
    }
    Ok(wrap(
        &grant,
        access_token,
        refresh_token,
        Some(TT_ACCESS_TOKEN),
    ))
}

/// One of our own access tokens: down-scoping (same client) or delegation (another
/// client acts for the subject, recorded in `act`). The new token gets at most what the
/// subject token has, as far as the exchanging client may receive it.
async fn own_subject(
    state: &IssuerState,
    client: &Client,
    token: &str,
    now: UnixTime,
) -> Result<Subject, OAuthError> {
    // Also refuses a token whose client is disabled or whose ancestors were revoked.
    let jwt = match tokens::verify_own(state, token, now).await {
        Ok(j) => j,
        Err(Inactive::Store(e)) => return Err(e.into()),
        Err(Inactive::Revoked) => {
            return Err(OAuthError::invalid_grant("the subject token was revoked"));
        }
        Err(Inactive::Invalid(e)) => {
            return Err(OAuthError::invalid_grant(format!(
                "the subject token is invalid: {e}"
            )));
        }
    };
    let jkt = jwt
        .jkt()
        .map_err(|_| OAuthError::invalid_grant("the subject token's cnf.jkt is malformed"))?;
    let subject = jwt
        .str_claim("sub")
        .ok_or_else(|| OAuthError::invalid_grant("the subject token has no sub"))?
        .to_owned();
    let subject_client = jwt.str_claim("client_id").unwrap_or("");
    let Some(registered) = state.config.clients.get(subject_client) else {
        return Err(OAuthError::invalid_grant(
            "the subject token's client is no longer registered",
        ));
    };
    // A Bearer token proves nothing about who presents it: one copied from a log must
    // not become a token bound to the copier's key.
    if jkt.is_none() && !registered.allow_bearer_exchange {
        return Err(OAuthError::invalid_grant(
            "the subject token is a Bearer token, and its client does not allow exchanging those",
        ));
    }
    let prior = Lineage::of(&jwt)
        .ok_or_else(|| OAuthError::invalid_grant("the subject token's lineage is malformed"))?;
    if prior.from.len() >= tokens::MAX_LINEAGE {
        return Err(OAuthError::invalid_grant(
            "the subject token results from too many exchanges already",
        ));
    }
    let origin = tokens::origin_of(&jwt, &prior).ok_or_else(|| {
        OAuthError::invalid_grant("the subject token lacks client_id, iat or jti")
    })?;
    let mut lineage = prior.from;
    lineage.push(origin);
    let subject_scopes: BTreeSet<String> = jwt
        .str_claim("scope")
        .map(split_scope)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| client.scopes.contains(s))
        .collect();
    let audiences: Vec<String> = jwt
        .audiences()
        .iter()
        .filter(|a| client.audiences.iter().any(|c| c == *a))
        .map(|a| (*a).to_owned())
        .collect();
    if audiences.is_empty() {
        return Err(OAuthError::new(
            RfcError::InvalidTarget,
            "none of the subject token's audiences may be issued to this client",
        ));
    }
    let prior_act = jwt.claims.get("act").cloned();
    let act = if subject_client == client.id {
        prior_act
    } else {
        let mut act = json!({ "sub": client.id });
        if let (Some(o), Some(prior)) = (act.as_object_mut(), prior_act) {
            o.insert("act".to_owned(), prior);
        }
        Some(act)
    };
    // Never a refresh grant from a Bearer token, whoever presents it, nor from anything
    // exchanged from one or from a token that must end with its own subject.
    let ends_with_subject = prior.ends_with_subject || jkt.is_none();
    Ok(Subject {
        subject,
        default_scopes: subject_scopes.iter().cloned().collect(),
        scopes: subject_scopes,
        default_audiences: audiences.clone(),
        audiences,
        may_refresh: !ends_with_subject && client.refresh_from_exchange,
        ends_with_subject,
        jkt,
        act,
        client: Some(subject_client.to_owned()),
        expires_at: Some(jwt.expires_at),
        lineage,
    })
}

/// A workload token from a trusted external issuer (CI job token, Kubernetes
/// service-account token), mapped by the first matching trust rule. What is issued for
/// it expires no later than it and has no refresh grant, unless the rule sets
/// `outlive_subject`.
async fn external_subject(
    state: &IssuerState,
    client: &Client,
    token: &str,
    now: UnixTime,
) -> Result<Subject, OAuthError> {
    let ext = match state.trust.verify(token, now).await {
        Ok(e) => e,
        Err(TrustError::Unavailable(why)) => {
            tracing::warn!(target: "dpop::issuer", error = %why, "trusted issuer unreachable");
            return Err(OAuthError::new(
                RfcError::TemporarilyUnavailable,
                "the subject token's issuer keys cannot be fetched; retry later",
            ));
        }
        Err(TrustError::UnknownIssuer) => {
            return Err(OAuthError::invalid_grant(
                "the subject token's issuer is not trusted",
            ));
        }
        Err(TrustError::NoRuleMatched) => {
            return Err(OAuthError::invalid_grant(
                "no trust rule matches the subject token's claims",
            ));
        }
        Err(e) => {
            return Err(OAuthError::invalid_grant(format!(
                "the subject token is refused: {e}"
            )));
        }
    };
    if !ext.clients.is_empty() && !ext.clients.contains(&client.id) {
        return Err(OAuthError::invalid_grant(format!(
            "the client may not exchange tokens of workload {:?}",
            ext.workload
        )));
    }
    let audiences = if ext.audiences.is_empty() {
        client.audiences.clone()
    } else {
        ext.audiences.clone()
    };
    let default_audiences = if ext.audiences.is_empty() {
        client.default_audiences.clone()
    } else {
        ext.audiences.clone()
    };
    // Least privilege: the new token ends when the subject token does and nothing is
    // left to refresh, unless the rule explicitly lets the workload's grant outlive it.
    let expires_at = if ext.outlive_subject {
        None
    } else if ext.expires_at <= now {
        // Within the verifier's clock leeway: there is no time left to grant.
        return Err(OAuthError::invalid_grant("the subject token has expired"));
    } else {
        Some(ext.expires_at)
    };
    tracing::info!(target: "dpop::issuer", trust = %ext.trust, workload = %ext.workload, external_sub = ext.subject.as_deref().unwrap_or(""), outlive_subject = ext.outlive_subject, "external token accepted");
    Ok(Subject {
        subject: ext.workload.clone(),
        default_scopes: ext.scopes.clone(),
        scopes: ext.scopes.iter().cloned().collect(),
        audiences,
        default_audiences,
        jkt: ext.jkt.clone(),
        act: None,
        client: None,
        expires_at,
        lineage: Vec::new(),
        may_refresh: ext.outlive_subject,
        ends_with_subject: !ext.outlive_subject,
    })
}
