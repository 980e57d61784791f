//! AWS Signature Version 4 for the requests this backend sends.
//!
//! Written here rather than taken from the `aws-sigv4` crate: the KMS requests are all
//! `POST /` with a JSON body and five headers, so the whole algorithm is a canonical
//! request, a string to sign and four HMACs (about a hundred lines on aws-lc-rs, which
//! the crate already uses), where `aws-sigv4` brings the AWS SDK's runtime types and
//! their dependency tree. The unit tests below check it against AWS's published
//! examples.

use core::fmt::Write as _;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::hmac;
use zeroize::Zeroizing;

/// The request time as SigV4 writes it: `YYYYMMDD'T'HHMMSS'Z'` and `YYYYMMDD`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct AmzDate {
    pub(super) stamp: String,
    pub(super) day: String,
}

impl AmzDate {
    /// The UTC calendar time of `secs` seconds after the Unix epoch.
    pub(super) fn from_unix(secs: u64) -> Self {
        let t = dpop_core::UnixTime::from_secs(secs).to_utc();
        let day = format!("{:04}{:02}{:02}", t.year, t.month, t.day);
        let stamp = format!("{day}T{:02}{:02}{:02}Z", t.hour, t.minute, t.second);
        Self { stamp, day }
    }
}

/// What identifies the signer: the access key and its secret.
pub(super) struct Key<'a> {
    pub(super) access_key_id: &'a str,
    pub(super) secret_access_key: &'a str,
}

/// One request to sign.
pub(super) struct Request<'a> {
    pub(super) method: &'a str,
    /// The URI-encoded absolute path (`/` for the AWS JSON protocols).
    pub(super) path: &'a str,
    /// The canonical query string (names and values encoded, sorted), `""` for none.
    pub(super) query: &'a str,
    /// Every header to sign, `host` and `x-amz-date` among them. Names in any case;
    /// values without leading or trailing spaces or line breaks.
    pub(super) headers: &'a [(&'a str, &'a str)],
    pub(super) payload: &'a [u8],
}

/// The `Authorization` header value for `request` at `date` in `region` for `service`.
pub(super) fn authorization(
    key: &Key<'_>,
    region: &str,
    service: &str,
    date: &AmzDate,
    request: &Request<'_>,
) -> String {
    let mut headers: Vec<(String, &str)> = request
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim()))
        .collect();
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let mut canonical = format!("{}\n{}\n{}\n", request.method, request.path, request.query);
    for (name, value) in &headers {
        let _ = writeln!(canonical, "{name}:{value}");
    }
    let _ = write!(
        canonical,
        "\n{signed_headers}\n{}",
        hex(digest(&SHA256, request.payload).as_ref())
    );
    let scope = format!("{}/{region}/{service}/aws4_request", date.day);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        date.stamp,
        hex(digest(&SHA256, canonical.as_bytes()).as_ref())
    );
    let signing_key = signing_key(key.secret_access_key, &date.day, region, service);
    let signature = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, signing_key.as_slice()),
        to_sign.as_bytes(),
    );
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={}",
        key.access_key_id,
        hex(signature.as_ref())
    )
}

/// `kSigning`: the secret keyed down through the day, region, service and the
/// terminator, each HMAC-SHA256 keyed with the raw bytes of the one before.
fn signing_key(secret: &str, day: &str, region: &str, service: &str) -> Zeroizing<Vec<u8>> {
    let mut key = Zeroizing::new(format!("AWS4{secret}").into_bytes());
    for part in [day, region, service, "aws4_request"] {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, key.as_slice()),
            part.as_bytes(),
        );
        key = Zeroizing::new(tag.as_ref().to_vec());
    }
    key
}

/// Lower-case hexadecimal.
pub(super) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{AmzDate, Key, Request, authorization, hex, signing_key};

    /// The credentials of AWS's SigV4 examples and test suite.
    const KEY: Key<'static> = Key {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    };

    fn example_date() -> AmzDate {
        // 2015-08-30T12:36:00Z, the time of every AWS example.
        AmzDate::from_unix(1_440_938_160)
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        let d = example_date();
        assert_eq!(d.stamp, "20150830T123600Z");
        assert_eq!(d.day, "20150830");
        assert_eq!(AmzDate::from_unix(0).stamp, "19700101T000000Z");
        // Leap days, the end of a century that is not a leap year, the 2000 leap day.
        assert_eq!(AmzDate::from_unix(951_782_400).day, "20000229");
        assert_eq!(AmzDate::from_unix(4_107_542_399).stamp, "21000228T235959Z");
        assert_eq!(AmzDate::from_unix(4_107_542_400).day, "21000301");
        assert_eq!(AmzDate::from_unix(1_709_164_800).day, "20240229");
    }

    #[test]
    fn the_signing_keys_of_the_aws_examples() {
        // AWS's documented derivation example (service iam) and the test suite's
        // (service "service").
        assert_eq!(
            hex(&signing_key(
                KEY.secret_access_key,
                "20150830",
                "us-east-1",
                "iam"
            )),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
        assert_eq!(
            hex(&signing_key(
                KEY.secret_access_key,
                "20150830",
                "us-east-1",
                "service"
            )),
            "938127b5336810ddb6a5d6af445fcac9e371f9ed418ed386b022aed82901be75"
        );
    }

    /// The AWS SigV4 test suite's `get-vanilla` and `post-vanilla` requests and the
    /// documentation's IAM `ListUsers` example, with their published signatures.
    #[test]
    fn the_published_signatures() {
        let date = example_date();
        let vanilla = [
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ];
        let prefix = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=";
        for (method, signature) in [
            (
                "GET",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "POST",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
        ] {
            let request = Request {
                method,
                path: "/",
                query: "",
                headers: &vanilla,
                payload: b"",
            };
            assert_eq!(
                authorization(&KEY, "us-east-1", "service", &date, &request),
                format!("{prefix}{signature}"),
                "{method}"
            );
        }
        let iam = Request {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &[
                (
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("Host", "iam.amazonaws.com"),
                ("X-Amz-Date", "20150830T123600Z"),
            ],
            payload: b"",
        };
        assert_eq!(
            authorization(&KEY, "us-east-1", "iam", &date, &iam),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn every_part_of_the_request_is_signed() {
        let date = example_date();
        let headers = [
            ("host", "kms.eu-west-1.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("x-amz-target", "TrentService.Sign"),
        ];
        let base = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            payload: b"{}",
        };
        let reference = authorization(&KEY, "eu-west-1", "kms", &date, &base);
        let other_target = [
            ("host", "kms.eu-west-1.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("x-amz-target", "TrentService.GetPublicKey"),
        ];
        let variants = [
            authorization(&KEY, "eu-west-2", "kms", &date, &base),
            authorization(&KEY, "eu-west-1", "iam", &date, &base),
            authorization(
                &KEY,
                "eu-west-1",
                "kms",
                &AmzDate::from_unix(1_440_938_161),
                &base,
            ),
            authorization(
                &KEY,
                "eu-west-1",
                "kms",
                &date,
                &Request {
                    payload: b"{ }",
                    ..base
                },
            ),
            authorization(
                &KEY,
                "eu-west-1",
                "kms",
                &date,
                &Request {
                    headers: &other_target,
                    ..base
                },
            ),
            authorization(
                &Key {
                    secret_access_key: "another",
                    ..KEY
                },
                "eu-west-1",
                "kms",
                &date,
                &base,
            ),
        ];
        for v in variants {
            assert_ne!(v, reference);
        }
    }
}
