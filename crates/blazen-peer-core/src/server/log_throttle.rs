//! At most one log line per reason per period, for events a remote party can
//! trigger at will (refused connections, stalled bodies): one line says what
//! happens and how often, thousands would bury everything else.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often each kind of transport refusal may be logged.
pub(crate) const LOG_PERIOD: Duration = Duration::from_secs(5);

/// Lets one line through per period and counts the ones it held back.
pub(crate) struct Throttle {
    state: Mutex<State>,
}

struct State {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    pub(crate) const fn new() -> Self {
        Self {
            state: Mutex::new(State {
                last: None,
                held_back: 0,
            }),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were held
    /// back since the last one; `None` when this one must be skipped.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match state.last {
            Some(last) if now.duration_since(last) < LOG_PERIOD => {
                state.held_back += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.held_back))
            }
        }
    }
}

/// " (N more since the last report)" when lines were held back, else "".
pub(crate) fn more(held_back: u64) -> String {
    match held_back {
        0 => String::new(),
        n => format!(" ({n} more like it since the last report)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_then_the_count_of_the_rest() {
        let throttle = Throttle::new();
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), None);
        assert_eq!(throttle.admit(), None);
        throttle.state.lock().unwrap().last = Some(Instant::now() - LOG_PERIOD);
        assert_eq!(throttle.admit(), Some(2));
        assert_eq!(more(2), " (2 more like it since the last report)");
        assert_eq!(more(0), "");
    }
}
