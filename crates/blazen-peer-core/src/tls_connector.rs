//! How the client opens a connection, done here rather than by tonic.
//!
//! With TLS, for one reason: under TLS 1.3 a server that refuses the client's
//! certificate says so only after the client's handshake has completed. tonic
//! then sends the first request at once and, depending on timing, the caller
//! sees the alert or just "broken pipe". [`connect`] reads the server's first
//! bytes (its HTTP/2 SETTINGS, or the alert) before handing the connection
//! over, so a refused certificate is always reported as such, at connect time.
//!
//! Both ways, to tell a peer speaking the other protocol from a broken one: a
//! TLS peer answers a plaintext HTTP/2 preface with a TLS alert and closes,
//! and an HTTP/2 peer answers a ClientHello with its SETTINGS frame. Left to
//! hyper and rustls, either shows as whichever of "broken pipe", "h2 protocol
//! error" or "corrupt message" won the race; here it is [`ProtocolMismatch`],
//! at connect time.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long to wait for the server to speak first after the handshake. HTTP/2
/// servers send SETTINGS immediately; one that does not is used anyway.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(2);

/// The client's HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How many of the server's first bytes are kept to tell what it speaks.
const RECORDED_BYTES: usize = 8;

/// The peer speaks the other protocol than the one the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolMismatch {
    /// Plaintext HTTP/2 was sent; the peer answered with a TLS record.
    SpeaksTls,
    /// A TLS ClientHello was sent; the peer answered with something else.
    NotTls,
}

impl std::fmt::Display for ProtocolMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProtocolMismatch::SpeaksTls => "the peer answered plaintext HTTP/2 with TLS",
            ProtocolMismatch::NotTls => "the peer answered a TLS handshake in plaintext",
        })
    }
}

impl std::error::Error for ProtocolMismatch {}

impl ProtocolMismatch {
    /// The mismatch inside a connection error, if that is what it was.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut current = Some(err);
        while let Some(cause) = current {
            if let Some(found) = cause.downcast_ref::<ProtocolMismatch>() {
                return Some(*found);
            }
            if let Some(found) = cause
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<ProtocolMismatch>())
            {
                return Some(*found);
            }
            current = cause.source();
        }
        None
    }

    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

/// A TLS record header: content type 20..=23 (change cipher spec, alert,
/// handshake, application data), then major version 3.
fn is_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x14..=0x17, 0x03, ..])
}

/// Connects TCP, performs the TLS handshake for `domain` and waits for the
/// server's first bytes; `authority` is `host:port`.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    domain: ServerName<'static>,
    authority: String,
) -> io::Result<TokioIo<Prefixed<TlsStream<Recorder>>>> {
    let tcp = TcpStream::connect(&authority).await?;
    tcp.set_nodelay(true)?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder {
        inner: tcp,
        seen: Some(seen.clone()),
    };
    let mut tls = match TlsConnector::from(config).connect(domain, recorder).await {
        Ok(tls) => tls,
        Err(err) => {
            let seen = seen.lock().map(|seen| seen.clone()).unwrap_or_default();
            // Whatever the peer sent first was no TLS record: it does not speak TLS.
            if !seen.is_empty() && !matches!(seen[0], 0x14..=0x17) {
                return Err(ProtocolMismatch::NotTls.into_io());
            }
            return Err(err);
        }
    };
    let first = read_first(&mut tls, "right after the TLS handshake").await?;
    Ok(TokioIo::new(Prefixed::new(first, tls, 0)))
}

/// Connects TCP and sends the HTTP/2 preface, then waits for the server's
/// first bytes: a TLS peer answers with an alert and closes, which is
/// reported as [`ProtocolMismatch::SpeaksTls`]. hyper's own preface is then
/// not sent again.
pub async fn connect_plaintext(authority: String) -> io::Result<TokioIo<Prefixed<TcpStream>>> {
    let mut tcp = TcpStream::connect(&authority).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(PREFACE).await?;
    let first = match read_first(&mut tcp, "right after the HTTP/2 preface").await {
        Ok(first) if is_tls_record(&first) => return Err(ProtocolMismatch::SpeaksTls.into_io()),
        other => other?,
    };
    Ok(TokioIo::new(Prefixed::new(first, tcp, PREFACE.len())))
}

/// The server's first bytes, or none when it stays silent for [`FIRST_BYTES_WAIT`].
async fn read_first<S: AsyncRead + Unpin>(stream: &mut S, when: &str) -> io::Result<Vec<u8>> {
    let mut first = vec![0u8; 16 * 1024];
    let filled = match tokio::time::timeout(FIRST_BYTES_WAIT, stream.read(&mut first)).await {
        Ok(Ok(0)) => {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("the peer closed the connection {when}"),
            ))
        }
        Ok(Ok(filled)) => filled,
        Ok(Err(err)) => return Err(err),
        Err(_silent) => 0,
    };
    first.truncate(filled);
    Ok(first)
}

/// A TCP stream that keeps the first bytes the server sends, so that a failed
/// TLS handshake can tell a peer that does not speak TLS from a refusal.
pub struct Recorder {
    inner: TcpStream,
    /// Until the first bytes arrived.
    seen: Option<Arc<Mutex<Vec<u8>>>>,
}

impl AsyncRead for Recorder {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                if let Some(seen) = self.seen.take() {
                    if let Ok(mut seen) = seen.lock() {
                        seen.extend_from_slice(&read[..read.len().min(RECORDED_BYTES)]);
                    }
                }
            }
        }
        polled
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream that replays the bytes read ahead by [`connect`] first, and
/// drops the preface hyper writes when [`connect_plaintext`] already sent it.
pub struct Prefixed<S> {
    first: Vec<u8>,
    position: usize,
    /// How many bytes of hyper's preface are still to be dropped.
    preface_sent: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(first: Vec<u8>, inner: S, preface_sent: usize) -> Self {
        Self {
            first,
            position: 0,
            preface_sent,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.position < self.first.len() {
            let remaining = &self.first[self.position..];
            let taken = remaining.len().min(buf.remaining());
            buf.put_slice(&remaining[..taken]);
            self.position += taken;
            if self.position == self.first.len() {
                self.first = Vec::new();
                self.position = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.preface_sent > 0 && !buf.is_empty() {
            let done = PREFACE.len() - self.preface_sent;
            let taken = buf.len().min(self.preface_sent);
            if buf[..taken] != PREFACE[done..done + taken] {
                return Poll::Ready(Err(io::Error::other(
                    "HTTP/2 did not start with its connection preface",
                )));
            }
            self.preface_sent -= taken;
            return Poll::Ready(Ok(taken));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.preface_sent > 0 {
            let buf = bufs
                .iter()
                .find(|buf| !buf.is_empty())
                .map_or(&[][..], |buf| &**buf);
            return self.poll_write(cx, buf);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
