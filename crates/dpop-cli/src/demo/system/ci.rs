//! The CI-job scenario: a stand-in CI system (think GitHub Actions) issues job tokens,
//! and a job exchanges its token (RFC 8693) for a DPoP-bound one to deploy.

use std::sync::Arc;

use axum::routing::get;
use dpop_client::{ClientAuth, Grant, SubjectToken};
use dpop_core::{Algorithm, PrivateKey, UnixTime};
use serde_json::json;

use super::report::{Row, describe};
use super::setup::{System, failed, listen, random_secret, spawn_router};
use crate::error::CliError;

const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A stand-in CI system (think GitHub Actions): OpenID metadata, JWKS, and job tokens.
pub(super) struct CiSystem {
    pub(super) url: String,
    key: PrivateKey,
}

impl CiSystem {
    pub(super) async fn start() -> Result<Self, CliError> {
        let (listener, addr) = listen().await?;
        let url = format!("http://{addr}");
        let key = PrivateKey::generate(Algorithm::Es256).map_err(|e| failed("CI key")(&e))?;
        let mut jwk = key.public_jwk().to_json_value();
        jwk["kid"] = "ci-1".into();
        let jwks = json!({ "keys": [jwk] });
        let meta = json!({ "issuer": url, "jwks_uri": format!("{url}/jwks") });
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { axum::Json(meta) }),
            )
            .route("/jwks", get(move || async move { axum::Json(jwks) }));
        spawn_router(listener, router);
        Ok(Self { url, key })
    }

    /// A job token for a workflow of `repository` on `git_ref`, for `audience`.
    fn job_token(
        &self,
        repository: &str,
        git_ref: &str,
        audience: &str,
        now: UnixTime,
    ) -> Result<String, CliError> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": "ci-1"});
        let claims = json!({
            "iss": self.url,
            "sub": format!("repo:{repository}:ref:{git_ref}"),
            "aud": audience,
            "repository": repository,
            "ref": git_ref,
            "iat": now.as_secs(),
            "exp": now.as_secs() + 300,
            "jti": random_secret()?,
        });
        dpop_core::jws::sign_compact(&header, &claims, &self.key)
            .map_err(|e| failed("CI token")(&e))
    }
}

/// A job on the trusted branch deploys; a job on another branch is refused.
pub(super) async fn scenarios(
    sys: &System,
    now: UnixTime,
    rows: &mut Vec<Row>,
) -> Result<(), CliError> {
    // No stored secret, only the short job token, exchanged for a DPoP-bound token for
    // the job's own fresh key.
    let job_token = sys
        .ci
        .job_token("acme/shop", "refs/heads/main", &sys.issuer_url, now)?;
    let ci = sys.client(
        ClientAuth::Public {
            client_id: "ci".into(),
        },
        Grant::TokenExchange {
            subject: SubjectToken::Value(Arc::new(job_token.into())),
            subject_type: JWT_TYPE.into(),
        },
        Some("deploy"),
    )?;
    let r = ci
        .http
        .post(format!("{}/v1/deploy", sys.gateway_url))
        .body("")
        .send()
        .await;
    let status = r.as_ref().map_or(0, |r| r.status().as_u16());
    let body = match r {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => e.to_string(),
    };
    let seen = ci.recorder.take();
    rows.push(Row {
        scenario: "A CI job exchanges its job token and deploys",
        why: "its job token matched a trust rule; the new token is bound to the job's own key",
        expected: "200, as shop-deployer".into(),
        observed: format!(
            "{}{}",
            describe(&seen.statuses),
            if body.contains("shop-deployer") {
                ", as shop-deployer"
            } else {
                ""
            }
        ),
        ok: status == 200 && body.contains("\"by\":\"shop-deployer\""),
    });
    // A job token from another branch is not trusted for deployment.
    let feature = sys
        .ci
        .job_token("acme/shop", "refs/heads/feature", &sys.issuer_url, now)?;
    let ci2 = sys.client(
        ClientAuth::Public {
            client_id: "ci".into(),
        },
        Grant::TokenExchange {
            subject: SubjectToken::Value(Arc::new(feature.into())),
            subject_type: JWT_TYPE.into(),
        },
        Some("deploy"),
    )?;
    let r = ci2
        .http
        .post(format!("{}/v1/deploy", sys.gateway_url))
        .body("")
        .send()
        .await;
    let refused = match &r {
        Err(e) => format!("{e:#}").contains("invalid_grant"),
        Ok(_) => false,
    };
    rows.push(Row {
        scenario: "A job token from another branch asks to deploy",
        why: "no trust rule lets other branches deploy",
        expected: "refused: invalid_grant".into(),
        observed: match r {
            Ok(r) => format!("{}", r.status().as_u16()),
            Err(_) if refused => "refused: invalid_grant".into(),
            Err(e) => format!("{e:#}"),
        },
        ok: refused,
    });
    Ok(())
}
