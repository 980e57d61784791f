//! Integration tests of the issuer over HTTP.
