//! The client side of TLS, done here rather than by tonic, for one reason:
//! under TLS 1.3 a server that refuses the client's certificate says so only
//! after the client's handshake has completed. tonic then sends the first
//! request at once and, depending on timing, the caller sees the alert or just
//! "broken pipe". This connector reads the server's first bytes (its HTTP/2
//! SETTINGS, or the alert) before handing the connection over, so a refused
//! certificate is always reported as such, at connect time.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long to wait for the server to speak first after the handshake. HTTP/2
/// servers send SETTINGS immediately; one that does not is used anyway.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(2);

/// Connects TCP, performs the TLS handshake for `domain` and waits for the
/// server's first bytes; `authority` is `host:port`.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    domain: ServerName<'static>,
    authority: String,
) -> io::Result<TokioIo<Prefixed>> {
    let tcp = TcpStream::connect(&authority).await?;
    tcp.set_nodelay(true)?;
    let mut tls = TlsConnector::from(config).connect(domain, tcp).await?;
    let mut first = vec![0u8; 16 * 1024];
    let filled = match tokio::time::timeout(FIRST_BYTES_WAIT, tls.read(&mut first)).await {
        Ok(Ok(0)) => {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the peer closed the connection right after the TLS handshake",
            ))
        }
        Ok(Ok(filled)) => filled,
        Ok(Err(err)) => return Err(err),
        Err(_silent) => 0,
    };
    first.truncate(filled);
    Ok(TokioIo::new(Prefixed {
        first,
        position: 0,
        inner: tls,
    }))
}

/// A TLS stream that replays the bytes read ahead by [`connect`] first.
pub struct Prefixed {
    first: Vec<u8>,
    position: usize,
    inner: TlsStream<TcpStream>,
}

impl AsyncRead for Prefixed {
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

impl AsyncWrite for Prefixed {
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
