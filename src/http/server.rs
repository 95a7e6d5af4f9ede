//! The accept loop: HTTP/1.1 connections with a deadline for request headers (which also
//! ends idle keep-alive connections), a cap on open connections, and graceful shutdown.
//! (Bodies have their own idle deadline, applied where they are read.) With TLS, each
//! connection's first byte tells a TLS handshake (0x16) from plain HTTP: both on one port.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Limits;

pub async fn run(
    listener: TcpListener,
    app: crate::http::App,
    limits: &Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let header_timeout = Duration::from_secs(limits.header_timeout_secs.max(1));
    // How long shutdown waits for requests in flight.
    let drain = Duration::from_secs(limits.shutdown_timeout_secs);
    let graceful = GracefulShutdown::new();
    // The connections' tasks: those still running past the shutdown deadline are aborted.
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: let it clear rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the connection limit: closed at once (no request is read).
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        conns.spawn(async move {
            match tls {
                None => serve_conn(stream, app, header_timeout, watcher).await,
                Some(acceptor) => {
                    // The first byte, within the header deadline: a handshake or HTTP.
                    let mut first = [0u8; 1];
                    let peeked =
                        tokio::time::timeout(header_timeout, stream.peek(&mut first)).await;
                    match peeked {
                        Ok(Ok(1)) if first[0] == 0x16 => {
                            let shake =
                                tokio::time::timeout(header_timeout, acceptor.accept(stream));
                            match shake.await {
                                Ok(Ok(tls_stream)) => {
                                    serve_conn(tls_stream, app, header_timeout, watcher).await
                                }
                                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        }
                        Ok(Ok(1)) => serve_conn(stream, app, header_timeout, watcher).await,
                        _ => {}
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: requests still in flight after {drain:?} are cut off");
        conns.abort_all();
    }
}

/// The most a connection reads ahead, and so the largest request head (request line and
/// headers; hyper answers 431 and closes the connection past it; URIs past 64 KiB already got
/// 414). hyper's default (about 400 KiB) has each body read allocate a fresh buffer of that
/// order, faulted in page by page.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Serves HTTP/1.1 on one connection (plain or TLS) until it ends.
async fn serve_conn<I>(io: I, app: crate::http::App, header_timeout: Duration, watcher: Watcher)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(READ_BUFFER_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    let _ = watcher.watch(conn).await;
}
