//! The issuer's configuration for tests, built field by field and rendered as the TOML
//! `dpop issuer` reads, so that tests do not each keep a hand-written copy of it.

use std::fmt::Write as _;

/// A `dpop-issuer` configuration file: top-level settings, `[tokens]`, `[dpop]` and the
/// clients, then any further TOML (`[[trust]]` tables, more clients).
///
/// ```
/// use dpop_test::{ClientFixture, IssuerFixture};
///
/// let text = IssuerFixture::new("http://127.0.0.1:8443")
///     .database("sqlite://issuer.db?mode=rwc")
///     .nonce(true)
///     .client(
///         ClientFixture::confidential("svc", "$argon2id$...")
///             .grants(["client_credentials"])
///             .scopes(["read"])
///             .audiences(["https://api.example.com"]),
///     )
///     .render();
/// assert!(text.contains("[[clients]]\nid = \"svc\"\n"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct IssuerFixture {
    issuer: String,
    data_dir: Option<String>,
    database: Option<String>,
    top: Vec<String>,
    tokens: Vec<String>,
    nonce: Option<bool>,
    dpop: Vec<String>,
    clients: Vec<ClientFixture>,
    extra: Vec<String>,
}

impl IssuerFixture {
    /// A configuration for the issuer identifier `issuer`.
    #[must_use]
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            ..Self::default()
        }
    }

    /// `data_dir`.
    #[must_use]
    pub fn data_dir(mut self, dir: impl std::fmt::Display) -> Self {
        self.data_dir = Some(dir.to_string());
        self
    }

    /// `database` (a `sqlite://` or `postgres://` URL).
    #[must_use]
    pub fn database(mut self, url: impl Into<String>) -> Self {
        self.database = Some(url.into());
        self
    }

    /// A top-level line, as written (e.g. `admin_listen = "127.0.0.1:0"`).
    #[must_use]
    pub fn top(mut self, line: impl Into<String>) -> Self {
        self.top.push(line.into());
        self
    }

    /// A line of the `[tokens]` table, as written.
    #[must_use]
    pub fn tokens(mut self, line: impl Into<String>) -> Self {
        self.tokens.push(line.into());
        self
    }

    /// `[dpop] nonce`.
    #[must_use]
    pub fn nonce(mut self, nonce: bool) -> Self {
        self.nonce = Some(nonce);
        self
    }

    /// Another line of the `[dpop]` table, as written (e.g. `algorithms = [...]`); the
    /// table is written when [`IssuerFixture::nonce`] was set.
    #[must_use]
    pub fn dpop(mut self, line: impl Into<String>) -> Self {
        self.dpop.push(line.into());
        self
    }

    /// One more `[[clients]]` table.
    #[must_use]
    pub fn client(mut self, client: ClientFixture) -> Self {
        self.clients.push(client);
        self
    }

    /// TOML appended after the clients, as written.
    #[must_use]
    pub fn extra(mut self, toml: impl Into<String>) -> Self {
        self.extra.push(toml.into());
        self
    }

    /// The configuration file's text.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = format!("issuer = {}\n", quoted(&self.issuer));
        if let Some(dir) = &self.data_dir {
            let _ = writeln!(out, "data_dir = {}", quoted(dir));
        }
        if let Some(url) = &self.database {
            let _ = writeln!(out, "database = {}", quoted(url));
        }
        for line in &self.top {
            let _ = writeln!(out, "{line}");
        }
        if !self.tokens.is_empty() {
            out.push_str("\n[tokens]\n");
            for line in &self.tokens {
                let _ = writeln!(out, "{line}");
            }
        }
        if let Some(nonce) = self.nonce {
            let _ = write!(out, "\n[dpop]\nnonce = {nonce}\n");
            for line in &self.dpop {
                let _ = writeln!(out, "{line}");
            }
        }
        for client in &self.clients {
            out.push('\n');
            client.render_into(&mut out);
        }
        for extra in &self.extra {
            out.push('\n');
            out.push_str(extra);
            out.push('\n');
        }
        out
    }
}

/// How a client authenticates.
#[derive(Clone, Debug)]
enum Credential {
    Secret(String),
    Jwks(String),
    Public,
}

/// One `[[clients]]` table.
#[derive(Clone, Debug)]
pub struct ClientFixture {
    id: String,
    credential: Credential,
    grants: Vec<String>,
    scopes: Option<Vec<String>>,
    default_scopes: Option<Vec<String>>,
    audiences: Option<Vec<String>>,
    default_audiences: Option<Vec<String>>,
    may_exchange_for: Option<Vec<String>>,
    lines: Vec<String>,
}

fn strings<S: Into<String>>(items: impl IntoIterator<Item = S>) -> Vec<String> {
    items.into_iter().map(Into::into).collect()
}

impl ClientFixture {
    fn with(id: impl Into<String>, credential: Credential) -> Self {
        Self {
            id: id.into(),
            credential,
            grants: Vec::new(),
            scopes: None,
            default_scopes: None,
            audiences: None,
            default_audiences: None,
            may_exchange_for: None,
            lines: Vec::new(),
        }
    }

    /// A client authenticating with a secret (`secret`: its PHC hash).
    #[must_use]
    pub fn confidential(id: impl Into<String>, secret_hash: impl Into<String>) -> Self {
        Self::with(id, Credential::Secret(secret_hash.into()))
    }

    /// A client authenticating with `private_key_jwt`, its keys the JWK set (or JWK)
    /// `jwks` as JSON text.
    #[must_use]
    pub fn keyed(id: impl Into<String>, jwks: impl Into<String>) -> Self {
        Self::with(id, Credential::Jwks(jwks.into()))
    }

    /// A public client (no credentials).
    #[must_use]
    pub fn public(id: impl Into<String>) -> Self {
        Self::with(id, Credential::Public)
    }

    /// `grants` (written even when empty).
    #[must_use]
    pub fn grants<S: Into<String>>(mut self, grants: impl IntoIterator<Item = S>) -> Self {
        self.grants = strings(grants);
        self
    }

    /// `scopes`.
    #[must_use]
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = Some(strings(scopes));
        self
    }

    /// `default_scopes`.
    #[must_use]
    pub fn default_scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.default_scopes = Some(strings(scopes));
        self
    }

    /// `audiences`.
    #[must_use]
    pub fn audiences<S: Into<String>>(mut self, audiences: impl IntoIterator<Item = S>) -> Self {
        self.audiences = Some(strings(audiences));
        self
    }

    /// `default_audiences`.
    #[must_use]
    pub fn default_audiences<S: Into<String>>(
        mut self,
        audiences: impl IntoIterator<Item = S>,
    ) -> Self {
        self.default_audiences = Some(strings(audiences));
        self
    }

    /// `may_exchange_for`.
    #[must_use]
    pub fn may_exchange_for<S: Into<String>>(mut self, ids: impl IntoIterator<Item = S>) -> Self {
        self.may_exchange_for = Some(strings(ids));
        self
    }

    /// Any other line of the table, as written (e.g. `dpop = "optional"`,
    /// `access_token_lifetime_secs = 2`).
    #[must_use]
    pub fn line(mut self, line: impl Into<String>) -> Self {
        self.lines.push(line.into());
        self
    }

    /// The `[[clients]]` table's text, for a configuration assembled by hand.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        let _ = writeln!(out, "[[clients]]\nid = {}", quoted(&self.id));
        match &self.credential {
            Credential::Secret(hash) => {
                let _ = writeln!(out, "secret = {}", quoted(hash));
            }
            Credential::Jwks(jwks) => {
                let _ = writeln!(out, "jwks = {}", quoted(jwks));
            }
            Credential::Public => {}
        }
        let _ = writeln!(out, "grants = {}", list(&self.grants));
        for (key, value) in [
            ("scopes", &self.scopes),
            ("default_scopes", &self.default_scopes),
            ("audiences", &self.audiences),
            ("default_audiences", &self.default_audiences),
            ("may_exchange_for", &self.may_exchange_for),
        ] {
            if let Some(items) = value {
                let _ = writeln!(out, "{key} = {}", list(items));
            }
        }
        for line in &self.lines {
            let _ = writeln!(out, "{line}");
        }
    }
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_issuers_toml() {
        let text = IssuerFixture::new("http://127.0.0.1:1")
            .data_dir("/tmp/d")
            .database("sqlite:///tmp/d/i.db?mode=rwc")
            .top("log_json = false")
            .tokens("access_token_lifetime_secs = 60")
            .nonce(true)
            .client(
                ClientFixture::keyed("k", r#"{"kty":"EC","x":"a\b"}"#)
                    .grants(["client_credentials"])
                    .scopes(["read"])
                    .line("dpop = \"optional\""),
            )
            .client(ClientFixture::public("rs").grants(Vec::<String>::new()))
            .extra("[[trust]]\nname = \"ci\"")
            .render();
        assert_eq!(
            text,
            concat!(
                "issuer = \"http://127.0.0.1:1\"\n",
                "data_dir = \"/tmp/d\"\n",
                "database = \"sqlite:///tmp/d/i.db?mode=rwc\"\n",
                "log_json = false\n",
                "\n[tokens]\naccess_token_lifetime_secs = 60\n",
                "\n[dpop]\nnonce = true\n",
                "\n[[clients]]\nid = \"k\"\n",
                "jwks = \"{\\\"kty\\\":\\\"EC\\\",\\\"x\\\":\\\"a\\\\b\\\"}\"\n",
                "grants = [\"client_credentials\"]\nscopes = [\"read\"]\ndpop = \"optional\"\n",
                "\n[[clients]]\nid = \"rs\"\ngrants = []\n",
                "\n[[trust]]\nname = \"ci\"\n",
            )
        );
    }
}
