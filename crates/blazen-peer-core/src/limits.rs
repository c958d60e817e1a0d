//! Input limits checked before a request reaches any parser that recurses.

use crate::error::PeerError;

/// Default bound on how deeply a request's JSON input may nest.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 100;
/// Highest depth a server may allow: serde_json, which validates the input
/// after this check, stops at 128 levels to protect its stack.
pub const MAX_JSON_DEPTH_CEILING: usize = 128;

/// Refuses JSON that nests deeper than `max` arrays/objects, in one pass that
/// never recurses (strings are skipped, escapes respected).
pub fn check_json_depth(json: &[u8], max: usize) -> Result<(), PeerError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(PeerError::Validation(format!(
                        "input_json nests deeper than the peer's maximum nesting depth of \
                         {max}; flatten the input, or raise max_json_depth on the peer \
                         (at most {MAX_JSON_DEPTH_CEILING})"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        assert!(check_json_depth(br#"[[{"a": [1]}]]"#, 4).is_ok());
        assert!(check_json_depth(br#"[[{"a": [1]}]]"#, 3).is_err());
        assert!(check_json_depth(br#"["[[[[", "\"[[[["]"#, 1).is_ok());
        assert!(check_json_depth(b"[][][][]", 1).is_ok());
    }

    #[test]
    fn deep_input_is_refused_with_the_limit_and_the_fix() {
        let deep = "[".repeat(100_000);
        let message = check_json_depth(deep.as_bytes(), 100)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("maximum nesting depth of 100"),
            "{message}"
        );
        assert!(message.contains("max_json_depth"), "{message}");
    }
}
