//! Message framing that RFC 9112 makes an error, refused before a handler
//! reads a byte of the body, as Envoy refuses it: hyper passes some of it
//! through, and a proxy that frames a request differently from the server
//! behind it is how request smuggling starts.

use http::{HeaderMap, Version, header};

use crate::problem::ApiError;

/// Checks a request's framing headers (RFC 9112 §6.1-6.3, §3.2).
pub fn check(version: Version, headers: &HeaderMap) -> Result<(), ApiError> {
    let bad = |detail: &str| Err(ApiError::BadRequest(detail.to_owned()));
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    let codings: Vec<String> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| {
            let text = String::from_utf8_lossy(v.as_bytes());
            text.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|c| !c.is_empty())
        .collect();
    if lengths > 0 && headers.contains_key(header::TRANSFER_ENCODING) {
        return bad("the request has both Content-Length and Transfer-Encoding");
    }
    if lengths > 1 {
        return bad("the request has more than one Content-Length");
    }
    if let Some(length) = headers.get(header::CONTENT_LENGTH)
        && (length.is_empty() || !length.as_bytes().iter().all(u8::is_ascii_digit))
    {
        return bad("Content-Length must be a number of bytes");
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if codings.last().map(String::as_str) != Some("chunked") {
            return bad("a Transfer-Encoding must end with chunked");
        }
        if codings.len() > 1 {
            return Err(ApiError::NotImplemented(format!(
                "spool does not decode the transfer coding {}; send the body chunked only",
                codings[..codings.len() - 1].join(", ")
            )));
        }
    }
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return bad("the request has more than one Host");
    }
    if hosts == 0 && version == Version::HTTP_11 {
        return bad("an HTTP/1.1 request must have a Host");
    }
    Ok(())
}
