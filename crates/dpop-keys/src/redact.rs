//! Secrets in key references (a PIN, a TPM authorisation value) shown as `***`.
//!
//! Redaction errs on the side of hiding: it runs on text that may not parse (for the
//! message saying why), so it cannot rely on the parser having understood it. An
//! attribute is secret when its name, percent-decoded and in any case, starts with `pin`
//! or `auth` (so `PIN-VALUE`, `pin%2Dvalue` and a misspelt `pin-valeu` are all hidden),
//! except the two that name where a secret comes from (`pin-source`, `auth-source`).
//! A secret value is hidden up to where the parser ends it (`&` after the `?`, `;` or
//! `?` before it), even when a `;` or `?` inside it would end it for a looser reader.

/// Attribute names that start like a secret's but name where a secret comes from.
const SOURCES: [&str; 2] = ["pinsource", "authsource"];

/// Whether the attribute `name` (as written) holds a secret.
fn is_secret(name: &str) -> bool {
    let bytes = name.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        if let Some(byte) = escaped {
            decoded.push(byte);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let normal: String = String::from_utf8_lossy(&decoded)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (normal.starts_with("pin") || normal.starts_with("auth")) && !SOURCES.contains(&&*normal)
}

/// `text` (a whole reference) with the value of every secret attribute replaced by
/// `***`.
pub(crate) fn redact(text: &str) -> String {
    // The scheme (`pkcs11:`) is not part of the first attribute's name.
    let (scheme, rest) = text.split_at(text.find(':').map_or(0, |i| i + 1));
    let mut out = String::from(scheme);
    out.push_str(&redact_attributes(rest));
    out
}

/// `attributes` (what follows the scheme, or a single attribute) as [`redact`] shows it.
pub(crate) fn redact_attributes(attributes: &str) -> String {
    let mut rest = attributes;
    let mut out = String::with_capacity(rest.len());
    let mut in_query = false;
    while !rest.is_empty() {
        let end = rest.find([';', '?', '&']).unwrap_or(rest.len());
        let token = &rest[..end];
        match token.split_once('=') {
            Some((name, _)) if is_secret(name) => {
                // Where the parser ends this value: `&` in the query, `;` or `?` before.
                let value_end = if in_query {
                    rest.find('&')
                } else {
                    rest.find([';', '?'])
                }
                .unwrap_or(rest.len());
                out.push_str(name);
                out.push_str("=***");
                rest = &rest[value_end..];
            }
            // A secret that lost its `=` (`pin-value1234`) is still a secret.
            None if is_secret(token) => {
                out.push_str("***");
                rest = &rest[end..];
            }
            _ => {
                out.push_str(token);
                rest = &rest[end..];
            }
        }
        if let Some(sep) = rest.chars().next() {
            in_query |= sep == '?';
            out.push(sep);
            rest = &rest[sep.len_utf8()..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn every_spelling_of_a_secret_attribute_is_hidden_to_the_end_of_its_value() {
        for (text, shown) in [
            (
                "pkcs11:pin-value=S1?module-path=/m",
                "pkcs11:pin-value=***?module-path=/m",
            ),
            ("tpm2:auth-value=S1?tcti=x", "tpm2:auth-value=***?tcti=x"),
            (
                "pkcs11:o=k?m=/m&PIN-VALUE=S1",
                "pkcs11:o=k?m=/m&PIN-VALUE=***",
            ),
            (
                "pkcs11:o=k?m=/m&pin%2Dvalue=S1",
                "pkcs11:o=k?m=/m&pin%2Dvalue=***",
            ),
            (
                "pkcs11:o=k?m=/m&pin-valeu=S1",
                "pkcs11:o=k?m=/m&pin-valeu=***",
            ),
            (
                "pkcs11:o=k?pin-value=S;1&m=/m",
                "pkcs11:o=k?pin-value=***&m=/m",
            ),
            (
                "pkcs11:o=k?pin-value=S?1&m=/m",
                "pkcs11:o=k?pin-value=***&m=/m",
            ),
            (
                "pkcs11:o=k?m=/m?pin-value=S1",
                "pkcs11:o=k?m=/m?pin-value=***",
            ),
            (
                "pkcs11:o=k;;pin-value=S1;id=%01",
                "pkcs11:o=k;;pin-value=***;id=%01",
            ),
            ("pkcs11:o=k?m=/m&pin-valueS1", "pkcs11:o=k?m=/m&***"),
            ("pkcs11:o=k?m=/m&pin-value:S1", "pkcs11:o=k?m=/m&***"),
            // Where a secret comes from is not itself secret.
            (
                "pkcs11:o=k?pin-source=file:/p",
                "pkcs11:o=k?pin-source=file:/p",
            ),
            ("tpm2:f=k?AUTH-SOURCE=env:A", "tpm2:f=k?AUTH-SOURCE=env:A"),
        ] {
            assert_eq!(redact(text), shown, "{text}");
        }
    }
}
