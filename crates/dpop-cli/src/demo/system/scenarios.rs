//! The attack scenarios: a DPoP call, then what DPoP exists to stop (replay, a stolen
//! token, a Bearer downgrade, a proof for another request, a stale proof), the CI job,
//! and a disabled client.

use std::sync::Arc;
use std::time::Duration;

use dpop_client::{ClientAuth, Grant};
use dpop_core::{Algorithm, PrivateKey, ProofBuilder, SystemRandomSource, UnixTime};

use super::ci;
use super::report::{Row, describe};
use super::setup::{System, failed};
use crate::clock::now;
use crate::error::CliError;

fn proof(
    key: &PrivateKey,
    method: &str,
    url: &str,
    token: &str,
    nonce: Option<&str>,
    iat: UnixTime,
) -> String {
    let build = || -> Result<String, dpop_core::Error> {
        let mut b = ProofBuilder::new(method, url)?.access_token(token);
        if let Some(n) = nonce {
            b = b.nonce(n)?;
        }
        b.sign(key, &SystemRandomSource, iat)
    };
    build().unwrap_or_default()
}

fn token_of(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("DPoP "))
        .unwrap_or_default()
        .to_owned()
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario after the other reads best"
)]
pub(super) async fn scenarios(sys: &System) -> Result<Vec<Row>, CliError> {
    let mut rows = Vec::new();
    let items = format!("{}/v1/items", sys.gateway_url);
    let billing = sys.client(
        ClientAuth::Secret {
            client_id: "billing".into(),
            secret: Arc::new(sys.billing_secret.clone().into()),
        },
        Grant::ClientCredentials,
        Some("items:read"),
    )?;

    // 1. A DPoP call: the token endpoint and the gateway both ask for a nonce first.
    let r = billing.http.get(&items).send().await;
    let status = r.as_ref().map_or(0, |r| r.status().as_u16());
    let body = match r {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => e.to_string(),
    };
    let seen = billing.recorder.take();
    let ok = status == 200
        && seen
            .statuses
            .first()
            .is_some_and(|(s, e)| *s == 401 && e == "use_dpop_nonce")
        && body.contains("\"caller\":\"billing\"");
    rows.push(Row {
        scenario: "DPoP call with a fresh token, after a nonce challenge",
        why: "the proof is signed by the key the token is bound to; the gateway first hands out a nonce",
        expected: "401 use_dpop_nonce, then 200".into(),
        observed: describe(&seen.statuses),
        ok,
    });
    let (sent_url, sent_headers) = seen.last_request.clone().unwrap_or_default();
    let token = token_of(&sent_headers);
    let nonce = seen.nonce.clone();

    // 2. The same request, byte for byte: the proof was used.
    let replay: Vec<(&str, String)> = sent_headers
        .iter()
        .filter(|(k, _)| *k == "authorization" || *k == "dpop")
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v.to_owned())))
        .collect();
    let (s, e) = sys.raw("GET", &sent_url, &replay).await;
    rows.push(Row {
        scenario: "The same proof replayed",
        why: "every proof's jti is recorded: a captured request cannot be sent again",
        expected: "401 invalid_dpop_proof".into(),
        observed: describe(&[(s, e.clone())]),
        ok: s == 401 && e == "invalid_dpop_proof",
    });

    let now = now()?;
    let nonce = nonce.as_deref();
    // 3. The token stolen (from a log, a CI cache) and used with the thief's key.
    let thief = PrivateKey::generate(Algorithm::Es256).map_err(|e| failed("key")(&e))?;
    let (s, e) = sys
        .raw(
            "GET",
            &items,
            &[
                ("authorization", format!("DPoP {token}")),
                ("dpop", proof(&thief, "GET", &items, &token, nonce, now)),
            ],
        )
        .await;
    rows.push(Row {
        scenario: "The token stolen and used with another key",
        why: "the token's cnf.jkt names the client's key, not the thief's",
        expected: "401 invalid_token".into(),
        observed: describe(&[(s, e.clone())]),
        ok: s == 401 && e == "invalid_token",
    });

    // 4. The token presented as a Bearer token, without proof.
    let (s, e) = sys
        .raw(
            "GET",
            &items,
            &[("authorization", format!("Bearer {token}"))],
        )
        .await;
    rows.push(Row {
        scenario: "The token sent as a Bearer token",
        why: "a DPoP-bound token is accepted only with a proof from its key",
        expected: "401".into(),
        observed: describe(&[(s, e.clone())]),
        ok: s == 401,
    });

    // 5. A proof made for another request: another URL, then another method.
    let other = format!("{}/v1/admin", sys.gateway_url);
    let (s1, e1) = sys
        .raw(
            "GET",
            &items,
            &[
                ("authorization", format!("DPoP {token}")),
                (
                    "dpop",
                    proof(&billing.key, "GET", &other, &token, nonce, now),
                ),
            ],
        )
        .await;
    let (s2, e2) = sys
        .raw(
            "GET",
            &items,
            &[
                ("authorization", format!("DPoP {token}")),
                (
                    "dpop",
                    proof(&billing.key, "DELETE", &items, &token, nonce, now),
                ),
            ],
        )
        .await;
    rows.push(Row {
        scenario: "A proof made for another URL, then another method",
        why: "a proof signs one method and URL (htm, htu)",
        expected: "401 invalid_dpop_proof, twice".into(),
        observed: describe(&[(s1, e1.clone()), (s2, e2.clone())]),
        ok: s1 == 401 && e1 == "invalid_dpop_proof" && s2 == 401 && e2 == "invalid_dpop_proof",
    });

    // 6. A proof signed five minutes ago (captured, then used late).
    let stale = now.saturating_sub(Duration::from_secs(300));
    let (s, e) = sys
        .raw(
            "GET",
            &items,
            &[
                ("authorization", format!("DPoP {token}")),
                (
                    "dpop",
                    proof(&billing.key, "GET", &items, &token, nonce, stale),
                ),
            ],
        )
        .await;
    rows.push(Row {
        scenario: "A stale proof (signed 5 minutes ago)",
        why: "proofs are accepted for 60 s after their iat",
        expected: "401 invalid_dpop_proof".into(),
        observed: describe(&[(s, e.clone())]),
        ok: s == 401 && e == "invalid_dpop_proof",
    });

    // 7. A CI job: no stored secret, only its short job token, exchanged (RFC 8693) for
    //    a DPoP-bound token for its own fresh key; then it deploys.
    ci::scenarios(sys, now, &mut rows).await?;

    // 8. Offboarding: the billing client is disabled; its next call fails.
    dpop_issuer::set_client_disabled(&sys.issuer_config, "billing", true, now)
        .await
        .map_err(|e| failed("disable")(&e))?;
    // The gateway learns by introspection that the token is no longer active; the
    // client's attempt to get a new one is refused too.
    let r = billing.http.get(&items).send().await;
    let seen = billing.recorder.take();
    let (ok, tail) = match r {
        Ok(resp) => (resp.status().as_u16() == 401, String::new()),
        Err(e) => {
            let refused = format!("{e:#}").contains("invalid_client");
            (refused, ", new token refused: invalid_client".to_owned())
        }
    };
    rows.push(Row {
        scenario: "The client is disabled; its next call",
        why: "the gateway introspects tokens; the issuer reports the client's tokens inactive",
        expected: "401 invalid_token".into(),
        observed: format!("{}{tail}", describe(&seen.statuses)),
        ok: ok
            && seen
                .statuses
                .first()
                .is_some_and(|(s, e)| *s == 401 && e == "invalid_token"),
    });
    Ok(rows)
}
