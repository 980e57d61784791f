use super::*;
use crate::key::{PrivateKey, Signer as _};
use serde_json::{Value, json};

const ISS: &str = "https://as.example.com";
const AUD: &str = "https://api.example.com";
const NOW: u64 = 1_700_000_000;

struct Issuer {
    key: PrivateKey,
    set: JwkSet,
}

fn issuer() -> Issuer {
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let mut jwk = key.public_jwk().to_json_value();
    jwk["kid"] = "k1".into();
    let set = JwkSet::from_json(
        &json!({"keys": [jwk, {"kty": "EC", "crv": "P-256", "use": "enc"}]}).to_string(),
    )
    .unwrap();
    Issuer { key, set }
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "svc-a", "client_id": "ci", "exp": NOW + 300, "iat": NOW, "scope": "read write",
           "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}, "jti": "t1"})
}

fn mint(i: &Issuer, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(claims.to_string().as_bytes())
    );
    let sig = i.key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64::encode(&sig))
}

fn header() -> Value {
    json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1"})
}

fn verify(i: &Issuer, token: &str) -> Result<AccessToken, TokenError> {
    verify_access_token(
        token,
        &i.set,
        &JwtValidation::new(ISS, Some(AUD)),
        UnixTime::from_secs(NOW),
    )
}

#[test]
fn valid_token() {
    let i = issuer();
    assert_eq!(i.set.len(), 1);
    assert_eq!(i.set.skipped(), 1);
    let t = verify(&i, &mint(&i, &header(), &claims())).unwrap();
    assert_eq!(t.subject.as_deref(), Some("svc-a"));
    assert_eq!(t.client_id.as_deref(), Some("ci"));
    assert_eq!(t.scopes, vec!["read", "write"]);
    assert_eq!(
        t.jkt.unwrap().as_str(),
        "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
    );
    assert_eq!(
        UnverifiedJwt::parse(&mint(&i, &header(), &claims()))
            .unwrap()
            .kid(),
        Some("k1")
    );
    // aud as an array; typ JWT or absent under the default policy.
    let mut c = claims();
    c["aud"] = json!(["other", AUD]);
    verify(&i, &mint(&i, &json!({"alg": "ES256", "kid": "k1"}), &c)).unwrap();
    verify(
        &i,
        &mint(
            &i,
            &json!({"alg": "ES256", "typ": "JWT", "kid": "k1"}),
            &claims(),
        ),
    )
    .unwrap();
}

#[test]
fn rejections() {
    let i = issuer();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        verify(&i, &mint(&i, &header(), &c))
    };
    assert_eq!(
        with(&|c| c["iss"] = "https://evil.example".into()),
        Err(TokenError::IssuerMismatch)
    );
    assert_eq!(
        with(&|c| c["aud"] = "https://other.example".into()),
        Err(TokenError::AudienceMismatch)
    );
    assert_eq!(
        with(&|c| {
            c.as_object_mut().unwrap().remove("aud");
        }),
        Err(TokenError::MissingClaim("aud"))
    );
    assert_eq!(
        with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
        Err(TokenError::MissingClaim("exp"))
    );
    assert!(matches!(
        with(&|c| c["exp"] = (NOW - 31).into()),
        Err(TokenError::Expired { .. })
    ));
    with(&|c| c["exp"] = (NOW - 29).into()).unwrap();
    assert_eq!(
        with(&|c| c["nbf"] = (NOW + 60).into()),
        Err(TokenError::NotYetValid)
    );
    assert_eq!(
        with(&|c| c["cnf"] = json!({"jkt": "short"})),
        Err(TokenError::ClaimInvalid("cnf.jkt"))
    );
    assert_eq!(
        with(&|c| c["scope"] = json!(["read"])),
        Err(TokenError::ClaimInvalid("scope"))
    );
    let h = |h: Value| verify(&i, &mint(&i, &h, &claims()));
    assert_eq!(
        h(json!({"alg": "ES256", "typ": "dpop+jwt", "kid": "k1"})),
        Err(TokenError::TypInvalid)
    );
    assert_eq!(
        h(json!({"alg": "HS256", "typ": "at+jwt", "kid": "k1"})),
        Err(TokenError::AlgNotAllowed)
    );
    assert_eq!(
        h(json!({"alg": "none", "typ": "at+jwt", "kid": "k1"})),
        Err(TokenError::AlgNotAllowed)
    );
    assert_eq!(
        h(json!({"alg": "ES256", "typ": "at+jwt", "kid": "k2"})),
        Err(TokenError::UnknownKey)
    );
    assert_eq!(
        h(json!({"alg": "ES384", "typ": "at+jwt", "kid": "k1"})),
        Err(TokenError::AlgNotAllowed)
    );
    assert!(matches!(
        h(json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1", "crit": ["x"]})),
        Err(TokenError::Malformed(_))
    ));
    // Strict RFC 9068 policy refuses plain JWTs.
    let mut v = JwtValidation::new(ISS, Some(AUD));
    v.typ = TypPolicy::AtJwt;
    let plain = mint(
        &i,
        &json!({"alg": "ES256", "typ": "JWT", "kid": "k1"}),
        &claims(),
    );
    assert_eq!(
        verify_access_token(&plain, &i.set, &v, UnixTime::from_secs(NOW)),
        Err(TokenError::TypInvalid)
    );
    // Another signer with the same kid.
    let forger = issuer();
    assert_eq!(
        verify(&i, &mint(&forger, &header(), &claims())),
        Err(TokenError::SignatureInvalid)
    );
    // Structure.
    assert!(matches!(verify(&i, "a.b"), Err(TokenError::Malformed(_))));
    assert!(matches!(
        verify(&i, &"a".repeat(20_000)),
        Err(TokenError::Malformed(_))
    ));
}

fn verify_generic(i: &Issuer, token: &str, v: &JwtValidation) -> Result<VerifiedJwt, TokenError> {
    verify_jwt(token, &i.set, v, UnixTime::from_secs(NOW))
}

#[test]
fn verify_jwt_exposes_claims() {
    let i = issuer();
    let mut c = claims();
    c["kubernetes.io"] = json!({"namespace": "prod", "serviceaccount": {"name": "ci"}});
    c["groups"] = json!(["a", "b"]);
    let v = JwtValidation::new(ISS, Some(AUD));
    let t = verify_generic(&i, &mint(&i, &header(), &c), &v).unwrap();
    assert_eq!(t.alg, Algorithm::Es256);
    assert_eq!(t.kid.as_deref(), Some("k1"));
    assert_eq!(t.expires_at, UnixTime::from_secs(NOW + 300));
    assert_eq!(t.issued_at, Some(UnixTime::from_secs(NOW)));
    assert_eq!(Value::Object(t.claims.clone()), c);
    assert_eq!(t.claims["kubernetes.io"]["namespace"], "prod");
    assert_eq!(t.str_claim("sub"), Some("svc-a"));
    assert_eq!(t.str_claim("groups"), None);
    assert_eq!(t.str_claim("missing"), None);
    assert_eq!(t.audiences(), vec![AUD]);
    // The same checks as for access tokens, in the same order.
    let mut bad = claims();
    bad["iss"] = "https://evil.example".into();
    assert_eq!(
        verify_generic(&i, &mint(&i, &header(), &bad), &v),
        Err(TokenError::IssuerMismatch)
    );
    // A trailing slash does not make another issuer, on either side.
    let mut slash = claims();
    slash["iss"] = format!("{}/", slash["iss"].as_str().unwrap_or_default()).into();
    assert!(verify_generic(&i, &mint(&i, &header(), &slash), &v).is_ok());
    let mut v_slash = v.clone();
    v_slash.issuer.push('/');
    assert!(verify_generic(&i, &mint(&i, &header(), &claims()), &v_slash).is_ok());
    // One slash only: more is another identifier.
    slash["iss"] = format!("{}//", claims()["iss"].as_str().unwrap_or_default()).into();
    assert_eq!(
        verify_generic(&i, &mint(&i, &header(), &slash), &v).map(|_| ()),
        Err(TokenError::IssuerMismatch)
    );
    // An empty expected issuer matches nothing, not even "/".
    let mut v_empty = v.clone();
    v_empty.issuer = String::new();
    for iss in ["", "/"] {
        let mut c = claims();
        c["iss"] = iss.into();
        assert_eq!(
            verify_generic(&i, &mint(&i, &header(), &c), &v_empty).map(|_| ()),
            Err(TokenError::IssuerMismatch),
            "{iss:?}"
        );
    }
    bad = claims();
    bad["exp"] = (NOW - 31).into();
    assert!(matches!(
        verify_generic(&i, &mint(&i, &header(), &bad), &v),
        Err(TokenError::Expired { .. })
    ));
    bad = claims();
    bad["iat"] = (NOW + 31).into();
    assert_eq!(
        verify_generic(&i, &mint(&i, &header(), &bad), &v),
        Err(TokenError::NotYetValid)
    );
    assert_eq!(
        verify_generic(
            &i,
            &mint(&i, &json!({"alg": "ES256", "kid": "k9"}), &claims()),
            &v
        ),
        Err(TokenError::UnknownKey)
    );
    let forger = issuer();
    assert_eq!(
        verify_generic(&i, &mint(&forger, &header(), &claims()), &v),
        Err(TokenError::SignatureInvalid)
    );
    let dup = format!(
        "{}.{}.{}",
        b64::encode(br#"{"alg":"ES256","kid":"k1"}"#),
        b64::encode(br#"{"iss":"a","iss":"b"}"#),
        b64::encode(b"sig")
    );
    assert_eq!(
        verify_generic(&i, &dup, &v),
        Err(TokenError::Malformed("duplicate JSON member"))
    );
}

#[test]
fn verify_jwt_without_audience() {
    let i = issuer();
    let v = JwtValidation::new(ISS, None);
    let with = |f: &dyn Fn(&mut Value), v: &JwtValidation| {
        let mut c = claims();
        f(&mut c);
        verify_generic(&i, &mint(&i, &header(), &c), v)
    };
    // Any audience is accepted, but aud must still be well-typed…
    let t = with(&|c| c["aud"] = json!(["x", "y"]), &v).unwrap();
    assert_eq!(t.audiences(), vec!["x", "y"]);
    with(&|c| c["aud"] = "https://other.example".into(), &v).unwrap();
    assert_eq!(
        with(&|c| c["aud"] = json!(7), &v),
        Err(TokenError::ClaimInvalid("aud"))
    );
    assert_eq!(
        with(&|c| c["aud"] = json!(["x", 7]), &v),
        Err(TokenError::ClaimInvalid("aud"))
    );
    // …and present, unless require_aud is off.
    let no_aud = |c: &mut Value| {
        c.as_object_mut().unwrap().remove("aud");
    };
    assert_eq!(with(&no_aud, &v), Err(TokenError::MissingClaim("aud")));
    let lax = crate::dangerous::accept_missing_aud(JwtValidation::new(ISS, None));
    assert!(with(&no_aud, &lax).unwrap().audiences().is_empty());
}

#[test]
fn verify_jwt_aud_absent_not_required() {
    let i = issuer();
    let v = crate::dangerous::accept_missing_aud(JwtValidation::new(ISS, Some(AUD)));
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    let t = verify_generic(&i, &mint(&i, &header(), &c), &v).unwrap();
    assert!(t.audiences().is_empty());
    assert!(!t.claims.contains_key("aud"));
    // A present aud is still compared.
    c["aud"] = "https://other.example".into();
    assert_eq!(
        verify_generic(&i, &mint(&i, &header(), &c), &v),
        Err(TokenError::AudienceMismatch)
    );
    // require_aud defaults to true.
    assert!(JwtValidation::new(ISS, Some(AUD)).require_aud);
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        verify_generic(
            &i,
            &mint(&i, &header(), &c),
            &JwtValidation::new(ISS, Some(AUD))
        ),
        Err(TokenError::MissingClaim("aud"))
    );
}

#[test]
fn verified_jwt_jkt() {
    let i = issuer();
    let v = JwtValidation::new(ISS, Some(AUD));
    let jkt_of = |cnf: Option<Value>| {
        let mut c = claims();
        match cnf {
            Some(cnf) => c["cnf"] = cnf,
            None => {
                c.as_object_mut().unwrap().remove("cnf");
            }
        }
        verify_generic(&i, &mint(&i, &header(), &c), &v)
            .unwrap()
            .jkt()
    };
    assert_eq!(jkt_of(None).unwrap().map(|j| j.as_str().to_owned()), None);
    assert_eq!(
        jkt_of(Some(
            json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"})
        ))
        .unwrap()
        .map(|j| j.as_str().to_owned())
        .as_deref(),
        Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")
    );
    assert_eq!(jkt_of(Some(json!({"x5t#S256": "abc"}))), Ok(None));
    assert_eq!(
        jkt_of(Some(json!({"jkt": "short"}))),
        Err(TokenError::ClaimInvalid("cnf.jkt"))
    );
    assert_eq!(
        jkt_of(Some(json!({"jkt": 1}))),
        Err(TokenError::ClaimInvalid("cnf.jkt"))
    );
    assert_eq!(
        jkt_of(Some(json!("jkt"))),
        Err(TokenError::ClaimInvalid("cnf"))
    );
}

#[test]
fn verified_jwt_to_access_token() {
    let i = issuer();
    let token = mint(&i, &header(), &claims());
    let generic = verify_generic(&i, &token, &JwtValidation::new(ISS, Some(AUD))).unwrap();
    let at = generic.to_access_token().unwrap();
    assert_eq!(Ok(at.clone()), verify(&i, &token));
    assert_eq!(at.subject.as_deref(), Some("svc-a"));
    assert_eq!(at.client_id.as_deref(), Some("ci"));
    assert_eq!(at.scopes, vec!["read", "write"]);
    assert_eq!(at.jti.as_deref(), Some("t1"));
    assert_eq!(at.expires_at, UnixTime::from_secs(NOW + 300));
    // Claims an access token needs typed are refused when mistyped.
    for name in ["sub", "client_id", "scope", "jti"] {
        let mut c = claims();
        c[name] = json!(1);
        let t =
            verify_generic(&i, &mint(&i, &header(), &c), &JwtValidation::new(ISS, None)).unwrap();
        assert_eq!(t.to_access_token(), Err(TokenError::ClaimInvalid(name)));
    }
    // Minimal claims: everything optional is empty.
    let c = json!({"iss": ISS, "aud": AUD, "exp": NOW + 60});
    let at = verify_generic(&i, &mint(&i, &header(), &c), &JwtValidation::new(ISS, None))
        .unwrap()
        .to_access_token()
        .unwrap();
    assert_eq!(
        at,
        AccessToken::new(None, None, Vec::new(), None, UnixTime::from_secs(NOW + 60))
    );
}

#[test]
fn jwks_rejections() {
    assert!(JwkSet::from_json("{}").is_err());
    assert!(JwkSet::from_json(r#"{"keys": 1}"#).is_err());
    let key = PrivateKey::generate(Algorithm::Es256).unwrap();
    let private: Value = serde_json::from_str(&key.to_private_jwk_json().unwrap()).unwrap();
    assert_eq!(
        JwkSet::from_json(&json!({"keys": [private]}).to_string()).unwrap_err(),
        TokenError::JwksInvalid("it contains private key material")
    );
    let many: Vec<Value> = (0..65).map(|_| json!({})).collect();
    assert!(JwkSet::from_json(&json!({"keys": many}).to_string()).is_err());
}

#[test]
fn access_tokens_need_an_audience() {
    let i = issuer();
    let token = mint(&i, &header(), &claims());
    let mut v = JwtValidation::new(ISS, Some(AUD));
    assert!(verify_access_token(&token, &i.set, &v, UnixTime::from_secs(NOW)).is_ok());
    // The same token and keys: without an audience to compare with, nothing is accepted
    // as an access token, while the generic path still verifies it.
    v.audience = None;
    assert_eq!(
        verify_access_token(&token, &i.set, &v, UnixTime::from_secs(NOW)),
        Err(TokenError::AudienceMismatch)
    );
    assert!(verify_generic(&i, &token, &v).is_ok());
}

#[test]
fn unverified_jwt_is_read_strictly() {
    let i = issuer();
    let token = mint(&i, &header(), &claims());
    let jwt = UnverifiedJwt::parse(&token).unwrap();
    assert_eq!(jwt.kid(), Some("k1"));
    assert_eq!(jwt.str_claim("iss"), Some(ISS));
    assert_eq!(jwt.str_claim("sub"), Some("svc-a"));
    assert_eq!(jwt.str_claim("exp"), None, "not a string");
    assert_eq!(jwt.str_claim("missing"), None);
    assert_eq!(jwt.dangerous_header(), &header());
    assert_eq!(jwt.dangerous_claims(), &claims());
    // Nothing is verified: another signer's token reads the same.
    let forged = mint(&issuer(), &header(), &claims());
    assert_eq!(UnverifiedJwt::parse(&forged), Ok(jwt));

    let part = |v: &[u8]| b64::encode(v);
    let compact = |h: &[u8], p: &[u8]| format!("{}.{}.{}", part(h), part(p), part(b"sig"));
    let good_h = br#"{"alg":"ES256","kid":"k1"}"#;
    let good_p = br#"{"iss":"a","sub":"b"}"#;
    assert!(UnverifiedJwt::parse(&compact(good_h, good_p)).is_ok());
    // Duplicate members, at the top and deeper, in the header and in the claims: a peek
    // must not pick one of two values the verifier would refuse.
    for (h, p) in [
        (&br#"{"kid":"a","kid":"b"}"#[..], &good_p[..]),
        (good_h, br#"{"iss":"a","iss":"b"}"#),
        (good_h, br#"{"iss":"a","cnf":{"jkt":"x","jkt":"y"}}"#),
    ] {
        assert_eq!(
            UnverifiedJwt::parse(&compact(h, p)),
            Err(MalformedJwt::DuplicateMember)
        );
    }
    let syntax = |t: &str| matches!(UnverifiedJwt::parse(t), Err(MalformedJwt::Syntax(_)));
    assert!(
        syntax(&format!("{}.{}", part(good_h), part(good_p))),
        "two parts"
    );
    assert!(
        syntax(&format!("{}.x", compact(good_h, good_p))),
        "four parts"
    );
    assert!(
        syntax(&format!("{}.{}.sig=", part(good_h), part(good_p))),
        "padding"
    );
    assert!(syntax(&compact(b"[1]", good_p)), "header not an object");
    assert!(syntax(&compact(good_h, b"{")), "payload not JSON");
    let long = format!("{}.{}.sig", part(good_h), "A".repeat(MAX_TOKEN_BYTES));
    assert_eq!(UnverifiedJwt::parse(&long), Err(MalformedJwt::TooLong));
    // The same refusal reads as a token error and as a proof error.
    assert_eq!(
        TokenError::from(MalformedJwt::DuplicateMember),
        TokenError::Malformed("duplicate JSON member")
    );
    assert_eq!(
        crate::ProofError::from(MalformedJwt::DuplicateMember),
        crate::ProofError::DuplicateMember
    );
}

#[test]
fn access_tokens_need_aud_even_when_generic_checks_accept_its_absence() {
    let i = issuer();
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    let token = mint(&i, &header(), &c);
    let relaxed = crate::dangerous::accept_missing_aud(JwtValidation::new(ISS, Some(AUD)));
    assert!(verify_generic(&i, &token, &relaxed).is_ok());
    assert_eq!(
        verify_access_token(&token, &i.set, &relaxed, UnixTime::from_secs(NOW)),
        Err(TokenError::MissingClaim("aud"))
    );
}

/// RFC 8705 §3.1 `cnf.x5t#S256`: read next to `cnf.jkt`, strict, and the thumbprint of a
/// certificate's DER compares equal to it.
#[test]
fn verified_jwt_certificate_binding() {
    let i = issuer();
    let v = JwtValidation::new(ISS, Some(AUD));
    let der = b"not really a certificate, only bytes to hash";
    let thumbprint = CertThumbprint::of_der(der);
    assert_eq!(thumbprint.as_str().len(), 43);
    let token_of = |cnf: Value| {
        let mut c = claims();
        c["cnf"] = cnf;
        verify_generic(&i, &mint(&i, &header(), &c), &v)
            .unwrap()
            .to_access_token()
    };
    let bound = token_of(json!({"x5t#S256": thumbprint.as_str()})).unwrap();
    assert_eq!(bound.x5t_s256, Some(thumbprint.clone()));
    assert_eq!(bound.jkt, None);
    assert_ne!(bound.x5t_s256, Some(CertThumbprint::of_der(b"another")));
    let both = token_of(json!({
        "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
        "x5t#S256": thumbprint.as_str(),
    }))
    .unwrap();
    assert!(both.jkt.is_some() && both.x5t_s256.is_some());
    assert_eq!(
        token_of(json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}))
            .unwrap()
            .x5t_s256,
        None
    );
    let padded = format!("{}=", thumbprint.as_str());
    for bad in [json!("short"), json!(1), json!(padded), json!(null)] {
        assert_eq!(
            token_of(json!({"x5t#S256": bad})).map(|_| ()),
            Err(TokenError::ClaimInvalid("cnf.x5t#S256")),
            "{bad}"
        );
    }
}
