//! Query strings and path segments, with the `percent-encoding` crate: one
//! way to encode a value into a URL (every byte but letters, digits and
//! `-_.~` escaped, so a name is always one path segment), and the query's
//! pairs in order (a key such as `run` may repeat).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// What is escaped: everything but the unreserved characters.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `text` as one path segment or query value.
pub(crate) fn encode(text: &str) -> String {
    utf8_percent_encode(text, ESCAPED).to_string()
}

/// A query component decoded (`+` is a space; bad escapes kept as written).
fn decode(text: &str) -> String {
    percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The query's pairs, in order.
pub(crate) fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_one_segment_and_come_back() {
        assert_eq!(
            encode("acc>0.9,seed=4 2&x/y"),
            "acc%3E0.9%2Cseed%3D4%202%26x%2Fy"
        );
        assert_eq!(encode("train.0-a_b~"), "train.0-a_b~");
        assert_eq!(
            pairs(Some("run=1&run=2&metric=acc%3E+x&goal=")),
            [
                ("run".to_string(), "1".to_string()),
                ("run".to_string(), "2".to_string()),
                ("metric".to_string(), "acc> x".to_string()),
                ("goal".to_string(), String::new()),
            ]
        );
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode(&encode("ü <b>")), "ü <b>");
    }
}
