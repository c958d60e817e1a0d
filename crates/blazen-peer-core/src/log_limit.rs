//! Rate limits for log lines that a remote party can trigger at will.
//!
//! One bad client can open hundreds of streams a second; a WARNING for each
//! would bury everything else and cost disk. A [`LogLimit`] lets one line
//! through per key (a peer address, a refusal reason) per period and counts
//! what it held back, so the next line that passes can say how many.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys remembered at most; past it the oldest half is forgotten, so a flood
/// of distinct addresses cannot grow the map without bound.
const MAX_KEYS: usize = 4096;

/// Lets at most one line per key through per `period`.
pub struct LogLimit {
    period: Duration,
    seen: Mutex<HashMap<String, Seen>>,
}

struct Seen {
    last: Instant,
    held_back: u64,
}

impl LogLimit {
    /// A limit of one line per key per `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)` when a line for `key` may be logged now, `n` being how many
    /// were held back since the last one; `None` when it must be skipped.
    pub fn admit(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(entry) = seen.get_mut(key) {
            if now.duration_since(entry.last) < self.period {
                entry.held_back += 1;
                return None;
            }
            let held_back = std::mem::take(&mut entry.held_back);
            entry.last = now;
            return Some(held_back);
        }
        if seen.len() >= MAX_KEYS {
            let mut ages: Vec<Instant> = seen.values().map(|entry| entry.last).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            seen.retain(|_, entry| entry.last > cutoff);
        }
        seen.insert(
            key.to_owned(),
            Seen {
                last: now,
                held_back: 0,
            },
        );
        Some(0)
    }
}

/// " (N more like it held back)" when lines were held back, else "".
pub fn held_back_note(held_back: u64) -> String {
    match held_back {
        0 => String::new(),
        1 => " (1 more like it held back)".into(),
        n => format!(" ({n} more like it held back)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_period_and_the_count_of_the_rest() {
        let limit = LogLimit::new(Duration::from_millis(50));
        assert_eq!(limit.admit("a"), Some(0));
        assert_eq!(limit.admit("a"), None);
        assert_eq!(limit.admit("a"), None);
        assert_eq!(limit.admit("b"), Some(0), "keys are limited apart");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limit.admit("a"), Some(2));
    }

    #[test]
    fn a_flood_of_keys_stays_bounded() {
        let limit = LogLimit::new(Duration::from_secs(60));
        for key in 0..(MAX_KEYS * 3) {
            limit.admit(&key.to_string());
        }
        let kept = limit.seen.lock().unwrap().len();
        assert!(kept <= MAX_KEYS, "{kept} keys kept");
    }
}
