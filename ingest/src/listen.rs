//! Accepting connections for one listener: optional TLS, a bound on open connections and on
//! the time a TLS handshake may take, both counted for `/metrics`.
//!
//! Handshakes run in their own tasks, so a client that opens a connection and never finishes
//! its handshake holds one connection slot until the timeout, never the accept loop. At the
//! connection limit the loop stops accepting (new clients wait in the kernel's backlog)
//! until a connection closes, so memory for connections stays bounded.

use crate::tls::{Alpn, ClientCerts, TlsError, TlsFiles, server_config};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How one listener accepts connections.
#[derive(Clone, Debug)]
pub struct ListenOptions {
    /// TLS, when configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections open at once (`limits.max_connections`).
    pub max_connections: usize,
    /// Longest TLS handshake (`limits.handshake_timeout`).
    pub handshake_timeout: Duration,
}

impl ListenOptions {
    /// Plain TCP with `max_connections`.
    pub fn plain(max_connections: usize) -> Self {
        Self {
            tls: None,
            max_connections,
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// With TLS from `files` (when set) for a listener speaking `alpn`.
    pub fn with_tls(
        mut self,
        files: Option<&TlsFiles>,
        client_certs: ClientCerts,
        alpn: Alpn,
    ) -> Result<Self, TlsError> {
        self.tls = files
            .map(|f| server_config(f, client_certs, alpn))
            .transpose()?;
        Ok(self)
    }
}

/// Connection counters of one listener.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections accepted (TCP).
    pub accepted: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// TLS handshakes that failed (no or a bad client certificate, not TLS, a bad protocol).
    pub handshake_failed: AtomicU64,
    /// TLS handshakes that did not finish within the timeout.
    pub handshake_timed_out: AtomicU64,
    /// Times the loop waited because `max_connections` were open.
    pub at_limit: AtomicU64,
    /// The configured limit.
    pub limit: AtomicU64,
}

impl ConnStats {
    /// Renders the connection families for the listeners in `all` (`listener` label).
    pub fn render(all: &[(&str, &ConnStats)], out: &mut String) {
        use std::fmt::Write;
        type Family = (
            &'static str,
            &'static str,
            &'static str,
            fn(&ConnStats) -> u64,
        );
        let families: [Family; 6] = [
            (
                "trike_listener_connections_accepted_total",
                "Connections accepted.",
                "counter",
                |s| s.accepted.load(Relaxed),
            ),
            (
                "trike_listener_connections_open",
                "Connections open now.",
                "gauge",
                |s| s.open.load(Relaxed),
            ),
            (
                "trike_listener_connections_limit",
                "Connections open at most at once (limits.max_connections).",
                "gauge",
                |s| s.limit.load(Relaxed),
            ),
            (
                "trike_listener_connection_limit_waits_total",
                "Times accepting paused because the connection limit was reached.",
                "counter",
                |s| s.at_limit.load(Relaxed),
            ),
            (
                "trike_listener_tls_handshake_failures_total",
                "TLS handshakes refused (no or an untrusted client certificate, not TLS).",
                "counter",
                |s| s.handshake_failed.load(Relaxed),
            ),
            (
                "trike_listener_tls_handshake_timeouts_total",
                "TLS handshakes that did not finish within limits.handshake_timeout.",
                "counter",
                |s| s.handshake_timed_out.load(Relaxed),
            ),
        ];
        for (name, help, kind, value) in families {
            trike_engine::expo::header(out, name, help, kind);
            for (listener, s) in all {
                let _ = writeln!(out, "{name}{{listener=\"{listener}\"}} {}", value(s));
            }
        }
    }
}

/// What a server learns about the peer of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// True when the connection is TLS and the peer presented a client certificate that
    /// verified against `tls.client_ca_file`.
    pub client_cert: bool,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection (plain or TLS). It holds its connection slot until dropped.
pub struct Conn {
    io: Io,
    peer: PeerInfo,
    _slot: Slot,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// One open connection counted against the limit.
struct Slot {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ConnStats>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Relaxed);
    }
}

impl Conn {
    /// The peer.
    pub fn peer(&self) -> PeerInfo {
        self.peer
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.peer
    }
}

/// A listener whose connections are accepted (and TLS-handshaken) by a background task.
#[derive(Debug)]
pub struct Listener {
    rx: mpsc::Receiver<Conn>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener {
    /// Starts accepting on `tcp` (on the current Tokio runtime).
    pub fn new(tcp: TcpListener, opts: ListenOptions, stats: Arc<ConnStats>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let limit = opts.max_connections.max(1);
        stats.limit.store(limit as u64, Relaxed);
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(tcp, opts, limit, stats, tx));
        Ok(Self { rx, local, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next connection (pending forever once the accept loop has ended).
    pub async fn next(&mut self) -> Conn {
        match self.rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }
}

/// The connections as a stream, for `tonic`'s `serve_with_incoming`.
impl tokio_stream::Stream for Listener {
    type Item = io::Result<Conn>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Conn, PeerInfo) {
        let c = self.next().await;
        let peer = c.peer;
        (c, peer)
    }

    fn local_addr(&self) -> io::Result<PeerInfo> {
        Ok(PeerInfo {
            remote: self.local,
            client_cert: false,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>>
    for PeerInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        *stream.remote_addr()
    }
}

async fn accept_loop(
    tcp: TcpListener,
    opts: ListenOptions,
    limit: usize,
    stats: Arc<ConnStats>,
    tx: mpsc::Sender<Conn>,
) {
    let slots = Arc::new(Semaphore::new(limit));
    let acceptor = opts.tls.clone().map(TlsAcceptor::from);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                stats.at_limit.fetch_add(1, Relaxed);
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    _ = tx.closed() => return,
                }
            }
        };
        let (stream, remote) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = tx.closed() => return,
        };
        stats.accepted.fetch_add(1, Relaxed);
        stats.open.fetch_add(1, Relaxed);
        let slot = Slot {
            _permit: permit,
            stats: stats.clone(),
        };
        let _ = stream.set_nodelay(true);
        match &acceptor {
            None => {
                let conn = Conn {
                    io: Io::Plain(stream),
                    peer: PeerInfo {
                        remote,
                        client_cert: false,
                    },
                    _slot: slot,
                };
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let (acceptor, tx, stats) = (acceptor.clone(), tx.clone(), stats.clone());
                let timeout = opts.handshake_timeout;
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let client_cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .is_some_and(|c| !c.is_empty());
                            let conn = Conn {
                                io: Io::Tls(Box::new(tls)),
                                peer: PeerInfo {
                                    remote,
                                    client_cert,
                                },
                                _slot: slot,
                            };
                            let _ = tx.send(conn).await;
                        }
                        Ok(Err(e)) => {
                            stats.handshake_failed.fetch_add(1, Relaxed);
                            tracing::debug!(%remote, error = %e, "TLS handshake refused");
                        }
                        Err(_) => {
                            stats.handshake_timed_out.fetch_add(1, Relaxed);
                            tracing::debug!(%remote, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// At the limit the listener stops accepting; a closed connection frees its slot, and the
    /// gauges say so.
    #[tokio::test]
    async fn connections_are_bounded() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stats = Arc::new(ConnStats::default());
        let mut l = Listener::new(tcp, ListenOptions::plain(2), stats.clone()).unwrap();
        let addr = l.local_addr();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let first = l.next().await;
        let _second = l.next().await;
        let third = tokio::time::timeout(Duration::from_millis(200), l.next()).await;
        assert!(
            third.is_err(),
            "a third connection is not accepted at the limit of 2"
        );
        assert_eq!(stats.open.load(Relaxed), 2);
        drop(first);
        let mut third = tokio::time::timeout(Duration::from_secs(5), l.next())
            .await
            .expect("accepted once a slot is free");
        assert_eq!(stats.accepted.load(Relaxed), 3);
        assert!(stats.at_limit.load(Relaxed) >= 1);
        clients[2].write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        third.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        let mut out = String::new();
        ConnStats::render(&[("admin", &stats)], &mut out);
        assert!(
            out.contains("trike_listener_connections_open{listener=\"admin\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("trike_listener_connections_limit{listener=\"admin\"} 2"),
            "{out}"
        );
    }
}
