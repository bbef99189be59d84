//! How a write's headers are kept in `spool_message.headers`: a JSON array
//! of `[name, value]` pairs in request order. A value that is not UTF-8
//! (obs-text, which RFC 9110 allows) is kept as `[name, value, "latin1"]`,
//! each byte one character from U+0000 to U+00FF, so that the target gets
//! exactly the bytes the client sent.

use serde::Deserialize;

const LATIN1: &str = "latin1";

/// The JSON kept for these headers.
pub fn encode<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let pairs: Vec<serde_json::Value> = headers
        .into_iter()
        .map(|(name, value)| match std::str::from_utf8(value) {
            Ok(text) => serde_json::json!([name, text]),
            Err(_) => {
                let chars: String = value.iter().map(|&b| char::from(b)).collect();
                serde_json::json!([name, chars, LATIN1])
            }
        })
        .collect();
    serde_json::Value::Array(pairs).to_string()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StoredHeader {
    Text(String, String),
    Encoded(String, String, String),
}

/// The (name, value bytes) pairs of kept headers.
pub fn decode(json: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let stored: Vec<StoredHeader> =
        serde_json::from_str(json).map_err(|e| format!("stored headers: {e}"))?;
    stored
        .into_iter()
        .map(|header| match header {
            StoredHeader::Text(name, value) => Ok((name, value.into_bytes())),
            StoredHeader::Encoded(name, value, encoding) if encoding == LATIN1 => {
                let bytes = value
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| format!("stored header {name}: not latin1"))?;
                Ok((name, bytes))
            }
            StoredHeader::Encoded(name, _, encoding) => {
                Err(format!("stored header {name}: unknown encoding {encoding}"))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_obs_text_values_come_back_as_sent() {
        let headers: [(&str, &[u8]); 3] = [
            ("content-type", b"application/json"),
            ("x-name", b"caf\xe9 \xff"),
            ("x-utf8", "café".as_bytes()),
        ];
        let json = encode(headers);
        assert!(
            json.starts_with(r#"[["content-type","application/json"],"#),
            "{json}"
        );
        let back = decode(&json).unwrap();
        let expected: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect();
        assert_eq!(back, expected);
    }

    #[test]
    fn an_unknown_encoding_is_an_error() {
        assert!(decode(r#"[["x","y","rot13"]]"#).is_err());
        assert!(decode(r#"[["x"]]"#).is_err());
    }
}
