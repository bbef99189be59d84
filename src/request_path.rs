//! The path after a route's name, normalized before it is stored or
//! forwarded, so that what reaches a target always lies under the target
//! URL's own path.
//!
//! As Envoy's `normalize_path` does: percent-encoded unreserved characters
//! are decoded (`%2e` is `.`, RFC 3986 §2.3), the hex of the other escapes
//! is upper-cased, then dot segments are removed (§5.2.4). Unlike §5.2.4,
//! which clamps `..` at the root, a path that would climb above the route is
//! refused: its sender meant something spool will not do. Encoded `/` and
//! `\` are refused unless the route allows them (Envoy's
//! `path_with_escaped_slashes_action`), since targets differ on whether they
//! split on them; a raw `\` is refused always, for the servers that take it
//! for `/`.

use std::borrow::Cow;

/// Why a path was refused; the text is the problem's detail.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathRefused {
    #[error("the path climbs above the route with `..`")]
    AboveRoute,
    #[error("the path has an encoded `/` or `\\` (%2F, %5C), which this route does not allow")]
    EncodedSlash,
    #[error("the path has a `\\`")]
    Backslash,
    #[error("the path has a `%` that is not followed by two hex digits")]
    BadEscape,
}

/// `rest` (starting with `/`) in normal form, or why it is refused.
pub fn normalize(rest: &str, allow_encoded_slashes: bool) -> Result<Cow<'_, str>, PathRefused> {
    if rest.contains('\\') {
        return Err(PathRefused::Backslash);
    }
    let needs_work = rest.contains('%') || has_dot_segment(rest);
    if !needs_work {
        return Ok(Cow::Borrowed(rest));
    }
    let decoded = decode_unreserved(rest)?;
    if contains_encoded_slash(&decoded) {
        if !allow_encoded_slashes {
            return Err(PathRefused::EncodedSlash);
        }
        // Allowed, but a target that decodes them must still not be led
        // above the route: check the path as such a target would see it.
        let as_split = decoded
            .replace("%2F", "/")
            .replace("%5C", "/")
            .replace('\\', "/");
        remove_dot_segments(&as_split)?;
    }
    remove_dot_segments(&decoded).map(Cow::Owned)
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

fn contains_encoded_slash(path: &str) -> bool {
    path.contains("%2F") || path.contains("%5C")
}

/// Decodes `%XX` when XX is an unreserved character; upper-cases the rest.
fn decode_unreserved(path: &str) -> Result<String, PathRefused> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            let next = path[i..].find('%').map_or(path.len(), |p| i + p);
            out.push_str(&path[i..next]);
            i = next;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).ok_or(PathRefused::BadEscape)?;
        let (hi, lo) = (hex_value(hex[0])?, hex_value(hex[1])?);
        let byte = hi << 4 | lo;
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(hex[0].to_ascii_uppercase()));
            out.push(char::from(hex[1].to_ascii_uppercase()));
        }
        i += 3;
    }
    Ok(out)
}

fn hex_value(digit: u8) -> Result<u8, PathRefused> {
    char::from(digit)
        .to_digit(16)
        .map(|d| d as u8)
        .ok_or(PathRefused::BadEscape)
}

/// RFC 3986 §5.2.4 over a path starting with `/`, refusing to pass its root.
fn remove_dot_segments(path: &str) -> Result<String, PathRefused> {
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    // A path ending in a dot segment names a directory: it keeps its slash.
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => trailing_slash = i == last,
            ".." => {
                kept.pop().ok_or(PathRefused::AboveRoute)?;
                trailing_slash = i == last;
            }
            other => kept.push(other),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> String {
        normalize(path, false).unwrap().into_owned()
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for path in ["/", "/a/b", "/a//b/", "/a/b.c/..d/.e", "/v1/x?not-a-query"] {
            assert!(matches!(normalize(path, false), Ok(Cow::Borrowed(p)) if p == path));
        }
    }

    #[test]
    fn dot_segments_inside_the_route_are_removed() {
        assert_eq!(ok("/a/./b"), "/a/b");
        assert_eq!(ok("/a/b/../c"), "/a/c");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/."), "/a/");
        assert_eq!(ok("/."), "/");
    }

    #[test]
    fn climbing_above_the_route_is_refused_raw_or_encoded() {
        for path in [
            "/..",
            "/../x",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/.%2e/x",
            "/a/%2e%2e/%2e%2e",
        ] {
            assert_eq!(
                normalize(path, false),
                Err(PathRefused::AboveRoute),
                "{path}"
            );
        }
    }

    #[test]
    fn encoded_slashes_are_refused_unless_allowed_and_never_climb() {
        for path in ["/..%2fx", "/..%2Fx", "/..%5cx", "/a%2Fb"] {
            assert_eq!(
                normalize(path, false),
                Err(PathRefused::EncodedSlash),
                "{path}"
            );
        }
        assert_eq!(normalize("/a%2fb", true).unwrap(), "/a%2Fb");
        assert_eq!(normalize("/..%2fx", true), Err(PathRefused::AboveRoute));
        assert_eq!(
            normalize("/a/..%5c..%5cx", true),
            Err(PathRefused::AboveRoute)
        );
    }

    #[test]
    fn backslashes_and_bad_escapes_are_refused() {
        assert_eq!(normalize("/..\\x", true), Err(PathRefused::Backslash));
        assert_eq!(normalize("/a%", false), Err(PathRefused::BadEscape));
        assert_eq!(normalize("/a%2", false), Err(PathRefused::BadEscape));
        assert_eq!(normalize("/a%zz", false), Err(PathRefused::BadEscape));
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(ok("/%7euser/%41b"), "/~user/Ab");
        assert_eq!(ok("/a%20b/%c3%a9"), "/a%20b/%C3%A9");
    }
}
