//! Claim rules: where a rule looks for a claim (a top-level name, or an RFC 6901
//! pointer into nested claims) and how its pattern matches (`*` matches any run of
//! characters; an array claim matches when one of its strings does).

use serde_json::{Map, Value};

/// A validated rule: claim paths parsed.
#[derive(Debug)]
pub(super) struct Rule {
    pub(super) claims: Vec<(ClaimPath, String)>,
    pub(super) workload: String,
    pub(super) scopes: Vec<String>,
    pub(super) audiences: Vec<String>,
    pub(super) clients: Vec<String>,
    pub(super) outlive_subject: bool,
}

impl Rule {
    /// Every claim pattern of the rule matches `claims`.
    pub(super) fn matches(&self, claims: &Map<String, Value>) -> bool {
        self.claims.iter().all(|(path, pattern)| {
            path.lookup(claims)
                .is_some_and(|v| value_matches(v, pattern))
        })
    }
}

/// Where a rule looks for a claim.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ClaimPath {
    /// A top-level claim, by its exact name (dots are part of the name).
    Name(String),
    /// An RFC 6901 pointer, as unescaped reference tokens.
    Pointer(Vec<String>),
}

impl ClaimPath {
    pub(super) fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("has an empty claim name".to_owned());
        }
        let Some(pointer) = name.strip_prefix('/') else {
            return Ok(Self::Name(name.to_owned()));
        };
        let mut tokens = Vec::new();
        for raw in pointer.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                match c {
                    '~' => match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => {
                            return Err(format!(
                                "claim {name:?} is not a JSON pointer: `~` must be followed by 0 or 1 (RFC 6901)"
                            ));
                        }
                    },
                    c => token.push(c),
                }
            }
            tokens.push(token);
        }
        Ok(Self::Pointer(tokens))
    }

    fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        match self {
            Self::Name(name) => claims.get(name),
            Self::Pointer(tokens) => {
                let (first, rest) = tokens.split_first()?;
                let mut current = claims.get(first)?;
                for token in rest {
                    current = match current {
                        Value::Object(o) => o.get(token)?,
                        Value::Array(a) => a.get(array_index(token)?)?,
                        _ => return None,
                    };
                }
                Some(current)
            }
        }
    }
}

/// An RFC 6901 array index: `0` or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let canonical = token == "0"
        || (!token.starts_with('0')
            && !token.is_empty()
            && token.bytes().all(|b| b.is_ascii_digit()));
    if canonical { token.parse().ok() } else { None }
}

/// `*` matches any run of characters (also none); everything else is literal.
fn glob_match(pattern: &str, text: &str) -> bool {
    let segments: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = segments.as_slice() else {
        return pattern == text;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    // Leftmost matches of the middle segments are never worse than later ones, so
    // this greedy scan is exact (and linear-ish: no backtracking).
    for segment in middle {
        match rest.split_once(segment) {
            Some((_, after)) => rest = after,
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// A string claim matches `pattern`; an array claim when one of its strings does.
fn value_matches(value: &Value, pattern: &str) -> bool {
    match value {
        Value::String(s) => glob_match(pattern, s),
        Value::Array(items) => items
            .iter()
            .any(|v| v.as_str().is_some_and(|s| glob_match(pattern, s))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn glob_and_pointer_semantics() {
        assert!(glob_match("abc", "abc"));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match("refs/tags/v*", "refs/tags/v1.2"));
        assert!(glob_match("refs/tags/v*", "refs/tags/v"));
        assert!(!glob_match("refs/tags/v*", "refs/heads/v1"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("*/main", "org/repo/main"));
        assert!(glob_match("a**", "a"));
        assert!(glob_match("é*ü", "éaü"));
        let claims = json!({"a/b": {"~x": ["p", "q"]}, "k.io": "v"});
        let claims = claims.as_object().unwrap();
        let at = |p: &str| ClaimPath::parse(p).unwrap().lookup(claims).cloned();
        assert_eq!(at("/a~1b/~0x/1"), Some(json!("q")));
        assert_eq!(at("/a~1b/~0x/01"), None);
        assert_eq!(at("/a~1b/~0x/2"), None);
        assert_eq!(at("k.io"), Some(json!("v")));
        assert_eq!(at("/k.io/x"), None);
        assert!(ClaimPath::parse("/a~2").is_err());
        assert!(ClaimPath::parse("").is_err());
        assert!(!value_matches(&json!(1), "1"));
        assert!(!value_matches(&json!(true), "true"));
        assert!(!value_matches(&json!([1, "x"]), "1"));
        assert!(value_matches(&json!([1, "x"]), "x"));
    }
}
