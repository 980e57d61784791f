//! RFC 9728 protected resource metadata: the document served at
//! `/.well-known/oauth-protected-resource`, and the `resource_metadata` URL every 401 and
//! 403 challenge points to.
//!
//! The document is built from the layer's settings: `resource` is the URL the client used
//! (the public URL, or the allowed host, the `htu` rule picked for the request; a host the
//! rule does not allow is never reflected), `authorization_servers` from
//! [`ResourceMetadata`], `scopes_supported` configured or the union of the route scopes
//! (sorted),
//! `bearer_methods_supported` `["header"]`, `dpop_signing_alg_values_supported` the
//! accepted algorithms, and `dpop_bound_access_tokens_required` true unless the default
//! policy accepts Bearer tokens.

use std::time::Duration;

use bytes::Bytes;
use dpop_core::{Algorithm, HtuBase};
use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::Value;

use crate::config::{DpopMode, RoutePolicy, Routes};

/// The path of the metadata document (RFC 9728 §3.1).
pub const WELL_KNOWN_PATH: &str = "/.well-known/oauth-protected-resource";

/// What the RFC 9728 metadata document says besides what the layer's settings already
/// tell. Set it with [`crate::DpopLayerBuilder::resource_metadata`]; without it the layer
/// publishes no document and its challenges carry no `resource_metadata`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResourceMetadata {
    /// `authorization_servers`: the issuers whose tokens this resource accepts.
    pub authorization_servers: Vec<String>,
    /// `scopes_supported`. Defaults to `None`: the union of the routes' scopes, sorted
    /// (left out when no route requires a scope).
    pub scopes_supported: Option<Vec<String>>,
    /// `resource_name`, human-readable. Defaults to none.
    pub resource_name: Option<String>,
    /// `resource_documentation`, a URL. Defaults to none.
    pub resource_documentation: Option<String>,
    /// `Cache-Control: max-age` of the document. Defaults to 1 hour.
    pub max_age: Duration,
}

impl ResourceMetadata {
    /// Metadata naming `issuer` as the authorization server, other fields defaulted.
    #[must_use]
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            authorization_servers: vec![issuer.into()],
            scopes_supported: None,
            resource_name: None,
            resource_documentation: None,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// The documents without `resource`, rendered once when the layer is built: the public
/// URL's, and one per route that is a resource of its own.
#[derive(Debug)]
pub(crate) struct PreparedMetadata {
    /// `,"authorization_servers":…` to the end, closing brace included.
    root: String,
    /// A route's resource path and its document's rest, as `root`.
    routes: Vec<(String, String)>,
    cache_control: HeaderValue,
}

/// `serde_json` renders these types without fail; `null` keeps the document well-formed
/// if it ever did not.
fn json(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// A document after `resource`: `scopes` (left out when empty), and Bearer tokens accepted
/// or not.
fn rest(meta: &ResourceMetadata, algs: &[Algorithm], scopes: &[String], bearer: bool) -> String {
    let mut fields: Vec<(&str, Value)> = vec![(
        "authorization_servers",
        Value::from(meta.authorization_servers.clone()),
    )];
    if !scopes.is_empty() {
        fields.push(("scopes_supported", Value::from(scopes.to_vec())));
    }
    fields.push(("bearer_methods_supported", Value::from(vec!["header"])));
    fields.push((
        "dpop_signing_alg_values_supported",
        Value::from(algs.iter().map(|a| a.name()).collect::<Vec<_>>()),
    ));
    fields.push(("dpop_bound_access_tokens_required", Value::from(!bearer)));
    if let Some(name) = &meta.resource_name {
        fields.push(("resource_name", Value::from(name.as_str())));
    }
    if let Some(doc) = &meta.resource_documentation {
        fields.push(("resource_documentation", Value::from(doc.as_str())));
    }
    let mut out = String::new();
    for (name, value) in &fields {
        out.push(',');
        out.push_str(&json(&Value::from(*name)));
        out.push(':');
        out.push_str(&json(value));
    }
    out.push('}');
    out
}

/// What a request for the well-known path asks for, found by [`PreparedMetadata::find`].
pub(crate) struct Document<'a> {
    /// The resource's path after the public URL (empty for the public URL's own).
    path: &'a str,
    rest: &'a str,
}

impl PreparedMetadata {
    pub(crate) fn new(meta: &ResourceMetadata, algs: &[Algorithm], routes: &Routes) -> Self {
        let scopes = meta.scopes_supported.clone().unwrap_or_else(|| {
            let mut all: Vec<String> = routes.policies().flat_map(|p| p.scopes.clone()).collect();
            all.sort_unstable();
            all.dedup();
            all
        });
        let bearer = |p: &RoutePolicy| p.mode == DpopMode::AllowBearer;
        let root = rest(meta, algs, &scopes, bearer(routes.default_policy()));
        // A route of its own announces its own scopes (when it has any).
        let routes = routes
            .routes()
            .filter_map(|r| {
                let path = r.resource_path()?;
                let scopes = if r.policy.scopes.is_empty() {
                    &scopes
                } else {
                    &r.policy.scopes
                };
                Some((path.to_owned(), rest(meta, algs, scopes, bearer(&r.policy))))
            })
            .collect();
        let cache_control = HeaderValue::from_str(&format!("max-age={}", meta.max_age.as_secs()))
            .unwrap_or(HeaderValue::from_static("max-age=3600"));
        Self {
            root,
            routes,
            cache_control,
        }
    }

    /// The document a request for `path` asks for, where the public base's path prefix is
    /// `prefix`: [`WELL_KNOWN_PATH`], then the prefix (RFC 9728 §3.1) or nothing (a proxy
    /// in front removed it), then nothing or a route's own resource path.
    pub(crate) fn find<'a>(&'a self, path: &str, prefix: &str) -> Option<Document<'a>> {
        let rest = path.strip_prefix(WELL_KNOWN_PATH)?;
        let after_prefix = rest
            .strip_prefix(prefix)
            .filter(|r| !prefix.is_empty() && (r.is_empty() || r.starts_with('/')));
        after_prefix.into_iter().chain([rest]).find_map(|r| {
            if r.is_empty() {
                return Some(Document {
                    path: "",
                    rest: &self.root,
                });
            }
            self.routes
                .iter()
                .find(|(p, _)| p == r)
                .map(|(p, rest)| Document { path: p, rest })
        })
    }

    /// The answer to a request for `doc`: the document for `GET` and `HEAD` (headers only),
    /// 405 for any other method.
    pub(crate) fn response(
        &self,
        method: &Method,
        base: &HtuBase,
        doc: &Document<'_>,
    ) -> Response<Bytes> {
        let allowed = *method == Method::GET || *method == Method::HEAD;
        let mut builder = Response::builder();
        if !allowed {
            builder = builder
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .header(header::ALLOW, "GET, HEAD");
            return builder.body(Bytes::new()).unwrap_or_default();
        }
        let body = Bytes::from(format!(
            "{{\"resource\":{}{}",
            json(&Value::from(resource(base, doc.path))),
            doc.rest
        ));
        builder = builder
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, self.cache_control.clone())
            .header(header::CONTENT_LENGTH, body.len());
        let body = if *method == Method::HEAD {
            Bytes::new()
        } else {
            body
        };
        builder.body(body).unwrap_or_default()
    }
}

/// The resource identifier: the public base, without a trailing `/`, followed by `path`
/// (a route's own resource path, or empty).
fn resource(base: &HtuBase, path: &str) -> String {
    format!("{}{}{path}", base.origin(), base.path_prefix())
}

/// The URL of the metadata document for the resource `path` under `base` (RFC 9728
/// §3.1: the well-known path goes between the origin and the resource's path).
pub(crate) fn metadata_url(base: &HtuBase, path: &str) -> String {
    format!(
        "{}{WELL_KNOWN_PATH}{}{path}",
        base.origin(),
        base.path_prefix()
    )
}
