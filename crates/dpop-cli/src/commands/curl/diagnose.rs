//! The one stderr line for a status of 400 or more: the status, the server's
//! `WWW-Authenticate` challenge decoded (dpop-core's parser), and what it usually means
//! for a DPoP client.

use dpop_core::challenge::{self, Challenge};
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};

/// The challenge to explain: the DPoP one if the server sent several, else the first.
fn challenge(headers: &HeaderMap) -> Option<Challenge> {
    let all: Vec<Challenge> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| challenge::parse(v).ok())
        .flatten()
        .collect();
    let dpop = all.iter().position(|c| c.is_scheme("DPoP"));
    all.into_iter().nth(dpop.unwrap_or(0))
}

/// What the error usually means, and what to do.
fn hint(
    error: Option<&str>,
    description: &str,
    c: Option<&Challenge>,
    url: &reqwest::Url,
    token_sent: bool,
) -> Option<String> {
    let d = description.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| d.contains(w));
    let origin = url.origin().ascii_serialization();
    Some(match error? {
        "invalid_token" if has(&["audience", "aud"]) => format!(
            "the token's aud does not include this API; ask the issuer for --resource {origin} \
             (or --audience)"
        ),
        "invalid_token" if has(&["expired", "exp "]) => {
            "the access token has expired; get a new one (with the token flags dpop curl \
             renews it)"
                .to_owned()
        }
        "invalid_token" if has(&["revoked", "inactive"]) => {
            "the access token was revoked or is no longer active; get a new one".to_owned()
        }
        "invalid_token" if has(&["key binding", "jkt", "bound", "cnf"]) => {
            "the token is bound to another key (cnf.jkt): use the --key it was issued for"
                .to_owned()
        }
        "invalid_token" => format!(
            "the API refused the access token: expired, revoked, signed by an issuer it does \
             not trust, or issued for another audience (then ask for --resource {origin})"
        ),
        "invalid_dpop_proof" if has(&["already used", "replay"]) => {
            "the proof was already used (replay): every request needs a fresh proof; do not \
             resend a captured DPoP header"
                .to_owned()
        }
        "invalid_dpop_proof" if has(&["key binding"]) => {
            "the proof's key is not the key the token is bound to (cnf.jkt): use the --key \
             the token was issued for"
                .to_owned()
        }
        "invalid_dpop_proof" if has(&["iat", "clock", "time"]) => {
            "the proof's iat is outside the API's window, and no Date header allowed a \
             correction: check this machine's clock"
                .to_owned()
        }
        "invalid_dpop_proof" if has(&["method and uri", "htu", "htm"]) => {
            "the proof's htm/htu do not match the request the API sees: behind a proxy, the \
             API must know its public URL"
                .to_owned()
        }
        "invalid_dpop_proof" if has(&["ath"]) => {
            "the proof's ath does not match the token sent".to_owned()
        }
        "invalid_dpop_proof" => {
            let algs: Vec<&str> = c.map(|c| c.algs().collect()).unwrap_or_default();
            if algs.is_empty() {
                "the API refused the DPoP proof".to_owned()
            } else {
                format!(
                    "the API refused the DPoP proof; it accepts {}: check --key's algorithm",
                    algs.join(" ")
                )
            }
        }
        "use_dpop_nonce" => "the API asked for a new nonce again after the retry: if it runs \
             as several instances, they must share their nonce secret"
            .to_owned(),
        "insufficient_scope" => match c.and_then(|c| c.param("scope")) {
            Some(scope) => {
                format!("the token lacks a scope this needs: ask for --scope \"{scope}\"")
            }
            None => "the token lacks a scope this needs: ask for it with --scope".to_owned(),
        },
        "invalid_request" if !token_sent => {
            "no access token was sent: use --token, --token-file or the token flags".to_owned()
        }
        "invalid_request" => "the API could not read the request's credentials".to_owned(),
        _ => return None,
    })
}

/// What a JWT access token says of its audience and lifetime, read without verifying
/// it (the API verifies it; this only helps to see why it refused): `aud
/// ["https://api.example.com"], exp 40 s ago`.
fn token_facts(token: &str, now: Option<u64>) -> Option<String> {
    let jwt = dpop_core::jwt::UnverifiedJwt::parse(token).ok()?;
    let claims = jwt.dangerous_claims();
    let mut facts = Vec::new();
    if let Some(aud) = claims.get("aud") {
        facts.push(format!("aud {aud}"));
    }
    if let (Some(exp), Some(now)) = (claims.get("exp").and_then(serde_json::Value::as_u64), now) {
        facts.push(format!("exp {}", crate::clock::format_offset(exp, now)));
    }
    (!facts.is_empty()).then(|| format!("the token (unverified) says {}", facts.join(", ")))
}

/// The line for `status` from `url` (without the `error:` or `warning:` prefix);
/// `token_sent` says whether the request carried an access token, `token` is that token
/// when it came from --token or --token-file.
pub(super) fn line(
    status: reqwest::StatusCode,
    url: &reqwest::Url,
    headers: &HeaderMap,
    token_sent: bool,
    token: Option<&str>,
) -> String {
    let mut line = format!(
        "{url} answered {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    );
    let c = challenge(headers);
    if let Some(c) = &c {
        line.push_str(&format!(" ({}", c.scheme()));
        if let Some(e) = c.error() {
            line.push_str(&format!(" error={e}"));
        }
        if let Some(d) = c.param("error_description") {
            line.push_str(&format!(": {d:?}"));
        }
        line.push(')');
    }
    let error = c.as_ref().and_then(Challenge::error);
    let description = c
        .as_ref()
        .and_then(|c| c.param("error_description"))
        .unwrap_or_default();
    let hint = hint(error, description, c.as_ref(), url, token_sent).or_else(|| {
        (status == reqwest::StatusCode::UNAUTHORIZED && c.is_some() && !token_sent).then(|| {
            "authentication is required: give a token with --token, --token-file or the \
             token flags"
                .to_owned()
        })
    });
    if let Some(h) = hint {
        line.push_str(": ");
        line.push_str(&h);
    }
    if error == Some("invalid_token") {
        let now = crate::clock::now().ok().map(|t| t.as_secs());
        if let Some(facts) = token.and_then(|t| token_facts(t, now)) {
            line.push_str("; ");
            line.push_str(&facts);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_for(www: &str, token: bool) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(WWW_AUTHENTICATE, www.parse().unwrap());
        let url = reqwest::Url::parse("https://api.example.com/v1/x").unwrap();
        line(
            reqwest::StatusCode::UNAUTHORIZED,
            &url,
            &headers,
            token,
            None,
        )
    }

    #[test]
    fn audience_refusals_name_the_resource_to_ask_for() {
        let l = line_for(
            r#"DPoP error="invalid_token", error_description="token audience mismatch""#,
            true,
        );
        assert!(l.starts_with("https://api.example.com/v1/x answered 401 Unauthorized (DPoP error=invalid_token: \"token audience mismatch\")"), "{l}");
        assert!(l.contains("--resource https://api.example.com"), "{l}");
    }

    #[test]
    fn each_kind_of_refusal_gets_its_hint() {
        for (www, words) in [
            (
                r#"DPoP error="invalid_dpop_proof", error_description="DPoP proof was already used""#,
                "replay",
            ),
            (
                r#"DPoP error="invalid_token", error_description="The access token expired""#,
                "expired",
            ),
            (
                r#"DPoP error="invalid_token", error_description="Invalid DPoP key binding""#,
                "cnf.jkt",
            ),
            (
                r#"DPoP error="invalid_dpop_proof", error_description="Invalid DPoP key binding""#,
                "cnf.jkt",
            ),
            (
                r#"DPoP error="invalid_dpop_proof", error_description="DPoP proof iat is outside the acceptance window""#,
                "clock",
            ),
            (r#"DPoP error="use_dpop_nonce""#, "nonce secret"),
            (
                r#"DPoP error="insufficient_scope", scope="admin""#,
                "--scope \"admin\"",
            ),
            (
                r#"DPoP error="invalid_dpop_proof", algs="ES256 EdDSA""#,
                "ES256 EdDSA",
            ),
        ] {
            let l = line_for(www, true);
            assert!(l.contains(words), "{www}: {l}");
        }
        // A bare challenge to a request without a token: say how to send one.
        assert!(line_for("DPoP algs=\"ES256\"", false).contains("--token"));
    }

    #[test]
    fn a_jwt_token_shows_its_audience_and_expiry() {
        let b64 = |v: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
        };
        let token = format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"ES256"}"#),
            b64(r#"{"aud":"https://other.example","exp":1000}"#)
        );
        assert_eq!(
            token_facts(&token, Some(1040)).unwrap(),
            r#"the token (unverified) says aud "https://other.example", exp 40 s ago"#
        );
        assert_eq!(token_facts("opaque-token", Some(1040)), None);
    }
}
