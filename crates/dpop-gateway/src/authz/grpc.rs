//! Envoy's ext_authz over gRPC: `envoy.service.auth.v3.Authorization/Check`, served in
//! cleartext HTTP/2 (h2c, no TLS). The listener belongs on loopback (Envoy as a sidecar
//! or on the same host) or inside a mesh whose mTLS protects it: without TLS, Envoy
//! cannot tell the authorizer from an impostor on the network path, and whoever reaches
//! the port can ask for decisions (and spend a captured proof's single use).
//!
//! A check is translated, never judged here: the `attributes.request.http` Envoy reports
//! becomes an [`OriginalRequest`] (method, scheme, host, raw path with query, headers
//! from `headers` or, with `encode_raw_headers`, from `header_map` keeping repeated
//! lines), Envoy's comma-merged `dpop`/`authorization` values are split again so several
//! are refused, and [`Authorizer::check`](super::check::Authorizer::check) decides. A
//! report without `http` attributes, or with an empty method, host or path, or a header
//! Envoy could not have received as HTTP, is denied with 400; headers larger in total than
//! `limits.max_header_bytes` are denied with 431.
//!
//! # Answers
//! - **Deny**: `status` `PERMISSION_DENIED` (7), or `UNAVAILABLE` (14) when the layer
//!   answered 503 (issuer or replay store unreachable, overload), and a
//!   `DeniedHttpResponse` with the layer's HTTP status, `WWW-Authenticate`, `DPoP-Nonce`,
//!   `Retry-After` and `Cache-Control: no-store`, each set (not appended to a header of the
//!   same name). Envoy treats every non-OK code as a denial and sends the client the
//!   `DeniedHttpResponse`; the code only shows in Envoy's stats and logs. The error
//!   variant (`error_response`) is never used: Envoy would hand it to
//!   `failure_mode_allow`.
//! - **Allow**: `status` OK (0) and an `OkHttpResponse` whose `headers` set the identity
//!   headers upstream (overwriting a client-sent header of the same name),
//!   `headers_to_remove` lists (sorted) `authorization` and `dpop` (when configured to
//!   strip them), the identity headers not set and every other spelling of an identity
//!   header the client sent, and `response_headers_to_add` carries a fresh `DPoP-Nonce`
//!   to the client when one is due. Envoy refuses to remove pseudo-headers and `host`;
//!   neither is ever asked.
//!   Header options carry both the `append: false` of older Envoys and the
//!   `append_action: OVERWRITE_IF_EXISTS_OR_ADD` of newer ones.
//! - **Dynamic metadata** (allow only): a `google.protobuf.Struct` with the string fields
//!   `sub`, `client_id` and `jkt` of the verified caller, each only when known. Envoy files
//!   it under the filter's name, e.g. `%DYNAMIC_METADATA(envoy.filters.http.ext_authz:sub)%`
//!   in an access log format. An `off` route, a report-only route whose check failed, and
//!   the RFC 9728 metadata document are allowed without identity and emit none.
//!
//! # Keeping Envoy fail-closed
//! - `failure_mode_allow: false` (the default): an authorizer that is down, times out or
//!   answers with a gRPC error is then a denial (`status_on_error`, 403 by default),
//!   never an allow.
//! - `grpc_service.timeout` (Envoy's default is 200 ms): a check slower than this is such
//!   an error. The authorizer bounds each check by `limits.request_timeout_secs` and denies
//!   with 503 past it; keep Envoy's timeout the shorter of the two so Envoy decides first.
//! - Leave `with_request_body` off: the authorizer never reads the body, and the
//!   message size bound below refuses (fails) a check that carries a large one.
//! - Repeated `dpop` headers: Envoy merges them with `,` unless `encode_raw_headers: true`;
//!   both arrive as several proofs and are refused.
//!
//! # Bounds
//! `limits.max_connections` concurrent connections (past it, connections wait in the
//! kernel's backlog), `limits.max_concurrent_streams` checks per connection,
//! `limits.request_timeout_secs` per check, and a gRPC message of at most
//! 4 × `limits.max_header_bytes` + 64 KiB: a check carries the headers once (as `headers`
//! or `header_map`) with a few bytes of framing per header, which for many tiny headers
//! can outweigh the headers themselves (hence 4 ×), plus the path, host, addresses and
//! Envoy's metadata (the 64 KiB). A larger message is a gRPC error, so Envoy denies.
//! A new connection that sends no check within 10 s is closed (an HTTP/2 connection has
//! no header read timeout of its own, and silent connections would otherwise hold every
//! slot). Envoy keeps its channel open; after its first check a connection holds its
//! slot while the peer answers HTTP/2 pings, and is closed when it stops answering them.
//! On shutdown the listener closes, every connection gets a GOAWAY, and checks in flight
//! finish (for up to the drain timeout).
//!
//! The gRPC health service is not served: Envoy does not need it to call `Check`, and
//! readiness is on the admin listener's `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue as PbHeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{BoolValue, Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use super::reload::AuthzReloader;
use super::{Allowed, Decision, Denied, OriginalRequest};
use crate::accept::{Accepting, next_until, stopped};
use crate::config::AuthzConfig;
use crate::server::{FirstRequest, H2_PING_INTERVAL, H2_PING_TIMEOUT};

/// gRPC status codes (google.rpc.Code) the answers use.
const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAVAILABLE: i32 = 14;

/// How long a new connection may go without sending a check: a peer that opens
/// connections and sends nothing (no HTTP/2 preface, or no request) must not hold
/// `max_connections` slots for good. Envoy sends its first check at once on a new
/// connection.
const FIRST_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest gRPC message accepted or sent: see the module documentation.
pub(crate) fn max_message_bytes(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(4).saturating_add(64 * 1024)
}

/// Serves `envoy.service.auth.v3.Authorization/Check` on `listener` until `stop` turns
/// true, then lets in-flight checks finish. Each check takes the configuration in force
/// from `current` when it starts; the listener's own settings are `config`'s, as started.
pub(crate) async fn serve(
    listener: TcpListener,
    current: Arc<AuthzReloader>,
    config: Arc<AuthzConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = &config.enforcement;
    let max_message = max_message_bytes(limits.max_header_bytes);
    let service = AuthorizationServer::new(Check {
        current,
        max_header_bytes: limits.max_header_bytes,
    })
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let h2 = Arc::new(h2);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    while let Some((permit, stream, peer)) =
        next_until(&listener, &slots, &mut stop, Accepting::AuthzGrpc).await
    {
        let service = service.clone();
        let h2 = Arc::clone(&h2);
        let mut stop = stop.clone();
        connections.spawn(async move {
            let first = FirstRequest::default();
            let seen = first.clone();
            let svc = service_fn(move |request: http::Request<_>| {
                seen.seen();
                let span = dpop_server::telemetry::request_span(&request, Some(peer.ip()), None);
                tracing::Instrument::instrument(service.clone().oneshot(request), span)
            });
            let conn = h2.serve_connection(TokioIo::new(stream), svc);
            let served = async move {
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    () = stopped(&mut stop) => {
                        // GOAWAY: no new checks on this connection, those in flight finish.
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(target: "dpop::authz", %peer, error = %e, "gRPC connection ended with an error");
                }
            };
            first.bound(served, FIRST_CHECK_TIMEOUT, peer).await;
            drop(permit);
        });
        // Reap the connections that have ended, so the set holds only live ones.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// The `Authorization` service.
struct Check {
    /// The configuration in force.
    current: Arc<AuthzReloader>,
    max_header_bytes: usize,
}

#[tonic::async_trait]
impl Authorization for Check {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let decision = match original(request.into_inner(), self.max_header_bytes) {
            Ok(mut original) => {
                original.split_merged();
                // This check's configuration, to its end.
                let now = self.current.current();
                let timeout = now.state().config().enforcement.request_timeout;
                let check = now.state().authorizer().check(original);
                match tokio::time::timeout(timeout, check).await {
                    Ok(decision) => decision,
                    Err(_) => {
                        tracing::warn!(target: "dpop::authz", timeout_secs = timeout.as_secs_f64(), "check refused: it took longer than the request timeout");
                        Decision::Deny(Denied::bare(StatusCode::SERVICE_UNAVAILABLE))
                    }
                }
            }
            Err(status) => Decision::Deny(Denied::bare(status)),
        };
        Ok(tonic::Response::new(respond(decision)))
    }
}

/// The request Envoy reports, or the status refusing a report that is not one.
fn original(check: CheckRequest, max_header_bytes: usize) -> Result<OriginalRequest, StatusCode> {
    let refuse = |status: StatusCode, why: &'static str| {
        tracing::info!(target: "dpop::authz", status = status.as_u16(), "check refused: {why}");
        status
    };
    let Some(http) = check
        .attributes
        .and_then(|a| a.request)
        .and_then(|r| r.http)
    else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the report has no HTTP request attributes",
        ));
    };
    if http.method.is_empty() || http.host.is_empty() || http.path.is_empty() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the report has no method, host or path",
        ));
    }
    let mut headers = HeaderMap::new();
    let mut size = 0usize;
    let mut add = |name: &[u8], value: &[u8]| -> Result<(), StatusCode> {
        // `:authority`, `:method`, `:path`, `:scheme` are reported in their own fields.
        if name.starts_with(b":") {
            return Ok(());
        }
        size = size.saturating_add(name.len() + value.len());
        if size > max_header_bytes {
            return Err(refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the reported headers exceed limits.max_header_bytes",
            ));
        }
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "a reported header name or value is not valid HTTP",
            ));
        };
        headers.try_append(name, value).map_err(|_| {
            refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many reported headers",
            )
        })?;
        Ok(())
    };
    match &http.header_map {
        // `encode_raw_headers: true`: one entry per line, values in `raw_value`.
        Some(map) => {
            for h in &map.headers {
                let value = if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    &h.raw_value
                };
                add(h.key.as_bytes(), value)?;
            }
        }
        None => {
            for (name, value) in &http.headers {
                add(name.as_bytes(), value.as_bytes())?;
            }
        }
    }
    Ok(OriginalRequest {
        method: http.method,
        scheme: http.scheme,
        authority: http.host,
        path_and_query: http.path,
        headers,
    })
}

/// The decision as Envoy reads it.
fn respond(decision: Decision) -> CheckResponse {
    match decision {
        Decision::Deny(denied) => deny(denied),
        Decision::Allow(allowed) => allow(allowed).unwrap_or_else(|| {
            // The layer's header values are visible ASCII; one that is not cannot be sent
            // as Envoy reads it, and the request is refused rather than passed without it.
            tracing::error!(target: "dpop::authz", "check refused: a header value to send is not visible ASCII");
            deny(Denied::bare(StatusCode::INTERNAL_SERVER_ERROR))
        }),
    }
}

fn deny(denied: Denied) -> CheckResponse {
    let code = if denied.status == StatusCode::SERVICE_UNAVAILABLE {
        GRPC_UNAVAILABLE
    } else {
        GRPC_PERMISSION_DENIED
    };
    // The first line of a name replaces whatever Envoy's reply would carry; further
    // lines of the same name (none today: the layer renders its challenges in one
    // `WWW-Authenticate`) are appended to it.
    let mut headers = Vec::with_capacity(denied.headers.len());
    let mut previous: Option<&HeaderName> = None;
    for (name, value) in &denied.headers {
        let again = previous == Some(name);
        previous = Some(name);
        let value = String::from_utf8_lossy(value.as_bytes());
        headers.push(option(name, &value, again));
    }
    CheckResponse {
        status: Some(RpcStatus {
            code,
            message: denied.status.to_string(),
            details: Vec::new(),
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(denied.status.as_u16()),
            }),
            headers,
            body: String::from_utf8_lossy(&denied.body).into_owned(),
        })),
    }
}

fn allow(allowed: Allowed) -> Option<CheckResponse> {
    let set = |list: &[(HeaderName, HeaderValue)]| -> Option<Vec<HeaderValueOption>> {
        list.iter()
            .map(|(name, value)| Some(option(name, value.to_str().ok()?, false)))
            .collect()
    };
    // Sorted: the same answer for the same request, whatever the order of Envoy's header
    // map.
    let mut remove: Vec<String> = allowed
        .remove
        .iter()
        .map(|n| n.as_str().to_owned())
        .collect();
    remove.sort_unstable();
    remove.dedup();
    let ok = OkHttpResponse {
        headers: set(&allowed.upstream_headers)?,
        headers_to_remove: remove,
        response_headers_to_add: set(&allowed.response_headers)?,
        ..OkHttpResponse::default()
    };
    let mut fields = std::collections::HashMap::new();
    if let Some(id) = allowed.identity {
        let string = |s: String| Value {
            kind: Some(Kind::StringValue(s)),
        };
        if let Some(sub) = id.subject {
            fields.insert("sub".to_owned(), string(sub));
        }
        if let Some(client_id) = id.client_id {
            fields.insert("client_id".to_owned(), string(client_id));
        }
        if let Some(jkt) = id.jkt {
            fields.insert("jkt".to_owned(), string(jkt.as_str().to_owned()));
        }
    }
    Some(CheckResponse {
        status: Some(RpcStatus {
            code: GRPC_OK,
            message: String::new(),
            details: Vec::new(),
        }),
        dynamic_metadata: (!fields.is_empty()).then_some(Struct { fields }),
        http_response: Some(HttpResponse::OkResponse(ok)),
    })
}

/// A header for Envoy to set (`append` false: replacing any of that name) or, for a
/// further line of a name already set, to append.
fn option(name: &HeaderName, value: &str, append: bool) -> HeaderValueOption {
    let action = if append {
        HeaderAppendAction::AppendIfExistsOrAdd
    } else {
        HeaderAppendAction::OverwriteIfExistsOrAdd
    };
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(PbHeaderValue {
            key: name.as_str().to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        // Older Envoys read only `append` (unset meaning "set" in ext_authz answers);
        // newer ones read it first when present, else `append_action`.
        append: Some(BoolValue { value: append }),
        append_action: action as i32,
        keep_empty_value: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_bound_follows_the_header_limit() {
        assert_eq!(max_message_bytes(16 * 1024), 128 * 1024);
        assert_eq!(max_message_bytes(usize::MAX), usize::MAX);
    }
}
