//! `dpop curl`'s flags: curl's letters and meanings, grouped under curl's manual
//! headings, each also read from `DPOP_CURL_<FLAG>` (added by [`crate::env`], which keeps
//! the values of the token, headers and bodies out of `--help`).

use std::path::PathBuf;

use clap::Args;

use super::IssuerTokenArgs;

const DPOP: &str = "DPoP and the access token";
const ISSUER: &str = "Token from an issuer";
const HTTP: &str = "HTTP";
const POST: &str = "Post data";
const OUTPUT: &str = "Output";
const VERBOSE: &str = "Verbose";
const CONNECTION: &str = "Connection";
const TLS: &str = "TLS";
const AUTH: &str = "Authentication";

/// Like curl: the same letters and meanings, plus the key and the token. Options of
/// curl that would weaken DPoP (`-k`) or bypass it (`-u`) are refused with the reason.
// The field docs are also the `--help` text, where link markup would show as-is.
#[allow(rustdoc::bare_urls)]
#[derive(Debug, Args)]
pub(crate) struct CurlArgs {
    /// The URL; https:// is assumed when it has no scheme
    pub(crate) url: String,

    /// The DPoP key: a file (PKCS#8 PEM or private JWK, mode 0600) or a key in a device
    /// (pkcs11:..., tpm2:..., awskms:...; see docs/keys.md)
    #[arg(long, value_name = "KEY", help_heading = DPOP)]
    pub(crate) key: PathBuf,
    /// The access token
    #[arg(long, value_name = "T", conflicts_with_all = ["token_file", "issuer"], help_heading = DPOP)]
    pub(crate) token: Option<String>,
    /// A file holding the access token
    #[arg(long, value_name = "F", conflicts_with = "issuer", help_heading = DPOP)]
    pub(crate) token_file: Option<PathBuf>,
    #[command(flatten, next_help_heading = ISSUER)]
    pub(crate) issuer: IssuerTokenArgs,

    /// The method (default GET; POST with data, HEAD with -I)
    #[arg(short = 'X', long = "request", value_name = "METHOD", help_heading = HTTP)]
    pub(crate) method: Option<String>,
    /// A request header, 'Name: value' (repeatable)
    #[arg(short = 'H', long = "header", value_name = "HEADER", help_heading = HTTP)]
    pub(crate) headers: Vec<String>,
    /// The User-Agent header [default: dpop/VERSION]
    #[arg(short = 'A', long = "user-agent", value_name = "NAME", help_heading = HTTP)]
    pub(crate) user_agent: Option<String>,
    /// Only the status line and headers (a HEAD request)
    #[arg(short = 'I', long = "head", help_heading = HTTP)]
    pub(crate) head: bool,
    /// Follow redirects; each hop gets a fresh proof for its own URL, and a hop to
    /// another origin gets neither the token nor a proof
    #[arg(short = 'L', long = "location", help_heading = HTTP)]
    pub(crate) location: bool,
    /// Like -L, but send the token and a proof to other origins too (never from https to
    /// plain http)
    #[arg(long = "location-trusted", help_heading = HTTP)]
    pub(crate) location_trusted: bool,
    /// Redirects followed at most (-1: no limit)
    #[arg(long = "max-redirs", value_name = "NUM", default_value_t = 50, allow_negative_numbers = true, help_heading = HTTP)]
    pub(crate) max_redirs: i64,
    /// Exit 22 on a status of 400 or more, without printing the body
    #[arg(short = 'f', long, conflicts_with = "fail_with_body", help_heading = HTTP)]
    pub(crate) fail: bool,
    /// Exit 22 on a status of 400 or more, after printing the body
    #[arg(long = "fail-with-body", help_heading = HTTP)]
    pub(crate) fail_with_body: bool,

    /// Request body (repeatable, joined with &); @FILE reads a file without its line
    /// breaks, @- standard input. POST and a form content type unless told otherwise
    #[arg(short = 'd', long = "data", value_name = "DATA", help_heading = POST)]
    pub(crate) data: Vec<String>,
    /// Like -d, but @FILE is sent byte for byte
    #[arg(long = "data-binary", value_name = "DATA", help_heading = POST)]
    pub(crate) data_binary: Vec<String>,
    /// Like -d, URL-encoding the content: 'content', '=content', 'name=content',
    /// '@file' or 'name@file'
    #[arg(long = "data-urlencode", value_name = "DATA", help_heading = POST)]
    pub(crate) data_urlencode: Vec<String>,
    /// A JSON body (@FILE, @- allowed): POST with Content-Type and Accept
    /// application/json
    #[arg(long, value_name = "DATA", conflicts_with_all = ["data", "data_binary", "data_urlencode"], help_heading = POST)]
    pub(crate) json: Vec<String>,
    /// A multipart/form-data part: 'name=value', 'name=@file' (an upload), 'name=<file'
    /// (the file's content as the value), each with optional ';type=...' (repeatable)
    #[arg(short = 'F', long = "form", value_name = "NAME=CONTENT", conflicts_with_all = ["data", "data_binary", "data_urlencode", "json"], help_heading = POST)]
    pub(crate) form: Vec<String>,

    /// Write the body to FILE instead of standard output (- for standard output)
    #[arg(short = 'o', long = "output", value_name = "FILE", help_heading = OUTPUT)]
    pub(crate) output: Option<PathBuf>,
    /// Write the body to a file named like the URL's last path segment
    #[arg(short = 'O', long = "remote-name", conflicts_with = "output", help_heading = OUTPUT)]
    pub(crate) remote_name: bool,
    /// Print the status line and response headers before the body
    #[arg(short = 'i', long = "include", help_heading = OUTPUT)]
    pub(crate) include: bool,
    /// After the transfer, print FORMAT: %{http_code}, %{time_total}, %{url_effective},
    /// %{num_redirects}, %{size_download}, %{content_type}, %{method}, \n, %%
    #[arg(short = 'w', long = "write-out", value_name = "FORMAT", help_heading = OUTPUT)]
    pub(crate) write_out: Option<String>,

    /// Show requests sent (token and proof shortened, the proof's claims decoded),
    /// responses, nonce retries, clock corrections and token requests on stderr
    #[arg(short = 'v', long, help_heading = VERBOSE)]
    pub(crate) verbose: bool,
    /// No error messages and no line about a failed status (see -S)
    #[arg(short = 's', long, help_heading = VERBOSE)]
    pub(crate) silent: bool,
    /// With -s, still show error messages
    #[arg(short = 'S', long = "show-error", help_heading = VERBOSE)]
    pub(crate) show_error: bool,

    /// Seconds allowed to connect (fractions allowed)
    #[arg(long = "connect-timeout", value_name = "SECONDS", default_value = "30", help_heading = CONNECTION)]
    pub(crate) connect_timeout: String,
    /// Seconds the whole transfer may take, redirects and retries included (fractions
    /// allowed; 0: no limit)
    #[arg(short = 'm', long = "max-time", value_name = "SECONDS", default_value = "300", help_heading = CONNECTION)]
    pub(crate) max_time: String,
    /// Retry a failed connection up to NUM times (idempotent methods only), each time
    /// with a fresh proof
    #[arg(long, value_name = "NUM", default_value_t = 0, help_heading = CONNECTION)]
    pub(crate) retry: u32,
    /// Seconds between retries [default: 1, doubling each time]
    #[arg(long = "retry-delay", value_name = "SECONDS", help_heading = CONNECTION)]
    pub(crate) retry_delay: Option<u64>,

    /// Trust only the CA certificates in FILE (PEM) for the server's certificate
    #[arg(long, value_name = "FILE", help_heading = TLS)]
    pub(crate) cacert: Option<PathBuf>,
    /// Refused: a token and proof sent over an unverified connection belong to whoever
    /// is in the middle; use --cacert for a private CA
    #[arg(short = 'k', long, help_heading = TLS)]
    pub(crate) insecure: bool,

    /// Refused: credentials come from the token flags (--token, --token-file, --issuer)
    #[arg(short = 'u', long, value_name = "USER:PASSWORD", help_heading = AUTH)]
    pub(crate) user: Option<String>,
}
