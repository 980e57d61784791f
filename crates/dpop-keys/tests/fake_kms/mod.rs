//! An in-process stand-in for the AWS KMS JSON API on 127.0.0.1: it checks every
//! request's SigV4 signature against its own secret (with its own code, not the
//! crate's), holds real P-256 / P-384 keys, signs the digests it is sent and answers
//! with DER signatures as KMS does, and can be told to fail in the ways KMS and
//! networks fail.

#![allow(dead_code, reason = "the tests and the bench each use part of it")]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{self, Digest, SHA256, SHA384};
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::hmac;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

pub(crate) const ACCESS_KEY: &str = "AKIDFAKEKMS0000001";
pub(crate) const SECRET: &str = "fAkE/kms+SecretAccessKey0123456789abcdefg";
pub(crate) const REGION: &str = "eu-west-1";
pub(crate) const ACCOUNT: &str = "111122223333";

/// How the next calls fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// An error answer of this KMS type, HTTP 400.
    Kms(&'static str),
    /// HTTP 500 with an empty body.
    Status500,
    /// The answer after this long.
    Slow(Duration),
    /// A `Signature` that is not DER.
    GarbageSignature,
    /// The signature in the fixed `R || S` form rather than DER.
    FixedSignature,
    /// A valid DER signature by another key.
    OtherKeySignature,
    /// An answer far larger than any KMS answer.
    Oversized,
    /// HTTP 200 with a body that is not JSON.
    NotJson,
}

struct Key {
    id: String,
    arn: String,
    spec: &'static str,
    usage: &'static str,
    pair: EcdsaKeyPair,
    state: &'static str,
}

#[derive(Default)]
struct State {
    keys: Vec<Key>,
    aliases: HashMap<String, String>,
    /// A fault for one action (`Some(action)`) or all (`None`).
    faults: Vec<(Option<String>, Fault)>,
    /// The session token the credentials must carry, if any.
    session_token: Option<String>,
    /// Every action called, with the request body.
    calls: Vec<(String, Value)>,
    next_id: u32,
}

pub(crate) struct FakeKms {
    pub(crate) url: String,
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for FakeKms {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl FakeKms {
    pub(crate) fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = shared.clone();
                async move { handle(&state, &headers, &body).await }
            }),
        );
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            state,
            runtime: Some(runtime),
        }
    }

    /// A new key of `spec` (`ECC_NIST_P256`, `ECC_NIST_P384`, or any other name, held
    /// as a P-256 key) and `usage`; its id.
    pub(crate) fn add_key(&self, spec: &'static str, usage: &'static str) -> String {
        let mut s = self.state.lock().unwrap();
        add_key(&mut s, spec, usage)
    }

    pub(crate) fn alias(&self, alias: &str, key_id: &str) {
        let mut s = self.state.lock().unwrap();
        s.aliases.insert(alias.to_owned(), key_id.to_owned());
    }

    /// The ARN of key `id`.
    pub(crate) fn arn(&self, id: &str) -> String {
        format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/{id}")
    }

    /// The raw public point of key `id` (or of the key an alias names).
    pub(crate) fn public_point(&self, id: &str) -> Vec<u8> {
        let s = self.state.lock().unwrap();
        let k = find(&s, id).unwrap();
        k.pair.public_key().as_ref().to_vec()
    }

    pub(crate) fn key_state(&self, id: &str) -> String {
        let s = self.state.lock().unwrap();
        find(&s, id).unwrap().state.to_owned()
    }

    pub(crate) fn key_count(&self) -> usize {
        self.state.lock().unwrap().keys.len()
    }

    /// Fails `action` (or every action) with `fault` from now on.
    pub(crate) fn fail(&self, action: Option<&str>, fault: Fault) {
        let mut s = self.state.lock().unwrap();
        s.faults.push((action.map(str::to_owned), fault));
    }

    pub(crate) fn heal(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    pub(crate) fn require_session_token(&self, token: &str) {
        self.state.lock().unwrap().session_token = Some(token.to_owned());
    }

    /// The actions called so far, in order, and their bodies.
    pub(crate) fn calls(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().calls.clone()
    }

    pub(crate) fn actions(&self) -> Vec<String> {
        self.calls().into_iter().map(|(a, _)| a).collect()
    }
}

fn add_key(s: &mut State, spec: &'static str, usage: &'static str) -> String {
    s.next_id += 1;
    let id = format!("0000{:04}-fake-4kms-8key-{:012}", s.next_id, s.next_id);
    let signing = if spec == "ECC_NIST_P384" {
        &ECDSA_P384_SHA384_ASN1_SIGNING
    } else {
        &ECDSA_P256_SHA256_ASN1_SIGNING
    };
    s.keys.push(Key {
        arn: format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/{id}"),
        id: id.clone(),
        spec,
        usage,
        pair: EcdsaKeyPair::generate(signing).unwrap(),
        state: "Enabled",
    });
    id
}

/// The key a `KeyId` names: its id, ARN, alias name or alias ARN.
fn find<'a>(s: &'a State, key_id: &str) -> Option<&'a Key> {
    let alias_prefix = format!("arn:aws:kms:{REGION}:{ACCOUNT}:");
    let key_id = key_id
        .strip_prefix(&alias_prefix)
        .filter(|a| a.starts_with("alias/"))
        .unwrap_or(key_id);
    let id = s.aliases.get(key_id).map_or(key_id, String::as_str);
    s.keys.iter().find(|k| k.id == id || k.arn == id)
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/x-amz-json-1.1")],
        json!({ "__type": kind, "message": message }).to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/x-amz-json-1.1")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(state: &Mutex<State>, headers: &HeaderMap, body: &[u8]) -> Response {
    let (response, delay) = {
        let mut s = state.lock().unwrap();
        answer(&mut s, headers, body)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    response
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn answer(s: &mut State, headers: &HeaderMap, body: &[u8]) -> (Response, Option<Duration>) {
    let bad = |kind: &str, message: &str| (error(StatusCode::BAD_REQUEST, kind, message), None);
    if header(headers, "content-type") != "application/x-amz-json-1.1" {
        return bad("UnsupportedMediaType", "content type");
    }
    let Some(action) = header(headers, "x-amz-target").strip_prefix("TrentService.") else {
        return bad("UnknownOperationException", "no target");
    };
    let action = action.to_owned();
    if let Err((kind, message)) = check_signature(s, headers, body) {
        return bad(kind, &message);
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return bad("SerializationException", "body");
    };
    s.calls.push((action.clone(), request.clone()));
    let fault = s
        .faults
        .iter()
        .rev()
        .find(|(a, _)| a.as_deref().is_none_or(|a| a == action))
        .map(|(_, f)| *f);
    let mut delay = None;
    match fault {
        Some(Fault::Kms(kind)) => return bad(kind, &format!("{kind} (fake) for {action}")),
        Some(Fault::Status500) => {
            return (StatusCode::INTERNAL_SERVER_ERROR.into_response(), None);
        }
        Some(Fault::Oversized) => {
            return (ok(json!({ "Padding": "x".repeat(200 * 1024) })), None);
        }
        Some(Fault::NotJson) => {
            return ((StatusCode::OK, "<html>hello</html>").into_response(), None);
        }
        Some(Fault::Slow(d)) => delay = Some(d),
        _ => {}
    }
    let text = |name: &str| {
        request
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let response = match action.as_str() {
        "GetPublicKey" | "DescribeKey" => match find(s, &text("KeyId")) {
            None => {
                bad(
                    "NotFoundException",
                    &format!("Key '{}' does not exist", text("KeyId")),
                )
                .0
            }
            Some(k) if action == "DescribeKey" => ok(json!({ "KeyMetadata": {
                "KeyId": k.id, "Arn": k.arn, "KeySpec": k.spec, "KeyUsage": k.usage, "KeyState": k.state,
            }})),
            Some(k) => {
                let spki = k.pair.public_key().as_der().unwrap();
                let algs = if k.spec == "ECC_NIST_P384" {
                    "ECDSA_SHA_384"
                } else {
                    "ECDSA_SHA_256"
                };
                ok(json!({
                    "KeyId": k.arn,
                    "KeySpec": k.spec,
                    "CustomerMasterKeySpec": k.spec,
                    "KeyUsage": k.usage,
                    "PublicKey": STANDARD.encode(spki.as_ref()),
                    "SigningAlgorithms": [algs],
                }))
            }
        },
        "Sign" => sign(s, &request, fault),
        "CreateKey" => {
            let spec = match text("KeySpec").as_str() {
                "ECC_NIST_P256" => "ECC_NIST_P256",
                "ECC_NIST_P384" => "ECC_NIST_P384",
                _ => return bad("ValidationException", "KeySpec"),
            };
            if text("KeyUsage") != "SIGN_VERIFY" {
                return bad("ValidationException", "KeyUsage");
            }
            let id = add_key(s, spec, "SIGN_VERIFY");
            let k = find(s, &id).unwrap();
            ok(
                json!({ "KeyMetadata": { "KeyId": k.id, "Arn": k.arn, "KeySpec": k.spec, "KeyUsage": k.usage }}),
            )
        }
        "CreateAlias" => {
            let alias = text("AliasName");
            if s.aliases.contains_key(&alias) {
                return bad(
                    "AlreadyExistsException",
                    &format!("An alias with the name {alias} already exists"),
                );
            }
            let Some(k) = find(s, &text("TargetKeyId")) else {
                return bad("NotFoundException", "target");
            };
            let id = k.id.clone();
            s.aliases.insert(alias, id);
            ok(json!({}))
        }
        "ScheduleKeyDeletion" => {
            let id = text("KeyId");
            match s.keys.iter_mut().find(|k| k.id == id) {
                Some(k) => {
                    k.state = "PendingDeletion";
                    ok(json!({ "KeyId": k.arn, "KeyState": "PendingDeletion" }))
                }
                None => bad("NotFoundException", "key").0,
            }
        }
        _ => bad("UnknownOperationException", &action).0,
    };
    (response, delay)
}

fn sign(s: &State, request: &Value, fault: Option<Fault>) -> Response {
    let text = |name: &str| {
        request
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let Some(k) = find(s, text("KeyId")) else {
        return error(StatusCode::BAD_REQUEST, "NotFoundException", "key");
    };
    if k.state != "Enabled" {
        return error(
            StatusCode::BAD_REQUEST,
            "KMSInvalidStateException",
            &format!("{} is pending deletion", k.arn),
        );
    }
    if k.usage != "SIGN_VERIFY" {
        return error(StatusCode::BAD_REQUEST, "InvalidKeyUsageException", "usage");
    }
    let (alg, digest_alg) = if k.spec == "ECC_NIST_P384" {
        ("ECDSA_SHA_384", &SHA384)
    } else {
        ("ECDSA_SHA_256", &SHA256)
    };
    if text("SigningAlgorithm") != alg {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidKeyUsageException",
            "algorithm",
        );
    }
    // What this backend must send: a digest, never the message.
    if text("MessageType") != "DIGEST" {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "MessageType must be DIGEST here",
        );
    }
    let Some(Ok(digest)) = STANDARD
        .decode(text("Message"))
        .ok()
        .map(|d| Digest::import_less_safe(&d, digest_alg))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "Digest is invalid length for algorithm",
        );
    };
    let signature = match fault {
        Some(Fault::GarbageSignature) => b"\x30\x05garbage".to_vec(),
        Some(Fault::FixedSignature) => {
            let der = k.pair.sign_digest(&digest).unwrap();
            let len = if k.spec == "ECC_NIST_P384" { 48 } else { 32 };
            dpop_keys::der_to_fixed(der.as_ref(), len).unwrap()
        }
        Some(Fault::OtherKeySignature) => {
            let signing = if k.spec == "ECC_NIST_P384" {
                &ECDSA_P384_SHA384_ASN1_SIGNING
            } else {
                &ECDSA_P256_SHA256_ASN1_SIGNING
            };
            let other = EcdsaKeyPair::generate(signing).unwrap();
            other.sign_digest(&digest).unwrap().as_ref().to_vec()
        }
        _ => k.pair.sign_digest(&digest).unwrap().as_ref().to_vec(),
    };
    ok(json!({
        "KeyId": k.arn,
        "Signature": STANDARD.encode(signature),
        "SigningAlgorithm": alg,
    }))
}

/// Checks the request's SigV4 `Authorization` against the fake's own secret, as KMS
/// does: the credential scope, the signed headers, the clock, the signature.
fn check_signature(
    s: &State,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), (&'static str, String)> {
    let invalid = |why: &str| ("InvalidSignatureException", why.to_owned());
    let auth = header(headers, "authorization");
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
        (
            "MissingAuthenticationTokenException",
            "no SigV4 Authorization".to_owned(),
        )
    })?;
    let mut fields = HashMap::new();
    for part in rest.split(", ") {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| invalid("Authorization field"))?;
        fields.insert(name, value);
    }
    let credential = fields
        .get("Credential")
        .ok_or_else(|| invalid("no Credential"))?;
    let signed_headers = fields
        .get("SignedHeaders")
        .ok_or_else(|| invalid("no SignedHeaders"))?;
    let signature = fields
        .get("Signature")
        .ok_or_else(|| invalid("no Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, day, region, service, "aws4_request"] = scope[..] else {
        return Err(invalid("Credential scope"));
    };
    if access_key != ACCESS_KEY {
        return Err((
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".to_owned(),
        ));
    }
    if region != REGION || service != "kms" {
        return Err(invalid(&format!(
            "Credential should be scoped to a valid region ({region}/{service})"
        )));
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    if names != sorted {
        return Err(invalid("SignedHeaders not sorted"));
    }
    for required in ["content-type", "host", "x-amz-date", "x-amz-target"] {
        if !names.contains(&required) {
            return Err(invalid(&format!("{required} is not signed")));
        }
    }
    match (&s.session_token, headers.get("x-amz-security-token")) {
        (Some(want), Some(got)) if got.as_bytes() == want.as_bytes() => {
            if !names.contains(&"x-amz-security-token") {
                return Err(invalid("the session token is not signed"));
            }
        }
        (None, None) => {}
        _ => {
            return Err((
                "UnrecognizedClientException",
                "The security token included in the request is invalid.".to_owned(),
            ));
        }
    }
    let date = header(headers, "x-amz-date");
    if !date.starts_with(day) || date.len() != 16 {
        return Err(invalid("x-amz-date does not match the scope"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if parse_amz_date(date).is_none_or(|t| t.abs_diff(now) > 300) {
        return Err(invalid("Signature expired"));
    }
    let mut canonical = String::from("POST\n/\n\n");
    for name in &names {
        let value = headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| invalid(&format!("signed header {name} is absent")))?;
        let _ = writeln!(canonical, "{name}:{}", value.trim());
    }
    let _ = write!(
        canonical,
        "\n{signed_headers}\n{}",
        hex(digest::digest(&SHA256, body).as_ref())
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{day}/{region}/kms/aws4_request\n{}",
        hex(digest::digest(&SHA256, canonical.as_bytes()).as_ref())
    );
    let mut key = format!("AWS4{SECRET}").into_bytes();
    for part in [day, region, "kms", "aws4_request", &to_sign] {
        key = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), part.as_bytes())
            .as_ref()
            .to_vec();
    }
    if hex(&key) == *signature {
        Ok(())
    } else {
        Err(invalid(
            "The request signature we calculated does not match the signature you provided.",
        ))
    }
}

/// Seconds since the epoch of `YYYYMMDDTHHMMSSZ`.
fn parse_amz_date(d: &str) -> Option<u64> {
    let num = |r: std::ops::Range<usize>| d.get(r)?.parse::<i64>().ok();
    let (y, m, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, min, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    // Days from 1970-01-01 by counting years and months.
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut days: i64 = (1970..y).map(|yy| if leap(yy) { 366 } else { 365 }).sum();
    let month_len = [
        31,
        if leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    days += month_len
        .iter()
        .take(usize::try_from(m - 1).ok()?)
        .sum::<i64>()
        + day
        - 1;
    u64::try_from(days * 86_400 + h * 3600 + min * 60 + sec).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
