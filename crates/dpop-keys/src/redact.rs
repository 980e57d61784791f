//! Secrets in key references (a PIN, a TPM authorisation value) shown as `***`.

/// Attribute names whose values are secrets, shown as `***`.
const SECRET_ATTRIBUTES: [&str; 2] = ["pin-value", "auth-value"];

/// `text` with the value of every secret attribute replaced by `***`.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find([';', '?', '&']).map_or(rest.len(), |i| i + 1);
        let (part, tail) = rest.split_at(end);
        let secret = SECRET_ATTRIBUTES.iter().find(|name| {
            part.strip_prefix(**name)
                .is_some_and(|after| after.starts_with('='))
        });
        match secret {
            Some(name) => {
                out.push_str(name);
                out.push_str("=***");
                if let Some(sep) = part.chars().last().filter(|c| matches!(c, ';' | '?' | '&')) {
                    out.push(sep);
                }
            }
            None => out.push_str(part),
        }
        rest = tail;
    }
    out
}
