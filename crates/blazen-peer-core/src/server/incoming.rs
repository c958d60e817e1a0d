//! The accept loop: a cap on open connections, refused cheaply past it, and a
//! pause instead of a spin when `accept` itself fails (EMFILE, ENFILE...).
//!
//! tonic's own loop retries a failed `accept` at once, so a process out of
//! file descriptors spun at 100% CPU; and it accepted without limit. Here each
//! accepted connection takes a permit from a semaphore of `max_connections`
//! and carries it until it closes; without a permit it is closed at once.
//!
//! Silent connections must not lock honest clients out while they wait for
//! their handshake deadline: when the server is out of room (at
//! `max_connections`, or out of file descriptors), the oldest connection that
//! has been accepted for a while without completing its handshake is closed to
//! make room for the new one. Honest clients complete theirs in milliseconds.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};

use super::limits::LISTEN_BACKLOG;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::connection::{serve_connection, Transport};
use super::log_throttle::{more, Throttle};
use super::metrics::Refusal;
use crate::log_target::TARGET;

/// First pause after `accept` fails for want of resources, doubled on each
/// failure in a row up to [`MAX_ACCEPT_BACKOFF`] (Go's net/http does the same).
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between attempts while `accept` keeps failing.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// How long a connection must have gone without completing its handshake
/// before it may be closed to make room: an honest client's TLS handshake and
/// HTTP/2 preface take a few round trips, milliseconds even across regions.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);
/// How long a new connection waits for the slot of one closed to make room.
const EVICTION_WAIT: Duration = Duration::from_millis(100);
/// Connections closed at most to make room for one failed `accept`.
const EVICTIONS_PER_ACCEPT_FAILURE: usize = 8;

/// A connection between `accept` and the end of its handshake (TLS, then the
/// HTTP/2 preface).
pub(crate) struct Handshake {
    accepted: Instant,
    /// Set once the client's HTTP/2 preface arrived.
    pub(crate) done: AtomicBool,
    /// Told when the connection must close to make room.
    pub(crate) evict: Notify,
}

#[cfg(test)]
impl Handshake {
    pub(crate) fn new_for_tests() -> Self {
        Self {
            accepted: Instant::now(),
            done: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }
}

/// Entries the queue of handshakes may grow to before finished ones are pruned.
const MIN_PRUNE_AT: usize = 1024;

/// Connections accepted, oldest first; the ones that finished their handshake
/// or closed are pruned as the queue grows.
struct Handshakes {
    queue: Mutex<Queue>,
}

struct Queue {
    entries: VecDeque<Weak<Handshake>>,
    prune_at: usize,
}

impl Handshakes {
    fn new() -> Self {
        Self {
            queue: Mutex::new(Queue {
                entries: VecDeque::new(),
                prune_at: MIN_PRUNE_AT,
            }),
        }
    }

    fn register(&self) -> Arc<Handshake> {
        let handshake = Arc::new(Handshake {
            accepted: Instant::now(),
            done: AtomicBool::new(false),
            evict: Notify::new(),
        });
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if queue.entries.len() >= queue.prune_at {
            queue.entries.retain(|entry| {
                entry
                    .upgrade()
                    .is_some_and(|handshake| !handshake.done.load(Ordering::Acquire))
            });
            queue.prune_at = (2 * queue.entries.len()).max(MIN_PRUNE_AT);
        }
        queue.entries.push_back(Arc::downgrade(&handshake));
        handshake
    }

    /// Tells the oldest connection still in its handshake after
    /// [`EVICTABLE_AFTER`] to close; false when there is none.
    fn evict_oldest(&self) -> bool {
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let queue = &mut queue.entries;
        while let Some(entry) = queue.pop_front() {
            let Some(handshake) = entry.upgrade() else {
                continue;
            };
            if handshake.done.load(Ordering::Acquire) {
                continue;
            }
            if handshake.accepted.elapsed() < EVICTABLE_AFTER {
                // The rest are younger still.
                queue.push_front(entry);
                return false;
            }
            handshake.evict.notify_one();
            return true;
        }
        false
    }
}

/// Binds `addr` for [`serve`], with a listen backlog of [`LISTEN_BACKLOG`].
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio do: a restarted peer can bind while old connections linger.
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections on `listener` and serves them until `shutdown` turns
/// true; then stops accepting (the listening socket closes at once), asks
/// every connection to finish gracefully and returns when all have closed.
/// Dropping the returned future (aborting its task) closes every connection.
pub(crate) async fn serve(
    listener: TcpListener,
    transport: Arc<Transport>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(transport.max_connections));
    let handshakes = Handshakes::new();
    let mut connections = JoinSet::new();
    let refused = Throttle::new();
    let failing = Throttle::new();
    let mut backoff = MIN_ACCEPT_BACKOFF;
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    backoff = MIN_ACCEPT_BACKOFF;
                    let slot = match slots.clone().try_acquire_owned() {
                        Ok(slot) => Some(slot),
                        Err(_) if handshakes.evict_oldest() => {
                            tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned())
                                .await
                                .ok()
                                .and_then(Result::ok)
                        }
                        Err(_) => None,
                    };
                    let Some(slot) = slot else {
                        drop(tcp);
                        transport.counters.refused(Refusal::ConnectionLimit);
                        if let Some(held_back) = refused.admit() {
                            log::warn!(
                                target: TARGET,
                                node_id = &*transport.node_id, reason = "max_connections";
                                "refused a connection from {remote}: {} connections are open \
                                 (max_connections){}",
                                transport.max_connections, more(held_back)
                            );
                        }
                        continue;
                    };
                    // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs
                    // add ~40 ms to small replies.
                    let _ = tcp.set_nodelay(true);
                    connections.spawn(serve_connection(
                        transport.clone(),
                        tcp,
                        remote,
                        slot,
                        handshakes.register(),
                        shutdown.clone(),
                    ));
                }
                Err(err) if is_per_connection(&err) => {}
                Err(err) => {
                    // Out of descriptors: silent connections make way first.
                    let mut evicted = 0;
                    while evicted < EVICTIONS_PER_ACCEPT_FAILURE && handshakes.evict_oldest() {
                        evicted += 1;
                    }
                    if evicted > 0 {
                        tokio::time::sleep(MIN_ACCEPT_BACKOFF).await;
                        continue;
                    }
                    if let Some(held_back) = failing.admit() {
                        log::warn!(
                            target: TARGET,
                            node_id = &*transport.node_id, reason = "accept_failed";
                            "cannot accept connections on {}: {err}{}; pausing accepts \
                             (up to {} s at a time) until it works again{}",
                            local(&listener),
                            hint(&err),
                            MAX_ACCEPT_BACKOFF.as_secs(),
                            more(held_back)
                        );
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            },
        }
    }
    drop(listener);
    // Connections watch `shutdown` themselves and close gracefully.
    while connections.join_next().await.is_some() {}
}

/// Errors about one connection that went away before it was accepted: the
/// next `accept` will work.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

fn local(listener: &TcpListener) -> String {
    listener.local_addr().map_or_else(
        |_| "the listening socket".into(),
        |addr: SocketAddr| addr.to_string(),
    )
}

fn hint(err: &io::Error) -> &'static str {
    // EMFILE (24) / ENFILE (23): out of file descriptors.
    match err.raw_os_error() {
        Some(23 | 24) => {
            " (out of file descriptors: raise the open-file limit, ulimit -n, or lower \
             max_connections below it)"
        }
        _ => "",
    }
}
