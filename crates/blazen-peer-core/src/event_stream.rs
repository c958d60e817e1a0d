//! The bounded buffer between steps writing events (`write_event_to_stream`)
//! and the gRPC stream sending them.
//!
//! Writers never lose an event: `push` always queues. Back-pressure comes from
//! writers waiting for room *before their next write*: synchronous steps block
//! in [`EventStream::wait_for_room_blocking`], async steps are paused by their
//! host at their next await (see `blazen_peer._bridge`) through
//! [`EventStream::room`]. So the queue holds at most `capacity` events plus
//! one burst written without yielding. When the reader goes away (the caller
//! cancelled), writers stop waiting and further events are dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// Default number of events buffered per streaming run.
pub const DEFAULT_STREAM_BUFFER: usize = 64;

/// An event on its way to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamedEvent {
    /// The event's own type name.
    pub event_type: String,
    /// UTF-8 JSON object of its fields.
    pub data_json: Vec<u8>,
}

/// Shared handle to one run's event buffer; clones share it.
#[derive(Clone)]
pub struct EventStream(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    capacity: usize,
    // Woken when an event arrives or the writer side closes.
    readable: Notify,
    // Woken when an event leaves or the reader side closes (async writers)...
    room: Notify,
    // ...and the same for blocked synchronous writers.
    room_cv: Condvar,
}

#[derive(Default)]
struct State {
    events: VecDeque<StreamedEvent>,
    reader_gone: bool,
    writers_done: bool,
}

impl EventStream {
    /// A buffer that asks writers to wait beyond `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self(Arc::new(Shared {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            readable: Notify::new(),
            room: Notify::new(),
            room_cv: Condvar::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a single queue operation: a panic cannot
        // leave the state half-changed, so a poisoned lock is still usable.
        self.0
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Queues an event; dropped silently once the reader is gone or the run ended.
    pub fn push(&self, event: StreamedEvent) {
        let mut state = self.lock();
        if state.reader_gone || state.writers_done {
            return;
        }
        state.events.push_back(event);
        drop(state);
        self.0.readable.notify_one();
    }

    /// True while writers should wait before writing more.
    pub fn is_full(&self) -> bool {
        let state = self.lock();
        !state.reader_gone && state.events.len() >= self.0.capacity
    }

    /// Waits until there is room (or nobody reads any more).
    pub async fn room(&self) {
        loop {
            let notified = self.0.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_full() {
                return;
            }
            notified.await;
        }
    }

    /// Blocks the calling thread until there is room, nobody reads, or
    /// `give_up()` says to stop waiting (checked every `poll`).
    pub fn wait_for_room_blocking(&self, poll: Duration, give_up: impl Fn() -> bool) {
        let mut state = self.lock();
        while !state.reader_gone && state.events.len() >= self.0.capacity && !give_up() {
            state = self
                .0
                .room_cv
                .wait_timeout(state, poll)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
    }

    /// The next event without waiting.
    pub fn try_next(&self) -> Option<StreamedEvent> {
        let event = self.lock().events.pop_front();
        if event.is_some() {
            self.0.room.notify_waiters();
            self.0.room_cv.notify_all();
        }
        event
    }

    /// The next event; None once writers are done and the buffer is empty.
    pub async fn next(&self) -> Option<StreamedEvent> {
        loop {
            let notified = self.0.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(event) = self.try_next() {
                return Some(event);
            }
            if self.lock().writers_done {
                return None;
            }
            notified.await;
        }
    }

    /// The run ended: later writes (from lingering steps) are dropped.
    pub fn close_writers(&self) {
        self.lock().writers_done = true;
        self.0.readable.notify_one();
    }

    /// The reader went away: release waiting writers, drop what is queued.
    pub fn close_reader(&self) {
        {
            let mut state = self.lock();
            state.reader_gone = true;
            state.events.clear();
        }
        self.0.room.notify_waiters();
        self.0.room_cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> StreamedEvent {
        StreamedEvent {
            event_type: "t".into(),
            data_json: n.to_string().into_bytes(),
        }
    }

    #[tokio::test]
    async fn events_come_out_in_order_and_end_after_writers_close() {
        let stream = EventStream::new(4);
        for n in 0..3 {
            stream.push(event(n));
        }
        stream.close_writers();
        stream.push(event(99));
        let mut seen = Vec::new();
        while let Some(next) = stream.next().await {
            seen.push(next);
        }
        assert_eq!(seen, vec![event(0), event(1), event(2)]);
    }

    #[tokio::test]
    async fn a_full_buffer_holds_writers_until_the_reader_takes_one() {
        let stream = EventStream::new(2);
        stream.push(event(0));
        stream.push(event(1));
        assert!(stream.is_full());
        let waiter = tokio::spawn({
            let stream = stream.clone();
            async move { stream.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(stream.next().await, Some(event(0)));
        waiter.await.unwrap();
        assert!(!stream.is_full());
    }

    #[test]
    fn a_blocked_sync_writer_is_released_when_the_reader_goes_away() {
        let stream = EventStream::new(1);
        stream.push(event(0));
        let writer = std::thread::spawn({
            let stream = stream.clone();
            move || stream.wait_for_room_blocking(Duration::from_secs(60), || false)
        });
        stream.close_reader();
        writer.join().unwrap();
        assert!(!stream.is_full());
        stream.push(event(1));
        assert_eq!(stream.try_next(), None);
    }

    #[test]
    fn a_blocked_sync_writer_gives_up_when_told() {
        let stream = EventStream::new(1);
        stream.push(event(0));
        stream.wait_for_room_blocking(Duration::from_millis(1), || true);
        assert!(stream.is_full());
    }
}
