//! The test-support servers do what the end-to-end tests and the load test rely on.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dpop_core::{Algorithm, PrivateKey, PublicJwk};
use dpop_test::{
    MockIssuer, PgSchema, RedisServer, TestUpstream, TokenSpec, decode_compact, free_port,
    http_get, http_request, verifies_es256, wait_for_tcp,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const AUD: &str = "https://api.example.com";

fn unix_now() -> u64 {
    dpop_test::now().as_secs()
}

async fn get_json(url: &str) -> Value {
    let r = http_get(url).await.unwrap();
    assert_eq!(r.status, 200, "{url}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json().unwrap()
}

async fn introspect(issuer: &MockIssuer, auth: Option<(&str, &str)>, form: &str) -> (u16, Value) {
    let basic;
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    if let Some((id, secret)) = auth {
        basic = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
        headers.push(("authorization", &basic));
    }
    let r = http_request(
        "POST",
        &issuer.introspection_endpoint(),
        &headers,
        form.as_bytes(),
    )
    .await
    .unwrap();
    (r.status, r.json().unwrap())
}

#[tokio::test]
async fn issuer_metadata_and_jwks_shape() {
    let issuer = MockIssuer::start().await.unwrap();
    assert!(issuer.url().starts_with("http://127.0.0.1:"));
    let meta = get_json(&issuer.metadata_url()).await;
    assert_eq!(meta["issuer"], issuer.url());
    assert_eq!(meta["jwks_uri"], issuer.jwks_uri());
    assert_eq!(meta["token_endpoint"], format!("{}/token", issuer.url()));
    assert_eq!(
        meta["introspection_endpoint"],
        issuer.introspection_endpoint()
    );
    let algs = meta["dpop_signing_alg_values_supported"]
        .as_array()
        .unwrap();
    assert!(algs.contains(&json!("ES256")));
    assert_eq!(issuer.jwks_fetches(), 0, "metadata is not a JWKS fetch");

    let jwks = get_json(&issuer.jwks_uri()).await;
    assert_eq!(issuer.jwks_fetches(), 1);
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(key["kid"], issuer.kid());
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert!(key.get("d").is_none(), "no private member");
    // The published key parses as a public JWK and is the signing key.
    let public = PublicJwk::from_json(&key.to_string()).unwrap();
    assert_eq!(public.thumbprint(), issuer.signing_key().thumbprint());
    assert_eq!(issuer.jwks(), jwks);
    get_json(&issuer.jwks_uri()).await;
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn minted_token_has_the_claims_and_verifies_es256() {
    let issuer = MockIssuer::start().await.unwrap();
    let client = PrivateKey::generate(Algorithm::Es256).unwrap();
    let jkt = client.thumbprint().as_str().to_owned();
    let before = unix_now();
    let token = issuer.mint(&TokenSpec {
        scope: Some("read write".into()),
        lifetime_secs: 120,
        ..TokenSpec::bound(AUD, &jkt)
    });
    let (header, claims, _, _) = decode_compact(&token);
    assert_eq!(
        header,
        json!({"alg": "ES256", "typ": "at+jwt", "kid": issuer.kid()})
    );
    assert_eq!(claims["iss"], issuer.url());
    assert_eq!(claims["sub"], "user-1");
    assert_eq!(claims["aud"], AUD);
    assert_eq!(claims["client_id"], "client-1");
    assert_eq!(claims["scope"], "read write");
    assert_eq!(claims["cnf"], json!({ "jkt": jkt }));
    let iat = claims["iat"].as_u64().unwrap();
    assert!((before..=unix_now()).contains(&iat));
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 120);
    assert!(claims["jti"].as_str().unwrap().len() >= 16);
    assert_ne!(
        decode_compact(&issuer.mint(&TokenSpec::new(AUD))).1["jti"],
        claims["jti"]
    );

    let jwks = get_json(&issuer.jwks_uri()).await;
    assert!(verifies_es256(&token, &jwks));
    // A flipped signature byte does not.
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    assert!(!verifies_es256(
        &String::from_utf8(tampered).unwrap(),
        &jwks
    ));
}

#[tokio::test]
async fn token_spec_variants() {
    let issuer = MockIssuer::start().await.unwrap();
    let mut spec = TokenSpec {
        typ: None,
        now: Some(1_000_000),
        lifetime_secs: -60,
        ..TokenSpec::new(AUD)
    };
    spec.extra.insert("aud".into(), json!([AUD, "other"]));
    spec.extra.insert("acr".into(), json!("mfa"));
    let token = issuer.mint(&spec);
    let (header, claims, _, _) = decode_compact(&token);
    assert!(header.get("typ").is_none());
    assert_eq!(claims["iat"], 1_000_000);
    assert_eq!(claims["exp"], 999_940, "negative lifetime: already expired");
    assert_eq!(claims["aud"], json!([AUD, "other"]));
    assert_eq!(claims["acr"], "mfa");
    assert!(claims.get("cnf").is_none() && claims.get("scope").is_none());
    assert!(verifies_es256(&token, &issuer.jwks()));

    // Hand-made tokens: exactly the header given.
    let raw = issuer.sign_compact(
        &json!({"alg": "ES256", "kid": issuer.kid()}),
        &json!({"x": 1}),
    );
    assert_eq!(
        decode_compact(&raw).0,
        json!({"alg": "ES256", "kid": issuer.kid()})
    );
    assert!(verifies_es256(&raw, &issuer.jwks()));
}

#[tokio::test]
async fn introspection_active_inactive_and_client_auth() {
    let issuer = MockIssuer::builder()
        .introspection_client("rs 1", "s3cret:x")
        .start()
        .await
        .unwrap();
    let spec = TokenSpec {
        scope: Some("read".into()),
        ..TokenSpec::bound(AUD, "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")
    };
    issuer.register_opaque("opaque-1", &spec);
    // RFC 6749 §2.3.1: the credentials are form-encoded before base64.
    let good = Some(("rs+1", "s3cret%3Ax"));

    let (status, body) = introspect(&issuer, good, "token=opaque-1").await;
    assert_eq!(status, 200);
    assert_eq!(body["active"], true);
    assert_eq!(body["token_type"], "DPoP");
    assert_eq!(body["sub"], "user-1");
    assert_eq!(body["client_id"], "client-1");
    assert_eq!(body["scope"], "read");
    assert_eq!(body["aud"], AUD);
    assert_eq!(body["iss"], issuer.url());
    assert_eq!(
        body["cnf"],
        json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"})
    );
    assert!(body["exp"].as_u64().unwrap() > unix_now());

    let (status, body) = introspect(&issuer, good, "token=unknown").await;
    assert_eq!((status, body), (200, json!({"active": false})));

    issuer.revoke("opaque-1");
    let (status, body) = introspect(&issuer, good, "token=opaque-1").await;
    assert_eq!((status, body), (200, json!({"active": false})));

    let (status, body) = introspect(&issuer, Some(("rs+1", "wrong")), "token=opaque-1").await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, json!("invalid_client"))
    );
    let (status, _) = introspect(&issuer, None, "token=opaque-1").await;
    assert_eq!(status, 401);
    let (status, _) = introspect(&issuer, good, "nottoken=x").await;
    assert_eq!(status, 400);
    assert_eq!(issuer.introspections(), 6);

    // The default credentials.
    let issuer = MockIssuer::start().await.unwrap();
    issuer.register_opaque("t", &TokenSpec::new(AUD));
    let creds = Some((
        issuer.introspection_client_id().to_owned(),
        issuer.introspection_client_secret().to_owned(),
    ));
    let creds = creds.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
    let (status, body) = introspect(&issuer, creds, "token=t").await;
    assert_eq!((status, body["active"].clone()), (200, json!(true)));
}

#[tokio::test]
async fn key_rotation() {
    let issuer = MockIssuer::start().await.unwrap();
    let first_kid = issuer.kid();
    let old_token = issuer.mint(&TokenSpec::new(AUD));

    let second_kid = issuer.rotate_key();
    assert_ne!(second_kid, first_kid);
    assert_eq!(issuer.kid(), second_kid);
    let new_token = issuer.mint(&TokenSpec::new(AUD));
    assert_eq!(decode_compact(&new_token).0["kid"], second_kid);
    let jwks = get_json(&issuer.jwks_uri()).await;
    let kids: Vec<&Value> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["kid"])
        .collect();
    assert_eq!(kids, [&json!(first_kid), &json!(second_kid)]);
    assert!(verifies_es256(&old_token, &jwks), "old keys stay published");
    assert!(verifies_es256(&new_token, &jwks));

    let third_kid = issuer.rotate_key_and_drop_old();
    let jwks = get_json(&issuer.jwks_uri()).await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kid"], third_kid);
    assert!(!verifies_es256(&old_token, &jwks));
    assert!(!verifies_es256(&new_token, &jwks));
    assert!(verifies_es256(&issuer.mint(&TokenSpec::new(AUD)), &jwks));
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn upstream_echoes_and_records() {
    let upstream = TestUpstream::builder().capacity(3).start().await.unwrap();
    let r = http_request(
        "GET",
        &format!("{}/items?page=2", upstream.url()),
        &[
            ("x-one", "a"),
            ("x-one", "b"),
            ("authorization", "DPoP tok"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let echo = r.json().unwrap();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/items?page=2");
    assert_eq!(echo["headers"]["x-one"], json!(["a", "b"]));
    assert_eq!(echo["headers"]["authorization"], json!(["DPoP tok"]));
    assert_eq!(
        echo["headers"]["host"],
        json!([upstream.addr().to_string()])
    );

    let r = http_request("POST", &format!("{}/p", upstream.url()), &[], b"hello")
        .await
        .unwrap();
    assert_eq!(r.json().unwrap()["body_bytes"], 5);
    let last = upstream.last_request().unwrap();
    assert_eq!(
        (
            last.method.as_str(),
            last.path.as_str(),
            last.body.as_slice()
        ),
        ("POST", "/p", &b"hello"[..])
    );
    assert_eq!(last.header("Content-Length"), Some("5"));

    let r = http_get(&format!("{}/api/status/503", upstream.url()))
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json().unwrap()["path"], "/api/status/503");

    let started = Instant::now();
    let r = http_get(&format!("{}/slow?ms=150", upstream.url()))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));

    let r = http_get(&format!("{}/big?bytes=300001", upstream.url()))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 300_001);
    assert!(r.body.iter().all(|b| *b == b'x'));
    assert_eq!(r.header("content-length"), Some("300001"));

    // Capacity 3 keeps the latest three of six; the count goes on.
    assert_eq!(upstream.request_count(), 5);
    http_get(&format!("{}/six", upstream.url())).await.unwrap();
    let paths: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/slow?ms=150", "/big?bytes=300001", "/six"]);
    upstream.clear();
    assert!(upstream.requests().is_empty());
    assert_eq!(upstream.request_count(), 6);
}

#[tokio::test]
async fn servers_stop_when_dropped() {
    let upstream = TestUpstream::start().await.unwrap();
    let issuer = MockIssuer::start().await.unwrap();
    let (ua, ia) = (upstream.addr(), issuer.addr());
    wait_for_tcp(ua, Duration::from_secs(1)).await.unwrap();
    drop(upstream);
    drop(issuer);
    tokio::task::yield_now().await;
    for addr in [ua, ia] {
        let e = wait_for_tcp(addr, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }
}

#[tokio::test]
async fn issuer_on_a_fixed_address() {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let issuer = MockIssuer::builder().listen(addr).start().await.unwrap();
    assert_eq!(issuer.addr(), addr);
    assert_eq!(issuer.url(), format!("http://{addr}"));
}

/// Sends one RESP command in inline form and returns the first reply line.
async fn redis_command(addr: SocketAddr, command: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .await?;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned())
}

#[tokio::test]
async fn redis_start_stop_start() {
    let Some(mut redis) = RedisServer::spawn().await.unwrap() else {
        eprintln!("skipped: no redis-server (install it or set DPOP_TEST_REDIS_SERVER)");
        return;
    };
    let addr = redis.addr();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert!(redis.is_running());
    assert_eq!(redis_command(addr, "PING").await.unwrap(), "+PONG");
    assert_eq!(redis_command(addr, "SET k v").await.unwrap(), "+OK");

    redis.stop().unwrap();
    assert!(!redis.is_running());
    assert!(redis_command(addr, "PING").await.is_err());

    redis.start().await.unwrap();
    assert_eq!(redis.addr(), addr, "same port after a restart");
    assert_eq!(redis_command(addr, "PING").await.unwrap(), "+PONG");
    assert_eq!(
        redis_command(addr, "GET k").await.unwrap(),
        "$-1",
        "nothing persisted"
    );
}

/// Whether the schema `name` exists on `server`.
async fn schema_exists(server: &str, name: &str) -> bool {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(server).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = $1",
    )
    .bind(name)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    n == 1
}

#[tokio::test]
async fn pg_schema_is_selected_by_its_url_and_dropped() {
    use sqlx::Connection as _;
    let Some(pg) = PgSchema::create().await else {
        return;
    };
    let (server, name) = (pg.server().to_owned(), pg.schema().to_owned());
    assert!(name.starts_with("t_") && name.len() == 18, "{name}");
    assert!(pg.url().starts_with(&server), "{}", pg.url());
    assert!(
        pg.url()
            .ends_with(&format!("options=-c%20search_path%3D{name}")),
        "{}",
        pg.url()
    );
    // Unqualified names go to the schema.
    let mut conn = sqlx::PgConnection::connect(pg.url()).await.unwrap();
    sqlx::raw_sql("CREATE TABLE probe (id INTEGER)")
        .execute(&mut conn)
        .await
        .unwrap();
    let current: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(current, name);
    conn.close().await.unwrap();

    assert!(schema_exists(&server, &name).await);
    pg.drop_schema().await.unwrap();
    assert!(!schema_exists(&server, &name).await, "drop_schema");

    // Without drop_schema, dropping the value removes it.
    let pg = PgSchema::create().await.unwrap();
    let name = pg.schema().to_owned();
    assert!(schema_exists(&server, &name).await);
    drop(pg);
    assert!(!schema_exists(&server, &name).await, "Drop");
}
