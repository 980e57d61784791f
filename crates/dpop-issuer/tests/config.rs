//! Configuration validation: what the issuer refuses to start with.

use std::collections::BTreeMap;

use dpop_core::Algorithm;
use dpop_issuer::IssuerConfig;

use crate::support::*;

fn parse(text: &str, env: &BTreeMap<String, String>) -> Result<IssuerConfig, String> {
    IssuerConfig::from_toml(text, &std::env::temp_dir(), env).map_err(|e| e.message().to_owned())
}

/// A valid configuration with one client whose table ends the text, so a test can add
/// fields to it.
fn with_client(client_fields: &str) -> String {
    format!(
        r#"
issuer = "https://issuer.example"

[[clients]]
id = "c"
{client_fields}
"#
    )
}

fn secret_client(extra: &str) -> String {
    with_client(&format!(
        "secret = \"{}\"\ngrants = [\"{GRANT_CC}\"]\nscopes = [\"read\"]\naudiences = [\"{API}\"]\n{extra}",
        *SECRET_HASH
    ))
}

#[track_caller]
fn refused(text: &str, needle: &str) {
    match parse(text, &BTreeMap::new()) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => assert!(e.contains(needle), "{e:?} does not mention {needle:?}"),
    }
}

#[test]
fn valid_configuration() {
    let c = parse(&secret_client(""), &BTreeMap::new()).unwrap();
    assert_eq!(c.issuer, "https://issuer.example");
    assert_eq!(c.token_endpoint(), "https://issuer.example/token");
    assert!(c.dpop.nonce);
    assert_eq!(c.lifetimes.access_token.as_secs(), 300);
    let client = &c.clients["c"];
    assert!(!client.is_public());
    assert_eq!(client.default_scopes, vec!["read".to_owned()]);
    assert_eq!(client.default_audiences, vec![API.to_owned()]);
    // A trailing slash is dropped from the issuer; loopback http is fine.
    let text = secret_client("").replace("https://issuer.example", "http://127.0.0.1:8081/");
    assert_eq!(
        parse(&text, &BTreeMap::new()).unwrap().issuer,
        "http://127.0.0.1:8081"
    );
    for loopback in [
        "http://localhost:8081",
        "http://127.0.0.2",
        "http://[::1]:8081",
    ] {
        let text = secret_client("").replace("https://issuer.example", loopback);
        parse(&text, &BTreeMap::new()).unwrap_or_else(|e| panic!("{loopback}: {e}"));
    }
}

#[test]
fn secrets() {
    refused(
        &with_client(&format!(
            "secret = \"hunter2-but-much-longer\"\ngrants = [\"{GRANT_CC}\"]\naudiences = [\"{API}\"]"
        )),
        "plaintext",
    );
    // Something shaped like a PHC string that holds no hash would lock the client out.
    for broken in [
        "$argon2id$garbage",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
    ] {
        refused(
            &with_client(&format!(
                "secret = \"{broken}\"\ngrants = [\"{GRANT_CC}\"]\naudiences = [\"{API}\"]"
            )),
            "secret",
        );
    }
    refused(
        &with_client(&format!(
            "secret = \"$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA\"\ngrants = [\"{GRANT_CC}\"]\naudiences = [\"{API}\"]"
        )),
        "secret",
    );
    let text = with_client(&format!(
        "secret = \"env:C_SECRET\"\ngrants = [\"{GRANT_CC}\"]\naudiences = [\"{API}\"]"
    ));
    refused(&text, "C_SECRET");
    let env: BTreeMap<String, String> = [("C_SECRET".to_owned(), SECRET_HASH.clone())].into();
    let c = parse(&text, &env).unwrap();
    assert!(c.clients["c"].secret.as_ref().unwrap().verify_slow(SECRET));
    let env: BTreeMap<String, String> = [("C_SECRET".to_owned(), "short".to_owned())].into();
    assert!(parse(&text, &env).unwrap_err().contains("16"));
}

#[test]
fn unknown_fields() {
    refused(
        &format!("isuser = \"x\"\n{}", secret_client("")),
        "unknown field",
    );
    refused(&secret_client("scope = [\"read\"]"), "unknown field");
    refused(
        &format!("{}\n[dpop]\nnonces = false\n", secret_client("")),
        "unknown field",
    );
}

#[test]
fn issuer_urls() {
    for (issuer, needle) in [
        ("http://issuer.example", "https"),
        ("http://10.0.0.1:8081", "https"),
        // Names that merely start like a loopback address are not loopback.
        ("http://127.0.0.1.nip.io:8081", "https"),
        ("http://127.evil.example", "https"),
        ("ftp://issuer.example", "https"),
        ("https://issuer.example/?x=1", "query"),
        ("https://issuer.example/#f", "fragment"),
        ("https://user@issuer.example", "credentials"),
        ("https://", "https"),
    ] {
        refused(
            &secret_client("").replace("https://issuer.example", issuer),
            needle,
        );
    }
}

#[test]
fn clients() {
    // Access tokens must name their audience.
    refused(
        &with_client(&format!(
            "secret = \"{}\"\ngrants = [\"{GRANT_CC}\"]\nscopes = [\"read\"]",
            *SECRET_HASH
        )),
        "audiences is empty",
    );
    // Public clients: DPoP required, no client_credentials, no introspection.
    let public = |extra: &str| {
        with_client(&format!(
            "grants = [\"{GRANT_EXCHANGE}\", \"{GRANT_REFRESH}\"]\naudiences = [\"{API}\"]\n{extra}"
        ))
    };
    parse(&public(""), &BTreeMap::new()).unwrap();
    refused(&public("dpop = \"optional\""), "dpop = \"required\"");
    refused(
        &with_client(&format!(
            "grants = [\"{GRANT_CC}\"]\naudiences = [\"{API}\"]"
        )),
        "client_credentials",
    );
    refused(&public("introspection = true"), "introspection");
    // One kind of credential, and auth methods that fit it.
    refused(&secret_client("jwks = '{\"kty\":\"EC\"}'"), "jwks");
    refused(
        &secret_client("auth = [\"private_key_jwt\"]"),
        "auth methods",
    );
    parse(
        &secret_client("auth = [\"client_secret_basic\"]"),
        &BTreeMap::new(),
    )
    .unwrap();
    // Grants, scopes, audiences.
    refused(
        &with_client(&format!(
            "secret = \"{}\"\ngrants = [\"password\"]\naudiences = [\"{API}\"]",
            *SECRET_HASH
        )),
        "not supported",
    );
    refused(
        &with_client(&format!("secret = \"{}\"\ngrants = []", *SECRET_HASH)),
        "grants is empty",
    );
    refused(
        &secret_client("default_scopes = [\"write\"]"),
        "default scope",
    );
    refused(
        &secret_client(&format!("default_audiences = [\"{OTHER_API}\"]")),
        "default audience",
    );
    refused(
        &secret_client("access_token_lifetime_secs = 0"),
        "access_token_lifetime_secs",
    );
    refused(
        &secret_client("access_token_lifetime_secs = 999999"),
        "access_token_lifetime_secs",
    );
    // Duplicate ids.
    let twice = format!(
        "{}\n{}",
        secret_client(""),
        ClientFixture::public("c").grants([GRANT_EXCHANGE]).render()
    );
    refused(&twice, "twice");
}

/// Exchanging the issuer's own tokens needs an authenticated actor: a public client
/// configured for it stops the issuer at start.
#[test]
fn public_client_cannot_be_configured_to_exchange_issuer_tokens() {
    let public = |extra: &str| {
        let client = ClientFixture::public("pub")
            .grants([GRANT_EXCHANGE, GRANT_REFRESH])
            .audiences([API])
            .line(extra);
        format!("{}\n{}", secret_client(""), client.render())
    };
    parse(&public(""), &BTreeMap::new()).unwrap();
    refused(&public("may_exchange_for = [\"c\"]"), "a public client");
    refused(&public("refresh_from_exchange = true"), "a public client");
}

/// The token-exchange settings of a client: what they need, and their defaults.
#[test]
fn exchange_settings() {
    let actor = |extra: &str| {
        let client = ClientFixture::confidential("actor", &*SECRET_HASH)
            .grants([GRANT_EXCHANGE, GRANT_REFRESH])
            .audiences([API])
            .line(extra);
        format!(
            "{}\n{}",
            secret_client("dpop = \"optional\""),
            client.render()
        )
    };
    let c = parse(&actor(""), &BTreeMap::new()).unwrap();
    let a = &c.clients["actor"];
    assert!(a.may_exchange_for.is_empty());
    assert!(!a.refresh_from_exchange);
    assert!(!c.clients["c"].allow_bearer_exchange);
    let c = parse(
        &actor("may_exchange_for = [\"c\"]\nrefresh_from_exchange = true"),
        &BTreeMap::new(),
    )
    .unwrap();
    assert!(c.clients["actor"].may_exchange_for.contains("c"));
    assert!(c.clients["actor"].refresh_from_exchange);
    refused(&actor("may_exchange_for = [\"nobody\"]"), "unknown client");
    refused(
        &actor("may_exchange_for = [\"c\"]").replace(
            &format!("grants = [\"{GRANT_EXCHANGE}\", \"{GRANT_REFRESH}\"]"),
            &format!("grants = [\"{GRANT_REFRESH}\"]"),
        ),
        "token-exchange grant",
    );
    refused(
        &actor("refresh_from_exchange = true").replace(
            &format!("grants = [\"{GRANT_EXCHANGE}\", \"{GRANT_REFRESH}\"]"),
            &format!("grants = [\"{GRANT_EXCHANGE}\"]"),
        ),
        "refresh_token grants",
    );
    // Only a client that may get Bearer tokens has any to allow.
    parse(
        &secret_client("dpop = \"optional\"\nallow_bearer_exchange = true"),
        &BTreeMap::new(),
    )
    .unwrap();
    refused(
        &secret_client("allow_bearer_exchange = true"),
        "dpop = \"optional\"",
    );
}

#[test]
fn settings() {
    let base = secret_client("");
    let (head, clients) = base.split_once("[[clients]]").unwrap();
    let with = |top: &str| format!("{head}{top}\n[[clients]]{clients}");
    refused(
        &with("database = \"mysql://db/issuer\""),
        "sqlite:// or postgres://",
    );
    refused(
        &with("[tokens]\nrefresh_token_idle_secs = 100\nrefresh_token_absolute_secs = 50"),
        "refresh_token_idle_secs",
    );
    refused(
        &with("[tokens]\naccess_token_lifetime_secs = 0"),
        "access_token_lifetime_secs",
    );
    refused(&with("[dpop]\nalgorithms = [\"HS256\"]"), "HS256");
    refused(&with("[dpop]\nalgorithms = [\"none\"]"), "none");
    refused(&with("signing_alg = \"RS256\""), "signing_alg");
    refused(&with("max_body_bytes = 10"), "max_body_bytes");
    let c = parse(&with("[dpop]\nnonce = false"), &BTreeMap::new()).unwrap();
    assert!(!c.dpop.nonce);
    // The post-quantum algorithms are opt-in names like any other.
    let c = parse(
        &with("[dpop]\nalgorithms = [\"ES256\", \"ML-DSA-44\", \"ML-DSA-87\"]"),
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(
        c.dpop.algorithms,
        [Algorithm::Es256, Algorithm::MlDsa44, Algorithm::MlDsa87]
    );
    assert!(
        !parse(&with(""), &BTreeMap::new())
            .unwrap()
            .dpop
            .algorithms
            .iter()
            .any(|a| a.is_post_quantum()),
        "ML-DSA is not a default"
    );
    refused(&with("[dpop]\nalgorithms = [\"ML-DSA-128\"]"), "ML-DSA-128");
    // The database password never appears in messages.
    let e = parse(
        &with("database = \"mysql://u:hunter2@db/x\""),
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn trust_rules() {
    let trust = |clients: &str| {
        format!(
            r#"{}
{}
[[trust]]
name = "ci"
issuer = "https://ci.example"
audience = "https://issuer.example"

[[trust.rules]]
claims = {{ repository = "acme/shop" }}
workload = "shop"
scopes = ["read"]
clients = [{clients}]
"#,
            secret_client(""),
            ClientFixture::public("x")
                .grants([GRANT_EXCHANGE])
                .audiences([API])
                .render()
        )
    };
    parse(&trust("\"x\""), &BTreeMap::new()).unwrap();
    refused(&trust("\"nobody\""), "unknown client");
    refused(&trust("\"c\""), "token-exchange");
    refused(
        &trust("\"x\"").replace("repository = \"acme/shop\"", "repository = \"*\""),
        "wildcard",
    );
    refused(
        &trust("\"x\"").replace("https://ci.example", "http://ci.example"),
        "https",
    );
}

/// `examples/issuer.toml`, the documented configuration, loads as written.
#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "reads the example file of this repository"
)]
fn the_example_configuration_loads() {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/issuer.toml"
    ));
    let env: BTreeMap<String, String> = [
        (
            "BILLING_CLIENT_SECRET".to_owned(),
            "billing-secret-0123456789".to_owned(),
        ),
        (
            "GATEWAY_CLIENT_SECRET".to_owned(),
            "gateway-secret-0123456789".to_owned(),
        ),
    ]
    .into();
    let config = IssuerConfig::load(path, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.issuer, "http://127.0.0.1:8081");
    assert_eq!(config.clients.len(), 3);
    assert_eq!(config.trust.len(), 1);
    assert!(config.dpop.nonce);
    assert_eq!(config.lifetimes.access_token.as_secs(), 300);
    assert!(config.clients["ci"].is_public());
    assert!(config.clients["gateway"].introspection);
}
