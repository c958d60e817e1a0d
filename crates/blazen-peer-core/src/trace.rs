//! W3C trace context (`traceparent`, `tracestate`) carried in call metadata,
//! so that a run on a peer joins the trace of the call that asked for it.
//! Only the format is checked here; making spans is the host's business.

use tonic::metadata::{MetadataMap, MetadataValue};

use crate::error::PeerError;

/// Metadata key of the W3C trace parent.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Metadata key of the W3C vendor trace state.
pub const TRACESTATE_HEADER: &str = "tracestate";
/// W3C: a tracestate longer than this may be dropped whole.
const MAX_TRACESTATE_LEN: usize = 512;

/// A validated W3C trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// `version-traceid-parentid-flags`, e.g. `00-4bf9...-00f0...-01`.
    pub traceparent: String,
    /// Vendor entries, passed through untouched.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Checks `traceparent` against the W3C format (and `tracestate` for size
    /// and characters), so a bad value is refused before it is sent.
    pub fn new(traceparent: &str, tracestate: Option<&str>) -> Result<Self, PeerError> {
        if !is_valid_traceparent(traceparent) {
            return Err(PeerError::Validation(format!(
                "traceparent `{traceparent}` is not a W3C trace parent; expected \
                 `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, not all zeros"
            )));
        }
        let tracestate = tracestate.filter(|state| !state.is_empty());
        if let Some(state) = tracestate {
            if state.len() > MAX_TRACESTATE_LEN || !is_printable_ascii(state) {
                return Err(PeerError::Validation(format!(
                    "tracestate must be printable ASCII of at most {MAX_TRACESTATE_LEN} \
                     characters (got {} characters)",
                    state.len()
                )));
            }
        }
        Ok(Self {
            traceparent: traceparent.to_owned(),
            tracestate: tracestate.map(str::to_owned),
        })
    }

    /// The context a call carried; a malformed one is ignored, as W3C asks.
    pub fn from_metadata(metadata: &MetadataMap) -> Option<Self> {
        let traceparent = metadata.get(TRACEPARENT_HEADER)?.to_str().ok()?;
        let tracestate = metadata
            .get(TRACESTATE_HEADER)
            .and_then(|value| value.to_str().ok());
        Self::new(traceparent, tracestate).ok()
    }

    /// Adds the context to a call's metadata.
    pub fn write(&self, metadata: &mut MetadataMap) {
        // Both were checked to be printable ASCII, which metadata accepts.
        if let Ok(value) = MetadataValue::try_from(self.traceparent.as_str()) {
            metadata.insert(TRACEPARENT_HEADER, value);
        }
        if let Some(Ok(value)) = self.tracestate.as_deref().map(MetadataValue::try_from) {
            metadata.insert(TRACESTATE_HEADER, value);
        }
    }
}

fn is_printable_ascii(text: &str) -> bool {
    text.bytes().all(|byte| (0x20..0x7f).contains(&byte))
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

fn is_valid_traceparent(value: &str) -> bool {
    let fields: Vec<&str> = value.split('-').collect();
    let [version, trace_id, span_id, flags, rest @ ..] = fields.as_slice() else {
        return false;
    };
    let sizes_ok =
        version.len() == 2 && trace_id.len() == 32 && span_id.len() == 16 && flags.len() == 2;
    if !sizes_ok
        || ![version, trace_id, span_id, flags]
            .iter()
            .all(|f| is_lower_hex(f))
    {
        return false;
    }
    // Version 00 has exactly four fields; later versions may append more.
    let known_layout = match *version {
        "ff" => false,
        "00" => rest.is_empty(),
        _ => true,
    };
    known_layout && trace_id.bytes().any(|b| b != b'0') && span_id.bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn accepts_the_w3c_example_and_round_trips_through_metadata() {
        let context = TraceContext::new(VALID, Some("congo=t61rcWkgMzE")).unwrap();
        let mut metadata = MetadataMap::new();
        context.write(&mut metadata);
        assert_eq!(TraceContext::from_metadata(&metadata), Some(context));
    }

    #[test]
    fn refuses_malformed_parents() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::new(bad, None).is_err(), "{bad:?}");
        }
        // A future version may append fields.
        assert!(TraceContext::new(&format!("cc{}-more", &VALID[2..]), None).is_ok());
        assert!(TraceContext::new(VALID, Some("a=\u{7f}")).is_err());
        assert!(TraceContext::new(VALID, Some(&"a".repeat(513))).is_err());
    }

    #[test]
    fn malformed_metadata_is_ignored() {
        let mut metadata = MetadataMap::new();
        metadata.insert(TRACEPARENT_HEADER, MetadataValue::from_static("garbage"));
        assert_eq!(TraceContext::from_metadata(&metadata), None);
    }
}
