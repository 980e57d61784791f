//! The `application/x-www-form-urlencoded` bodies of the token, introspection and
//! revocation endpoints, parsed strictly (RFC 6749 §3.1, §3.2).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use axum::http::{HeaderMap, header};

use crate::error::OAuthError;

/// A parsed `application/x-www-form-urlencoded` body.
#[derive(Debug, Default)]
pub(crate) struct Form {
    single: BTreeMap<String, String>,
    multi: BTreeMap<String, Vec<String>>,
}

/// Parameters that may repeat (RFC 8707 `resource`, RFC 8693 `audience`).
const REPEATABLE: [&str; 2] = ["resource", "audience"];

impl Form {
    /// Parses the body; a non-repeatable parameter given twice is refused (RFC 6749 §3.2).
    pub(crate) fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, OAuthError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(OAuthError::invalid_request(
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let mut form = Self::default();
        for (k, v) in form_urlencoded::parse(body) {
            let k = k.into_owned();
            let v = v.into_owned();
            if REPEATABLE.contains(&k.as_str()) {
                form.multi.entry(k).or_default().push(v);
                continue;
            }
            match form.single.entry(k) {
                Entry::Occupied(e) => {
                    return Err(OAuthError::invalid_request(format!(
                        "the parameter {} is repeated",
                        e.key()
                    )));
                }
                Entry::Vacant(e) => {
                    e.insert(v);
                }
            }
        }
        Ok(form)
    }

    /// A parameter, treating an empty value as absent (RFC 6749 §3.1).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.single
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A required parameter.
    pub(crate) fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("the parameter {name} is missing")))
    }

    /// Every value of a repeatable parameter.
    pub(crate) fn all(&self, name: &str) -> &[String] {
        self.multi.get(name).map_or(&[], Vec::as_slice)
    }
}
