//! What the server's transport holds, and for how long: connections, HTTP/2
//! streams, request bytes. Each default bounds what one misbehaving or hostile
//! client can cost the server, while a well-behaved `PeerClient` (one
//! connection, any number of calls in flight, calls cancelled at will) never
//! meets it. The numbers and the reasons are here; `ServerConfig` carries the
//! ones an operator may change.

use std::time::Duration;

/// Connections open at once. Beyond it a new connection is accepted and
/// closed at once (a refusal costs one `accept` and one `close`, and the
/// caller fails fast instead of hanging in the listen backlog), with a
/// rate-limited WARNING. A `PeerClient` or a pool member holds one connection
/// per peer, so even large fleets use a few hundred. Each connection costs a
/// file descriptor and about 20 KiB (HTTP/2 state and buffers: 1,000 idle
/// connections measured +20 MiB), so 4096 of them ~80 MiB. Keep it below the
/// process's open-file limit
/// (`ulimit -n`): at that limit `accept` fails with EMFILE and the server can
/// only pause accepting (it backs off 5 ms doubling to 1 s, never spinning).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Connections the kernel may complete and queue before the server accepts
/// them (`listen(2)`'s backlog; Linux caps it at `net.core.somaxconn`, 4096 by
/// default). std and tokio use 128: a thousand clients connecting at once
/// overflowed it, and the connections it dropped waited out one-second SYN
/// retries (or, under SYN cookies, looked open to the client while the server
/// never saw them). The accept loop drains the queue in microseconds per
/// connection, so a deep queue costs nothing until a burst needs it.
pub const LISTEN_BACKLOG: u32 = 4096;

/// HTTP/2 streams (calls in progress, including streams and derefs) one
/// connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
/// Equal to the default `max_concurrent_runs`: one caller on one connection
/// can use every run slot of the peer, and no more. A client past it waits for
/// a slot on its side (HTTP/2 flow control), nothing fails. It also bounds the
/// per-connection work and state an attacker can pin with stalled streams.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Remotely reset streams that may wait, at once, in one connection's queue of
/// streams the server has not accepted yet (h2's
/// `max_pending_accept_reset_streams`, its guard against the HTTP/2 "rapid
/// reset" attack, CVE-2023-44487). When the queue holds more, the server
/// answers GOAWAY (ENHANCE_YOUR_CALM) and every call on the connection fails,
/// so the limit must sit above what an honest client can produce.
///
/// h2's default, 20, does not: cancelling calls is the documented way to stop
/// remote runs, and h2 reads all the socket holds before the server accepts
/// the next stream, so a client cancelling calls quickly lands hundreds of
/// HEADERS+RST_STREAM pairs in one read: 20 failed 1,564 unrelated calls on
/// the shared connection in 3.5 s. Raising it alone did not suffice (1,024
/// held at 9,000 cancellations a second, not at 20,000; 8,192 failed in one of
/// ten storms on a CPU-starved peer, after h2 read a large backlog at once).
///
/// So the server reads at most [`READ_BURST_BYTES`] (plus one read) of a
/// connection, then lets every stream those bytes opened be accepted before
/// it reads more. The smallest stream opening is 27 bytes (a HEADERS frame of
/// indexed fields and a RST_STREAM), so the queue can never hold more than
/// ~2,700 reset streams, whoever the client and whatever the load: this limit
/// is a backstop three times above it.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 8192;

/// Bytes of one connection the server reads (decrypted) before letting the
/// streams they opened be accepted (see above). A request body still streams
/// at memory speed: the pause costs a task wake-up, about a microsecond, per
/// 64 KiB.
pub const READ_BURST_BYTES: usize = 64 * 1024;

/// Streams past `max_concurrent_streams` whose work may still be in progress
/// on one connection (streams the client reset, still winding down), before
/// the server stops reading the connection until they finish. HTTP/2 does not
/// count a reset stream against the concurrency limit, so without this a
/// client sending HEADERS+RST_STREAM pairs faster than the server finishes
/// them piled up tasks without bound: 400,000 pairs grew the server by 748 MiB.
/// With it, one connection holds at most `max_concurrent_streams` + 1,024 +
/// one read burst of streams (a few MiB at ~1.8 KiB each), and an honest
/// client's cancellation storm only meets TCP back-pressure for microseconds.
pub const STREAM_TASK_HEADROOM: usize = 1024;

/// Streams the server itself may reset because the client broke the protocol
/// on them (a frame on a forgotten stream, a window overflow...) before it
/// answers GOAWAY (ENHANCE_YOUR_CALM); h2's guard against the "MadeYouReset"
/// variant of rapid reset (CVE-2025-8671). None: no such limit, on purpose.
///
/// h2 counts these over a connection's whole life and never forgets one, so
/// any fixed number is eventually reached by an honest peer: late frames of
/// streams one side already reset and forgot count too. On the client side
/// that took down the connection (and every call in flight on it) every
/// ~45,000 calls of a soak with timeouts and cancellations (see the client's
/// `connect`); the server's count grows the same way, only slower. What the guard protects against, work that goes on after its
/// stream is reset, is bounded here anyway: a reset stream's handler is
/// dropped (its run cancelled), and [`STREAM_TASK_HEADROOM`] stops reading a
/// connection whose streams still winding down pass the concurrency limit,
/// so an attacker's resets meet the same back-pressure as rapid reset.
pub const MAX_LOCAL_ERROR_RESET_STREAMS: Option<usize> = None;

/// How long a new connection has to complete its TLS handshake (under TLS)
/// and send the HTTP/2 connection preface, counted from `accept`. Without it,
/// a connection that sends nothing holds a descriptor and a connection slot
/// forever. A client on a slow network completes both in a few round trips
/// (well under a second); 10 s leaves room for a loaded peer and a slow
/// certificate check while freeing the slot of a silent connection quickly.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may have no open stream before the server closes it
/// gracefully (GOAWAY, so a call racing the close is retried on a new
/// connection by HTTP/2 semantics). HTTP/2 keepalive pings find dead
/// connections, not live idle ones; this frees the slots of clients that
/// connected and went quiet. Five minutes: an idle `PeerClient` reconnects on
/// its next call at the cost of one handshake, rare enough not to matter.
pub const DEFAULT_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest pause in a request body the server waits through: while a call's
/// message is still arriving, no new bytes for this long fails the call
/// (DEADLINE_EXCEEDED) and frees what it held. Bytes flow continuously from a
/// live client (HTTP/2 flow control lets it send up to the window at once), so
/// 30 s of silence means it stalled or is holding memory on purpose; a slow
/// link only makes the gaps shorter than the whole transfer, which this does
/// not bound.
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Request bytes the server holds at once, across all connections, for calls
/// whose message has not fully arrived (or is being decoded). A request
/// message is only ever held as far as it arrived, never reserved at its
/// declared length. Past the cap, bodies wait (HTTP/2 flow control slows their
/// senders) for up to `request_body_timeout`, then the call is refused as busy
/// (RESOURCE_EXHAUSTED, nothing ran). 256 MiB is four messages of the default
/// `max_message_bytes` (64 MiB) at once; it must be at least
/// `max_message_bytes`, or the largest message could never arrive.
///
/// Beyond this cap, what a server can hold for request bodies is what HTTP/2
/// flow control lets clients send before the server reads: at most the
/// connection window (`CONNECTION_WINDOW_BYTES`) per connection.
pub const DEFAULT_MAX_BUFFERED_REQUEST_BYTES: usize = 256 * 1024 * 1024;
