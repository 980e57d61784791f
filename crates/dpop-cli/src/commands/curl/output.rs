//! Where the response goes: standard output or a file (-o, -O), with the head (-i, -I),
//! then -w's summary. A reader that goes away (`| head`) ends the command quietly.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::exit::{self, Failure};
use crate::cli::CurlArgs;
use crate::error::CliError;

/// Where the body goes.
#[derive(Debug)]
pub(super) enum Target {
    Stdout,
    File(PathBuf),
}

/// -o FILE (- is standard output), -O (the URL's last path segment), or standard output.
pub(super) fn target(args: &CurlArgs, url: &reqwest::Url) -> Result<Target, CliError> {
    if let Some(path) = &args.output {
        return Ok(if path.as_os_str() == "-" {
            Target::Stdout
        } else {
            Target::File(path.clone())
        });
    }
    if !args.remote_name {
        return Ok(Target::Stdout);
    }
    // A path segment holds no '/', so the file lands in the current directory; "." and
    // ".." (and encodings of '/', which curl does not decode either) are not names.
    let name = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or_default();
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
        return Err(CliError::usage(format!(
            "-O: the URL {url} has no file name at the end of its path; use -o FILE"
        )));
    }
    Ok(Target::File(PathBuf::from(name)))
}

/// The body's destination, opened when the first bytes are to be written (so a refused
/// `--fail` request creates no file).
#[derive(Debug)]
pub(super) struct Sink<'a, W: Write> {
    stdout: &'a mut W,
    target: Target,
    file: Option<File>,
    /// Bytes of body written (for `%{size_download}`).
    pub(super) body_bytes: u64,
}

/// What a write ended in: done, or the reader of standard output left.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Written {
    Ok,
    ReaderGone,
}

impl<'a, W: Write> Sink<'a, W> {
    pub(super) fn new(stdout: &'a mut W, target: Target) -> Self {
        Self {
            stdout,
            target,
            file: None,
            body_bytes: 0,
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<Written, Failure> {
        match &self.target {
            Target::Stdout => stdout_write(self.stdout, bytes),
            Target::File(path) => {
                let file = match &mut self.file {
                    Some(f) => f,
                    None => self.file.insert(File::create(path).map_err(|e| {
                        Failure::new(
                            exit::WRITE,
                            format!("cannot create {}: {e}", path.display()),
                        )
                    })?),
                };
                file.write_all(bytes).map_err(|e| {
                    Failure::new(exit::WRITE, format!("cannot write {}: {e}", path.display()))
                })?;
                Ok(Written::Ok)
            }
        }
    }

    /// The status line and headers, as -i and -I print them.
    pub(super) fn head(&mut self, response: &reqwest::Response) -> Result<Written, Failure> {
        let status = response.status();
        let mut head = format!(
            "{:?} {} {}\r\n",
            response.version(),
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        for (k, v) in response.headers() {
            head.push_str(&format!(
                "{k}: {}\r\n",
                String::from_utf8_lossy(v.as_bytes())
            ));
        }
        head.push_str("\r\n");
        self.write_all(head.as_bytes())
    }

    pub(super) fn body(&mut self, bytes: &[u8]) -> Result<Written, Failure> {
        self.body_bytes += bytes.len() as u64;
        self.write_all(bytes)
    }

    pub(super) fn finish(&mut self) -> Result<Written, Failure> {
        if let Some(f) = &mut self.file {
            f.flush()
                .map_err(|e| Failure::new(exit::WRITE, e.to_string()))?;
        }
        match self.stdout.flush() {
            Ok(()) => Ok(Written::Ok),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Written::ReaderGone),
            Err(e) => Err(Failure::new(
                exit::WRITE,
                format!("cannot write to standard output: {e}"),
            )),
        }
    }

    /// -w's text, always on standard output (as curl).
    pub(super) fn write_out(&mut self, text: &str) -> Result<Written, Failure> {
        stdout_write(self.stdout, text.as_bytes())
    }
}

/// Standard output closed before everything was written (a broken pipe): curl's
/// write error.
pub(super) fn reader_gone() -> Failure {
    Failure::new(
        exit::WRITE,
        "standard output was closed before everything was written (broken pipe)",
    )
}

fn stdout_write(out: &mut impl Write, bytes: &[u8]) -> Result<Written, Failure> {
    match out.write_all(bytes) {
        Ok(()) => Ok(Written::Ok),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Written::ReaderGone),
        Err(e) => Err(Failure::new(
            exit::WRITE,
            format!("cannot write to standard output: {e}"),
        )),
    }
}

/// What -w can name.
#[derive(Debug)]
pub(super) struct Summary<'a> {
    pub(super) status: u16,
    pub(super) url: &'a reqwest::Url,
    pub(super) method: &'a str,
    pub(super) elapsed: Duration,
    pub(super) redirects: u32,
    pub(super) size: u64,
    pub(super) content_type: Option<&'a str>,
}

/// curl's -w format: `%{name}` variables, `%%`, and `\n`, `\r`, `\t`. An unknown
/// variable is a usage error (curl prints a warning and nothing; a typo in a script
/// should not pass silently).
pub(super) fn write_out(format: &str, s: &Summary<'_>) -> Result<String, CliError> {
    let mut out = String::new();
    let mut rest = format;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("%{") {
            let (name, tail) = after
                .split_once('}')
                .ok_or_else(|| CliError::usage(format!("-w: unterminated %{{ in {format:?}")))?;
            match name {
                "http_code" | "response_code" => out.push_str(&format!("{:03}", s.status)),
                "time_total" => out.push_str(&format!("{:.6}", s.elapsed.as_secs_f64())),
                "url_effective" | "url" => out.push_str(s.url.as_str()),
                "num_redirects" => out.push_str(&s.redirects.to_string()),
                "size_download" => out.push_str(&s.size.to_string()),
                "content_type" => out.push_str(s.content_type.unwrap_or_default()),
                "method" => out.push_str(s.method),
                other => {
                    return Err(CliError::usage(format!(
                        "-w: unknown variable %{{{other}}}; known: http_code, response_code, \
                         time_total, url_effective, num_redirects, size_download, \
                         content_type, method"
                    )));
                }
            }
            rest = tail;
        } else if let Some(tail) = rest.strip_prefix("%%") {
            out.push('%');
            rest = tail;
        } else if let Some(tail) = rest.strip_prefix('\\')
            && let Some(e @ ('n' | 'r' | 't')) = tail.chars().next()
        {
            out.push(match e {
                'n' => '\n',
                'r' => '\r',
                _ => '\t',
            });
            rest = &tail[1..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_out_variables() {
        let url = reqwest::Url::parse("https://a.example/x").unwrap();
        let s = Summary {
            status: 201,
            url: &url,
            method: "POST",
            elapsed: Duration::from_millis(1500),
            redirects: 2,
            size: 42,
            content_type: Some("application/json"),
        };
        assert_eq!(
            write_out("%{http_code} %{time_total} %{url_effective}\\n", &s).unwrap(),
            "201 1.500000 https://a.example/x\n"
        );
        assert_eq!(
            write_out(
                "%{num_redirects}/%{size_download}/%{content_type}/%{method} 100%%",
                &s
            )
            .unwrap(),
            "2/42/application/json/POST 100%"
        );
        assert!(write_out("%{nope}", &s).is_err());
        assert!(write_out("%{http_code", &s).is_err());
    }
}
