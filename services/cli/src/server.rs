//! The HTTP server of a process (webhook, admin API, health): HTTP/1.1 on
//! hyper, with what a public endpoint needs against slow and greedy
//! clients: a connection that does not send a request's headers within the
//! header time-out (also the most a kept-alive connection may sit idle) is
//! closed, and one client address may hold a bounded number of
//! connections (not behind a trusted proxy, whose connections all come
//! from one address). On shutdown it stops accepting and lets the requests
//! in flight finish.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alphadome_core::{CancellationToken, Report};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// What the server allows a client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a request's headers may take to arrive.
    pub header_timeout: Duration,
    /// Connections one client address may hold; `None`: unbounded.
    pub connections_per_source: Option<usize>,
}

/// Open connections per client address.
#[derive(Default)]
struct Connections {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection, counted while it lives.
struct Counted {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    fn open(self: &Arc<Self>, ip: IpAddr, max: Option<usize>) -> Option<Counted> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if max.is_some_and(|max| *n >= max) {
            return None;
        }
        *n += 1;
        Some(Counted {
            connections: self.clone(),
            ip,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets the requests in
/// flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Connections::default());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, a connection reset before
                    // accept: wait a moment rather than spin.
                    tracing::warn!(error = %Report(&e), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(counted) = connections.open(peer.ip(), limits.connections_per_source) else {
            tracing::warn!(source = %peer.ip(), "connection refused: too many open from this source");
            drop(stream);
            continue;
        };
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                router.clone().oneshot(req)
            });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _counted = counted;
            if let Err(e) = conn.await {
                tracing::debug!(source = %peer.ip(), error = %Report(&e), "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
